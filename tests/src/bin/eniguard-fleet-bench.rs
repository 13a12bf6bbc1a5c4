//! `eniguard-fleet-bench`: a fleet joining at once under EC2's account-wide request buckets
//! (root, fabric). One vpcsim with `ec2Buckets: default`, N m5.large nodes, N agents started at
//! once (each in its node's namespace), each asked for one ENI more than its primary
//! (WARM_IP_TARGET=12), until every node is ready with that ENI and its addresses. Prints the time
//! to all ready (p50/p99/max per node), EC2 calls and throttled calls by action, the
//! bucket-limited minimum for the calls actually served (each bucket full at the start, then its
//! refill rate: `(served - max) / refill`, the largest over the buckets), the ratio of the two,
//! and the agents' RSS.
//!
//! The guard is off (ENIGUARD_GUARD_MODE=off): the bench measures the EC2 economy, and 100 guards
//! loading at once on 2 cores would measure the BPF verifier instead.
//!
//!   cargo xtask fleet-bench [-- --release] [-- --nodes 100]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use eniguard_tests::{
    agent::{self, sim_calls, sim_throttled, Agent},
    sim::scenario::{BucketsSpec, Scenario, Sim},
};

#[derive(Parser)]
struct Args {
    /// Nodes (and agents) started at once.
    #[arg(long, default_value_t = 20)]
    nodes: u32,
    /// How long the fleet may take to get ready.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// Per node: when its agent said ready, and when EC2 showed its second ENI with addresses.
#[derive(Clone, Copy, Default)]
struct Progress {
    ready: Option<Duration>,
    warm: Option<Duration>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut scenario = Scenario::default_scenario();
    scenario.nodes[0].count = Some(args.nodes);
    scenario.ec2_buckets = Some(BucketsSpec::Named("default".into()));
    let prefix = format!("fb{}", std::process::id() % 10000);
    let logs = std::env::temp_dir().join(format!("{prefix}-logs"));
    agent::send_logs_to(&logs)?;
    println!(
        "fleet: {} m5.large nodes, EC2's default buckets, agents' logs in {}",
        args.nodes,
        logs.display()
    );
    let built = Instant::now();
    let sim = rt.block_on(Sim::start_with_fabric(&scenario, &prefix))?;
    println!("simulator and fabric up in {:.1} s", built.elapsed().as_secs_f64());
    let env = [("WARM_IP_TARGET", "12"), ("ENIGUARD_GUARD_MODE", "off")];
    let started = Instant::now();
    let mut agents: Vec<(Agent, std::path::PathBuf)> = Vec::new();
    for i in 0..sim.nodes.len() {
        let dir = std::env::temp_dir().join(format!("{prefix}-agent{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        agents.push((agent::spawn(&sim, &prefix, i, &dir, &env)?, dir));
    }
    let spawned = started.elapsed();
    let mut progress = vec![Progress::default(); agents.len()];
    let deadline = started + Duration::from_secs(args.timeout_secs);
    while progress.iter().any(|p| p.ready.is_none() || p.warm.is_none()) {
        ensure!(Instant::now() < deadline, "the fleet was not ready within {} s", args.timeout_secs);
        for (i, (a, _)) in agents.iter_mut().enumerate() {
            if progress[i].ready.is_none()
                && a.daemon.wait_for_line("ready:", Duration::from_millis(1)).is_ok()
            {
                progress[i].ready = Some(started.elapsed());
            }
        }
        let warm: Vec<bool> = sim.with_ec2(|s| {
            sim.nodes
                .iter()
                .map(|n| {
                    let enis = s.ec2.attached_to(&n.instance_id);
                    enis.len() >= 2 && enis.iter().all(|e| !e.secondary_ips.is_empty())
                })
                .collect()
        });
        for (p, w) in progress.iter_mut().zip(warm) {
            if w && p.warm.is_none() {
                p.warm = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut times: Vec<f64> =
        progress.iter().map(|p| p.ready.max(p.warm).unwrap_or_default().as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let all = times.last().copied().unwrap_or_default();
    let calls = sim_calls(&sim)?;
    let throttled = sim_throttled(&sim)?;
    let report = sim.with_ec2(|s| s.buckets.as_ref().map(|b| b.report()).unwrap_or_default());
    let (limiting, minimum) = report
        .iter()
        .map(|b| (b.key.clone(), b.minimum_seconds()))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .context("no bucket was used")?;
    let rss: Vec<u64> = agents.iter().filter_map(|(a, _)| a.rss_kib().ok()).collect();
    let rss_max = rss.iter().max().copied().unwrap_or_default();
    let rss_mean = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64;

    println!("agents spawned in {:.1} s", spawned.as_secs_f64());
    println!(
        "time to ready with the warm ENI, per node: p50 {:.1} s, p99 {:.1} s, max {all:.1} s",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
    let total: u64 = calls.values().sum();
    println!("EC2 calls: {total} ({:.1} per node)", total as f64 / f64::from(args.nodes));
    for (action, n) in &calls {
        let t = throttled.get(action).copied().unwrap_or(0);
        println!("  {action:<34} {n:>6} calls, {t:>5} throttled");
    }
    println!("buckets used (max / refill per s, served, least time for that many):");
    for b in &report {
        println!(
            "  {:<46} {:>5.0} / {:<4.0} {:>6} {:>7.1} s",
            b.key,
            b.max,
            b.refill,
            b.served,
            b.minimum_seconds()
        );
    }
    println!("bucket-limited minimum: {minimum:.1} s ({limiting})");
    if minimum > 0.0 {
        println!("ratio to the minimum: {:.2}", all / minimum);
    } else {
        println!("ratio to the minimum: n/a (no bucket ran out of its initial tokens)");
    }
    println!("agent RSS: mean {:.1} MiB, max {:.1} MiB", rss_mean / 1024.0, rss_max as f64 / 1024.0);
    for (a, dir) in agents {
        drop(a);
        let _ = std::fs::remove_dir_all(dir);
    }
    drop(sim);
    Ok(())
}
