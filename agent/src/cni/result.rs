//! ADD's result in each version's shape (the CNI spec's SPEC.md, "Result"), and what DEL can learn
//! from a `prevResult` — eniguard's own, or one that upstream's aws-cni wrote (its layout,
//! cmd/routed-eni-cni-plugin/cni.go upstream: `[host veth, container interface (mac = route table), …, dummy<hash> (mac = VLAN
//! id, sandbox = device number)]`), so that a pod started under aws-node can be deleted after an
//! in-place switch.

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::net::pod::gateway;

/// What ADD created for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub host_veth: String,
    pub host_mac: String,
    pub if_name: String,
    pub pod_mac: String,
    pub netns: String,
    pub ip: IpAddr,
    pub mtu: u32,
    /// A branch-ENI pod's VLAN: recorded as upstream does (a `dummy<hash>` interface whose MAC
    /// field is the VLAN id), so that DEL — ours, or upstream's after a switch back — can tear
    /// the VLAN down without the agent.
    pub vlan: Option<u16>,
}

/// The result JSON for `cni_version` (0.4.0 carries `ips[].version`; 1.1.0 interface MTUs).
pub fn add_result(cni_version: &str, a: &Added) -> Value {
    let mut host = json!({"name": a.host_veth, "mac": a.host_mac});
    let mut pod = json!({"name": a.if_name, "mac": a.pod_mac, "sandbox": a.netns});
    if cni_version == "1.1.0" {
        host["mtu"] = json!(a.mtu);
        pod["mtu"] = json!(a.mtu);
    }
    let (len, version, default) = if a.ip.is_ipv4() { (32, "4", "0.0.0.0/0") } else { (128, "6", "::/0") };
    let gw = gateway(a.ip).to_string();
    let mut ip = json!({"address": format!("{}/{len}", a.ip), "gateway": gw, "interface": 1});
    if cni_version.starts_with("0.") {
        ip["version"] = json!(version);
    }
    let mut interfaces = vec![host, pod];
    if let Some(vlan) = a.vlan {
        // The 11 hex digits of the pod's name hash that end the host veth's name.
        let hash = a.host_veth.get(a.host_veth.len().saturating_sub(11)..).unwrap_or_default();
        interfaces.push(json!({"name": format!("dummy{hash}"), "mac": vlan.to_string(), "sandbox": "0"}));
    }
    json!({
        "cniVersion": cni_version,
        "interfaces": interfaces,
        "ips": [ip],
        "routes": [{"dst": default, "gw": gw}],
        "dns": {},
    })
}

/// What a `prevResult` says about the pod, for a DEL the agent cannot answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Previous {
    /// The pod's addresses (either family).
    pub ips: Vec<IpAddr>,
    /// The host end of its veth (the first interface without a sandbox).
    pub host_veth: Option<String>,
    /// A branch-ENI pod's VLAN (upstream's dummy interface), when not 0.
    pub vlan: Option<u16>,
}

/// Reads a `prevResult` of either layout; anything unexpected is skipped, never an error (DEL
/// must go as far as it can).
pub fn previous(prev: &Value) -> Previous {
    let mut out = Previous::default();
    let interfaces = prev.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    for i in &interfaces {
        let name = i.get("name").and_then(Value::as_str).unwrap_or_default();
        let sandbox = i.get("sandbox").and_then(Value::as_str).unwrap_or_default();
        if name.starts_with("dummy") {
            out.vlan = i.get("mac").and_then(Value::as_str).and_then(|m| m.parse().ok()).filter(|v| *v != 0);
        } else if sandbox.is_empty() && out.host_veth.is_none() && !name.is_empty() {
            out.host_veth = Some(name.to_owned());
        }
    }
    for ip in prev.get("ips").and_then(Value::as_array).into_iter().flatten() {
        let addr = ip.get("address").and_then(Value::as_str).unwrap_or_default();
        if let Some(Ok(ip)) = addr.split('/').next().map(str::parse::<IpAddr>) {
            out.ips.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added() -> Added {
        Added {
            host_veth: "eni68caf03a5f4".into(),
            host_mac: "aa:bb:cc:dd:ee:01".into(),
            if_name: "eth0".into(),
            pod_mac: "aa:bb:cc:dd:ee:02".into(),
            netns: "/var/run/netns/cni-1".into(),
            ip: "10.0.1.7".parse().unwrap(),
            mtu: 9001,
            vlan: None,
        }
    }

    #[test]
    fn an_ipv6_pods_result_names_its_128_and_gateway() {
        let six = Added { ip: "2600:1f14:abc:de01:1::1".parse().unwrap(), ..added() };
        let r04 = add_result("0.4.0", &six);
        assert_eq!(
            r04["ips"][0],
            json!({"address": "2600:1f14:abc:de01:1::1/128", "gateway": "fe80::1", "interface": 1, "version": "6"})
        );
        assert_eq!(r04["routes"], json!([{"dst": "::/0", "gw": "fe80::1"}]));
        assert!(add_result("1.1.0", &six)["ips"][0].get("version").is_none());
    }

    #[test]
    fn results_take_each_versions_shape() {
        let r04 = add_result("0.4.0", &added());
        assert_eq!(
            r04["ips"][0],
            json!({"address": "10.0.1.7/32", "gateway": "169.254.1.1", "interface": 1, "version": "4"})
        );
        assert!(r04["interfaces"][1].get("mtu").is_none());
        let r10 = add_result("1.0.0", &added());
        assert!(r10["ips"][0].get("version").is_none());
        assert_eq!(r10["interfaces"][1]["sandbox"], "/var/run/netns/cni-1");
        let r11 = add_result("1.1.0", &added());
        assert_eq!(
            (r11["cniVersion"].clone(), r11["interfaces"][0]["mtu"].clone()),
            (json!("1.1.0"), json!(9001))
        );
        // Our own result read back as DEL reads it.
        assert_eq!(
            previous(&r11),
            Previous {
                ips: vec!["10.0.1.7".parse().unwrap()],
                host_veth: Some("eni68caf03a5f4".into()),
                vlan: None
            }
        );
    }

    #[test]
    fn upstream_aws_cni_results_are_understood() {
        // As aws-cni writes it: container mac = route table, dummy mac = VLAN id, sandbox = device.
        let regular = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "eni68caf03a5f4"},
                {"name": "eth0", "sandbox": "/var/run/netns/cni-1", "mac": "3"},
                {"name": "dummy68caf03a5f4", "mac": "0", "sandbox": "2"}
            ],
            "ips": [{"version": "4", "address": "10.0.1.7/32", "interface": 1}],
            "dns": {}
        });
        let p = previous(&regular);
        assert_eq!((p.host_veth.as_deref(), p.vlan, p.ips.len()), (Some("eni68caf03a5f4"), None, 1));
        let branch = json!({
            "interfaces": [
                {"name": "vlan68caf03a5f4"},
                {"name": "eth0", "sandbox": "/proc/42/ns/net", "mac": "0"},
                {"name": "dummy68caf03a5f4", "mac": "7", "sandbox": "0"}
            ],
            "ips": [{"address": "10.0.64.9/32", "interface": 1}]
        });
        assert_eq!(previous(&branch).vlan, Some(7));
        assert_eq!(previous(&json!({})), Previous::default());
        assert_eq!(previous(&json!({"ips": [{"address": 5}], "interfaces": "x"})), Previous::default());
    }
}
