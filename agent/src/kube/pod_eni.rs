//! The Resource Controller's `vpc.amazonaws.com/pod-eni` annotation on a branch-ENI pod
//! (written by aws/amazon-vpc-resource-controller-k8s): a JSON array of objects; only the first
//! is used, as upstream does. The VLAN key is `vlanId` as the controller writes it (upstream's Go
//! reader matches it case-insensitively, so `vlanID` is accepted too).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use crate::ipam::model::Cidr;

/// The branch ENI a pod gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEni {
    pub eni_id: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    /// 1..=4094 (the controller hands out 1..120).
    pub vlan_id: u16,
    pub subnet: Cidr,
    /// The branch ENI's IPv6 address (`ipv6Addr`), in a subnet with an IPv6 CIDR.
    pub ipv6: Option<Ipv6Addr>,
}

/// EC2's router as an IPv6 branch pod's VLAN reaches it (upstream's gateway for IPv6).
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0xec2, 0, 0, 0, 0, 0, 1);

impl PodEni {
    /// The pod's address and its VLAN's gateway for the node's family: the branch's IPv4 address
    /// and its subnet's network address + 1, or (IPv6 mode) its `ipv6Addr` and `fe80:ec2::1`.
    pub fn address(&self, ipv6: bool) -> Result<(IpAddr, IpAddr), String> {
        if !ipv6 {
            return Ok((self.ip.into(), Ipv4Addr::from(u32::from(self.subnet.addr) + 1).into()));
        }
        let ip = self.ipv6.ok_or_else(|| {
            format!("vpc.amazonaws.com/pod-eni[0].ipv6Addr: missing (an IPv6 node's branch pod needs the branch ENI's IPv6 address; is {} in a subnet with an IPv6 CIDR?)", self.eni_id)
        })?;
        Ok((ip.into(), ROUTER6.into()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    eni_id: Option<String>,
    if_address: Option<String>,
    private_ip: Option<String>,
    #[serde(alias = "vlanID")]
    vlan_id: Option<serde_json::Value>,
    subnet_cidr: Option<String>,
    ipv6_addr: Option<String>,
}

/// Parses the annotation; an error names the field and what was expected.
pub fn parse(annotation: &str) -> Result<PodEni, String> {
    let what = "vpc.amazonaws.com/pod-eni";
    let list: Vec<Raw> = serde_json::from_str(annotation)
        .map_err(|e| format!("{what}: expected a JSON array of objects: {e}"))?;
    let raw = list.into_iter().next().ok_or_else(|| format!("{what}: the array is empty"))?;
    let field = |name: &str, v: Option<String>| {
        v.filter(|s| !s.is_empty()).ok_or_else(|| format!("{what}[0].{name}: missing"))
    };
    let eni_id = field("eniId", raw.eni_id)?;
    let mac = field("ifAddress", raw.if_address)?;
    if crate::net::netlink::mac_bytes(&mac).is_none() {
        return Err(format!("{what}[0].ifAddress: `{mac}` is not a MAC address"));
    }
    let ip_text = field("privateIp", raw.private_ip)?;
    let ip =
        ip_text.parse().map_err(|_| format!("{what}[0].privateIp: `{ip_text}` is not an IPv4 address"))?;
    let vlan_id = match raw.vlan_id {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .and_then(|v| u16::try_from(v).ok())
    .filter(|v| (1..=4094).contains(v))
    .ok_or_else(|| format!("{what}[0].vlanId: expected a VLAN id from 1 to 4094"))?;
    let cidr = field("subnetCidr", raw.subnet_cidr)?;
    let subnet = crate::cloud::imds::parse_cidr(&cidr)
        .ok_or_else(|| format!("{what}[0].subnetCidr: `{cidr}` is not an IPv4 CIDR"))?;
    let ipv6 = match raw.ipv6_addr.filter(|s| !s.is_empty()) {
        Some(text) => {
            Some(text.parse().map_err(|_| format!("{what}[0].ipv6Addr: `{text}` is not an IPv6 address"))?)
        }
        None => None,
    };
    Ok(PodEni { eni_id, mac, ip, vlan_id, subnet, ipv6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_annotation_is_read_with_its_vlan_key() {
        let a = r#"[{"eniId":"eni-1","ifAddress":"02:00:00:00:00:2a","privateIp":"100.64.0.9","vlanId":7,"subnetCidr":"100.64.0.0/19","associationID":"trunk-assoc-1"}]"#;
        let p = parse(a).unwrap();
        assert_eq!(
            (p.vlan_id, p.address(false).unwrap()),
            (7, ("100.64.0.9".parse().unwrap(), "100.64.0.1".parse().unwrap()))
        );
        assert!(p.address(true).unwrap_err().contains("ipv6Addr: missing"));
        let v6 = a.replace(
            r#""vlanId":7"#,
            r#""vlanId":7,"ipv6Addr":"2600:1f14::9","subnetV6Cidr":"2600:1f14::/64""#,
        );
        let p = parse(&v6).unwrap();
        assert_eq!(
            p.address(true).unwrap(),
            ("2600:1f14::9".parse().unwrap(), "fe80:ec2::1".parse().unwrap())
        );
        assert!(parse(&v6.replace("2600:1f14::9", "10.0.0.1")).unwrap_err().contains("ipv6Addr"));
        assert_eq!(parse(&a.replace("vlanId", "vlanID")).unwrap().vlan_id, 7);
        assert!(parse(&a.replace("\"vlanId\":7", "\"vlanId\":0")).unwrap_err().contains("vlanId"));
        assert!(parse(&a.replace("02:00:00:00:00:2a", "nope")).unwrap_err().contains("ifAddress"));
        assert!(parse("[]").unwrap_err().contains("empty"));
        assert!(parse("1").unwrap_err().contains("JSON array"));
    }
}
