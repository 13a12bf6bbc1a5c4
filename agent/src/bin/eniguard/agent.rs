//! `eniguard agent`: the node agent. Builds the clients once, serves health and metrics from the
//! first moment, runs the startup sequence, then the loops until SIGTERM (which leaves every ENI
//! and address in place for the next agent to adopt).

use std::sync::{Arc, OnceLock};

use super::introspect;
use anyhow::{Context as _, Result};
use eniguard::{
    cloud::{calls::Calls, ec2::Ec2Options, imds_only::ImdsOnly, Aws},
    cni,
    config::{Config, GuardMode, HostPaths},
    guard::{datapath::Capacity, live::LiveGuard},
    kube::client::Kube,
    net::eni::HostNet,
    netpol,
    node::{
        self,
        owner::now,
        startup::{self, Inputs},
        state::{Board, Shared},
    },
    observe::{
        agent::Metrics,
        guard::{GuardCollector, GuardSource},
        server::{self, Reply},
    },
};
use tokio::signal::unix::{signal, SignalKind};

pub async fn run(cfg: Config, paths: HostPaths) -> Result<()> {
    let process_began = std::time::Instant::now();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let calls = Calls::default();
    let metrics = Metrics::default();
    let board = Arc::new(Board::default());
    let shared: Arc<OnceLock<Arc<Shared>>> = Arc::default();
    std::fs::create_dir_all(&paths.run_dir)
        .with_context(|| format!("--run-dir {}", paths.run_dir.display()))?;
    // The CNI plugin's socket answers from the start ("not ready" until the node is).
    let ready_node: node::cni_api::ReadyNode = Arc::default();
    let socket = node::cni_api::bind(&paths.run_dir)?;
    log::info!("local API on {}", paths.run_dir.join(cni::api::SOCKET_NAME).display());
    tokio::spawn(node::cni_api::serve(socket, ready_node.clone()));
    let guard = load_guard(&cfg, &paths)?;
    if !cfg.disable_introspection {
        let listener = server::bind(&cfg.introspection_bind_address).await?;
        log::info!("health and introspection on {listener}");
        tokio::spawn(server::serve(
            listener,
            introspect::handler(board.clone(), shared.clone(), guard.clone(), cfg.clone()),
        ));
    }
    if !cfg.disable_metrics {
        let collector = guard.as_ref().map(|live| {
            Box::new(GuardCollector(GuardSource::Live(live.clone())))
                as Box<dyn prometheus_client::collector::Collector>
        });
        let registry = metrics.registry(&calls, collector);
        let listener = server::bind(&cfg.metrics_bind_address).await?;
        log::info!("metrics on {listener}");
        tokio::spawn(server::serve_metrics(listener, registry, |_| Reply::text(404, "not found\n")));
    }
    let inputs = Inputs {
        run_dir: paths.run_dir.clone(),
        cloud: if cfg.imds_only {
            Arc::new(ImdsOnly::new(calls.clone()))
        } else {
            Arc::new(Aws::new(calls.clone(), Ec2Options::from_config(&cfg)))
        },
        kube: Arc::new(Kube::new(cfg.cluster_endpoint.as_deref()).await?),
        net: Arc::new(HostNet::open()?),
        calls,
        metrics: metrics.clone(),
        board: board.clone(),
        guard: guard.clone(),
        cfg,
    };
    let began = std::time::Instant::now();
    let node_init = metrics.upstream.in_progress("nodeInit");
    let started = tokio::select! {
        s = startup::start(inputs) => s?,
        _ = term.recv() => return stopped("during startup"),
        _ = int.recv() => return stopped("during startup"),
    };
    drop(node_init);
    let node_init_took = began.elapsed();
    metrics.startup_seconds.set(node_init_took.as_secs_f64());
    let _ = shared.set(started.clone());
    let mut tasks = node::run(started.clone());
    #[cfg(target_env = "gnu")]
    tasks.push(tokio::spawn(give_back_memory(started.clone())));
    // The network-policy agent asks for the node's facts on aws-node's socket.
    tasks.push(tokio::spawn(netpol::serve_config(&paths.aws_node_run_dir, policy_facts(&started))?));
    // Ready once the pool holds an address (a node without one cannot start a pod); in IPv6
    // mode once the /80 is there.
    let ready = async {
        loop {
            let stats = started.owner.with(|ipam| ipam.datastore.stats(now())).await;
            if stats.total > 0 || started.ipv6.is_some() {
                return stats;
            }
            board.update(|s| s.step = "waiting for the first pod address".into());
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    };
    let stopped_early = tokio::select! {
        stats = ready => {
            board.update(|s| {
                s.step = "ready".into();
                s.ready = true;
            });
            metrics.ready.set(1);
            metrics.upstream.started(process_began.elapsed(), node_init_took);
            node::gc::drain_queue(&started).await;
            let _ = ready_node.set(started.clone());
            install_plugin(&started, &paths).await;
            // The readiness line scripts and tests wait for.
            let pool = match &started.ipv6 {
                Some(v6) => format!("IPv6 pods from {} on {}", v6.prefix, v6.primary_eni),
                None => format!("{} ENIs, {} addresses ({} assigned)", stats.enis, stats.total, stats.assigned),
            };
            println!("ready: node {} ({}), {pool}", started.node().name, started.id.instance_type);
            false
        }
        _ = term.recv() => true,
        _ = int.recv() => true,
    };
    if !stopped_early {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
    for t in tasks {
        t.abort();
    }
    if let Some(live) = &guard {
        // Traffic stays checked by the pinned programs until the next agent replaces them.
        live.keep()?;
    }
    stopped("")
}

/// Returns the heap pages that pods' state held to the kernel once the pods are gone: glibc keeps
/// freed pages in its arenas, about 11 MiB after `cargo xtask cni-bench`'s churn (README,
/// performance). Looks every second; trims when fewer addresses are allocated than at the last
/// look (and once at start, after the guard's load). glibc only: musl (the image's build) has no
/// malloc_trim, and its allocator returns freed pages by itself.
#[cfg(target_env = "gnu")]
async fn give_back_memory(node: Arc<Shared>) {
    let mut last = usize::MAX;
    loop {
        let assigned = node.owner.with(|ipam| ipam.allocation_count()).await;
        if assigned < last {
            // SAFETY: malloc_trim only returns free memory to the kernel; any thread may call it.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
        last = assigned;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What GetNetworkPolicyConfigs answers on ipamd.sock.
fn policy_facts(node: &Shared) -> netpol::NodeFacts {
    netpol::NodeFacts {
        mode: node.cfg.network_policy_mode.map(|m| m.as_str().to_owned()).unwrap_or_default(),
        node_ipv4: node.id.local_ipv4.to_string(),
        node_ipv6: node.ipv6.as_ref().and_then(|v6| v6.node_ip).map(|ip| ip.to_string()).unwrap_or_default(),
        instance_id: node.id.instance_id.clone(),
        region: node.id.region.clone(),
    }
}

/// The guard's datapath, loaded with its maps pinned under --pin-dir (a predecessor's reused),
/// or, with ENIGUARD_GUARD_MODE=off, a predecessor's removed.
fn load_guard(cfg: &Config, paths: &HostPaths) -> Result<Option<Arc<LiveGuard>>> {
    if cfg.guard_mode == GuardMode::Off {
        if LiveGuard::remove_leftover(&paths.pin_dir)? {
            log::info!(
                "guard off: the datapath a previous agent left under {} removed",
                paths.pin_dir.display()
            );
        }
        return Ok(None);
    }
    let live = LiveGuard::load(&paths.pin_dir, Capacity::default())
        .with_context(|| format!("loading the egress guard (maps under {})", paths.pin_dir.display()))?;
    log::info!(
        "guard loaded ({:?} mode), maps under {}",
        cfg.guard_mode,
        paths.pin_dir.join("maps").display()
    );
    Ok(Some(live))
}

/// Ready means reachable: the plugin and the conflist go in only now (and stay when the agent
/// stops). A failure leaves the node not Ready, which the log and /readyz say.
async fn install_plugin(node: &Arc<Shared>, paths: &HostPaths) {
    let (cfg, paths) = (node.cfg.clone(), paths.clone());
    let sockets = cni::install::Sockets {
        agent: paths.run_dir.join(cni::api::SOCKET_NAME),
        aws_node_run_dir: paths.aws_node_run_dir.clone(),
    };
    let done = tokio::task::spawn_blocking(move || {
        cni::install::install(&cfg, &paths.cni_bin_dir, &paths.cni_conf_dir, &sockets)
    })
    .await;
    match done {
        Ok(Ok(i)) => {
            log::info!(
                "CNI plugin installed: {} and {} (cniVersion {}{}{}{})",
                i.plugin.display(),
                i.conflist.display(),
                i.cni_version,
                if i.portmap { ", chained with portmap" } else { "; no portmap in the bin dir, not chained" },
                if i.bandwidth { ", chained with bandwidth" } else { "" },
                if i.tuning { ", chained with tuning (DISABLE_POD_V6)" } else { "" }
            );
            if let Some(aside) = i.shelved {
                log::warn!("aws-node's conflist would shadow eniguard's: renamed to {}", aside.display());
            }
        }
        Ok(Err(e)) => {
            log::error!("{e}");
            node.board.update(|s| s.problem = Some(e.to_string()));
        }
        Err(e) => log::error!("installing the CNI plugin: {e}"),
    }
}

fn stopped(when: &str) -> Result<()> {
    log::info!(
        "stopped{}{when}; ENIs and addresses stay for the next agent",
        if when.is_empty() { "" } else { " " }
    );
    Ok(())
}
