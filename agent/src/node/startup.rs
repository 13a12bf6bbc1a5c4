//! The startup sequence, in the corrected order (upstream's `nodeInit` in pkg/ipamd/ipamd.go, with
//! the #2792 fix): read it top to bottom in [`start`]. Everything it needs is passed in.

use std::{net::Ipv6Addr, sync::Arc, time::Duration};

use crate::{
    cloud::{
        ec2::EniInfo,
        imds::{Identity, ImdsEni},
        limits, Cloud,
    },
    config::Config,
    ipam::{checkpoint::Checkpoint, datastore::Restored, policy::Limits, Ipam},
    kube::client::KubeError,
    net::{netlink::NetError, snat},
    sync::backoff,
};

pub use super::assemble::Inputs;
use super::{
    assemble::{assemble, audit_and_guard, new_datastore, strict_local_rule, Found},
    enis::{self, description},
    error::NodeError,
    journal::Journal,
    owner::now,
    pool, signals,
    state::Shared,
};

/// The node's tables and rules: SNAT to the primary ENI's address for all but the VPC and the
/// exclusions (unless external SNAT), NodePort marks on the primary interface `primary_if`, the
/// pods' IPv6 egress SNATed to `node_ip6` (ENABLE_V6_EGRESS).
fn snat_plan(cfg: &Config, primary: &ImdsEni, primary_if: &str, node_ip6: Option<Ipv6Addr>) -> snat::Plan {
    let not_nated = primary.vpc_cidrs.iter().chain(&cfg.exclude_snat_cidrs).copied().collect();
    snat::Plan {
        snat: (!cfg.external_snat).then_some(snat::Snat {
            primary_ip: primary.primary_ip,
            not_nated,
            random: cfg.randomize_snat,
        }),
        node_port: cfg.node_port_support.then(|| primary_if.to_owned()),
        mark: cfg.connmark,
        veth_prefix: cfg.veth_prefix.clone(),
        external_service_cidrs: cfg.external_service_cidrs.clone(),
        v4_egress: None,
        v6_egress: node_ip6.map(|node_ip| snat::Egress { node_ip, random: cfg.randomize_snat }),
    }
}

/// ENABLE_V6_EGRESS: the instance's IPv6 address, with the host set up as in IPv6 mode
/// (`Host::enable_ipv6`: IPv6 on, forwarding on, `accept_ra=2` on the primary; upstream's init
/// sets the last two for IPv6 egress); without an address, IPv6 egress stays off with a warning,
/// as upstream's entrypoint does.
async fn v6_egress(i: &Inputs, mac: &str, primary_if: &str) -> Result<Option<Ipv6Addr>, NodeError> {
    if !i.cfg.v6_egress {
        return Ok(None);
    }
    let Some(node_ip) = i.cloud.ipv6(mac).await?.node_ip else {
        log::warn!("ENABLE_V6_EGRESS=true, but the instance has no IPv6 address: pods get no IPv6 egress");
        return Ok(None);
    };
    i.net.enable_ipv6(primary_if)?;
    log::info!("ENABLE_V6_EGRESS: pods' IPv6 egress leaves as {node_ip}");
    Ok(Some(node_ip))
}

/// From nothing to a node whose pool is warm, in order. Returns the state the loops share.
pub async fn start(i: Inputs) -> Result<Arc<Shared>, NodeError> {
    let board = i.board.clone();
    let node_name = i.cfg.node_name.clone().ok_or(NodeError::NoNodeName)?;
    board.step("IMDS identity");
    let id = i.cloud.identity().await?;
    board.step("instance limits");
    let limits = instance_limits(i.cloud.as_ref(), &id.instance_type, i.cfg.max_eni).await?;
    board.step("host network");
    i.net.set_mtu(&id.mac, i.cfg.eni_mtu).await?;
    if i.cfg.ipv6 {
        // Upstream's nodeInit returns here in IPv6 mode: one /80, no other ENI, no pool.
        return super::ipv6::start(i, id, limits, &node_name).await;
    }
    if i.net.enable_ipv4_forwarding()? {
        log::info!("turned on net.ipv4.ip_forward: pods' traffic is routed through the host");
    }
    if i.cfg.disable_tcp_early_demux && i.net.disable_tcp_early_demux()? {
        log::info!("DISABLE_TCP_EARLY_DEMUX: set net.ipv4.tcp_early_demux=0");
    }
    strict_local_rule(&i, false).await?;
    board.step("ENIs (IMDS, then one DescribeNetworkInterfaces)");
    let seen = i.cloud.attached_enis().await?;
    let primary =
        seen.iter().find(|e| e.mac == id.mac).cloned().ok_or(NodeError::NoPrimary(id.mac.clone()))?;
    let mut described = i.cloud.describe_enis(&seen.iter().map(|e| e.id.clone()).collect::<Vec<_>>()).await?;
    let journal = Journal::new(&i.run_dir);
    if !i.cfg.disable_provisioning {
        finish_pending(i.cloud.as_ref(), &journal, &id, &mut described).await?;
    }
    let enis = enis::known_enis(&i.cfg, &id, &seen, &described);
    board.step("import through the exclusion rule");
    let mut ipam = new_ipam(&i.cfg);
    enis::report_findings(&i.metrics, &enis::import(&mut ipam.datastore, &enis, &described)?);
    for eni in enis.values().filter(|e| !e.primary && !e.unmanaged) {
        enis::setup_link(i.net.as_ref(), eni, i.cfg.eni_mtu).await?;
    }
    board.step("SNAT and NodePort rules");
    let (_, primary_if) =
        i.net.link_by_mac(&id.mac).await?.ok_or_else(|| NetError::NoLink(id.mac.clone()))?;
    let node_ip6 = v6_egress(&i, &id.mac, &primary_if).await?;
    i.net.apply_snat(&snat_plan(&i.cfg, &primary, &primary_if, node_ip6)).await?;
    board.step("restore the checkpoint");
    log_restored(&ipam.restore(now())?);
    board.step("security groups");
    let primary_security_groups = i.cloud.primary_security_groups(&id.mac).await?;
    let found = Found {
        vpc_cidrs: primary.vpc_cidrs.iter().map(ToString::to_string).collect(),
        ipv6: None,
        v6_egress: node_ip6.is_some(),
        id,
        limits,
        ipam,
        enis,
        primary,
        primary_security_groups,
        journal,
    };
    let shared = assemble(i, found);
    board.step("Node");
    shared.set_node(shared.clients.kube.node(&node_name).await?);
    board.step("ENIConfig");
    resolve_eni_config(&shared).await?;
    board.step("CustomNetworking, read back, then SecurityGroupsForPods");
    signals::signal(&shared).await?;
    board.step("pre-scale");
    pool::prescale(&shared).await;
    audit_and_guard(&shared).await;
    Ok(shared)
}

fn new_ipam(cfg: &Config) -> Ipam {
    Ipam::new(new_datastore(cfg), Checkpoint::new(&cfg.backing_store))
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
    cloud: &dyn Cloud,
    journal: &Journal,
    id: &Identity,
    described: &mut [EniInfo],
) -> Result<(), NodeError> {
    let Some(pending) = journal.read() else { return Ok(()) };
    match pending.eni {
        Some(eni) => match described.iter_mut().find(|d| d.id == eni) {
            Some(d) => {
                if let Some(att) = &d.attachment {
                    cloud.delete_on_termination(&eni, &att.id).await?;
                    log::info!("a previous run attached {eni} and died: DeleteOnTermination set, adopted");
                }
            }
            None => {
                cloud.detach_and_delete(&eni, None).await?;
                log::info!("a previous run created {eni} and died before attaching it: deleted");
            }
        },
        None => {
            let description = description(&id.instance_id);
            let filters = [("description", description.as_str()), ("status", "available")];
            for leftover in cloud.find_enis(&filters).await? {
                cloud.detach_and_delete(&leftover.id, None).await?;
                log::info!("a previous run died creating an ENI: unattached {} deleted", leftover.id);
            }
        }
    }
    Ok(journal.clear()?)
}

async fn instance_limits(
    cloud: &dyn Cloud,
    instance_type: &str,
    max_eni: Option<u32>,
) -> Result<Limits, NodeError> {
    if let Some(row) = limits::lookup(instance_type) {
        return Ok(limits::limits(row.max_enis, row.ipv4_per_eni, row.trunking, max_eni));
    }
    let t = cloud.describe_instance_type(instance_type).await?;
    if t.max_enis == 0 || t.ipv4_per_eni == 0 {
        return Err(NodeError::NoLimits(instance_type.to_owned()));
    }
    log::info!(
        "{instance_type} is not in the built-in table: {} ENIs, {} addresses each (DescribeInstanceTypes)",
        t.max_enis,
        t.ipv4_per_eni
    );
    Ok(limits::limits(t.max_enis, t.ipv4_per_eni, false, max_eni))
}

/// Under custom networking, the node's ENIConfig. Waits (with a Warning Event on the Node) while
/// it is missing or invalid: nothing is created in EC2 from a configuration that is not there.
async fn resolve_eni_config(shared: &Shared) -> Result<(), NodeError> {
    if !shared.cfg.custom_networking {
        return Ok(());
    }
    let mut warned = None;
    let mut waits = backoff(Duration::from_secs(1), Duration::from_secs(30), None);
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
                tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(30))).await;
                shared.set_node(shared.clients.kube.node(&node.name).await?);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use super::super::{
        fakes::*,
        journal::{Journal, Pending},
    };
    use crate::{
        cloud::{
            ec2::{InterfaceType, NewEni},
            Cloud as _,
        },
        kube::client::EniConfig,
        net::host::Host as _,
    };

    const CUSTOM_AND_SGP: &[(&str, &str)] =
        &[("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"), ("ENABLE_POD_ENI", "true")];

    fn pod_subnet_config(node: &FakeNode) {
        let mut k = node.kube.state.lock().unwrap();
        k.node.labels.insert("k8s.amazonaws.com/eniConfig".into(), "pods".into());
        let c = EniConfig {
            name: "pods".into(),
            subnet: POD_SUBNET.into(),
            security_groups: vec!["sg-pods".into()],
        };
        k.eni_configs.insert("pods".into(), c);
    }

    fn position(calls: &[String], from: usize, what: impl Fn(&str) -> bool) -> Option<usize> {
        calls.iter().skip(from).position(|c| what(c)).map(|p| p + from)
    }

    /// The #2792 order: CustomNetworking written, then read back from the API server, and only
    /// then SecurityGroupsForPods; the pool grows (in the ENIConfig's subnet) only after both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn custom_networking_is_read_back_before_security_groups_for_pods() {
        let node = FakeNode::default();
        pod_subnet_config(&node);
        let shared = node.start(CUSTOM_AND_SGP).await.unwrap();
        let calls = node.world.calls();
        let cn = position(&calls, 0, |c| c == "kube add_feature node-1 CustomNetworking").unwrap();
        let read_back =
            position(&calls, cn + 1, |c| c.starts_with("kube features") && c.contains("CustomNetworking"))
                .unwrap();
        let sgp = position(&calls, 0, |c| c == "kube add_feature node-1 SecurityGroupsForPods").unwrap();
        assert!(cn < read_back && read_back < sgp, "{calls:#?}");
        let created: Vec<_> = node.world.calls_to("ec2 CreateNetworkInterface");
        assert!(!created.is_empty(), "the pool grew: {calls:#?}");
        let first_create = position(&calls, 0, |c| c.starts_with("ec2 CreateNetworkInterface")).unwrap();
        assert!(sgp < first_create, "{calls:#?}");
        assert!(created.iter().all(|c| c.contains(POD_SUBNET) && c.contains("sg-pods")), "{created:?}");
        assert!(shared.enis().values().filter(|e| !e.primary).all(|e| e.subnet_id == POD_SUBNET));
    }

    /// The Resource Controller creates the CNINode a little later: the agent waits for it and
    /// still signals in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_cninode_is_waited_for() {
        let node = FakeNode::default();
        pod_subnet_config(&node);
        node.kube.state.lock().unwrap().cninode = None;
        let kube = node.kube.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            kube.state.lock().unwrap().cninode = Some(Vec::new());
        });
        node.start(CUSTOM_AND_SGP).await.unwrap();
        let features = node.world.calls_to("kube add_feature");
        assert_eq!(
            features,
            ["kube add_feature node-1 CustomNetworking", "kube add_feature node-1 SecurityGroupsForPods"]
        );
    }

    /// Under custom networking without an ENIConfig nothing is created in EC2; the node gets a
    /// Warning Event; once the ENIConfig exists, startup goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_eniconfig_is_waited_for_and_nothing_is_created() {
        let node = FakeNode::default();
        let vars = [("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")];
        let started = node.start(&vars);
        tokio::pin!(started);
        let waited = tokio::time::timeout(Duration::from_millis(1500), &mut started).await;
        assert!(waited.is_err(), "startup went on without an ENIConfig");
        assert!(node.world.calls_to("ec2 CreateNetworkInterface").is_empty());
        let events = node.kube.events();
        assert!(
            events.iter().any(|(reason, m)| reason == "MissingENIConfig" && m.contains("default")),
            "{events:?}"
        );
        let c = EniConfig { name: "default".into(), subnet: POD_SUBNET.into(), security_groups: Vec::new() };
        node.kube.state.lock().unwrap().eni_configs.insert("default".into(), c);
        let shared = tokio::time::timeout(Duration::from_secs(10), started).await.unwrap().unwrap();
        assert!(shared.enis().values().any(|e| e.subnet_id == POD_SUBNET));
    }

    /// Addresses on a trunk, an EFA ENI or an ENI tagged no_manage are imported as findings and
    /// never handed out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trunk_efa_and_unmanaged_enis_are_never_handed_out() {
        let no_manage: &[(&str, &str)] =
            &[("node.k8s.amazonaws.com/instance_id", INSTANCE), ("node.k8s.amazonaws.com/no_manage", "true")];
        for (ty, tags) in [
            (InterfaceType::Trunk, &[][..]),
            (InterfaceType::Efa, &[][..]),
            (InterfaceType::Interface, no_manage),
        ] {
            let node = FakeNode::default();
            let foreign = node.cloud.attach_foreign(ty.clone(), 1, 4, tags);
            let theirs: BTreeSet<_> =
                node.cloud.eni(&foreign).unwrap().cidrs.iter().map(|c| c.addr).collect();
            let shared = node.start(&[]).await.unwrap();
            let handed = take_all(&shared).await;
            assert!(!handed.is_empty(), "{ty}: the pool has addresses");
            assert!(handed.is_disjoint(&theirs), "{ty}: {handed:?} vs {theirs:?}");
            assert!(
                node.world.calls_to("ec2 AssignPrivateIpAddresses").iter().all(|c| !c.contains(&foreign)),
                "{ty}: nothing is assigned to it"
            );
        }
    }

    /// The node's table: SNAT and NodePort marks on the primary interface by default (upstream's
    /// defaults); neither with external SNAT and NodePort support off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snat_and_node_port_follow_the_configuration() {
        let node = FakeNode::default();
        node.start(&[("AWS_EXTERNAL_SERVICE_CIDRS", "192.0.2.0/24")]).await.unwrap();
        let plan = node.host.snat.lock().unwrap().clone().unwrap();
        let primary_if = node.host.links_by_mac().await.unwrap().get(PRIMARY_MAC).cloned();
        assert_eq!(plan.node_port, primary_if);
        assert_eq!((plan.mark, plan.external_service_cidrs.len()), (0x80, 1));
        let snat = plan.snat.unwrap();
        assert_eq!(snat.primary_ip, "10.0.0.10".parse::<std::net::Ipv4Addr>().unwrap());
        assert!(snat.not_nated.iter().any(|c| c.to_string() == "10.0.0.0/16"));

        let node = FakeNode::default();
        let off = [("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"), ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false")];
        node.start(&off).await.unwrap();
        assert!(!node.host.snat.lock().unwrap().clone().unwrap().marks());
    }

    /// A creation the previous run died in is finished or undone before anything else.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_creation_the_last_run_died_in_is_undone() {
        let node = FakeNode::default();
        let new = NewEni {
            subnet_id: NODE_SUBNET.into(),
            security_groups: vec!["sg-node".into()],
            description: super::description(INSTANCE),
            tags: Default::default(),
            count: 1,
            prefixes: false,
        };
        let orphan = node.cloud.create_eni(&new).await.unwrap();
        let unknown = node.cloud.create_eni(&new).await.unwrap();
        let journal = Journal::new(&node.dir);
        journal.write(&Pending { eni: Some(orphan.id.clone()) }).unwrap();
        node.start(&[]).await.unwrap();
        assert!(node.cloud.eni(&orphan.id).is_none(), "the unattached ENI the journal names is deleted");
        assert!(node.cloud.eni(&unknown.id).is_some(), "an id the journal does not name stays");
        assert_eq!(journal.read(), None, "the journal is cleared");

        // The id never came back: this instance's available aws-K8S- ENIs go.
        let node2 = FakeNode::default();
        let leftover = node2.cloud.create_eni(&new).await.unwrap();
        Journal::new(&node2.dir).write(&Pending { eni: None }).unwrap();
        node2.start(&[]).await.unwrap();
        assert!(node2.cloud.eni(&leftover.id).is_none());
    }
}
