//! The guard's kernel state: pinned maps programmed from a spec, programs attached to interfaces.
//!
//! Restart safety: maps are pinned (`<pin dir>/maps/NAME`) and reused, so intent and counters
//! survive a restart; TCX links are pinned (`<pin dir>/links/IFACE.HOOK`) and on restart the new
//! program replaces the old one on the same link in one `bpf_link_update` (no unchecked window);
//! netlink filters use a fixed priority and handle and are replaced in place the same way.
//! Map entries are replaced whole (hash-map updates are atomic per element), so no packet sees a
//! half-written entry; new entries are written before stale ones are removed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    hash::Hash,
    net::Ipv4Addr,
    path::PathBuf,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf, Pod,
};
use eniguard_common::guard::*;

use super::{
    attach::{ensure_clsact, ifindex, kernel_has_tcx, AttachMode},
    intern::{sg_set, Interner},
    pins::PinDir,
    spec::{Mode, ValidSpec},
    GuardError,
};

/// Where a guard program sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// ENI, trunk or branch VLAN interface, TC egress: `guard_egress`.
    Egress,
    /// Host side of a pod's veth, TC ingress (traffic from the pod): `guard_pod`.
    PodVeth,
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Self::Egress => GUARD_EGRESS_PROGRAM,
            Self::PodVeth => GUARD_POD_PROGRAM,
        }
    }
    fn attach_type(self) -> TcAttachType {
        match self {
            Self::Egress => TcAttachType::Egress,
            Self::PodVeth => TcAttachType::Ingress,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::PodVeth => "pod",
        }
    }
    /// Fixed netlink priority per hook, so that a restarted agent finds and replaces its filter.
    fn nl_options(self) -> NlOptions {
        let priority = match self {
            Self::Egress => 0x4e47, // "NG"
            Self::PodVeth => 0x4e48,
        };
        NlOptions { priority, handle: TcHandle::new(0, 1), ..NlOptions::default() }
    }
}

/// The names behind the kernel's integers, for events and metrics.
#[derive(Debug, Default)]
pub struct Names {
    pub enis: Interner<String>,
    pub sg_sets: Interner<Vec<String>>,
    pub pods: Interner<(String, String)>,
}

/// A spec resolved against this network namespace: every interface exists. No kernel changes.
#[derive(Debug)]
pub struct Resolved {
    spec: ValidSpec,
    ifindex: StdHashMap<String, u32>,
    vlan_devices: BTreeSet<String>,
}

/// Checks that every interface the spec names exists here; errors name the entry.
pub fn resolve(spec: ValidSpec) -> Result<Resolved, GuardError> {
    resolve_with(spec, true)
}

/// Like [`resolve`], but interfaces that do not exist (yet, or any more) are left out: their
/// entries are skipped by [`Guard::apply`] until a link event brings them back.
pub fn resolve_present(spec: ValidSpec) -> Resolved {
    match resolve_with(spec.clone(), false) {
        Ok(r) => r,
        Err(_) => Resolved { spec, ifindex: StdHashMap::new(), vlan_devices: BTreeSet::new() },
    }
}

fn resolve_with(spec: ValidSpec, strict: bool) -> Result<Resolved, GuardError> {
    let mut found = StdHashMap::new();
    let names = spec
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("interfaces[{i}] ({})", f.name), f.name.clone()))
        .chain(spec.pods.iter().enumerate().map(|(i, p)| {
            (
                format!("pods[{i}] ({}/{}) hostInterface", p.pod.namespace, p.pod.name),
                p.pod.host_interface.clone(),
            )
        }));
    for (entry, name) in names {
        match ifindex(&name) {
            Ok(index) => {
                found.insert(name, index);
            }
            Err(_) if !strict => {}
            Err(_) => {
                return Err(GuardError::Attach {
                    iface: name,
                    reason: format!("{entry}: no such interface in this network namespace"),
                })
            }
        }
    }
    Ok(Resolved { spec, ifindex: found, vlan_devices: vlan_devices() })
}

/// Names of 802.1Q devices in this network namespace (/proc/net is per namespace).
fn vlan_devices() -> BTreeSet<String> {
    let text = std::fs::read_to_string("/proc/net/vlan/config").unwrap_or_default();
    text.lines()
        .filter(|l| l.contains('|') && !l.starts_with("VLAN Dev name"))
        .filter_map(|l| l.split('|').next().map(|n| n.trim().to_owned()))
        .collect()
}

enum Attachment {
    /// A pinned TCX link; removing the pin and closing the fd detaches it.
    Tcx {
        link: FdLink,
        pin: PathBuf,
    },
    Netlink(SchedClassifierLink),
}

pub struct Guard {
    ebpf: Ebpf,
    pins: PinDir,
    attach_mode: AttachMode,
    pub names: Names,
    /// What is attached where, with the ifindex it was attached to (a re-created interface of
    /// the same name gets a new ifindex and a fresh attachment).
    attached: BTreeMap<(String, Hook), (u32, Attachment)>,
}

impl Resolved {
    /// Names the spec refers to that were found, for link-event filtering.
    pub fn watches(&self, name: &str) -> bool {
        self.spec.interfaces.iter().any(|f| f.name == name)
            || self.spec.pods.iter().any(|p| p.pod.host_interface == name)
    }
}

impl Guard {
    /// Loads the guard programs with their maps pinned (reused if already pinned).
    pub fn load(pins: PinDir, attach_mode: AttachMode) -> Result<Self, GuardError> {
        pins.create()?;
        let pinned: Vec<_> = GUARD_MAPS.iter().map(|name| (*name, pins.map(name))).collect();
        let mut ebpf = super::load(&pinned)?;
        for hook in [Hook::Egress, Hook::PodVeth] {
            program(&mut ebpf, hook)?
                .load()
                .map_err(|source| GuardError::Program { name: hook.program(), source })?;
        }
        let attach_mode = attach_mode.resolve();
        if attach_mode == AttachMode::Tcx && !kernel_has_tcx() {
            return Err(GuardError::Attach {
                iface: "*".into(),
                reason: "TCX needs kernel >= 6.6; use --attach netlink".into(),
            });
        }
        Ok(Self { ebpf, pins, attach_mode, names: Names::default(), attached: BTreeMap::new() })
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
    }

    /// Programs the maps from `resolved`, then attaches to new interfaces and detaches from
    /// interfaces no longer named.
    pub fn apply(&mut self, resolved: &Resolved) -> Result<(), GuardError> {
        let spec = &resolved.spec;
        let config = GuardConfig {
            mode: mode_value(spec.mode),
            events_per_pod_per_sec: spec.events_per_pod_per_second,
        };
        let mut truth = StdHashMap::new();
        for f in &spec.interfaces {
            let Some(&ifindex) = resolved.ifindex.get(&f.name) else { continue };
            // A sub-interface's frames carry no tag at its own hook: key it untagged.
            let key_vlan = if resolved.vlan_devices.contains(&f.name) { 0 } else { u32::from(f.vlan) };
            let value = IfaceTruth {
                eni_id: self.names.enis.id(&f.eni),
                sg_set_id: self.names.sg_sets.id(&sg_set(&f.security_groups)),
                vlan: u32::from(f.vlan),
            };
            truth.insert(IfaceKey { ifindex, vlan: key_vlan }, value);
        }
        let mut intent = StdHashMap::new();
        let mut veths = StdHashMap::new();
        for p in &spec.pods {
            let pod_id = self.names.pods.id(&(p.pod.namespace.clone(), p.pod.name.clone()));
            let mode = p.pod.mode.map_or(MODE_INHERIT, mode_value);
            let key = ipv4_key(p.ip);
            let mut value = PodIntent {
                pod_id,
                eni_id: self.names.enis.id(&p.pod.expect.eni),
                sg_set_id: self.names.sg_sets.id(&sg_set(&p.pod.expect.security_groups)),
                vlan: u32::from(p.pod.expect.vlan),
                mode,
                allowed: Default::default(),
            };
            value.allowed = allowed_exits(&value, &truth);
            intent.insert(p.ip.octets(), value);
            if let Some(&ifindex) = resolved.ifindex.get(&p.pod.host_interface) {
                veths.insert(ifindex, VethPod { pod_id, mode, addr: key });
            }
        }

        let mut cfg: Array<&mut MapData, GuardConfig> = typed(&mut self.ebpf, CONFIG_MAP)?;
        cfg.set(0, config, 0).map_err(map_err(CONFIG_MAP))?;
        sync_map(&mut self.ebpf, TRUTH_MAP, &truth)?;
        sync_map(&mut self.ebpf, INTENT_MAP, &intent)?;
        sync_map(&mut self.ebpf, VETH_MAP, &veths)?;

        let wanted: BTreeMap<(String, Hook), u32> = spec
            .interfaces
            .iter()
            .map(|f| (f.name.clone(), Hook::Egress))
            .chain(spec.pods.iter().map(|p| (p.pod.host_interface.clone(), Hook::PodVeth)))
            .filter_map(|key| resolved.ifindex.get(&key.0).map(|index| (key, *index)))
            .collect();
        // Gone from the spec, gone from the namespace, or re-created with a new ifindex.
        let stale: Vec<_> = self
            .attached
            .iter()
            .filter(|(key, (index, _))| wanted.get(*key) != Some(index))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((_, a)) = self.attached.remove(&key) {
                detach(a);
            }
        }
        for ((iface, hook), index) in wanted {
            if !self.attached.contains_key(&(iface.clone(), hook)) {
                let a = self.attach(&iface, hook)?;
                self.attached.insert((iface, hook), (index, a));
            }
        }
        Ok(())
    }

    /// Attaches `hook`'s program to `iface`, replacing in place what an earlier run left there.
    fn attach(&mut self, iface: &str, hook: Hook) -> Result<Attachment, GuardError> {
        let err = |reason: String| GuardError::Attach { iface: iface.to_owned(), reason };
        let pin = self.pins.link(iface, hook.label());
        let mode = self.attach_mode;
        let prog = program(&mut self.ebpf, hook)?;
        match mode {
            AttachMode::Tcx => {
                let id = match PinnedLink::from_pin(&pin) {
                    Ok(old) => {
                        let link = SchedClassifierLink::try_from(FdLink::from(old))
                            .map_err(|e| err(format!("pinned link {}: {e}", pin.display())))?;
                        prog.attach_to_link(link)
                            .map_err(|e| err(format!("replacing the program on {}: {e}", pin.display())))?
                    }
                    Err(_) => prog
                        .attach_with_options(
                            iface,
                            hook.attach_type(),
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(|e| err(format!("TCX attach: {e}")))?,
                };
                let link = prog.take_link(id).map_err(|e| err(e.to_string()))?;
                let link = FdLink::try_from(link).map_err(|e| err(e.to_string()))?;
                let link = if pin.exists() {
                    link
                } else {
                    FdLink::from(link.pin(&pin).map_err(|e| err(format!("pinning {}: {e}", pin.display())))?)
                };
                Ok(Attachment::Tcx { link, pin })
            }
            _ => {
                ensure_clsact(iface)?;
                let opts = hook.nl_options();
                let replaced = SchedClassifierLink::attached(
                    iface,
                    hook.attach_type(),
                    opts.priority,
                    opts.handle,
                    None,
                )
                .ok()
                .and_then(|old| prog.attach_to_link(old).ok());
                let id = match replaced {
                    Some(id) => id,
                    None => prog
                        .attach_with_options(iface, hook.attach_type(), TcAttachOptions::Netlink(opts))
                        .map_err(|e| err(format!("netlink attach: {e}")))?,
                };
                Ok(Attachment::Netlink(prog.take_link(id).map_err(|e| err(e.to_string()))?))
            }
        }
    }

    /// Runs `program` (a guard program or `bench_empty`) on `frame` `repeat` times with
    /// BPF_PROG_TEST_RUN against the live maps; returns the kernel's average time per run and the
    /// verdict. The frame leaves through `lo` as far as the program can tell.
    pub fn test_run(
        &mut self,
        program_name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(std::time::Duration, u32), GuardError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program_name)
            .ok_or(GuardError::MissingProgram(program_name))?
            .try_into()
            .map_err(|source| GuardError::Program { name: program_name, source })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| GuardError::Program { name: program_name, source })?;
        }
        let result = prog
            .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::default() })
            .map_err(|source| GuardError::Program { name: program_name, source })?;
        Ok((result.duration, result.return_value))
    }

    /// Takes the events ring buffer (once) for the event reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, GuardError> {
        let map = self.ebpf.take_map(EVENTS_MAP).ok_or(GuardError::MissingMap(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(map_err(EVENTS_MAP))
    }

    /// Node counters and per-pod counters, summed over all possible CPUs.
    pub fn stats(&self) -> Result<Stats, GuardError> {
        let node_map = self.ebpf.map(COUNTERS_MAP).ok_or(GuardError::MissingMap(COUNTERS_MAP))?;
        let node: PerCpuArray<&MapData, GuardCounters> =
            PerCpuArray::try_from(node_map).map_err(map_err(COUNTERS_MAP))?;
        let node =
            node.get(&0, 0).map_err(map_err(COUNTERS_MAP))?.iter().fold(GuardCounters::default(), add_node);
        let pods_map = self.ebpf.map(POD_COUNTERS_MAP).ok_or(GuardError::MissingMap(POD_COUNTERS_MAP))?;
        let pods_map: PerCpuHashMap<&MapData, u32, PodCounters> =
            PerCpuHashMap::try_from(pods_map).map_err(map_err(POD_COUNTERS_MAP))?;
        let mut pods = Vec::new();
        for entry in pods_map.iter() {
            let (pod_id, values) = entry.map_err(map_err(POD_COUNTERS_MAP))?;
            pods.push((pod_id, values.iter().fold(PodCounters::default(), add_pod)));
        }
        pods.sort_by_key(|(id, _)| *id);
        Ok(Stats { node, pods })
    }

    /// Detaches and removes every pin, or with `keep_datapath` leaves programs attached (and
    /// pinned) so that traffic stays checked until the next agent replaces them.
    pub fn shutdown(&mut self, keep_datapath: bool) -> Result<(), GuardError> {
        let attached = std::mem::take(&mut self.attached);
        for (_, (_, a)) in attached {
            if keep_datapath {
                match a {
                    Attachment::Tcx { link, .. } => drop(link), // the pin keeps the link alive
                    Attachment::Netlink(link) => std::mem::forget(link), // a netlink filter outlives us
                }
            } else {
                detach(a);
            }
        }
        if !keep_datapath {
            self.pins.remove()?;
        }
        Ok(())
    }
}

/// The truth keys a packet of this pod may leave through and pass exactly as the datapath's full
/// check would judge it (same rule as guard_egress: observed VLAN is the tag, or for an untagged
/// key the interface's own VLAN). Sorted, at most ALLOWED_EXITS; the rest use the full check.
pub fn allowed_exits(
    intent: &PodIntent,
    truth: &StdHashMap<IfaceKey, IfaceTruth>,
) -> [IfaceKey; ALLOWED_EXITS] {
    let mut keys: Vec<IfaceKey> = truth
        .iter()
        .filter(|(k, t)| {
            let observed_vlan = if k.vlan != 0 { k.vlan } else { t.vlan };
            observed_vlan == intent.vlan && t.eni_id == intent.eni_id && t.sg_set_id == intent.sg_set_id
        })
        .map(|(k, _)| *k)
        .collect();
    keys.sort_by_key(|k| (k.ifindex, k.vlan));
    let mut allowed = [IfaceKey::default(); ALLOWED_EXITS];
    for (slot, key) in allowed.iter_mut().zip(keys) {
        *slot = key;
    }
    allowed
}

fn detach(a: Attachment) {
    match a {
        Attachment::Tcx { link, pin } => {
            let _ = std::fs::remove_file(&pin);
            drop(link); // last reference: the kernel detaches the link
        }
        Attachment::Netlink(link) => drop(link), // the wrapper detaches on drop
    }
}

/// Summed counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub node: GuardCounters,
    pub pods: Vec<(u32, PodCounters)>,
}

fn add_node(mut acc: GuardCounters, v: &GuardCounters) -> GuardCounters {
    acc.checked += v.checked;
    acc.checked_sources += v.checked_sources;
    acc.events_lost += v.events_lost;
    acc.events_rate_limited += v.events_rate_limited;
    for r in 0..REASONS {
        acc.violations[r] += v.violations[r];
        acc.dropped[r] += v.dropped[r];
    }
    acc
}

fn add_pod(mut acc: PodCounters, v: &PodCounters) -> PodCounters {
    for r in 0..REASONS {
        acc.violations[r] += v.violations[r];
        acc.dropped[r] += v.dropped[r];
    }
    acc
}

fn mode_value(mode: Mode) -> u32 {
    match mode {
        Mode::Monitor => MODE_MONITOR,
        Mode::Enforce => MODE_ENFORCE,
    }
}

pub fn ipv4_key(ip: Ipv4Addr) -> AddrKey {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip.octets());
    AddrKey { family: FAMILY_IPV4, addr }
}

pub fn ipv4_of(key: &AddrKey) -> Ipv4Addr {
    Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3])
}

fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier, GuardError> {
    let name = hook.program();
    ebpf.program_mut(name)
        .ok_or(GuardError::MissingProgram(name))?
        .try_into()
        .map_err(|source| GuardError::Program { name, source })
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> GuardError {
    move |source| GuardError::Map { name: name.to_owned(), source }
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, GuardError>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(GuardError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Makes the pinned hash map hold exactly `want`: writes every entry, then removes the rest
/// (entries left by an earlier run or an earlier spec).
fn sync_map<K, V>(ebpf: &mut Ebpf, name: &'static str, want: &StdHashMap<K, V>) -> Result<(), GuardError>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let mut map: HashMap<&mut MapData, K, V> = typed(ebpf, name)?;
    for (k, v) in want {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !want.contains_key(k)).collect();
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}
