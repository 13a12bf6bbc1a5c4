//! Feeds the guard from the node's own state: whenever something it derives from changes (a CNI
//! ADD, DEL or GC, the pod GC, an ENI adopted, created or removed, groups refreshed from EC2, a
//! pod's annotations, a link appearing), the state is read, intent and truth derived
//! ([`crate::guard::derive`]) and applied. Requests made while an apply runs are covered by the
//! next one; a resync runs every [`RESYNC_INTERVAL`] whatever happens.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{
    config::GuardMode,
    guard::{
        derive::{self, derive, BranchPod, EniFact, Inputs, PodAddress},
        live::LiveGuard,
        spec::Mode,
    },
    ipam::model::exclusion,
    kube::{client::PodInfo, sgp::SecurityGroupPolicy},
    net::{
        links::{LinkEvent, LinkWatch},
        names::{host_veth_prefix, is_host_veth_name, STRICT_VETH_PREFIX},
        netlink::NetError,
    },
};

use super::{
    enis::flags,
    state::{KnownEni, Shared},
};

/// A safety net: the state is derived and applied at least this often.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Link events come in bursts (a veth pair: create, rename, up): one apply after they settle.
const LINK_SETTLE: Duration = Duration::from_millis(50);

/// The node's links by MAC (the derivation finds ENIs' and the trunk's interfaces in it), dumped
/// again only when it may have changed: a link event that matters, the resync, or a known ENI
/// missing from it (one just attached). A pod's veth coming or going changes no ENI's link, and
/// a dump waits for RTNL, which the kernel holds while a namespace's devices are deleted: under
/// pod churn every apply waited for it.
#[derive(Debug, Default)]
pub struct LinkTable(Option<BTreeMap<String, String>>);

impl LinkTable {
    pub fn invalidate(&mut self) {
        self.0 = None;
    }

    async fn read(&mut self, node: &Shared) -> Result<BTreeMap<String, String>, NetError> {
        let mut macs: Vec<String> = node.enis().into_values().map(|e| e.mac.to_ascii_lowercase()).collect();
        macs.extend(node.trunk().map(|t| t.mac.to_ascii_lowercase()));
        match &self.0 {
            Some(links) if macs.iter().all(|m| links.contains_key(m)) => Ok(links.clone()),
            _ => {
                let links = node.clients.net.links_by_mac().await?;
                self.0 = Some(links.clone());
                Ok(links)
            }
        }
    }
}

/// What the derivation needs, read from the node (one short datastore section; the links from
/// `table`).
pub async fn inputs(node: &Shared, table: &mut LinkTable) -> Result<Inputs, NetError> {
    // IPv6 mode's pods are all on the primary ENI, which holds the /80.
    let primary6 = node.ipv6.as_ref().map(|v6| v6.primary_eni.clone());
    let pods: Vec<PodAddress> = node
        .owner
        .with(move |ipam| {
            let ds = &ipam.datastore;
            let address = |a: crate::ipam::model::Allocation<std::net::IpAddr>, eni| PodAddress {
                namespace: a.pod.namespace,
                name: a.pod.name,
                ip: a.ip,
                eni,
                allocated_at: a.allocated_at,
            };
            let v6 = ipam.pool6.iter().flat_map(|p| p.allocations());
            ds.allocations()
                .into_iter()
                .map(|a| {
                    let eni = ds.eni_of(a.ip).map(|(eni, _)| eni);
                    address(a.widen(), eni)
                })
                .chain(v6.map(|a| address(a.widen(), primary6.clone())))
                .collect()
        })
        .await;
    let links = table.read(node).await?;
    let enis = eni_facts(node.enis().into_values(), &links, node.cfg.custom_networking);
    let eni_config = node.eni_config();
    let (expected_groups, basis) = derive::expected_groups(
        node.cfg.custom_networking,
        eni_config.as_ref().map(|c| (c.name.as_str(), c.security_groups.as_slice())),
        &node.primary_security_groups,
    );
    let mut pod_modes = BTreeMap::new();
    for ((namespace, name), p) in node.pods() {
        let Some(value) = p.guard_mode else { continue };
        match derive::pod_mode(&value) {
            Ok(mode) => {
                pod_modes.insert((namespace, name), mode);
            }
            Err(e) => log::warn!("pod {namespace}/{name}: {e}; the node's mode applies"),
        }
    }
    let trunk_link = node.trunk().and_then(|t| links.get(&t.mac.to_ascii_lowercase()).cloned());
    let branches = if node.cfg.pod_eni {
        branch_pods(node.pods().into_values(), &node.branch_groups(), &node.policies(), node.ipv6.is_some())
    } else {
        Vec::new()
    };
    Ok(Inputs {
        branches,
        trunk_link,
        branch_veth_prefix: branch_veth_prefix(&node.cfg),
        mode: node_mode(node.cfg.guard_mode),
        enis,
        pods,
        expected_groups,
        veth_prefix: node.cfg.veth_prefix.clone(),
        pod_modes,
        basis,
    })
}

/// The node's branch-ENI pods, from their annotations (the Resource Controller's), their
/// namespaces' SecurityGroupPolicies and their branch ENIs' groups as EC2 reported them; each
/// pod's address of the node's family (`ipv6`: IPv6 mode).
pub fn branch_pods(
    pods: impl Iterator<Item = PodInfo>,
    groups: &BTreeMap<String, Vec<String>>,
    policies: &BTreeMap<String, Vec<SecurityGroupPolicy>>,
    ipv6: bool,
) -> Vec<BranchPod> {
    pods.filter(|p| p.wants_branch && !p.host_network)
        .filter_map(|p| {
            let (eni, (ip, _)) = crate::kube::pod_eni::parse(p.pod_eni.as_deref()?)
                .and_then(|eni| eni.address(ipv6).map(|a| (eni, a)))
                .inspect_err(|e| log::warn!("pod {}/{}: {e}", p.namespace, p.name))
                .ok()?;
            let (expected, names) = policies
                .get(&p.namespace)
                .map(|list| crate::kube::sgp::groups_for(list, &p.labels))
                .unwrap_or_default();
            let basis = if names.is_empty() {
                "no SecurityGroupPolicy selects it (by its labels)".to_owned()
            } else {
                format!(
                    "SecurityGroupPolicy {}",
                    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                )
            };
            Some(BranchPod {
                ip,
                vlan: eni.vlan_id,
                actual_groups: groups.get(&eni.eni_id).cloned(),
                eni: eni.eni_id,
                expected_groups: expected,
                basis,
                namespace: p.namespace,
                name: p.name,
            })
        })
        .collect()
}

/// The name prefix of a branch pod's host interface: strict mode plumbs it as `vlan<hash>`,
/// standard as an ordinary veth (upstream's POD_SECURITY_GROUP_ENFORCING_MODE).
pub fn branch_veth_prefix(cfg: &crate::config::Config) -> String {
    host_veth_prefix(Some(cfg.pod_sg_enforcing_mode), &cfg.veth_prefix).to_owned()
}

/// Truth's raw material: each ENI with the link that has its MAC (if any yet) and, for an ENI
/// that never serves ordinary pods, why.
pub fn eni_facts(
    enis: impl Iterator<Item = KnownEni>,
    links: &BTreeMap<String, String>,
    custom_networking: bool,
) -> Vec<EniFact> {
    enis.map(|e| EniFact {
        link: links.get(&e.mac.to_ascii_lowercase()).cloned(),
        excluded: exclusion(&flags(&e), custom_networking).map(|x| x.to_string()),
        id: e.id,
        security_groups: e.security_groups,
    })
    .collect()
}

fn node_mode(mode: GuardMode) -> Mode {
    match mode {
        GuardMode::Enforce => Mode::Enforce,
        GuardMode::Monitor | GuardMode::Off => Mode::Monitor,
    }
}

/// Derives and applies once, covering `ticket`.
pub async fn apply(node: &Shared, live: &LiveGuard, ticket: u64, table: &mut LinkTable) {
    apply_inputs(live, ticket, inputs(node, table).await).await;
}

/// Derives from `inputs` and applies, covering `ticket`; a finding is logged once, when it
/// appears. Shared with audit mode.
pub async fn apply_inputs(live: &LiveGuard, ticket: u64, inputs: Result<Inputs, NetError>) {
    let derived = match inputs {
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
                    "finding: pod {}/{} has {} on {} ({}): no pod may be given that address; its packets are judged against the groups it should carry",
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

/// Link notifications for the guard (a veth or ENI link appearing or going); without them,
/// interfaces are picked up at each resync.
pub struct LinkEvents(Option<LinkWatch>);

impl LinkEvents {
    pub fn new() -> Self {
        match LinkWatch::new() {
            Ok(w) => Self(Some(w)),
            Err(e) => {
                log::error!("guard: no link notifications ({e}); interfaces are picked up at each resync");
                Self(None)
            }
        }
    }

    /// Returns once a burst of link events has come and settled, with the events.
    pub async fn settled(&mut self) -> Vec<LinkEvent> {
        match self.0.as_mut() {
            Some(w) => match w.next_settled(LINK_SETTLE).await {
                Ok(events) => events,
                Err(e) => {
                    log::warn!("guard: link notifications: {e}; interfaces are picked up at each resync");
                    self.0 = None;
                    // One more apply: whatever changed before the watch ended.
                    vec![LinkEvent::New { ifindex: 0, name: String::new() }]
                }
            },
            None => std::future::pending().await,
        }
    }
}

/// Whether link events can change what the guard holds. The only ones that cannot are those of
/// pod host veths (by their shape, for `veth_prefixes`) that the state last applied does not
/// name: a DEL's veth going away after the DEL's own sync dropped the pod. Without this, each
/// DEL brought one more apply (a link dump and a derivation) 50 ms later, competing with the
/// runtime for the node's CPUs. Anything else (an ENI's link, a VLAN, lost notifications, a
/// pod's veth appearing after its ADD's sync) applies; the resync reads everything back anyway.
pub fn link_events_matter(
    events: &[LinkEvent],
    watched: impl Fn(&str) -> bool,
    veth_prefixes: &[&str],
) -> bool {
    events.iter().any(|e| {
        let name = e.name();
        name.is_empty() || watched(name) || !veth_prefixes.iter().any(|p| is_host_veth_name(name, p))
    })
}

/// Whether `name` is shaped like a pod's host veth (the node's prefix or strict mode's).
fn is_pod_veth(name: &str, veth_prefix: &str) -> bool {
    [veth_prefix, STRICT_VETH_PREFIX].iter().any(|p| is_host_veth_name(name, p))
}

impl Default for LinkEvents {
    fn default() -> Self {
        Self::new()
    }
}

/// Applies on every request, on link events and every [`RESYNC_INTERVAL`], until dropped.
pub async fn run(node: Arc<Shared>, live: Arc<LiveGuard>) {
    let mut links = LinkEvents::new();
    let mut table = LinkTable::default();
    loop {
        tokio::select! {
            ticket = live.requested() => apply(&node, &live, ticket, &mut table).await,
            events = links.settled() => {
                if link_events_matter(&events, |n| live.watches(n), &[&node.cfg.veth_prefix, STRICT_VETH_PREFIX]) {
                    if events.iter().any(|e| !is_pod_veth(e.name(), &node.cfg.veth_prefix)) {
                        table.invalidate();
                    }
                    live.request();
                }
            }
            () = tokio::time::sleep(RESYNC_INTERVAL) => {
                table.invalidate();
                live.request_reread();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_veths_the_guard_no_longer_judges_are_ignored() {
        let watched = |n: &str| n == "eni68caf03a5f4" || n == "eth1";
        let prefixes = ["eni", STRICT_VETH_PREFIX];
        let new = |name: &str| LinkEvent::New { ifindex: 9, name: name.into() };
        let gone = |name: &str| LinkEvent::Removed { ifindex: 9, name: name.into() };
        // A DEL's veth going away (down, then removed) after the DEL's sync dropped it.
        assert!(!link_events_matter(&[new("eni0123456789a"), gone("eni0123456789a")], watched, &prefixes));
        assert!(!link_events_matter(&[gone("vlan0123456789a")], watched, &prefixes));
        // A judged pod's veth, an ENI or VLAN link, lost notifications: apply.
        assert!(link_events_matter(&[gone("eni0123456789a"), new("eni68caf03a5f4")], watched, &prefixes));
        assert!(link_events_matter(&[new("eth2")], watched, &prefixes));
        assert!(link_events_matter(&[new("vlan.eth.5")], watched, &prefixes));
        assert!(link_events_matter(&[new("")], watched, &prefixes));
    }
}
