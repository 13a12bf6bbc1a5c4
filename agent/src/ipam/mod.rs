//! IPAM core: the datastore of ENIs, addresses and allocations, and its crash-safe checkpoint.
//! Pure apart from the checkpoint file; the control plane drives it and executes what it decides.

pub mod checkpoint;
pub mod datastore;
pub mod model;
pub mod policy;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

use checkpoint::{Checkpoint, CheckpointError};
use datastore::{Datastore, DatastoreError};
use model::{AllocKey, Allocation, PodRef, UnixNanos};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// The change was rolled back: memory and file still agree.
    #[error("checkpoint not written, change rolled back: {0}")]
    Checkpoint(#[from] CheckpointError),
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

    /// Restores the checkpoint into a datastore whose ENIs and CIDRs were already imported.
    /// Returns the allocations dropped because their address no longer exists. A missing file is a
    /// fresh node; a broken one, or one with duplicates, is an error and nothing is changed.
    pub fn restore(&mut self) -> Result<Vec<Allocation>, IpamError> {
        let Some(allocations) = self.checkpoint.read()? else { return Ok(Vec::new()) };
        let dropped = self.datastore.restore(allocations)?;
        if !dropped.is_empty() {
            self.checkpoint.write(&self.datastore.allocations())?;
        }
        Ok(dropped)
    }

    /// Assigns an address and persists it; on a failed write the assignment is undone.
    pub fn assign(&mut self, key: &AllocKey, pod: &PodRef, now: UnixNanos) -> Result<Allocation, IpamError> {
        if let Some(existing) = self.datastore.allocation(key) {
            return Ok(existing.clone());
        }
        let allocation = self.datastore.assign(key, pod, now)?;
        if let Err(e) = self.checkpoint.write(&self.datastore.allocations()) {
            self.datastore.unassign_rollback(key);
            return Err(e.into());
        }
        Ok(allocation)
    }

    /// Releases `key`'s address and persists it; on a failed write the release is undone.
    pub fn release(&mut self, key: &AllocKey, now: UnixNanos) -> Result<Option<Allocation>, IpamError> {
        let Some(released) = self.datastore.release(key, now) else { return Ok(None) };
        if let Err(e) = self.checkpoint.write(&self.datastore.allocations()) {
            self.datastore.release_rollback(released);
            return Err(e.into());
        }
        Ok(Some(released))
    }
}
