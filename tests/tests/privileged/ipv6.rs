//! IPv6 mode end to end (ENABLE_IPv6): `eniguard agent` on a node of an IPv6 VPC in vpcsim,
//! the real plugin called as containerd calls it, pods as network namespaces. What a pod got is
//! read back from EC2 (aws-sdk-ec2), the kernel and the VPC's record of its packets.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use eniguard::cni::egress::Egress;
use eniguard_tests::{
    agent,
    netns::NetNs,
    sim::{
        fabric::{Verdict, INTERNET, INTERNET6},
        scenario::Scenario,
    },
};
use serde_json::Value;

use crate::{cni::Node, harness::Ctx};

/// Upstream's IPv6 settings (ENABLE_V4_EGRESS is true by default), the guard off (its own test
/// below).
const IPV6_ENV: &[(&str, &str)] = &[
    ("ENABLE_IPv6", "true"),
    ("ENABLE_IPv4", "false"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("ENIGUARD_GUARD_MODE", "off"),
    ("IP_COOLDOWN_PERIOD", "3"),
];

/// The VPC's router in the node's subnet (EC2 reserves `::1`, as `.1` in IPv4).
const ROUTER: &str = "2600:1f14:abc:de01::1";

/// The incident scenario with an IPv6 VPC: the node subnet `node-a` gets a /64.
fn ipv6_vpc(s: &mut Scenario) {
    s.vpc.ipv6_cidrs = vec!["2600:1f14:abc:de00::/56".into()];
    s.subnets[0].ipv6_cidr = Some("2600:1f14:abc:de01::/64".into());
}

fn pod_ip6(result: &Value) -> Result<(Ipv6Addr, String)> {
    let ip = &result["ips"][0];
    let addr = ip["address"].as_str().context("ips[0].address")?;
    let (a, len) = addr.split_once('/').context("address/len")?;
    ensure!(len == "128", "an IPv6 pod's address is a /128: {result}");
    Ok((a.parse()?, ip["gateway"].as_str().unwrap_or_default().to_owned()))
}

/// The `ipv6` of every allocation in the agent's checkpoint.
fn checkpoint_ipv6(node: &Node) -> Result<Vec<String>> {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(node.dir.join("ipam.json"))?)?;
    let allocations = file["allocations"].as_array().context("allocations")?;
    Ok(allocations.iter().filter_map(|a| a["ipv6"].as_str().map(str::to_owned)).collect())
}

/// IPv4 egress (ENABLE_V4_EGRESS): the pod has `v4if0` with an address of 169.254.172.0/22 (not
/// in the CNI result), pings an IPv4 address outside the VPC, and the VPC saw it come from the
/// node's own IPv4 address through the primary ENI.
fn v4_egress(node: &Node, pod: &NetNs, eni_id: &str) -> Result<()> {
    let addresses = pod.ip(&["-4", "addr", "show", "dev", Egress::V4.if_name()])?;
    ensure!(addresses.contains("inet 169.254.17"), "v4if0: {addresses}");
    let fabric = node.fabric()?;
    fabric.clear();
    pod.run("ping", &["-4", "-c", "1", "-W", "2", &INTERNET.to_string()]).context("IPv4 egress")?;
    let node_ip: Ipv4Addr = node.primary_eni()?.private_ip_address().context("the node's IPv4")?.parse()?;
    let out: Vec<_> = fabric.frames().into_iter().filter(|f| f.dst == INTERNET).collect();
    ensure!(
        !out.is_empty()
            && out.iter().all(|f| f.src == node_ip && f.eni_id == eni_id && f.verdict == Verdict::Delivered),
        "IPv4 egress should leave as {node_ip} through {eni_id}: {out:?}"
    );
    let table = node.ns.run("nft", &["list", "table", "ip", "eniguard"])?;
    ensure!(table.contains("169.254.172.0/22") && table.contains("snat"), "the egress SNAT: {table}");
    Ok(())
}

/// Whether host-local's store (upstream's data directory for `egress`, network `aws-cni`) holds
/// an address for the container.
fn egress_held(egress: Egress, container_id: &str) -> Result<bool> {
    let store = std::path::Path::new(egress.data_dir()).join("aws-cni");
    let Ok(files) = std::fs::read_dir(&store) else { return Ok(false) };
    Ok(files.flatten().any(|f| std::fs::read_to_string(f.path()).is_ok_and(|c| c.starts_with(container_id))))
}

/// IPv6 egress on an IPv4 node (ENABLE_V6_EGRESS, upstream's egress-cni in the other direction),
/// in a subnet with an IPv6 CIDR, so the instance has an IPv6 address: a pod's address stays its
/// IPv4 one (the CNI result), it gets `v6if0` with an address of fd00::ac:0/118 and IPv6 off on
/// eth0, pings an IPv6 address outside the VPC, and the VPC saw the node's IPv6 address through
/// the primary ENI (EC2's source check drops the pod's own); the SNAT is in `ip6 eniguard`; DEL
/// gives host-local's address back. The same agent on an instance without IPv6 starts and gives
/// no IPv6 egress (as upstream).
pub fn v6_egress(ctx: &mut Ctx) -> Result<()> {
    let env = [("ENABLE_V6_EGRESS", "true"), ("ENIGUARD_GUARD_MODE", "off")];
    let node = Node::start_with(ctx, "v6e", &env, ipv6_vpc)?;
    let primary = node.primary_eni()?;
    let eni_id = primary.network_interface_id().context("the primary ENI's id")?;
    let node_ip6: Ipv6Addr = primary
        .ipv6_addresses()
        .first()
        .and_then(|a| a.ipv6_address())
        .context("the node's IPv6")?
        .parse()?;
    let ns = NetNs::create(&format!("{}-pod6e", node.prefix))?;
    let sandbox = node.sandbox(&format!("{}-s6e", node.prefix), "sixegress", &ns)?;
    let add = node.call("ADD", &sandbox, &node.conf("1.1.0", None))?;
    ensure!(add.success, "ADD: {} {}", add.stdout, add.stderr);
    let result = add.json();
    let pod_ip = result["ips"][0]["address"].as_str().unwrap_or_default();
    ensure!(pod_ip.ends_with("/32") && !pod_ip.contains(':'), "the pod's IP stays IPv4: {result}");
    let addresses = ns.ip(&["-6", "addr", "show", "dev", Egress::V6.if_name()])?;
    ensure!(addresses.contains("inet6 fd00::ac:"), "v6if0: {addresses}");
    let eth0 = ns.run("sysctl", &["-n", "net.ipv6.conf.eth0.disable_ipv6"])?;
    ensure!(eth0.trim() == "1", "IPv6 off on the pod's eth0: {eth0}");
    ensure!(egress_held(Egress::V6, &sandbox.container_id)?, "host-local's store holds the address");

    let fabric = node.fabric()?;
    fabric.clear();
    ns.run("ping", &["-6", "-c", "1", "-W", "2", &INTERNET6.to_string()]).context("IPv6 egress")?;
    let out: Vec<_> = fabric.frames6().into_iter().filter(|f| f.dst == INTERNET6).collect();
    ensure!(
        !out.is_empty()
            && out.iter().all(|f| f.src == node_ip6 && f.eni_id == eni_id && f.verdict == Verdict::Delivered),
        "IPv6 egress should leave as {node_ip6} through {eni_id}: {out:?}"
    );
    let table = node.ns.run("nft", &["list", "table", "ip6", "eniguard"])?;
    ensure!(table.contains("fd00::ac:0/118") && table.contains("snat"), "the IPv6 egress SNAT: {table}");

    let del = node.call("DEL", &sandbox, &node.conf("1.1.0", Some(&result)))?;
    ensure!(del.success, "DEL: {} {}", del.stdout, del.stderr);
    ensure!(!egress_held(Egress::V6, &sandbox.container_id)?, "host-local's address released on DEL");
    drop(node);

    // An instance without IPv6 (the default VPC): the agent starts (with a warning in its log),
    // and gives no IPv6 egress and no ip6 table.
    let node = Node::start_with(ctx, "v6n", &env, |_| {})?;
    let ns = NetNs::create(&format!("{}-pod6n", node.prefix))?;
    let sandbox = node.sandbox(&format!("{}-s6n", node.prefix), "noegress", &ns)?;
    let add = node.call("ADD", &sandbox, &node.conf("1.1.0", None))?;
    ensure!(add.success, "ADD: {} {}", add.stdout, add.stderr);
    let links = ns.ip(&["link", "show"])?;
    ensure!(!links.contains(Egress::V6.if_name()), "no v6if0 without a node IPv6 address: {links}");
    let tables = node.ns.run("nft", &["list", "tables"])?;
    ensure!(!tables.contains("ip6 eniguard"), "no ip6 table: {tables}");
    Ok(())
}

/// Security groups for pods on an IPv6 node (ENABLE_POD_ENI): the agent signals the CNINode
/// feature, the Resource Controller attaches a trunk and the agent adopts it; a pod a
/// SecurityGroupPolicy selects gets, in ADD's reply, its branch ENI's IPv6 address (`ipv6Addr`),
/// `fe80:ec2::1` as its VLAN's gateway, the VLAN, the MAC, table `vlan + 100` and the trunk's
/// link, and no address of the /80; `lookup local` moved behind the VLAN rules for IPv6 (strict
/// mode); the guard holds its intent by that /128 on its VLAN. The plugin on this kernel (no
/// 802.1Q; the plumbing runs in the kernel matrix, `cni_branch_pods_strict_and_standard`) says so
/// and leaves no link and no IPv6 rule behind.
pub fn ipv6_branch_pod(ctx: &mut Ctx) -> Result<()> {
    let mut env = IPV6_ENV.to_vec();
    env.extend([("ENABLE_POD_ENI", "true"), ("ENIGUARD_GUARD_MODE", "monitor")]);
    let node = Node::start_with(ctx, "v6br", &env, |s| {
        ipv6_vpc(s);
        s.security_group_policies
            .push(eniguard_tests::sim::scenario::PolicySpec::for_app("default", "payments", "eks-pods"));
    })?;
    let trunk = crate::cni::wait_for_trunk(&node)?;
    crate::cni::local_rule_moved(&node, "-6")?;
    let (want, reply) = crate::cni::branch_pod_add(&node, "pay6", "pay6sandbox")?;
    let branch = &reply["branch"];
    let ip: Ipv6Addr = want["ipv6Addr"].as_str().context("the annotation's ipv6Addr")?.parse()?;
    let trunk_index = crate::cni::link_index(&node, trunk.mac_address().context("trunk mac")?)?;
    ensure!(
        reply["ip"] == ip.to_string()
            && branch["gateway"] == "fe80:ec2::1"
            && branch["vlanId"] == want["vlanId"]
            && branch["mac"] == want["ifAddress"]
            && branch["parentIfIndex"].as_u64() == trunk_index
            && reply["routeTable"] == want["vlanId"].as_u64().map(|v| v + 100).context("vlan")?,
        "reply {reply} for annotation {want}"
    );
    let checkpointed = node.dir.join("ipam.json").exists() && !checkpoint_ipv6(&node)?.is_empty();
    ensure!(!checkpointed, "a branch pod took an address of the /80");
    let entry = crate::cni::guard_entry(&node, "pay6")?;
    ensure!(
        entry["ip"] == ip.to_string()
            && entry["expectEni"] == want["eniId"]
            && entry["expectVlan"] == want["vlanId"],
        "guard entry {entry}"
    );
    let pod_ns = NetNs::create(&format!("{}-pay6", node.prefix))?;
    let sandbox = eniguard_tests::cni::Sandbox::new("pay6sandbox", "default", "pay6", &pod_ns);
    let add = node.call("ADD", &sandbox, &node.conf("1.1.0", None))?;
    ensure!(!add.success && add.msg().contains("VLAN link vlan.eth."), "ADD without 802.1Q: {}", add.stdout);
    let veth = eniguard::net::names::host_veth_name("vlan", "default", "pay6");
    ensure!(node.ns.link(&veth).is_err() && pod_ns.link("eth0").is_err(), "a failed branch ADD left links");
    let rules = node.ns.ip(&["-6", "rule", "show"])?;
    ensure!(!rules.contains(&ip.to_string()) && !rules.contains(&veth), "rules left: {rules}");
    Ok(())
}

/// An IPv6 node through the agent and the plugin: the agent starts with one /80 on the primary
/// ENI (as EC2 shows it) and no other ENI; each pod gets a /128 from it, reaches the VPC's
/// router through the primary ENI, passes CHECK (which then notices a removed route), and DEL
/// removes its host route; the checkpoint holds upstream's `ipv6` entries; the network-policy
/// agent hears the node's IPv6 address; a restart keeps the /80 and assigns no second one.
pub fn ipv6_node(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start_with(ctx, "v6", IPV6_ENV, ipv6_vpc)?;
    let primary = node.primary_eni()?;
    let prefixes: Vec<&str> = primary.ipv6_prefixes().iter().filter_map(|p| p.ipv6_prefix()).collect();
    ensure!(prefixes.len() == 1 && prefixes[0].ends_with("/80"), "one /80 on the primary ENI: {prefixes:?}");
    let prefix80: eniguard::ipam::model::Cidr6 = prefixes[0].parse()?;
    let attached = node.rt.block_on(crate::agent::attached(&node.ec2, &node.sim.nodes[0].instance_id))?;
    ensure!(attached.len() == 1, "no other ENI in IPv6 mode: {:?}", attached.keys());
    let forwarding = node.ns.run("sysctl", &["-n", "net.ipv6.conf.all.forwarding"])?;
    ensure!(forwarding.trim() == "1", "net.ipv6.conf.all.forwarding={forwarding}");

    let fabric = node.fabric()?;
    let eni_id = primary.network_interface_id().context("the primary ENI's id")?;
    let mut pods = Vec::new();
    for tag in ["a", "b"] {
        let ns = NetNs::create(&format!("{}-pod6{tag}", node.prefix))?;
        // Container ids unique to the run: host-local's store (/run/cni/v6pd) outlives a failed test.
        let sandbox = node.sandbox(&format!("{}-s{tag}", node.prefix), &format!("six{tag}"), &ns)?;
        let add = node.call("ADD", &sandbox, &node.conf("1.1.0", None))?;
        ensure!(add.success, "ADD: {} {}", add.stdout, add.stderr);
        let (ip, gateway) = pod_ip6(&add.json())?;
        ensure!(prefix80.contains(ip), "{ip} is not in {prefix80}");
        ensure!(gateway == "fe80::1", "the pod's gateway: {gateway}");
        ns.run("ping", &["-6", "-c", "1", "-W", "2", ROUTER]).context("the pod reaches the VPC's router")?;
        let seen = crate::sim_fabric::wait_for("the pod's echo request in the VPC's record", || {
            fabric.frames6().into_iter().find(|f| f.src == ip && f.dst.to_string() == ROUTER)
        })?;
        ensure!(seen.verdict == Verdict::Delivered && seen.eni_id == eni_id, "{seen:?}");
        v4_egress(&node, &ns, eni_id)?;
        pods.push((ns, sandbox, add.json(), ip));
    }
    ensure!(pods[0].3 != pods[1].3, "two pods, two addresses");

    let held = checkpoint_ipv6(&node)?;
    for (_, _, _, ip) in &pods {
        ensure!(held.contains(&ip.to_string()), "the checkpoint: {held:?}");
    }
    let facts = node.rt.block_on(eniguard_tests::npa::policy_configs(&agent::aws_node_dir(&node.dir)))?;
    let node_ip6 = primary.ipv6_addresses().first().and_then(|a| a.ipv6_address()).unwrap_or_default();
    ensure!(!node_ip6.is_empty() && facts.node_i_pv6 == node_ip6, "NodeIPv6: {facts:?} vs {node_ip6}");

    // CHECK passes, then notices the pod's default route gone.
    let (ns, sandbox, result, ip) = &pods[0];
    let check = node.call("CHECK", sandbox, &node.conf("1.1.0", Some(result)))?;
    ensure!(check.success, "CHECK: {} {}", check.stdout, check.stderr);
    ns.ip(&["-6", "route", "del", "default"])?;
    let check = node.call("CHECK", sandbox, &node.conf("1.1.0", Some(result)))?;
    ensure!(!check.success && check.stdout.contains("fe80::1"), "CHECK after drift: {}", check.stdout);

    // DEL: the host route goes, the address is released (and comes back after the cooldown).
    let del = node.call("DEL", sandbox, &node.conf("1.1.0", Some(result)))?;
    ensure!(del.success, "DEL: {} {}", del.stdout, del.stderr);
    let routes = node.ns.ip(&["-6", "route", "show"])?;
    ensure!(!routes.contains(&ip.to_string()), "the host route is gone: {routes}");
    let held = checkpoint_ipv6(&node)?;
    ensure!(!held.contains(&ip.to_string()), "released: {held:?}");

    // A restart (SIGKILL): the /80 again from IMDS, the other pod's address kept, no second /80.
    node.kill_and_restart()?;
    node.agent().daemon.wait_for_line("ready:", std::time::Duration::from_secs(60))?;
    let after = node.primary_eni()?;
    ensure!(after.ipv6_prefixes().len() == 1, "no second /80: {:?}", after.ipv6_prefixes());
    ensure!(
        !egress_held(Egress::V4, &sandbox.container_id)?,
        "host-local's IPv4 egress address released on DEL"
    );
    let (_, sandbox_b, result_b, ip_b) = &pods[1];
    ensure!(egress_held(Egress::V4, &sandbox_b.container_id)?, "the other pod's IPv4 egress address is kept");
    let check = node.call("CHECK", sandbox_b, &node.conf("1.1.0", Some(result_b)))?;
    ensure!(check.success, "CHECK of {ip_b} after the restart: {} {}", check.stdout, check.stderr);
    let del = node.call("DEL", sandbox_b, &node.conf("1.1.0", Some(result_b)))?;
    ensure!(del.success, "DEL: {} {}", del.stdout, del.stderr);
    Ok(())
}

/// An IPv6 node whose pods containerd starts (CRI, the conflist as the agent wrote it): the pod's
/// address, as containerd reports it, is a /128 of the primary ENI's /80; its busybox container
/// pings the VPC's router and the VPC saw it leave through the primary ENI; the kubelet's
/// teardown releases it and leaves no host route.
pub fn containerd_ipv6_pod(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start_with(ctx, "ctd6", IPV6_ENV, ipv6_vpc)?;
    let primary = node.primary_eni()?;
    let prefix80: eniguard::ipam::model::Cidr6 =
        primary.ipv6_prefixes().first().and_then(|p| p.ipv6_prefix()).context("the /80")?.parse()?;
    let eni_id = primary.network_interface_id().context("the primary ENI's id")?.to_owned();
    let k = crate::containerd::Kubelet::on(node)?;
    let (pod, sandbox) = k.run_pod("web6")?;
    let status = k.block_on(k.cri().status(&sandbox))?;
    let ip: Ipv6Addr = status.ip.parse().with_context(|| format!("containerd's pod ip `{}`", status.ip))?;
    ensure!(status.ready && prefix80.contains(ip), "{ip} (ready: {}) is not in {prefix80}", status.ready);
    ensure!(!status.ip.starts_with("169.254"), "the pod's IP stays its IPv6 one");
    let container = k.start_busybox(&pod, &sandbox)?;
    let ping = k.block_on(k.cri().exec(
        &container,
        &["ping", "-c", "2", "-W", "2", ROUTER],
        Duration::from_secs(10),
    ))?;
    ensure!(ping.exit_code == 0, "ping from the container: {} {}", ping.stdout, ping.stderr);
    let fabric = k.node.fabric()?;
    let frames: Vec<_> = fabric.frames6().into_iter().filter(|f| f.src == ip).collect();
    ensure!(
        !frames.is_empty() && frames.iter().all(|f| f.eni_id == eni_id && f.verdict == Verdict::Delivered),
        "{ip} should leave through {eni_id}: {frames:?}"
    );
    ensure!(checkpoint_ipv6(&k.node)? == [ip.to_string()], "the checkpoint holds the pod");
    k.block_on(k.cri().stop_and_remove(&sandbox))?;
    ensure!(checkpoint_ipv6(&k.node)?.is_empty(), "released on the kubelet's teardown");
    let routes = k.node.ns.ip(&["-6", "route", "show"])?;
    ensure!(!routes.contains(&ip.to_string()), "the host route is gone: {routes}");
    k.stop()
}

/// The live guard on an IPv6 node (the agent feeds it from its /80 pool): a pod with the
/// `eniguard.io/guard-mode: enforce` annotation reaches the VPC's router and its packets are
/// checked; from an address of the /80 it was not given it is `spoofed_source` and dropped; once
/// the primary ENI's groups drift in EC2 (the security-group audit reads them), its packets are
/// `sg_mismatch` and dropped.
pub fn live_pods_judged(ctx: &mut Ctx) -> Result<()> {
    let mut env: Vec<(&str, &str)> =
        IPV6_ENV.iter().copied().filter(|(k, _)| *k != "ENIGUARD_GUARD_MODE").collect();
    env.push(("ENIGUARD_SG_AUDIT_INTERVAL", "10"));
    let node = Node::start_with(ctx, "lg6", &env, ipv6_vpc)?;
    let ns = NetNs::create(&format!("{}-podg6", node.prefix))?;
    node.create_pod_with(
        "guarded",
        serde_json::json!({"annotations": {"eniguard.io/guard-mode": "enforce"}}),
    )?;
    let mut sandbox =
        eniguard_tests::cni::Sandbox::new(&format!("{}-s", node.prefix), "default", "guarded", &ns);
    sandbox.cni_path = node.dir.join("bin").display().to_string();
    let add = node.call("ADD", &sandbox, &node.conf("1.1.0", None))?;
    ensure!(add.success, "ADD: {} {}", add.stdout, add.stderr);
    let (ip, _) = pod_ip6(&add.json())?;
    let ping = |from: Option<&str>| {
        let mut args = vec!["-6", "-c", "2", "-i", "0.2", "-W", "1"];
        if let Some(f) = from {
            args.extend(["-I", f]);
        }
        args.push(ROUTER);
        ns.run("ping", &args).is_ok()
    };
    let series = |family: &str, reason: &str| {
        format!("eniguard_guard_pod_{family}_packets_total{{namespace=\"default\",pod=\"guarded\",reason=\"{reason}\"}}")
    };
    let metric = |s: &str| node.agent().metric(s).unwrap_or(0.0);
    crate::live_guard::eventually(
        "the pod's own traffic passes under enforce",
        Duration::from_secs(10),
        || Ok(ping(None)),
    )?;
    ensure!(
        metric("eniguard_guard_checked_packets_total") >= 2.0,
        "the pod's packets are checked on the ENI"
    );
    // The veth appears after ADD's reply: the guard attaches to it on its link event.
    crate::live_guard::eventually("the pod's source checked on its veth", Duration::from_secs(10), || {
        Ok(ping(None) && metric("eniguard_guard_checked_sources_total") >= 2.0)
    })?;

    // An address of the /80 the pod was not given.
    let other = Ipv6Addr::from(u128::from(ip) + 0x100);
    ns.ip(&["-6", "addr", "add", &format!("{other}/128"), "dev", "eth0", "nodad"])?;
    ensure!(!ping(Some(&other.to_string())), "a spoofed IPv6 source got through enforce");
    ensure!(metric(&series("dropped", "spoofed_source")) >= 2.0, "spoofed IPv6 not dropped");
    ns.ip(&["-6", "addr", "del", &format!("{other}/128"), "dev", "eth0"])?;

    // The primary ENI's groups drift: the pod's packets no longer leave with its groups.
    let eni = node.primary_eni()?.network_interface_id().context("the primary ENI")?.to_owned();
    let drifted = node.sim.security_groups["eks-pods"].clone();
    node.rt.block_on(
        node.ec2.modify_network_interface_attribute().network_interface_id(&eni).groups(&drifted).send(),
    )?;
    // The security-group audit (every 10 s here) reads the ENI's groups: the guard's truth.
    crate::live_guard::eventually("the drifted pod is dropped", Duration::from_secs(30), || {
        Ok(!ping(None) && metric(&series("dropped", "sg_mismatch")) >= 1.0)
    })?;
    let del = node.call("DEL", &sandbox, &node.conf("1.1.0", Some(&add.json())))?;
    ensure!(del.success, "DEL: {} {}", del.stdout, del.stderr);
    Ok(())
}

/// Audit mode beside an IPv6 node that aws-node ran: a pod plumbed as upstream's IPv6 mode plumbs
/// it (here by eniguard, stopped afterwards) and upstream's checkpoint with its `ipv6` entry,
/// written by hand. `eniguard audit` judges the pod by its /128: its packets to the VPC's router
/// are checked and pass; from an address of the /80 it was not given they are `spoofed_source`,
/// counted and not dropped (audit mode only reports).
pub fn audit_ipv6_node(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start_with(ctx, "au6", IPV6_ENV, ipv6_vpc)?;
    let ns = NetNs::create(&format!("{}-podau6", node.prefix))?;
    let sandbox = node.sandbox(&format!("{}-s", node.prefix), "judged", &ns)?;
    let add = node.call("ADD", &sandbox, &node.conf("1.1.0", None))?;
    ensure!(add.success, "ADD: {} {}", add.stdout, add.stderr);
    let (ip, _) = pod_ip6(&add.json())?;
    {
        let mut agent = node.agent();
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(agent.daemon.pid() as i32, libc::SIGTERM) };
        agent.daemon.wait_exit(Duration::from_secs(10))?;
    }
    let upstream = serde_json::json!({
        "version": "vpc-cni-ipam/1",
        "allocations": [{
            "networkName": "aws-cni",
            "containerID": sandbox.container_id,
            "ifName": "eth0",
            "ipv6": ip.to_string(),
            "allocationTimestamp": 1_796_600_000_000_000_000u64,
            "metadata": {"k8sPodNamespace": "default", "k8sPodName": "judged"}
        }]
    });
    std::fs::write(node.dir.join("ipam.json"), upstream.to_string())?;
    let env: Vec<(&str, &str)> =
        IPV6_ENV.iter().copied().filter(|(k, _)| *k != "ENIGUARD_GUARD_MODE").collect();
    let mut cmd = agent::audit_command(&node.sim, &node.prefix, 0, &node.dir, &env)?;
    let mut audit = eniguard_tests::process::Daemon::spawn(&mut cmd)?;
    let line = audit.wait_for_line("ready:", Duration::from_secs(60)).context("audit ready")?;
    ensure!(line.contains("1 pods judged") && line.contains("0 findings"), "{line}");
    let metric = |series: &str| -> Result<f64> {
        let text = eniguard_tests::http::get_in(&node.ns, "127.0.0.1:61680", "/metrics")?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    };
    ns.run("ping", &["-6", "-c", "3", "-i", "0.2", "-W", "2", ROUTER]).context("the pod pings")?;
    ensure!(metric("eniguard_guard_checked_packets_total")? >= 3.0, "audit checks the IPv6 pod's packets");
    ensure!(metric("eniguard_guard_checked_sources_total")? >= 3.0, "and its source");
    let other = Ipv6Addr::from(u128::from(ip) + 0x100);
    ns.ip(&["-6", "addr", "add", &format!("{other}/128"), "dev", "eth0", "nodad"])?;
    let _ = ns.run("ping", &["-6", "-c", "2", "-i", "0.2", "-W", "1", "-I", &other.to_string(), ROUTER]);
    let spoofed = "eniguard_guard_pod_violation_packets_total{namespace=\"default\",pod=\"judged\",reason=\"spoofed_source\"}";
    ensure!(metric(spoofed)? >= 2.0, "audit counts the spoofed IPv6 source");
    ensure!(
        metric("eniguard_guard_dropped_packets_total{reason=\"spoofed_source\"}")? == 0.0,
        "audit mode never drops"
    );
    let status = audit.terminate()?;
    ensure!(status.success(), "audit exited with {status}");
    // The runtime's DEL with the agent stopped: torn down from prevResult, host-local's IPv4
    // egress address given back, the release queued for the next agent.
    let del = node.call("DEL", &sandbox, &node.conf("1.1.0", Some(&add.json())))?;
    ensure!(del.success, "DEL without the agent: {} {}", del.stdout, del.stderr);
    Ok(())
}
