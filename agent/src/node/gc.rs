//! Garbage collection of addresses whose pod is gone: a DEL the runtime never sent (the agent
//! was down and the plugin tore down from prevResult, upstream #2350; a node that lost its
//! runtime state). An allocation is released — and then cools down like any other — when its pod
//! has been absent from the node's synced pod watch on two scans at least IP_COOLDOWN_PERIOD
//! apart, and the allocation is at least that old (a pod that was just scheduled may not be in
//! the watch yet). Allocations without a pod name are never touched: nothing else is collected.
//! The host rules and route the plugin made for the address go with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use crate::{
    cni::queue,
    ipam::model::{AllocKey, Allocation, UnixNanos},
};

use super::{owner::now, state::Shared};

/// How often allocations are compared with the pod watch (in-memory; cheap at 250 pods).
pub const POD_GC_INTERVAL: Duration = Duration::from_secs(5);

/// Which allocations to release now (pure). `absent_since` is the scan state: when each key was
/// first seen without its pod; it is updated in place.
pub fn collect<A>(
    allocations: &[Allocation<A>],
    pods: &BTreeSet<(String, String)>,
    absent_since: &mut BTreeMap<AllocKey, UnixNanos>,
    now: UnixNanos,
    grace: Duration,
) -> Vec<AllocKey> {
    let grace = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
    let old_enough = |t: UnixNanos| now.saturating_sub(t) >= grace;
    let orphans: BTreeSet<&AllocKey> = allocations
        .iter()
        .filter(|a| !a.pod.name.is_empty())
        .filter(|a| !pods.contains(&(a.pod.namespace.clone(), a.pod.name.clone())))
        .map(|a| &a.key)
        .collect();
    absent_since.retain(|k, _| orphans.contains(k));
    let mut due = Vec::new();
    for a in allocations.iter().filter(|a| orphans.contains(&a.key)) {
        let since = *absent_since.entry(a.key.clone()).or_insert(now);
        if old_enough(since) && old_enough(a.allocated_at) {
            due.push(a.key.clone());
        }
    }
    due
}

/// Releases what the plugin queued while the agent could not answer (see [`crate::cni::queue`]):
/// an allocation made before the DEL was queued goes; the entry goes either way.
pub async fn drain_queue(shared: &Shared) {
    let dir = shared.run_dir.join(queue::QUEUE_DIR);
    let pending = queue::pending(&dir);
    if pending.is_empty() {
        return;
    }
    let entries: Vec<(AllocKey, u64)> = pending
        .iter()
        .map(|(_, q)| {
            let r = &q.request;
            (
                AllocKey {
                    network_name: r.network_name.clone(),
                    container_id: r.container_id.clone(),
                    if_name: r.if_name.clone(),
                },
                q.queued_at,
            )
        })
        .collect();
    let released = release(shared, entries, "queued DEL").await;
    for (path, _) in pending {
        let _ = std::fs::remove_file(path);
    }
    if !released.is_empty() {
        super::pool::update_gauges(shared).await;
    }
}

/// Releases each key whose allocation was made no later than its bound, in one datastore section
/// (each checkpointed), then removes their host rules outside it; returns what was released.
async fn release(
    shared: &Shared,
    keys: Vec<(AllocKey, UnixNanos)>,
    why: &'static str,
) -> Vec<Allocation<IpAddr>> {
    let released = shared
        .owner
        .with(move |ipam| {
            let mut out = Vec::new();
            for (key, bound) in &keys {
                if ipam.allocation(key).is_none_or(|a| a.allocated_at > *bound) {
                    continue;
                }
                match ipam.release(key, now()) {
                    Ok(Some(a)) => out.push(a),
                    Ok(None) => {}
                    Err(e) => log::warn!("{why}: releasing {key:?}: {e}"),
                }
            }
            out
        })
        .await;
    for a in &released {
        log::info!("{why}: released {} ({}/{})", a.ip, a.pod.namespace, a.pod.name);
        if let Err(e) = shared.clients.net.teardown_pod(a.ip).await {
            log::warn!("{why}: host rules of {}: {e}", a.ip);
        }
    }
    if !released.is_empty() {
        shared.guard_changed();
    }
    released
}

/// Runs until the task is dropped: the DEL queue, then the pods that are gone, every interval.
pub async fn run(shared: Arc<Shared>) {
    let mut absent_since = BTreeMap::new();
    loop {
        tokio::time::sleep(POD_GC_INTERVAL).await;
        drain_queue(&shared).await;
        let Some(pods) = shared.synced_pods() else { continue };
        let pods: BTreeSet<(String, String)> = pods.into_keys().collect();
        let allocations = shared.owner.peek(|ipam| ipam.allocations());
        let due = collect(&allocations, &pods, &mut absent_since, now(), shared.cfg.ip_cooldown);
        if due.is_empty() {
            continue;
        }
        let due = due.into_iter().map(|k| (k, UnixNanos::MAX)).collect();
        let released = release(&shared, due, "pod GC: gone from the node").await;
        for a in &released {
            absent_since.remove(&a.key);
        }
        shared.metrics.pod_gc_released.inc_by(released.len() as u64);
        super::pool::update_gauges(&shared).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::model::PodRef;

    fn alloc(cid: &str, pod: &str, at: u64) -> Allocation {
        Allocation {
            key: AllocKey {
                network_name: "aws-cni".into(),
                container_id: cid.into(),
                if_name: "eth0".into(),
            },
            ip: "10.0.0.9".parse().unwrap(),
            pod: PodRef { namespace: "default".into(), name: pod.into() },
            allocated_at: at,
        }
    }

    #[test]
    fn only_pods_gone_for_the_grace_on_two_scans_are_collected() {
        let s = 1_000_000_000u64;
        let grace = Duration::from_secs(30);
        let allocations =
            vec![alloc("a", "here", 0), alloc("b", "gone", 0), alloc("c", "", 0), alloc("d", "new", 100 * s)];
        let pods: BTreeSet<_> = [("default".to_owned(), "here".to_owned())].into();
        let mut absent = BTreeMap::new();
        // First scan: "gone" and "new" are noticed, nothing released yet.
        assert!(collect(&allocations, &pods, &mut absent, 100 * s, grace).is_empty());
        assert_eq!(absent.len(), 2);
        // 30 s later: "gone" goes; "new" is only 30 s old... and absent for 30 s: goes too.
        let due = collect(&allocations, &pods, &mut absent, 129 * s, grace);
        assert!(due.is_empty(), "{due:?}");
        let due = collect(&allocations, &pods, &mut absent, 130 * s, grace);
        assert_eq!(due.iter().map(|k| k.container_id.as_str()).collect::<Vec<_>>(), ["b", "d"]);
        // A pod that comes back (the watch caught up) is forgotten.
        let pods: BTreeSet<_> =
            [("default".to_owned(), "here".to_owned()), ("default".to_owned(), "new".to_owned())].into();
        let _ = collect(&allocations, &pods, &mut absent, 131 * s, grace);
        assert!(!absent.keys().any(|k| k.container_id == "d"));
    }
}
