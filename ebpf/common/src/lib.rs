//! Types shared by eniguard's eBPF programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into maps, the agent reads
//! it back (with the `user` feature, which implements `aya::Pod`). A layout change must bump the
//! version suffix of the map names that carry the type, so that a restarted agent never reuses a
//! pinned map of the old layout.
#![no_std]

pub mod guard;

/// Per-CPU packet and byte counter of the pipeline-proof classifier (`tc_count`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// Name of the map (and of its pin file) that holds [`PacketCounter`] at index 0.
pub const TC_COUNTER_MAP: &str = "TC_COUNTER_V1";

/// Name of the pipeline-proof TC classifier in the eBPF object.
pub const TC_COUNT_PROGRAM: &str = "tc_count";

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers, no padding, any bit pattern is valid.
    unsafe impl aya::Pod for super::PacketCounter {}
}
