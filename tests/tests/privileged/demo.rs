//! `cargo xtask demo`: the whole product on vpcsim, start to finish, on this machine's kernel.
//! It lives beside the integration tests and drives the product through the same helpers they
//! use (the aws-node v1.16.3 emulation, the agent, containerd's CNI calling convention), so what
//! it shows is what the tests check.
//!
//! Before: a node as aws-node v1.16.3 runs it (#2792), `eniguard audit` beside it.
//! After: a node run by `eniguard agent` whose pods containerd starts (busybox containers,
//! through the installed conflist and `eniguard-cni`), a drift injected in EC2, then enforce
//! mode. `--keep` leaves both running. The agents' and containerd's logs go to files, named at
//! the start, so that the terminal shows only the demo's own lines.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use eniguard_tests::{
    agent,
    netns::NetNs,
    process::Daemon,
    sim::{
        kube_api,
        scenario::{Scenario, Sim},
    },
};
use serde_json::Value;

use crate::{
    agent::{attached, World, INCIDENT_ENV},
    aws_node,
    cni::{Node, ENV},
    containerd::Kubelet,
    harness::Ctx,
    live_guard::{cli, eventually},
};

fn say(text: &str) {
    println!("{text}");
}

fn heading(text: &str) {
    println!("\n== {text}");
}

/// Prints a command's output indented, as a transcript shows it.
fn show(command: &str, output: &str) {
    println!("$ {command}");
    for line in output.lines() {
        println!("  {line}");
    }
}

/// The features on the node's CNINode, in the order the API server stored them.
fn signal_order(sim: &Sim, node: &str) -> Result<Vec<String>> {
    let cninode = sim
        .kube
        .read(|s| s.get(&kube_api::CNINODES.key(None, node)))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(cninode["spec"]["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str().map(str::to_owned))
        .collect())
}

/// "subnet-… (name), [sg-… (name)]" for an ENI, with the scenario's names.
fn describe(sim: &Sim, eni: &aws_sdk_ec2::types::NetworkInterface) -> String {
    let name_of = |map: &std::collections::BTreeMap<String, String>, id: &str| {
        map.iter().find(|(_, v)| v.as_str() == id).map(|(k, _)| k.clone()).unwrap_or_default()
    };
    let subnet = eni.subnet_id().unwrap_or_default();
    let groups: Vec<String> = eni
        .groups()
        .iter()
        .filter_map(|g| g.group_id())
        .map(|g| format!("{g} ({})", name_of(&sim.security_groups, g)))
        .collect();
    format!("subnet {subnet} ({}), groups [{}]", name_of(&sim.subnets, subnet), groups.join(", "))
}

const PING: [&str; 8] = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.0.0.1"];

/// How many replies a ping's summary counts (iputils' `3 received`, busybox's `3 packets received`).
fn received(ping_output: &str) -> u32 {
    ping_output
        .split(", ")
        .find_map(|part| part.strip_suffix(" received")?.trim_end_matches(" packets").parse().ok())
        .unwrap_or(0)
}

/// Three pings to the VPC's first address from a namespace; how many came back.
fn ping(ns: &NetNs) -> u32 {
    let out = Command::new("nsenter").arg(format!("--net=/run/netns/{}", ns.name())).args(PING).output();
    received(&out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default())
}

/// The same from a container, through containerd's exec.
fn ping_from(k: &Kubelet, container: &str) -> u32 {
    received(&k.ping(container, 3, 1).map(|o| o.stdout).unwrap_or_default())
}

/// EC2 calls the simulator counted for an access key.
fn ec2_calls(sim: &Sim, key: &str) -> u64 {
    sim.calls()["ec2"][key].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0)
}

/// A metric's value in a /metrics text (0 when the series is absent).
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn violations(metrics: &str) -> f64 {
    sum(metrics, "eniguard_guard_violation_packets_total{")
}

fn sum(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Row {
    node: String,
    run_by: &'static str,
    pods: usize,
    enis: usize,
    violations: f64,
    dropped: f64,
    ec2_calls: u64,
}

pub fn run(ctx: &mut Ctx, keep: bool) -> Result<()> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let logs = std::env::temp_dir().join("eniguard-demo-logs");
    let _ = std::fs::remove_dir_all(&logs);
    agent::send_logs_to(&logs)?;
    say(&format!("(the agents' and containerd's logs go to {}/)", logs.display()));

    heading("Before: a node run the way aws-node v1.16.3 runs it (#2792)");
    let mut scenario = Scenario::parse(include_str!("../../scenarios/incident.yaml"))?;
    scenario
        .security_group_policies
        .push(eniguard_tests::sim::scenario::PolicySpec::for_app("shop", "payments", "eks-pods"));
    let w = World::new(ctx, "before", &scenario)?;
    let aws = aws_node::set_up(&w)?;
    let node_ns = NetNs::existing(&format!("{}-node0", w.prefix));
    say(&format!(
        "node {} ({}), custom networking + security groups for pods + prefix delegation",
        w.node.name, w.node.instance_id
    ));
    say(&format!(
        "signals on its CNINode, as the API server stored them: {:?}",
        signal_order(&w.sim, &w.node.name)?
    ));
    let enis = w.rt.block_on(attached(&w.ec2, &w.node.instance_id))?;
    let trunk = enis
        .values()
        .find(|n| n.network_interface_id() == Some(aws.trunk_id.as_str()))
        .context("the trunk")?;
    say(&format!("trunk {}: {}  <- the node's, not the ENIConfig's", aws.trunk_id, describe(&w.sim, trunk)));
    say(&format!("pod shop/payments-0 has {} from a /28 on the trunk", aws.victim.ip));
    say(&format!("pod default/web has {} from the ENIConfig's ENI {}", aws.web.ip, aws.pods_eni_id));
    let mut audit = Daemon::spawn(&mut agent::audit_command(&w.sim, &w.prefix, 0, &w.dir, INCIDENT_ENV)?)?;
    let line = audit.wait_for_line("ready:", Duration::from_secs(60)).context("audit mode ready")?;
    show("eniguard audit   # beside aws-node, in monitor mode", line.trim());
    for pod in [&aws.victim, &aws.web] {
        ping(&pod.ns);
    }
    let audit_addr = ["--addr", "127.0.0.1:61681"];
    show("eniguard status --addr 127.0.0.1:61681", &cli(&node_ns, &[&["status"][..], &audit_addr].concat())?);
    show(
        "eniguard explain shop/payments-0 --addr 127.0.0.1:61681",
        &cli(&node_ns, &[&["explain", "shop/payments-0"][..], &audit_addr].concat())?,
    );
    let metrics = eniguard_tests::http::get_in(&node_ns, "127.0.0.1:61680", "/metrics")?;
    let caught = value(
        &metrics,
        "eniguard_guard_pod_violation_packets_total{namespace=\"shop\",pod=\"payments-0\",reason=\"sg_mismatch\"}",
    );
    ensure!(caught >= 3.0, "audit mode did not catch shop/payments-0");
    rows.push(Row {
        node: w.node.name.clone(),
        run_by: "aws-node v1.16.3 + eniguard audit",
        pods: 2,
        enis: enis.len(),
        violations: violations(&metrics),
        dropped: sum(&metrics, "eniguard_guard_dropped_packets_total{"),
        ec2_calls: ec2_calls(&w.sim, agent::AUDIT.access_key),
    });

    heading("After: the same kind of node run by `eniguard agent`");
    let mut env = ENV.to_vec();
    env.push(("ENIGUARD_SG_AUDIT_INTERVAL", "10"));
    let node = Node::start_with(ctx, "after", &env, |s| {
        s.security_group_policies
            .push(eniguard_tests::sim::scenario::PolicySpec::for_app("default", "payments", "eks-pods"));
    })?;
    let k = Kubelet::on(node)?;
    let node = &k.node;
    let name = node.sim.nodes[0].name.clone();
    let instance = node.sim.nodes[0].instance_id.clone();
    say(&format!(
        "node {name} ({instance}), `eniguard agent` with {}",
        env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    ));
    say(&format!(
        "containerd {} in the node, its CNI config the agent's 10-eniguard.conflist (cniVersion {})",
        k.block_on(k.cri().version())?,
        node.conflist["cniVersion"].as_str().unwrap_or("?")
    ));
    eventually("the trunk", Duration::from_secs(20), || {
        let enis = node.rt.block_on(attached(&node.ec2, &instance))?;
        Ok(enis.values().any(|n| n.interface_type().map(|t| t.as_str()) == Some("trunk")))
    })?;
    say(&format!(
        "signals on its CNINode, as the API server stored them: {:?}",
        signal_order(&node.sim, &name)?
    ));
    let enis = node.rt.block_on(attached(&node.ec2, &instance))?;
    let trunk = enis
        .values()
        .find(|n| n.interface_type().map(|t| t.as_str()) == Some("trunk"))
        .context("the trunk")?;
    let trunk_id = trunk.network_interface_id().unwrap_or_default().to_owned();
    say(&format!("trunk {trunk_id}: {}  <- the ENIConfig's", describe(&node.sim, trunk)));
    let mut pods = Vec::new();
    for pod_name in ["web", "cart"] {
        let (spec, sandbox) = k.run_pod(pod_name)?;
        let ip = k.pod_ip(&sandbox)?;
        let container = k.start_busybox(&spec, &sandbox)?;
        let eni = node.eni_holding(ip)?;
        let eni_id = eni.network_interface_id().unwrap_or_default().to_owned();
        ensure!(eni_id != trunk_id, "{pod_name} got an address from the trunk");
        say(&format!(
            "containerd started default/{pod_name} (a busybox container): {ip} on {eni_id} ({})",
            describe(&node.sim, &eni)
        ));
        pods.push((pod_name, container, ip, eni_id));
    }
    // A branch-ENI pod: the Resource Controller annotates it; the agent answers ADD with its VLAN.
    let object = serde_json::json!({"metadata": {"name": "pay", "labels": {"app": "payments"}},
        "spec": {"nodeName": name, "containers": [{"name": "c"}]}});
    node.sim.kube.create(kube_api::PODS, Some("default"), object).map_err(|e| anyhow::anyhow!(e.message))?;
    let key = kube_api::PODS.key(Some("default"), "pay");
    let mut annotation = String::new();
    eventually("the branch ENI annotation", Duration::from_secs(20), || {
        let p = node.sim.kube.read(|s| s.get(&key)).map_err(|e| anyhow::anyhow!(e.message))?;
        annotation = p
            .pointer("/metadata/annotations/vpc.amazonaws.com~1pod-eni")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(!annotation.is_empty())
    })?;
    say(&format!("default/pay (SecurityGroupPolicy `payments`): vpc.amazonaws.com/pod-eni={annotation}"));
    let pay = k.runtime.pod("default", "pay", "uid-pay");
    match k.run_pod_retrying(&pay, Duration::from_secs(15)) {
        Ok(_) => say("containerd started default/pay: plumbed on its VLAN"),
        Err(e) => {
            let text = format!("{e:#}");
            let msg = text.split("failed (add): ").nth(1).unwrap_or(&text);
            say(&format!(
                "containerd could not start default/pay: {msg}\n  (this kernel has no 802.1Q devices; the kernel matrix plumbs branch pods and checks their tagged traffic: cni_branch_pods_strict_and_standard)"
            ));
        }
    }
    show("eniguard explain default/pay", &cli(&node.ns, &["explain", "default/pay"])?);
    for (pod, container, ..) in &pods {
        ensure!(ping_from(&k, container) == 3, "{pod} cannot reach the VPC");
    }
    let metrics = node.agent().get(agent::METRICS_PORT, "/metrics")?;
    let before_drift = violations(&metrics);
    say(&format!("traffic from web and cart: 3/3 pings each, {before_drift} violations"));
    ensure!(before_drift == 0.0, "correct pods were counted");

    heading("Drift: someone puts the node's group on web's ENI in EC2");
    let (_, web, web_ip, web_eni) = &pods[0];
    let node_sg = node.sim.security_groups["eks-node"].clone();
    node.rt.block_on(
        node.ec2.modify_network_interface_attribute().network_interface_id(web_eni).groups(&node_sg).send(),
    )?;
    let drift = format!("eniguard_eni_security_groups_drift{{eni=\"{web_eni}\"}}");
    eventually("the drift caught", Duration::from_secs(30), || {
        Ok(node.agent().metric(&drift).unwrap_or(0.0) == 1.0)
    })?;
    ping_from(&k, web);
    let series = "eniguard_guard_pod_violation_packets_total{namespace=\"default\",pod=\"web\",reason=\"sg_mismatch\"}";
    eventually("web's packets counted", Duration::from_secs(5), || {
        Ok(node.agent().metric(series).unwrap_or(0.0) >= 3.0)
    })?;
    say(&format!("{drift} = 1 (the security-group audit, every ENIGUARD_SG_AUDIT_INTERVAL = 10 s)"));
    show("eniguard explain default/web", &cli(&node.ns, &["explain", "default/web"])?);

    heading("Enforce: web annotated eniguard.io/guard-mode=enforce");
    let key = kube_api::PODS.key(Some("default"), "web");
    node.sim
        .kube
        .write(|s| {
            s.merge_patch(
                &key,
                &serde_json::json!({"metadata": {"annotations": {"eniguard.io/guard-mode": "enforce"}}}),
            )
        })
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let dropped =
        "eniguard_guard_pod_dropped_packets_total{namespace=\"default\",pod=\"web\",reason=\"sg_mismatch\"}";
    let mut received = 3;
    eventually("web's packets dropped", Duration::from_secs(10), || {
        received = ping_from(&k, web);
        Ok(received == 0 && node.agent().metric(dropped).unwrap_or(0.0) >= 3.0)
    })?;
    say(&format!(
        "web ({web_ip}) pings: {received}/3 received; {dropped} = {}",
        node.agent().metric(dropped)?
    ));
    show(
        "eniguard events",
        &cli(&node.ns, &["events"])?
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
    );

    let metrics = node.agent().get(agent::METRICS_PORT, "/metrics")?;
    rows.push(Row {
        node: name.clone(),
        run_by: "eniguard agent",
        pods: 3,
        enis: node.rt.block_on(attached(&node.ec2, &instance))?.len(),
        violations: violations(&metrics),
        dropped: sum(&metrics, "eniguard_guard_dropped_packets_total{"),
        ec2_calls: ec2_calls(&node.sim, agent::AGENT.access_key),
    });

    heading("Summary");
    say("| node | run by | pods | ENIs | violating packets | dropped | EC2 calls |");
    say("|---|---|---|---|---|---|---|");
    for r in &rows {
        say(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.node, r.run_by, r.pods, r.enis, r.violations, r.dropped, r.ec2_calls
        ));
    }
    let node_addr = node.ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
    let node_ip: Option<Ipv4Addr> = node_addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok());
    say(&format!(
        "metrics: http://{}:61678/metrics in netns {} (nsenter --net=/run/netns/{} curl -s localhost:61678/metrics)",
        node_ip.map(|i| i.to_string()).unwrap_or_else(|| "127.0.0.1".into()),
        node.ns.name(),
        node.ns.name()
    ));
    say(&format!("demo took {:.0} s", started.elapsed().as_secs_f64()));
    audit.terminate()?;
    if keep {
        say(&format!(
            "\n--keep: still running. Try:\n  nsenter --net=/run/netns/{ns} {bin} status\n  nsenter --net=/run/netns/{ns} {bin} explain default/web\n  nsenter --net=/run/netns/{ns} curl -s 127.0.0.1:61679/v1/guard\n  bpftool map dump pinned {pins}/maps/GUARD_INTENT4_V2\nCtrl-C ends it and removes everything.",
            ns = node.ns.name(),
            bin = eniguard_tests::eniguard_bin().display(),
            pins = agent::pin_dir(&node.prefix, 0).display()
        ));
        say(&format!(
            "  ctr --address {} -n k8s.io containers ls   # the pods' containers",
            k.runtime.socket.display()
        ));
        wait_for_signal();
    }
    std::fs::write(logs.join("containerd.log"), k.runtime.log())?;
    k.stop()
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Returns after SIGINT or SIGTERM, so that everything is torn down as after a test.
fn wait_for_signal() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
}
