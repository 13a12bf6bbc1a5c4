//! The egress guard with real packets: pods in namespaces behind veths, ENI interfaces wired to a
//! VPC namespace, the agent's `guard` command attached to them.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use eniguard_tests::{
    eniguard_bin,
    frames::{
        arp_frame, inject, inject_nonlinear, ipv6_frame, padded, parse_mac, udp_frame, ETH_P_8021AD,
        ETH_P_8021Q,
    },
    netns::{in_netns, sh, NetNs},
    process::Daemon,
    topology::{Eni, Pod, Topology, ETH1, ETH2, VPC_DEST},
};

use crate::harness::Ctx;

const N: u32 = 10;
const METRICS: &str = "127.0.0.1:9400";

/// Truth for the standard topology: eth1 is an ENI with the ENIConfig's groups, eth2 is the trunk
/// built with the node's default groups (the upstream incident), carrying branch VLAN 5.
const INTERFACES: &str = r#"
interfaces:
  - { name: eth1, eni: eni-a1, vlan: 0, securityGroups: [sg-c0f1] }
  - { name: eth2, eni: eni-7, vlan: 0, securityGroups: [sg-de] }
  - { name: eth2, eni: eni-b5, vlan: 5, securityGroups: [sg-b0] }
"#;

fn pod_yaml(name: &str, pod: &Pod, eni: &str, vlan: u16, sgs: &str, mode: Option<&str>) -> String {
    let mode = mode.map(|m| format!(", mode: {m}")).unwrap_or_default();
    format!(
        "  - {{ namespace: default, name: {name}, ip: {}, hostInterface: {}, expect: {{ eni: {eni}, vlan: {vlan}, securityGroups: [{sgs}] }}{mode} }}\n",
        pod.ip, pod.host_veth
    )
}

struct Run {
    agent: Daemon,
    intent: PathBuf,
    node: String,
}

fn start(ctx: &Ctx, topo: &Topology, yaml: &str, extra: &[&str]) -> Result<Run> {
    let intent = ctx.pin_dir.with_extension("intent.yaml");
    let intent = PathBuf::from("/tmp").join(intent.file_name().context("no file name")?);
    std::fs::write(&intent, yaml)?;
    let mut agent = Daemon::spawn(
        topo.node
            .cmd(eniguard_bin())
            .args(["guard", "--intent"])
            .arg(&intent)
            .args(["--metrics-addr", METRICS, "--pin-dir"])
            .arg(&ctx.pin_dir)
            .args(extra),
    )?;
    agent.wait_for_line("ready:", Duration::from_secs(20))?;
    Ok(Run { agent, intent, node: topo.node.name().to_owned() })
}

impl Run {
    fn get(&self, path: &str) -> Result<String> {
        eniguard_tests::http::get(&NetNs::existing(&self.node), METRICS, path)
    }

    /// The value of one series, e.g. `eniguard_guard_violation_packets_total{reason="wrong_eni"}`.
    /// A missing series is an error (a renamed metric must not read as 0). Events and counters are
    /// read after the packets were sent, so no waiting.
    fn metric(&self, series: &str) -> Result<u64> {
        let text = self.get("/metrics")?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .with_context(|| format!("no series {series} in /metrics"))?;
        value.trim().parse().with_context(|| format!("{series} {value}"))
    }

    fn violations(&self, reason: &str) -> Result<u64> {
        self.metric(&format!("eniguard_guard_violation_packets_total{{reason=\"{reason}\"}}"))
    }

    fn total_violations(&self) -> Result<u64> {
        ["wrong_eni", "wrong_vlan", "sg_mismatch", "unknown_interface", "spoofed_source", "unjudged"]
            .iter()
            .map(|r| self.violations(r))
            .sum()
    }

    fn stop(self) -> Result<()> {
        let _ = std::fs::remove_file(&self.intent);
        let status = self.agent.terminate()?;
        ensure!(status.success(), "guard exited with {status}");
        Ok(())
    }
}

pub fn correct_traffic_passes(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let yaml =
        format!("mode: enforce\n{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    ensure!(web.ping(N, None)?, "a correct pod's pings failed under enforce");
    ensure!(run.metric("eniguard_guard_checked_packets_total")? == u64::from(N), "checked != {N}");
    ensure!(run.metric("eniguard_guard_checked_sources_total")? == u64::from(N), "checked sources != {N}");
    ensure!(run.total_violations()? == 0, "correct traffic counted as a violation");
    run.stop()
}

pub fn wrong_eni(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    topo.route_pod(&web, &ETH2)?;
    web.ping(N, None)?;
    ensure!(run.violations("wrong_eni")? == u64::from(N), "wrong_eni != {N}");
    ensure!(run.total_violations()? == u64::from(N), "a packet was counted under two reasons");
    let series =
        "eniguard_guard_pod_violation_packets_total{namespace=\"default\",pod=\"web\",reason=\"wrong_eni\"}";
    ensure!(run.metric(series)? == u64::from(N), "per-pod series missing: {series}");
    let events = run.get("/v1/events")?;
    ensure!(
        events.contains("\"reason\":\"wrong_eni\"")
            && events.contains("\"pod\":\"web\"")
            && events.contains("\"expected_eni\":\"eni-a1\"")
            && events.contains("\"actual_eni\":\"eni-7\""),
        "events lack the pod identity or ENIs: {events}"
    );
    run.stop()
}

/// The upstream incident: a pod got its address from the trunk, which was built with the node's
/// default security groups instead of the ENIConfig's.
pub fn sg_mismatch_incident(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let victim = topo.add_pod("victim", "10.0.2.20", &ETH2)?;
    let yaml = format!(
        "{INTERFACES}pods:\n{}{}",
        pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None),
        pod_yaml("victim", &victim, "eni-7", 0, "sg-c0f1", None)
    );
    let run = start(ctx, &topo, &yaml, &[])?;
    web.ping(N, None)?;
    victim.ping(N, None)?;
    ensure!(run.violations("sg_mismatch")? == u64::from(N), "sg_mismatch != {N}");
    ensure!(run.total_violations()? == u64::from(N), "the correct pod was flagged too");
    let events = run.get("/v1/events")?;
    ensure!(
        events.contains("\"actual_security_groups\":[\"sg-de\"]"),
        "event lacks the actual SGs: {events}"
    );
    run.stop()
}

pub fn wrong_vlan_and_tags(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let branch = topo.add_pod("branch", "10.0.2.30", &ETH2)?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("branch", &branch, "eni-b5", 5, "sg-b0", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    // Real pings leave the trunk untagged: the branch pod should be on VLAN 5.
    branch.ping(N, None)?;
    ensure!(run.violations("wrong_vlan")? == u64::from(N), "untagged: wrong_vlan != {N}");
    // In-band tags through TC egress: 802.1Q VLAN 5 (right), 802.1Q VLAN 7 (wrong), 802.1ad 5 (right).
    let (src_mac, dst_mac) = (parse_mac(&topo.node.mac("eth2")?)?, parse_mac(&topo.vpc.mac("vpc2")?)?);
    let (src, dst): (Ipv4Addr, Ipv4Addr) = ("10.0.2.30".parse()?, VPC_DEST.parse()?);
    let right = udp_frame(dst_mac, src_mac, &[(ETH_P_8021Q, 5)], src, dst);
    let wrong = udp_frame(dst_mac, src_mac, &[(ETH_P_8021Q, 7)], src, dst);
    let qinq = udp_frame(dst_mac, src_mac, &[(ETH_P_8021AD, 5), (ETH_P_8021Q, 100)], src, dst);
    in_netns(&topo.node, move || {
        inject("eth2", &right, 3)?;
        inject("eth2", &wrong, 2)?;
        inject("eth2", &qinq, 1)
    })?;
    ensure!(run.violations("wrong_vlan")? == u64::from(N) + 2, "tagged: wrong_vlan != {}", N + 2);
    ensure!(
        run.metric("eniguard_guard_checked_packets_total")? == u64::from(N) + 6,
        "not every frame was checked"
    );
    ensure!(run.total_violations()? == u64::from(N) + 2, "a correctly tagged frame was flagged");
    run.stop()
}

pub fn unknown_interface(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    // eth2 is known only for its branch VLAN: untagged traffic there has no truth.
    let yaml = format!(
        "interfaces:\n  - {{ name: eth1, eni: eni-a1, securityGroups: [sg-c0f1] }}\n  - {{ name: eth2, eni: eni-b5, vlan: 5, securityGroups: [sg-b0] }}\npods:\n{}",
        pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None)
    );
    let run = start(ctx, &topo, &yaml, &[])?;
    topo.route_pod(&web, &ETH2)?;
    web.ping(N, None)?;
    ensure!(run.violations("unknown_interface")? == u64::from(N), "unknown_interface != {N}");
    ensure!(run.total_violations()? == u64::from(N), "counted under another reason too");
    run.stop()
}

pub fn spoofed_source(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    web.ping(N, None)?;
    web.ping(N, Some("10.0.1.99"))?;
    ensure!(run.violations("spoofed_source")? == u64::from(N), "spoofed_source != {N}");
    ensure!(run.total_violations()? == u64::from(N), "the pod's own traffic was flagged");
    ensure!(
        run.metric("eniguard_guard_checked_sources_total")? == 2 * u64::from(N),
        "sources not all checked"
    );
    run.stop()
}

/// A pod's veth is deleted and re-created (pod restart: same name, new ifindex); link events make
/// the guard attach to the new veth and key its maps by the new ifindex.
pub fn follows_recreated_veth(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    topo.unplug(&web)?;
    std::thread::sleep(Duration::from_millis(300));
    topo.plug(&web)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    wait_until(
        || {
            Ok(run.metric("eniguard_guard_checked_sources_total")? > 0 || {
                web.ping(1, None)?;
                false
            })
        },
        "the guard on the re-created veth",
    )?;
    let before = run.violations("spoofed_source")?;
    web.ping(N, Some("10.0.1.99"))?;
    ensure!(
        run.violations("spoofed_source")? - before == u64::from(N),
        "spoofing on the new veth not caught"
    );
    // Re-created at once (both link events fall into one re-attach), then the new link must be
    // pinned under TCX (kernels >= 6.6), so that a --keep-datapath restart keeps it.
    topo.unplug(&web)?;
    topo.plug(&web)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    std::thread::sleep(Duration::from_millis(500));
    let before = run.violations("spoofed_source")?;
    web.ping(N, Some("10.0.1.99"))?;
    ensure!(
        run.violations("spoofed_source")? - before == u64::from(N),
        "spoofing on the quickly re-created veth not caught"
    );
    if crate::kernel_at_least(6, 6) {
        let pin = ctx.pin_dir.join("links").join(format!("pod-{}", web.host_veth));
        ensure!(pin.exists(), "the re-attached link lost its pin {}", pin.display());
    }
    run.stop()
}

pub fn enforce_drops_only_the_violating_pod(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let bad = topo.add_pod("bad", "10.0.1.12", &ETH2)?;
    let noisy = topo.add_pod("noisy", "10.0.1.13", &ETH2)?;
    let yaml = format!(
        "mode: monitor\n{INTERFACES}pods:\n{}{}{}",
        pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None),
        pod_yaml("bad", &bad, "eni-a1", 0, "sg-c0f1", Some("enforce")),
        pod_yaml("noisy", &noisy, "eni-a1", 0, "sg-c0f1", None)
    );
    let run = start(ctx, &topo, &yaml, &[])?;
    let before = topo.vpc_rx_packets(&ETH2)?;
    ensure!(web.ping(N, None)?, "the correct pod lost packets");
    ensure!(!bad.ping(N, None)?, "the enforced pod's pings got through");
    noisy.ping(N, None)?;
    let arrived = topo.vpc_rx_packets(&ETH2)? - before;
    ensure!(arrived == u64::from(N), "{arrived} packets left eth2; expected only the monitored pod's {N}");
    ensure!(run.violations("wrong_eni")? == 2 * u64::from(N), "wrong_eni != {}", 2 * N);
    ensure!(
        run.metric("eniguard_guard_dropped_packets_total{reason=\"wrong_eni\"}")? == u64::from(N),
        "dropped != {N}"
    );
    run.stop()
}

pub fn reload_on_sighup(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let bad = topo.add_pod("bad", "10.0.1.12", &ETH2)?;
    let monitor =
        format!("mode: monitor\n{INTERFACES}pods:\n{}", pod_yaml("bad", &bad, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &monitor, &[])?;
    ensure!(bad.ping(N, None)?, "monitor mode dropped packets");
    std::fs::write(&run.intent, monitor.replace("mode: monitor", "mode: enforce"))?;
    signal(&run.agent, libc::SIGHUP);
    wait_until(|| Ok(config_mode(&ctx.pin_dir)? == 2), "enforce mode after SIGHUP")?;
    ensure!(!bad.ping(N, None)?, "enforce after reload did not drop");
    // An invalid file is reported and the running intent kept.
    std::fs::write(&run.intent, "mode: enforce\npods: [{ name: x }]\n")?;
    signal(&run.agent, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    ensure!(config_mode(&ctx.pin_dir)? == 2, "an invalid reload changed the mode");
    ensure!(!bad.ping(N, None)?, "an invalid reload dropped the intent");
    run.stop()
}

pub fn invalid_intent_changes_nothing(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let good_pod = pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None);
    let cases = [
        (format!("{INTERFACES}pods:\n{}", good_pod.replace("hostInterface", "hostIfce")), "hostIfce"),
        (
            format!("{INTERFACES}pods:\n{}", good_pod.replace("10.0.1.10", "10.0.1.310")),
            "pods[0] (default/web): ip",
        ),
        (
            format!("{INTERFACES}pods:\n{}", good_pod.replace("eniweb", "nosuch0")),
            "pods[0] (default/web) hostInterface",
        ),
        (format!("{INTERFACES}pods:\n{good_pod}{}", good_pod.replace("name: web", "name: web2")), "already"),
        (INTERFACES.replace("eth1", "eth9"), "interfaces[0] (eth9)"),
    ];
    for (yaml, needle) in cases {
        let intent = PathBuf::from(format!("/tmp/{}-bad.yaml", ctx.prefix()));
        std::fs::write(&intent, &yaml)?;
        // `timeout`: an intent wrongly accepted must fail the test, not hang it.
        let out = topo
            .node
            .cmd("timeout")
            .arg("10")
            .arg(eniguard_bin())
            .args(["guard", "--intent"])
            .arg(&intent)
            .arg("--pin-dir")
            .arg(&ctx.pin_dir)
            .output()?;
        let _ = std::fs::remove_file(&intent);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "accepted an invalid intent ({needle})");
        ensure!(stderr.contains(needle), "error does not name `{needle}`: {stderr}");
        ensure!(!ctx.pin_dir.exists(), "an invalid intent left pins ({needle})");
        let filters = topo.node.run("tc", &["filter", "show", "dev", "eth1", "egress"])?;
        ensure!(filters.trim().is_empty(), "an invalid intent attached something: {filters}");
    }
    Ok(())
}

pub fn bpftool_shows_field_names(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    for (map, fields) in [
        ("GUARD_INTENT4_V2", &["pod_id", "eni_id", "sg_set_id", "vlan", "allowed"][..]),
        ("GUARD_TRUTH_V1", &["ifindex", "eni_id", "sg_set_id"][..]),
        ("GUARD_COUNTERS_V2", &["checked", "violations", "dropped", "pod_frames", "events_lost"][..]),
        ("GUARD_CONFIG_V2", &["mode", "events_per_pod_per_sec"][..]),
    ] {
        let dump = sh(Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(ctx.pin_dir.join("maps").join(map)))?;
        for f in fields {
            ensure!(dump.contains(&format!("\"{f}\"")), "bpftool dump of {map} lacks `{f}`:\n{dump}");
        }
    }
    run.stop()
}

/// In enforce mode, a violating pod sends continuously while the agent restarts with
/// --keep-datapath: not one violating packet may leave, and afterwards only the new programs run.
pub fn restart_lets_nothing_through(ctx: &mut Ctx) -> Result<()> {
    restart(ctx, "tcx")
}

pub fn restart_lets_nothing_through_netlink(ctx: &mut Ctx) -> Result<()> {
    restart(ctx, "netlink")
}

fn restart(ctx: &mut Ctx, attach: &str) -> Result<()> {
    if attach == "tcx" && !crate::kernel_at_least(6, 6) {
        return Err(crate::harness::skip("TCX needs kernel >= 6.6"));
    }
    let topo = Topology::build(ctx.prefix())?;
    let bad = topo.add_pod("bad", "10.0.1.12", &ETH2)?;
    let yaml =
        format!("mode: enforce\n{INTERFACES}pods:\n{}", pod_yaml("bad", &bad, "eni-a1", 0, "sg-c0f1", None));
    let args = ["--keep-datapath", "--attach", attach];
    let first = start(ctx, &topo, &yaml, &args)?;
    let before = topo.vpc_rx_packets(&ETH2)?;
    // About 2.5 s of pings every 5 ms, across the restart.
    let mut flood =
        Daemon::spawn(bad.ns.cmd("ping").args(["-c", "500", "-i", "0.005", "-W", "1", "-q", VPC_DEST]))?;
    std::thread::sleep(Duration::from_millis(300));
    first.stop()?;
    ensure!(ctx.pin_dir.join("maps/GUARD_INTENT4_V2").exists(), "--keep-datapath removed the pins");
    std::thread::sleep(Duration::from_millis(200)); // traffic with no agent running at all
    let second = start(ctx, &topo, &yaml, &["--attach", attach])?;
    ensure!(flood.wait_exit(Duration::from_secs(10))?.is_some(), "the ping flood did not finish");
    let leaked = topo.vpc_rx_packets(&ETH2)? - before;
    ensure!(leaked == 0, "{leaked} violating packets left the node during the restart");
    let dropped = second.metric("eniguard_guard_dropped_packets_total{reason=\"wrong_eni\"}")?;
    ensure!(dropped >= 400, "only {dropped} drops counted across the restart (counters should survive)");
    let progs = sh(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let running = progs.matches("\"name\":\"guard_egress\"").count();
    ensure!(running == 1, "{running} guard_egress programs loaded after the restart; the old one is stale");
    second.stop()?;
    ensure!(!ctx.pin_dir.exists(), "final shutdown left pins");
    let filters = topo.node.run("tc", &["filter", "show", "dev", "eth2", "egress"])?;
    ensure!(filters.trim().is_empty(), "final shutdown left a filter: {filters}");
    Ok(())
}

fn signal(agent: &Daemon, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, sig) };
}

fn config_mode(pin_dir: &std::path::Path) -> Result<u64> {
    let out = sh(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin_dir.join("maps/GUARD_CONFIG_V2")))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["formatted"]["value"]["mode"].as_u64().context("no mode in GUARD_CONFIG_V2")
}

fn wait_until(mut f: impl FnMut() -> Result<bool>, what: &str) -> Result<()> {
    for _ in 0..100 {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("timed out waiting for {what}")
}

/// Real 802.1Q sub-interfaces on the trunk (branch ENIs): the tag is in skb metadata at the
/// trunk's egress. Needs a kernel with 802.1Q (the VM matrix); skipped where it is missing.
pub fn real_vlan_subinterfaces(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let branch = topo.add_pod("branch", "10.0.2.30", &ETH2)?;
    let gw_mac = topo.vpc.mac("vpc2")?;
    for vid in ["5", "7"] {
        let dev = format!("vlan.eth.{vid}");
        if let Err(e) =
            topo.node.ip(&["link", "add", "link", "eth2", "name", &dev, "type", "vlan", "id", vid])
        {
            return Err(crate::harness::skip(format!("this kernel has no 802.1Q VLAN devices ({e})")));
        }
        topo.node.ip(&["link", "set", &dev, "up"])?;
        let table = format!("1{vid}0");
        topo.node
            .ip(&["route", "add", "default", "via", "10.0.2.1", "dev", &dev, "onlink", "table", &table])?;
        topo.node.ip(&[
            "neigh",
            "replace",
            "10.0.2.1",
            "lladdr",
            &gw_mac,
            "dev",
            &dev,
            "nud",
            "permanent",
        ])?;
    }
    let via = |table: &str| -> Result<()> {
        topo.node.ip(&["rule", "del", "from", "10.0.2.30", "priority", "1536"])?;
        topo.node.ip(&["rule", "add", "from", "10.0.2.30", "lookup", table, "priority", "1536"]).map(|_| ())
    };
    let yaml = format!(
        "{INTERFACES}  - {{ name: vlan.eth.5, eni: eni-b5, vlan: 5, securityGroups: [sg-b0] }}\npods:\n{}",
        pod_yaml("branch", &branch, "eni-b5", 5, "sg-b0", None)
    );
    let run = start(ctx, &topo, &yaml, &[])?;
    via("150")?;
    branch.ping(N, None)?;
    // Checked on vlan.eth.5 (untagged there, VLAN from truth) and on eth2 (tag in metadata).
    ensure!(
        run.metric("eniguard_guard_checked_packets_total")? == 2 * u64::from(N),
        "not checked at both hops"
    );
    ensure!(run.total_violations()? == 0, "correct branch traffic flagged");
    via("170")?;
    branch.ping(N, None)?;
    ensure!(run.violations("wrong_vlan")? == u64::from(N), "VLAN 7 instead of 5: wrong_vlan != {N}");
    ensure!(run.total_violations()? == u64::from(N), "counted under another reason too");
    run.stop()
}

/// Runs `eniguard counter run` on `iface` (pins under `dir`) after the guard on the same hook:
/// appended under TCX, at the lowest netlink priority otherwise.
fn counter_after(topo: &Topology, iface: &str, direction: &str, attach: &str, dir: &Path) -> Result<Daemon> {
    let mut d = Daemon::spawn(
        topo.node
            .cmd(eniguard_bin())
            .args(["counter", "run", "--iface", iface, "--direction", direction, "--attach", attach])
            .args(["--priority", "65535", "--pin-dir"])
            .arg(dir),
    )?;
    d.wait_for_line("ready:", Duration::from_secs(20))?;
    Ok(d)
}

fn counted(dir: &Path) -> Result<u64> {
    let out = sh(Command::new(eniguard_bin()).args(["counter", "show", "--pin-dir"]).arg(dir))?;
    let packets = out.split_whitespace().find_map(|w| w.strip_prefix("packets=")).context("packets=")?;
    Ok(packets.parse()?)
}

/// Another program on the same hook (a network-policy agent on the pod veth, a tc rule on the
/// ENI) still sees every packet the guard passes — correct ones and, in monitor mode, violating
/// ones: the guard's "pass" is "no verdict", not "accept and stop".
pub fn coexists_tcx(ctx: &mut Ctx) -> Result<()> {
    if !crate::kernel_at_least(6, 6) {
        return Err(crate::harness::skip("TCX needs kernel >= 6.6"));
    }
    coexists(ctx, "tcx")
}

pub fn coexists_netlink(ctx: &mut Ctx) -> Result<()> {
    coexists(ctx, "netlink")
}

fn coexists(ctx: &mut Ctx, attach: &str) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &["--attach", attach])?;
    // Inside the guard's pin directory, which the harness removes even when the test fails.
    let (veth_dir, eni_dir) = (ctx.pin_dir.join("counter-veth"), ctx.pin_dir.join("counter-eni"));
    let veth = counter_after(&topo, &web.host_veth, "ingress", attach, &veth_dir)?;
    let eni = counter_after(&topo, "eth1", "egress", attach, &eni_dir)?;
    let eni_before = counted(&eni_dir)?;
    ensure!(web.ping(N, None)?, "the pod's pings failed");
    web.ping(N, Some("10.0.1.99"))?; // spoofed: a violation, passed in monitor mode
    ensure!(run.violations("spoofed_source")? == u64::from(N), "the spoofed pings were not judged");
    let on_veth = counted(&veth_dir)?;
    ensure!(
        on_veth == 2 * u64::from(N),
        "the program after the guard on the pod veth saw {on_veth} of {}",
        2 * N
    );
    // The spoofed source has no rule to eth1; the pod's own pings leave there.
    let on_eni = counted(&eni_dir)? - eni_before;
    ensure!(on_eni >= u64::from(N), "the program after the guard on eth1 saw {on_eni} of {N}");
    for (d, dir) in [(veth, veth_dir), (eni, eni_dir)] {
        d.terminate()?;
        let _ = std::fs::remove_dir_all(dir);
    }
    run.stop()
}

/// Frames from a pod are judged whatever they carry and however the skb holds them: an IPv4
/// header outside the linear area, ARP (its sender address), IPv6 (an IPv4 pod's routable IPv6
/// is from an address it was not given: `spoofed_source`, dropped in enforce mode), all counted
/// by kind. IPv6 that cannot leave the link (neighbour discovery, MLD: link-local) is counted by
/// kind and gets no verdict in either mode.
pub fn judges_every_frame(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    for (ns, dev) in [(&web.ns, "eth0"), (&topo.node, web.host_veth.as_str())] {
        ns.ip(&["link", "set", dev, "mtu", "9000"])?;
    }
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    let (pod_mac, host_mac) = (parse_mac(&web.ns.mac("eth0")?)?, parse_mac(&topo.node.mac(&web.host_veth)?)?);
    let (own, other, dst): (Ipv4Addr, Ipv4Addr, Ipv4Addr) =
        ("10.0.1.10".parse()?, "10.0.1.99".parse()?, VPC_DEST.parse()?);
    let big = |src| padded(udp_frame(host_mac, pod_mac, &[], src, dst), 5000);
    let (spoofed_big, own_big) = (big(other), big(own));
    let arp_own = arp_frame(host_mac, pod_mac, own, "169.254.1.1".parse()?);
    let arp_spoofed = arp_frame(host_mac, pod_mac, other, "169.254.1.1".parse()?);
    let v6 = ipv6_frame(host_mac, pod_mac, "2001:db8::10".parse()?, "2001:db8:1::1".parse()?);
    let solicitation = ipv6_frame(host_mac, pod_mac, "fe80::1".parse()?, "ff02::2".parse()?);
    let dad = ipv6_frame(host_mac, pod_mac, "::".parse()?, "ff02::1:ff00:1".parse()?);
    in_netns(&web.ns, move || {
        inject_nonlinear("eth0", &own_big, 2)?;
        inject_nonlinear("eth0", &spoofed_big, 3)?;
        inject("eth0", &arp_own, 1)?;
        inject("eth0", &arp_spoofed, 2)?;
        inject("eth0", &v6, 4)?;
        inject("eth0", &solicitation, 2)?;
        inject("eth0", &dad, 1)
    })?;
    let kind = |k: &str| run.metric(&format!("eniguard_guard_pod_frames_total{{kind=\"{k}\"}}"));
    ensure!(
        kind("ipv4")? == 5 && kind("arp")? == 3 && kind("ipv6")? == 4 + 3,
        "frames by kind: {}",
        run.get("/metrics")?
    );
    // An IPv4 pod's routable IPv6 is from an address it was not given; link-local gets no verdict.
    ensure!(run.violations("spoofed_source")? == 3 + 2 + 4, "non-linear, ARP or IPv6 spoofing missed");
    ensure!(run.violations("unjudged")? == 0, "a frame the guard reads counted as unjudged");
    ensure!(
        run.metric("eniguard_guard_dropped_packets_total{reason=\"spoofed_source\"}")? == 0,
        "monitor dropped"
    );
    // Enforce: what the guard cannot judge does not leave the pod.
    let enforced =
        format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", Some("enforce")));
    std::fs::write(&run.intent, enforced)?;
    signal(&run.agent, libc::SIGHUP);
    wait_until(|| Ok(run.get("/metrics").is_ok()), "the reload")?;
    std::thread::sleep(Duration::from_millis(300));
    let v6 = ipv6_frame(host_mac, pod_mac, "2001:db8::10".parse()?, "2001:db8:1::1".parse()?);
    let solicitation = ipv6_frame(host_mac, pod_mac, "fe80::1".parse()?, "ff02::2".parse()?);
    in_netns(&web.ns, move || {
        inject("eth0", &v6, 4)?;
        inject("eth0", &solicitation, 3)
    })?;
    ensure!(
        run.metric("eniguard_guard_dropped_packets_total{reason=\"spoofed_source\"}")? == 4,
        "enforce let IPv6 from another address through: {}",
        run.get("/metrics")?
    );
    ensure!(web.ping(N, None)?, "enforce dropped the pod's own IPv4");
    run.stop()
}

/// IPv6 pods (IPv6 mode): a pod veth whose intent is a /128. On the veth its own IPv6 source is
/// checked and passes, another is `spoofed_source`, link-local gets no verdict. On the ENI
/// interfaces (TC egress) a packet from its /128 passes through its ENI and is `wrong_eni` through
/// the trunk, with the addresses in the event; once its intent's groups differ from the ENI's it is
/// `sg_mismatch`, dropped in enforce mode.
pub fn ipv6_pods(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let six = topo.add_pod("six", "10.0.1.20", &ETH1)?;
    let own: std::net::Ipv6Addr = "2600:1f14:abc:de01:1::20".parse()?;
    let other: std::net::Ipv6Addr = "2600:1f14:abc:de01:1::99".parse()?;
    let dst: std::net::Ipv6Addr = "2600:1f14:abc:de01::1".parse()?;
    let intent = |sgs: &str, mode: &str| {
        format!(
            "{mode}{INTERFACES}pods:\n  - {{ namespace: default, name: six, ip: \"{own}\", hostInterface: {}, expect: {{ eni: eni-a1, vlan: 0, securityGroups: [{sgs}] }} }}\n",
            six.host_veth
        )
    };
    let run = start(ctx, &topo, &intent("sg-c0f1", ""), &[])?;
    let (pod_mac, host_mac) = (parse_mac(&six.ns.mac("eth0")?)?, parse_mac(&topo.node.mac(&six.host_veth)?)?);
    let (own_f, spoofed_f) =
        (ipv6_frame(host_mac, pod_mac, own, dst), ipv6_frame(host_mac, pod_mac, other, dst));
    let link_f = ipv6_frame(host_mac, pod_mac, "fe80::1".parse()?, "ff02::2".parse()?);
    in_netns(&six.ns, move || {
        inject("eth0", &own_f, 3)?;
        inject("eth0", &spoofed_f, 2)?;
        inject("eth0", &link_f, 1)
    })?;
    ensure!(run.violations("spoofed_source")? == 2, "IPv6 spoofing: {}", run.get("/metrics")?);
    ensure!(run.metric("eniguard_guard_checked_sources_total")? == 5, "routable IPv6 sources checked");
    ensure!(run.violations("unjudged")? == 0, "IPv6 is judged");

    let leave = |eni: &Eni, count: usize| -> Result<()> {
        let frame =
            ipv6_frame(parse_mac(&topo.vpc.mac(eni.peer)?)?, parse_mac(&topo.node.mac(eni.name)?)?, own, dst);
        let name = eni.name;
        in_netns(&topo.node, move || inject(name, &frame, count))
    };
    leave(&ETH1, 3)?;
    leave(&ETH2, 2)?;
    ensure!(run.metric("eniguard_guard_checked_packets_total")? == 5, "the /128's packets checked on egress");
    ensure!(run.violations("wrong_eni")? == 2, "IPv6 through the trunk: {}", run.get("/metrics")?);
    let events = run.get("/v1/events")?;
    ensure!(
        events.contains(&format!("\"src\":\"{own}\"")) && events.contains(&format!("\"dst\":\"{dst}\"")),
        "events carry the IPv6 addresses: {events}"
    );

    // The ENI's groups are not the pod's any more: sg_mismatch, dropped in enforce mode.
    std::fs::write(&run.intent, intent("sg-0be1", "mode: enforce\n"))?;
    signal(&run.agent, libc::SIGHUP);
    wait_until(|| Ok(run.get("/metrics").is_ok()), "the reload")?;
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..4 {
        // A frame the program drops fails its sendto (ENOBUFS): that is the drop.
        let _ = leave(&ETH1, 1);
    }
    ensure!(run.violations("sg_mismatch")? == 4, "IPv6 drifted groups: {}", run.get("/metrics")?);
    ensure!(
        run.metric("eniguard_guard_dropped_packets_total{reason=\"sg_mismatch\"}")? == 4,
        "enforce drops"
    );
    run.stop()
}

/// A start that fails after loading (here: more pods than the maps hold) leaves the datapath a
/// `--keep-datapath` predecessor left exactly as it was, still checking traffic.
pub fn failed_start_keeps_the_predecessor(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let other = topo.add_pod("other", "10.0.1.11", &ETH1)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    let one = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let first = start(ctx, &topo, &one, &["--keep-datapath", "--attach", "netlink"])?;
    first.stop()?;
    let intents_before = sh(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(ctx.pin_dir.join("maps/GUARD_INTENT4_V2")))?;
    let two = format!("{one}{}", pod_yaml("other", &other, "eni-a1", 0, "sg-c0f1", None));
    let intent = PathBuf::from("/tmp").join(format!("{}-two.yaml", ctx.prefix()));
    std::fs::write(&intent, two)?;
    let out = topo
        .node
        .cmd(eniguard_bin())
        .args(["guard", "--intent"])
        .arg(&intent)
        .args(["--attach", "netlink", "--max-pods", "1", "--pin-dir"])
        .arg(&ctx.pin_dir)
        .output()?;
    let _ = std::fs::remove_file(&intent);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("--max-pods"), "the second start should fail: {stderr}");
    ensure!(ctx.pin_dir.join("maps/GUARD_INTENT4_V2").exists(), "the failed start removed the pins");
    let intents_after = sh(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(ctx.pin_dir.join("maps/GUARD_INTENT4_V2")))?;
    ensure!(
        intents_after == intents_before,
        "the failed start changed the intent map:\n{intents_before}\n{intents_after}"
    );
    for dev in ["eth1", web.host_veth.as_str()] {
        let hook = if dev == "eth1" { "egress" } else { "ingress" };
        let filters = topo.node.run("tc", &["filter", "show", "dev", dev, hook])?;
        ensure!(filters.contains("guard_"), "the predecessor's filter on {dev} is gone: {filters}");
    }
    // Still checking: spoofed pings are counted in the pinned counters.
    let violations = || -> Result<u64> {
        let json = sh(Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(ctx.pin_dir.join("maps/GUARD_COUNTERS_V2")))?;
        let v: serde_json::Value = serde_json::from_str(&json)?;
        let cpus = v[0]["formatted"]["values"].as_array().context("no per-CPU values")?;
        Ok(cpus
            .iter()
            .filter_map(|c| c["value"]["violations"].as_array())
            .flatten()
            .filter_map(|x| x.as_u64())
            .sum())
    };
    let before = violations()?;
    web.ping(N, Some("10.0.1.99"))?;
    ensure!(violations()? - before == u64::from(N), "the kept datapath stopped checking");
    // Clean up the kept datapath with a normal start and stop.
    start(ctx, &topo, &one, &["--attach", "netlink"])?.stop()
}

/// Restarting in the other attach mode (netlink → TCX) removes the old mode's attachment: every
/// packet is judged once. A TCX link pin left for an interface that was re-created while no agent
/// ran is replaced by a fresh attach instead of failing the start.
pub fn switches_mode_and_replaces_stale_pins(ctx: &mut Ctx) -> Result<()> {
    if !crate::kernel_at_least(6, 6) {
        return Err(crate::harness::skip("TCX needs kernel >= 6.6"));
    }
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    start(ctx, &topo, &yaml, &["--keep-datapath", "--attach", "netlink"])?.stop()?;
    let tcx = start(ctx, &topo, &yaml, &["--keep-datapath", "--attach", "tcx"])?;
    for (dev, hook) in [("eth1", "egress"), (web.host_veth.as_str(), "ingress")] {
        let filters = topo.node.run("tc", &["filter", "show", "dev", dev, hook])?;
        ensure!(!filters.contains("guard_"), "the netlink filter on {dev} still runs beside TCX: {filters}");
    }
    let checked = tcx.metric("eniguard_guard_checked_packets_total")?;
    web.ping(N, None)?;
    ensure!(tcx.metric("eniguard_guard_checked_packets_total")? - checked == u64::from(N), "judged twice");
    tcx.stop()?;
    // The pod's veth is re-created while no agent runs: its pinned link is now stale.
    topo.unplug(&web)?;
    topo.plug(&web)?;
    web.ns.ip(&["addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    let again = start(ctx, &topo, &yaml, &["--attach", "tcx"])?;
    web.ping(N, Some("10.0.1.99"))?;
    ensure!(again.violations("spoofed_source")? == u64::from(N), "the re-created veth is not guarded");
    again.stop()
}

/// A reload that fails after the maps were written (here: another tool's u32 filter holds the
/// guard's netlink priority on a new interface, so attaching there fails) puts the maps back as
/// they were and keeps the running intent checking traffic.
pub fn apply_is_all_or_nothing(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let one = format!(
        "interfaces:\n  - {{ name: eth1, eni: eni-a1, securityGroups: [sg-c0f1] }}\npods:\n{}",
        pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None)
    );
    let run = start(ctx, &topo, &one, &["--attach", "netlink"])?;
    topo.node.run("tc", &["qdisc", "add", "dev", "eth2", "clsact"])?;
    let foreign = ["filter", "add", "dev", "eth2", "egress", "prio", "20039", "protocol", "ip"];
    if let Err(e) = topo.node.run("tc", &[&foreign[..], &["u32", "match", "u32", "0", "0"]].concat()) {
        return Err(crate::harness::skip(format!("no cls_u32 in this kernel ({e})")));
    }
    let dump = |map: &str| {
        sh(Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(ctx.pin_dir.join("maps").join(map)))
    };
    let (intents, truth) = (dump("GUARD_INTENT4_V2")?, dump("GUARD_TRUTH_V1")?);
    // The new intent moves the pod to the trunk and adds eth2, where the attach fails.
    let two = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-7", 0, "sg-de", None));
    std::fs::write(&run.intent, two)?;
    signal(&run.agent, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    ensure!(dump("GUARD_INTENT4_V2")? == intents, "a failed reload left the new intents in the map");
    ensure!(dump("GUARD_TRUTH_V1")? == truth, "a failed reload left the new truth in the map");
    let filters = topo.node.run("tc", &["filter", "show", "dev", "eth2", "egress"])?;
    ensure!(filters.contains("u32") && !filters.contains("guard_"), "eth2's filters: {filters}");
    web.ping(N, None)?;
    ensure!(run.total_violations()? == 0, "the running intent was replaced");
    ensure!(run.metric("eniguard_guard_checked_packets_total")? == u64::from(N), "eth1 is no longer checked");
    run.stop()
}

/// The per-CPU pass cache never outlives the state it was computed from: after eth1's security
/// groups change in truth, the very next packet of a flow that passed a moment ago is flagged.
pub fn update_voids_cached_passes(ctx: &mut Ctx) -> Result<()> {
    let topo = Topology::build(ctx.prefix())?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let yaml = format!("{INTERFACES}pods:\n{}", pod_yaml("web", &web, "eni-a1", 0, "sg-c0f1", None));
    let run = start(ctx, &topo, &yaml, &[])?;
    ensure!(web.ping(N, None)?, "the pod's pings failed");
    ensure!(run.total_violations()? == 0, "correct traffic flagged");
    // Truth changes: eth1 now carries other groups (drift).
    std::fs::write(
        &run.intent,
        yaml.replacen("securityGroups: [sg-c0f1] }", "securityGroups: [sg-0beef] }", 1),
    )?;
    signal(&run.agent, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    web.ping(N, None)?;
    ensure!(
        run.violations("sg_mismatch")? == u64::from(N),
        "a cached pass outlived the update: {}",
        run.get("/metrics")?
    );
    run.stop()
}
