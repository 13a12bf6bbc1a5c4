//! The fabric follows the EC2 model on its own thread. A change to ENIs or attachments only
//! counts a generation and wakes the follower (under the simulator's lock, nothing else); the
//! follower copies the model (one short lock), and plugs, unplugs and rewrites rules from that
//! copy with no lock held, so no EC2, IMDS or Kubernetes request waits on `ip` and `nft` while the
//! simulator's lock is held. Changes that arrive while it syncs are coalesced into its next copy.
//!
//! Whoever made a change and must not answer before the fabric shows it (the EC2 API before its
//! reply, the Resource Controller before it annotates a pod) waits for that generation with
//! [`Change`], after releasing the lock.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    thread::JoinHandle,
};

use tokio::sync::watch;

use super::{ec2::Ec2, fabric::Fabric};

/// Reads the model: its generation and a copy of it, or None once the simulator is gone.
pub type Snapshot = Box<dyn Fn() -> Option<(u64, Ec2)> + Send>;

pub struct Follower {
    /// The newest generation a change asked for.
    wanted: Mutex<u64>,
    wake: Condvar,
    /// The newest generation the fabric shows (`u64::MAX` once stopped, so nobody waits forever).
    applied: watch::Sender<u64>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("applied", &*self.applied.borrow()).finish_non_exhaustive()
    }
}

impl Follower {
    /// Starts the follower thread; `applied` is the generation the fabric already shows.
    pub fn start(fabric: Arc<Fabric>, snapshot: Snapshot, applied: u64) -> std::io::Result<Arc<Self>> {
        let follower = Arc::new(Self {
            wanted: Mutex::new(applied),
            wake: Condvar::new(),
            applied: watch::Sender::new(applied),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let me = follower.clone();
        let thread = std::thread::Builder::new()
            .name("vpc-fabric".into())
            .spawn(move || me.run(&fabric, &snapshot))?;
        *follower.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(follower)
    }

    fn run(&self, fabric: &Fabric, snapshot: &Snapshot) {
        loop {
            {
                let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
                while *wanted <= *self.applied.borrow() && !self.stop.load(Ordering::Relaxed) {
                    wanted = self.wake.wait(wanted).unwrap_or_else(PoisonError::into_inner);
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some((generation, ec2)) = snapshot() else { break };
            if let Err(e) = fabric.sync(&ec2) {
                eprintln!("vpcsim fabric: {e:#}");
            }
            self.applied.send_replace(generation);
        }
        self.applied.send_replace(u64::MAX);
    }

    /// Asks for generation `generation` (called under the simulator's lock, which orders them).
    pub fn request(self: &Arc<Self>, generation: u64) -> Change {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        *wanted = (*wanted).max(generation);
        self.wake.notify_one();
        Change { follower: self.clone(), generation }
    }

    /// Stops the thread (before the fabric is torn down) and releases every waiter.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.wanted.lock().unwrap_or_else(PoisonError::into_inner));
        self.wake.notify_one();
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

/// One change the fabric was asked to follow.
#[must_use = "a change is shown by the fabric only once applied; drop it if nobody needs to wait"]
pub struct Change {
    follower: Arc<Follower>,
    generation: u64,
}

impl Change {
    /// Until the fabric shows this change.
    pub async fn applied(self) {
        let mut rx = self.follower.applied.subscribe();
        let _ = rx.wait_for(|g| *g >= self.generation).await;
    }

    /// The same, for a caller that is not async (the Resource Controller's step); the wait is
    /// one sync of the fabric at most.
    pub fn wait(self) {
        futures::executor::block_on(self.applied());
    }
}
