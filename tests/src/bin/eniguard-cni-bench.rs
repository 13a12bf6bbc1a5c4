//! `eniguard-cni-bench`: CNI ADD and DEL latency of `eniguard-cni` against `eniguard agent` on a
//! vpcsim node (root, fabric), side by side in the same run with Debian's `ptp` + `host-local`
//! (containernetworking-plugins) driven the same way: the binary started in the node's
//! namespace with the runtime's environment and stdin, timed from spawn to exit. Sequential
//! ADDs and DELs of `--pods` pods interleaved pod by pod between the two plugins, then a burst of
//! `--burst` concurrent ADDs per plugin; then the agent's RSS with `--rss-pods` pods.
//!
//!   cargo xtask cni-bench [-- --pods 200 --burst 30 --rss-pods 250]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use clap::Parser;
use eniguard_tests::{
    bench::{summary, PoolNode},
    cni::{self, Sandbox},
    netns::NetNs,
};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Pods ADDed and DELed one after another, per plugin.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Concurrent ADDs in the burst, per plugin.
    #[arg(long, default_value_t = 30)]
    burst: usize,
    /// Pods on the node when the agent's RSS is read.
    #[arg(long, default_value_t = 250)]
    rss_pods: usize,
    /// An IPv6 node (ENABLE_IPv6, with upstream's V4 egress); the peer gets IPv6 addresses too.
    #[arg(long)]
    ipv6: bool,
}

const PEER_DIR: &str = "/usr/lib/cni";

/// One plugin under test: its binary, configuration and CNI_PATH.
struct Plugin {
    name: &'static str,
    binary: PathBuf,
    conf: Value,
    path: String,
}

impl Plugin {
    /// One command, timed from spawn to exit.
    fn time(
        &self,
        node: &NetNs,
        command: &str,
        sandbox: &Sandbox,
        prev: Option<&Value>,
    ) -> Result<(Duration, Value)> {
        let mut env = cni::env_for(command, sandbox);
        env.retain(|(k, _)| *k != "CNI_PATH");
        env.push(("CNI_PATH", self.path.clone()));
        let mut conf = self.conf.clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let started = Instant::now();
        let out = cni::exec(node, &self.binary, &env, conf.to_string().as_bytes())?;
        let took = started.elapsed();
        ensure!(
            out.success,
            "{} {command} {}: {} {}",
            self.name,
            sandbox.container_id,
            out.stdout,
            out.stderr
        );
        Ok((took, out.json()))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pod_ns(prefix: &str, tag: &str, i: usize) -> Result<NetNs> {
    NetNs::create(&format!("{prefix}-{tag}{i}"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        Path::new(PEER_DIR).join("ptp").exists(),
        "{PEER_DIR}/ptp missing: cargo xtask setup installs containernetworking-plugins"
    );
    let prefix = format!("egb{}", std::process::id());
    let want = args.pods.max(args.burst).max(args.rss_pods) as u32 + 10;
    let pool = if args.ipv6 { PoolNode::start_ipv6(&prefix)? } else { PoolNode::start(&prefix, want)? };
    let peer_subnet = if args.ipv6 { "fd00:30::/64" } else { "172.30.0.0/16" };
    let (node_agent, node, dir) = (&pool.agent, &pool.ns, &pool.dir);
    let conflist: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("net.d/10-eniguard.conflist"))?)?;
    let ours = Plugin {
        name: "eniguard-cni",
        binary: dir.join("bin/eniguard-cni"),
        conf: cni::conf(&conflist, Some("1.0.0"), None),
        // The node's bin dir: host-local for V4 egress in IPv6 mode.
        path: format!("{}:{PEER_DIR}", dir.join("bin").display()),
    };
    let peer = Plugin {
        name: "ptp + host-local",
        binary: Path::new(PEER_DIR).join("ptp"),
        conf: json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "mtu": 9001,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": peer_subnet}]],
                     "dataDir": dir.join("host-local").display().to_string()}}),
        path: PEER_DIR.to_owned(),
    };
    let create_pod = |name: &str| pool.create_pod(name);
    let fresh = node_agent.memory()?;

    println!(
        "CNI ADD/DEL{}, {} pods one after another, interleaved (ms, spawn to exit, inside the node's netns):",
        if args.ipv6 { " on an IPv6 node (V4 egress on; the peer with an IPv6 range)" } else { "" },
        args.pods
    );
    let mut times: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut live = Vec::new();
    for i in 0..args.pods {
        for (p, plugin) in [&ours, &peer].into_iter().enumerate() {
            let ns = pod_ns(&prefix, if p == 0 { "e" } else { "q" }, i)?;
            let name = format!("{}{i}", if p == 0 { "e" } else { "q" });
            create_pod(&name)?;
            let sandbox = Sandbox::new(&format!("{name}-s"), "default", &name, &ns);
            let (took, result) = plugin.time(node, "ADD", &sandbox, None)?;
            times[0][p].push(ms(took));
            live.push((p, ns, sandbox, result));
        }
    }
    for (p, _ns, sandbox, result) in live.drain(..) {
        let plugin = if p == 0 { &ours } else { &peer };
        let (took, _) = plugin.time(node, "DEL", &sandbox, Some(&result))?;
        times[1][p].push(ms(took));
    }
    println!("| plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 |");
    println!("|---|---|---|---|---|");
    for (p, plugin) in [&ours, &peer].into_iter().enumerate() {
        let (a50, a99) = summary(times[0][p].clone());
        let (d50, d99) = summary(times[1][p].clone());
        println!("| {} | {a50:.1} | {a99:.1} | {d50:.1} | {d99:.1} |", plugin.name);
    }
    let (_, ours99) = summary(times[0][0].clone());
    let (_, peer99) = summary(times[0][1].clone());
    println!("ADD p99 ratio eniguard / ptp: {:.2} (goal ≤ 1.0)", ours99 / peer99);

    println!("\nBurst of {} concurrent ADDs per plugin (ms per ADD, and the whole burst):", args.burst);
    println!("| plugin | p50 | p99 | burst |");
    println!("|---|---|---|---|");
    for (p, plugin) in [&ours, &peer].into_iter().enumerate() {
        let tag = if p == 0 { "be" } else { "bq" };
        let mut pods = Vec::new();
        for i in 0..args.burst {
            let name = format!("{tag}{i}");
            create_pod(&name)?;
            let ns = pod_ns(&prefix, tag, i)?;
            let sandbox = Sandbox::new(&format!("{name}-s"), "default", &name, &ns);
            pods.push((ns, sandbox));
        }
        let started = Instant::now();
        let results: Vec<Result<(Duration, Value)>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                pods.iter().map(|(_, sandbox)| s.spawn(|| plugin.time(node, "ADD", sandbox, None))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))))
                .collect()
        });
        let burst = started.elapsed();
        let mut lat = Vec::new();
        for ((_, sandbox), r) in pods.iter().zip(results) {
            let (took, result) = r?;
            lat.push(ms(took));
            plugin.time(node, "DEL", sandbox, Some(&result))?;
        }
        let (p50, p99) = summary(lat);
        println!("| {} | {p50:.1} | {p99:.1} | {:.1} |", plugin.name, ms(burst));
    }

    std::thread::sleep(Duration::from_secs(2)); // the burst's addresses cool down
    println!("\nAgent RSS with pods on the node:");
    println!("| pods | agent RSS (MiB) | anonymous | file-backed |");
    println!("|---|---|---|---|");
    println!("| 0, freshly ready | {fresh} |");
    println!("| 0, after the runs above | {} |", node_agent.memory()?);
    let mut held = Vec::new();
    for i in 0..args.rss_pods {
        let name = format!("r{i}");
        create_pod(&name)?;
        let ns = pod_ns(&prefix, "r", i)?;
        let sandbox = Sandbox::new(&format!("{name}-s"), "default", &name, &ns);
        let (_, result) = ours.time(node, "ADD", &sandbox, None)?;
        held.push((ns, sandbox, result));
    }
    std::thread::sleep(Duration::from_secs(6)); // a pool tick and a GC scan with every pod
    println!("| {} | {} |", args.rss_pods, node_agent.memory()?);
    println!(
        "\n(binaries: {}; the agent's RSS is its VmRSS = RssAnon + RssFile + RssShmem)",
        std::env::var("ENIGUARD_BIN").unwrap_or_else(|_| "target/debug".into())
    );
    Ok(())
}
