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

use crate::{cloud::imds::ImdsEni, error::Chain, ipam::model::Cidr};

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
        Err(e) => log::warn!("{}", Chain(&e)),
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
