//! The loops that run once the node has started, each a task with one job, and their cadences.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{audit, gc, pods, pool, reconcile, state::Shared};

/// Runs the loops until the returned handles are aborted (SIGTERM): each is a task with one job.
/// Stopping them leaves every ENI and address in place; the next agent adopts them.
pub fn run(shared: Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(security_group_audit(shared.clone())),
        tokio::spawn(pods::watch(shared.clone())),
        tokio::spawn(gc::run(shared.clone())),
    ];
    // IPv6 mode has one /80 and no pool to keep, and (as upstream) no leaked-ENI sweep.
    let ipv6 = shared.ipv6.is_some();
    if !ipv6 {
        tasks.push(tokio::spawn(pool_and_reconcile(shared.clone())));
    } else if shared.cfg.pod_eni {
        tasks.push(tokio::spawn(await_trunk(shared.clone())));
    }
    if let Some(live) = shared.guard.clone() {
        tasks.push(tokio::spawn(super::guard_feed::run(shared.clone(), live)));
    }
    if !shared.cfg.disable_leaked_eni_cleanup && !ipv6 {
        tasks.push(tokio::spawn(leak_sweep(shared)));
    }
    tasks
}

/// Upstream alternates the two on one goroutine (pool, 2.5 s, reconcile, 2.5 s): one task here
/// too, so that a new ENI is never adopted by both.
async fn pool_and_reconcile(shared: Arc<Shared>) {
    let mut state = pool::PoolState::default();
    let mut last_reconcile = Instant::now();
    loop {
        tokio::time::sleep(pool::POOL_INTERVAL / 2).await;
        loop {
            match pool::tick(&shared, &mut state).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    log::warn!("pool: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(pool::POOL_INTERVAL / 2).await;
        // While a trunk is awaited (security groups for pods signalled), every tick looks.
        let awaiting_trunk =
            shared.pool().pod_eni && shared.limits.trunking_compatible && shared.trunk().is_none();
        let quiet = state.last_action.is_none_or(|t| t.elapsed() >= reconcile::RECONCILE_INTERVAL);
        if awaiting_trunk || (quiet && last_reconcile.elapsed() >= reconcile::RECONCILE_INTERVAL) {
            last_reconcile = Instant::now();
            let result = {
                let _busy = shared.metrics.upstream.in_progress(RECONCILE_FN);
                reconcile::reconcile(&shared).await
            };
            let reconciles = &shared.metrics.upstream.reconciles;
            reconciles.get_or_create(&crate::cloud::calls::FnLabel { r#fn: RECONCILE_FN.into() }).inc();
            let label = crate::observe::agent::ResultLabel {
                result: if result.is_ok() { "ok" } else { "error" }.into(),
            };
            shared.metrics.reconciles.get_or_create(&label).inc();
            if let Err(e) = result {
                log::warn!("reconcile: {e}");
            }
        }
    }
}

/// IPv6 mode with security groups for pods: looks for the trunk at the pool's cadence until it
/// is adopted (upstream's IPv6 mode waits for it and manages nothing else).
async fn await_trunk(shared: Arc<Shared>) {
    let mut passed = std::collections::BTreeSet::new();
    loop {
        match super::ipv6::adopt_trunk(&shared, &mut passed).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => log::warn!("the trunk: {e}"),
        }
        tokio::time::sleep(pool::POOL_INTERVAL).await;
    }
}

async fn security_group_audit(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.cfg.sg_audit_interval).await;
        audit::refresh_security_groups(&shared).await;
    }
}

async fn leak_sweep(shared: Arc<Shared>) {
    tokio::time::sleep(jitter(audit::LEAK_SWEEP_JITTER)).await;
    loop {
        audit::sweep_leaked(&shared).await;
        tokio::time::sleep(audit::LEAK_SWEEP_INTERVAL).await;
    }
}

/// A random duration below `max`.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    Duration::from_millis(r % u64::try_from(max.as_millis()).unwrap_or(1).max(1))
}

/// Upstream's name for the reconcile pass (awscni_reconcile_count, awscni_ipamd_action_inprogress).
const RECONCILE_FN: &str = "nodeIPPoolReconcile";
