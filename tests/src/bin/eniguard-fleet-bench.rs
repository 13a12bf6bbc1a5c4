//! `eniguard-fleet-bench`: a fleet joining at once under EC2's account-wide request buckets
//! (root, fabric). One vpcsim with `ec2Buckets: default`, N m5.large nodes, N agents started at
//! once (each in its node's namespace), each asked for one ENI more than its primary
//! (WARM_IP_TARGET=12), until every node is ready with that ENI and its addresses. Prints the time
//! to all ready (p50/p99/max per node), EC2 calls and throttled calls by action, the
//! bucket-limited minimum for the calls actually served (each bucket full at the start, then its
//! refill rate: `(served - max) / refill`, the largest over the buckets), the ratio of the two,
//! and the agents' RSS. Each ENIGUARD_EC2_PACING named by `--pacing` gets its own fleet (a fresh
//! simulator, full buckets), one after the other in the same run, and a table side by side.
//!
//! The guard is off (ENIGUARD_GUARD_MODE=off): the bench measures the EC2 economy, and 100 guards
//! loading at once on 2 cores would measure the BPF verifier instead.
//!
//!   cargo xtask fleet-bench [-- --release] [-- --nodes 100] [--pacing paced,standard,adaptive]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Parser;
use eniguard_tests::{
    agent::{self, sim_calls, sim_throttled, Agent},
    sim::{
        buckets::BucketReport,
        scenario::{BucketsSpec, Scenario, Sim},
    },
};

#[derive(Parser)]
struct Args {
    /// Nodes (and agents) started at once.
    #[arg(long, default_value_t = 20)]
    nodes: u32,
    /// ENIGUARD_EC2_PACING values, one fleet each.
    #[arg(long, value_delimiter = ',', default_value = "paced,standard")]
    pacing: Vec<String>,
    /// How long each fleet may take to get ready.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// Per node: when its agent said ready, when EC2 showed its second ENI with addresses, and
/// whether the agent exited.
#[derive(Clone, Default)]
struct Progress {
    ready: Option<Duration>,
    warm: Option<Duration>,
    exited: Option<String>,
}

impl Progress {
    fn done(&self) -> bool {
        self.exited.is_some() || (self.ready.is_some() && self.warm.is_some())
    }
}

/// One fleet's results.
struct Outcome {
    pacing: String,
    /// Seconds to ready with the warm ENI, sorted, of the nodes that got there.
    times: Vec<f64>,
    /// Agents that exited, or were not ready by the deadline.
    failed: usize,
    calls: BTreeMap<String, u64>,
    throttled: BTreeMap<String, u64>,
    buckets: Vec<BucketReport>,
    rss_kib: Vec<u64>,
    /// CPU seconds (user + system) each agent had used when the fleet was ready.
    cpu: Vec<f64>,
    /// When the agents were started (the buckets' first calls are counted from it).
    started: Instant,
}

impl Outcome {
    fn max(&self) -> f64 {
        self.times.last().copied().unwrap_or(f64::NAN)
    }
    /// The bucket that needs the longest for what it served, and how long.
    fn minimum(&self) -> (String, f64) {
        self.limiting().map(|b| (b.key.clone(), b.minimum_seconds())).unwrap_or_default()
    }

    fn limiting(&self) -> Option<&BucketReport> {
        self.buckets.iter().max_by(|a, b| a.minimum_seconds().total_cmp(&b.minimum_seconds()))
    }

    /// Seconds from the start to the limiting bucket's first call: the minimum counts from
    /// there, and what came before it is the fleet's own start on this machine.
    fn limiting_first(&self) -> f64 {
        self.limiting().map_or(0.0, |b| b.first.saturating_duration_since(self.started).as_secs_f64())
    }

    /// The last node's time from the limiting bucket's first call, over the minimum.
    fn ratio_from_first(&self) -> String {
        let (_, minimum) = self.minimum();
        if minimum > 0.0 {
            format!("{:.2}", (self.max() - self.limiting_first()) / minimum)
        } else {
            "n/a".into()
        }
    }
}

/// Where the agents' directories go (run dir, CNI bin and conf dirs): tmpfs where there is one.
/// Each real node has its own disk; a hundred agents creating their files at once on this
/// machine's one ext4 spent a tenth of their CPU in its inode allocator (perf, 2026-12-06).
fn nodes_disk() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// User + system CPU seconds of a process (/proc/PID/stat, fields 14 and 15, in clock ticks).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let logs = std::env::temp_dir().join(format!("fb{}-logs", std::process::id()));
    agent::send_logs_to(&logs)?;
    println!("agents' logs in {}", logs.display());
    // One node alone: the time to ready that no bucket is in, the floor under every node's.
    let first = args.pacing.first().map_or("paced", String::as_str);
    let alone = fleet(&rt, 1, first, args.timeout_secs, 9)?.max();
    println!("one node alone: ready with its warm ENI in {alone:.1} s");
    let mut outcomes = Vec::new();
    for (k, pacing) in args.pacing.iter().enumerate() {
        let outcome = fleet(&rt, args.nodes, pacing, args.timeout_secs, k)?;
        print_outcome(&outcome, args.nodes);
        outcomes.push(outcome);
    }
    println!(
        "\nminimum: the bucket-limited minimum; floor: that plus one node alone ({alone:.1} s), since the \
         last call a bucket serves still has a node's own path around it; first call: when the \
         limiting bucket served its first call, and the ratio of the last node's time from there"
    );
    println!("\n| ENIGUARD_EC2_PACING | nodes | ready p50 | p99 | max | minimum | ratio | floor | ratio | first call | ratio | calls/node | throttled | failed | RSS mean |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in &outcomes {
        let (_, minimum) = o.minimum();
        let floor = minimum + alone;
        let calls: u64 = o.calls.values().sum();
        let rss = o.rss_kib.iter().sum::<u64>() as f64 / o.rss_kib.len().max(1) as f64 / 1024.0;
        println!(
            "| {} | {} | {:.1} s | {:.1} s | {:.1} s | {minimum:.1} s | {} | {floor:.1} s | {:.2} | {:.1} s | {} | {:.1} | {} | {} | {rss:.1} MiB |",
            o.pacing,
            args.nodes,
            percentile(&o.times, 0.5),
            percentile(&o.times, 0.99),
            o.max(),
            if minimum > 0.0 { format!("{:.2}", o.max() / minimum) } else { "n/a".into() },
            o.max() / floor,
            o.limiting_first(),
            o.ratio_from_first(),
            calls as f64 / f64::from(args.nodes),
            o.throttled.values().sum::<u64>(),
            o.failed,
        );
    }
    Ok(())
}

/// Starts one simulator with `nodes` nodes and as many agents with ENIGUARD_EC2_PACING=`pacing`,
/// waits until each is ready with its warm ENI (or exited, or `timeout_secs`), and reads the
/// simulator's counters; `k` tells the fleets' namespaces apart.
fn fleet(
    rt: &tokio::runtime::Runtime,
    nodes: u32,
    pacing: &str,
    timeout_secs: u64,
    k: usize,
) -> Result<Outcome> {
    let mut scenario = Scenario::default_scenario();
    scenario.nodes[0].count = Some(nodes);
    scenario.ec2_buckets = Some(BucketsSpec::Named("default".into()));
    let prefix = format!("fb{}{k}", std::process::id() % 1000);
    println!("\nfleet: {nodes} m5.large nodes, EC2's default buckets, ENIGUARD_EC2_PACING={pacing}");
    let built = Instant::now();
    let sim = rt.block_on(Sim::start_with_fabric(&scenario, &prefix))?;
    println!("simulator and fabric up in {:.1} s", built.elapsed().as_secs_f64());
    let env = [("WARM_IP_TARGET", "12"), ("ENIGUARD_GUARD_MODE", "off"), ("ENIGUARD_EC2_PACING", pacing)];
    let started = Instant::now();
    let mut agents: Vec<(Agent, std::path::PathBuf)> = Vec::new();
    for i in 0..sim.nodes.len() {
        let dir = nodes_disk().join(format!("{prefix}-agent{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        agents.push((agent::spawn(&sim, &prefix, i, &dir, &env)?, dir));
    }
    println!("agents spawned in {:.1} s", started.elapsed().as_secs_f64());
    let mut progress = vec![Progress::default(); agents.len()];
    let deadline = started + Duration::from_secs(timeout_secs);
    while progress.iter().any(|p| !p.done()) && Instant::now() < deadline {
        for (p, (a, _)) in progress.iter_mut().zip(agents.iter_mut()) {
            if p.ready.is_none() && p.exited.is_none() {
                if a.daemon.wait_for_line("ready:", Duration::from_millis(1)).is_ok() {
                    p.ready = Some(started.elapsed());
                } else if let Some(status) = a.daemon.wait_exit(Duration::ZERO)? {
                    p.exited = Some(status.to_string());
                }
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
    for (i, p) in progress.iter().enumerate().filter(|(_, p)| !p.done() || p.exited.is_some()) {
        let why =
            p.exited.as_deref().map_or("not ready by the deadline".to_owned(), |s| format!("exited: {s}"));
        println!("  node {i}: {why} (log: {prefix}-node{i}-eniguard-agent.log)");
    }
    let mut times: Vec<f64> = progress
        .iter()
        .filter(|p| p.exited.is_none())
        .filter_map(|p| Some(p.ready?.max(p.warm?).as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    let failed = progress.len() - times.len();
    let outcome = Outcome {
        pacing: pacing.to_owned(),
        times,
        failed,
        calls: sim_calls(&sim)?,
        throttled: sim_throttled(&sim)?,
        buckets: sim.with_ec2(|s| s.buckets.as_ref().map(|b| b.report()).unwrap_or_default()),
        rss_kib: agents.iter().filter_map(|(a, _)| a.rss_kib().ok()).collect(),
        cpu: agents.iter().filter_map(|(a, _)| cpu_seconds(a.daemon.pid())).collect(),
        started,
    };
    for (a, dir) in agents {
        drop(a);
        let _ = std::fs::remove_dir_all(dir);
    }
    drop(sim);
    Ok(outcome)
}

fn print_outcome(o: &Outcome, nodes: u32) {
    println!(
        "time to ready with the warm ENI, per node: p50 {:.1} s, p99 {:.1} s, max {:.1} s; {} failed",
        percentile(&o.times, 0.5),
        percentile(&o.times, 0.99),
        o.max(),
        o.failed
    );
    let total: u64 = o.calls.values().sum();
    println!("EC2 calls: {total} ({:.1} per node)", total as f64 / f64::from(nodes));
    for (action, n) in &o.calls {
        let t = o.throttled.get(action).copied().unwrap_or(0);
        println!("  {action:<34} {n:>6} calls, {t:>5} throttled");
    }
    println!("buckets used (max / refill per s, served, least time for that many):");
    for b in &o.buckets {
        println!(
            "  {:<46} {:>5.0} / {:<4.0} {:>6} {:>7.1} s",
            b.key,
            b.max,
            b.refill,
            b.served,
            b.minimum_seconds()
        );
    }
    let (limiting, minimum) = o.minimum();
    println!("bucket-limited minimum: {minimum:.1} s ({limiting})");
    if minimum > 0.0 {
        println!("ratio to the minimum: {:.2}", o.max() / minimum);
        println!(
            "{limiting} served its first call {:.1} s after the start; from there to the last node ready, \
             over the minimum: {}",
            o.limiting_first(),
            o.ratio_from_first()
        );
    } else {
        println!("ratio to the minimum: n/a (no bucket ran out of its initial tokens)");
    }
    let max = o.rss_kib.iter().max().copied().unwrap_or_default();
    let mean = o.rss_kib.iter().sum::<u64>() as f64 / o.rss_kib.len().max(1) as f64;
    println!("agent RSS: mean {:.1} MiB, max {:.1} MiB", mean / 1024.0, max as f64 / 1024.0);
    let cpu: f64 = o.cpu.iter().sum();
    println!(
        "agent CPU until the fleet was ready: {:.0} ms each on average, {cpu:.1} s in all (2 cores here)",
        cpu / o.cpu.len().max(1) as f64 * 1000.0
    );
}
