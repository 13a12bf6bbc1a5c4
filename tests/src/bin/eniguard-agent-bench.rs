//! `eniguard-agent-bench`: what `eniguard agent` costs, measured against vpcsim (root, fabric).
//!
//! For each scenario: the EC2 calls the simulator received by action from the agent's start
//! until its pool is warm, beside what upstream's ipamd issues for the same node (counted from
//! upstream's pkg/ipamd/ipamd.go, the arithmetic printed with it); the time from start
//! to `ready:` with 0 ms and with 50 ms EC2 latency (median of `--runs`); and, for the first
//! scenario, the calls during `--idle-minutes` of idling (leaked-ENI sweep on) and the agent's RSS.
//!
//!   cargo xtask agent-bench [-- --idle-minutes 10 --runs 5]

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result};
use clap::Parser;
use eniguard_tests::{
    agent::{self, sim_calls, sim_control},
    sim::scenario::{Scenario, Sim},
};

#[derive(Parser)]
struct Args {
    /// Minutes of idling to count calls over (the first scenario only; 0 skips it).
    #[arg(long, default_value_t = 10)]
    idle_minutes: u64,
    /// Starts per latency setting (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

struct Case {
    name: &'static str,
    scenario: Scenario,
    env: Vec<(&'static str, &'static str)>,
    /// Upstream's calls for the same node start, by action, and how they were counted.
    upstream: Vec<(&'static str, u64)>,
    arithmetic: &'static str,
}

fn cases() -> Result<Vec<Case>> {
    let incident = Scenario::parse(include_str!("../../scenarios/incident.yaml"))?;
    Ok(vec![
        Case {
            name: "m5.large, WARM_ENI_TARGET=1 (defaults)",
            scenario: Scenario::default_scenario(),
            env: vec![],
            upstream: vec![
                ("DescribeNetworkInterfaces", 1),
                ("CreateTags", 1),
                ("DescribeSubnets", 1),
                ("ModifyNetworkInterfaceAttribute", 1),
                ("AssignPrivateIpAddresses", 1),
            ],
            arithmetic: "DescribeAllENIs 1 + TagENI(primary) 1 + IsSubnetExcluded(primary) 1 + RefreshSGIDs first \
                         apply 1 + pre-scale on the primary 1 = 5",
        },
        Case {
            name: "m5.large, WARM_IP_TARGET=20 (two new ENIs)",
            scenario: Scenario::default_scenario(),
            env: vec![("WARM_IP_TARGET", "20")],
            upstream: vec![
                ("DescribeNetworkInterfaces", 1),
                ("CreateTags", 1),
                ("DescribeSubnets", 5),
                ("ModifyNetworkInterfaceAttribute", 3),
                ("AssignPrivateIpAddresses", 1),
                ("CreateNetworkInterface", 2),
                ("DescribeInstances", 2),
                ("AttachNetworkInterface", 2),
            ],
            arithmetic: "5 as above + per new ENI (DescribeSubnets, CreateNetworkInterface, DescribeInstances, \
                         AttachNetworkInterface, ModifyNetworkInterfaceAttribute(DeleteOnTermination), \
                         DescribeSubnets in setupENI) 6 × 2 = 17",
        },
        Case {
            name: "m5.large, custom networking + SGP + PD (the incident setup)",
            scenario: incident,
            env: vec![
                ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
                ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
                ("ENABLE_POD_ENI", "true"),
                ("ENABLE_PREFIX_DELEGATION", "true"),
                ("WARM_PREFIX_TARGET", "1"),
            ],
            upstream: vec![
                ("DescribeNetworkInterfaces", 2),
                ("CreateTags", 1),
                ("DescribeSubnets", 3),
                ("ModifyNetworkInterfaceAttribute", 1),
                ("CreateNetworkInterface", 1),
                ("DescribeInstances", 1),
                ("AttachNetworkInterface", 1),
            ],
            arithmetic: "DescribeAllENIs 1 + TagENI(primary) 1 + IsSubnetExcluded(primary) 1 (no RefreshSGIDs \
                         apply under custom networking; the primary takes no pods) + one new ENI 6 + DescribeAllENIs \
                         when the trunk appears 1 = 10",
        },
    ])
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn show(calls: &BTreeMap<String, u64>) -> String {
    let total: u64 = calls.values().sum();
    let parts: Vec<String> = calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// Starts the agent once on a fresh simulator; returns (ms to ready, calls until warm, sim, agent).
/// One start on a fresh simulator.
struct Started {
    ready_ms: f64,
    calls: BTreeMap<String, u64>,
    sim: Sim,
    agent: agent::Agent,
    dir: std::path::PathBuf,
    /// Dropped after the agent (fields drop in order).
    _pins: agent::PinsCleanup,
}

fn start_once(
    rt: &tokio::runtime::Runtime,
    case: &Case,
    latency_ms: u64,
    sweep: bool,
    tag: &str,
) -> Result<Started> {
    let prefix = format!("ab{}-{tag}", std::process::id() % 10000);
    let sim = rt.block_on(Sim::start_with_fabric(&case.scenario, &prefix))?;
    if latency_ms > 0 {
        sim_control(&sim, &format!("latency?ms={latency_ms}"))?;
    }
    let dir = std::env::temp_dir().join(format!("{prefix}-agent"));
    let _ = std::fs::remove_dir_all(&dir);
    let sweep = if sweep { "false" } else { "true" };
    let env: Vec<(&str, &str)> =
        case.env.iter().copied().chain([("DISABLE_LEAKED_ENI_CLEANUP", sweep)]).collect();
    let t = Instant::now();
    let mut a = agent::spawn(&sim, &prefix, 0, &dir, &env)?;
    a.daemon.wait_for_line("ready:", std::time::Duration::from_secs(120))?;
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    // Warm: two pool ticks without a new call.
    let mut last = sim_calls(&sim)?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(6));
        let now = sim_calls(&sim)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(Started {
        ready_ms,
        calls: last,
        sim,
        agent: a,
        dir,
        _pins: agent::PinsCleanup(agent::pin_dir(&prefix, 0)),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = runtime()?;
    for (i, case) in cases()?.iter().enumerate() {
        println!("## {}", case.name);
        let mut times = BTreeMap::new();
        let mut calls = BTreeMap::new();
        for latency in [0u64, 50] {
            let mut ms = Vec::new();
            for run in 0..args.runs.max(1) {
                let s = start_once(&rt, case, latency, false, &format!("{i}{latency}{run}"))?;
                ms.push(s.ready_ms);
                calls = s.calls;
                if i == 0 && latency == 0 && run == 0 {
                    println!("agent RSS when warm: {} KiB", s.agent.rss_kib()?);
                }
                drop(s.agent);
                drop(s.sim);
                let _ = std::fs::remove_dir_all(&s.dir);
            }
            times.insert(latency, median(ms));
        }
        if i == 0 && args.idle_minutes > 0 {
            let s = start_once(&rt, case, 0, true, &format!("{i}idle"))?;
            let before = sim_calls(&s.sim)?;
            std::thread::sleep(std::time::Duration::from_secs(args.idle_minutes * 60));
            let idle = diff(&sim_calls(&s.sim)?, &before);
            println!(
                "idle {} min after warm (leaked-ENI sweep on, first run jittered 0-300 s): {}",
                args.idle_minutes,
                show(&idle)
            );
            println!("agent RSS after idling: {} KiB", s.agent.rss_kib()?);
            drop(s.agent);
            drop(s.sim);
            let _ = std::fs::remove_dir_all(&s.dir);
        }
        let upstream: BTreeMap<String, u64> =
            case.upstream.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        println!("EC2 calls, start to warm: eniguard {}", show(&calls));
        println!("                          upstream {}", show(&upstream));
        println!("  upstream counted as: {}", case.arithmetic);
        let (e, u): (u64, u64) = (calls.values().sum(), upstream.values().sum());
        println!("  ratio eniguard/upstream: {:.2}", e as f64 / u as f64);
        let t0 = times.get(&0).context("0 ms")?;
        let t50 = times.get(&50).context("50 ms")?;
        println!(
            "start to ready (median of {}): {t0:.0} ms at 0 ms EC2 latency, {t50:.0} ms at 50 ms",
            args.runs.max(1)
        );
        println!();
    }
    Ok(())
}
