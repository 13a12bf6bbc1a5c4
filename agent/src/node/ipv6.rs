//! IPv6 mode (ENABLE_IPv6, always with prefix delegation, as upstream's ipamd): one /80 on the
//! primary ENI, looked up at start and assigned once if there is none (extra prefixes are
//! ignored), from which every pod gets a /128. Upstream's `nodeInit` returns early in IPv6 mode,
//! and so does [`start`]: no other ENI, no warm pool, no IPv4 SNAT but the pods' IPv4 egress
//! (ENABLE_V4_EGRESS). With security groups for pods (ENABLE_POD_ENI), the CNINode feature is
//! signalled as in IPv4 mode (there is no custom networking to come first) and the trunk the
//! Resource Controller attaches is adopted when it appears ([`adopt_trunk`]); branch pods get
//! their branch ENI's IPv6 address through it.

use std::{collections::BTreeSet, sync::Arc};

use super::{
    assemble::{assemble, audit_and_guard, new_datastore, strict_local_rule, Found, Inputs},
    enis,
    error::NodeError,
    journal::Journal,
    owner::now,
    signals,
    state::{Ipv6Node, Shared},
};
use crate::{
    cloud::{
        ec2::EniInfo,
        imds::{Identity, Ipv6View},
        Cloud,
    },
    ipam::policy::Limits,
    ipam::{checkpoint::Checkpoint, model::Cidr6, pool6::Pool6, Ipam},
    net::{netlink::NetError, snat},
};

/// IPv6 mode's startup, after the identity, the limits and the MTU: the host's IPv6 settings,
/// the /80, the checkpoint into a [`Pool6`], the Node.
pub async fn start(
    i: Inputs,
    id: Identity,
    limits: Limits,
    node_name: &str,
) -> Result<Arc<Shared>, NodeError> {
    let board = i.board.clone();
    board.step("IPv6 host network");
    let (_, primary_if) =
        i.net.link_by_mac(&id.mac).await?.ok_or_else(|| NetError::NoLink(id.mac.clone()))?;
    i.net.enable_ipv6(&primary_if)?;
    strict_local_rule(&i, true).await?;
    // IPv4 egress (ENABLE_V4_EGRESS): the pods' 169.254.172.0/22 forwarded and SNATed to the
    // node's IPv4 in eniguard's table; otherwise the table goes.
    let egress =
        i.cfg.v4_egress.then_some(snat::Egress { node_ip: id.local_ipv4, random: i.cfg.randomize_snat });
    if egress.is_some() && i.net.enable_ipv4_forwarding()? {
        log::info!("turned on net.ipv4.ip_forward for the pods' IPv4 egress");
    }
    let plan = snat::Plan {
        snat: None,
        node_port: None,
        mark: i.cfg.connmark,
        veth_prefix: i.cfg.veth_prefix.clone(),
        external_service_cidrs: Vec::new(),
        v4_egress: egress,
        v6_egress: None,
    };
    i.net.apply_snat(&plan).await?;
    board.step("the primary ENI (IMDS, one DescribeNetworkInterfaces) and its /80");
    let seen = i.cloud.attached_enis().await?;
    let primary =
        seen.iter().find(|e| e.mac == id.mac).cloned().ok_or(NodeError::NoPrimary(id.mac.clone()))?;
    let view = i.cloud.ipv6(&id.mac).await?;
    let described = i.cloud.describe_enis(std::slice::from_ref(&primary.id)).await?;
    let enis = enis::known_enis(&i.cfg, &id, std::slice::from_ref(&primary), &described);
    let described = described.iter().find(|d| d.id == primary.id);
    let provisioning = !i.cfg.disable_provisioning;
    let prefix = ensure_prefix(i.cloud.as_ref(), &view, described, &primary.id, provisioning).await?;
    log::info!("IPv6 mode: pods get /128s from {prefix} on {}", primary.id);
    board.step("restore the checkpoint");
    let cooldown = u64::try_from(i.cfg.ip_cooldown.as_nanos()).unwrap_or(u64::MAX);
    let datastore = new_datastore(&i.cfg);
    let mut ipam = Ipam::new6(datastore, Pool6::new(prefix, cooldown), Checkpoint::new(&i.cfg.backing_store));
    for a in ipam.restore(now())?.dropped6 {
        log::info!("checkpoint: {} ({}/{}) is outside {prefix}, dropped", a.ip, a.pod.namespace, a.pod.name);
    }
    board.step("security groups");
    let primary_security_groups = i.cloud.primary_security_groups(&id.mac).await?;
    let journal = Journal::new(&i.run_dir);
    let found = Found {
        vpc_cidrs: view.vpc.iter().map(ToString::to_string).collect(),
        ipv6: Some(Ipv6Node { primary_eni: primary.id.clone(), prefix, node_ip: view.node_ip }),
        v6_egress: false,
        enis,
        primary,
        id,
        limits,
        ipam,
        primary_security_groups,
        journal,
    };
    let shared = assemble(i, found);
    board.step("Node");
    shared.set_node(shared.clients.kube.node(node_name).await?);
    board.step("SecurityGroupsForPods");
    signals::signal(&shared).await?;
    audit_and_guard(&shared).await;
    Ok(shared)
}

/// Security groups for pods in IPv6 mode: adopts the trunk ENI once IMDS lists it (one
/// DescribeNetworkInterfaces for ENIs not seen before; `passed` keeps those that were not the
/// trunk, so each is described once) and sets up its link; no other ENI is adopted (the pods'
/// addresses all come from the /80). True once the trunk is known.
pub async fn adopt_trunk(shared: &Shared, passed: &mut BTreeSet<String>) -> Result<bool, NodeError> {
    if shared.trunk().is_some() {
        return Ok(true);
    }
    let seen = shared.clients.cloud.attached_enis().await?;
    let known = shared.enis();
    let new: Vec<String> = seen
        .iter()
        .filter(|s| !known.contains_key(&s.id) && !passed.contains(&s.id))
        .map(|s| s.id.clone())
        .collect();
    if new.is_empty() {
        return Ok(false);
    }
    let described = shared.clients.cloud.describe_enis(&new).await?;
    for s in seen.iter().filter(|s| new.contains(&s.id)) {
        let Some(d) = described.iter().find(|d| d.id == s.id) else { continue };
        let eni = enis::known_eni(&shared.cfg, &shared.id, s, d);
        if !eni.trunk() {
            passed.insert(eni.id);
        } else {
            enis::setup_link(shared.clients.net.as_ref(), &eni, shared.cfg.eni_mtu).await?;
            log::info!("adopted the trunk {} (device {})", eni.id, eni.device_number);
            shared.put_eni(eni);
            super::audit::security_groups(shared).await;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The primary ENI's /80: the first one IMDS shows (`view`); else the first one EC2 describes
/// (`described`: IMDS may lag behind an assignment a previous run made moments ago, and a second
/// /80 would be a leak); else, when `provisioning`, one assigned now (one AssignIpv6Addresses).
pub async fn ensure_prefix(
    cloud: &dyn Cloud,
    view: &Ipv6View,
    described: Option<&EniInfo>,
    primary_eni: &str,
    provisioning: bool,
) -> Result<Cidr6, NodeError> {
    if let Some(p) = view.prefixes.first().or_else(|| described.and_then(|d| d.ipv6_prefixes.first())) {
        return Ok(*p);
    }
    if !provisioning {
        return Err(NodeError::NoIpv6Prefix(primary_eni.to_owned()));
    }
    Ok(cloud.assign_ipv6_prefix(primary_eni).await?)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::Arc};

    use super::*;
    use crate::node::fakes::{FakeCloud, World, PRIMARY_ENI, PRIMARY_MAC};

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().map(|rt| rt.block_on(f)).unwrap()
    }

    /// As [`start`] asks: IMDS, one describe, then [`ensure_prefix`].
    fn ensure(cloud: &FakeCloud, provisioning: bool) -> Result<Cidr6, NodeError> {
        run(async {
            let view = cloud.ipv6(PRIMARY_MAC).await?;
            let described = cloud.describe_enis(&[PRIMARY_ENI.to_owned()]).await?;
            ensure_prefix(cloud, &view, described.first(), PRIMARY_ENI, provisioning).await
        })
    }

    const IPV6_VARS: &[(&str, &str)] = &[
        ("ENABLE_IPv6", "true"),
        ("ENABLE_IPv4", "false"),
        ("ENABLE_PREFIX_DELEGATION", "true"),
        ("ENIGUARD_GUARD_MODE", "off"),
    ];

    /// IPv6 mode's start: the host's IPv6 settings, one /80 on the primary ENI and nothing else
    /// in EC2; pods get /128s from it, checkpointed in upstream's `ipv6` entries; a restart
    /// restores them and assigns no second /80.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ipv6_node_starts_with_one_prefix_and_hands_out_its_addresses() {
        use crate::{
            ipam::model::{AllocKey, PodRef},
            node::fakes::FakeNode,
        };
        let node = FakeNode::default();
        let shared = node.start(IPV6_VARS).await.unwrap();
        let v6 = shared.ipv6.clone().unwrap();
        assert_eq!((v6.primary_eni.as_str(), v6.prefix.prefix_len), (PRIMARY_ENI, 80));
        let ec2 = node.world.calls_to("ec2");
        assert_eq!(ec2.iter().filter(|c| c.starts_with("ec2 AssignIpv6Addresses")).count(), 1, "{ec2:?}");
        assert!(
            !ec2.iter().any(|c| c.contains("CreateNetworkInterface") || c.contains("AssignPrivateIp")),
            "no IPv4 pool work: {ec2:?}"
        );
        assert!(node.world.calls_to("host enable_ipv6").len() == 1);
        let plan = node.host.snat.lock().unwrap().clone().unwrap();
        assert!(plan.snat.is_none() && plan.node_port.is_none(), "no IPv4 SNAT or NodePort marks: {plan:?}");
        assert_eq!(plan.v4_egress.map(|e| e.node_ip.to_string()), Some("10.0.0.10".into()), "V4 egress");

        let key = |c: &str| AllocKey {
            network_name: "aws-cni".into(),
            container_id: c.into(),
            if_name: "eth0".into(),
        };
        let pod = PodRef { namespace: "default".into(), name: "p".into() };
        let (k1, p1) = (key("c1"), pod.clone());
        let a = shared.owner.with(move |ipam| ipam.assign6(&k1, &p1, 1)).await.unwrap();
        assert!(v6.prefix.contains(a.ip), "{} in {}", a.ip, v6.prefix);
        let checkpoint = std::fs::read_to_string(&shared.cfg.backing_store).unwrap();
        assert!(checkpoint.contains(&format!("\"ipv6\":\"{}\"", a.ip)), "{checkpoint}");
        assert!(!checkpoint.contains("\"ipv4\""), "{checkpoint}");

        // A restart: the same /80 from IMDS, the pod's address restored.
        let again = node.start(IPV6_VARS).await.unwrap();
        assert_eq!(again.ipv6.as_ref().map(|v| v.prefix), Some(v6.prefix));
        assert_eq!(node.world.calls_to("ec2 AssignIpv6Addresses").len(), 1);
        let k1 = key("c1");
        let restored = again.owner.with(move |ipam| ipam.allocation(&k1)).await.map(|a| a.ip);
        assert_eq!(restored, Some(a.ip.into()));
        // An IPv4 checkpoint is not an IPv6 node's: refused by name, the file left alone.
        let v4 = FakeNode::default();
        let shared4 = v4.start(&[]).await.unwrap();
        let (k2, p2) = (key("c2"), pod);
        shared4.owner.with(move |ipam| ipam.assign(&k2, &p2, 1)).await.unwrap();
        let before = std::fs::read_to_string(&shared4.cfg.backing_store).unwrap();
        let e = v4.start(IPV6_VARS).await.err().unwrap().to_string();
        assert!(e.contains("1 IPv4 allocations") && e.contains("ENABLE_IPv6=true"), "{e}");
        assert_eq!(std::fs::read_to_string(&shared4.cfg.backing_store).unwrap(), before);
    }

    /// Security groups for pods in IPv6 mode: the CNINode feature is signalled at start; the
    /// trunk attached later is adopted (its link set up) and no other ENI; an ENI that is not
    /// the trunk is described once, not at every look.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ipv6_node_signals_and_adopts_the_trunk_alone() {
        use crate::{cloud::ec2::InterfaceType, node::fakes::FakeNode};
        let node = FakeNode::default();
        let mut vars = IPV6_VARS.to_vec();
        vars.push(("ENABLE_POD_ENI", "true"));
        let shared = node.start(&vars).await.unwrap();
        let kube = node.world.calls_to("kube add_feature");
        assert!(kube.iter().any(|c| c.contains("SecurityGroupsForPods")), "{kube:?}");
        assert_eq!(node.world.calls_to("host move_local_rule 20 ipv6").len(), 1, "strict mode, IPv6 rules");
        let mut passed = BTreeSet::new();
        assert!(!adopt_trunk(&shared, &mut passed).await.unwrap());
        let other = node.cloud.attach_foreign(InterfaceType::Interface, 1, 2, &[]);
        assert!(!adopt_trunk(&shared, &mut passed).await.unwrap());
        assert!(!adopt_trunk(&shared, &mut passed).await.unwrap());
        let described = |id: &str| {
            node.world.calls_to("ec2 DescribeNetworkInterfaces").iter().filter(|c| c.contains(id)).count()
        };
        assert_eq!(described(&other), 1, "a non-trunk ENI is described once");
        let trunk = node.cloud.attach_foreign(InterfaceType::Trunk, 2, 3, &[]);
        assert!(adopt_trunk(&shared, &mut passed).await.unwrap());
        assert_eq!(shared.trunk().map(|t| t.id), Some(trunk.clone()));
        let mac = node.cloud.eni(&trunk).unwrap().mac;
        assert_eq!(node.host.enis.lock().unwrap().get(&mac), Some(&3), "the trunk's link");
        assert!(!shared.enis().contains_key(&other), "only the trunk is adopted");
    }

    #[test]
    fn the_prefix_is_assigned_once_and_found_again_from_imds_or_ec2() {
        let world = Arc::new(World::default());
        let cloud = FakeCloud::new(world.clone());
        let first = ensure(&cloud, true).unwrap();
        assert_eq!(first.prefix_len, 80);
        assert_eq!(
            world.calls_to("ec2"),
            [
                format!("ec2 DescribeNetworkInterfaces {PRIMARY_ENI}"),
                format!("ec2 AssignIpv6Addresses {PRIMARY_ENI} /80")
            ]
        );
        // A restart: IMDS shows it, nothing assigned.
        assert_eq!(ensure(&cloud, true).unwrap(), first);
        assert_eq!(world.calls_to("ec2 AssignIpv6Addresses").len(), 1);
        // A restart while IMDS lags behind the assignment: EC2's answer, and no second /80.
        cloud.ipv6_imds_lags();
        assert_eq!(ensure(&cloud, true).unwrap(), first);
        assert_eq!(world.calls_to("ec2 AssignIpv6Addresses").len(), 1);
        assert_eq!(world.calls_to("ec2 DescribeNetworkInterfaces").len(), 3);
        // DISABLE_NETWORK_RESOURCE_PROVISIONING on a node without a /80: refused, nothing assigned.
        let bare_world = Arc::new(World::default());
        let bare = FakeCloud::new(bare_world.clone());
        assert!(matches!(ensure(&bare, false), Err(NodeError::NoIpv6Prefix(_))));
        assert!(bare_world.calls_to("ec2 AssignIpv6Addresses").is_empty());
    }
}
