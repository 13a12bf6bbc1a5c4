//! The egress guard: per packet, does a pod's traffic leave through the ENI, VLAN and
//! security-group set its intent says?
//!
//! - `guard_pod` runs on a pod's host-side veth (TC ingress: traffic coming from the pod) and checks
//!   that the pod sends only from its own address (`spoofed_source`).
//! - `guard_egress` runs on ENI interfaces, the trunk and branch VLAN sub-interfaces (TC egress):
//!   for a packet whose source is a pod address it compares intent (pod address → ENI, VLAN, SG
//!   set) with truth ((ifindex, VLAN) → ENI, actual SG set).
//!
//! A violation is counted (node-wide and per pod, per reason), reported through the ring buffer
//! (rate-limited per pod), and in enforce mode dropped. Nothing is logged per packet.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    helpers::bpf_ktime_get_ns,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use eniguard_common::guard::*;

#[btf_map]
static GUARD_INTENT4_V1: HashMap<[u8; 4], PodIntent, { MAX_PODS as usize }> = HashMap::new();
#[btf_map]
static GUARD_TRUTH_V1: HashMap<IfaceKey, IfaceTruth, { MAX_IFACES as usize }> = HashMap::new();
#[btf_map]
static GUARD_VETH_V1: HashMap<u32, VethPod, { MAX_PODS as usize }> = HashMap::new();
#[btf_map]
static GUARD_CONFIG_V1: Array<GuardConfig, 1> = Array::new();
#[btf_map]
static GUARD_COUNTERS_V1: PerCpuArray<GuardCounters, 1> = PerCpuArray::new();
#[btf_map]
static GUARD_POD_COUNTERS_V1: PerCpuHashMap<u32, PodCounters, { MAX_PODS as usize }> = PerCpuHashMap::new();
#[btf_map]
static GUARD_RATE_V1: HashMap<u32, RateWindow, { MAX_PODS as usize }> = HashMap::new();
#[btf_map]
static GUARD_EVENTS_V1: RingBuf<ViolationEvent, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_VID_MASK: u32 = 0x0fff;
const NS_PER_SEC: u64 = 1_000_000_000;

/// What the guard needs from a packet.
struct Packet {
    src: u32,
    dst: u32,
    /// VLAN id from skb metadata or the first in-band 802.1Q/802.1ad tag; 0 = untagged.
    vlan: u32,
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; packet data may be unaligned.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

/// Parses Ethernet, up to two VLAN tags, and IPv4 addresses. `None` for anything else (ignored).
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    // SAFETY: the context pointer is valid for the whole program run.
    let skb = unsafe { &*ctx.skb.skb };
    let mut vlan = if skb.vlan_present != 0 { skb.vlan_tci & VLAN_VID_MASK } else { 0 };
    let mut proto = u16::from_be(load::<u16>(ctx, 12)?);
    let mut offset = ETH_HLEN;
    // In-band tags: 802.1ad outer + 802.1Q inner at most. The outermost tag is the VLAN.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let tci = u32::from(u16::from_be(load::<u16>(ctx, offset)?));
        if vlan == 0 {
            vlan = tci & VLAN_VID_MASK;
        }
        proto = u16::from_be(load::<u16>(ctx, offset + 2)?);
        offset += 4;
        if proto == ETH_P_8021Q {
            proto = u16::from_be(load::<u16>(ctx, offset + 2)?);
            offset += 4;
        }
    }
    if proto != ETH_P_IP {
        return None;
    }
    Some(Packet { src: load::<u32>(ctx, offset + 12)?, dst: load::<u32>(ctx, offset + 16)?, vlan })
}

#[inline(always)]
fn ipv4_key(addr: u32) -> AddrKey {
    let [a, b, c, d] = addr.to_ne_bytes(); // as read from the packet: network order in memory
    AddrKey { family: FAMILY_IPV4, addr: [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }
}

#[inline(always)]
fn counters() -> Option<&'static mut GuardCounters> {
    // SAFETY: per-CPU slot; a TC program is not re-entered on the same CPU.
    GUARD_COUNTERS_V1.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn node_mode() -> u32 {
    GUARD_CONFIG_V1.get(0).map_or(MODE_MONITOR, |c| c.mode)
}

#[classifier]
pub fn guard_egress(ctx: TcContext) -> i32 {
    let Some(pkt) = parse(&ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: userspace replaces entries whole (a hash update swaps elements under RCU), so the
    // reference stays valid and consistent for this run.
    let Some(intent) = (unsafe { GUARD_INTENT4_V1.get(pkt.src.to_ne_bytes()) }) else {
        return TC_ACT_OK; // not a pod address: not ours to judge
    };
    if let Some(c) = counters() {
        c.checked += 1;
    }
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Fast path: an exit the agent already matched against truth for this pod.
    let here = IfaceKey { ifindex, vlan: pkt.vlan };
    if intent.allowed.contains(&here) {
        return TC_ACT_OK;
    }
    let intent = *intent;
    let exact = unsafe { GUARD_TRUTH_V1.get(IfaceKey { ifindex, vlan: pkt.vlan }) }.copied();
    let truth = match exact {
        Some(t) => Some(t),
        // A tag no branch ENI owns here: judge it against the interface itself.
        None if pkt.vlan != 0 => unsafe { GUARD_TRUTH_V1.get(IfaceKey { ifindex, vlan: 0 }) }.copied(),
        None => None,
    };
    let mut event = ViolationEvent {
        pod_id: intent.pod_id,
        ifindex,
        expected_vlan: intent.vlan,
        expected_eni_id: intent.eni_id,
        expected_sg_set_id: intent.sg_set_id,
        src: ipv4_key(pkt.src),
        dst: ipv4_key(pkt.dst),
        ..ViolationEvent::default()
    };
    let reason = match truth {
        None => {
            event.observed_vlan = pkt.vlan;
            REASON_UNKNOWN_INTERFACE
        }
        Some(truth) => {
            let observed_vlan = if pkt.vlan != 0 { pkt.vlan } else { truth.vlan };
            event.observed_vlan = observed_vlan;
            event.actual_eni_id = truth.eni_id;
            event.actual_sg_set_id = truth.sg_set_id;
            if observed_vlan != intent.vlan {
                REASON_WRONG_VLAN
            } else if truth.eni_id != intent.eni_id {
                REASON_WRONG_ENI
            } else if truth.sg_set_id != intent.sg_set_id {
                REASON_SG_MISMATCH
            } else {
                return TC_ACT_OK;
            }
        }
    };
    violation(reason, intent.mode, event)
}

#[classifier]
pub fn guard_pod(ctx: TcContext) -> i32 {
    let Some(pkt) = parse(&ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: as in guard_egress.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(veth) = (unsafe { GUARD_VETH_V1.get(ifindex) }).copied() else {
        return TC_ACT_OK; // not a pod veth the agent knows
    };
    if let Some(c) = counters() {
        c.checked_sources += 1;
    }
    let src = ipv4_key(pkt.src);
    if veth.addr == src {
        return TC_ACT_OK;
    }
    let event = ViolationEvent {
        pod_id: veth.pod_id,
        ifindex,
        observed_vlan: pkt.vlan,
        src,
        dst: ipv4_key(pkt.dst),
        ..ViolationEvent::default()
    };
    violation(REASON_SPOOFED_SOURCE, veth.mode, event)
}

/// Counts, reports and (in enforce mode) drops one violating packet.
#[inline(always)]
fn violation(reason: u32, pod_mode: u32, mut event: ViolationEvent) -> i32 {
    let mode = if pod_mode == MODE_INHERIT { node_mode() } else { pod_mode };
    let drop = mode == MODE_ENFORCE;
    let r = reason as usize;
    if r >= REASONS {
        return TC_ACT_OK;
    }
    if let Some(c) = counters() {
        c.violations[r] += 1;
        if drop {
            c.dropped[r] += 1;
        }
    }
    count_pod(event.pod_id, r, drop);
    event.reason = reason;
    event.dropped = u32::from(drop);
    emit(event);
    if drop {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

#[inline(always)]
fn count_pod(pod_id: u32, r: usize, drop: bool) {
    let mut slot = GUARD_POD_COUNTERS_V1.get_ptr_mut(pod_id);
    if slot.is_none() {
        // First violation of this pod since the agent (re)created the map.
        let _ = GUARD_POD_COUNTERS_V1.insert(pod_id, PodCounters::default(), 0);
        slot = GUARD_POD_COUNTERS_V1.get_ptr_mut(pod_id);
    }
    if let Some(p) = slot {
        // SAFETY: per-CPU value of this CPU.
        let p = unsafe { &mut *p };
        if r < REASONS {
            p.violations[r] += 1;
            if drop {
                p.dropped[r] += 1;
            }
        }
    }
}

/// Sends the event unless this pod already sent its share this second.
#[inline(always)]
fn emit(mut event: ViolationEvent) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    event.timestamp_ns = now;
    let limit = GUARD_CONFIG_V1.get(0).map_or(10, |c| u64::from(c.events_per_pod_per_sec));
    let allowed = match GUARD_RATE_V1.get_ptr_mut(event.pod_id) {
        Some(w) => {
            // SAFETY: a map value; concurrent CPUs may race on it, which only blurs the limit.
            let w = unsafe { &mut *w };
            if now.wrapping_sub(w.window_start_ns) >= NS_PER_SEC {
                w.window_start_ns = now;
                w.sent = 1;
                true
            } else if w.sent < limit {
                w.sent += 1;
                true
            } else {
                false
            }
        }
        None => {
            let _ = GUARD_RATE_V1.insert(event.pod_id, RateWindow { window_start_ns: now, sent: 1 }, 0);
            limit > 0
        }
    };
    let Some(c) = counters() else { return };
    if !allowed {
        c.events_rate_limited += 1;
    } else if GUARD_EVENTS_V1.output(event, 0).is_err() {
        c.events_lost += 1;
    }
}

/// An empty classifier, loaded only by the benchmark: the baseline the guard's cost is measured
/// against in the same BPF_PROG_TEST_RUN session.
#[classifier]
pub fn bench_empty(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}
