//! The one owner of the datastore. Every change runs in a short critical section on the blocking
//! pool (the checkpoint's fsync must not stall the async workers), and nothing inside it talks to
//! EC2, Kubernetes or netlink: callers decide under the lock, act outside it, and come back.

use std::sync::{Arc, Mutex};

pub use crate::ipam::model::now;

use crate::{ipam::Ipam, sync::lock};

#[derive(Clone, Debug)]
pub struct Owner {
    ipam: Arc<Mutex<Ipam>>,
}

impl Owner {
    pub fn new(ipam: Ipam) -> Self {
        Self { ipam: Arc::new(Mutex::new(ipam)) }
    }

    /// Runs `f` with the datastore held, off the async workers.
    pub async fn with<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&mut Ipam) -> T + Send + 'static,
    {
        let ipam = self.ipam.clone();
        let task = tokio::task::spawn_blocking(move || f(&mut lock(&ipam)));
        match task.await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Owner {
    /// Whether someone holds the datastore now (the unit tests' check that no cloud or cluster
    /// call is made under it).
    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        self.ipam.try_lock().is_err()
    }

    /// Reads the datastore for a moment on the calling thread (introspection; never while
    /// awaiting).
    pub fn peek<T>(&self, f: impl FnOnce(&Ipam) -> T) -> T {
        f(&lock(&self.ipam))
    }
}
