//! The guard fed by the agent itself: no intent file. Pods come and go through the real
//! `eniguard-cni`; the kernel's maps are read with the real `bpftool` from the agent's pin
//! directory and compared with the checkpoint; verdicts are read from the agent's /metrics and
//! /v1/events, and what left the node from the VPC namespace's recorder.

use std::{collections::BTreeSet, net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use eniguard::ipam::checkpoint::Checkpoint;
use eniguard_tests::{
    agent::{self, Agent, INTROSPECTION_PORT},
    netns::{sh, NetNs},
    sim::{fabric::Verdict, kube_api, scenario::Scenario},
};
use serde_json::Value;

use crate::{
    agent::{pre_fix_layout, PreFix, World, INCIDENT_ENV},
    cni::{pod_ip, runtime_add, runtime_del, Node, Pod, ENV},
    harness::Ctx,
};

/// The keys of a pinned hash map keyed by an IPv4 address (`[u8; 4]`), as bpftool prints them.
pub(crate) fn map_ips(pin_dir: &std::path::Path, map: &str) -> Result<BTreeSet<Ipv4Addr>> {
    let json = sh(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("maps").join(map)))?;
    let entries: Vec<Value> = serde_json::from_str(&json)?;
    entries
        .iter()
        .map(|e| {
            let k: Vec<u8> = e["formatted"]["key"]
                .as_array()
                .context("formatted key")?
                .iter()
                .map(|b| b.as_u64().map(|b| b as u8).context("key byte"))
                .collect::<Result<_>>()?;
            ensure!(k.len() == 4, "key {k:?}");
            Ok(Ipv4Addr::new(k[0], k[1], k[2], k[3]))
        })
        .collect()
}

/// How many entries a pinned map holds.
fn map_len(pin_dir: &std::path::Path, map: &str) -> Result<usize> {
    let json = sh(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("maps").join(map)))?;
    Ok(serde_json::from_str::<Vec<Value>>(&json)?.len())
}

/// The addresses the agent's checkpoint holds.
fn checkpointed(dir: &std::path::Path) -> Result<BTreeSet<Ipv4Addr>> {
    let cp = Checkpoint::new(dir.join("ipam.json")).read()?.context("checkpoint")?;
    Ok(cp.allocations.iter().map(|a| a.ip).collect())
}

/// The sum of a labelled counter family's series on the agent's /metrics (`name{` prefix).
fn family_sum(agent: &Agent, name: &str) -> Result<f64> {
    let text = agent.get(agent::METRICS_PORT, "/metrics")?;
    let mut found = false;
    let mut sum = 0.0;
    for line in
        text.lines().filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
    {
        found = true;
        sum += line.rsplit(' ').next().context("value")?.parse::<f64>()?;
    }
    ensure!(found, "no series {name} in /metrics");
    Ok(sum)
}

/// Every metric deploy/monitoring's Grafana dashboard queries is one the agent exports (its HELP
/// line is there even while a family has no series, e.g. no violating pod).
fn dashboard_metrics_exist(metrics: &str) -> Result<()> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let mut rest = expr;
            while let Some(at) = rest.find("eniguard_") {
                let name: String =
                    rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    ensure!(names.len() >= 10, "the dashboard queries {names:?}");
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP ").or_else(|| l.strip_prefix("# TYPE ")))
        .filter_map(|l| l.split_whitespace().next())
        .chain(metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()))
        .collect();
    let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(n.as_str())).collect();
    ensure!(missing.is_empty(), "the dashboard queries metrics the agent does not export: {missing:?}");
    Ok(())
}

/// `promtool check metrics` (Debian's prometheus package) on a /metrics response: it parses, and
/// its lint finds nothing but the naming rules upstream's `awscni_*` names break (a counter
/// without `_total`, `_count` on a counter, `_ms`), which upstream's own exposition breaks too.
pub(crate) fn promtool(response: &str) -> Result<()> {
    use std::io::Write as _;
    let body = eniguard_tests::http::body(response);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus; `cargo xtask setup` installs it)")?;
    child.stdin.take().context("stdin")?.write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // promtool exits 3 for lint problems only, 1 when the exposition does not parse.
    const LINT_ONLY: i32 = 3;
    let upstream_naming = |l: &str| {
        l.starts_with("awscni_") && ["suffix", "abbreviated units"].iter().any(|rule| l.contains(rule))
    };
    let problems: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty() && !upstream_naming(l)).collect();
    ensure!(
        out.status.success() || (out.status.code() == Some(LINT_ONLY) && problems.is_empty()),
        "promtool check metrics ({}): {said}",
        out.status
    );
    Ok(())
}

/// `eniguard <args>` in the node's namespace; its stdout.
pub(crate) fn cli(node_ns: &NetNs, args: &[&str]) -> Result<String> {
    sh(node_ns.cmd(eniguard_tests::eniguard_bin()).args(args))
}

pub(crate) fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pod churn through the CNI (200 ADD/DEL over 24 pods): after every ADD and every DEL the
/// kernel's intent map holds exactly the checkpoint's addresses; the first packet of a new pod is
/// checked; once settled every live pod's veth is in the veth map; correct pods' traffic is
/// checked and nothing is counted against them.
pub fn follows_pod_churn(ctx: &mut Ctx) -> Result<()> {
    const PODS: usize = 24;
    const OPS: usize = 200;
    let node = Node::start(ctx, "lgchurn", ENV)?;
    let pin_dir = agent::pin_dir(&node.prefix, 0);
    let mut pods = Vec::new();
    for i in 0..PODS {
        let name = format!("g{i}");
        let ns = NetNs::create(&format!("{}-{name}", node.prefix))?;
        let pod = serde_json::json!({"metadata": {"name": name},
            "spec": {"nodeName": node.sim.nodes[0].name, "containers": [{"name": "c"}]}});
        node.sim.kube.create(kube_api::PODS, Some("default"), pod).map_err(|e| anyhow::anyhow!(e.message))?;
        pods.push(Pod { ns, name, sandboxes: 0, live: None });
    }
    let same = |step: &str| -> Result<()> {
        let (kernel, cp) = (map_ips(&pin_dir, "GUARD_INTENT4_V2")?, checkpointed(&node.dir)?);
        ensure!(kernel == cp, "{step}: the intent map {kernel:?} is not the checkpoint {cp:?}");
        Ok(())
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut first_packets = 0;
    for op in 0..OPS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pod = &mut pods[(seed % PODS as u64) as usize];
        match pod.live.take() {
            Some((sandbox, result)) => {
                runtime_del(&node, &sandbox, Some(&result))?;
                same(&format!("op {op}: after DEL of {}", pod.name))?;
            }
            None => {
                runtime_add(&node, pod)?;
                same(&format!("op {op}: after ADD of {}", pod.name))?;
                // Every tenth new pod sends at once: that first packet is checked.
                if op % 10 == 0 {
                    let checked = family_sum(&node.agent(), "eniguard_guard_checked_packets_total")?;
                    pod.ns.run("ping", &["-c", "1", "-W", "2", "10.0.0.1"]).context("first packet")?;
                    let after = family_sum(&node.agent(), "eniguard_guard_checked_packets_total")?;
                    ensure!(
                        after > checked,
                        "{}'s first packet was not checked ({checked} → {after})",
                        pod.name
                    );
                    first_packets += 1;
                }
            }
        }
    }
    let live: Vec<&Pod> = pods.iter().filter(|p| p.live.is_some()).collect();
    println!("  {OPS} ADD/DEL: intent map = checkpoint after each; {} pods live; {first_packets} first packets checked", live.len());
    eventually("every live pod's veth in the veth map", Duration::from_secs(5), || {
        Ok(map_len(&pin_dir, "GUARD_VETH_V2")? == live.len())
    })?;
    // Correct pods: checked, never counted as violations.
    let checked = family_sum(&node.agent(), "eniguard_guard_checked_packets_total")?;
    let sources = family_sum(&node.agent(), "eniguard_guard_checked_sources_total")?;
    node.fabric()?.clear();
    for pod in &live {
        pod.ns
            .run("ping", &["-c", "2", "-i", "0.2", "-W", "2", "10.0.0.1"])
            .with_context(|| format!("{} pings", pod.name))?;
    }
    let agent = node.agent();
    let checked_after = family_sum(&agent, "eniguard_guard_checked_packets_total")?;
    let sources_after = family_sum(&agent, "eniguard_guard_checked_sources_total")?;
    ensure!(checked_after - checked >= 2.0 * live.len() as f64, "checked {checked} → {checked_after}");
    ensure!(sources_after - sources >= 2.0 * live.len() as f64, "sources {sources} → {sources_after}");
    let violations = family_sum(&agent, "eniguard_guard_violation_packets_total")?;
    let text = agent.get(agent::METRICS_PORT, "/metrics")?;
    ensure!(
        violations == 0.0,
        "correct pods counted as violations:\n{}",
        text.lines().filter(|l| l.contains("violation")).collect::<Vec<_>>().join("\n")
    );
    promtool(&text).context("the agent's metrics")?;
    dashboard_metrics_exist(&text)?;
    let frames = node.fabric()?.frames();
    for pod in &live {
        let ip = pod_ip(&pod.live.as_ref().context("live")?.1)?;
        ensure!(
            frames.iter().any(|f| f.src == ip && f.verdict == Verdict::Delivered),
            "{ip} did not reach the VPC"
        );
    }
    Ok(())
}

/// The #2792 pod on a pre-fix node (its checkpointed address on the trunk, plumbed as aws-node
/// v1.16.3 plumbed it): the agent reports it as a finding and counts its packets as `sg_mismatch`
/// with its identity. Restarted in enforce mode — and killed with -9 and restarted again — while
/// the pod sends, not one of its packets leaves the node.
pub fn catches_the_pre_fix_pod_and_enforce_survives_restarts(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "lgold", &Scenario::parse(include_str!("../../scenarios/incident.yaml"))?)?;
    let PreFix { trunk_id, trunk_device, victim, .. } = pre_fix_layout(&w)?;
    let World { sim, prefix, dir, .. } = &w;
    let mut agent = agent::start(sim, prefix, 0, dir, INCIDENT_ENV)?;
    let node_ns = NetNs::existing(&format!("{prefix}-node0"));
    // The pod as upstream's plugin plumbed it (the agent set up the trunk's table, device + 1).
    let pod_ns =
        crate::aws_node::plumb_pod(&node_ns, prefix, "shop", "payments-0", victim, trunk_device + 1)?.ns;
    let fabric = sim.fabric.as_deref().context("a fabric")?;
    fabric.clear();
    pod_ns
        .run("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.0.0.1"])
        .context("the victim pings the VPC")?;
    let out: Vec<_> = fabric.frames().into_iter().filter(|f| f.src == victim).collect();
    ensure!(
        !out.is_empty() && out.iter().all(|f| f.eni_id == trunk_id),
        "monitor: it leaves through the trunk: {out:?}"
    );
    let series = "eniguard_guard_pod_violation_packets_total{namespace=\"shop\",pod=\"payments-0\",reason=\"sg_mismatch\"}";
    ensure!(agent.metric(series)? >= 3.0, "{series} = {}", agent.metric(series)?);
    let finding = format!(
        "eniguard_guard_pod_findings{{namespace=\"shop\",pod=\"payments-0\",eni=\"{trunk_id}\",reason=\"trunk ENI (security groups for pods)\"}}"
    );
    ensure!(agent.metric(&finding)? == 1.0, "{finding}");
    promtool(&agent.get(agent::METRICS_PORT, "/metrics")?)
        .context("the agent's metrics with violations and findings")?;
    let events: Vec<Value> = serde_json::from_str(eniguard_tests::http::body(
        &agent.get(INTROSPECTION_PORT, "/v1/eniguard/events")?,
    ))?;
    let e = events.iter().find(|e| e["pod"] == "payments-0").context("no event for payments-0")?;
    ensure!(
        e["namespace"] == "shop"
            && e["reason"] == "sg_mismatch"
            && e["verdict"] == "passed"
            && e["actual_eni"] == trunk_id.as_str(),
        "event {e}"
    );
    // `eniguard explain` and `eniguard status` say why, in words.
    let pods_sg = &sim.security_groups["eks-pods"];
    let node_sg = &sim.security_groups["eks-node"];
    let text = cli(&node_ns, &["explain", "shop/payments-0"])?;
    for want in [
        format!("intent: leave through {trunk_id}"),
        format!("with [{pods_sg}]: ENIConfig `us-west-2a` (custom networking)"),
        "finding: its address".to_owned(),
        "trunk ENI (security groups for pods)".to_owned(),
        format!("carries [{node_sg}]: NOT what the intent says: sg_mismatch"),
        "verdicts: sg_mismatch".to_owned(),
        "event: shop/payments-0 sg_mismatch passed".to_owned(),
    ] {
        ensure!(text.contains(&want), "explain lacks `{want}`:\n{text}");
    }
    let status = cli(&node_ns, &["status"])?;
    ensure!(
        status.contains("ready")
            && status.contains("finding: shop/payments-0")
            && status.contains("violations: shop/payments-0"),
        "status:\n{status}"
    );

    // Enforce: restarted (SIGTERM keeps the datapath), then killed with -9 and restarted, while
    // the pod sends all along.
    let sender = pod_ns
        .cmd("ping")
        .args(["-i", "0.05", "-W", "1", "10.0.0.1"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let sender = ChildGuard(sender);
    agent.daemon.terminate()?;
    let enforce: Vec<(&str, &str)> =
        INCIDENT_ENV.iter().copied().chain([("ENIGUARD_GUARD_MODE", "enforce")]).collect();
    agent = agent::start(sim, prefix, 0, dir, &enforce)?;
    // Frames sent before the enforce apply may still be on their way to the recorder.
    std::thread::sleep(Duration::from_millis(300));
    fabric.clear();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(agent.daemon.pid() as i32, libc::SIGKILL) };
    agent.daemon.wait_exit(Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(500));
    agent = agent::start(sim, prefix, 0, dir, &enforce)?;
    std::thread::sleep(Duration::from_millis(500));
    let leaked: Vec<_> = fabric.frames().into_iter().filter(|f| f.src == victim).collect();
    ensure!(
        leaked.is_empty(),
        "enforce: {} packets of the victim left across the restarts: {:?}",
        leaked.len(),
        leaked.first()
    );
    let dropped = "eniguard_guard_pod_dropped_packets_total{namespace=\"shop\",pod=\"payments-0\",reason=\"sg_mismatch\"}";
    eventually("the new agent counts the drops", Duration::from_secs(5), || {
        Ok(agent.metric(dropped).unwrap_or(0.0) > 0.0)
    })?;
    drop(sender);
    Ok(())
}

/// Kills the child when dropped (the test's background sender).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Audit mode beside a node run as aws-node v1.16.3 runs it (`aws_node::set_up`): the incident
/// pod (its address on the trunk, leaving with the node's groups) is caught with its identity and
/// reason, the correct pod is not counted, and nothing of aws-node's changes: its checkpoint (bytes
/// and modification time), its directory, the node's rules and routes. Stopping audit mode
/// detaches everything it attached.
pub fn audit_beside_aws_node(ctx: &mut Ctx) -> Result<()> {
    let mut scenario = Scenario::parse(include_str!("../../scenarios/incident.yaml"))?;
    scenario
        .security_group_policies
        .push(eniguard_tests::sim::scenario::PolicySpec::for_app("shop", "checkout", "eks-pods"));
    let w = World::new(ctx, "lgaudit", &scenario)?;
    let aws = crate::aws_node::set_up(&w)?;
    let World { sim, prefix, dir, .. } = &w;
    let node_ns = NetNs::existing(&format!("{prefix}-node0"));
    let mut cmd = agent::audit_command(sim, prefix, 0, dir, INCIDENT_ENV)?;
    // The checkpoint's bytes and modification time, the directory's files, rules, routes.
    type Snapshot = (Vec<u8>, std::time::SystemTime, Vec<String>, String, String);
    let snapshot = || -> Result<Snapshot> {
        let mut files: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        files.sort();
        Ok((
            std::fs::read(&aws.checkpoint)?,
            std::fs::metadata(&aws.checkpoint)?.modified()?,
            files,
            node_ns.ip(&["rule", "show"])?,
            node_ns.ip(&["route", "show", "table", "all"])?,
        ))
    };
    let before = snapshot()?;
    let mut audit = eniguard_tests::process::Daemon::spawn(&mut cmd)?;
    let line = audit.wait_for_line("ready:", Duration::from_secs(60)).context("audit ready")?;
    ensure!(line.contains("2 pods judged") && line.contains("1 findings"), "{line}");
    let get = |path: &str| -> Result<String> {
        Ok(eniguard_tests::http::body(&eniguard_tests::http::get_in(&node_ns, "127.0.0.1:61681", path)?)
            .to_owned())
    };
    let metrics =
        || -> Result<String> { eniguard_tests::http::get_in(&node_ns, "127.0.0.1:61680", "/metrics") };
    let fabric = sim.fabric.as_deref().context("a fabric")?;
    fabric.clear();
    for pod in [&aws.victim, &aws.web] {
        pod.ns
            .run("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.0.0.1"])
            .with_context(|| format!("{} pings", pod.ip))?;
    }
    let frames = fabric.frames();
    ensure!(
        frames.iter().any(|f| f.src == aws.victim.ip && f.eni_id == aws.trunk_id),
        "the victim leaves through the trunk"
    );
    ensure!(
        frames.iter().any(|f| f.src == aws.web.ip && f.eni_id == aws.pods_eni_id),
        "web leaves through its ENI"
    );
    let text = metrics()?;
    promtool(&text).context("audit mode's metrics")?;
    let value = |series: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .with_context(|| format!("no {series} in audit mode's metrics"))?
            .trim()
            .parse()
            .context("value")
    };
    let victim = "eniguard_guard_pod_violation_packets_total{namespace=\"shop\",pod=\"payments-0\",reason=\"sg_mismatch\"}";
    ensure!(value(victim)? >= 3.0, "{victim}");
    ensure!(!text.contains("pod=\"web\""), "the correct pod is counted:\n{text}");
    ensure!(
        value("eniguard_guard_violation_packets_total{reason=\"sg_mismatch\"}")? == value(victim)?,
        "only the victim violates"
    );
    let finding = format!(
        "eniguard_guard_pod_findings{{namespace=\"shop\",pod=\"payments-0\",eni=\"{}\",reason=\"trunk ENI (security groups for pods)\"}}",
        aws.trunk_id
    );
    ensure!(value(&finding)? == 1.0, "{finding}");
    ensure!(value("eniguard_guard_checked_packets_total")? >= 6.0, "both pods' packets are checked");
    let events: Vec<Value> = serde_json::from_str(&get("/v1/eniguard/events")?)?;
    ensure!(
        events
            .iter()
            .any(|e| e["pod"] == "payments-0" && e["namespace"] == "shop" && e["reason"] == "sg_mismatch"),
        "no event for shop/payments-0: {events:?}"
    );
    ensure!(events.iter().all(|e| e["pod"] != "web"), "an event for the correct pod: {events:?}");
    let explain = cli(&node_ns, &["explain", "default/web", "--addr", "127.0.0.1:61681"])?;
    ensure!(
        explain.contains(&format!("leave through {}", aws.pods_eni_id))
            && explain.contains("as intended")
            && explain.contains("verdicts: no violation")
            && !explain.contains("finding"),
        "explain default/web:\n{explain}"
    );
    let explain = cli(&node_ns, &["explain", "shop/payments-0", "--addr", "127.0.0.1:61681"])?;
    ensure!(
        explain.contains("finding") && explain.contains("sg_mismatch"),
        "explain shop/payments-0:\n{explain}"
    );
    // A branch-ENI pod started beside aws-node: audit mode learns it from the pod watch (the
    // Resource Controller's annotation), its group from the SecurityGroupPolicy, the branch ENI's
    // from EC2.
    let pod = serde_json::json!({"metadata": {"name": "checkout", "labels": {"app": "checkout"}},
        "spec": {"nodeName": w.node.name, "containers": [{"name": "c"}]}});
    sim.kube.create(kube_api::PODS, Some("shop"), pod).map_err(|e| anyhow::anyhow!(e.message))?;
    let pods_sg = sim.security_groups["eks-pods"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let guard: Value = serde_json::from_str(&get("/v1/eniguard/guard")?)?;
        let found = guard["pods"].as_array().into_iter().flatten().find(|p| p["name"] == "checkout").cloned();
        // Complete once the namespace's policies were read (the next checkpoint poll, 1 s).
        let want = serde_json::json!([pods_sg]);
        if let Some(entry) =
            found.filter(|p| p["expectVlan"].as_u64().unwrap_or(0) > 0 && p["expectSecurityGroups"] == want)
        {
            break entry;
        }
        ensure!(std::time::Instant::now() < deadline, "no branch pod shop/checkout in audit mode: {guard}");
        std::thread::sleep(Duration::from_millis(250));
    };
    ensure!(entry["hostInterface"].as_str().is_some_and(|h| h.starts_with("vlan")), "{entry}");
    let explain = cli(&node_ns, &["explain", "shop/checkout", "--addr", "127.0.0.1:61681"])?;
    for want in [
        "its branch ENI".to_owned(),
        "SecurityGroupPolicy `checkout`".to_owned(),
        format!("carries [{pods_sg}]: as intended"),
    ] {
        ensure!(explain.contains(&want), "explain shop/checkout lacks `{want}`:\n{explain}");
    }
    // aws-node's port stays free: audit mode is on 61680/61681 only.
    ensure!(
        eniguard_tests::http::get_in(&node_ns, "127.0.0.1:61678", "/metrics").is_err(),
        "audit mode took 61678"
    );
    ensure!(before == snapshot()?, "audit mode changed aws-node's files, rules or routes");
    let pins = agent::pin_dir(prefix, 0);
    ensure!(pins.join("maps/GUARD_INTENT4_V2").exists(), "maps pinned under {}", pins.display());
    // The programs audit mode attached (TCX links pinned under links/), by id.
    let mut programs = Vec::new();
    for link in std::fs::read_dir(pins.join("links"))? {
        let shown = sh(Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(link?.path()))?;
        let v: Value = serde_json::from_str(&shown)?;
        programs.push(v["prog_id"].as_u64().context("prog_id")?);
    }
    // eth1 (trunk), eth2 (pods ENI), eth0 (primary) and the two pod veths.
    ensure!(programs.len() >= 4, "attached: {programs:?}");
    audit.terminate()?;
    ensure!(!pins.exists(), "audit mode left its pins");
    for id in programs {
        let gone = Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output()?;
        ensure!(!gone.status.success(), "program {id} is still loaded after audit mode stopped");
    }
    ensure!(before == snapshot()?, "stopping audit mode changed aws-node's state");
    Ok(())
}

/// Drift: someone changes the groups of the pods ENI and of the trunk in EC2. At the next
/// security-group audit (ENIGUARD_SG_AUDIT_INTERVAL, 10 s here) the truth follows EC2: the drift
/// gauges go to 1, the trunk gets its `TrunkSecurityGroupsDrift` Event, and the pod on the
/// drifted ENI — correct until then — is counted as `sg_mismatch`.
pub fn drift_is_caught(ctx: &mut Ctx) -> Result<()> {
    let mut env = ENV.to_vec();
    env.push(("ENIGUARD_SG_AUDIT_INTERVAL", "10"));
    let node = Node::start(ctx, "lgdrift", &env)?;
    let pod_ns = NetNs::create(&format!("{}-drift", node.prefix))?;
    let mut pod = Pod { ns: pod_ns, name: "drifty".into(), sandboxes: 0, live: None };
    let object = serde_json::json!({"metadata": {"name": "drifty"},
        "spec": {"nodeName": node.sim.nodes[0].name, "containers": [{"name": "c"}]}});
    node.sim.kube.create(kube_api::PODS, Some("default"), object).map_err(|e| anyhow::anyhow!(e.message))?;
    runtime_add(&node, &mut pod)?;
    let ip = pod_ip(&pod.live.as_ref().context("live")?.1)?;
    let eni = node.eni_holding(ip)?.network_interface_id().context("eni id")?.to_owned();
    let ping =
        || pod.ns.run("ping", &["-c", "2", "-i", "0.2", "-W", "2", "10.0.0.1"]).context("the pod pings");
    ping()?;
    let series = "eniguard_guard_pod_violation_packets_total{namespace=\"default\",pod=\"drifty\",reason=\"sg_mismatch\"}";
    ensure!(node.agent().metric(series).is_err(), "a correct pod is counted");
    let instance = node.sim.nodes[0].instance_id.clone();
    let mut trunk = None;
    eventually("the trunk attached", Duration::from_secs(20), || {
        let enis = node.rt.block_on(crate::agent::attached(&node.ec2, &instance))?;
        trunk = enis
            .into_values()
            .find(|n| n.interface_type().map(|t| t.as_str()) == Some("trunk"))
            .and_then(|n| n.network_interface_id().map(str::to_owned));
        Ok(trunk.is_some())
    })?;
    let trunk = trunk.context("trunk")?;
    let node_sg = node.sim.security_groups["eks-node"].clone();
    for id in [&eni, &trunk] {
        node.rt.block_on(
            node.ec2.modify_network_interface_attribute().network_interface_id(id).groups(&node_sg).send(),
        )?;
    }
    let drift = format!("eniguard_eni_security_groups_drift{{eni=\"{eni}\"}}");
    eventually("the drift gauge", Duration::from_secs(30), || Ok(node.agent().metric(&drift)? == 1.0))?;
    eventually("the trunk's drift gauge", Duration::from_secs(5), || {
        Ok(node.agent().metric("eniguard_trunk_security_groups_drift")? == 1.0)
    })?;
    let events = crate::agent::events_on(&node.sim, &node.sim.nodes[0].name, "TrunkSecurityGroupsDrift")?;
    ensure!(
        events
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains(&trunk) && m.contains(&node_sg))),
        "no TrunkSecurityGroupsDrift Event naming {trunk}: {events:?}"
    );
    ping()?;
    eventually("the drifted pod counted", Duration::from_secs(5), || {
        Ok(node.agent().metric(series).unwrap_or(0.0) >= 2.0)
    })?;
    Ok(())
}
