//! The agent's local API, as the CNI plugin calls it: JSON over HTTP/1.1 on a unix socket
//! (`<run dir>/eniguard.sock`, mode 0600), so that `curl --unix-socket` can debug it. One module
//! for the types both sides use. Plugin and agent ship together: a request from another version
//! is refused with a message naming both (upstream's `ClientVersion` check).
//!
//! - `POST /v1/cni/add` [`AddRequest`] → [`AddReply`]: an address for the pod, answered only after
//!   the allocation is checkpointed; idempotent per (network, container id, interface).
//! - `POST /v1/cni/del` [`DelRequest`] → [`DelReply`]: releases it; a key with nothing is fine.
//! - `POST /v1/cni/check` [`CheckRequest`] → [`AddReply`]: the allocation ADD made for the key.
//! - `POST /v1/cni/gc` [`GcRequest`] → [`GcReply`]: releases the network's allocations that are
//!   not in the runtime's list of valid attachments (CNI 1.1 GC).
//! - `GET /v1/cni/status` → [`StatusReply`] (200 when pods can be added, 503 otherwise).
//!
//! Failures are [`ApiError`] with an HTTP status and a [`ErrorKind`] the plugin maps to CNI codes.

use serde::{Deserialize, Serialize};

/// The version both sides must carry.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const SOCKET_NAME: &str = "eniguard.sock";
pub const ADD_PATH: &str = "/v1/cni/add";
pub const DEL_PATH: &str = "/v1/cni/del";
pub const CHECK_PATH: &str = "/v1/cni/check";
pub const GC_PATH: &str = "/v1/cni/gc";
pub const STATUS_PATH: &str = "/v1/cni/status";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddRequest {
    pub client_version: String,
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddReply {
    /// The pod's address: IPv4 (a /32 on the pod side) or, in IPv6 mode, IPv6 (a /128).
    pub ip: String,
    /// The ENI that owns it and its device number; its route table is `device number + 1`
    /// (the primary ENI's is `main`).
    pub eni: String,
    pub device_number: u32,
    pub route_table: Option<u32>,
    /// VPC CIDRs (and AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS) that are not SNATed.
    pub vpc_cidrs: Vec<String>,
    pub external_snat: bool,
    /// POD_MTU.
    pub mtu: u32,
    /// AWS_VPC_K8S_CNI_VETHPREFIX.
    pub veth_prefix: String,
    /// NETWORK_POLICY_ENFORCING_MODE: with it, the plugin calls the network-policy agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_mode: Option<String>,
    /// IPv6 mode with ENABLE_V4_EGRESS: the pod also gets IPv4 egress (see
    /// [`crate::cni::egress`]).
    #[serde(default)]
    pub v4_egress: bool,
    /// IPv4 mode with ENABLE_V6_EGRESS (and a node IPv6 address): the pod also gets IPv6 egress.
    #[serde(default)]
    pub v6_egress: bool,
    /// A branch-ENI pod (security groups for pods): its address is the branch ENI's, reached
    /// through a VLAN on the trunk, in table `vlan id + 100`; no pool address is used.
    #[serde(default)]
    pub branch: Option<Branch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Branch {
    pub eni: String,
    pub vlan_id: u16,
    /// The branch ENI's MAC, which the VLAN link takes.
    pub mac: String,
    /// The branch subnet's gateway.
    pub gateway: String,
    /// The trunk's link on the node.
    pub parent_if_index: u32,
    /// POD_SECURITY_GROUP_ENFORCING_MODE.
    pub enforcing_mode: crate::config::EnforcingMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelRequest {
    pub client_version: String,
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelReply {
    /// The address released, if the key had one.
    pub released: Option<String>,
    /// NETWORK_POLICY_ENFORCING_MODE: with it, the plugin tells the network-policy agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_mode: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    pub client_version: String,
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
}

/// One attachment the runtime still considers valid (`cni.dev/valid-attachments`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifname")]
    pub if_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcRequest {
    pub client_version: String,
    pub network_name: String,
    pub valid_attachments: Vec<Attachment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReply {
    /// The addresses released (they cool down before reuse).
    pub released: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    pub ready: bool,
    /// Addresses that can be handed out now.
    pub available: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The agent is starting; retry (CNI: "try again later").
    NotReady,
    /// The pool is empty right now; retry.
    NoAddress,
    /// Plugin and agent are different versions.
    VersionMismatch,
    /// The request is malformed.
    BadRequest,
    /// CHECK: the agent holds nothing for this (network, container, interface).
    UnknownContainer,
    /// A branch-ENI pod whose branch is not there yet (no annotation, no trunk): retry.
    BranchPending,
    /// The address is held on an ENI that never serves pods (a pre-fix trunk address).
    Refused,
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            Self::NotReady | Self::NoAddress | Self::BranchPending => 503,
            Self::VersionMismatch => 409,
            Self::BadRequest => 400,
            Self::UnknownContainer => 404,
            Self::Refused => 422,
            Self::Internal => 500,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// Parses a request body, naming the field that is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("{what}: {e}")))
}

/// Refuses a request from another version.
pub fn check_version(client: &str) -> Result<(), ApiError> {
    if client == VERSION {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::VersionMismatch,
        format!("eniguard-cni {client} cannot talk to eniguard agent {VERSION}: install the plugin that ships with the agent"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_name_the_field() {
        let add = AddRequest {
            client_version: VERSION.into(),
            network_name: "eniguard".into(),
            container_id: "c1".into(),
            if_name: "eth0".into(),
            netns: "/var/run/netns/cni-1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: None,
        };
        let json = serde_json::to_vec(&add).unwrap();
        assert_eq!(parse::<AddRequest>("add", &json).unwrap(), add);
        let e = parse::<AddRequest>("add", br#"{"clientVersion": "x"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("missing field `networkName`"), "{e}");
        assert!(check_version(VERSION).is_ok());
        let v = check_version("0.0.1").unwrap_err();
        assert!(v.message.contains("eniguard-cni 0.0.1") && v.message.contains(VERSION), "{v}");
        assert_eq!(v.kind.http_status(), 409);
    }
}
