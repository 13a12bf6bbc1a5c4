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

use std::net::IpAddr;

use checkpoint::{Checkpoint, CheckpointError, Contents};
use datastore::{Datastore, DatastoreError, Restored};
use model::{AllocKey, Allocation, PodRef, UnixNanos};
use pool6::{Allocation6, Pool6, Pool6Error};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error(transparent)]
    Pool6(#[from] Pool6Error),
    /// The change was rolled back in memory. The file holds the old content, unless only the
    /// directory's fsync failed after the rename (then it may already hold the new one).
    #[error("checkpoint not written, change rolled back: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "the checkpoint holds {0} IPv6 allocations (an IPv6 node's): this agent runs IPv4 pods (ENABLE_IPv6 is false), nothing restored"
    )]
    Ipv6Checkpoint(usize),
    #[error(
        "the checkpoint holds {0} IPv4 allocations (an IPv4 node's): this agent runs IPv6 pods only (ENABLE_IPv6=true), nothing restored"
    )]
    Ipv4Checkpoint(usize),
    #[error("no IPv6 address to give: this agent runs IPv4 pods (ENABLE_IPv6 is false)")]
    NotIpv6,
}

/// The datastore (IPv4) or IPv6 mode's /80, with every change written to the checkpoint before
/// it is acknowledged. In IPv6 mode the datastore stays empty.
#[derive(Debug)]
pub struct Ipam {
    pub datastore: Datastore,
    /// IPv6 mode's pool (ENABLE_IPv6); None in IPv4 mode.
    pub pool6: Option<Pool6>,
    checkpoint: Checkpoint,
}

impl Ipam {
    pub fn new(datastore: Datastore, checkpoint: Checkpoint) -> Self {
        Self { datastore, pool6: None, checkpoint }
    }

    /// IPv6 mode: pods' addresses come from `pool6`.
    pub fn new6(datastore: Datastore, pool6: Pool6, checkpoint: Checkpoint) -> Self {
        Self { datastore, pool6: Some(pool6), checkpoint }
    }

    /// Restores the checkpoint into a datastore whose ENIs and CIDRs were already imported: the
    /// allocations (see [`Restored`]: vanished addresses dropped, addresses on excluded ENIs kept
    /// as findings) and the addresses still cooling down; in IPv6 mode into the /80 (those outside
    /// it dropped). A missing file is a fresh node; a broken one, one with duplicates or one of
    /// the other family is an error and nothing is changed.
    pub fn restore(&mut self, now: UnixNanos) -> Result<Restored, IpamError> {
        let Some(contents) = self.checkpoint.read()? else { return Ok(Restored::default()) };
        let restored = match &mut self.pool6 {
            None if !contents.allocations6.is_empty() => {
                return Err(IpamError::Ipv6Checkpoint(contents.allocations6.len()))
            }
            None => {
                let restored = self.datastore.restore(contents.allocations)?;
                self.datastore.restore_cooling(&contents.cooling);
                restored
            }
            Some(_) if !contents.allocations.is_empty() => {
                return Err(IpamError::Ipv4Checkpoint(contents.allocations.len()))
            }
            Some(pool) => {
                let dropped6 = pool.restore(contents.allocations6)?;
                pool.restore_cooling(&contents.cooling6);
                Restored { dropped6, ..Restored::default() }
            }
        };
        if !restored.dropped.is_empty() || !restored.dropped6.is_empty() {
            self.write(now)?;
        }
        Ok(restored)
    }

    fn write(&self, now: UnixNanos) -> Result<(), CheckpointError> {
        let (allocations6, cooling6) =
            self.pool6.as_ref().map(|p| (p.allocations(), p.cooling(now))).unwrap_or_default();
        self.checkpoint.write(&Contents {
            allocations: self.datastore.allocations(),
            cooling: self.datastore.cooling(now),
            allocations6,
            cooling6,
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

    /// IPv6 mode's [`Ipam::assign`]: a /128 from the /80.
    pub fn assign6(
        &mut self,
        key: &AllocKey,
        pod: &PodRef,
        now: UnixNanos,
    ) -> Result<Allocation6, IpamError> {
        let pool = self.pool6.as_mut().ok_or(IpamError::NotIpv6)?;
        if let Some(a) = pool.allocation(key) {
            return Ok(a.clone());
        }
        let allocation = pool.assign(key, pod, now)?;
        if let Err(e) = self.write(now) {
            if let Some(pool) = self.pool6.as_mut() {
                pool.unassign_rollback(key);
            }
            return Err(e.into());
        }
        Ok(allocation)
    }

    /// Releases `key`'s address, of either family, and persists it; on a failed write the
    /// release is undone.
    pub fn release(
        &mut self,
        key: &AllocKey,
        now: UnixNanos,
    ) -> Result<Option<Allocation<IpAddr>>, IpamError> {
        if let Some(released) = self.pool6.as_mut().and_then(|p| p.release(key, now)) {
            if let Err(e) = self.write(now) {
                if let Some(pool) = self.pool6.as_mut() {
                    pool.release_rollback(released);
                }
                return Err(e.into());
            }
            return Ok(Some(released.widen()));
        }
        let Some(released) = self.datastore.release(key, now) else { return Ok(None) };
        if let Err(e) = self.write(now) {
            self.datastore.release_rollback(released);
            return Err(e.into());
        }
        Ok(Some(released.widen()))
    }

    /// Every allocation, of either family.
    pub fn allocations(&self) -> Vec<Allocation<IpAddr>> {
        let v6 = self.pool6.iter().flat_map(Pool6::allocations).map(Allocation::widen);
        self.datastore.allocations().into_iter().map(Allocation::widen).chain(v6).collect()
    }

    /// `key`'s allocation, of either family.
    pub fn allocation(&self, key: &AllocKey) -> Option<Allocation<IpAddr>> {
        let v6 = self.pool6.as_ref().and_then(|p| p.allocation(key)).cloned().map(Allocation::widen);
        v6.or_else(|| self.datastore.allocation(key).cloned().map(Allocation::widen))
    }

    pub fn allocation_count(&self) -> usize {
        self.datastore.allocation_count() + self.pool6.as_ref().map_or(0, Pool6::allocation_count)
    }

    /// Addresses that could go to a new pod now (IPv6 mode: the /80's, counted up to `u32::MAX`).
    pub fn available(&self, now: UnixNanos) -> u32 {
        match &self.pool6 {
            Some(pool) => pool.available(now),
            None => self.datastore.stats(now).available(),
        }
    }
}
