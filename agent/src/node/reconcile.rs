//! The reconcile loop, IMDS first (upstream's `nodeIPPoolReconcile`): ENIs that appeared (the
//! trunk the Resource Controller attached, an ENI an earlier run attached before it died) are
//! described by EC2 once and adopted through the exclusion rule; ENIs that went away leave the
//! datastore. EC2 is asked only about what IMDS shows changed. The Node is read again too (its
//! unschedulable taint gates ENI changes).

use std::time::Duration;

use super::{
    startup::{self, StartError},
    state::Shared,
};

/// Upstream's `nodeIPPoolReconcileInterval`.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);

pub async fn reconcile(shared: &Shared) -> Result<(), StartError> {
    let seen = shared.clients.imds.enis().await?;
    let known = shared.enis();
    let new: Vec<String> = seen.iter().filter(|s| !known.contains_key(&s.id)).map(|s| s.id.clone()).collect();
    if !new.is_empty() {
        let described = shared.clients.ec2.describe_enis(&new).await?;
        for s in seen.iter().filter(|s| new.contains(&s.id)) {
            let Some(d) = described.iter().find(|d| d.id == s.id) else { continue };
            let eni = startup::known_eni(&shared.cfg, &shared.id, s, d);
            if !eni.unmanaged {
                startup::setup_link(&shared.clients.net, &eni, shared.cfg.eni_mtu).await?;
            }
            let (k, cidrs) = (eni.clone(), d.cidrs.clone());
            let findings =
                shared.owner.with(move |ipam| startup::add_eni(&mut ipam.datastore, &k, &cidrs)).await?;
            startup::report_findings(&shared.metrics, &findings);
            log::info!("adopted {} ({}, device {})", eni.id, eni.interface_type, eni.device_number);
            shared.put_eni(eni);
        }
        super::audit::security_groups(shared).await;
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
