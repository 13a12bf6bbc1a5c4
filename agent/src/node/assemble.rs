//! What both address families' startup sequences share (`startup::start` for IPv4, `ipv6::start`
//! for IPv6): their inputs, the state the loops share made from what they found, and their last
//! steps.

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    cloud::{
        calls::Calls,
        imds::{Identity, ImdsEni},
        Cloud,
    },
    config::{Config, EnforcingMode},
    ipam::{
        datastore::{Datastore, DatastoreConfig},
        policy::{Limits, PoolConfig},
        Ipam,
    },
    kube::Cluster,
    net::{host::Host, netlink::NetError},
    observe::agent::Metrics,
};

use super::{
    journal::Journal,
    owner::Owner,
    state::{Board, Changing, Clients, Ipv6Node, KnownEni, Shared},
};

/// What the sequence is given.
pub struct Inputs {
    pub cfg: Config,
    /// --run-dir: the ENI-creation journal lives here.
    pub run_dir: std::path::PathBuf,
    pub cloud: Arc<dyn Cloud>,
    pub kube: Arc<dyn Cluster>,
    pub net: Arc<dyn Host>,
    pub calls: Calls,
    pub metrics: Metrics,
    pub board: Arc<Board>,
    /// The egress guard, loaded (None: ENIGUARD_GUARD_MODE=off).
    pub guard: Option<Arc<crate::guard::live::LiveGuard>>,
}

/// What either family's sequence found, for [`assemble`].
pub struct Found {
    pub id: Identity,
    pub limits: Limits,
    pub ipam: Ipam,
    pub enis: BTreeMap<String, KnownEni>,
    pub primary: ImdsEni,
    pub primary_security_groups: Vec<String>,
    pub journal: Journal,
    /// The VPC's CIDRs of the pods' family.
    pub vpc_cidrs: Vec<String>,
    pub ipv6: Option<Ipv6Node>,
    /// IPv4 mode with IPv6 egress in effect (ENABLE_V6_EGRESS and a node IPv6 address).
    pub v6_egress: bool,
}

/// The state the loops share, from the inputs and what the sequence found.
pub fn assemble(i: Inputs, f: Found) -> Arc<Shared> {
    let clients = Clients { cloud: i.cloud, kube: i.kube, net: i.net, calls: i.calls };
    Arc::new(Shared {
        changing: Changing::new(pool_config(&i.cfg), f.enis),
        cfg: i.cfg,
        limits: f.limits,
        clients,
        owner: Owner::new(f.ipam),
        metrics: i.metrics,
        primary_security_groups: f.primary_security_groups,
        primary_subnet: f.primary.subnet_id.clone(),
        vpc_id: f.primary.vpc_id.clone(),
        vpc_cidrs: f.vpc_cidrs,
        journal: f.journal,
        run_dir: i.run_dir,
        board: i.board,
        guard: i.guard,
        ipv6: f.ipv6,
        v6_egress: f.v6_egress,
        id: f.id,
    })
}

pub fn new_datastore(cfg: &Config) -> Datastore {
    Datastore::new(DatastoreConfig {
        prefix_delegation: cfg.prefix_delegation,
        custom_networking: cfg.custom_networking,
        cooldown_nanos: u64::try_from(cfg.ip_cooldown.as_nanos()).unwrap_or(u64::MAX),
    })
}

/// Where `lookup local` goes in strict mode (upstream's), behind the VLAN rules at 10.
const LOCAL_RULE_PRIORITY_STRICT: u32 = 20;

/// Security groups for pods in strict mode: `lookup local` of the pods' family (`ipv6`) moves
/// from priority 0 to 20, as upstream's host setup does, so that the VLAN rules come first.
pub async fn strict_local_rule(i: &Inputs, ipv6: bool) -> Result<(), NetError> {
    if i.cfg.pod_eni && i.cfg.pod_sg_enforcing_mode == EnforcingMode::Strict {
        i.net.move_local_rule(LOCAL_RULE_PRIORITY_STRICT, ipv6).await?;
    }
    Ok(())
}

/// Both families' last steps: the ENIs' groups against their configuration, then the guard's
/// first intent and truth, so that the first pod's first packet is judged.
pub async fn audit_and_guard(shared: &Shared) {
    super::audit::security_groups(shared).await;
    if let Some(live) = &shared.guard {
        shared.board.step("guard: intent and truth into the kernel");
        super::guard_feed::apply(shared, live, live.request(), &mut Default::default()).await;
    }
}

fn pool_config(cfg: &Config) -> PoolConfig {
    PoolConfig {
        warm_eni_target: cfg.warm_eni_target,
        warm_ip_target: cfg.warm_ip_target,
        minimum_ip_target: cfg.minimum_ip_target,
        warm_prefix_target: cfg.warm_prefix_target,
        max_eni: cfg.max_eni,
        prefix_delegation: cfg.prefix_delegation,
        pod_eni: cfg.pod_eni,
    }
}
