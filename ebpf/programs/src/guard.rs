//! The egress guard: per packet, does a pod's traffic leave through the ENI, VLAN and
//! security-group set its intent says?
//!
//! - `guard_pod` runs on a pod's host-side veth (TC ingress: traffic coming from the pod) and checks
//!   that the pod sends only from its own address (`spoofed_source`, IPv4, IPv6 and ARP). Frames it
//!   cannot judge (other ethertypes, unreadable headers) are `unjudged`: an enforced pod sends
//!   none. IPv6 that cannot leave the link (link-local or unspecified source, link-local or
//!   link-scoped multicast destination: neighbour discovery, DAD, MLD) gets no verdict: no ENI
//!   ever sees it.
//! - `guard_egress` runs on ENI interfaces, the trunk and branch VLAN sub-interfaces (TC egress):
//!   for a packet whose source is a pod address (IPv4 or IPv6) it compares intent (pod address →
//!   ENI, VLAN, SG set) with truth ((ifindex, VLAN) → ENI, actual SG set).
//!
//! Verdicts: a passing or foreign packet returns TC_ACT_UNSPEC ("no verdict": the next program on
//! the hook — TCX_NEXT — or the next cls_bpf filter decides), so the guard never hides other
//! programs attached to the same hook (a network-policy agent on the pod veth, tc rules). Only an
//! enforce-mode drop is final (TC_ACT_SHOT).
//!
//! Headers are read directly when they are in the skb's linear area, and with bpf_skb_load_bytes
//! when they are not, so no frame escapes judgement by its layout.
//!
//! A violation is counted (node-wide and per pod, per reason), reported through the ring buffer
//! (rate-limited per pod), and in enforce mode dropped. Nothing is logged per packet.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    btf_maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    helpers::bpf_ktime_get_ns,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use eniguard_common::guard::*;

/// BPF_F_NO_PREALLOC: the pod maps' memory follows the pods present, not the capacity. The fast
/// paths read intent and veth values in place rather than copying them. Neither kind of hash map
/// keeps a value unchanged for a reader: a preallocated map recycles an element at the next
/// update, and bpf_mem_alloc (no-prealloc maps, kernel 6.1+) may hand a freed element to the next
/// allocation without waiting for an RCU grace period. So a program that races two updates of the
/// same pod can read a mixed value for that one packet. Updates are ordered so that each value
/// written is valid on its own (see the agent's `datapath::write_maps`).
const NO_PREALLOC: usize = 1;

#[btf_map]
static GUARD_INTENT4_V2: HashMap<[u8; 4], PodIntent, { MAX_PODS as usize }, NO_PREALLOC> = HashMap::new();
#[btf_map]
static GUARD_INTENT6_V1: HashMap<[u8; 16], PodIntent, { MAX_PODS as usize }, NO_PREALLOC> = HashMap::new();
#[btf_map]
static GUARD_TRUTH_V1: HashMap<IfaceKey, IfaceTruth, { MAX_IFACES as usize }> = HashMap::new();
#[btf_map]
static GUARD_VETH_V2: HashMap<u32, VethPod, { MAX_PODS as usize }, NO_PREALLOC> = HashMap::new();
#[btf_map]
static GUARD_CONFIG_V2: Array<GuardConfig, 1> = Array::new();
#[btf_map]
static GUARD_PASS_CACHE_V2: PerCpuArray<PassCache, 4> = PerCpuArray::new();
/// Pass-cache slots: one per program and address family.
const CACHE_EGRESS: u32 = 0;
const CACHE_POD: u32 = 1;
const CACHE_EGRESS6: u32 = 2;
const CACHE_POD6: u32 = 3;
#[btf_map]
static GUARD_COUNTERS_V2: PerCpuArray<GuardCounters, 1> = PerCpuArray::new();
#[btf_map]
static GUARD_POD_COUNTERS_V2: PerCpuHashMap<u32, PodCounters, { MAX_PODS as usize }> = PerCpuHashMap::new();
#[btf_map]
static GUARD_RATE_V1: HashMap<u32, RateWindow, { MAX_PODS as usize }> = HashMap::new();
#[btf_map]
static GUARD_EVENTS_V1: RingBuf<ViolationEvent, { EVENTS_RING_BYTES as usize }> = RingBuf::new();

/// No verdict: let the next program or filter on this hook decide.
const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_VID_MASK: u32 = 0x0fff;
const NS_PER_SEC: u64 = 1_000_000_000;
/// Offset of the sender protocol address in an Ethernet/IPv4 ARP packet.
const ARP_SPA: usize = 14;

/// What a frame carries, as far as the guard judges it. A plain struct with every field defined
/// on every path (fields a kind lacks are 0): an enum's unset payloads are undefined registers,
/// which LLVM may spill and the verifier refuses to read.
#[derive(Clone, Copy)]
struct Frame {
    /// KIND_*.
    kind: u32,
    /// IPv4 source, or the ARP sender address (network order in memory).
    src: u32,
    dst: u32,
    /// VLAN id from skb metadata or the outermost in-band 802.1Q/802.1ad tag; 0 = untagged.
    vlan: u32,
    /// 1 for IPv6 that cannot leave the link (see [`ipv6_link_only`]).
    link_only: u32,
    /// Offset of the IP header (IPv6 addresses are read from the frame when needed: 32 bytes
    /// more in this struct overflow the 5.10 verifier's 512-byte stack).
    l3: u32,
}

impl Frame {
    const fn of(kind: u32, vlan: u32) -> Self {
        Self { kind, src: 0, dst: 0, vlan, link_only: 0, l3: 0 }
    }

    fn ipv4(src: u32, dst: u32, vlan: u32) -> Self {
        Self { src, dst, ..Self::of(KIND_IPV4, vlan) }
    }
}

/// Offsets of the source and destination in the IPv6 header.
const IPV6_SRC: u32 = 8;
const IPV6_DST: u32 = 24;

/// An IPv6 address of `frame` (`at`: [`IPV6_SRC`] or [`IPV6_DST`]); zero if unreadable. Read as
/// two 8-byte words: a 16-byte array read or zeroed in one piece becomes a call to a byte-wise
/// memcpy or memset (removing them took a flow's next IPv6 packet from 2.03x to 1.38x the empty
/// program, README's performance section).
#[inline(always)]
fn ipv6_addr(ctx: &TcContext, frame: &Frame, at: u32) -> [u8; 16] {
    let offset = (frame.l3 + at) as usize;
    let (mut high, mut low) = (0u64, 0u64);
    if !(load(ctx, offset, &mut high) && load(ctx, offset + 8, &mut low)) {
        (high, low) = (0, 0);
    }
    let (high, low) = (high.to_ne_bytes(), low.to_ne_bytes());
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&high);
    a[8..].copy_from_slice(&low);
    a
}

/// Writes the source and destination into the event (read from the frame in place: temporaries
/// cost stack the 5.10 verifier has no room for).
#[inline(always)]
fn record_addresses(ctx: &TcContext, frame: &Frame, event: &mut ViolationEvent) {
    if frame.kind == KIND_IPV6 {
        event.src.family = FAMILY_IPV6;
        event.dst.family = FAMILY_IPV6;
        if !load(ctx, (frame.l3 + IPV6_SRC) as usize, &mut event.src.addr) {
            event.src.addr = [0; 16];
        }
        if !load(ctx, (frame.l3 + IPV6_DST) as usize, &mut event.dst.addr) {
            event.dst.addr = [0; 16];
        }
    } else {
        event.src = ipv4_key(frame.src);
        event.dst = ipv4_key(frame.dst);
    }
}

/// IPv6 that no router forwards, so it never reaches an ENI: a link-local or unspecified source
/// (neighbour and router solicitation, DAD, MLD reports) or a link-local or link-scoped multicast
/// destination. `src` and `dst` are the first 8 bytes of each address, `src_low` the last 8 of
/// the source (all in network order in memory).
#[inline(always)]
fn ipv6_link_only(src: [u8; 8], src_low: u64, dst: [u8; 8]) -> bool {
    let link_local = |a: [u8; 8]| a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
    let unspecified = u64::from_ne_bytes(src) == 0 && src_low == 0;
    let link_multicast = dst[0] == 0xff && (dst[1] & 0x0f) <= 2;
    link_local(src) || unspecified || link_local(dst) || link_multicast
}

/// Reads a `T` at `offset` into `out`: directly when it lies in the linear area, else with
/// bpf_skb_load_bytes (a non-linear skb is judged like any other). False if the frame is shorter.
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, offset: usize, out: &mut T) -> bool {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: bounds checked against data_end just above; packet data may be unaligned.
        *out = unsafe { core::ptr::read_unaligned((start + offset) as *const T) };
        return true;
    }
    // SAFETY: the helper writes at most size_of::<T>() bytes into `out`, which is initialised.
    let ret = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            (out as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    ret == 0
}

#[inline(always)]
fn load_be16(ctx: &TcContext, offset: usize, out: &mut u16) -> bool {
    let ok = load(ctx, offset, out);
    *out = u16::from_be(*out);
    ok
}

/// Untagged Ethernet + the IPv4 addresses.
const UNTAGGED_IPV4_LEN: usize = ETH_HLEN + 20;
/// Untagged Ethernet + the IPv6 header (its addresses end it).
const UNTAGGED_IPV6_LEN: usize = ETH_HLEN + 40;

/// Parses Ethernet, up to two VLAN tags, and the IPv4 or ARP addresses (IPv6: whether it can
/// leave the link, and where its header is). The common frames — an untagged IPv4 or IPv6 packet
/// whose headers are linear — take one bounds check each; everything else the general path.
#[inline(always)]
fn parse(ctx: &TcContext) -> Frame {
    // SAFETY: the context pointer is valid for the whole program run.
    let skb = unsafe { &*ctx.skb.skb };
    let vlan = if skb.vlan_present != 0 { skb.vlan_tci & VLAN_VID_MASK } else { 0 };
    let start = ctx.data();
    if start + UNTAGGED_IPV4_LEN <= ctx.data_end() {
        // SAFETY: the whole range was bounds checked just above; packet data may be unaligned.
        let (proto, src, dst) = unsafe {
            (
                core::ptr::read_unaligned((start + 12) as *const u16),
                core::ptr::read_unaligned((start + ETH_HLEN + 12) as *const u32),
                core::ptr::read_unaligned((start + ETH_HLEN + 16) as *const u32),
            )
        };
        if u16::from_be(proto) == ETH_P_IP {
            return Frame::ipv4(src, dst, vlan);
        }
        if u16::from_be(proto) == ETH_P_IPV6 && start + UNTAGGED_IPV6_LEN <= ctx.data_end() {
            let at = |field: u32| start + ETH_HLEN + field as usize;
            // SAFETY: the whole header was bounds checked just above; data may be unaligned.
            let (src6, src_low, dst6) = unsafe {
                (
                    core::ptr::read_unaligned(at(IPV6_SRC) as *const [u8; 8]),
                    core::ptr::read_unaligned((at(IPV6_SRC) + 8) as *const u64),
                    core::ptr::read_unaligned(at(IPV6_DST) as *const [u8; 8]),
                )
            };
            return Frame {
                link_only: u32::from(ipv6_link_only(src6, src_low, dst6)),
                l3: ETH_HLEN as u32,
                ..Frame::of(KIND_IPV6, vlan)
            };
        }
    }
    parse_general(ctx, vlan)
}

#[inline(always)]
fn parse_general(ctx: &TcContext, mut vlan: u32) -> Frame {
    let mut proto = 0u16;
    if !load_be16(ctx, 12, &mut proto) {
        return Frame::of(KIND_UNREADABLE, vlan);
    }
    let mut offset = ETH_HLEN;
    // In-band tags: 802.1ad outer + 802.1Q inner at most. The outermost tag is the VLAN.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let mut tci = 0u16;
        if !load_be16(ctx, offset, &mut tci) || !load_be16(ctx, offset + 2, &mut proto) {
            return Frame::of(KIND_UNREADABLE, vlan);
        }
        if vlan == 0 {
            vlan = u32::from(tci) & VLAN_VID_MASK;
        }
        offset += 4;
        if proto == ETH_P_8021Q {
            if !load_be16(ctx, offset + 2, &mut proto) {
                return Frame::of(KIND_UNREADABLE, vlan);
            }
            offset += 4;
        }
    }
    match proto {
        ETH_P_IP => {
            let (mut src, mut dst) = (0u32, 0u32);
            if load(ctx, offset + 12, &mut src) && load(ctx, offset + 16, &mut dst) {
                Frame::ipv4(src, dst, vlan)
            } else {
                Frame::of(KIND_UNREADABLE, vlan)
            }
        }
        ETH_P_ARP => {
            // Only Ethernet/IPv4 ARP carries an address the guard can compare.
            let (mut ptype, mut plen, mut sender) = (0u16, 0u8, 0u32);
            if !(load_be16(ctx, offset + 2, &mut ptype)
                && load(ctx, offset + 5, &mut plen)
                && load(ctx, offset + ARP_SPA, &mut sender))
            {
                Frame::of(KIND_UNREADABLE, vlan)
            } else if ptype == ETH_P_IP && plen == 4 {
                Frame { src: sender, ..Frame::of(KIND_ARP, vlan) }
            } else {
                Frame::of(KIND_OTHER, vlan)
            }
        }
        ETH_P_IPV6 => {
            // Source at +8, destination at +24 of the IPv6 header.
            let (mut src, mut src_low, mut dst) = ([0u8; 8], 0u64, [0u8; 8]);
            let at = |field: u32| offset + field as usize;
            if load(ctx, at(IPV6_SRC), &mut src)
                && load(ctx, at(IPV6_SRC) + 8, &mut src_low)
                && load(ctx, at(IPV6_DST), &mut dst)
            {
                Frame {
                    link_only: u32::from(ipv6_link_only(src, src_low, dst)),
                    l3: offset as u32,
                    ..Frame::of(KIND_IPV6, vlan)
                }
            } else {
                Frame::of(KIND_UNREADABLE, vlan)
            }
        }
        _ => Frame::of(KIND_OTHER, vlan),
    }
}

#[inline(always)]
fn ipv4_key(addr: u32) -> AddrKey {
    let [a, b, c, d] = addr.to_ne_bytes(); // as read from the packet: network order in memory
    AddrKey { family: FAMILY_IPV4, addr: [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }
}

#[inline(always)]
fn counters() -> Option<&'static mut GuardCounters> {
    // SAFETY: per-CPU slot; a TC program is not re-entered on the same CPU.
    GUARD_COUNTERS_V2.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn node_mode() -> u32 {
    GUARD_CONFIG_V2.get(0).map_or(MODE_MONITOR, |c| c.mode)
}

#[classifier]
pub fn guard_egress(ctx: TcContext) -> i32 {
    let frame = parse(&ctx);
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The pass cache (see below) is consulted under the maps' current generation.
    let (generation, flow_cache) = GUARD_CONFIG_V2.get(0).map_or((0, 0), |c| (c.generation, c.flow_cache));
    if frame.kind == KIND_IPV6 && frame.link_only == 0 {
        let src6 = ipv6_addr(&ctx, &frame, IPV6_SRC);
        let vlan = frame.vlan;
        // SAFETY: per-CPU slot; a TC program is not re-entered on the same CPU.
        let cache = GUARD_PASS_CACHE_V2.get_ptr_mut(CACHE_EGRESS6).map(|p| unsafe { &mut *p });
        let hit = flow_cache != 0
            && cache.as_ref().is_some_and(|c| {
                c.generation == generation && c.src6 == src6 && c.ifindex == ifindex && c.vlan == vlan
            });
        if hit {
            if let Some(c) = counters() {
                c.checked += 1;
            }
            return PASS;
        }
        // SAFETY: as for the IPv4 intent below.
        let Some(intent) = (unsafe { GUARD_INTENT6_V1.get(src6) }) else {
            return PASS; // not a pod address: not ours to judge
        };
        if let Some(c) = counters() {
            c.checked += 1;
        }
        let here = IfaceKey { ifindex, vlan };
        let remember = |cache: Option<&mut PassCache>| {
            if let Some(cache) = cache {
                *cache = PassCache { src: 0, ifindex, vlan, generation, src6 };
            }
        };
        if intent.allowed.contains(&here) {
            remember(cache);
            return PASS;
        }
        return judge(&ctx, intent, here, &frame, || remember(cache));
    }
    let Frame { kind, src, vlan, .. } = frame;
    if kind != KIND_IPV4 {
        return PASS; // neither IPv4 nor routable IPv6: no pod intent to compare
    }
    // Fastest path: this CPU's last passing packet came from the same pod through the same exit,
    // and the maps have not changed since (the generation the agent bumps around every update).
    // SAFETY: per-CPU slot; a TC program is not re-entered on the same CPU.
    let cache = GUARD_PASS_CACHE_V2.get_ptr_mut(CACHE_EGRESS).map(|p| unsafe { &mut *p });
    if let Some(cache) = cache.as_ref() {
        let hit = cache.generation == generation
            && cache.src == src
            && cache.ifindex == ifindex
            && cache.vlan == vlan
            && flow_cache != 0;
        if hit {
            if let Some(c) = counters() {
                c.checked += 1;
            }
            return PASS;
        }
    }
    // SAFETY: a map value pointer, valid for this run; a racing update may recycle it (see
    // NO_PREALLOC), which can blur one packet's verdict, never fault.
    let Some(intent) = (unsafe { GUARD_INTENT4_V2.get(src.to_ne_bytes()) }) else {
        return PASS; // not a pod address: not ours to judge
    };
    if let Some(c) = counters() {
        c.checked += 1;
    }
    // Fast path: an exit the agent already matched against truth for this pod.
    let here = IfaceKey { ifindex, vlan };
    let remember = |cache: Option<&mut PassCache>| {
        if let Some(cache) = cache {
            *cache = PassCache { src, ifindex, vlan, generation, src6: [0; 16] };
        }
    };
    if intent.allowed.contains(&here) {
        remember(cache);
        return PASS;
    }
    judge(&ctx, intent, here, &frame, || remember(cache))
}

/// The full check of a pod packet leaving through `here` against the truth map; `passed` runs
/// when it passes (the caller's pass cache).
#[inline(always)]
fn judge(ctx: &TcContext, intent: &PodIntent, here: IfaceKey, frame: &Frame, passed: impl FnOnce()) -> i32 {
    let IfaceKey { ifindex, vlan } = here;
    // SAFETY: as above.
    let exact = unsafe { GUARD_TRUTH_V1.get(here) }.copied();
    let truth = match exact {
        Some(t) => Some(t),
        // A tag no branch ENI owns here: judge it against the interface itself.
        None if vlan != 0 => unsafe { GUARD_TRUTH_V1.get(IfaceKey { ifindex, vlan: 0 }) }.copied(),
        None => None,
    };
    let mut event = ViolationEvent {
        pod_id: intent.pod_id,
        ifindex,
        expected_vlan: intent.vlan,
        expected_eni_id: intent.eni_id,
        expected_sg_set_id: intent.sg_set_id,
        ..ViolationEvent::default()
    };
    let reason = match truth {
        None => {
            event.observed_vlan = vlan;
            REASON_UNKNOWN_INTERFACE
        }
        Some(truth) => {
            let observed_vlan = if vlan != 0 { vlan } else { truth.vlan };
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
                passed();
                return PASS;
            }
        }
    };
    record_addresses(ctx, frame, &mut event);
    violation(reason, intent.mode, &mut event)
}

#[classifier]
pub fn guard_pod(ctx: TcContext) -> i32 {
    // SAFETY: as in guard_egress.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let frame = parse(&ctx);
    let Frame { kind, src, vlan, link_only, .. } = frame;
    let routable6 = kind == KIND_IPV6 && link_only == 0;
    let src6 = if routable6 { ipv6_addr(&ctx, &frame, IPV6_SRC) } else { [0u8; 16] };
    // Fastest path: this CPU's last IPv4 (or IPv6) packet from this veth had the same (own)
    // source, and the maps have not changed since.
    let (generation, flow_cache) = GUARD_CONFIG_V2.get(0).map_or((0, 0), |c| (c.generation, c.flow_cache));
    let slot = if routable6 { CACHE_POD6 } else { CACHE_POD };
    // SAFETY: per-CPU slot; a TC program is not re-entered on the same CPU.
    let cache = GUARD_PASS_CACHE_V2.get_ptr_mut(slot).map(|p| unsafe { &mut *p });
    let hit = (kind == KIND_IPV4 || routable6)
        && flow_cache != 0
        && cache.as_ref().is_some_and(|c| {
            c.generation == generation
                && c.ifindex == ifindex
                && if routable6 { c.src6 == src6 } else { c.src == src }
        });
    if hit {
        if let Some(c) = counters() {
            if let Some(slot) = c.pod_frames.get_mut(kind as usize) {
                *slot += 1;
            }
            c.checked_sources += 1;
        }
        return PASS;
    }
    // SAFETY: as for the intent map in guard_egress.
    let Some(veth) = (unsafe { GUARD_VETH_V2.get(ifindex) }) else {
        return PASS; // not a pod veth the agent knows
    };
    if let Some(c) = counters() {
        if let Some(slot) = c.pod_frames.get_mut(kind as usize) {
            *slot += 1;
        }
        if kind == KIND_IPV4 || (kind == KIND_IPV6 && link_only == 0) {
            c.checked_sources += 1;
        }
    }
    if kind == KIND_IPV6 && link_only != 0 {
        return PASS; // counted by kind; it stays on the pod's link, no ENI sees it
    }
    let judged = kind == KIND_IPV4 || kind == KIND_ARP || kind == KIND_IPV6;
    let own = if kind == KIND_IPV6 {
        veth.addr.family == FAMILY_IPV6 && veth.addr.addr == src6
    } else {
        veth.addr.family == FAMILY_IPV4 && veth.addr.addr[..4] == src.to_ne_bytes()
    };
    let reason = if !judged {
        REASON_UNJUDGED
    } else if own || (kind == KIND_ARP && src == 0) {
        // Its own address; or an ARP probe (RFC 5227), which announces no address.
        if let (Some(cache), true) = (cache, kind == KIND_IPV4 || routable6) {
            *cache = PassCache { src, ifindex, vlan: 0, generation, src6 };
        }
        return PASS;
    } else {
        REASON_SPOOFED_SOURCE
    };
    let mut event =
        ViolationEvent { pod_id: veth.pod_id, ifindex, observed_vlan: vlan, ..ViolationEvent::default() };
    let mode = veth.mode;
    record_addresses(&ctx, &frame, &mut event);
    violation(reason, mode, &mut event)
}

/// Counts, reports and (in enforce mode) drops one violating packet.
#[inline(always)]
fn violation(reason: u32, pod_mode: u32, event: &mut ViolationEvent) -> i32 {
    let mode = if pod_mode == MODE_INHERIT { node_mode() } else { pod_mode };
    let drop = mode == MODE_ENFORCE;
    let r = reason as usize;
    if r >= REASONS {
        return PASS;
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
        DROP
    } else {
        PASS
    }
}

#[inline(always)]
fn count_pod(pod_id: u32, r: usize, drop: bool) {
    let mut slot = GUARD_POD_COUNTERS_V2.get_ptr_mut(pod_id);
    if slot.is_none() {
        // First violation of this pod since its id was assigned (the agent deletes a pod's
        // entries when it leaves, so a reused id starts from zero).
        let _ = GUARD_POD_COUNTERS_V2.insert(pod_id, PodCounters::default(), 0);
        slot = GUARD_POD_COUNTERS_V2.get_ptr_mut(pod_id);
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

/// Sends the event unless this pod already sent its share this second. The event is borrowed,
/// not moved: passing the `&mut` by value makes LLVM keep a second copy on the stack, which the
/// 5.10 verifier (512 bytes for a program and its calls) has no room for.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn emit(event: &mut ViolationEvent) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    event.timestamp_ns = now;
    let limit = GUARD_CONFIG_V2.get(0).map_or(10, |c| u64::from(c.events_per_pod_per_sec));
    let allowed = match GUARD_RATE_V1.get_ptr_mut(event.pod_id) {
        Some(w) => {
            // SAFETY: a map value; concurrent CPUs may race on it, which only blurs the limit.
            let w = unsafe { &mut *w };
            if now.wrapping_sub(w.window_start_ns) >= NS_PER_SEC {
                w.window_start_ns = now;
                w.sent = 1;
                limit > 0
            } else if w.sent < limit {
                w.sent += 1;
                true
            } else {
                false
            }
        }
        // No window yet: open one. If the map is full (it is sized like the pod maps, and the
        // agent removes a pod's window when it leaves, so it should not be), fail closed: the
        // event is counted as rate limited rather than let through unlimited.
        None => {
            GUARD_RATE_V1.insert(event.pod_id, RateWindow { window_start_ns: now, sent: 1 }, 0).is_ok()
                && limit > 0
        }
    };
    let Some(c) = counters() else { return };
    if !allowed {
        c.events_rate_limited += 1;
    } else if GUARD_EVENTS_V1.output(&*event, 0).is_err() {
        c.events_lost += 1;
    }
}

/// An empty classifier, loaded only by the benchmark: the baseline the guard's cost is measured
/// against in the same BPF_PROG_TEST_RUN session.
#[classifier]
pub fn bench_empty(_ctx: TcContext) -> i32 {
    PASS
}
