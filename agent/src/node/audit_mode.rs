//! Audit mode (`eniguard audit`): the guard beside an existing aws-node. It allocates, plumbs and
//! signals nothing and writes nothing of aws-node's: intent comes from aws-node's checkpoint
//! (read only), the ENIConfig and EC2, pods' veths are found by upstream's names, and the guard
//! attaches only to ENI, trunk and pod-veth interfaces. Verdicts are monitor-only: a guard beside
//! someone else's datapath reports, it never drops.
//!
//! The order, in [`start`]: IMDS identity → ENIs (IMDS, then one DescribeNetworkInterfaces) →
//! the Node and its ENIConfig (custom networking) → the checkpoint → derive and apply. Then
//! [`run`] follows the node's pods (branch-ENI pods by their annotation, judged against their
//! SecurityGroupPolicies and their branch ENIs' groups), the checkpoint (re-read when it
//! changes), IMDS (EC2 asked again only when an ENI appears, goes or changes addresses) and the
//! security groups (hourly, as the agent's audit).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use crate::{
    cloud::{
        calls::Calls,
        ec2::{Ec2, EniInfo},
        imds::{Identity, Imds},
    },
    config::Config,
    guard::{
        derive::{self, Inputs, PodAddress},
        live::LiveGuard,
        spec::Mode,
    },
    ipam::{
        checkpoint::Checkpoint,
        model::{Allocation, Cidr, Cidr6},
    },
    kube::{
        client::{Kube, PodInfo},
        eniconfig,
        sgp::SecurityGroupPolicy,
    },
    net::{eni::HostNet, netlink::NetError},
    sync::lock,
};

use super::{
    enis::known_enis,
    error::NodeError,
    pods::PodSink,
    state::{Board, KnownEni},
};

/// How often IMDS is read for ENI changes (the agent's reconcile cadence; upstream's is 60 s).
pub const IMDS_INTERVAL: Duration = Duration::from_secs(60);
/// How often aws-node's checkpoint is looked at (its modification time): pods start in seconds.
pub const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

/// An ENI with its IPv4 addresses and prefixes and its IPv6 prefixes (an IPv6 node's /80).
type Held = (KnownEni, Vec<Cidr>, Vec<Cidr6>);

/// What audit mode knows of the node.
pub struct Observed {
    pub cfg: Config,
    pub id: Identity,
    pub imds: Imds,
    pub ec2: Ec2,
    pub kube: Kube,
    pub net: HostNet,
    pub board: Arc<Board>,
    pub guard: Arc<LiveGuard>,
    /// The primary ENI's groups (what ordinary pods carry without custom networking).
    primary_security_groups: Vec<String>,
    /// The ENIConfig's name and groups (custom networking), None until read.
    eni_config_groups: Mutex<Option<(String, Vec<String>)>>,
    /// Every attached ENI as EC2 describes it, with its addresses and prefixes.
    enis: Mutex<BTreeMap<String, Held>>,
    /// aws-node's checkpoint, as last read, and its modification time.
    checkpoint: Mutex<(Vec<PodAddress>, Option<SystemTime>)>,
    /// The node's pods (watched): branch-ENI pods are known by their annotation.
    pods: Mutex<BTreeMap<(String, String), PodInfo>>,
    /// Branch ENIs' groups as EC2 describes them.
    branch_groups: Mutex<BTreeMap<String, Vec<String>>>,
    /// SecurityGroupPolicies by namespace (those of branch pods' namespaces).
    policies: Mutex<BTreeMap<String, Vec<SecurityGroupPolicy>>>,
    /// A branch pod's namespace or branch ENI has not been looked up yet.
    lookups_due: AtomicBool,
}

/// From nothing to the guard judging aws-node's pods.
pub async fn start(
    cfg: Config,
    calls: Calls,
    kube: Kube,
    net: HostNet,
    board: Arc<Board>,
    guard: Arc<LiveGuard>,
) -> Result<Arc<Observed>, NodeError> {
    let node_name = cfg.node_name.clone().ok_or(NodeError::NoNodeName)?;
    board.step("IMDS identity");
    let imds = Imds::new(calls.clone());
    let id = imds.identity().await?;
    let ec2 = Ec2::new(&id.region, calls, &crate::cloud::ec2::Ec2Options::from_config(&cfg)).await;
    board.step("security groups");
    let primary_security_groups = imds.primary_security_groups(&id.mac).await?;
    let observed = Arc::new(Observed {
        cfg,
        id,
        imds,
        ec2,
        kube,
        net,
        board: board.clone(),
        guard,
        primary_security_groups,
        eni_config_groups: Mutex::new(None),
        enis: Mutex::new(BTreeMap::new()),
        checkpoint: Mutex::new((Vec::new(), None)),
        pods: Mutex::new(BTreeMap::new()),
        branch_groups: Mutex::new(BTreeMap::new()),
        policies: Mutex::new(BTreeMap::new()),
        lookups_due: AtomicBool::new(false),
    });
    board.step("ENIs (IMDS, then one DescribeNetworkInterfaces)");
    observed.refresh_enis().await?;
    if observed.cfg.custom_networking {
        board.step("the node's ENIConfig");
        let node = observed.kube.node(&node_name).await?;
        let name = eniconfig::resolve(
            &node.labels,
            &node.annotations,
            &observed.cfg.eni_config_label,
            &observed.cfg.eni_config_annotation,
        );
        match observed.kube.eni_config(&name.name).await {
            Ok(c) => *lock(&observed.eni_config_groups) = Some((c.name, c.security_groups)),
            // Reported and judged against the primary's groups; read again at each audit.
            Err(e) => log::warn!("custom networking is on but ENIConfig `{}` is unreadable: {e}", name.name),
        }
    }
    board.step("aws-node's checkpoint");
    observed.read_checkpoint()?;
    board.step("guard: intent and truth into the kernel");
    observed.apply(observed.guard.request()).await;
    Ok(observed)
}

impl Observed {
    /// IMDS's ENIs joined with one DescribeNetworkInterfaces.
    async fn refresh_enis(&self) -> Result<(), NodeError> {
        let seen = self.imds.enis().await?;
        let described: Vec<EniInfo> =
            self.ec2.describe_enis(&seen.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await?;
        let known = known_enis(&self.cfg, &self.id, &seen, &described);
        let enis = known
            .into_values()
            .map(|k| {
                let d = described.iter().find(|d| d.id == k.id);
                let cidrs = d.map(|d| d.cidrs.clone()).unwrap_or_default();
                let prefixes6 = d.map(|d| d.ipv6_prefixes.clone()).unwrap_or_default();
                (k.id.clone(), (k, cidrs, prefixes6))
            })
            .collect();
        *lock(&self.enis) = enis;
        Ok(())
    }

    /// Re-reads aws-node's checkpoint if it changed; true when it did.
    fn read_checkpoint(&self) -> Result<bool, NodeError> {
        let path = self.cfg.backing_store.clone();
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if lock(&self.checkpoint).1 == modified && modified.is_some() {
            return Ok(false);
        }
        let read = Checkpoint::new(&path)
            .read()
            .map_err(|source| NodeError::Checkpoint { path: path.clone(), source })?;
        // An IPv6 node's pods are judged by their /128 (the ENI whose /80 holds it).
        let pods = read
            .map(|cp| {
                let v6 = cp.allocations6.into_iter().map(Allocation::widen);
                cp.allocations
                    .into_iter()
                    .map(Allocation::widen)
                    .chain(v6)
                    .map(|a| PodAddress {
                        namespace: a.pod.namespace,
                        name: a.pod.name,
                        ip: a.ip,
                        eni: None,
                        allocated_at: a.allocated_at,
                    })
                    .collect()
            })
            .unwrap_or_default();
        *lock(&self.checkpoint) = (pods, modified);
        Ok(true)
    }

    /// What the derivation needs: the checkpoint's addresses placed on the ENIs EC2 says hold them.
    async fn inputs(&self) -> Result<Inputs, NetError> {
        let links = self.net.links_by_mac().await?;
        let enis = lock(&self.enis).clone();
        let owner = |ip: std::net::IpAddr| {
            let holds = |(_, cidrs, prefixes6): &&Held| match ip {
                std::net::IpAddr::V4(ip) => cidrs.iter().any(|c| c.contains(ip)),
                std::net::IpAddr::V6(ip) => prefixes6.iter().any(|c| c.contains(ip)),
            };
            enis.values().find(holds).map(|(k, ..)| k.id.clone())
        };
        let pods =
            lock(&self.checkpoint).0.iter().map(|p| PodAddress { eni: owner(p.ip), ..p.clone() }).collect();
        let facts = super::guard_feed::eni_facts(
            enis.into_values().map(|(e, ..)| e),
            &links,
            self.cfg.custom_networking,
        );
        let trunk_link = lock(&self.enis)
            .values()
            .find(|(e, ..)| e.trunk())
            .and_then(|(t, ..)| links.get(&t.mac.to_ascii_lowercase()).cloned());
        let branches = super::guard_feed::branch_pods(
            lock(&self.pods).values().cloned(),
            &lock(&self.branch_groups),
            &lock(&self.policies),
            self.cfg.ipv6,
        );
        let eni_config = lock(&self.eni_config_groups).clone();
        let (expected_groups, basis) = derive::expected_groups(
            self.cfg.custom_networking,
            eni_config.as_ref().map(|(name, groups)| (name.as_str(), groups.as_slice())),
            &self.primary_security_groups,
        );
        Ok(Inputs {
            // Beside aws-node the guard reports; it never drops.
            mode: Mode::Monitor,
            enis: facts,
            pods,
            expected_groups,
            veth_prefix: self.cfg.veth_prefix.clone(),
            pod_modes: BTreeMap::new(),
            basis,
            branches,
            trunk_link,
            branch_veth_prefix: super::guard_feed::branch_veth_prefix(&self.cfg),
        })
    }

    /// Looks up what branch pods need and is not known: their namespaces' SecurityGroupPolicies
    /// and their branch ENIs' groups (one DescribeNetworkInterfaces). With `all`, everything is
    /// read again (the security-group audit: a branch ENI's groups can drift too). True when
    /// something was read; a failed lookup is tried again at the next audit or pod change.
    async fn branch_lookups(&self, all: bool) -> bool {
        self.lookups_due.store(false, Ordering::SeqCst);
        let wanted: Vec<(String, String)> = lock(&self.pods)
            .values()
            .filter(|p| p.wants_branch && !p.host_network)
            .filter_map(|p| {
                let eni = crate::kube::pod_eni::parse(p.pod_eni.as_deref()?).ok()?;
                Some((p.namespace.clone(), eni.eni_id))
            })
            .collect();
        let namespaces: BTreeSet<String> = {
            let known = lock(&self.policies);
            wanted.iter().map(|(ns, _)| ns.clone()).filter(|ns| all || !known.contains_key(ns)).collect()
        };
        let enis: Vec<String> = {
            let known = lock(&self.branch_groups);
            let set: BTreeSet<String> =
                wanted.iter().map(|(_, e)| e.clone()).filter(|e| all || !known.contains_key(e)).collect();
            set.into_iter().collect()
        };
        let mut read = false;
        for ns in namespaces {
            match self.kube.security_group_policies(&ns).await {
                Ok(list) => {
                    lock(&self.policies).insert(ns, list);
                    read = true;
                }
                Err(e) => log::warn!("{e}"),
            }
        }
        if !enis.is_empty() {
            match self.ec2.describe_enis(&enis).await {
                Ok(described) => {
                    let mut groups = lock(&self.branch_groups);
                    for d in described {
                        groups.insert(d.id, d.security_groups);
                    }
                    read = true;
                }
                Err(e) => log::warn!("describing branch ENIs {}: {e}", enis.join(", ")),
            }
        }
        read
    }

    async fn apply(&self, ticket: u64) {
        super::guard_feed::apply_inputs(&self.guard, ticket, self.inputs().await).await;
    }

    /// Whether the ENIs IMDS lists (ids and addresses) differ from what was last described.
    async fn imds_changed(&self) -> Result<bool, NodeError> {
        let seen = self.imds.enis().await?;
        let enis = lock(&self.enis);
        Ok(seen.len() != enis.len()
            || seen.iter().any(|s| {
                enis.get(&s.id).is_none_or(|(_, cidrs, _)| {
                    let mut a = s.cidrs();
                    let mut b = cidrs.clone();
                    a.sort();
                    b.sort();
                    a != b
                })
            }))
    }
}

/// Stops the task when dropped (the pod watch ends with [`run`]).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the pods, the checkpoint, IMDS, the security groups and the links until dropped.
pub async fn run(observed: Arc<Observed>) {
    let watch = observed.clone();
    let _pods = AbortOnDrop(tokio::spawn(async move {
        if let Some(node) = watch.cfg.node_name.clone() {
            super::pods::follow(&watch.kube, &node, watch.as_ref()).await;
        }
    }));
    let mut links = super::guard_feed::LinkEvents::new();
    let mut last_imds = tokio::time::Instant::now();
    let mut last_groups = tokio::time::Instant::now();
    loop {
        tokio::select! {
            ticket = observed.guard.requested() => observed.apply(ticket).await,
            events = links.settled() => {
                let prefixes = [observed.cfg.veth_prefix.as_str(), crate::net::names::STRICT_VETH_PREFIX];
                if super::guard_feed::link_events_matter(&events, |n| observed.guard.watches(n), &prefixes) {
                    observed.guard.request();
                }
            }
            () = tokio::time::sleep(CHECKPOINT_POLL) => {
                match observed.read_checkpoint() {
                    Ok(true) => { observed.guard.request(); }
                    Ok(false) => {}
                    Err(e) => log::warn!("{e}"),
                }
                let groups_due = last_groups.elapsed() >= observed.cfg.sg_audit_interval;
                if (groups_due || observed.lookups_due.load(Ordering::SeqCst))
                    && observed.branch_lookups(groups_due).await
                {
                    observed.guard.request();
                }
                if groups_due || last_imds.elapsed() >= IMDS_INTERVAL {
                    last_imds = tokio::time::Instant::now();
                    let changed = observed.imds_changed().await.unwrap_or_else(|e| {
                        log::warn!("IMDS: {e}");
                        false
                    });
                    if changed || groups_due {
                        last_groups = tokio::time::Instant::now();
                        match observed.refresh_enis().await {
                            Ok(()) => { observed.guard.request(); }
                            Err(e) => log::warn!("describing the ENIs: {e}"),
                        }
                    }
                }
            }
        }
    }
}

impl PodSink for Observed {
    fn set_pods(&self, pods: BTreeMap<(String, String), PodInfo>) {
        *lock(&self.pods) = pods;
        self.lookups_due.store(true, Ordering::SeqCst);
        self.guard.request();
    }
    fn put_pod(&self, pod: PodInfo) {
        let old = lock(&self.pods).insert((pod.namespace.clone(), pod.name.clone()), pod.clone());
        if old.as_ref() != Some(&pod) {
            if pod.pod_eni.is_some() {
                self.lookups_due.store(true, Ordering::SeqCst);
            }
            self.guard.request();
        }
    }
    fn forget_pod(&self, pod: &PodInfo) {
        lock(&self.pods).remove(&(pod.namespace.clone(), pod.name.clone()));
        self.guard.request();
    }
}
