//! Feeds the guard from the node's own state: whenever something it derives from changes (a CNI
//! ADD, DEL or GC, the pod GC, an ENI adopted, created or removed, groups refreshed from EC2, a
//! pod's annotations, a link appearing), the state is read, intent and truth derived
//! ([`crate::guard::derive`]) and applied. Requests made while an apply runs are covered by the
//! next one; a resync runs every [`RESYNC_INTERVAL`] whatever happens.

use std::{sync::Arc, time::Duration};

use crate::{
    config::GuardMode,
    guard::{
        derive::{self, derive, EniFact, Inputs, PodAddress},
        live::LiveGuard,
        spec::Mode,
    },
    ipam::model::exclusion,
    net::{eni::NetError, links::LinkWatch},
};

use super::{startup::flags, state::Shared};

/// A safety net: the state is derived and applied at least this often.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Link events come in bursts (a veth pair: create, rename, up): one apply after they settle.
const LINK_SETTLE: Duration = Duration::from_millis(50);

/// What the derivation needs, read from the node (one short datastore section, one link dump).
pub async fn inputs(node: &Shared) -> Result<Inputs, NetError> {
    let pods: Vec<PodAddress> = node
        .owner
        .with(|ipam| {
            let ds = &ipam.datastore;
            ds.allocations()
                .into_iter()
                .map(|a| PodAddress {
                    namespace: a.pod.namespace,
                    name: a.pod.name,
                    ip: a.ip,
                    eni: ds.eni_of(a.ip).map(|(eni, _)| eni),
                    allocated_at: a.allocated_at,
                })
                .collect()
        })
        .await;
    let links = node.clients.net.links_by_mac().await?;
    let custom_networking = node.cfg.custom_networking;
    let enis = node
        .enis()
        .into_values()
        .map(|e| EniFact {
            link: links.get(&e.mac.to_ascii_lowercase()).cloned(),
            excluded: exclusion(&flags(&e), custom_networking).map(|x| x.to_string()),
            id: e.id,
            security_groups: e.security_groups,
        })
        .collect();
    let (expected_groups, basis) = match (node.cfg.custom_networking, node.eni_config()) {
        (true, Some(c)) if !c.security_groups.is_empty() => {
            (c.security_groups, format!("ENIConfig `{}` (custom networking)", c.name))
        }
        (true, Some(c)) => (
            node.primary_security_groups.clone(),
            format!("ENIConfig `{}` names no groups: the primary ENI's (custom networking)", c.name),
        ),
        (true, None) => (
            node.primary_security_groups.clone(),
            "no ENIConfig read yet: the primary ENI's groups (custom networking)".to_owned(),
        ),
        (false, _) => (
            node.primary_security_groups.clone(),
            "the primary ENI's groups (no custom networking)".to_owned(),
        ),
    };
    let mut pod_modes = std::collections::BTreeMap::new();
    for ((namespace, name), p) in node.pods() {
        let Some(value) = p.guard_mode else { continue };
        match derive::pod_mode(&value) {
            Ok(mode) => {
                pod_modes.insert((namespace, name), mode);
            }
            Err(e) => log::warn!("pod {namespace}/{name}: {e}; the node's mode applies"),
        }
    }
    Ok(Inputs {
        mode: node_mode(node.cfg.guard_mode),
        enis,
        pods,
        expected_groups,
        veth_prefix: node.cfg.veth_prefix.clone(),
        pod_modes,
        basis,
    })
}

fn node_mode(mode: GuardMode) -> Mode {
    match mode {
        GuardMode::Enforce => Mode::Enforce,
        GuardMode::Monitor | GuardMode::Off => Mode::Monitor,
    }
}

/// Derives and applies once, covering `ticket`.
pub async fn apply(node: &Shared, live: &LiveGuard, ticket: u64) {
    let derived = match inputs(node).await {
        Ok(i) => derive(&i),
        Err(e) => {
            log::warn!("guard: reading the node's links: {e}");
            return;
        }
    };
    let before = live.findings();
    let findings = derived.findings.clone();
    match live.apply(ticket, derived).await {
        Ok(()) => {
            for f in findings.iter().filter(|f| !before.contains(f)) {
                log::warn!(
                    "guard: pod {}/{} has {} on {} ({}): its packets are judged against the groups it should carry",
                    f.namespace,
                    f.pod,
                    f.ip,
                    f.eni,
                    f.reason
                );
            }
        }
        Err(e) => log::error!("guard: {e}"),
    }
}

/// Applies on every request, on link events and every [`RESYNC_INTERVAL`], until dropped.
pub async fn run(node: Arc<Shared>, live: Arc<LiveGuard>) {
    let mut links = match LinkWatch::new() {
        Ok(w) => Some(w),
        Err(e) => {
            log::error!("guard: no link notifications ({e}); interfaces are picked up at each resync");
            None
        }
    };
    loop {
        let link_event = async {
            match links.as_mut() {
                Some(w) => w.next().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ticket = live.requested() => apply(&node, &live, ticket).await,
            event = link_event => {
                if let Err(e) = event {
                    log::warn!("guard: link notifications: {e}");
                }
                tokio::time::sleep(LINK_SETTLE).await;
                live.request();
            }
            () = tokio::time::sleep(RESYNC_INTERVAL) => {
                live.request();
            }
        }
    }
}
