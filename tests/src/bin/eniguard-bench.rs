//! Datapath benchmarks (root): `cargo xtask bench`.
//!
//! 1. BPF_PROG_TEST_RUN: ns per packet of `guard_egress` on its pass, violation and non-pod paths
//!    and of `guard_pod` on its own-source and not-a-pod-veth paths, side by side with an empty
//!    classifier, same session, same frame size. Each row runs on the interface its path needs
//!    (`ctx_in` carries the ifindex), and its verdict and counter deltas are checked: a row that
//!    took another path fails the run instead of printing a number.
//!    The maps hold a node's worth of pods ([`NODE_PODS`]), as the agent keeps them.
//! 2. The cost of one pod's intent update with the node's maps live: the spec derived with one
//!    pod more (an ADD) or less (a DEL) and applied, p50 and p99.
//! 3. iperf3: TCP throughput from a pod through its veth and ENI to the VPC namespace, without and
//!    with the guard attached, alternating runs in the same session.
//!
//! A release binary of the tests crate rather than a bench target, so that building it does not
//! build the crate's dev-dependencies (aws-sdk-ec2) in release. Prints tables (the README's
//! performance section quotes them). Timing under emulation (the VM kernel matrix) is meaningless;
//! run this on the machine itself.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};
use eniguard::guard::{
    attach::{ifindex, AttachMode},
    datapath::{resolve_present, Capacity, Guard, Stats},
    pins::PinDir,
    spec::Spec,
};
use eniguard_common::guard::{REASONS, REASON_WRONG_ENI};
use eniguard_tests::{
    frames::{ipv6_frame, udp_frame},
    netns::{sh, NetNs},
    process::Daemon,
    topology::{Topology, ETH1, VPC_DEST},
};

const REPEAT: u32 = 1_000_000;
/// Pods in the maps, as on a full node (EKS's 250-pod ceiling).
const NODE_PODS: usize = 250;
/// Intent updates timed (half ADDs, half DELs).
const UPDATES: usize = 400;
const ROUNDS: usize = 7;

fn main() -> Result<()> {
    let host_netns = std::fs::File::open("/proc/self/ns/net").context("opening this network namespace")?;
    prog_test_run()?;
    if std::env::args().any(|a| a == "--test-run-only") {
        return Ok(());
    }
    // Back in the original namespace for the topology (the test-run part unshared this thread's).
    // SAFETY: a valid namespace fd.
    unsafe {
        use std::os::fd::AsRawFd as _;
        ensure!(libc::setns(host_netns.as_raw_fd(), libc::CLONE_NEWNET) == 0, "setns back");
    }
    iperf3()?;
    Ok(())
}

/// TC_ACT_UNSPEC: the guard's "no verdict, next program decides".
const PASS: i32 = -1;

/// What a row must do to the counters, per run.
#[derive(Clone, Copy)]
enum Effect {
    None,
    Checked,
    CheckedSource,
    Violation(u32),
}

fn delta(before: &Stats, after: &Stats) -> (u64, u64, [u64; REASONS]) {
    let mut v = [0; REASONS];
    for (r, slot) in v.iter_mut().enumerate() {
        *slot = after.node.violations[r] - before.node.violations[r];
    }
    (after.node.checked - before.node.checked, after.node.checked_sources - before.node.checked_sources, v)
}

fn prog_test_run() -> Result<()> {
    // A private network namespace: the guard attaches to its own veths only.
    // SAFETY: unshare affects only this (single-threaded so far) process.
    ensure!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0,
        "unshare: {}",
        std::io::Error::last_os_error()
    );
    sh(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    for (a, b) in [("eth1", "vpc1"), ("enipass", "p0"), ("enibad", "p1"), ("enisix", "p2")] {
        sh(Command::new("ip").args(["link", "add", a, "type", "veth", "peer", "name", b]))?;
        sh(Command::new("ip").args(["link", "set", a, "up"]))?;
    }
    let spec = node_spec(NODE_PODS, None)?;
    let pins = PinDir::new(format!("/sys/fs/bpf/eniguard-bench-{}", std::process::id()));
    let mut guard = Guard::load(pins, AttachMode::Auto, Capacity::default())?;
    let result = guard
        .apply(&resolve_present(spec))
        .map_err(anyhow::Error::from)
        .and_then(|()| measure(&mut guard))
        .and_then(|()| intent_updates(&mut guard));
    // Pinned links would keep the programs loaded after this process: remove them even on error.
    guard.shutdown(false)?;
    result
}

/// The benchmark's node: eth1 (eni-a1), pod `pass` (correct, veth `enipass`), pod `bad` (wrong
/// ENI, veth `enibad`), the IPv6 pod `six` (correct, veth `enisix`) and `pods - 3` more correct
/// pods whose veths do not exist (intent only, as for a pod whose veth is still being made), plus
/// `extra` if given.
fn node_spec(pods: usize, extra: Option<usize>) -> Result<eniguard::guard::spec::ValidSpec> {
    let mut yaml = String::from(
        r#"
interfaces: [{ name: eth1, eni: eni-a1, securityGroups: [sg-1, sg-2] }]
pods:
  - { namespace: b, name: pass, ip: 10.0.1.10, hostInterface: enipass, expect: { eni: eni-a1, securityGroups: [sg-2, sg-1] } }
  - { namespace: b, name: bad, ip: 10.0.1.11, hostInterface: enibad, expect: { eni: eni-b2, securityGroups: [sg-1] } }
  - { namespace: b, name: six, ip: "2600:1f14:abc:de01:1::10", hostInterface: enisix, expect: { eni: eni-a1, securityGroups: [sg-1, sg-2] } }
"#,
    );
    for i in (0..pods.saturating_sub(3)).chain(extra) {
        yaml.push_str(&format!(
            "  - {{ namespace: fill, name: p{i}, ip: 10.0.{}.{}, hostInterface: fill{i}, expect: {{ eni: eni-a1, securityGroups: [sg-1, sg-2] }} }}\n",
            2 + i / 200,
            10 + i % 200
        ));
    }
    Ok(Spec::parse(&yaml)?.validate()?)
}

/// One pod's intent update at a full node: the spec with one more pod (ADD) or without it (DEL),
/// resolved and applied, as the agent's guard feed does it after its (microsecond) derivation.
fn intent_updates(guard: &mut Guard) -> Result<()> {
    let base = node_spec(NODE_PODS, None)?;
    let plus = node_spec(NODE_PODS, Some(NODE_PODS))?;
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for i in 0..UPDATES {
        let (spec, into) = if i % 2 == 0 { (&plus, &mut add) } else { (&base, &mut del) };
        let started = std::time::Instant::now();
        guard.apply(&resolve_present(spec.clone()))?;
        into.push(started.elapsed().as_secs_f64() * 1e6);
    }
    println!("\nOne pod's intent update with {NODE_PODS} pods in the maps ({} of each, µs):", UPDATES / 2);
    println!("| update | p50 | p99 |");
    println!("|---|---|---|");
    for (label, v) in [("ADD (one intent more)", &mut add), ("DEL (one intent less)", &mut del)] {
        v.sort_by(f64::total_cmp);
        println!("| {label} | {:.0} | {:.0} |", v[v.len() / 2], v[v.len() * 99 / 100]);
    }
    Ok(())
}

fn measure(guard: &mut Guard) -> Result<()> {
    let (eth1, enipass, enisix) = (ifindex("eth1")?, ifindex("enipass")?, ifindex("enisix")?);
    let frame6 = ipv6_frame(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        "2600:1f14:abc:de01:1::10".parse()?,
        "2600:1f14:abc:de01::1".parse()?,
    );

    let frame = |src: &str| -> Result<Vec<u8>> {
        Ok(udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            &[],
            src.parse()?,
            VPC_DEST.parse::<Ipv4Addr>()?,
        ))
    };
    // (label, program, interface, frame, what it must do, pass cache on)
    let cases = [
        ("empty classifier (baseline)", "bench_empty", eth1, frame("10.0.1.10")?, Effect::None, true),
        (
            "guard_egress, pass (a flow's next packet)",
            "guard_egress",
            eth1,
            frame("10.0.1.10")?,
            Effect::Checked,
            true,
        ),
        (
            "guard_egress, pass (pass cache off)",
            "guard_egress",
            eth1,
            frame("10.0.1.10")?,
            Effect::Checked,
            false,
        ),
        (
            "guard_egress, violation (monitor)",
            "guard_egress",
            eth1,
            frame("10.0.1.11")?,
            Effect::Violation(REASON_WRONG_ENI),
            true,
        ),
        ("guard_egress, non-pod source", "guard_egress", eth1, frame("192.168.7.7")?, Effect::None, true),
        (
            "guard_pod, own source (a flow's next packet)",
            "guard_pod",
            enipass,
            frame("10.0.1.10")?,
            Effect::CheckedSource,
            true,
        ),
        (
            "guard_pod, own source (pass cache off)",
            "guard_pod",
            enipass,
            frame("10.0.1.10")?,
            Effect::CheckedSource,
            false,
        ),
        ("guard_pod, not a pod veth", "guard_pod", eth1, frame("10.0.1.10")?, Effect::None, true),
        (
            "guard_egress, IPv6 pass (a flow's next packet)",
            "guard_egress",
            eth1,
            frame6.clone(),
            Effect::Checked,
            true,
        ),
        (
            "guard_egress, IPv6 pass (pass cache off)",
            "guard_egress",
            eth1,
            frame6.clone(),
            Effect::Checked,
            false,
        ),
        (
            "guard_pod, IPv6 own source (a flow's next packet)",
            "guard_pod",
            enisix,
            frame6.clone(),
            Effect::CheckedSource,
            true,
        ),
        (
            "guard_pod, IPv6 own source (pass cache off)",
            "guard_pod",
            enisix,
            frame6,
            Effect::CheckedSource,
            false,
        ),
    ];
    // Rounds interleave the cases, so that drift of this (shared, virtual) machine hits all alike;
    // each case's ratio to the empty program is taken within a round, then the median.
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        let mut round = Vec::with_capacity(cases.len());
        for (label, program, ifindex, frame, effect, cache) in &cases {
            guard.set_flow_cache(*cache)?;
            let before = guard.stats()?;
            let (per_run, verdict) = guard.test_run(program, frame, *ifindex, REPEAT)?;
            let (checked, sources, violations) = delta(&before, &guard.stats()?);
            let n = u64::from(REPEAT);
            let expected = match effect {
                Effect::None => (0, 0, None),
                Effect::Checked => (n, 0, None),
                Effect::CheckedSource => (0, n, None),
                Effect::Violation(r) => (n, 0, Some(*r as usize)),
            };
            ensure!(verdict == PASS, "{label}: verdict {verdict}, expected {PASS} (no verdict)");
            ensure!(
                (checked, sources) == (expected.0, expected.1),
                "{label}: checked {checked} and sources {sources}, expected {} and {}",
                expected.0,
                expected.1
            );
            let flagged: u64 = violations.iter().sum();
            match expected.2 {
                Some(r) => ensure!(violations[r] == n && flagged == n, "{label}: violations {violations:?}"),
                None => ensure!(flagged == 0, "{label}: violations {violations:?}"),
            }
            round.push(per_run.as_nanos() as f64);
        }
        for (i, v) in round.iter().enumerate() {
            ns[i].push(*v);
            ratios[i].push(v / round[0]);
        }
    }
    println!(
        "\nBPF_PROG_TEST_RUN, {}-byte IPv4 and {}-byte IPv6 frames, {NODE_PODS} pods in the maps, {ROUNDS} interleaved rounds of {REPEAT} runs, medians",
        cases[0].3.len(),
        cases[cases.len() - 1].3.len()
    );
    println!("| program and path | ns/packet | x empty (same round) |");
    println!("|---|---|---|");
    for (i, (label, ..)) in cases.iter().enumerate() {
        println!("| {label} | {:.0} | {:.2} |", median(&mut ns[i]), median(&mut ratios[i]));
    }
    Ok(())
}

fn iperf3() -> Result<()> {
    if sh(Command::new("iperf3").arg("--version")).is_err() {
        println!("\niperf3: SKIPPED (iperf3 is not installed; `cargo xtask setup` installs it)");
        return Ok(());
    }
    let topo = Topology::build("egbench")?;
    let pod = topo.add_pod("pod", "10.0.1.10", &ETH1)?;
    // The guard is loaded in this process, inside the node namespace, and switched between an
    // empty spec (nothing attached) and the pod's spec: no agent start-up inside the measurement.
    let node = std::fs::File::open(topo.node.path())?;
    // SAFETY: a valid namespace fd; this thread only.
    ensure!(
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&node), libc::CLONE_NEWNET) } == 0,
        "setns node"
    );
    let with_spec = Spec::parse(
        r#"interfaces: [{ name: eth1, eni: eni-a1, securityGroups: [sg-1] }]
pods: [{ namespace: b, name: pod, ip: 10.0.1.10, hostInterface: enipod, expect: { eni: eni-a1, securityGroups: [sg-1] } }]
"#,
    )?
    .validate()?;
    let without_spec = Spec::parse("{}")?.validate()?;
    let mut guard =
        Guard::load(PinDir::new("/sys/fs/bpf/eniguard-bench-iperf"), AttachMode::Auto, Capacity::default())?;
    const SECONDS: &str = "3";
    const PAIRS: usize = 8;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut runs = || -> Result<()> {
        for i in 0..PAIRS {
            // ABBA order cancels slow drift of the machine.
            for attached in if i % 2 == 0 { [false, true] } else { [true, false] } {
                let spec = if attached { &with_spec } else { &without_spec };
                guard.apply(&eniguard::guard::datapath::resolve(spec.clone())?)?;
                let gbps = run_iperf(&topo.vpc, &pod.ns, SECONDS)?;
                if attached {
                    with.push(gbps)
                } else {
                    without.push(gbps)
                }
            }
        }
        Ok(())
    };
    let result = runs();
    guard.shutdown(false)?;
    result?;
    let mut pair_ratios: Vec<f64> = with.iter().zip(&without).map(|(w, wo)| w / wo).collect();
    let (m_without, m_with) = (median(&mut without.clone()), median(&mut with.clone()));
    println!("\niperf3 TCP, pod -> veth -> node -> eth1 -> VPC, {PAIRS} ABBA pairs of {SECONDS} s runs");
    println!("| setup | Gbit/s (median) | runs (in order) |");
    println!("|---|---|---|");
    println!("| without guard | {m_without:.2} | {:?} |", rounded(&without));
    println!("| with guard (pod veth + eth1) | {m_with:.2} | {:?} |", rounded(&with));
    println!(
        "| with / without, median of {PAIRS} adjacent pairs | {:.1} % | |",
        100.0 * median(&mut pair_ratios)
    );
    Ok(())
}

/// One iperf3 run; a fresh server for each (`-1` serves one client).
fn run_iperf(vpc: &NetNs, pod: &NetNs, seconds: &str) -> Result<f64> {
    let mut server = Daemon::spawn(vpc.cmd("iperf3").args(["-s", "-1", "-B", VPC_DEST]))?;
    std::thread::sleep(Duration::from_millis(300));
    let out = sh(pod.cmd("iperf3").args(["-c", VPC_DEST, "-t", seconds, "-J"]))?;
    let _ = server.wait_exit(Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let bps =
        v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received in iperf3 output")?;
    Ok(bps / 1e9)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}
