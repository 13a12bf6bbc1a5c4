//! What the startup sequence learns and the loops share: the clients, the instance, its ENIs as
//! EC2 and IMDS describe them, the Node, its ENIConfig, and the node's status.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use crate::{
    cloud::{
        calls::Calls,
        ec2::{InterfaceType, SubnetInfo},
        imds::Identity,
        Cloud,
    },
    config::Config,
    ipam::{model::Cidr, policy::Limits, policy::PoolConfig},
    kube::{
        client::{EniConfig, NodeInfo, PodInfo},
        Cluster,
    },
    net::host::Host,
    observe::agent::Metrics,
    sync::lock,
};

use super::owner::Owner;

/// The clients, built once and shared: the node layer's seams (real clients in the agent,
/// in-memory ones in its unit tests).
#[derive(Clone)]
pub struct Clients {
    pub cloud: Arc<dyn Cloud>,
    pub kube: Arc<dyn Cluster>,
    pub net: Arc<dyn Host>,
    pub calls: Calls,
}

/// An ENI attached to this instance, with what the host side needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownEni {
    pub id: String,
    pub mac: String,
    pub device_number: u32,
    pub primary_ip: Ipv4Addr,
    pub subnet_id: String,
    pub subnet_cidr: Cidr,
    pub attachment_id: Option<String>,
    /// The groups EC2 reports (never assumed).
    pub security_groups: Vec<String>,
    pub interface_type: InterfaceType,
    pub primary: bool,
    /// Tagged node.k8s.amazonaws.com/no_manage=true, or untagged with MANAGE_UNTAGGED_ENI=false.
    pub unmanaged: bool,
}

impl KnownEni {
    pub fn trunk(&self) -> bool {
        self.interface_type == InterfaceType::Trunk
    }
}

/// The node's status as the health endpoint and the logs show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The startup step running now, or `ready`.
    pub step: String,
    pub ready: bool,
    /// Why security groups for pods was refused, if it was.
    pub refused: Option<String>,
    /// The last problem that keeps the node from progressing (missing ENIConfig, subnet full).
    pub problem: Option<String>,
}

/// Everything the loops share. The fixed parts are set once by the startup sequence; what
/// changes lives in [`Changing`], behind short locks.
pub struct Shared {
    pub cfg: Config,
    pub id: Identity,
    pub limits: Limits,
    pub clients: Clients,
    pub owner: Owner,
    pub metrics: Metrics,
    pub primary_security_groups: Vec<String>,
    pub primary_subnet: String,
    pub vpc_id: String,
    /// The VPC's CIDRs of the pods' family (IMDS): IPv4's are not SNATed.
    pub vpc_cidrs: Vec<String>,
    pub journal: super::journal::Journal,
    /// --run-dir: the socket, the journal, the CNI plugin's DEL queue.
    pub run_dir: std::path::PathBuf,
    pub board: Arc<Board>,
    pub changing: Changing,
    /// The egress guard, fed from this state (None: ENIGUARD_GUARD_MODE=off).
    pub guard: Option<Arc<crate::guard::live::LiveGuard>>,
    /// IPv6 mode's /80 and node address (ENABLE_IPv6); None in IPv4 mode.
    pub ipv6: Option<Ipv6Node>,
    /// IPv4 mode with IPv6 egress in effect (ENABLE_V6_EGRESS and a node IPv6 address).
    pub v6_egress: bool,
}

/// What IPv6 mode's pods are given, found at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Node {
    /// The primary ENI, which holds the /80.
    pub primary_eni: String,
    pub prefix: crate::ipam::model::Cidr6,
    /// The instance's own IPv6 address (IMDS), the network-policy agent's NodeIPv6.
    pub node_ip: Option<std::net::Ipv6Addr>,
}

/// The parts of [`Shared`] that change while the node runs.
#[derive(Default)]
pub struct Changing {
    pub pool: Mutex<PoolConfig>,
    pub enis: Mutex<BTreeMap<String, KnownEni>>,
    node: Mutex<NodeInfo>,
    eni_config: Mutex<Option<EniConfig>>,
    /// Security groups for pods still to be signalled (no ENI slot was free yet).
    signals_pending: Mutex<bool>,
    /// The pool pauses until then (subnet out of addresses, an ENIConfig EC2 rejects).
    paused_until: Mutex<Option<std::time::Instant>>,
    /// Address ranges this agent released, and when (not re-imported for 60 s, as upstream).
    released: Mutex<BTreeMap<Cidr, std::time::Instant>>,
    /// Per ENI, the IMDS view whose difference from the datastore EC2 has already settled.
    verified: Mutex<BTreeMap<String, std::collections::BTreeSet<Cidr>>>,
    /// The pods on this node, by (namespace, name).
    pods: Mutex<BTreeMap<(String, String), PodInfo>>,
    /// Whether the pod watch has delivered its first full list.
    pods_synced: std::sync::atomic::AtomicBool,
    /// Branch ENIs' groups as EC2 last reported them (the guard's truth for branch pods).
    branch_groups: Mutex<BTreeMap<String, Vec<String>>>,
    /// SecurityGroupPolicies by namespace, as last read (the guard's intent for branch pods).
    policies: Mutex<BTreeMap<String, Vec<crate::kube::sgp::SecurityGroupPolicy>>>,
    /// Subnet discovery's last DescribeSubnets.
    pub subnets: SubnetCache,
}

impl Changing {
    pub fn new(pool: PoolConfig, enis: BTreeMap<String, KnownEni>) -> Self {
        Self { pool: Mutex::new(pool), enis: Mutex::new(enis), ..Default::default() }
    }
}

/// How long subnet discovery uses a DescribeSubnets answer.
pub const SUBNETS_CACHED_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// The last DescribeSubnets answer, and when it came.
#[derive(Debug, Default)]
pub struct SubnetCache(Mutex<Option<(std::time::Instant, Vec<SubnetInfo>)>>);

impl SubnetCache {
    pub fn fresh(&self) -> Option<Vec<SubnetInfo>> {
        lock(&self.0).as_ref().filter(|(at, _)| at.elapsed() < SUBNETS_CACHED_FOR).map(|(_, s)| s.clone())
    }
    pub fn put(&self, subnets: Vec<SubnetInfo>) {
        *lock(&self.0) = Some((std::time::Instant::now(), subnets));
    }
    /// A subnet turned out full: the next ENI asks EC2 again.
    pub fn forget(&self) {
        *lock(&self.0) = None;
    }
}

/// Upstream's `ipReconcileCooldown`.
pub const RELEASE_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(60);

/// The node's status, shared with the health endpoint from the first step on.
#[derive(Debug, Default)]
pub struct Board {
    status: Mutex<Status>,
}

impl Board {
    pub fn get(&self) -> Status {
        lock(&self.status).clone()
    }
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }
    pub fn step(&self, step: &str) {
        log::info!("startup: {step}");
        self.update(|s| s.step = step.to_owned());
    }
}

impl Shared {
    pub fn pool(&self) -> PoolConfig {
        *lock(&self.changing.pool)
    }
    pub fn set_pool(&self, pool: PoolConfig) {
        *lock(&self.changing.pool) = pool;
    }
    pub fn enis(&self) -> BTreeMap<String, KnownEni> {
        lock(&self.changing.enis).clone()
    }
    pub fn eni(&self, id: &str) -> Option<KnownEni> {
        lock(&self.changing.enis).get(id).cloned()
    }
    pub fn put_eni(&self, eni: KnownEni) {
        lock(&self.changing.enis).insert(eni.id.clone(), eni);
        self.guard_changed();
    }
    pub fn forget_eni(&self, id: &str) -> Option<KnownEni> {
        let gone = lock(&self.changing.enis).remove(id);
        self.guard_changed();
        gone
    }
    /// Something the guard's intent or truth derives from changed: the guard feed re-derives
    /// soon (see `node::guard_feed`).
    pub fn guard_changed(&self) {
        if let Some(g) = &self.guard {
            g.request();
        }
    }
    /// Like [`Self::guard_changed`], and waits until the kernel holds the state as of now.
    pub async fn guard_sync(&self) -> Result<(), crate::guard::GuardError> {
        match &self.guard {
            Some(g) => g.sync().await,
            None => Ok(()),
        }
    }
    pub fn trunk(&self) -> Option<KnownEni> {
        lock(&self.changing.enis).values().find(|e| e.trunk()).cloned()
    }
    pub fn node(&self) -> NodeInfo {
        lock(&self.changing.node).clone()
    }
    pub fn set_node(&self, node: NodeInfo) {
        *lock(&self.changing.node) = node;
    }
    /// The node's ENIConfig name, resolved from its labels and annotations as upstream.
    pub fn eni_config_name(&self) -> crate::kube::eniconfig::EniConfigName {
        let node = self.node();
        crate::kube::eniconfig::resolve(
            &node.labels,
            &node.annotations,
            &self.cfg.eni_config_label,
            &self.cfg.eni_config_annotation,
        )
    }
    pub fn eni_config(&self) -> Option<EniConfig> {
        lock(&self.changing.eni_config).clone()
    }
    pub fn set_eni_config(&self, c: Option<EniConfig>) {
        *lock(&self.changing.eni_config) = c;
    }
    pub fn pods(&self) -> BTreeMap<(String, String), PodInfo> {
        lock(&self.changing.pods).clone()
    }
    pub fn set_pods(&self, pods: BTreeMap<(String, String), PodInfo>) {
        *lock(&self.changing.pods) = pods;
        self.changing.pods_synced.store(true, std::sync::atomic::Ordering::Release);
        self.guard_changed();
    }
    /// The pods, once the watch has listed them all (None before: absence means nothing yet).
    pub fn synced_pods(&self) -> Option<BTreeMap<(String, String), PodInfo>> {
        self.changing.pods_synced.load(std::sync::atomic::Ordering::Acquire).then(|| self.pods())
    }
    pub fn put_pod(&self, pod: PodInfo) {
        let old = lock(&self.changing.pods).insert((pod.namespace.clone(), pod.name.clone()), pod.clone());
        // Annotations and labels are intent (guard mode, branch ENI, policy selection).
        if old.as_ref() != Some(&pod) {
            self.guard_changed();
        }
    }
    pub fn forget_pod(&self, pod: &PodInfo) {
        lock(&self.changing.pods).remove(&(pod.namespace.clone(), pod.name.clone()));
        self.guard_changed();
    }
    pub fn branch_groups(&self) -> BTreeMap<String, Vec<String>> {
        lock(&self.changing.branch_groups).clone()
    }
    pub fn set_branch_groups(&self, eni: &str, groups: Vec<String>) {
        lock(&self.changing.branch_groups).insert(eni.to_owned(), groups);
        self.guard_changed();
    }
    pub fn policies(&self) -> BTreeMap<String, Vec<crate::kube::sgp::SecurityGroupPolicy>> {
        lock(&self.changing.policies).clone()
    }
    pub fn set_policies(&self, namespace: &str, policies: Vec<crate::kube::sgp::SecurityGroupPolicy>) {
        lock(&self.changing.policies).insert(namespace.to_owned(), policies);
        self.guard_changed();
    }
    pub fn note_released(&self, cidrs: &[Cidr]) {
        let mut r = lock(&self.changing.released);
        r.retain(|_, at| at.elapsed() < RELEASE_COOLDOWN);
        for c in cidrs {
            r.insert(*c, std::time::Instant::now());
        }
    }
    pub fn recently_released(&self, cidr: &Cidr) -> bool {
        lock(&self.changing.released).get(cidr).is_some_and(|at| at.elapsed() < RELEASE_COOLDOWN)
    }
    pub fn verified(&self, eni: &str, imds: &std::collections::BTreeSet<Cidr>) -> bool {
        lock(&self.changing.verified).get(eni) == Some(imds)
    }
    pub fn set_verified(&self, eni: &str, imds: std::collections::BTreeSet<Cidr>) {
        lock(&self.changing.verified).insert(eni.to_owned(), imds);
    }
    pub fn pause_until(&self, until: std::time::Instant) {
        *lock(&self.changing.paused_until) = Some(until);
    }
    /// True while the pool is paused.
    pub fn paused(&self) -> bool {
        lock(&self.changing.paused_until).is_some_and(|t| std::time::Instant::now() < t)
    }
    pub fn signals_pending(&self) -> bool {
        *lock(&self.changing.signals_pending)
    }
    pub fn set_signals_pending(&self, pending: bool) {
        *lock(&self.changing.signals_pending) = pending;
    }

    /// Where new ENIs go and which groups they get: the ENIConfig's subnet and groups under
    /// custom networking (the primary ENI's groups when it lists none), else the primary ENI's.
    pub fn new_eni_placement(&self) -> Option<(String, Vec<String>)> {
        if !self.cfg.custom_networking {
            return Some((self.primary_subnet.clone(), self.primary_security_groups.clone()));
        }
        let c = self.eni_config()?;
        let groups = if c.security_groups.is_empty() {
            self.primary_security_groups.clone()
        } else {
            c.security_groups
        };
        Some((c.subnet, groups))
    }
}
