//! The egress guard's map keys, values and event record.
//!
//! Intent (what should be) is keyed by pod address; truth (what is) by (ifindex, VLAN). ENI ids,
//! security-group sets and pods are interned by the agent to small integers: the kernel compares
//! integers only. Id 0 means "none/unknown" in every id space.

/// Address family values in [`AddrKey::family`].
pub const FAMILY_IPV4: u32 = 4;
pub const FAMILY_IPV6: u32 = 6;

/// A pod address, bytes in network order (bpftool prints IPv4 as `[10,0,1,10,0,…]`). IPv4 uses
/// the first 4 bytes, the rest 0; IPv6 uses all 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub family: u32,
    pub addr: [u8; 16],
}

/// Per-pod verdict mode. `Inherit` follows the node mode in [`GuardConfig`].
pub const MODE_INHERIT: u32 = 0;
pub const MODE_MONITOR: u32 = 1;
pub const MODE_ENFORCE: u32 = 2;

/// Up to this many (interface, VLAN) exits are precomputed as correct for one pod.
pub const ALLOWED_EXITS: usize = 4;

/// Intent for one pod address (IPv4 or IPv6): where its packets must leave the node.
///
/// `allowed` lists the truth keys whose truth already matches this intent, precomputed by the agent
/// whenever either side changes: a packet leaving through one of them passes after one lookup. Any
/// other exit is judged in full against the truth map, which stays authoritative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodIntent {
    pub pod_id: u32,
    pub eni_id: u32,
    pub sg_set_id: u32,
    /// Expected 802.1Q VLAN id; 0 = untagged.
    pub vlan: u32,
    /// MODE_INHERIT, MODE_MONITOR or MODE_ENFORCE.
    pub mode: u32,
    /// Exits known to satisfy this intent; unused slots have ifindex 0 (never a real interface).
    pub allowed: [IfaceKey; ALLOWED_EXITS],
}

/// Truth key: the interface a packet leaves through and the VLAN tag it carries there (0 = none).
/// An 802.1Q sub-interface is keyed with vlan 0: its tag is added below it, and the value carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub ifindex: u32,
    pub vlan: u32,
}

/// Truth for one (interface, VLAN): the ENI behind it and that ENI's actual security groups.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceTruth {
    pub eni_id: u32,
    pub sg_set_id: u32,
    /// The VLAN of frames leaving here (for a sub-interface, the tag added below it).
    pub vlan: u32,
}

/// The pod behind a host-side veth: the only source address it may send from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethPod {
    pub pod_id: u32,
    pub mode: u32,
    pub addr: AddrKey,
}

/// Node-wide settings, index 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// MODE_MONITOR or MODE_ENFORCE.
    pub mode: u32,
    /// At most this many events per pod per second leave the kernel; the rest are counted.
    pub events_per_pod_per_sec: u32,
    /// Bumped by the agent before and after every change to intent or truth: a [`PassCache`]
    /// entry of another generation is void.
    pub generation: u32,
    /// 1: the programs remember the last passing (source, interface) per CPU; 0: every packet
    /// takes the map lookups (benchmarks compare the two).
    pub flow_cache: u32,
}

/// The last pod packet that passed on this CPU (slots 0 and 2: `guard_egress` for IPv4 and IPv6,
/// 1 and 3: `guard_pod`), and under which generation of the maps: the next packet of the same
/// source through the same exit (or from the same veth) passes without a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassCache {
    /// IPv4 source (slots 0 and 1).
    pub src: u32,
    pub ifindex: u32,
    pub vlan: u32,
    /// 0 never matches: the agent's generations start at 1.
    pub generation: u32,
    /// IPv6 source (slots 2 and 3).
    pub src6: [u8; 16],
}

/// Why a packet violates its intent. Values index the counter arrays.
pub const REASON_WRONG_ENI: u32 = 0;
pub const REASON_WRONG_VLAN: u32 = 1;
pub const REASON_SG_MISMATCH: u32 = 2;
pub const REASON_UNKNOWN_INTERFACE: u32 = 3;
/// An IPv4 or IPv6 packet or an ARP frame from a pod veth with a sender address that is not the
/// pod's (link-local IPv6, such as neighbour discovery, gets no verdict).
pub const REASON_SPOOFED_SOURCE: u32 = 4;
/// A frame from a pod veth the guard cannot judge: an ethertype other than IPv4, IPv6 and ARP,
/// or headers it cannot read. The rule: an enforced pod sends nothing the guard cannot judge, so
/// in enforce mode these are dropped; in monitor mode they are counted.
pub const REASON_UNJUDGED: u32 = 5;
pub const REASONS: usize = 6;
/// Label of each reason, indexed by its value (metrics, logs, CLI).
pub const REASON_NAMES: [&str; REASONS] =
    ["wrong_eni", "wrong_vlan", "sg_mismatch", "unknown_interface", "spoofed_source", "unjudged"];

/// What a frame from a pod veth carries. Values index [`GuardCounters::pod_frames`].
pub const KIND_IPV4: u32 = 0;
pub const KIND_ARP: u32 = 1;
pub const KIND_IPV6: u32 = 2;
pub const KIND_OTHER: u32 = 3;
/// Headers the guard could not read (a truncated frame).
pub const KIND_UNREADABLE: u32 = 4;
pub const KINDS: usize = 5;
pub const KIND_NAMES: [&str; KINDS] = ["ipv4", "arp", "ipv6", "other", "unreadable"];

/// Node-wide per-CPU counters (index 0), summed by the agent at scrape time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounters {
    /// Packets from a pod address checked against intent (egress programs).
    pub checked: u64,
    /// Packets from pod veths checked for their source address.
    pub checked_sources: u64,
    pub violations: [u64; REASONS],
    pub dropped: [u64; REASONS],
    /// Frames from pod veths by what they carry (KIND_*).
    pub pod_frames: [u64; KINDS],
    /// Events not delivered because the ring buffer was full.
    pub events_lost: u64,
    /// Events held back by the per-pod rate limit (the packets are still counted).
    pub events_rate_limited: u64,
}

/// Per-pod per-CPU violation counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounters {
    pub violations: [u64; REASONS],
    pub dropped: [u64; REASONS],
}

/// Per-pod event rate-limit window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub window_start_ns: u64,
    pub sent: u64,
}

/// A violation, as sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViolationEvent {
    pub timestamp_ns: u64,
    pub pod_id: u32,
    pub reason: u32,
    pub ifindex: u32,
    pub observed_vlan: u32,
    pub expected_vlan: u32,
    pub expected_eni_id: u32,
    pub actual_eni_id: u32,
    pub expected_sg_set_id: u32,
    pub actual_sg_set_id: u32,
    /// 1 when the packet was dropped (enforce), 0 when passed (monitor).
    pub dropped: u32,
    pub src: AddrKey,
    pub dst: AddrKey,
}

/// Map names; the suffix is the layout version (bump it when a type above or a map's flags
/// change).
/// IPv4 intent, keyed by the address bytes.
pub const INTENT_MAP: &str = "GUARD_INTENT4_V2";
/// IPv6 intent, keyed by the address bytes.
pub const INTENT6_MAP: &str = "GUARD_INTENT6_V1";
pub const TRUTH_MAP: &str = "GUARD_TRUTH_V1";
pub const VETH_MAP: &str = "GUARD_VETH_V2";
pub const CONFIG_MAP: &str = "GUARD_CONFIG_V2";
pub const PASS_CACHE_MAP: &str = "GUARD_PASS_CACHE_V2";
pub const COUNTERS_MAP: &str = "GUARD_COUNTERS_V2";
pub const POD_COUNTERS_MAP: &str = "GUARD_POD_COUNTERS_V2";
pub const RATE_MAP: &str = "GUARD_RATE_V1";
pub const EVENTS_MAP: &str = "GUARD_EVENTS_V1";
/// Every guard map, in pin order.
pub const GUARD_MAPS: [&str; 10] = [
    INTENT_MAP,
    INTENT6_MAP,
    TRUTH_MAP,
    VETH_MAP,
    CONFIG_MAP,
    COUNTERS_MAP,
    POD_COUNTERS_MAP,
    RATE_MAP,
    EVENTS_MAP,
    PASS_CACHE_MAP,
];

/// Default capacities in the object; the agent sets the real ones at load time from the node's
/// max pods (5.10 charges maps to memlock: keep them modest).
pub const MAX_PODS: u32 = 1024;
pub const MAX_IFACES: u32 = 512;
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Program names in the eBPF object.
pub const GUARD_EGRESS_PROGRAM: &str = "guard_egress";
pub const GUARD_POD_PROGRAM: &str = "guard_pod";

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all are #[repr(C)] structs of u32/u64 fields without implicit padding
    // (u64 fields come first or are 8-aligned by the u32 pairs before them).
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for PodIntent {}
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for IfaceTruth {}
    unsafe impl aya::Pod for VethPod {}
    unsafe impl aya::Pod for GuardConfig {}
    unsafe impl aya::Pod for PassCache {}
    unsafe impl aya::Pod for GuardCounters {}
    unsafe impl aya::Pod for PodCounters {}
    unsafe impl aya::Pod for RateWindow {}
    unsafe impl aya::Pod for ViolationEvent {}
}
