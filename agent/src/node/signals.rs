//! The order of the signals to the VPC Resource Controller — the #2792 fix.
//!
//! The Resource Controller builds the trunk ENI once, when it first sees `SecurityGroupsForPods`,
//! with whatever custom-networking spec it knows at that moment, and never changes it. aws-node
//! v1.16.0–v1.16.3 sent `SecurityGroupsForPods` before `CustomNetworking`, so the trunk got the
//! node's subnet and security groups (aws/amazon-vpc-cni-k8s#2792, fixed in v1.16.4). Here
//! `SecurityGroupsForPods` is sent only once the API server *returns* the `CustomNetworking`
//! feature (read back, not assumed from our own write), only when an ENI slot is free, only on
//! types that can be trunked, and never for a layout that leaves no ENI for ordinary pods.

use super::super::kube::{
    cninode::{Feature, CUSTOM_NETWORKING, SECURITY_GROUPS_FOR_PODS},
    eniconfig::DEFAULT_NAME,
};

/// What the decision needs to know about the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG.
    pub custom_networking: bool,
    /// ENABLE_POD_ENI.
    pub pod_eni: bool,
    /// The node's ENIConfig name (see `kube::eniconfig::resolve`).
    pub eni_config: String,
    pub instance_type: String,
    /// ENIs the instance type allows (MAX_ENI applied).
    pub max_enis: u32,
    /// ENIs attached now, unmanaged ones included.
    pub attached_enis: u32,
    /// The Resource Controller can attach a trunk to this type.
    pub trunking_compatible: bool,
}

/// Why security groups for pods is not enabled on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub instance_type: String,
    pub max_enis: u32,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "security groups for pods is not enabled: {} allows {} ENIs; with custom networking the primary ENI \
             takes no pods and the trunk takes one more, leaving none for ordinary pods. Use a type with at \
             least 3 ENIs, or turn off custom networking or ENABLE_POD_ENI",
            self.instance_type, self.max_enis
        )
    }
}

/// The next thing to do about the signals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Merge `CustomNetworking=<name>` into the CNINode, then read it back.
    SignalCustomNetworking(String),
    /// Merge `SecurityGroupsForPods` into the CNINode.
    SignalSecurityGroupsForPods,
    /// Every ENI slot is taken: no room for the trunk yet (retry when one frees up).
    WaitForSlot,
    /// A layout that would leave ordinary pods without an ENI: say so (Event, metric, log).
    Refuse(Refusal),
    /// Nothing (more) to signal.
    Done,
}

/// The next step, given the node and the features the API server returned for its CNINode.
pub fn next(node: &NodeFacts, recorded: &[Feature]) -> Step {
    if !node.pod_eni {
        return Step::Done; // upstream signals CustomNetworking only together with pod ENIs
    }
    let has = |name: &str, value: Option<&str>| {
        recorded.iter().any(|f| f.name == name && value.is_none_or(|v| f.value.as_deref() == Some(v)))
    };
    if node.custom_networking {
        if node.max_enis < 3 {
            return Step::Refuse(Refusal {
                instance_type: node.instance_type.clone(),
                max_enis: node.max_enis,
            });
        }
        // Upstream does not signal the literal `default` name: the Resource Controller resolves it.
        if node.eni_config != DEFAULT_NAME && !has(CUSTOM_NETWORKING, Some(&node.eni_config)) {
            return Step::SignalCustomNetworking(node.eni_config.clone());
        }
    }
    if !node.trunking_compatible || has(SECURITY_GROUPS_FOR_PODS, None) {
        return Step::Done;
    }
    if node.attached_enis >= node.max_enis {
        return Step::WaitForSlot;
    }
    Step::SignalSecurityGroupsForPods
}

/// Carries out [`next`] until it says stop: CustomNetworking, read back from the API server, and
/// only then SecurityGroupsForPods.
#[cfg(feature = "control-plane")]
pub async fn signal(shared: &super::state::Shared) -> Result<(), super::error::NodeError> {
    use crate::{
        ipam::policy::PoolConfig,
        kube::{client::KubeError, eniconfig},
        observe::agent::TypeLabel,
    };
    use std::time::Duration;

    let node = shared.node();
    let mut missing_cninode = 0;
    loop {
        let facts = NodeFacts {
            custom_networking: shared.cfg.custom_networking,
            pod_eni: shared.cfg.pod_eni,
            eni_config: shared.eni_config().map_or_else(|| eniconfig::DEFAULT_NAME.to_owned(), |c| c.name),
            instance_type: shared.id.instance_type.clone(),
            max_enis: shared.limits.max_enis,
            attached_enis: u32::try_from(shared.enis().len()).unwrap_or(u32::MAX),
            trunking_compatible: shared.limits.trunking_compatible,
        };
        if !facts.pod_eni {
            return Ok(());
        }
        let recorded = match shared.clients.kube.features(&node.name).await {
            Ok((f, _)) => f,
            // The Resource Controller creates the CNINode when it sees the node.
            Err(KubeError::NotFound { .. }) if missing_cninode < 60 => {
                missing_cninode += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match next(&facts, &recorded) {
            Step::SignalCustomNetworking(name) => {
                log::info!("CNINode {}: CustomNetworking={name}", node.name);
                shared
                    .clients
                    .kube
                    .add_feature(&node.name, &Feature::new(CUSTOM_NETWORKING, Some(&name)))
                    .await?;
            }
            Step::SignalSecurityGroupsForPods => {
                log::info!(
                    "CNINode {}: SecurityGroupsForPods (CustomNetworking confirmed first where on)",
                    node.name
                );
                shared
                    .clients
                    .kube
                    .add_feature(&node.name, &Feature::new(SECURITY_GROUPS_FOR_PODS, None))
                    .await?;
                shared.set_signals_pending(false);
                return Ok(());
            }
            Step::WaitForSlot => {
                log::info!("every ENI slot is taken: SecurityGroupsForPods waits for a free one");
                shared.set_signals_pending(true);
                return Ok(());
            }
            Step::Refuse(r) => {
                let message = r.to_string();
                log::warn!("{message}");
                shared
                    .metrics
                    .sgp_refused
                    .get_or_create(&TypeLabel { instance_type: r.instance_type.clone() })
                    .set(1);
                shared.board.update(|s| s.refused = Some(message.clone()));
                if let Err(e) =
                    shared.clients.kube.event(&node, true, "SecurityGroupsForPodsRefused", &message).await
                {
                    log::warn!("{e}");
                }
                // No slot is held back for a trunk that will not come.
                shared.set_pool(PoolConfig { pod_eni: false, ..shared.pool() });
                shared.set_signals_pending(false);
                return Ok(());
            }
            Step::Done => {
                shared.set_signals_pending(false);
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m5_large() -> NodeFacts {
        NodeFacts {
            custom_networking: true,
            pod_eni: true,
            eni_config: "us-west-2a".into(),
            instance_type: "m5.large".into(),
            max_enis: 3,
            attached_enis: 1,
            trunking_compatible: true,
        }
    }

    fn cn(name: &str) -> Feature {
        Feature::new(CUSTOM_NETWORKING, Some(name))
    }

    /// The #2792 sequence, driven like the startup will drive it: signal, read back, repeat.
    #[test]
    fn custom_networking_is_confirmed_before_security_groups_for_pods() {
        let node = m5_large();
        let mut api: Vec<Feature> = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..5 {
            match next(&node, &api) {
                Step::SignalCustomNetworking(name) => {
                    sent.push(CUSTOM_NETWORKING);
                    api.push(cn(&name));
                }
                Step::SignalSecurityGroupsForPods => {
                    sent.push(SECURITY_GROUPS_FOR_PODS);
                    api.push(Feature::new(SECURITY_GROUPS_FOR_PODS, None));
                }
                Step::Done => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sent, [CUSTOM_NETWORKING, SECURITY_GROUPS_FOR_PODS]);
    }

    #[test]
    fn an_unconfirmed_write_holds_security_groups_for_pods_back() {
        // Our write did not come back (lost, or still in flight): keep signalling CN, never SGP.
        let node = m5_large();
        for _ in 0..3 {
            assert_eq!(next(&node, &[]), Step::SignalCustomNetworking("us-west-2a".into()));
        }
        // A stale value (the node moved to another ENIConfig) is not a confirmation either.
        assert_eq!(next(&node, &[cn("us-west-2b")]), Step::SignalCustomNetworking("us-west-2a".into()));
    }

    #[test]
    fn two_eni_types_are_refused_under_custom_networking() {
        let node = NodeFacts { instance_type: "r7a.medium".into(), max_enis: 2, ..m5_large() };
        let Step::Refuse(r) = next(&node, &[]) else { panic!("{:?}", next(&node, &[])) };
        assert!(
            r.to_string().contains("r7a.medium allows 2 ENIs") && r.to_string().contains("at least 3 ENIs")
        );
        // Without custom networking the same type may trunk (primary ENI keeps pods).
        let plain = NodeFacts { custom_networking: false, ..node };
        assert_eq!(next(&plain, &[]), Step::SignalSecurityGroupsForPods);
    }

    #[test]
    fn no_slot_no_trunking_no_pod_enis_and_the_default_name() {
        let full = NodeFacts { attached_enis: 3, ..m5_large() };
        assert_eq!(next(&full, &[cn("us-west-2a")]), Step::WaitForSlot);
        let t3 = NodeFacts { trunking_compatible: false, ..m5_large() };
        assert_eq!(next(&t3, &[cn("us-west-2a")]), Step::Done);
        assert_eq!(next(&NodeFacts { pod_eni: false, ..m5_large() }, &[]), Step::Done);
        let default = NodeFacts { eni_config: "default".into(), ..m5_large() };
        assert_eq!(
            next(&default, &[]),
            Step::SignalSecurityGroupsForPods,
            "upstream sends no CN for `default`"
        );
        let done = [cn("us-west-2a"), Feature::new(SECURITY_GROUPS_FOR_PODS, None)];
        assert_eq!(next(&m5_large(), &done), Step::Done);
    }
}
