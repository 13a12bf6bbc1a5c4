//! `eniguard audit`: the guard beside an existing aws-node (see `node::audit_mode`). Serves
//! metrics and introspection on ports that do not collide with aws-node's (61678/61679), starts,
//! then follows the node until SIGTERM, when it detaches everything it attached.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use eniguard::{
    cloud::calls::Calls,
    config::{Config, GuardMode},
    guard::{datapath::Capacity, live::LiveGuard},
    kube::client::Kube,
    net::eni::HostNet,
    node::{audit_mode, state::Board},
    observe::views::path,
    observe::{
        agent::VersionLabel,
        guard::{guard_state, GuardCollector, GuardSource},
        server::{self, Reply},
    },
};
use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

/// Audit mode's defaults: aws-node keeps 61678 (metrics) and 61679 (introspection).
pub const METRICS_ADDRESS: &str = ":61680";
pub const INTROSPECTION_ADDRESS: &str = "127.0.0.1:61681";

pub async fn run(mut cfg: Config, pin_dir: PathBuf) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // aws-node reads the same variables: its ports stay its own unless these are set explicitly.
    if std::env::var_os("METRICS_BIND_ADDRESS").is_none() {
        cfg.metrics_bind_address = METRICS_ADDRESS.into();
    }
    if std::env::var_os("INTROSPECTION_BIND_ADDRESS").is_none() {
        cfg.introspection_bind_address = INTROSPECTION_ADDRESS.into();
    }
    if cfg.guard_mode == GuardMode::Enforce {
        log::warn!(
            "ENIGUARD_GUARD_MODE=enforce is ignored in audit mode: beside aws-node the guard only reports"
        );
    }
    let calls = Calls::default();
    let board = Arc::new(Board::default());
    let guard = LiveGuard::load(&pin_dir, Capacity::default())
        .with_context(|| format!("loading the egress guard (maps under {})", pin_dir.display()))?;
    let ready = Gauge::<i64>::default();
    if !cfg.disable_metrics {
        let mut registry = Registry::with_prefix("eniguard");
        let info = Family::<VersionLabel, Gauge>::default();
        info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        registry.register("build_info", "eniguard's version", info);
        registry.register("ready", "1 once audit mode judges the node's pods", ready.clone());
        registry.register(
            "aws_api_calls",
            "Calls to EC2 and IMDS by service, action and result",
            calls.family.clone(),
        );
        registry.register_collector(Box::new(GuardCollector(GuardSource::Live(guard.clone()))));
        let listener = server::bind(&cfg.metrics_bind_address).await?;
        log::info!("metrics on {listener}");
        tokio::spawn(server::serve_metrics(listener, registry, |_| Reply::text(404, "not found\n")));
    }
    if !cfg.disable_introspection {
        let listener = server::bind(&cfg.introspection_bind_address).await?;
        log::info!("health and introspection on {listener}");
        let (board, guard) = (board.clone(), guard.clone());
        tokio::spawn(server::serve(listener, move |path| {
            let status = board.get();
            match path {
                "/healthz" => Reply::text(200, "ok\n"),
                "/readyz" if status.ready => Reply::text(200, "ready\n"),
                "/readyz" => Reply::text(503, format!("not ready: {}\n", status.step)),
                path::STATUS => Reply::json(&eniguard::observe::views::StatusView {
                    mode: Some("audit".into()),
                    step: status.step,
                    ready: status.ready,
                    refused: None,
                    problem: None,
                }),
                path::GUARD => Reply::json(&guard_state(Some(&guard))),
                path::EVENTS => Reply::json(&json!(guard.recent())),
                "/" => Reply::text(
                    200,
                    format!("/healthz\n/readyz\n{}\n{}\n{}\n", path::STATUS, path::GUARD, path::EVENTS),
                ),
                _ => Reply::text(404, "not found\n"),
            }
        }));
    }
    let kube = Kube::new(cfg.cluster_endpoint.as_deref()).await?;
    let start = audit_mode::start(cfg, calls, kube, HostNet::open()?, board.clone(), guard.clone());
    let observed = tokio::select! {
        o = start => o?,
        _ = term.recv() => return stop(&guard),
        _ = int.recv() => return stop(&guard),
    };
    board.update(|s| {
        s.step = "ready".into();
        s.ready = true;
    });
    ready.set(1);
    let findings = guard.findings().len();
    println!(
        "ready: audit of node {} ({}), {} pods judged, {findings} findings",
        observed.cfg.node_name.clone().unwrap_or_default(),
        observed.id.instance_type,
        guard.applied().map_or(0, |d| d.spec.pods.len()),
    );
    let follow = tokio::spawn(audit_mode::run(observed));
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    follow.abort();
    stop(&guard)
}

/// Detaches everything audit mode attached (nothing of aws-node's is touched).
fn stop(guard: &LiveGuard) -> Result<()> {
    guard.remove()?;
    log::info!("audit stopped; the guard's programs are detached");
    Ok(())
}
