//! The guard as a running service: the loaded datapath behind one lock, its violation events read
//! from the ring buffer, and the bookkeeping that lets a caller (a CNI ADD) wait until the state
//! it changed is in the kernel maps. Who derives the spec and when is the node's business
//! (`node::guard_feed`); this module applies what it is given.
//!
//! Waiting: callers [`LiveGuard::request`] a sync and get a ticket; the feed applies the newest
//! state (covering every ticket issued before it read that state) and publishes the ticket it
//! covered with the outcome. A burst of ADDs thus shares one apply.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::sync::lock;
use aya::maps::{MapData, RingBuf};
use eniguard_common::guard::REASON_NAMES;
use tokio::{io::unix::AsyncFd, sync::Notify};

use super::{
    attach::AttachMode,
    datapath::{resolve_present, Capacity, Guard},
    derive::{Derived, Finding},
    events::{self, RecentEvents, Violation},
    pins::PinDir,
    GuardError,
};

/// Violations kept for `/v1/events`.
pub const RECENT_EVENTS: usize = 1024;

/// How long a caller waits for its state to reach the kernel before it gives up.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// One pod's violating packets by reason: (counted, dropped).
pub type PodVerdicts = BTreeMap<&'static str, (u64, u64)>;

/// The outcome of the newest apply: the ticket it covered and its error, if any.
#[derive(Clone, Debug, Default)]
struct Applied {
    ticket: u64,
    error: Option<Arc<GuardError>>,
}

pub struct LiveGuard {
    guard: Arc<Mutex<Guard>>,
    recent: Arc<Mutex<RecentEvents>>,
    /// The last derived state that was applied (for introspection) and its findings.
    applied_state: Mutex<Option<Derived>>,
    requested: AtomicU64,
    /// The next apply reads the maps back (see [`Self::request_reread`]).
    reread: AtomicBool,
    kick: Notify,
    done: tokio::sync::watch::Sender<Applied>,
}

impl std::fmt::Debug for LiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveGuard").field("requested", &self.requested).finish_non_exhaustive()
    }
}

impl LiveGuard {
    /// Loads the datapath (maps pinned under `pin_dir`, a predecessor's reused) and starts the
    /// event reader on the current runtime. Nothing is attached until the first apply.
    pub fn load(pin_dir: &Path, capacity: Capacity) -> Result<Arc<Self>, GuardError> {
        let mut guard = Guard::load(PinDir::new(pin_dir), AttachMode::Auto, capacity)?;
        let mut ring = guard.take_events()?;
        // Events queued before this run carry a predecessor's pod ids: they cannot be named.
        while ring.next().is_some() {}
        let live = Arc::new(Self {
            guard: Arc::new(Mutex::new(guard)),
            recent: Arc::new(Mutex::new(RecentEvents::new(RECENT_EVENTS))),
            applied_state: Mutex::new(None),
            requested: AtomicU64::new(0),
            reread: AtomicBool::new(false),
            kick: Notify::new(),
            done: tokio::sync::watch::Sender::new(Applied::default()),
        });
        tokio::spawn(read_events(ring, live.guard.clone(), live.recent.clone()));
        Ok(live)
    }

    /// Removes a datapath a predecessor left under `pin_dir` (the guard was turned off).
    pub fn remove_leftover(pin_dir: &Path) -> Result<bool, GuardError> {
        let pins = PinDir::new(pin_dir);
        if !pins.root().exists() {
            return Ok(false);
        }
        let mut guard = Guard::load(pins, AttachMode::Auto, Capacity::default())?;
        guard.shutdown(false)?;
        Ok(true)
    }

    /// Asks for a sync of everything changed so far; returns the ticket to wait for.
    pub fn request(&self) -> u64 {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.kick.notify_one();
        ticket
    }

    /// Asks for a sync that reads every map entry back rather than writing only what changed
    /// since the last apply (the periodic resync; an entry changed behind the agent's back is put
    /// right).
    pub fn request_reread(&self) -> u64 {
        self.reread.store(true, Ordering::SeqCst);
        self.request()
    }

    /// Asks for a sync and waits until the kernel holds the state as of now.
    pub async fn sync(&self) -> Result<(), GuardError> {
        let ticket = self.request();
        self.wait(ticket).await
    }

    async fn wait(&self, ticket: u64) -> Result<(), GuardError> {
        let mut rx = self.done.subscribe();
        let applied = tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|a| a.ticket >= ticket))
            .await
            .map_err(|_| GuardError::SyncTimeout(SYNC_TIMEOUT.as_secs()))?
            .map_err(|_| GuardError::FeedStopped)?
            .clone();
        match applied.error {
            None => Ok(()),
            Some(e) => Err(GuardError::Apply(e)),
        }
    }

    /// Waits for a request; returns the newest ticket, which the next apply covers.
    pub async fn requested(&self) -> u64 {
        self.kick.notified().await;
        self.requested.load(Ordering::SeqCst)
    }

    /// Makes the kernel hold `derived` (interfaces that do not exist yet are skipped until a link
    /// event), then publishes `ticket` as covered. Runs the syscalls on the blocking pool.
    pub async fn apply(&self, ticket: u64, derived: Derived) -> Result<(), GuardError> {
        let guard = self.guard.clone();
        let spec = derived.spec.clone();
        let reread = self.reread.swap(false, Ordering::SeqCst);
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = lock(&guard);
            if reread {
                guard.reread_next();
            }
            guard.apply(&resolve_present(spec))
        })
        .await
        .unwrap_or_else(|e| Err(GuardError::Task(e)));
        if result.is_ok() {
            *lock(&self.applied_state) = Some(derived);
        }
        let result = result.map_err(Arc::new);
        self.done.send_replace(Applied { ticket, error: result.as_ref().err().cloned() });
        result.map_err(GuardError::Apply)
    }

    /// Whether the state last applied names interface `name` (an ENI's, the trunk's, a VLAN's or
    /// a pod's host end).
    pub fn watches(&self, name: &str) -> bool {
        lock(&self.applied_state).as_ref().is_some_and(|d| {
            d.spec.interfaces.iter().any(|i| i.name == name)
                || d.spec.pods.iter().any(|p| p.pod.host_interface == name)
        })
    }

    /// The findings of the state last applied.
    pub fn findings(&self) -> Vec<Finding> {
        lock(&self.applied_state).as_ref().map(|d| d.findings.clone()).unwrap_or_default()
    }

    /// The state last applied.
    pub fn applied(&self) -> Option<Derived> {
        lock(&self.applied_state).clone()
    }

    /// Per pod with a violation: packets by reason, (violations, drops).
    pub fn pod_verdicts(&self) -> BTreeMap<(String, String), PodVerdicts> {
        let guard = lock(&self.guard);
        let Ok(stats) = guard.stats() else { return BTreeMap::new() };
        let mut out = BTreeMap::new();
        for (id, c) in &stats.pods {
            let Some(pod) = guard.names.pods.name(*id) else { continue };
            let by_reason: BTreeMap<&'static str, (u64, u64)> = REASON_NAMES
                .iter()
                .enumerate()
                .filter(|(r, _)| c.violations[*r] > 0 || c.dropped[*r] > 0)
                .map(|(r, name)| (*name, (c.violations[r], c.dropped[r])))
                .collect();
            out.insert(pod.clone(), by_reason);
        }
        out
    }

    /// The most recent violations, oldest first.
    pub fn recent(&self) -> Vec<Violation> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// The shared guard, for the metrics collector.
    pub fn guard(&self) -> Arc<Mutex<Guard>> {
        self.guard.clone()
    }

    /// Leaves the datapath attached and pinned: traffic stays checked until the next agent
    /// replaces the programs in place.
    pub fn keep(&self) -> Result<(), GuardError> {
        lock(&self.guard).shutdown(true)
    }

    /// Detaches every program and removes the pins.
    pub fn remove(&self) -> Result<(), GuardError> {
        lock(&self.guard).shutdown(false)
    }
}

/// Reads violations from the ring buffer until the task is dropped: each is named, logged as one
/// JSON line (target `eniguard::violation`) and kept in `recent`. Used by the agent and by the
/// standalone guard.
pub async fn read_events(
    ring: RingBuf<MapData>,
    guard: Arc<Mutex<Guard>>,
    recent: Arc<Mutex<RecentEvents>>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open until it is dropped with the AsyncFd.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    loop {
        let mut ready = fd.readable_mut().await?;
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(event) = events::decode(&item) else { continue };
            let v = events::name(&event, &lock(&guard).names);
            tracing::warn!(
                target: "eniguard::violation",
                namespace = %v.namespace,
                pod = %v.pod,
                reason = v.reason,
                verdict = v.verdict,
                src = %v.src,
                dst = %v.dst,
                ifindex = v.ifindex,
                observed_vlan = v.observed_vlan,
                expected_vlan = v.expected_vlan,
                expected_eni = %v.expected_eni,
                actual_eni = %v.actual_eni,
                expected_security_groups = %v.expected_security_groups.join(","),
                actual_security_groups = %v.actual_security_groups.join(","),
                "violation"
            );
            lock(&recent).push(v);
        }
        ready.clear_ready();
    }
}
