//! The startup sequence, in the corrected order (upstream's `nodeInit` in pkg/ipamd/ipamd.go, with
//! the #2792 fix): read it top to bottom in [`start`]. Everything it needs is passed in.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{
    cloud::{
        calls::Calls,
        ec2::{Ec2, Ec2Error, EniInfo},
        imds::{Identity, Imds, ImdsEni, ImdsFailure},
        limits,
    },
    config::{Config, EnforcingMode},
    ipam::{
        checkpoint::Checkpoint,
        datastore::{Datastore, DatastoreConfig, DatastoreError, Finding, Restored},
        model::{EniFlags, EniSpec},
        policy::{Limits, PoolConfig},
        Ipam, IpamError,
    },
    kube::{
        client::{Kube, KubeError},
        cninode::{Feature, CUSTOM_NETWORKING, SECURITY_GROUPS_FOR_PODS},
        eniconfig,
    },
    net::{
        eni::{EniLink, HostNet},
        netlink::NetError,
        snat::{self, SnatError},
    },
    observe::agent::{FindingLabels, Metrics, TypeLabel},
};

use super::{
    journal::Journal,
    owner::{now, Owner},
    pool,
    signals::{self, NodeFacts, Step},
    state::{Board, Changing, Clients, KnownEni, Shared},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("MY_NODE_NAME is not set: expected the node's name (the DaemonSet sets it from spec.nodeName)")]
    NoNodeName,
    #[error(transparent)]
    Imds(#[from] ImdsFailure),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Snat(#[from] SnatError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("importing ENI {eni}: {source}")]
    Import { eni: String, source: DatastoreError },
    #[error("IMDS shows no primary ENI with MAC {0}")]
    NoPrimary(String),
    #[error("instance type {0}: EC2 reports no ENI or address limits")]
    NoLimits(String),
    #[error("ENI journal: {0}")]
    Journal(String),
    /// Audit mode: aws-node's checkpoint is unreadable or invalid.
    #[error("aws-node's checkpoint {path}: {source}")]
    Checkpoint { path: std::path::PathBuf, source: crate::ipam::checkpoint::CheckpointError },
}

/// What the sequence is given.
pub struct Inputs {
    pub cfg: Config,
    /// --run-dir: the ENI-creation journal lives here.
    pub run_dir: std::path::PathBuf,
    pub imds: Imds,
    pub kube: Kube,
    pub net: HostNet,
    pub calls: Calls,
    pub metrics: Metrics,
    pub board: Arc<Board>,
    /// The egress guard, loaded (None: ENIGUARD_GUARD_MODE=off).
    pub guard: Option<Arc<crate::guard::live::LiveGuard>>,
}

/// SNAT to the primary ENI's address for all but the VPC and the exclusions (None: external SNAT).
fn snat_plan(cfg: &Config, primary: &ImdsEni) -> Option<snat::Plan> {
    let mut not_nated: Vec<_> = primary.vpc_cidrs.iter().map(|c| (c.addr, c.prefix_len)).collect();
    not_nated.extend(cfg.exclude_snat_cidrs.iter().map(|c| (c.addr, c.prefix_len)));
    (!cfg.external_snat).then(|| snat::Plan {
        primary_ip: primary.primary_ip,
        not_nated,
        random: cfg.randomize_snat,
        veth_prefix: cfg.veth_prefix.clone(),
    })
}

/// Where `lookup local` goes in strict mode (upstream's), behind the VLAN rules at 10.
const LOCAL_RULE_PRIORITY_STRICT: u32 = 20;

const TAG_INSTANCE: &str = "node.k8s.amazonaws.com/instance_id";
const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";

/// From nothing to a node whose pool is warm, in order. Returns the state the loops share.
pub async fn start(i: Inputs) -> Result<Arc<Shared>, StartError> {
    let board = i.board.clone();
    let node_name = i.cfg.node_name.clone().ok_or(StartError::NoNodeName)?;
    board.step("IMDS identity");
    let id = i.imds.identity().await?;
    let ec2 = Ec2::new(&id.region, i.calls.clone()).await;
    board.step("instance limits");
    let limits = instance_limits(&ec2, &id.instance_type, i.cfg.max_eni).await?;
    board.step("host network");
    i.net.set_mtu(&id.mac, i.cfg.eni_mtu).await?;
    if i.net.enable_ipv4_forwarding()? {
        log::info!("turned on net.ipv4.ip_forward: pods' traffic is routed through the host");
    }
    if i.cfg.pod_eni && i.cfg.pod_sg_enforcing_mode == EnforcingMode::Strict {
        i.net.move_local_rule(LOCAL_RULE_PRIORITY_STRICT).await?;
    }
    board.step("ENIs (IMDS, then one DescribeNetworkInterfaces)");
    let seen = i.imds.enis().await?;
    let primary =
        seen.iter().find(|e| e.mac == id.mac).cloned().ok_or(StartError::NoPrimary(id.mac.clone()))?;
    let mut described = ec2.describe_enis(&seen.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await?;
    let journal = Journal::new(&i.run_dir);
    finish_pending(&ec2, &journal, &id, &mut described).await?;
    let enis = known_enis(&i.cfg, &id, &seen, &described);
    board.step("import through the exclusion rule");
    let mut ipam = new_ipam(&i.cfg);
    report_findings(&i.metrics, &import(&mut ipam.datastore, &enis, &described)?);
    for eni in enis.values().filter(|e| !e.primary && !e.unmanaged) {
        setup_link(&i.net, eni, i.cfg.eni_mtu).await?;
    }
    board.step("SNAT for traffic leaving the VPC");
    snat::apply(i.net.handle(), snat_plan(&i.cfg, &primary).as_ref()).await?;
    board.step("restore the checkpoint");
    log_restored(&ipam.restore(now())?);
    board.step("security groups");
    let primary_security_groups = i.imds.primary_security_groups(&id.mac).await?;
    let clients = Clients { imds: i.imds, ec2, kube: i.kube, net: i.net, calls: i.calls };
    let shared = Arc::new(Shared {
        changing: Changing::new(pool_config(&i.cfg), enis),
        cfg: i.cfg,
        limits,
        clients,
        owner: Owner::new(ipam),
        metrics: i.metrics,
        primary_security_groups,
        primary_subnet: primary.subnet_id.clone(),
        vpc_id: primary.vpc_id.clone(),
        vpc_cidrs: primary.vpc_cidrs.iter().map(|c| format!("{}/{}", c.addr, c.prefix_len)).collect(),
        journal,
        run_dir: i.run_dir.clone(),
        board: board.clone(),
        guard: i.guard,
        id,
    });
    board.step("Node");
    shared.set_node(shared.clients.kube.node(&node_name).await?);
    board.step("ENIConfig");
    resolve_eni_config(&shared).await?;
    board.step("CustomNetworking, read back, then SecurityGroupsForPods");
    signal(&shared).await?;
    board.step("pre-scale");
    pool::prescale(&shared).await;
    super::audit::security_groups(&shared).await;
    if let Some(live) = &shared.guard {
        board.step("guard: intent and truth into the kernel");
        super::guard_feed::apply(&shared, live, live.request(), &mut Default::default()).await;
    }
    Ok(shared)
}

fn new_ipam(cfg: &Config) -> Ipam {
    let datastore = Datastore::new(DatastoreConfig {
        prefix_delegation: cfg.prefix_delegation,
        custom_networking: cfg.custom_networking,
        cooldown_nanos: u64::try_from(cfg.ip_cooldown.as_nanos()).unwrap_or(u64::MAX),
    });
    Ipam::new(datastore, Checkpoint::new(&cfg.backing_store))
}

fn log_restored(restored: &Restored) {
    for a in &restored.dropped {
        log::info!(
            "checkpoint: {} ({}/{}) is on no ENI any more, dropped",
            a.ip,
            a.pod.namespace,
            a.pod.name
        );
    }
    for (a, f) in &restored.on_excluded {
        log::warn!(
            "checkpoint: {} of {}/{} is on {} ({}): kept as a finding, never handed out",
            a.ip,
            a.pod.namespace,
            a.pod.name,
            f.eni,
            f.why
        );
    }
}

/// Finishes or undoes an ENI creation a previous run died in (see [`Journal`]).
async fn finish_pending(
    ec2: &Ec2,
    journal: &Journal,
    id: &Identity,
    described: &mut [EniInfo],
) -> Result<(), StartError> {
    let Some(pending) = journal.read() else { return Ok(()) };
    match pending.eni {
        Some(eni) => match described.iter_mut().find(|d| d.id == eni) {
            Some(d) => {
                if let Some(att) = &d.attachment {
                    ec2.delete_on_termination(&eni, &att.id).await?;
                    log::info!("a previous run attached {eni} and died: DeleteOnTermination set, adopted");
                }
            }
            None => {
                ec2.detach_and_delete(&eni, None).await?;
                log::info!("a previous run created {eni} and died before attaching it: deleted");
            }
        },
        None => {
            let description = format!("aws-K8S-{}", id.instance_id);
            let filters = [("description", description.as_str()), ("status", "available")];
            for leftover in ec2.find_enis(&filters).await? {
                ec2.detach_and_delete(&leftover.id, None).await?;
                log::info!("a previous run died creating an ENI: unattached {} deleted", leftover.id);
            }
        }
    }
    journal.clear().map_err(|e| StartError::Journal(e.to_string()))
}

async fn instance_limits(ec2: &Ec2, instance_type: &str, max_eni: Option<u32>) -> Result<Limits, StartError> {
    if let Some(row) = limits::lookup(instance_type) {
        return Ok(limits::limits(row.max_enis, row.ipv4_per_eni, row.trunking, max_eni));
    }
    let t = ec2.describe_instance_type(instance_type).await?;
    if t.max_enis == 0 || t.ipv4_per_eni == 0 {
        return Err(StartError::NoLimits(instance_type.to_owned()));
    }
    log::info!(
        "{instance_type} is not in the built-in table: {} ENIs, {} addresses each (DescribeInstanceTypes)",
        t.max_enis,
        t.ipv4_per_eni
    );
    Ok(limits::limits(t.max_enis, t.ipv4_per_eni, false, max_eni))
}

pub fn pool_config(cfg: &Config) -> PoolConfig {
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

/// The attached ENIs: IMDS's view (MAC, device, addresses) joined with EC2's (type, tags,
/// groups, attachment). An ENI EC2 did not describe is left out until the next reconcile.
pub fn known_enis(
    cfg: &Config,
    id: &Identity,
    seen: &[ImdsEni],
    described: &[EniInfo],
) -> BTreeMap<String, KnownEni> {
    seen.iter()
        .filter_map(|s| described.iter().find(|d| d.id == s.id).map(|d| (s, d)))
        .map(|(s, d)| (s.id.clone(), known_eni(cfg, id, s, d)))
        .collect()
}

pub fn known_eni(cfg: &Config, id: &Identity, s: &ImdsEni, d: &EniInfo) -> KnownEni {
    let primary = s.mac == id.mac;
    let tagged_no_manage = d.tags.get(TAG_NO_MANAGE).is_some_and(|v| v == "true");
    let untagged = !d.tags.contains_key(TAG_INSTANCE);
    KnownEni {
        id: s.id.clone(),
        mac: s.mac.clone(),
        device_number: s.device_number,
        primary_ip: s.primary_ip,
        subnet_id: s.subnet_id.clone(),
        subnet_cidr: s.subnet_cidr,
        attachment_id: d.attachment.as_ref().map(|a| a.id.clone()),
        security_groups: d.security_groups.clone(),
        interface_type: d.interface_type.clone(),
        primary,
        unmanaged: !primary && (tagged_no_manage || (untagged && !cfg.manage_untagged_eni)),
    }
}

pub fn flags(eni: &KnownEni) -> EniFlags {
    EniFlags {
        primary: eni.primary,
        trunk: eni.trunk(),
        efa: eni.interface_type == "efa",
        efa_only: eni.interface_type == "efa-only",
        no_manage: eni.unmanaged,
        excluded_subnet: false,
    }
}

/// Adds every ENI and its addresses (as EC2 reports them) to the datastore; addresses on
/// excluded ENIs come back as findings.
pub fn import(
    ds: &mut Datastore,
    enis: &BTreeMap<String, KnownEni>,
    described: &[EniInfo],
) -> Result<Vec<Finding>, StartError> {
    let mut findings = Vec::new();
    for eni in enis.values() {
        findings.extend(add_eni(
            ds,
            eni,
            described.iter().find(|d| d.id == eni.id).map(|d| d.cidrs.as_slice()).unwrap_or_default(),
        )?);
    }
    Ok(findings)
}

pub fn add_eni(
    ds: &mut Datastore,
    eni: &KnownEni,
    cidrs: &[crate::ipam::model::Cidr],
) -> Result<Vec<Finding>, StartError> {
    let err = |source| StartError::Import { eni: eni.id.clone(), source };
    let spec = EniSpec {
        id: eni.id.clone(),
        device_number: eni.device_number,
        subnet_id: eni.subnet_id.clone(),
        security_groups: eni.security_groups.clone(),
        flags: flags(eni),
    };
    ds.add_eni(spec, now()).map_err(err)?;
    let mut findings = Vec::new();
    for c in cidrs {
        if let Some(f) = ds.add_cidr(&eni.id, *c).map_err(err)? {
            findings.push(f);
        }
    }
    Ok(findings)
}

pub fn report_findings(metrics: &Metrics, findings: &[Finding]) {
    for f in findings {
        log::warn!("{} on ENI {} ({}): never handed out", f.cidr, f.eni, f.why);
    }
    let mut per: BTreeMap<(String, String), i64> = BTreeMap::new();
    for f in findings {
        *per.entry((f.eni.clone(), f.why.to_string())).or_default() +=
            i64::from(f.cidr.size().min(i64::MAX as u32));
    }
    for ((eni, reason), n) in per {
        metrics.excluded_addresses.get_or_create(&FindingLabels { eni, reason }).set(n);
    }
}

/// Link, route table and (not for the trunk) rule of a secondary ENI, once its link exists.
pub async fn setup_link(net: &HostNet, eni: &KnownEni, mtu: u32) -> Result<u32, NetError> {
    let link = EniLink {
        mac: eni.mac.clone(),
        device_number: eni.device_number,
        primary_ip: eni.primary_ip,
        subnet: eni.subnet_cidr,
        trunk: eni.trunk(),
    };
    // Upstream waits for the link up to six times, 10 s apart; a hot-plugged NIC shows up fast.
    let mut wait = Duration::from_millis(100);
    for _ in 0..12 {
        if net.link_by_mac(&eni.mac).await?.is_some() {
            return net.setup_eni(&link, mtu).await;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
    Err(NetError::NoLink(eni.mac.clone()))
}

/// Under custom networking, the node's ENIConfig. Waits (with a Warning Event on the Node) while
/// it is missing or invalid: nothing is created in EC2 from a configuration that is not there.
async fn resolve_eni_config(shared: &Shared) -> Result<(), StartError> {
    if !shared.cfg.custom_networking {
        return Ok(());
    }
    let mut warned = None;
    let mut wait = Duration::from_secs(1);
    loop {
        let node = shared.node();
        let name = shared.eni_config_name();
        match shared.clients.kube.eni_config(&name.name).await {
            Ok(c) => {
                log::info!(
                    "ENIConfig `{}` ({:?}): subnet {}, groups {:?}",
                    c.name,
                    name.source,
                    c.subnet,
                    c.security_groups
                );
                shared.set_eni_config(Some(c));
                shared.board.update(|s| s.problem = None);
                return Ok(());
            }
            Err(e @ (KubeError::NotFound { .. } | KubeError::BadEniConfig { .. })) => {
                let message = format!(
                    "custom networking is on but node {} has no usable ENIConfig `{}` (from {:?}): {e}; no ENI is created until it exists",
                    node.name, name.name, name.source
                );
                if warned.as_deref() != Some(message.as_str()) {
                    log::warn!("{message}");
                    if let Err(e) = shared.clients.kube.event(&node, true, "MissingENIConfig", &message).await
                    {
                        log::warn!("{e}");
                    }
                    shared.board.update(|s| s.problem = Some(message.clone()));
                    warned = Some(message);
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
                shared.set_node(shared.clients.kube.node(&node.name).await?);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the node's ENIConfig again (its name may have moved with a label).
pub async fn refresh_eni_config(shared: &Shared) -> Result<(), KubeError> {
    let name = shared.eni_config_name();
    shared.set_eni_config(Some(shared.clients.kube.eni_config(&name.name).await?));
    Ok(())
}

/// The signals to the Resource Controller (see [`signals`]): CustomNetworking, read back from
/// the API server, and only then SecurityGroupsForPods.
pub async fn signal(shared: &Shared) -> Result<(), StartError> {
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
        match signals::next(&facts, &recorded) {
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
