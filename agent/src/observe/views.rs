//! The introspection endpoint's answers as types: the agent (and audit mode) serialize them, the
//! CLI (`eniguard status`, `explain`, `events`) deserializes the same types, so a renamed field
//! fails to compile or to parse instead of printing "?".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where each answer is served (upstream's own paths are in [`super::upstream_views`]).
pub mod path {
    pub const STATUS: &str = "/v1/eniguard/status";
    pub const ENIS: &str = "/v1/eniguard/enis";
    pub const PODS: &str = "/v1/eniguard/pods";
    pub const ENI_CONFIGS: &str = "/v1/eniguard/eni-configs";
    pub const ENV_SETTINGS: &str = "/v1/eniguard/env-settings";
    pub const GUARD: &str = "/v1/eniguard/guard";
    pub const EVENTS: &str = "/v1/eniguard/events";
    /// The agent's, in the order `/` lists them (audit mode serves STATUS, GUARD and EVENTS).
    pub const AGENT: [&str; 7] = [STATUS, ENIS, PODS, ENI_CONFIGS, ENV_SETTINGS, GUARD, EVENTS];
}

/// `GET /v1/eniguard/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// `audit` in audit mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub step: String,
    pub ready: bool,
    /// Why security groups for pods was refused, if it was.
    #[serde(default)]
    pub refused: Option<String>,
    /// What keeps the node from progressing.
    #[serde(default)]
    pub problem: Option<String>,
}

/// `GET /v1/eniguard/enis`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnisView {
    pub instance_id: String,
    pub instance_type: String,
    pub enis: Vec<EniView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EniView {
    pub id: String,
    pub mac: String,
    pub device_number: u32,
    pub primary_ip: String,
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    /// EC2's InterfaceType.
    pub interface_type: String,
    pub primary: bool,
    pub unmanaged: bool,
    /// The address ranges the datastore holds on it.
    pub cidrs: Vec<String>,
    /// Why its addresses are never handed out, if they are not.
    pub excluded: Option<String>,
}

/// Packets of one verdict: counted, and dropped (enforce mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCount {
    pub packets: u64,
    pub dropped: u64,
}

/// `GET /v1/eniguard/guard`: what the guard holds (truth, intent, findings as last applied) and each
/// pod's verdicts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardView {
    pub enabled: bool,
    /// Whether the guard has applied the node's intent yet (the rest is empty before).
    pub applied: bool,
    #[serde(default)]
    pub mode: Option<String>,
    /// Where ordinary pods' expected groups come from, in words.
    #[serde(default)]
    pub basis: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceView>,
    #[serde(default)]
    pub pods: Vec<JudgedPodView>,
    #[serde(default)]
    pub findings: Vec<FindingView>,
}

/// Truth: an interface and what EC2 says its ENI carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceView {
    pub name: String,
    pub eni: String,
    pub vlan: u16,
    pub security_groups: Vec<String>,
}

/// Intent: one pod address, where it must leave, and its verdicts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JudgedPodView {
    pub namespace: String,
    pub name: String,
    pub ip: String,
    pub host_interface: String,
    pub expect_eni: String,
    pub expect_vlan: u16,
    pub expect_security_groups: Vec<String>,
    pub mode: String,
    /// By reason (`wrong_eni`, `sg_mismatch`, ...).
    pub verdicts: BTreeMap<String, VerdictCount>,
    /// Where this pod's expected groups come from, in words.
    pub basis: String,
}

/// An address where no pod's address may be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingView {
    pub namespace: String,
    pub pod: String,
    pub ip: String,
    pub eni: String,
    pub reason: String,
}

/// `GET /v1/eniguard/events`: one violation, with names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub timestamp_ns: u64,
    pub namespace: String,
    pub pod: String,
    pub reason: String,
    pub verdict: String,
    pub src: String,
    pub dst: String,
    pub ifindex: u32,
    pub observed_vlan: u32,
    pub expected_vlan: u32,
    pub expected_eni: String,
    pub actual_eni: String,
    pub expected_security_groups: Vec<String>,
    pub actual_security_groups: Vec<String>,
}

/// `GET /v1/eniguard/pods`: the node's pods, each with what the guard holds for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodsView {
    pub node: String,
    pub pods: Vec<PodView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub host_network: bool,
    pub wants_branch_eni: bool,
    pub pod_eni: Option<String>,
    pub guard_mode_annotation: Option<String>,
    pub guard: Vec<PodAddressView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAddressView {
    pub ip: String,
    pub eni: String,
    pub vlan: u16,
    pub expected_security_groups: Vec<String>,
    /// What EC2 says the ENI carries (None: no link for it yet).
    pub actual_security_groups: Option<Vec<String>>,
    pub mode: String,
    pub verdicts: BTreeMap<String, VerdictCount>,
}

/// `GET /v1/eniguard/eni-configs`: the node's ENIConfig as the agent uses it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EniConfigsView {
    pub custom_networking: bool,
    pub name: String,
    /// Where the name came from (label, annotation, default).
    pub source: String,
    pub eni_config: Option<EniConfigView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EniConfigView {
    pub name: String,
    pub subnet: String,
    pub security_groups: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard serializes its own event type; the CLI reads it as an [`EventView`]: the two
    /// must name every field alike.
    #[test]
    fn a_violation_reads_back_as_an_event_view() {
        let v = crate::guard::events::Violation {
            timestamp_ns: 7,
            namespace: "default".into(),
            pod: "web".into(),
            reason: "sg_mismatch",
            verdict: "dropped",
            src: "10.0.0.5".into(),
            dst: "1.1.1.1".into(),
            ifindex: 4,
            observed_vlan: 0,
            expected_vlan: 0,
            expected_eni: "eni-a".into(),
            actual_eni: "eni-b".into(),
            expected_security_groups: vec!["sg-a".into()],
            actual_security_groups: vec!["sg-b".into()],
        };
        let json = serde_json::to_string(&v).unwrap();
        let read: EventView = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (read.reason.as_str(), read.actual_eni.as_str(), read.timestamp_ns),
            ("sg_mismatch", "eni-b", 7)
        );
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::from_str::<serde_json::Value>(&json).unwrap()
        );
    }

    /// Upstream-style camelCase on the wire, as the endpoint always answered.
    #[test]
    fn field_names_are_camel_case() {
        let p = JudgedPodView { expect_eni: "eni-a".into(), ..Default::default() };
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(v["expectEni"], "eni-a");
        assert!(v.get("expectSecurityGroups").is_some() && v.get("hostInterface").is_some());
    }
}
