//! IPAM core: the datastore of ENIs, addresses and allocations, and its crash-safe checkpoint.
//! Pure apart from the checkpoint file; the control plane drives it and executes what it decides.

pub mod checkpoint;
pub mod datastore;
pub mod model;
pub mod policy;
#[cfg(test)]
mod policy_tests;
pub mod pool6;
#[cfg(test)]
mod tests;

use checkpoint::{Checkpoint, CheckpointError, Contents};
use datastore::{Datastore, DatastoreError, Restored};
use model::{AllocKey, Allocation, PodRef, UnixNanos};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// The change was rolled back in memory. The file holds the old content, unless only the
    /// directory's fsync failed after the rename (then it may already hold the new one).
    #[error("checkpoint not written, change rolled back: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "the checkpoint holds {0} IPv6 allocations (an IPv6 node's): this agent runs IPv4 pods only, nothing restored"
    )]
    Ipv6Checkpoint(usize),
}

/// The datastore with every change written to the checkpoint before it is acknowledged.
#[derive(Debug)]
pub struct Ipam {
    pub datastore: Datastore,
    checkpoint: Checkpoint,
}

impl Ipam {
    pub fn new(datastore: Datastore, checkpoint: Checkpoint) -> Self {
        Self { datastore, checkpoint }
    }

    /// Restores the checkpoint into a datastore whose ENIs and CIDRs were already imported: the
    /// allocations (see [`Restored`]: vanished addresses dropped, addresses on excluded ENIs kept
    /// as findings) and the addresses still cooling down. A missing file is a fresh node; a broken
    /// one, or one with duplicates, is an error and nothing is changed.
    pub fn restore(&mut self, now: UnixNanos) -> Result<Restored, IpamError> {
        let Some(contents) = self.checkpoint.read()? else { return Ok(Restored::default()) };
        if !contents.allocations6.is_empty() {
            return Err(IpamError::Ipv6Checkpoint(contents.allocations6.len()));
        }
        let restored = self.datastore.restore(contents.allocations)?;
        self.datastore.restore_cooling(&contents.cooling);
        if !restored.dropped.is_empty() {
            self.write(now)?;
        }
        Ok(restored)
    }

    fn write(&self, now: UnixNanos) -> Result<(), CheckpointError> {
        self.checkpoint.write(&Contents {
            allocations: self.datastore.allocations(),
            cooling: self.datastore.cooling(now),
            ..Contents::default()
        })
    }

    /// Assigns an address and persists it; on a failed write the assignment is undone.
    pub fn assign(&mut self, key: &AllocKey, pod: &PodRef, now: UnixNanos) -> Result<Allocation, IpamError> {
        if self.datastore.allocation(key).is_some() {
            // Idempotent: the same address again (or the refusal of one on an excluded ENI).
            return Ok(self.datastore.assign(key, pod, now)?);
        }
        let allocation = self.datastore.assign(key, pod, now)?;
        if let Err(e) = self.write(now) {
            self.datastore.unassign_rollback(key);
            return Err(e.into());
        }
        Ok(allocation)
    }

    /// Releases `key`'s address and persists it; on a failed write the release is undone.
    pub fn release(&mut self, key: &AllocKey, now: UnixNanos) -> Result<Option<Allocation>, IpamError> {
        let Some(released) = self.datastore.release(key, now) else { return Ok(None) };
        if let Err(e) = self.write(now) {
            self.datastore.release_rollback(released);
            return Err(e.into());
        }
        Ok(Some(released))
    }
}
