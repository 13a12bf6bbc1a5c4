//! The simulator's fabric on the real kernel: NICs follow EC2 attachments made through
//! aws-sdk-ec2 and the Resource Controller, the VPC namespace records what leaves the node and
//! drops what EC2's source/destination check would, and leftovers of a killed run are removed.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use aws_sdk_ec2::config::retry::RetryConfig;
use eniguard_tests::{
    frames::{inject, parse_mac, udp_frame, ETH_P_8021Q},
    netns::{in_netns, sh, NetNs},
    process::Daemon,
    sim::{
        fabric::{Fabric, Frame, Verdict},
        kube_api::{CNINODES, PODS, SECURITY_GROUP_POLICIES},
        scenario::{Scenario, Sim},
    },
};
use serde_json::json;

use crate::{clients::ec2_client, harness::Ctx};

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn namespaces(prefix: &str) -> Result<Vec<String>> {
    let out = sh(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect())
}

pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    for _ in 0..100 {
        if let Some(v) = f() {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out waiting for {what}")
}

/// Sends one UDP frame from `src` (optionally tagged) out of `iface` in `ns`, addressed to the
/// gateway's MAC, and returns what the VPC recorded for it.
fn send(fabric: &Fabric, ns: &NetNs, iface: &str, vlan: Option<u16>, src: Ipv4Addr) -> Result<Frame> {
    let own_mac = parse_mac(&ns.mac(iface)?)?;
    let dst = Ipv4Addr::new(198, 51, 100, 7);
    let tags: Vec<(u16, u16)> = vlan.map(|v| (ETH_P_8021Q, v)).into_iter().collect();
    let frame = udp_frame([0xff; 6], own_mac, &tags, src, dst);
    let before = fabric.frames().len();
    let iface = iface.to_owned();
    in_netns(ns, move || inject(&iface, &frame, 1))?;
    wait_for("the frame in the VPC's record", || {
        fabric.frames().into_iter().skip(before).find(|f| f.src == src && f.dst == dst)
    })
}

/// `Ip: InReceives` of the namespace: every IPv4 packet its kernel took in.
fn ip_in_receives(ns: &NetNs) -> Result<u64> {
    let snmp = ns.run("cat", &["/proc/net/snmp"])?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().context("Ip: header")?, ip.next().context("Ip: values")?);
    let column = names.split_whitespace().position(|n| n == "InReceives").context("InReceives")?;
    Ok(values.split_whitespace().nth(column).context("InReceives value")?.parse()?)
}

pub fn follows_attachments_and_checks_sources(ctx: &mut Ctx) -> Result<()> {
    let prefix = format!("{}-sim", ctx.prefix());
    // What a run killed with SIGKILL leaves behind is removed at start.
    let leftover = NetNs::create(&format!("{prefix}-node7"))?;
    std::mem::forget(leftover);
    let rt = runtime()?;
    let sim = rt.block_on(Sim::start_with_fabric(&Scenario::default_scenario(), &prefix))?;
    let fabric = sim.fabric.clone().context("fabric")?;
    let mut present = namespaces(&prefix)?;
    present.sort();
    ensure!(
        present == [format!("{prefix}-node0"), format!("{prefix}-vpc")],
        "leftover not removed: {present:?}"
    );
    let instance = sim.nodes[0].instance_id.clone();
    let node = NetNs::existing(&format!("{prefix}-node0"));

    // The primary NIC: the ENI's MAC, its address, and a gateway the VPC answers.
    let (primary_mac, primary_ip) = sim.with_ec2(|s| {
        let e = s.ec2.attached_to(&instance)[0];
        (e.mac.clone(), e.primary_ip)
    });
    ensure!(node.mac("eth0")? == primary_mac, "eth0 carries the primary ENI's MAC");
    node.run("ping", &["-c", "1", "-W", "2", "10.0.0.1"]).context("the gateway answers")?;
    // The recorder runs on its own thread: the echo request may be recorded just after ping exits.
    let gateway = Ipv4Addr::new(10, 0, 0, 1);
    let ping = wait_for("ping recorded", || fabric.frames().into_iter().find(|f| f.dst == gateway))?;
    ensure!(ping.src == primary_ip && ping.verdict == Verdict::Delivered && ping.vlan.is_none(), "{ping:?}");

    // Attach through aws-sdk-ec2: eth1 appears with the ENI's MAC; detach removes it.
    let ec2 = ec2_client(&sim.ec2_url, RetryConfig::disabled());
    let (eni_id, eni_mac, secondary) = rt.block_on(async {
        let eni = ec2
            .create_network_interface()
            .subnet_id(&sim.subnets["node-a"])
            .groups(&sim.security_groups["eks-node"])
            .send()
            .await?
            .network_interface
            .context("no ENI")?;
        let id = eni.network_interface_id().context("no id")?.to_owned();
        let attachment = ec2
            .attach_network_interface()
            .network_interface_id(&id)
            .instance_id(&instance)
            .device_index(1)
            .send()
            .await?;
        let assigned = ec2
            .assign_private_ip_addresses()
            .network_interface_id(&id)
            .secondary_private_ip_address_count(1)
            .send()
            .await?;
        let ip: Ipv4Addr =
            assigned.assigned_private_ip_addresses()[0].private_ip_address().context("ip")?.parse()?;
        anyhow::Ok((id, eni.mac_address().context("mac")?.to_owned(), (ip, attachment.attachment_id)))
    })?;
    // The NIC appears once EC2 finishes attaching (`attaching` → `attached`).
    wait_for("eth1 with the new ENI's MAC", || node.mac("eth1").ok().filter(|m| *m == eni_mac))?;
    node.ip(&["link", "set", "eth1", "up"])?;
    // What reaches the VPC's kernel (its IP layer counts every packet it receives).
    let vpc_received = || ip_in_receives(fabric.vpc());
    let before = vpc_received()?;
    let ok = send(&fabric, &node, "eth1", None, secondary.0)?;
    ensure!(ok.verdict == Verdict::Delivered && ok.eni_id == eni_id, "{ok:?}");
    ensure!(vpc_received()? == before + 1, "a delivered frame reaches the VPC's kernel");
    let spoofed = send(&fabric, &node, "eth1", None, primary_ip)?;
    ensure!(spoofed.verdict == Verdict::SourceDestCheck, "eth0's address on eth1 is dropped: {spoofed:?}");
    ensure!(fabric.dropped().get(&eni_id) == Some(&1), "{:?}", fabric.dropped());
    ensure!(vpc_received()? == before + 1, "a dropped frame never reaches the VPC's kernel");

    // Trunk and branch through the Resource Controller; tagged frames are judged by VLAN.
    let node_name = sim.nodes[0].name.clone();
    sim.kube
        .write(|s| {
            s.merge_patch(
                &CNINODES.key(None, &node_name),
                &json!({"spec": {"features": [{"name": "CustomNetworking", "value": "us-west-2a"}]}}),
            )?;
            s.merge_patch(
                &CNINODES.key(None, &node_name),
                &json!({"spec": {"features": [{"name": "CustomNetworking", "value": "us-west-2a"},
                                              {"name": "SecurityGroupsForPods"}]}}),
            )
        })
        .map_err(|e| anyhow::anyhow!(e.message))?;
    wait_for("eth2 (the trunk)", || node.mac("eth2").ok())?;
    let pod_sg = sim.security_groups["eks-pods"].clone();
    let policy = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {"matchLabels": {"app": "pay"}},
                        "securityGroups": {"groupIds": [pod_sg]}}});
    sim.kube
        .create(SECURITY_GROUP_POLICIES, Some("default"), policy)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let pod = json!({"metadata": {"name": "pay", "labels": {"app": "pay"}},
                     "spec": {"nodeName": node_name, "containers": [{"name": "c"}]}});
    sim.kube.create(PODS, Some("default"), pod).map_err(|e| anyhow::anyhow!(e.message))?;
    let annotation = wait_for("the pod-eni annotation", || {
        let p = sim.kube.read(|s| s.get(&PODS.key(Some("default"), "pay"))).ok()?;
        p.pointer("/metadata/annotations/vpc.amazonaws.com~1pod-eni")?.as_str().map(str::to_owned)
    })?;
    let details: serde_json::Value = serde_json::from_str(&annotation)?;
    let branch_ip: Ipv4Addr = details[0]["privateIp"].as_str().context("privateIp")?.parse()?;
    let branch_id = details[0]["eniId"].as_str().context("eniId")?.to_owned();
    node.ip(&["link", "set", "eth2", "up"])?;
    let tagged = send(&fabric, &node, "eth2", Some(1), branch_ip)?;
    ensure!(tagged.verdict == Verdict::Delivered && tagged.vlan == Some(1), "{tagged:?}");
    ensure!(tagged.branch_eni_id.as_deref() == Some(branch_id.as_str()), "{tagged:?}");
    let wrong_vlan = send(&fabric, &node, "eth2", Some(2), branch_ip)?;
    ensure!(wrong_vlan.verdict == Verdict::SourceDestCheck, "VLAN 2 has no branch: {wrong_vlan:?}");

    rt.block_on(async {
        let attachment = secondary.1.context("attachment id")?;
        ec2.detach_network_interface().attachment_id(attachment).send().await?;
        // Detaching takes time, as on EC2: the ENI is still in use right after.
        let early = ec2.delete_network_interface().network_interface_id(&eni_id).send().await;
        let code = early.err().and_then(|e| e.into_service_error().meta().code().map(str::to_owned));
        ensure!(code.as_deref() == Some("InvalidNetworkInterface.InUse"), "{code:?}");
        anyhow::Ok(())
    })?;
    wait_for("eth1 unplugged after the detach", || node.mac("eth1").is_err().then_some(()))?;

    drop(sim);
    ensure!(namespaces(&prefix)?.is_empty(), "namespaces left: {:?}", namespaces(&prefix)?);
    Ok(())
}

/// The default scenario with IPv6: the VPC's /56 and node-a's /64.
fn ipv6_sim(rt: &tokio::runtime::Runtime, prefix: &str) -> Result<Sim> {
    let mut scenario = Scenario::default_scenario();
    scenario.vpc.ipv6_cidrs = vec!["2600:1f14:abc:de00::/56".into()];
    scenario.subnets[0].ipv6_cidr = Some("2600:1f14:abc:de01::/64".into());
    rt.block_on(Sim::start_with_fabric(&scenario, prefix))
}

/// One /80 on `eni_id` through aws-sdk-ec2, as ipamd asks for it; its network address.
fn assign_prefix80(rt: &tokio::runtime::Runtime, sim: &Sim, eni_id: &str) -> Result<Ipv6Addr> {
    let ec2 = ec2_client(&sim.ec2_url, RetryConfig::disabled());
    let assigned =
        rt.block_on(ec2.assign_ipv6_addresses().network_interface_id(eni_id).ipv6_prefix_count(1).send())?;
    Ok(assigned
        .assigned_ipv6_prefixes()
        .first()
        .and_then(|p| p.split('/').next())
        .context("a /80")?
        .parse()?)
}

/// An IPv6 VPC on the real kernel: the node's primary NIC comes up with its IPv6 address and a
/// default route via `fe80:ec2::1`, reaches the VPC's router at the subnet's `::1`, and a /80
/// assigned through aws-sdk-ec2 is routed back to the node; a source the ENI does not own is
/// dropped by the same per-wire chain as in IPv4.
pub fn carries_ipv6_and_checks_its_sources(ctx: &mut Ctx) -> Result<()> {
    let prefix = format!("{}-six", ctx.prefix());
    let rt = runtime()?;
    let sim = ipv6_sim(&rt, &prefix)?;
    let fabric = sim.fabric.clone().context("fabric")?;
    let instance = sim.nodes[0].instance_id.clone();
    let node = NetNs::existing(&format!("{prefix}-node0"));
    let (eni_id, node_ip) = sim.with_ec2(|s| {
        let e = s.ec2.attached_to(&instance)[0];
        (e.id.clone(), e.ipv6_addresses.first().copied())
    });
    let node_ip = node_ip.context("the primary ENI's IPv6 address")?;
    let router: Ipv6Addr = "2600:1f14:abc:de01::1".parse()?;
    let ping = |from: Ipv6Addr| {
        node.run("ping", &["-6", "-c", "1", "-W", "2", "-I", &from.to_string(), &router.to_string()])
    };
    let recorded = |from: Ipv6Addr| {
        wait_for("the echo request in the VPC's record", || {
            fabric.frames6().into_iter().find(|f| f.src == from && f.dst == router)
        })
    };
    ping(node_ip).context("the VPC's router answers the node's own IPv6 address")?;
    let seen = recorded(node_ip)?;
    ensure!(seen.verdict == Verdict::Delivered && seen.eni_id == eni_id && seen.vlan.is_none(), "{seen:?}");

    // A /80 on the ENI, as ipamd asks for it: an address from it (a pod's, here on the node's
    // loopback) reaches the router and its answer is routed back through the ENI.
    let prefix80 = assign_prefix80(&rt, &sim, &eni_id)?;
    let pod = Ipv6Addr::from(u128::from(prefix80) + 5);
    node.ip(&["addr", "add", &format!("{pod}/128"), "dev", "lo"])?;
    ping(pod).context("a /80 address is answered through the ENI")?;
    ensure!(recorded(pod)?.verdict == Verdict::Delivered);

    // An address the ENI was not given: the VPC drops it before its kernel sees it.
    let spoofed: Ipv6Addr = "2600:1f14:abc:de01:ffff::9".parse()?;
    node.ip(&["addr", "add", &format!("{spoofed}/128"), "dev", "lo"])?;
    ensure!(ping(spoofed).is_err(), "a spoofed IPv6 source is not answered");
    let dropped = recorded(spoofed)?;
    ensure!(dropped.verdict == Verdict::SourceDestCheck, "{dropped:?}");
    ensure!(fabric.dropped().get(&eni_id).is_some_and(|n| *n >= 1), "{:?}", fabric.dropped());
    ensure!(fabric.frames().iter().all(|f| f.src != Ipv4Addr::UNSPECIFIED), "IPv4 frames stay apart");
    drop(sim);
    ensure!(namespaces(&prefix)?.is_empty(), "namespaces left: {:?}", namespaces(&prefix)?);
    Ok(())
}

/// An IPv6 pod's plumbing (`net::pod`, as the plugin will do it in IPv6 mode) on a node of an
/// IPv6 VPC: the pod gets a /128 of the primary ENI's /80, its default route via `fe80::1`, and
/// reaches the VPC's router through the node with its own address; teardown removes the host
/// route and the host end.
pub fn ipv6_pod_reaches_the_vpc_router(ctx: &mut Ctx) -> Result<()> {
    use eniguard::net::pod::{self, PodNetwork};
    let prefix = format!("{}-p6", ctx.prefix());
    let rt = runtime()?;
    let sim = ipv6_sim(&rt, &prefix)?;
    let fabric = sim.fabric.clone().context("fabric")?;
    let instance = sim.nodes[0].instance_id.clone();
    let node = NetNs::existing(&format!("{prefix}-node0"));
    let eni_id = sim.with_ec2(|s| s.ec2.attached_to(&instance)[0].id.clone());
    let prefix80 = assign_prefix80(&rt, &sim, &eni_id)?;
    // What the agent does at start in IPv6 mode.
    node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let pod_ns = NetNs::create(&format!("{}-pod6", ctx.prefix()))?;
    let ip = Ipv6Addr::from(u128::from(prefix80) + 1);
    let net = PodNetwork {
        netns: pod_ns.path(),
        if_name: "eth0".into(),
        host_veth: "eni6a1b2c3d4e5".into(),
        ip: ip.into(),
        table: None,
        mtu: 1500,
    };
    let on_node = |teardown: bool| {
        let net = net.clone();
        in_netns(&node, move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                if teardown {
                    pod::teardown(&handle, net.ip, Some(&net.host_veth)).await?;
                } else {
                    pod::setup(&handle, &net).await?;
                }
                anyhow::Ok(())
            })
        })
    };
    on_node(false)?;
    let routes = pod_ns.ip(&["-6", "route", "show"])?;
    ensure!(routes.contains("default via fe80::1 dev eth0"), "the pod's routes: {routes}");
    let addresses = pod_ns.ip(&["-6", "addr", "show", "dev", "eth0"])?;
    ensure!(addresses.contains(&format!("{ip}/128")), "the pod's address: {addresses}");
    let router = "2600:1f14:abc:de01::1";
    pod_ns.run("ping", &["-6", "-c", "1", "-W", "2", router]).context("the pod reaches the VPC's router")?;
    let seen = wait_for("the pod's echo request in the VPC's record", || {
        fabric.frames6().into_iter().find(|f| f.src == ip && f.dst.to_string() == router)
    })?;
    ensure!(seen.verdict == Verdict::Delivered && seen.eni_id == eni_id, "{seen:?}");
    ensure!(node.ip(&["-6", "route", "show"])?.contains(&format!("{ip} dev eni6a1b2c3d4e5")));
    on_node(true)?;
    let after = node.ip(&["-6", "route", "show"])?;
    ensure!(!after.contains(&ip.to_string()), "the host route is gone: {after}");
    ensure!(node.ip(&["link", "show", "eni6a1b2c3d4e5"]).is_err(), "the host end is gone");
    drop(sim);
    Ok(())
}

/// `vpcsim` with its fabric: killed with SIGKILL it leaves namespaces behind; the next run removes
/// them and starts; SIGTERM removes everything.
pub fn vpcsim_recovers_from_sigkill(ctx: &mut Ctx) -> Result<()> {
    let prefix = format!("{}-vs", ctx.prefix());
    let state_dir = std::env::temp_dir().join(format!("{prefix}-state"));
    let run = || -> Result<Daemon> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vpcsim"));
        cmd.args(["--prefix", &prefix, "--state-dir"]).arg(&state_dir);
        let mut d = Daemon::spawn(&mut cmd)?;
        d.wait_for_line("# vpcsim ready", Duration::from_secs(20))?;
        Ok(d)
    };
    let expected = [format!("{prefix}-node0"), format!("{prefix}-vpc")];
    let sorted = || -> Result<Vec<String>> {
        let mut n = namespaces(&prefix)?;
        n.sort();
        Ok(n)
    };
    let first = run()?;
    ensure!(sorted()? == expected, "{:?}", sorted()?);
    let node = NetNs::existing(&expected[0]);
    let first_mac = node.mac("eth0")?;
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    drop(first);
    ensure!(sorted()? == expected, "SIGKILL leaves the namespaces: {:?}", sorted()?);
    // Mark the stale namespace, to see that the next run replaces it rather than reusing it.
    node.ip(&["link", "add", "stale0", "type", "veth", "peer", "name", "stale1"])?;

    let second = run()?;
    ensure!(sorted()? == expected, "{:?}", sorted()?);
    ensure!(node.mac("stale0").is_err(), "node0 was recreated, not reused");
    ensure!(node.mac("eth0")? == first_mac, "a fresh node0 with the same deterministic primary ENI");
    let status = second.terminate()?;
    ensure!(status.success(), "vpcsim exit {status}");
    ensure!(sorted()?.is_empty(), "SIGTERM removes the namespaces: {:?}", sorted()?);
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}
