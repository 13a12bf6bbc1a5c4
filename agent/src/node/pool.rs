//! The pool loop: asks the policy (`ipam::policy::decide`) what the pool needs and carries it out
//! in EC2 and on the host, outside the datastore's lock. Upstream's cadence is 5 s
//! (`ipPoolMonitorInterval`); after EC2 says the subnet is out of addresses the loop pauses 120 s
//! (`insufficientCidrErrorCooldown`); an unschedulable node gets no ENI changes unless
//! AWS_MANAGE_ENIS_NON_SCHEDULABLE.

use std::time::{Duration, Instant};

use crate::{
    cloud::{
        calls::FnLabel,
        ec2::{Ec2Error, NewEni, SUBNET_FULL},
    },
    ipam::{
        model::{Cidr, UnixNanos},
        policy::{self, Action, NodeState},
    },
    observe::awscni::{CidrLabel, EniLabel},
    sync::backoff,
};

use super::{
    enis,
    error::NodeError,
    journal::Pending,
    owner::now,
    signals,
    state::{KnownEni, Shared},
    subnets,
};

pub const POOL_INTERVAL: Duration = Duration::from_secs(5);
pub const SUBNET_PAUSE: Duration = Duration::from_secs(120);
/// EC2's answers to a subnet or security group that does not exist: a configuration error,
/// reported and retried after [`SUBNET_PAUSE`] (the ENIConfig is read again then).
const BAD_PLACEMENT: &[&str] = &[
    "InvalidSubnetID.NotFound",
    "InvalidSubnetID.Malformed",
    "InvalidGroup.NotFound",
    "InvalidGroupId.Malformed",
    "InvalidSecurityGroupID.NotFound",
];

/// The loop's memory between ticks.
#[derive(Debug, Default)]
pub struct PoolState {
    pub last_decrease: Option<UnixNanos>,
    /// When the pool last changed (the reconcile loop waits 60 s after one, as upstream).
    pub last_action: Option<Instant>,
}

/// Grows the pool at start until the policy asks for nothing more (or nothing more is possible).
pub async fn prescale(shared: &Shared) {
    let mut state = PoolState::default();
    for _ in 0..16 {
        match tick(shared, &mut state).await {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                log::warn!("pre-scale: {e}");
                break;
            }
        }
    }
}

fn max_pods(shared: &Shared) -> u32 {
    let l = &shared.limits;
    shared.node().max_pods.unwrap_or(l.max_enis * l.ipv4_per_eni.saturating_sub(1) + 2)
}

/// One tick; true when it changed the pool (another tick may be due at once).
pub async fn tick(shared: &Shared, state: &mut PoolState) -> Result<bool, NodeError> {
    if shared.paused() {
        return Ok(false);
    }
    if shared.signals_pending() {
        signals::signal(shared).await?;
    }
    // DISABLE_NETWORK_RESOURCE_PROVISIONING: the pool is what is attached; reconcile follows it.
    if shared.cfg.disable_provisioning {
        update_gauges(shared).await;
        return Ok(false);
    }
    let cfg = shared.pool();
    let limits = shared.limits;
    let node = NodeState {
        max_pods: max_pods(shared),
        trunk_attached: shared.trunk().is_some(),
        last_decrease: state.last_decrease,
    };
    let mut actions =
        shared.owner.with(move |ipam| policy::decide(&cfg, &ipam.datastore, &limits, &node, now())).await;
    if shared.node().unschedulable && !shared.cfg.manage_enis_non_schedulable {
        actions.retain(|a| !matches!(a, Action::CreateEni { .. } | Action::DeleteEni { .. }));
    }
    let mut changed = false;
    for action in actions {
        let shrinking = matches!(action, Action::ReleaseCidrs { .. } | Action::DeleteEni { .. });
        let upstream = &shared.metrics.upstream;
        let busy =
            upstream.in_progress(if shrinking { "decreaseDatastorePool" } else { "increaseDatastorePool" });
        let done = execute(shared, &action).await;
        drop(busy);
        match done {
            Ok(did) => {
                changed |= did;
                if did && shrinking {
                    state.last_decrease = Some(now());
                }
            }
            Err(NodeError::Ec2(e)) if SUBNET_FULL.iter().any(|c| e.is(c)) => {
                subnet_full(shared, &e).await;
                return Ok(changed);
            }
            Err(NodeError::Ec2(e))
                if e.action == "CreateNetworkInterface" && BAD_PLACEMENT.iter().any(|c| e.is(c)) =>
            {
                bad_placement(shared, &NodeError::Ec2(e)).await;
                return Ok(changed);
            }
            Err(e @ NodeError::NoValidSubnet { .. }) => {
                shared.metrics.no_valid_subnet.inc();
                bad_placement(shared, &e).await;
                return Ok(changed);
            }
            Err(e) => {
                shared.metrics.pool_errors.inc();
                upstream.ipamd_errors.get_or_create(&FnLabel { r#fn: action.name().into() }).inc();
                log::warn!("pool: {action:?}: {e}");
            }
        }
    }
    if changed {
        state.last_action = Some(Instant::now());
    }
    update_gauges(shared).await;
    Ok(changed)
}

async fn subnet_full(shared: &Shared, e: &Ec2Error) {
    shared.pause_until(Instant::now() + SUBNET_PAUSE);
    shared.metrics.subnet_exhausted.inc();
    let message = format!("{e}; the pool pauses for {} s", SUBNET_PAUSE.as_secs());
    log::warn!("{message}");
    shared.board.update(|s| s.problem = Some(message.clone()));
    if let Err(err) = shared.clients.kube.event(&shared.node(), true, "SubnetExhausted", &message).await {
        log::warn!("{err}");
    }
}

/// No ENI can be created where the configuration says: the pool pauses, the node says why
/// (status and a Warning Event: `InvalidENIConfig`, `NoValidSubnet` or `ENICreationFailed`).
async fn bad_placement(shared: &Shared, e: &NodeError) {
    shared.pause_until(Instant::now() + SUBNET_PAUSE);
    let (reason, source) = match shared.eni_config() {
        Some(c) if shared.cfg.custom_networking => (
            "InvalidENIConfig",
            format!("ENIConfig `{}` (subnet {}, securityGroups {:?})", c.name, c.subnet, c.security_groups),
        ),
        _ if matches!(e, NodeError::NoValidSubnet { .. }) => ("NoValidSubnet", "subnet discovery".to_owned()),
        _ => ("ENICreationFailed", "the node's subnets and the primary ENI's groups".to_owned()),
    };
    let message =
        format!("no ENI can be created from {source}: {e}; retrying in {} s", SUBNET_PAUSE.as_secs());
    log::warn!("{message}");
    if shared.board.get().problem.as_deref() != Some(message.as_str()) {
        shared.board.update(|s| s.problem = Some(message.clone()));
        if let Err(err) = shared.clients.kube.event(&shared.node(), true, reason, &message).await {
            log::warn!("{err}");
        }
    }
}

pub async fn update_gauges(shared: &Shared) {
    let (stats, enis, cidrs) = shared
        .owner
        .with(|ipam| {
            let at = now();
            (ipam.datastore.stats(at), ipam.datastore.enis(at), ipam.datastore.cidr_views(at))
        })
        .await;
    let m = &shared.metrics;
    let known = shared.enis();
    m.eni_addresses.clear();
    for e in enis.iter().filter(|e| e.excluded.is_none()) {
        let subnet = known.get(&e.id).map(|k| k.subnet_id.clone()).unwrap_or_default();
        let size = if shared.cfg.prefix_delegation { 16 } else { 1 };
        for (state, n) in
            [("total", e.cidrs * size), ("assigned", e.assigned), ("cooling", e.cooling), ("cidrs", e.cidrs)]
        {
            let labels = crate::observe::agent::EniStateLabels {
                eni: e.id.clone(),
                subnet: subnet.clone(),
                state: state.into(),
            };
            m.eni_addresses.get_or_create(&labels).set(i64::from(n));
        }
    }
    m.enis.set(i64::from(stats.enis));
    for (state, n) in [("total", stats.total), ("assigned", stats.assigned), ("cooling", stats.cooling)] {
        m.addresses
            .get_or_create(&crate::observe::agent::StateLabel { state: state.into() })
            .set(i64::from(n));
    }
    let u = &m.upstream;
    u.total_ips.set(i64::from(stats.total));
    u.assigned_ips.set(i64::from(stats.assigned));
    u.prefixes.set(if shared.cfg.prefix_delegation { i64::from(stats.cidrs) } else { 0 });
    u.assigned_per_cidr.clear();
    u.assigned_per_eni.clear();
    for c in cidrs.iter().filter(|c| !c.excluded) {
        let cidr = CidrLabel { cidr: c.cidr.to_string() };
        u.assigned_per_cidr.get_or_create(&cidr).set(c.assigned.len() as i64);
    }
    for e in enis.iter().filter(|e| e.excluded.is_none()) {
        u.assigned_per_eni.get_or_create(&EniLabel { eni: e.id.clone() }).set(i64::from(e.assigned));
    }
    let l = &shared.limits;
    m.eni_max.set(i64::from(l.max_enis));
    let per_eni = l.ipv4_per_eni.saturating_sub(1) * if shared.cfg.prefix_delegation { 16 } else { 1 };
    m.ip_max.set(i64::from(l.max_enis * per_eni));
}

/// Carries out one action; true when something changed.
async fn execute(shared: &Shared, action: &Action) -> Result<bool, NodeError> {
    let ec2 = shared.clients.cloud.as_ref();
    let pd = shared.cfg.prefix_delegation;
    match action {
        Action::AssignToEni { eni, count } => {
            let cidrs = ec2.assign(eni, *count, pd).await?;
            add_cidrs(shared, eni, cidrs).await?;
            Ok(true)
        }
        Action::CreateEni { count } => create_eni(shared, *count).await.map(|()| true),
        Action::ReleaseCidrs { eni, cidrs } => {
            let (eni_id, wanted) = (eni.clone(), cidrs.clone());
            // Out of the datastore first, so that nothing hands them out while EC2 takes them back.
            let removed: Vec<Cidr> = shared
                .owner
                .with(move |ipam| {
                    wanted.into_iter().filter(|c| ipam.datastore.remove_cidr(&eni_id, *c).is_ok()).collect()
                })
                .await;
            if removed.is_empty() {
                return Ok(false);
            }
            if let Err(e) = ec2.unassign(eni, &removed).await {
                add_cidrs(shared, eni, removed).await?;
                return Err(e.into());
            }
            shared.note_released(&removed);
            log::info!("released {} from {eni}", list(&removed));
            Ok(true)
        }
        Action::DeleteEni { eni } => {
            let id = eni.clone();
            if shared.owner.with(move |ipam| ipam.datastore.remove_eni(&id)).await.is_err() {
                return Ok(false);
            }
            let known = shared.forget_eni(eni);
            if let Some(k) = &known {
                shared.clients.net.remove_rule(k.primary_ip).await?;
            }
            ec2.detach_and_delete(eni, known.as_ref().and_then(|k| k.attachment_id.as_deref())).await?;
            log::info!("deleted ENI {eni}");
            Ok(true)
        }
    }
}

fn list(cidrs: &[Cidr]) -> String {
    cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

async fn add_cidrs(shared: &Shared, eni: &str, cidrs: Vec<Cidr>) -> Result<(), NodeError> {
    let id = eni.to_owned();
    let shown = list(&cidrs);
    let findings = shared
        .owner
        .with(move |ipam| {
            let mut findings = Vec::new();
            for c in cidrs {
                match ipam.datastore.add_cidr(&id, c) {
                    Ok(Some(f)) => findings.push(f),
                    Ok(None) => {}
                    Err(source) => return Err(NodeError::Datastore { eni: id, source }),
                }
            }
            Ok(findings)
        })
        .await?;
    enis::report_findings(&shared.metrics, &findings);
    log::info!("{eni}: added {shown}");
    Ok(())
}

/// Where new ENIs go, in the order to try them, and their groups: the ENIConfig's subnet under
/// custom networking (read again: an edit applies to ENIs created later, as upstream), else the
/// subnets discovery finds (the node's own without it), with the primary ENI's groups.
async fn placement(shared: &Shared) -> Result<(Vec<String>, Vec<String>), NodeError> {
    if shared.cfg.custom_networking {
        enis::refresh_eni_config(shared).await?;
    }
    let (subnet, groups) = shared.new_eni_placement().ok_or(NodeError::NoPlacement)?;
    if shared.cfg.custom_networking || !shared.cfg.subnet_discovery {
        return Ok((vec![subnet], groups));
    }
    Ok((subnets::discover(shared).await?, groups))
}

/// Creates an ENI where the configuration says (the next subnet when EC2 says one is full),
/// attaches it at the lowest free device index (as IMDS shows them), sets DeleteOnTermination,
/// sets up its link and adds it to the pool.
async fn create_eni(shared: &Shared, count: u32) -> Result<(), NodeError> {
    let ec2 = shared.clients.cloud.as_ref();
    let (subnets, security_groups) = placement(shared).await?;
    let id = &shared.id.instance_id;
    let journal = &shared.journal;
    journal.write(&Pending { eni: None })?;
    let mut full = None;
    let mut made = None;
    for subnet_id in subnets {
        let new = NewEni {
            subnet_id,
            security_groups: security_groups.clone(),
            description: enis::description(id),
            tags: enis::new_eni_tags(&shared.cfg, id),
            count,
            prefixes: shared.cfg.prefix_delegation,
        };
        match ec2.create_eni(&new).await {
            Ok(created) => {
                made = Some((created, new));
                break;
            }
            Err(e) if SUBNET_FULL.iter().any(|c| e.is(c)) => {
                log::info!("{}: {e}; trying the next subnet", new.subnet_id);
                shared.changing.subnets.forget();
                full = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some((created, new)) = made else { return Err(full.map_or(NodeError::NoPlacement, NodeError::Ec2)) };
    journal.write(&Pending { eni: Some(created.id.clone()) })?;
    let attached = async {
        // IMDS knows the device indexes in use; EC2 (DescribeInstances) is asked only when IMDS
        // does not answer, or lags behind an attach or detach and EC2 says the index is taken.
        let seen: Vec<u32> = match ec2.attached_enis().await {
            Ok(enis) => enis.iter().map(|e| e.device_number).collect(),
            Err(e) => {
                log::info!("{e}; asking EC2 which device indexes are taken");
                ec2.used_device_indexes(id).await?
            }
        };
        let index = lowest_free(&seen);
        match ec2.attach(&created.id, id, index).await {
            Err(e) if e.is("InvalidParameterValue") && e.message.contains("device index") => {
                log::info!("{e}; asking EC2 which device indexes are taken");
                let index = lowest_free(&ec2.used_device_indexes(id).await?);
                Ok::<_, NodeError>((ec2.attach(&created.id, id, index).await?, index))
            }
            attached => Ok((attached?, index)),
        }
    };
    let (attachment, index) = match attached.await {
        Ok(a) => a,
        Err(e) => {
            // Not attached: nothing else would clean it up sooner than the leak sweep.
            match ec2.detach_and_delete(&created.id, None).await {
                Ok(()) => journal.clear()?,
                Err(d) => log::warn!("deleting unattached {}: {d}", created.id),
            }
            return Err(e);
        }
    };
    ec2.delete_on_termination(&created.id, &attachment).await?;
    journal.clear()?;
    log::info!(
        "created {} in {} with {:?} at device {index}",
        created.id,
        new.subnet_id,
        new.security_groups
    );
    let seen = wait_for_imds(shared, &created.mac).await?;
    let known = KnownEni {
        attachment_id: Some(attachment),
        ..enis::known_eni(&shared.cfg, &shared.id, &seen, &created)
    };
    enis::setup_link(shared.clients.net.as_ref(), &known, shared.cfg.eni_mtu).await?;
    enis::adopt(shared, known, created.cidrs).await
}

/// The lowest device index above the primary's (0) not in `used`.
fn lowest_free(used: &[u32]) -> u32 {
    (1..).find(|i| !used.contains(i)).unwrap_or(1)
}

/// Waits for IMDS to show a new ENI (upstream: 100 ms doubling, 12 tries).
async fn wait_for_imds(shared: &Shared, mac: &str) -> Result<crate::cloud::imds::ImdsEni, NodeError> {
    let mut waits = backoff(Duration::from_millis(100), Duration::from_secs(60), Some(12));
    loop {
        match shared.clients.cloud.attached_eni(mac).await {
            Ok(Some(eni)) => return Ok(eni),
            Ok(None) => {}
            // IMDS may list the MAC before it serves the ENI's fields.
            Err(e) => log::debug!("IMDS, new ENI {mac}: {e}"),
        }
        let Some(wait) = waits.next() else { return Err(NodeError::NotInImds(mac.to_owned())) };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{super::fakes::*, *};
    use crate::{cloud::Cloud as _, node::journal::Journal};

    /// Raises MINIMUM_IP_TARGET on a started node so that the next tick needs a new ENI.
    fn want(shared: &Shared, addresses: u32) {
        shared.set_pool(policy::PoolConfig { minimum_ip_target: addresses, ..shared.pool() });
    }

    async fn total(shared: &Shared) -> u32 {
        shared.owner.with(|ipam| ipam.datastore.stats(now()).total).await
    }

    /// A new ENI: created with upstream's description and tags, journalled, attached at the
    /// lowest free device index, its link set up with table device + 1, adopted; no EC2 or
    /// Kubernetes call is made while the datastore is held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_grows_with_a_new_eni_outside_the_datastore_lock() {
        let node = FakeNode::default();
        let shared = node.start(&[("CLUSTER_NAME", "prod")]).await.unwrap();
        let before = total(&shared).await;
        want(&shared, before + 5);
        let mut state = PoolState::default();
        while tick(&shared, &mut state).await.unwrap() {}
        assert!(total(&shared).await >= before + 5);
        let new: Vec<_> = node.cloud.attached().into_iter().filter(|e| e.id != PRIMARY_ENI).collect();
        assert_eq!(new.len(), 1, "{new:?}");
        let eni = &new[0];
        assert_eq!(eni.description, format!("aws-K8S-{INSTANCE}"));
        assert_eq!(eni.tags.get(enis::TAG_INSTANCE).map(String::as_str), Some(INSTANCE));
        assert_eq!(eni.tags.get(enis::TAG_CLUSTER).map(String::as_str), Some("prod"));
        assert!(eni.tags.contains_key(enis::TAG_CREATED_AT));
        assert_eq!(eni.attachment.as_ref().map(|a| a.device_index), Some(1));
        assert_eq!(
            node.world.calls_to("ec2 DescribeInstances"),
            Vec::<String>::new(),
            "IMDS knew the indexes"
        );
        assert_eq!(node.host.enis.lock().unwrap().get(&eni.mac), Some(&2), "table = device + 1");
        assert!(shared.eni(&eni.id).is_some());
        assert_eq!(Journal::new(&node.dir).read(), None);
        assert!(state.last_action.is_some());
        assert_eq!(node.world.under_lock(), Vec::<String>::new());
    }

    /// The device index comes from IMDS (no DescribeInstances); when IMDS has not caught up with
    /// an ENI someone else attached and EC2 says the index is taken, EC2 is asked once and the
    /// attach goes to the next free index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn device_indexes_come_from_imds_and_ec2_only_when_imds_lags() {
        let node = FakeNode::default();
        let shared = node.start(&[]).await.unwrap();
        let trunk = node.cloud.attach_foreign(crate::cloud::ec2::InterfaceType::Trunk, 1, 0, &[]);
        node.cloud.imds_lags_behind(&trunk);
        want(&shared, total(&shared).await + 5);
        let mut state = PoolState::default();
        while tick(&shared, &mut state).await.unwrap() {}
        assert_eq!(node.world.calls_to("ec2 DescribeInstances").len(), 1);
        let attached = node.cloud.attached();
        let new = attached.iter().find(|e| e.id != PRIMARY_ENI && e.id != trunk).expect("a new ENI");
        assert_eq!(new.attachment.as_ref().map(|a| a.device_index), Some(2));
    }

    /// EC2 says the subnet is out of addresses: the pool pauses, the node says why (status and a
    /// Warning Event), and the next tick makes no call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_subnet_pauses_the_pool_and_says_so() {
        let node = FakeNode::default();
        let shared = node.start(&[]).await.unwrap();
        node.cloud.fail("CreateNetworkInterface", "InsufficientFreeAddressesInSubnet");
        want(&shared, total(&shared).await + 5);
        let mut state = PoolState::default();
        assert!(!tick(&shared, &mut state).await.unwrap());
        assert!(shared.paused());
        assert!(node.kube.events().iter().any(|(r, _)| r == "SubnetExhausted"));
        assert!(shared.board.get().problem.is_some_and(|p| p.contains("InsufficientFreeAddressesInSubnet")));
        let calls = node.world.calls().len();
        assert!(!tick(&shared, &mut state).await.unwrap());
        assert_eq!(node.world.calls().len(), calls, "paused: no call");
    }

    /// Subnet discovery: the new ENI goes to the opted-in subnet with the most free addresses,
    /// with the primary ENI's groups; an opted-out subnet is never used; the subnets are described
    /// once for several ENIs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_enis_go_to_the_discovered_subnet_with_the_most_free_addresses() {
        let node = FakeNode::default();
        node.cloud.add_subnet("subnet-big", "10.1.0.0/22", &[(subnets::TAG_CNI_ROLE, "1")]);
        node.cloud.add_subnet("subnet-bigger-but-out", "10.2.0.0/21", &[(subnets::TAG_CNI_ROLE, "0")]);
        node.cloud.add_subnet("subnet-untagged", "10.3.0.0/21", &[]);
        let shared = node.start(&[("MINIMUM_IP_TARGET", "25")]).await.unwrap();
        let new: Vec<_> = node.cloud.attached().into_iter().filter(|e| e.id != PRIMARY_ENI).collect();
        assert_eq!(new.len(), 2, "{new:?}");
        assert!(
            new.iter().all(|e| e.subnet_id == "subnet-big" && e.security_groups == ["sg-node"]),
            "{new:?}"
        );
        assert!(total(&shared).await >= 25);
        assert_eq!(node.world.calls_to("ec2 DescribeSubnets").len(), 1);
    }

    /// No subnet may take an ENI (the node's own opted out): the pool pauses, the node says so
    /// (NoValidSubnet Event, metric), and nothing is created.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_valid_subnet_pauses_the_pool_and_says_so() {
        let node = FakeNode::default();
        node.cloud.tag_subnet(NODE_SUBNET, &[(subnets::TAG_CNI_ROLE, "0")]);
        let shared = node.start(&[("WARM_ENI_TARGET", "0"), ("WARM_IP_TARGET", "1")]).await.unwrap();
        want(&shared, total(&shared).await + 10);
        let mut state = PoolState::default();
        // The primary ENI may still fill up; a new ENI has nowhere to go.
        while !shared.paused() && tick(&shared, &mut state).await.unwrap() {}
        assert!(shared.paused());
        assert_eq!(shared.metrics.no_valid_subnet.get(), 1);
        let events = node.kube.events();
        assert!(
            events.iter().any(|(r, m)| r == "NoValidSubnet" && m.contains("kubernetes.io/role/cni")),
            "{events:?}"
        );
        assert!(node.world.calls_to("ec2 CreateNetworkInterface").is_empty());
    }

    /// An ENI that cannot be attached is deleted at once and the journal cleared: nothing leaks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_eni_that_fails_to_attach_is_deleted() {
        let node = FakeNode::default();
        let shared = node.start(&[]).await.unwrap();
        node.cloud.fail("AttachNetworkInterface", "AttachmentLimitExceeded");
        want(&shared, total(&shared).await + 5);
        let mut state = PoolState::default();
        assert!(!tick(&shared, &mut state).await.unwrap());
        let created = node.world.calls_to("ec2 CreateNetworkInterface").len();
        let deleted = node.world.calls_to("ec2 DeleteNetworkInterface").len();
        assert_eq!((created, deleted), (1, 1));
        assert_eq!(node.cloud.attached().len(), 1, "only the primary ENI");
        assert!(node.cloud.find_enis(&[("status", "available")]).await.unwrap().is_empty());
        assert_eq!(Journal::new(&node.dir).read(), None);
        assert_eq!(shared.metrics.pool_errors.get(), 1);
    }
}
