//! A node as aws-node v1.16.3 runs it under custom networking + security groups for pods +
//! prefix delegation (#2792), emulated with the EC2 API and `ip`, for audit mode to be tested
//! beside: SecurityGroupsForPods signalled alone, so the Resource Controller built the trunk in
//! the node's subnet with the node's groups; a /28 on the trunk; an ENI in the ENIConfig's subnet
//! with its groups and a /28; both ENIs' links, tables and rules as ipamd sets them; two pods
//! plumbed as upstream's plugin plumbs them (host veth `eni<hash>`, the /32, 169.254.1.1, rules
//! 512 and 1536) — `shop/payments-0` with an address from the trunk (the incident) and
//! `default/web` with one from the pods ENI (correct); and aws-node's checkpoint with both.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{ensure, Context as _, Result};
use aws_sdk_ec2::types::Tag;
use eniguard::{
    ipam::{
        checkpoint::{Checkpoint, Contents},
        model::{AllocKey, Allocation, PodRef},
    },
    net::names::host_veth_name,
};
use eniguard_tests::netns::NetNs;

use crate::agent::{attached, pre_fix_layout, PreFix, World};

/// A pod as upstream's plugin plumbed it.
pub(crate) struct PlumbedPod {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
}

pub(crate) struct AwsNode116 {
    pub trunk_id: String,
    pub pods_eni_id: String,
    /// shop/payments-0, its address on the trunk.
    pub victim: PlumbedPod,
    /// default/web, its address on the pods ENI.
    pub web: PlumbedPod,
    /// aws-node's checkpoint (AWS_VPC_K8S_CNI_BACKING_STORE).
    pub checkpoint: std::path::PathBuf,
}

/// What ipamd v1.16.3 set up before any pod: the two ENIs plumbed, and the addresses it gives
/// shop/payments-0 (from the trunk's /28) and default/web (from the pods ENI's /28).
pub(crate) struct Layout {
    pub trunk_id: String,
    pub pods_eni_id: String,
    /// The route tables of the trunk and of the pods ENI (device index + 1).
    pub trunk_table: i32,
    pub pods_table: i32,
    /// shop/payments-0's allocation (its address on the trunk), as aws-node checkpointed it.
    pub victim: Allocation,
    pub web_ip: Ipv4Addr,
}

/// Sets the node up (see the module docs).
pub(crate) fn set_up(w: &World) -> Result<AwsNode116> {
    let l = set_up_enis(w)?;
    let node_ns = NetNs::existing(&format!("{}-node0", w.prefix));
    let victim_pod = plumb_pod(&node_ns, &w.prefix, "shop", "payments-0", l.victim.ip, l.trunk_table)?;
    let web = plumb_pod(&node_ns, &w.prefix, "default", "web", l.web_ip, l.pods_table)?;
    let web_alloc = Allocation {
        key: AllocKey { network_name: "aws-cni".into(), container_id: "beef".into(), if_name: "eth0".into() },
        ip: l.web_ip,
        pod: PodRef { namespace: "default".into(), name: "web".into() },
        allocated_at: 2,
    };
    let checkpoint = w.dir.join("ipam.json");
    Checkpoint::new(&checkpoint)
        .write(&Contents { allocations: vec![l.victim, web_alloc], ..Contents::default() })?;
    Ok(AwsNode116 { trunk_id: l.trunk_id, pods_eni_id: l.pods_eni_id, victim: victim_pod, web, checkpoint })
}

/// The node without its pods (see [`Layout`]).
pub(crate) fn set_up_enis(w: &World) -> Result<Layout> {
    let PreFix { trunk_id, trunk_device, victim, allocation } = pre_fix_layout(w)?;
    let World { sim, rt, ec2, node, prefix, .. } = w;
    let node_ns = NetNs::existing(&format!("{prefix}-node0"));
    // ipamd turns on forwarding: pods' traffic is routed through the host.
    node_ns.sysctl("net.ipv4.ip_forward", "1")?;
    // ipamd's ENI for ordinary pods: the ENIConfig's subnet and groups, the next device index.
    let pods_device = trunk_device + 1;
    let pods_eni = rt.block_on(async {
        let created = ec2
            .create_network_interface()
            .subnet_id(&sim.subnets["pods-a"])
            .groups(&sim.security_groups["eks-pods"])
            .description(format!("aws-K8S-{}", node.instance_id))
            .send()
            .await?;
        let eni = created.network_interface().context("created ENI")?.clone();
        let id = eni.network_interface_id().context("id")?.to_owned();
        ec2.create_tags()
            .resources(&id)
            .tags(Tag::builder().key("node.k8s.amazonaws.com/instance_id").value(&node.instance_id).build())
            .send()
            .await?;
        ec2.attach_network_interface()
            .network_interface_id(&id)
            .instance_id(&node.instance_id)
            .device_index(pods_device)
            .send()
            .await?;
        ec2.assign_private_ip_addresses().network_interface_id(&id).ipv4_prefix_count(1).send().await?;
        anyhow::Ok(id)
    })?;
    let (trunk, pods) = wait_attached(w, &trunk_id, &pods_eni)?;
    // The scenario's node subnets are /20s, its pod subnets /19s.
    for (eni, device, subnet_len) in [(&trunk, trunk_device, 20), (&pods, pods_device, 19)] {
        plumb_eni(&node_ns, eni, device, subnet_len)?;
    }
    let prefix_of = |n: &aws_sdk_ec2::types::NetworkInterface| -> Result<Ipv4Addr> {
        let p = n.ipv4_prefixes().first().and_then(|p| p.ipv4_prefix()).context("a /28")?;
        Ok(p.split('/').next().context("prefix")?.parse()?)
    };
    ensure!(allocation.ip == victim, "the victim's allocation");
    Ok(Layout {
        trunk_id,
        pods_eni_id: pods_eni,
        trunk_table: trunk_device + 1,
        pods_table: pods_device + 1,
        victim: allocation,
        web_ip: Ipv4Addr::from(u32::from(prefix_of(&pods)?) + 1),
    })
}

/// Both ENIs attached (and so plugged by the fabric), as EC2 describes them.
fn wait_attached(
    w: &World,
    trunk: &str,
    pods: &str,
) -> Result<(aws_sdk_ec2::types::NetworkInterface, aws_sdk_ec2::types::NetworkInterface)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let enis = w.rt.block_on(attached(&w.ec2, &w.node.instance_id))?;
        let find = |id: &str| {
            enis.values()
                .find(|n| {
                    n.network_interface_id() == Some(id)
                        && n.attachment().and_then(|a| a.status()).map(|s| s.as_str()) == Some("attached")
                })
                .cloned()
        };
        if let (Some(t), Some(p)) = (find(trunk), find(pods)) {
            return Ok((t, p));
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the ENIs did not attach");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ipamd's host side of an ENI: link up with its primary address, table device + 1 with the
/// subnet gateway and a default route, the main table's subnet route gone, `from <primary>` rule.
fn plumb_eni(
    node_ns: &NetNs,
    eni: &aws_sdk_ec2::types::NetworkInterface,
    device: i32,
    subnet_len: u32,
) -> Result<()> {
    let link = format!("eth{device}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node_ns.link(&link).is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{link} never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let primary = eni.private_ip_address().context("primary address")?;
    let base = u32::from(primary.parse::<Ipv4Addr>()?) & !((1u32 << (32 - subnet_len)) - 1);
    let gw = Ipv4Addr::from(base + 1).to_string();
    let table = (device + 1).to_string();
    node_ns.ip(&["link", "set", &link, "up"])?;
    node_ns.ip(&["addr", "add", &format!("{primary}/{subnet_len}"), "dev", &link])?;
    node_ns.ip(&["route", "del", &format!("{}/{subnet_len}", Ipv4Addr::from(base)), "dev", &link])?;
    node_ns.ip(&["route", "add", &gw, "dev", &link, "scope", "link", "table", &table])?;
    node_ns.ip(&["route", "add", "default", "via", &gw, "dev", &link, "table", &table])?;
    node_ns.ip(&["rule", "add", "from", primary, "lookup", &table, "priority", "32765"])?;
    Ok(())
}

/// Upstream's plugin: veth `eni<hash>` (the pod's end named eth0), the pod's /32, link route to
/// 169.254.1.1 and the default route via it, a permanent neighbour entry; on the host the route to
/// the pod and rules 512 (to the pod → main) and 1536 (from the pod → the ENI's table).
pub(crate) fn plumb_pod(
    node_ns: &NetNs,
    prefix: &str,
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
    table: i32,
) -> Result<PlumbedPod> {
    let ns = NetNs::create(&format!("{prefix}-{name}"))?;
    let host_veth = host_veth_name("eni", namespace, name);
    node_ns.ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
    node_ns.ip(&["link", "set", &host_veth, "up"])?;
    let v = ip.to_string();
    ns.ip(&["addr", "add", &format!("{v}/32"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
    ns.ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
    let host_mac = node_ns.mac(&host_veth)?;
    ns.ip(&["neigh", "add", "169.254.1.1", "dev", "eth0", "lladdr", &host_mac, "nud", "permanent"])?;
    node_ns.ip(&["route", "add", &format!("{v}/32"), "dev", &host_veth, "scope", "link"])?;
    node_ns.ip(&["rule", "add", "to", &v, "lookup", "main", "priority", "512"])?;
    node_ns.ip(&["rule", "add", "from", &v, "lookup", &table.to_string(), "priority", "1536"])?;
    Ok(PlumbedPod { ns, ip })
}
