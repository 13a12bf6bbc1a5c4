//! Upstream's introspection answers (amazon-vpc-cni-k8s's pkg/ipamd/introspect.go, v1.23), in
//! its field names, so that its support script (`aws-cni-support.sh`) and tools that read
//! `:61679` keep working after the swap. eniguard's richer answers live under `/v1/eniguard/`
//! ([`super::views::path`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upstream's paths, as `/` lists them (`{"AvailableCommands": [...]}`).
pub const UPSTREAM_PATHS: [&str; 4] =
    ["/v1/enis", "/v1/eni-configs", "/v1/networkutils-env-settings", "/v1/ipamd-env-settings"];

/// `GET /` (and any path neither upstream nor eniguard serves, as upstream's default handler).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootView {
    #[serde(rename = "AvailableCommands")]
    pub available_commands: Vec<String>,
}

/// `GET /v1/enis`: per network card (`"0"`; eniguard manages card 0 only).
pub type UpstreamEnisView = BTreeMap<String, EniInfosView>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniInfosView {
    #[serde(rename = "TotalIPs")]
    pub total_ips: u32,
    #[serde(rename = "AssignedIPs")]
    pub assigned_ips: u32,
    #[serde(rename = "ENIs")]
    pub enis: BTreeMap<String, UpstreamEniView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpstreamEniView {
    #[serde(rename = "ID")]
    pub id: String,
    pub is_primary: bool,
    pub is_trunk: bool,
    #[serde(rename = "IsEFA")]
    pub is_efa: bool,
    pub device_number: u32,
    #[serde(rename = "AvailableIPv4Cidrs")]
    pub available_ipv4_cidrs: BTreeMap<String, CidrInfoView>,
    #[serde(rename = "IPv6Cidrs")]
    pub ipv6_cidrs: BTreeMap<String, CidrInfoView>,
    #[serde(rename = "IsExcludedForPodIPs")]
    pub is_excluded_for_pod_ips: bool,
    #[serde(rename = "RouteTableID")]
    pub route_table_id: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CidrInfoView {
    pub cidr: IpNetView,
    #[serde(rename = "IPAddresses")]
    pub ip_addresses: BTreeMap<String, AddressInfoView>,
    pub is_prefix: bool,
    /// `4`.
    pub address_family: String,
}

/// Go's `net.IPNet` as encoding/json writes it: the address as text, the mask's bytes in base64.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNetView {
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "Mask")]
    pub mask: String,
}

impl IpNetView {
    /// An IPv4 network of `prefix_len` bits.
    pub fn v4(ip: std::net::Ipv4Addr, prefix_len: u8) -> Self {
        let bits = u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0);
        use base64::Engine as _;
        Self {
            ip: ip.to_string(),
            mask: base64::engine::general_purpose::STANDARD.encode(bits.to_be_bytes()),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressInfoView {
    pub address: String,
    #[serde(rename = "IPAMKey")]
    pub ipam_key: IpamKeyView,
    #[serde(rename = "IPAMMetadata")]
    pub ipam_metadata: IpamMetadataView,
    /// RFC 3339; Go's zero time when never.
    pub assigned_time: String,
    pub unassigned_time: String,
}

/// Go's zero `time.Time` as encoding/json writes it.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// ContainerID and IfName are always blank (upstream blanks them since v1.23).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamKeyView {
    pub network_name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub if_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamMetadataView {
    #[serde(rename = "k8sPodNamespace", default, skip_serializing_if = "String::is_empty")]
    pub k8s_pod_namespace: String,
    #[serde(rename = "k8sPodName", default, skip_serializing_if = "String::is_empty")]
    pub k8s_pod_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_written_as_go_writes_them() {
        assert_eq!(IpNetView::v4("10.0.0.5".parse().unwrap(), 32).mask, "/////w==");
        assert_eq!(IpNetView::v4("10.0.0.16".parse().unwrap(), 28).mask, "////8A==");
        assert_eq!(IpNetView::v4("10.0.0.0".parse().unwrap(), 16).mask, "//8AAA==");
        assert_eq!(IpNetView::v4("0.0.0.0".parse().unwrap(), 0).mask, "AAAAAA==");
    }
}
