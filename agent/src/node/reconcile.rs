//! The reconcile loop, IMDS first (upstream's `nodeIPPoolReconcile`): ENIs that appeared (the
//! trunk the Resource Controller attached, an ENI an earlier run attached before it died) are
//! described by EC2 once and adopted through the exclusion rule; ENIs that went away leave the
//! datastore; an ENI whose addresses in IMDS differ from the datastore's is described by EC2 (IMDS
//! lags), and EC2's answer wins: addresses someone else assigned are added (unless this agent
//! released them less than 60 s ago), addresses that are gone are removed. A difference EC2 has
//! confirmed is not asked about again until IMDS changes. The Node is read again too (its
//! unschedulable taint gates ENI changes).

use std::time::Duration;

use std::collections::BTreeSet;

use crate::{cloud::imds::ImdsEni, ipam::model::Cidr};

use super::{enis, error::NodeError, state::Shared};

/// Upstream's `nodeIPPoolReconcileInterval`.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);

pub async fn reconcile(shared: &Shared) -> Result<(), NodeError> {
    let seen = shared.clients.cloud.attached_enis().await?;
    let known = shared.enis();
    let new: Vec<String> = seen.iter().filter(|s| !known.contains_key(&s.id)).map(|s| s.id.clone()).collect();
    if !new.is_empty() {
        let described = shared.clients.cloud.describe_enis(&new).await?;
        for s in seen.iter().filter(|s| new.contains(&s.id)) {
            let Some(d) = described.iter().find(|d| d.id == s.id) else { continue };
            let eni = enis::known_eni(&shared.cfg, &shared.id, s, d);
            if !eni.unmanaged {
                enis::setup_link(shared.clients.net.as_ref(), &eni, shared.cfg.eni_mtu).await?;
            }
            log::info!("adopted {} ({}, device {})", eni.id, eni.interface_type, eni.device_number);
            enis::adopt(shared, eni, d.cidrs.clone()).await?;
        }
        super::audit::security_groups(shared).await;
    }
    for s in seen.iter().filter(|s| known.contains_key(&s.id)) {
        reconcile_cidrs(shared, s).await?;
    }
    for id in known.keys().filter(|id| !seen.iter().any(|s| &s.id == *id)) {
        let eni = id.clone();
        match shared.owner.with(move |ipam| ipam.datastore.remove_eni(&eni)).await {
            Ok(()) => {
                shared.forget_eni(id);
                log::info!("{id} is no longer attached: removed");
            }
            Err(e) => log::warn!("{id} is no longer attached but {e}"),
        }
    }
    let name = shared.node().name;
    match shared.clients.kube.node(&name).await {
        Ok(n) => shared.set_node(n),
        Err(e) => log::warn!("{e}"),
    }
    Ok(())
}

/// Brings one ENI's addresses in the datastore in line with EC2, when IMDS shows a difference.
async fn reconcile_cidrs(shared: &Shared, seen: &ImdsEni) -> Result<(), NodeError> {
    let imds: BTreeSet<Cidr> = seen.cidrs().into_iter().collect();
    let id = seen.id.clone();
    let held: BTreeSet<Cidr> =
        shared.owner.with(move |ipam| ipam.datastore.cidrs_of(&id)).await.into_iter().collect();
    if imds == held || shared.verified(&seen.id, &imds) {
        return Ok(());
    }
    let Some(ec2) =
        shared.clients.cloud.describe_enis(std::slice::from_ref(&seen.id)).await?.into_iter().next()
    else {
        return Ok(());
    };
    let ec2: BTreeSet<Cidr> = ec2.cidrs.into_iter().collect();
    let add: Vec<Cidr> = ec2.difference(&held).filter(|c| !shared.recently_released(c)).copied().collect();
    let remove: Vec<Cidr> = held.difference(&ec2).copied().collect();
    let id = seen.id.clone();
    let (added, removed, kept) = {
        let (add, remove) = (add.clone(), remove.clone());
        shared
            .owner
            .with(move |ipam| {
                let mut findings = Vec::new();
                for c in add {
                    if let Ok(Some(f)) = ipam.datastore.add_cidr(&id, c) {
                        findings.push(f);
                    }
                }
                let (mut removed, mut kept) = (Vec::new(), Vec::new());
                for c in remove {
                    match ipam.datastore.remove_cidr(&id, c) {
                        Ok(()) => removed.push(c),
                        Err(_) => kept.push(c),
                    }
                }
                (findings, removed, kept)
            })
            .await
    };
    enis::report_findings(&shared.metrics, &added);
    if !add.is_empty() {
        log::info!("{}: EC2 shows {} address ranges this node did not know; added", seen.id, add.len());
    }
    if !removed.is_empty() {
        log::warn!("{}: {} address ranges are gone from EC2; removed", seen.id, removed.len());
    }
    for c in kept {
        log::warn!("{}: {c} is gone from EC2 but still assigned to a pod", seen.id);
    }
    shared.set_verified(&seen.id, imds);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{super::fakes::*, *};
    use crate::cloud::ec2::InterfaceType;

    /// The trunk the Resource Controller attaches after startup is adopted (link set up, known
    /// as the trunk) and its addresses are never handed out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trunk_attached_later_is_adopted_and_never_handed_out() {
        let node = FakeNode::default();
        let shared = node.start(&[]).await.unwrap();
        assert!(shared.trunk().is_none());
        let trunk = node.cloud.attach_foreign(InterfaceType::Trunk, 2, 3, &[]);
        let theirs: BTreeSet<_> = node.cloud.eni(&trunk).unwrap().cidrs.iter().map(|c| c.addr).collect();
        reconcile(&shared).await.unwrap();
        assert_eq!(shared.trunk().map(|t| t.id), Some(trunk.clone()));
        let mac = node.cloud.eni(&trunk).unwrap().mac;
        assert_eq!(node.host.enis.lock().unwrap().get(&mac), Some(&3));
        let handed = take_all(&shared).await;
        assert!(!handed.is_empty() && handed.is_disjoint(&theirs), "{handed:?} vs {theirs:?}");
        assert_eq!(node.world.under_lock(), Vec::<String>::new());
    }

    /// IMDS shows addresses the datastore does not hold: EC2 is asked once and wins (added);
    /// an ENI that is no longer attached leaves the datastore.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ec2_wins_when_imds_differs_and_detached_enis_go() {
        let node = FakeNode::default();
        let shared = node.start(&[]).await.unwrap();
        let extra: BTreeSet<_> = node.cloud.assign_behind(PRIMARY_ENI, 2).iter().map(|c| c.addr).collect();
        reconcile(&shared).await.unwrap();
        let described = node.world.calls_to("ec2 DescribeNetworkInterfaces eni-primary").len();
        reconcile(&shared).await.unwrap();
        assert_eq!(
            node.world.calls_to("ec2 DescribeNetworkInterfaces eni-primary").len(),
            described,
            "a settled difference is not asked about again"
        );
        let handed = take_all(&shared).await;
        assert!(extra.is_subset(&handed), "{extra:?} not in {handed:?}");

        let other = node.cloud.attach_foreign(
            InterfaceType::Interface,
            2,
            0,
            &[("node.k8s.amazonaws.com/instance_id", INSTANCE)],
        );
        reconcile(&shared).await.unwrap();
        assert!(shared.eni(&other).is_some());
        node.cloud.detach_behind(&other);
        reconcile(&shared).await.unwrap();
        assert!(shared.eni(&other).is_none());
        let held = shared.owner.with(move |ipam| ipam.datastore.cidrs_of(&other)).await;
        assert!(held.is_empty());
    }
}
