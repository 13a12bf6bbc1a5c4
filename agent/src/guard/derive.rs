//! Intent and truth, derived in one place: a pure function from what the node knows (its pods'
//! addresses and the ENIs that hold them, the security groups the configuration asks for, the
//! ENIs' actual groups from EC2 and their links) to the guard's spec. The agent feeds it its own
//! allocations; audit mode feeds it aws-node's checkpoint. Nothing here touches the kernel.
//!
//! The rules:
//! - truth: every ENI with a link on this node (the trunk included, untagged) is that ENI with
//!   the groups EC2 reports for it;
//! - intent: a pod must leave through the ENI that owns its address, carrying the groups its
//!   configuration says (the ENIConfig's under custom networking, else the primary ENI's);
//! - a pod whose address sits on an ENI that never serves ordinary pods (a trunk, EFA, no_manage,
//!   the primary under custom networking) is a finding of its own, with the reason; its packets
//!   are still judged against the groups it should carry (the #2792 pod: `sg_mismatch`);
//! - a branch-ENI pod must leave through the trunk tagged with its VLAN (and through
//!   `vlan.eth.<id>`) as its branch ENI, with its SecurityGroupPolicies' groups; the truth for that
//!   VLAN is the branch ENI's groups from EC2, none until it was described;
//! - a pod annotated `eniguard.io/guard-mode: off` is left out; `monitor`/`enforce` override the
//!   node's mode for that pod.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::spec::{Expect, Interface, Mode, Pod, ValidPod, ValidSpec};
use crate::net::names::host_veth_name;

/// A branch-ENI pod (security groups for pods): its address is its branch ENI's, reached through
/// VLAN `vlan` on the trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchPod {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    pub eni: String,
    pub vlan: u16,
    /// What its SecurityGroupPolicies say (intent).
    pub expected_groups: Vec<String>,
    /// The policies that say so, in words.
    pub basis: String,
    /// What EC2 reports for the branch ENI (truth); None until described.
    pub actual_groups: Option<Vec<String>>,
}

/// The pod annotation that sets the guard's mode for one pod.
pub const POD_MODE_ANNOTATION: &str = "eniguard.io/guard-mode";

/// Events per pod per second that leave the kernel (the rest are counted).
pub const EVENTS_PER_POD_PER_SECOND: u32 = 10;

/// An ENI attached to the node, as EC2 describes it and as the node sees its link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniFact {
    pub id: String,
    /// The link with this ENI's MAC, if the node has it (yet).
    pub link: Option<String>,
    /// The groups EC2 reports (truth, never assumed).
    pub security_groups: Vec<String>,
    /// Why it never serves ordinary pods (trunk, EFA, ...), if it does not.
    pub excluded: Option<String>,
}

/// A pod address and the ENI that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    /// The ENI whose address or /28 holds `ip` (None: on no ENI the node knows).
    pub eni: Option<String>,
    /// Newer allocations of the same pod win its veth (a sandbox re-created before its DEL).
    pub allocated_at: u64,
}

/// The guard's mode for one pod, from [`POD_MODE_ANNOTATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodMode {
    Off,
    Set(Mode),
}

/// Parses the pod annotation's value; the error names the annotation and what is expected.
pub fn pod_mode(value: &str) -> Result<PodMode, String> {
    match value {
        "off" => Ok(PodMode::Off),
        "monitor" => Ok(PodMode::Set(Mode::Monitor)),
        "enforce" => Ok(PodMode::Set(Mode::Enforce)),
        other => Err(format!("{POD_MODE_ANNOTATION}: `{other}`: expected off, monitor or enforce")),
    }
}

/// Everything the derivation reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub mode: Mode,
    pub enis: Vec<EniFact>,
    pub pods: Vec<PodAddress>,
    /// The groups ordinary pods must leave with: the ENIConfig's (custom networking; the
    /// primary ENI's when it names none), else the primary ENI's.
    pub expected_groups: Vec<String>,
    /// AWS_VPC_K8S_CNI_VETHPREFIX: the host veth is `<prefix><11 hex digits>` as upstream.
    pub veth_prefix: String,
    /// Per-pod modes from the annotation, by (namespace, name).
    pub pod_modes: BTreeMap<(String, String), PodMode>,
    /// Where `expected_groups` come from, in words (for `eniguard explain`).
    pub basis: String,
    /// Branch-ENI pods, their VLANs on the trunk link (`trunk_link`).
    pub branches: Vec<BranchPod>,
    pub trunk_link: Option<String>,
    /// The host veth prefix of branch pods: `vlan` in strict mode, the veth prefix in standard.
    pub branch_veth_prefix: String,
}

/// A pod whose address is where no pod's address may be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub namespace: String,
    pub pod: String,
    pub ip: IpAddr,
    pub eni: String,
    pub reason: String,
}

/// What the guard is to hold, and the findings beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub spec: ValidSpec,
    pub findings: Vec<Finding>,
    /// Where ordinary pods' expected groups come from, in words.
    pub basis: String,
    /// Per branch-ENI pod, where its expected groups come from.
    pub branch_basis: BTreeMap<(String, String), String>,
}

/// The groups ordinary pods must carry and where they come from, in words: the ENIConfig's
/// (`eni_config`: name and groups) under custom networking, the primary ENI's when it names none,
/// when none was read, or without custom networking.
pub fn expected_groups(
    custom_networking: bool,
    eni_config: Option<(&str, &[String])>,
    primary: &[String],
) -> (Vec<String>, String) {
    match (custom_networking, eni_config) {
        (true, Some((name, groups))) if !groups.is_empty() => {
            (groups.to_vec(), format!("ENIConfig `{name}` (custom networking)"))
        }
        (true, Some((name, _))) => (
            primary.to_vec(),
            format!("ENIConfig `{name}` names no groups: the primary ENI's (custom networking)"),
        ),
        (true, None) => {
            (primary.to_vec(), "no ENIConfig read: the primary ENI's groups (custom networking)".to_owned())
        }
        (false, _) => (primary.to_vec(), "the primary ENI's groups (no custom networking)".to_owned()),
    }
}

/// Intent and truth for the node (see the module docs).
pub fn derive(inputs: &Inputs) -> Derived {
    let enis: BTreeMap<&str, &EniFact> = inputs.enis.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut interfaces: Vec<Interface> = inputs
        .enis
        .iter()
        .filter_map(|e| {
            Some(Interface {
                name: e.link.clone()?,
                eni: e.id.clone(),
                vlan: 0,
                security_groups: sorted(&e.security_groups),
            })
        })
        .collect();
    let expected = sorted(&inputs.expected_groups);
    let mut pods: Vec<&PodAddress> = inputs.pods.iter().collect();
    // The newest allocation of a pod comes last and so owns the pod's veth.
    pods.sort_by_key(|p| (p.allocated_at, p.ip));
    let mut findings = Vec::new();
    let mut out: Vec<ValidPod> = Vec::new();
    for p in pods {
        let Some(eni) = p.eni.as_deref().and_then(|id| enis.get(id)) else { continue };
        let mode = match inputs.pod_modes.get(&(p.namespace.clone(), p.name.clone())) {
            Some(PodMode::Off) => continue,
            Some(PodMode::Set(m)) => Some(*m),
            None => None,
        };
        if let Some(reason) = &eni.excluded {
            findings.push(Finding {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                ip: p.ip,
                eni: eni.id.clone(),
                reason: reason.clone(),
            });
        }
        let pod = Pod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ip: p.ip.to_string(),
            host_interface: host_veth_name(&inputs.veth_prefix, &p.namespace, &p.name),
            expect: Expect { eni: eni.id.clone(), vlan: 0, security_groups: expected.clone() },
            mode,
        };
        out.push(ValidPod { pod, ip: p.ip });
    }
    let mut branch_basis = BTreeMap::new();
    for b in &inputs.branches {
        let key = (b.namespace.clone(), b.name.clone());
        let mode = match inputs.pod_modes.get(&key) {
            Some(PodMode::Off) => continue,
            Some(PodMode::Set(m)) => Some(*m),
            None => None,
        };
        // Truth: the trunk's frames tagged with the VLAN, and the VLAN's sub-interface, are the
        // branch ENI with the groups EC2 reports (no truth until it has: `unknown_interface`).
        if let Some(actual) = &b.actual_groups {
            let links = inputs.trunk_link.iter().cloned().chain([format!("vlan.eth.{}", b.vlan)]);
            for name in links {
                interfaces.push(Interface {
                    name,
                    eni: b.eni.clone(),
                    vlan: b.vlan,
                    security_groups: sorted(actual),
                });
            }
        }
        let pod = Pod {
            namespace: b.namespace.clone(),
            name: b.name.clone(),
            ip: b.ip.to_string(),
            host_interface: host_veth_name(&inputs.branch_veth_prefix, &b.namespace, &b.name),
            expect: Expect { eni: b.eni.clone(), vlan: b.vlan, security_groups: sorted(&b.expected_groups) },
            mode,
        };
        out.retain(|p| p.ip != b.ip);
        out.push(ValidPod { pod, ip: b.ip });
        branch_basis.insert(key, b.basis.clone());
    }
    Derived {
        spec: ValidSpec {
            mode: inputs.mode,
            events_per_pod_per_second: EVENTS_PER_POD_PER_SECOND,
            interfaces,
            pods: out,
        },
        findings,
        basis: inputs.basis.clone(),
        branch_basis,
    }
}

fn sorted(groups: &[String]) -> Vec<String> {
    let mut g = groups.to_vec();
    g.sort();
    g.dedup();
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, link: Option<&str>, groups: &[&str], excluded: Option<&str>) -> EniFact {
        EniFact {
            id: id.into(),
            link: link.map(Into::into),
            security_groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            excluded: excluded.map(Into::into),
        }
    }

    fn pod(name: &str, ip: &str, eni: Option<&str>, at: u64) -> PodAddress {
        PodAddress {
            namespace: "default".into(),
            name: name.into(),
            ip: ip.parse().unwrap(),
            eni: eni.map(Into::into),
            allocated_at: at,
        }
    }

    fn inputs() -> Inputs {
        Inputs {
            mode: Mode::Monitor,
            enis: vec![
                eni("eni-1", Some("eth1"), &["sg-2", "sg-1"], None),
                eni("eni-7", Some("eth2"), &["sg-9"], Some("trunk ENI (security groups for pods)")),
                eni("eni-3", None, &["sg-1"], None),
            ],
            pods: vec![
                pod("web", "10.0.1.10", Some("eni-1"), 1),
                pod("victim", "10.0.2.5", Some("eni-7"), 2),
            ],
            expected_groups: vec!["sg-2".into(), "sg-1".into()],
            veth_prefix: "eni".into(),
            pod_modes: BTreeMap::new(),
            basis: "test".into(),
            branches: Vec::new(),
            trunk_link: Some("eth2".into()),
            branch_veth_prefix: "vlan".into(),
        }
    }

    #[test]
    fn truth_is_every_linked_eni_and_intent_the_home_eni_with_the_configured_groups() {
        let d = derive(&inputs());
        let names: Vec<_> = d.spec.interfaces.iter().map(|i| (i.name.as_str(), i.eni.as_str())).collect();
        assert_eq!(names, [("eth1", "eni-1"), ("eth2", "eni-7")], "an ENI without a link has no truth yet");
        assert_eq!(d.spec.interfaces[0].security_groups, ["sg-1", "sg-2"]);
        let web = &d.spec.pods[0].pod;
        assert_eq!((web.name.as_str(), web.expect.eni.as_str()), ("web", "eni-1"));
        assert_eq!(web.expect.security_groups, ["sg-1", "sg-2"]);
        assert_eq!(web.host_interface, host_veth_name("eni", "default", "web"));
        assert_eq!(d.spec.pods.len(), 2);
    }

    #[test]
    fn an_address_on_an_excluded_eni_is_a_finding_and_still_judged() {
        let d = derive(&inputs());
        assert_eq!(
            d.findings,
            [Finding {
                namespace: "default".into(),
                pod: "victim".into(),
                ip: "10.0.2.5".parse().unwrap(),
                eni: "eni-7".into(),
                reason: "trunk ENI (security groups for pods)".into(),
            }]
        );
        let victim = d.spec.pods.iter().find(|p| p.pod.name == "victim").unwrap();
        assert_eq!(victim.pod.expect.eni, "eni-7");
        assert_eq!(
            victim.pod.expect.security_groups,
            ["sg-1", "sg-2"],
            "judged against the groups it should carry"
        );
    }

    #[test]
    fn pod_modes_and_addresses_on_no_eni() {
        let mut i = inputs();
        i.pods.push(pod("lost", "10.9.9.9", Some("eni-gone"), 3));
        i.pods.push(pod("nowhere", "10.9.9.8", None, 3));
        i.pod_modes.insert(("default".into(), "victim".into()), PodMode::Off);
        i.pod_modes.insert(("default".into(), "web".into()), PodMode::Set(Mode::Enforce));
        let d = derive(&i);
        assert_eq!(d.spec.pods.len(), 1, "{:?}", d.spec.pods);
        assert_eq!(d.spec.pods[0].pod.mode, Some(Mode::Enforce));
        assert!(d.findings.is_empty(), "a pod set off is not reported");
        assert_eq!(pod_mode("enforce"), Ok(PodMode::Set(Mode::Enforce)));
        let e = pod_mode("drop").unwrap_err();
        assert!(
            e.contains(POD_MODE_ANNOTATION) && e.contains("`drop`") && e.contains("off, monitor or enforce")
        );
    }

    #[test]
    fn a_branch_pod_must_leave_tagged_through_the_trunk_with_its_policy_groups() {
        let mut i = inputs();
        i.branches.push(BranchPod {
            namespace: "shop".into(),
            name: "db".into(),
            ip: "10.0.3.7".parse().unwrap(),
            eni: "eni-b5".into(),
            vlan: 5,
            expected_groups: vec!["sg-b0".into()],
            basis: "SecurityGroupPolicy `db`".into(),
            actual_groups: Some(vec!["sg-b0".into()]),
        });
        let d = derive(&i);
        let branch: Vec<_> = d
            .spec
            .interfaces
            .iter()
            .filter(|f| f.eni == "eni-b5")
            .map(|f| (f.name.as_str(), f.vlan, f.security_groups.clone()))
            .collect();
        assert_eq!(
            branch,
            [("eth2", 5, vec!["sg-b0".to_owned()]), ("vlan.eth.5", 5, vec!["sg-b0".to_owned()])]
        );
        let pod = d.spec.pods.iter().find(|p| p.pod.name == "db").unwrap();
        assert_eq!((pod.pod.expect.eni.as_str(), pod.pod.expect.vlan), ("eni-b5", 5));
        assert_eq!(pod.pod.host_interface, host_veth_name("vlan", "shop", "db"));
        assert_eq!(d.branch_basis[&("shop".to_owned(), "db".to_owned())], "SecurityGroupPolicy `db`");
        // Not described yet: intent, but no truth for its VLAN.
        i.branches[0].actual_groups = None;
        let d = derive(&i);
        assert!(d.spec.interfaces.iter().all(|f| f.eni != "eni-b5"));
        assert!(d.spec.pods.iter().any(|p| p.pod.name == "db"));
    }

    #[test]
    fn the_newest_allocation_of_a_pod_is_listed_last() {
        let mut i = inputs();
        i.pods = vec![pod("web", "10.0.1.10", Some("eni-1"), 9), pod("web", "10.0.1.20", Some("eni-1"), 1)];
        let d = derive(&i);
        // Both addresses are judged; the datapath keys the veth by the last entry naming it.
        let ips: Vec<_> = d.spec.pods.iter().map(|p| p.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.1.20", "10.0.1.10"]);
    }
}
