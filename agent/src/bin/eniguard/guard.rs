//! `eniguard guard --intent FILE`: the egress guard driven by an intent file.
//!
//! Order: validate the file, check its interfaces exist (nothing touched yet), load and program
//! the datapath, attach, then serve events, metrics and SIGHUP reloads until SIGTERM/SIGINT.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{anyhow, Context as _, Result};
use eniguard::{
    guard::{
        attach::AttachMode,
        datapath::{resolve, resolve_present, Capacity, Guard},
        events::RecentEvents,
        live::{read_events, RECENT_EVENTS},
        pins::PinDir,
        spec::{Spec, ValidSpec},
    },
    net::links::LinkWatch,
    observe::{
        guard::{GuardCollector, GuardSource},
        server::{self, Reply},
    },
};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

pub struct Args {
    pub intent: PathBuf,
    pub metrics_addr: Option<String>,
    pub attach: AttachMode,
    pub pin_dir: PathBuf,
    pub keep_datapath: bool,
    /// Map capacity in pods (None: the object's default).
    pub max_pods: Option<u32>,
}

pub async fn run(args: Args) -> Result<()> {
    let mut spec = Spec::from_file(&args.intent)?;
    let resolved = resolve(spec.clone())?;
    let listener = match &args.metrics_addr {
        Some(addr) => Some(server::bind(addr).await?),
        None => None,
    };
    let capacity = args.max_pods.map_or_else(Capacity::default, Capacity::for_max_pods);
    let mut guard = Guard::load(PinDir::new(&args.pin_dir), args.attach, capacity)?;
    if let Err(e) = guard.apply(&resolved) {
        // A predecessor's datapath (--keep-datapath) keeps checking traffic as it did.
        guard.abandon_start()?;
        return Err(e.into());
    }
    let mut ring = guard.take_events()?;
    // Events queued before this run carry a predecessor's pod ids: they cannot be named.
    while ring.next().is_some() {}
    // Signal handlers before the readiness line: a SIGTERM right after it must stop us cleanly.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    println!(
        "ready: guard attached ({}), maps under {}",
        guard.attach_mode(),
        args.pin_dir.join("maps").display()
    );
    let guard = Arc::new(Mutex::new(guard));
    let recent = Arc::new(Mutex::new(RecentEvents::new(RECENT_EVENTS)));

    let events_task = tokio::spawn(read_events(ring, guard.clone(), recent.clone()));
    if let Some(listener) = listener {
        let mut registry = Registry::with_prefix("eniguard");
        registry.register_collector(Box::new(GuardCollector(GuardSource::Standalone(guard.clone()))));
        let recent = recent.clone();
        tokio::spawn(server::serve_metrics(listener, registry, move |path| respond(path, &recent)));
    }

    let mut links = LinkWatch::new()?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Some(new) = reload(&args.intent, &guard) {
                    spec = new;
                }
            }
            // A burst (veth pair creation, rename, up) is one batch once it settled.
            events = links.next_settled(std::time::Duration::from_millis(50)) => {
                let resolved = resolve_present(spec.clone());
                let relevant = events?.iter().any(|e| e.name().is_empty() || resolved.watches(e.name()));
                if relevant {
                    if let Err(e) = guard.lock().map_err(|_| anyhow!("guard lock poisoned"))?.apply(&resolved) {
                        log::error!("re-attaching after a link change: {e}");
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    events_task.abort();
    guard.lock().map_err(|_| anyhow!("guard lock poisoned"))?.shutdown(args.keep_datapath)?;
    log::info!("guard stopped ({})", if args.keep_datapath { "datapath kept" } else { "datapath removed" });
    Ok(())
}

/// Re-reads the intent file and returns it once applied; an invalid file is reported and the
/// running state kept.
fn reload(path: &std::path::Path, guard: &Mutex<Guard>) -> Option<ValidSpec> {
    let result = Spec::from_file(path).map_err(anyhow::Error::from).and_then(|spec| {
        let resolved = resolve(spec.clone())?;
        let mut guard = guard.lock().map_err(|_| anyhow!("guard lock poisoned"))?;
        guard.apply(&resolved).context("applying the new intent")?;
        Ok(spec)
    });
    match result {
        Ok(spec) => {
            log::info!("reloaded {}", path.display());
            Some(spec)
        }
        Err(e) => {
            log::error!("reload of {} failed, keeping the previous intent: {e:#}", path.display());
            None
        }
    }
}

fn respond(path: &str, recent: &Mutex<RecentEvents>) -> Reply {
    match path {
        "/v1/events" => {
            let Ok(recent) = recent.lock() else {
                return Reply::text(500, "events lock poisoned\n");
            };
            let list: Vec<_> = recent.iter().collect();
            Reply::ok("application/json", serde_json::to_string(&list).unwrap_or_default())
        }
        _ => Reply::text(404, "not found\n"),
    }
}
