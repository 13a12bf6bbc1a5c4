//! `eniguard-pod-bench`: pod start and stop as the kubelet sees them — RunPodSandbox and
//! StopPodSandbox latency through Debian's containerd — for eniguard (the agent on a vpcsim node,
//! guard on, its installed conflist) side by side in the same run with Debian's `ptp` +
//! `host-local`. Two containerd instances of the same binary and configuration run in the node's
//! namespace, one per network (containerd 1.6 loads one conflist); pods alternate between them
//! one by one, then each gets a burst of `--burst` concurrent RunPodSandbox and StopPodSandbox;
//! each pod lives `--lifetime-ms` between the two. Last, the agent's RSS.
//!
//!   cargo xtask pod-bench [-- --release] [-- --pods 100 --burst 30 --lifetime-ms 200]

use std::{
    future::Future,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use eniguard_tests::{
    bench::{summary, PoolNode},
    containerd::{Containerd, DEBIAN_CNI_DIR},
    cri::PodSpec,
};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Pods started and stopped one after another, per network.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Concurrent RunPodSandbox (then StopPodSandbox) in the burst, per network.
    #[arg(long, default_value_t = 30)]
    burst: usize,
    /// How long each pod lives between its RunPodSandbox and its StopPodSandbox, in ms (0:
    /// stopped as soon as it runs, while the node still settles its start).
    #[arg(long, default_value_t = 200)]
    lifetime_ms: u64,
    /// ENIGUARD_GUARD_MODE for the agent (`off` measures the node without the guard).
    #[arg(long, default_value = "monitor")]
    guard_mode: String,
}

async fn timed<T>(f: impl Future<Output = Result<T>>) -> Result<(f64, T)> {
    let started = Instant::now();
    let out = f.await?;
    Ok((started.elapsed().as_secs_f64() * 1000.0, out))
}

/// One network under test: its containerd and a name for the tables.
struct Network {
    name: &'static str,
    runtime: Containerd,
    tag: &'static str,
}

impl Network {
    fn pod(&self, i: usize, what: &str) -> PodSpec {
        let name = format!("{}{what}{i}", self.tag);
        self.runtime.pod("default", &name, &format!("uid-{name}"))
    }

    /// Runs `pods` concurrently, lets them live `lifetime`, then stops and removes them; returns
    /// the Run and Stop latencies and the wall time of each phase.
    fn burst(&self, pods: &[PodSpec], lifetime: Duration) -> Result<(Vec<f64>, Vec<f64>, f64, f64)> {
        let cri = &self.runtime.cri;
        self.runtime.block_on(async {
            let started = Instant::now();
            let runs = pods.iter().map(|p| {
                let (cri, p) = (cri.clone(), p.clone());
                tokio::spawn(async move { timed(cri.run_pod(&p)).await })
            });
            let runs = futures_join(runs).await?;
            let run_wall = started.elapsed().as_secs_f64() * 1000.0;
            tokio::time::sleep(lifetime).await;
            let started = Instant::now();
            let stops = runs.iter().map(|(_, id)| {
                let (cri, id) = (cri.clone(), id.clone());
                tokio::spawn(async move { timed(cri.stop_pod(&id)).await })
            });
            let stops = futures_join(stops).await?;
            let stop_wall = started.elapsed().as_secs_f64() * 1000.0;
            for (_, id) in &runs {
                cri.remove_pod(id).await?;
            }
            Ok((
                runs.iter().map(|(t, _)| *t).collect(),
                stops.iter().map(|(t, _)| *t).collect(),
                run_wall,
                stop_wall,
            ))
        })
    }
}

/// Awaits spawned tasks in order, failing on the first error.
async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let handles: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("task")??);
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let lifetime = Duration::from_millis(args.lifetime_ms);
    ensure!(
        Path::new(DEBIAN_CNI_DIR).join("ptp").exists(),
        "{DEBIAN_CNI_DIR}/ptp missing: cargo xtask setup installs containernetworking-plugins"
    );
    let prefix = format!("egp{}", std::process::id());
    let pool = PoolNode::start_with(
        &prefix,
        args.pods.max(args.burst) as u32 + 10,
        &[("ENIGUARD_GUARD_MODE", args.guard_mode.as_str())],
    )?;
    let (node_agent, node, dir) = (&pool.agent, &pool.ns, &pool.dir);
    // ptp + host-local in the version eniguard's conflist gives old runtimes.
    let installed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("net.d/10-eniguard.conflist"))?)?;
    let ptp_conf = dir.join("ptp-net.d");
    std::fs::create_dir_all(&ptp_conf)?;
    let ptp = json!({"cniVersion": installed["cniVersion"], "name": "bench-ptp", "plugins": [
        {"type": "ptp", "mtu": 9001, "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.30.0.0/16"}]],
            "dataDir": dir.join("host-local").display().to_string()}}]});
    std::fs::write(ptp_conf.join("10-ptp.conflist"), ptp.to_string())?;
    let ours = Network {
        name: "eniguard-cni",
        runtime: Containerd::start(node, &dir.join("ctd-eniguard"), &dir.join("bin"), &dir.join("net.d"))?,
        tag: "e",
    };
    let peer = Network {
        name: "ptp + host-local",
        runtime: Containerd::start(node, &dir.join("ctd-ptp"), Path::new(DEBIAN_CNI_DIR), &ptp_conf)?,
        tag: "p",
    };
    let networks = [&ours, &peer];
    let create_pod = |p: &PodSpec| pool.create_pod(&p.name);
    // One warm-up pod each (first-use costs: the image's snapshot, the shim binary's pages).
    for n in networks {
        let p = n.pod(0, "w");
        create_pod(&p)?;
        n.burst(std::slice::from_ref(&p), Duration::ZERO)?;
    }

    println!(
        "Pods through containerd {}, {} one after another per network, interleaved, each living {} ms (ms, CRI call to reply):",
        containerd_version(&ours.runtime)?,
        args.pods,
        args.lifetime_ms
    );
    let mut times: [[Vec<f64>; 2]; 2] = Default::default();
    for i in 0..args.pods {
        for (n, net) in networks.iter().enumerate() {
            let p = net.pod(i, "s");
            create_pod(&p)?;
            let (run, stop, _, _) = net.burst(std::slice::from_ref(&p), lifetime)?;
            times[n][0].extend(run);
            times[n][1].extend(stop);
        }
    }
    println!("| network | RunPodSandbox p50 | p99 | StopPodSandbox p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (n, net) in networks.iter().enumerate() {
        let (r50, r99) = summary(times[n][0].clone());
        let (s50, s99) = summary(times[n][1].clone());
        println!("| {} | {r50:.1} | {r99:.1} | {s50:.1} | {s99:.1} |", net.name);
    }
    let ratio = |k: usize| summary(times[0][k].clone()).1 / summary(times[1][k].clone()).1;
    println!(
        "p99 eniguard / ptp: RunPodSandbox {:.2}, StopPodSandbox {:.2} (goal ≤ 1.0)",
        ratio(0),
        ratio(1)
    );

    std::thread::sleep(Duration::from_secs(2)); // the addresses cool down
    println!("\nBurst of {} concurrent RunPodSandbox, then as many StopPodSandbox (ms per call; wall time of the burst):", args.burst);
    println!("| network | Run p50 | Run p99 | Run burst | Stop p50 | Stop p99 | Stop burst |");
    println!("|---|---|---|---|---|---|---|");
    let mut burst_p99 = [[0.0; 2]; 2];
    for (n, net) in networks.iter().enumerate() {
        let pods: Vec<PodSpec> = (0..args.burst).map(|i| net.pod(i, "b")).collect();
        for p in &pods {
            create_pod(p)?;
        }
        let (run, stop, run_wall, stop_wall) = net.burst(&pods, lifetime)?;
        let ((r50, r99), (s50, s99)) = (summary(run), summary(stop));
        burst_p99[n] = [r99, s99];
        println!(
            "| {} | {r50:.1} | {r99:.1} | {run_wall:.1} | {s50:.1} | {s99:.1} | {stop_wall:.1} |",
            net.name
        );
    }
    println!(
        "burst p99 eniguard / ptp: RunPodSandbox {:.2}, StopPodSandbox {:.2}",
        burst_p99[0][0] / burst_p99[1][0],
        burst_p99[0][1] / burst_p99[1][1]
    );
    println!(
        "\nAgent after the runs: {} (MiB: VmRSS = anonymous + file-backed + shmem)",
        node_agent.memory()?
    );
    println!(
        "(binaries: {}; the guard's mode: {})",
        std::env::var("ENIGUARD_BIN").unwrap_or_else(|_| "target/debug".into()),
        args.guard_mode
    );
    for n in [ours, peer] {
        n.runtime.stop().with_context(|| format!("stopping {}'s containerd", n.name))?;
    }
    Ok(())
}

fn containerd_version(c: &Containerd) -> Result<String> {
    c.block_on(c.cri.version())
}
