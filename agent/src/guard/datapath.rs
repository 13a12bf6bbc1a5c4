//! The guard's kernel state: pinned maps programmed from a spec, programs attached to interfaces.
//!
//! Restart safety: maps are pinned (`<pin dir>/maps/NAME`) and reused, so intent and counters
//! survive a restart; TCX links are pinned (`<pin dir>/links/<hook>-<iface>`) and on restart the
//! new program replaces the old one on the same link in one `bpf_link_update` (no unchecked
//! window); netlink filters use a fixed priority and handle and are replaced in place the same
//! way. A stale link pin (its interface was re-created) is replaced by a fresh attach, and an
//! attachment of the other mode (netlink ↔ TCX after a kernel or flag change) is removed, so
//! nothing runs twice. A start that fails leaves a predecessor's datapath as it found it.
//!
//! Map updates are ordered so that no window passes a packet the full check would flag: intents
//! are first written with only the fast-path exits valid both before and after (old ∩ new), then
//! truth, then the intents' new exits. Stale entries are removed before new ones are inserted, so
//! the maps never need room for old ∪ new. [`Guard::apply`] applies a spec whole or, on any
//! error, puts the maps back as they were and detaches what it attached.
//!
//! Per-pod state: a pod's counter and rate-limit entries are removed when it leaves and its id is
//! reused. Pod ids restart with the agent, so per-pod counters and rate windows left by a
//! predecessor are cleared after the first apply (Prometheus sees a counter reset).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
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

/// How many pods and (interface, VLAN) exits the maps hold; set at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub pods: u32,
    pub ifaces: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self { pods: MAX_PODS, ifaces: MAX_IFACES }
    }
}

impl Capacity {
    /// Sized for a node's max pods, with an exit per ENI and per branch VLAN (at most one per
    /// pod) besides. Updates remove stale entries before adding new ones, so pod churn needs no
    /// headroom.
    pub fn for_max_pods(max_pods: u32) -> Self {
        Self { pods: max_pods.max(1), ifaces: max_pods.saturating_add(64) }
    }
}

/// What this agent last wrote to the config, intent, truth and veth maps.
#[derive(Clone, Debug, Default)]
struct Programmed {
    config: GuardConfig,
    truth: StdHashMap<IfaceKey, IfaceTruth>,
    intent: StdHashMap<[u8; 4], PodIntent>,
    intent6: StdHashMap<[u8; 16], PodIntent>,
    veths: StdHashMap<u32, VethPod>,
}

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
                return Err(GuardError::Interface {
                    iface: name,
                    problem: format!("{entry}: no such interface in this network namespace"),
                })
            }
        }
    }
    Ok(Resolved { spec, ifindex: found, vlan_devices: vlan_devices() })
}

/// Names of 802.1Q devices in this thread's network namespace (/proc/thread-self/net: a thread
/// that entered another namespace with setns sees the process's in /proc/net).
fn vlan_devices() -> BTreeSet<String> {
    let text = std::fs::read_to_string("/proc/thread-self/net/vlan/config")
        .or_else(|_| std::fs::read_to_string("/proc/net/vlan/config"))
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.contains('|') && !l.starts_with("VLAN Dev name"))
        .filter_map(|l| l.split('|').next().map(|n| n.trim().to_owned()))
        .collect()
}

enum Link {
    /// A pinned TCX link; removing the pin and closing the fd detaches it.
    Tcx {
        link: FdLink,
        pin: PathBuf,
    },
    Netlink(SchedClassifierLink),
}

struct Attachment {
    /// The ifindex it was attached to (a re-created interface of the same name gets a new one).
    ifindex: u32,
    link: Link,
    /// Made by this run, not taken over from a predecessor (a failed start removes only these).
    fresh: bool,
}

pub struct Guard {
    ebpf: Ebpf,
    pins: PinDir,
    attach_mode: AttachMode,
    pub names: Names,
    capacity: Capacity,
    attached: BTreeMap<(String, Hook), Attachment>,
    programmed: Programmed,
    /// The intent, truth and veth maps hold exactly `programmed`, so an apply writes only the
    /// difference; otherwise (at load, after a failed write, on [`Guard::reread_next`]) it reads
    /// every entry back and rewrites what differs.
    maps_exact: bool,
    /// The pin directory held a predecessor's maps when this run started.
    adopted: bool,
    /// No apply has succeeded yet: per-pod state still carries a predecessor's ids.
    first_apply: bool,
    /// The maps' generation last written to the config (see `PassCache`).
    generation: u32,
    flow_cache: bool,
}

impl Resolved {
    /// Names the spec refers to that were found, for link-event filtering.
    pub fn watches(&self, name: &str) -> bool {
        self.spec.interfaces.iter().any(|f| f.name == name)
            || self.spec.pods.iter().any(|p| p.pod.host_interface == name)
    }
}

impl Guard {
    /// Loads the guard programs with their maps pinned (reused if already pinned), sized by
    /// `capacity` (a predecessor's pinned maps keep their size; the smaller one is enforced).
    pub fn load(pins: PinDir, attach_mode: AttachMode, capacity: Capacity) -> Result<Self, GuardError> {
        let attach_mode = attach_mode.resolve();
        if attach_mode == AttachMode::Tcx && !kernel_has_tcx() {
            return Err(GuardError::Interface {
                iface: "*".into(),
                problem: "TCX needs kernel >= 6.6; use --attach netlink".into(),
            });
        }
        // A predecessor's maps; one from before IPv6 intent has no INTENT6_MAP yet, and gets it.
        let adopted = pins.map(INTENT_MAP).exists();
        pins.create()?;
        let pinned: Vec<_> = GUARD_MAPS.iter().map(|name| (*name, pins.map(name))).collect();
        let sizes = [
            (INTENT_MAP, capacity.pods),
            (INTENT6_MAP, capacity.pods),
            (VETH_MAP, capacity.pods),
            (POD_COUNTERS_MAP, capacity.pods),
            (RATE_MAP, capacity.pods),
            (TRUTH_MAP, capacity.ifaces),
        ];
        let mut ebpf = super::load(&pinned, &sizes)?;
        for hook in [Hook::Egress, Hook::PodVeth] {
            program(&mut ebpf, hook)?
                .load()
                .map_err(|source| GuardError::Program { name: hook.program(), source })?;
        }
        let capacity = Capacity {
            pods: [INTENT_MAP, INTENT6_MAP, VETH_MAP, POD_COUNTERS_MAP, RATE_MAP]
                .iter()
                .map(|m| max_entries(&ebpf, m))
                .try_fold(capacity.pods, |acc, n| n.map(|n| acc.min(n)))?,
            ifaces: max_entries(&ebpf, TRUTH_MAP)?.min(capacity.ifaces),
        };
        let config = {
            let map = ebpf.map(CONFIG_MAP).ok_or(GuardError::MissingMap(CONFIG_MAP))?;
            let array: Array<&MapData, GuardConfig> = Array::try_from(map).map_err(map_err(CONFIG_MAP))?;
            array.get(&0, 0).map_err(map_err(CONFIG_MAP))?
        };
        let programmed = Programmed {
            config,
            truth: read_map(&ebpf, TRUTH_MAP)?,
            intent: read_map(&ebpf, INTENT_MAP)?,
            intent6: read_map(&ebpf, INTENT6_MAP)?,
            veths: read_map(&ebpf, VETH_MAP)?,
        };
        Ok(Self {
            ebpf,
            pins,
            attach_mode,
            names: Names::default(),
            capacity,
            attached: BTreeMap::new(),
            programmed,
            maps_exact: true,
            adopted,
            first_apply: true,
            generation: config.generation,
            flow_cache: true,
        })
    }

    /// Turns the per-CPU pass cache of both programs on or off (benchmarks compare the two).
    pub fn set_flow_cache(&mut self, on: bool) -> Result<(), GuardError> {
        self.flow_cache = on;
        self.programmed.config.flow_cache = u32::from(on);
        let config = self.programmed.config;
        self.write_config(config)
    }

    /// Writes the config with the next generation: every pass-cache entry made before is void.
    fn write_config(&mut self, config: GuardConfig) -> Result<(), GuardError> {
        self.generation = match self.generation.wrapping_add(1) {
            0 => 1,
            g => g,
        };
        let mut cfg: Array<&mut MapData, GuardConfig> = typed(&mut self.ebpf, CONFIG_MAP)?;
        cfg.set(0, GuardConfig { generation: self.generation, ..config }, 0).map_err(map_err(CONFIG_MAP))
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
    }

    /// Programs the maps from `resolved`, then attaches to new interfaces and detaches from
    /// interfaces no longer named. All or nothing: on an error the maps are put back as they were,
    /// what this call attached is detached, and the error names what failed.
    pub fn apply(&mut self, resolved: &Resolved) -> Result<(), GuardError> {
        let spec = &resolved.spec;
        let (pods, ifaces) = (spec.pods.len(), spec.interfaces.len());
        if pods > self.capacity.pods as usize || ifaces > self.capacity.ifaces as usize {
            return Err(GuardError::Capacity {
                pods,
                ifaces,
                max_pods: self.capacity.pods,
                max_ifaces: self.capacity.ifaces,
            });
        }
        let known_pods: BTreeSet<(String, String)> = self.names.pods.iter().map(|(k, _)| k.clone()).collect();
        let want = self.desired(resolved);
        let old = self.programmed.clone();
        let result = self.write_maps(&old, &want).and_then(|()| self.attach_wanted(resolved));
        if let Err(e) = result {
            // Back to what the kernel held before this call, from whatever part was written.
            self.maps_exact = false;
            match self.write_maps(&want, &old) {
                Ok(()) => self.maps_exact = true,
                Err(rollback) => log::error!("restoring the guard maps after a failed apply: {rollback}"),
            }
            self.programmed = old;
            let wanted: BTreeSet<(String, String)> =
                spec.pods.iter().map(|p| (p.pod.namespace.clone(), p.pod.name.clone())).collect();
            for pod in wanted.difference(&known_pods) {
                self.names.pods.release(pod);
            }
            return Err(e);
        }
        self.programmed = want;
        self.maps_exact = true;
        self.forget_departed_pods(spec)?;
        if self.first_apply {
            // Per-pod counters and rate windows a predecessor left carry its pod ids.
            clear_map::<u32, PodCounters>(&mut self.ebpf, POD_COUNTERS_MAP, true)?;
            clear_map::<u32, RateWindow>(&mut self.ebpf, RATE_MAP, false)?;
            self.first_apply = false;
        }
        Ok(())
    }

    /// The map contents `resolved` calls for (pods and ENIs interned on first sight).
    fn desired(&mut self, resolved: &Resolved) -> Programmed {
        let spec = &resolved.spec;
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
        let (mut intent, mut intent6) = (StdHashMap::new(), StdHashMap::new());
        let mut veths = StdHashMap::new();
        for p in &spec.pods {
            let pod_id = self.names.pods.id(&(p.pod.namespace.clone(), p.pod.name.clone()));
            let mode = p.pod.mode.map_or(MODE_INHERIT, mode_value);
            let mut value = PodIntent {
                pod_id,
                eni_id: self.names.enis.id(&p.pod.expect.eni),
                sg_set_id: self.names.sg_sets.id(&sg_set(&p.pod.expect.security_groups)),
                vlan: u32::from(p.pod.expect.vlan),
                mode,
                allowed: Default::default(),
            };
            value.allowed = allowed_exits(&value, &truth);
            match p.ip {
                IpAddr::V4(ip) => intent.insert(ip.octets(), value),
                IpAddr::V6(ip) => intent6.insert(ip.octets(), value),
            };
            if let Some(&ifindex) = resolved.ifindex.get(&p.pod.host_interface) {
                veths.insert(ifindex, VethPod { pod_id, mode, addr: addr_key(p.ip) });
            }
        }
        let config = GuardConfig {
            mode: mode_value(spec.mode),
            events_per_pod_per_sec: spec.events_per_pod_per_second,
            generation: 0, // set when written
            flow_cache: u32::from(self.flow_cache),
        };
        Programmed { config, truth, intent, intent6, veths }
    }

    /// Moves the maps from `from` to `to` in the order that never passes what the full check
    /// would flag (see the module docs). The generation is bumped first, so that no cached pass
    /// outlives the old state, and last, so that none computed from a half-written state survives.
    fn write_maps(&mut self, from: &Programmed, to: &Programmed) -> Result<(), GuardError> {
        self.write_config(from.config)?;
        let interim = interim_intents(&from.intent, &to.intent);
        let interim6 = interim_intents(&from.intent6, &to.intent6);
        self.write_map(INTENT_MAP, &from.intent, &interim)?;
        self.write_map(INTENT6_MAP, &from.intent6, &interim6)?;
        self.write_map(TRUTH_MAP, &from.truth, &to.truth)?;
        self.write_map(INTENT_MAP, &interim, &to.intent)?;
        self.write_map(INTENT6_MAP, &interim6, &to.intent6)?;
        self.write_map(VETH_MAP, &from.veths, &to.veths)?;
        self.write_config(to.config)
    }

    /// Moves one map from `from` to `to`: by their difference while the map is known to hold
    /// `from` (a pod's ADD writes a handful of entries, whatever the node holds), else by reading
    /// it back. A difference that does not apply (an entry removed behind the agent's back) falls
    /// back to the full rewrite.
    fn write_map<K, V>(
        &mut self,
        name: &'static str,
        from: &StdHashMap<K, V>,
        to: &StdHashMap<K, V>,
    ) -> Result<(), GuardError>
    where
        K: Pod + Eq + Hash,
        V: Pod + PartialEq,
    {
        if self.maps_exact {
            match diff_map(&mut self.ebpf, name, from, to) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::warn!("guard map {name} is not as this agent wrote it ({e}); rewriting it whole");
                    self.maps_exact = false;
                }
            }
        }
        sync_map(&mut self.ebpf, name, to)
    }

    /// Makes the next apply read every map entry back instead of trusting what this agent wrote
    /// (the periodic resync: an entry changed with bpftool is put right within one interval).
    pub fn reread_next(&mut self) {
        self.maps_exact = false;
    }

    /// Attaches to every interface the spec names that is present, and detaches from the rest.
    fn attach_wanted(&mut self, resolved: &Resolved) -> Result<(), GuardError> {
        let spec = &resolved.spec;
        let wanted: BTreeMap<(String, Hook), u32> = spec
            .interfaces
            .iter()
            .map(|f| (f.name.clone(), Hook::Egress))
            .chain(spec.pods.iter().map(|p| (p.pod.host_interface.clone(), Hook::PodVeth)))
            .filter_map(|key| resolved.ifindex.get(&key.0).map(|index| (key, *index)))
            .collect();
        // Re-created interfaces (same name, new ifindex): the old attachment is dead. Detach it
        // first, so that its pin is gone before the new link is pinned at the same path.
        let recreated: Vec<_> = self
            .attached
            .iter()
            .filter(|(key, a)| wanted.get(*key).is_some_and(|index| *index != a.ifindex))
            .map(|(key, _)| key.clone())
            .collect();
        for key in recreated {
            if let Some(a) = self.attached.remove(&key) {
                detach(a.link);
            }
        }
        let mut added = Vec::new();
        for ((iface, hook), index) in &wanted {
            let key = (iface.clone(), *hook);
            if self.attached.contains_key(&key) {
                continue;
            }
            match self.attach(iface, *hook, *index) {
                Ok(a) => {
                    self.attached.insert(key.clone(), a);
                    added.push(key);
                }
                Err(e) => {
                    for key in added {
                        if let Some(a) = self.attached.remove(&key).filter(|a| a.fresh) {
                            detach(a.link);
                        }
                    }
                    return Err(e);
                }
            }
        }
        // Gone from the spec or from the namespace.
        let stale: Vec<_> = self.attached.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for key in stale {
            if let Some(a) = self.attached.remove(&key) {
                detach(a.link);
            }
        }
        Ok(())
    }

    /// Removes the per-pod counter and rate entries of pods no longer in `spec`, and frees their
    /// ids for reuse.
    fn forget_departed_pods(&mut self, spec: &ValidSpec) -> Result<(), GuardError> {
        let wanted: BTreeSet<(String, String)> =
            spec.pods.iter().map(|p| (p.pod.namespace.clone(), p.pod.name.clone())).collect();
        let departed: Vec<(String, String)> =
            self.names.pods.iter().map(|(k, _)| k.clone()).filter(|k| !wanted.contains(k)).collect();
        for pod in departed {
            let Some(id) = self.names.pods.release(&pod) else { continue };
            let mut counters: PerCpuHashMap<&mut MapData, u32, PodCounters> =
                typed(&mut self.ebpf, POD_COUNTERS_MAP)?;
            let _ = counters.remove(&id);
            let mut rate: HashMap<&mut MapData, u32, RateWindow> = typed(&mut self.ebpf, RATE_MAP)?;
            let _ = rate.remove(&id);
        }
        Ok(())
    }

    /// Attaches `hook`'s program to `iface`, replacing in place what an earlier run left there
    /// in the same mode, and removing what it left in the other mode.
    fn attach(&mut self, iface: &str, hook: Hook, ifindex: u32) -> Result<Attachment, GuardError> {
        let err = |step: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| GuardError::Attach {
                iface: iface.to_owned(),
                step,
                source: e,
            }
        };
        let pin = self.pins.link(iface, hook.label());
        let mode = self.attach_mode;
        let opts = hook.nl_options();
        let prog = program(&mut self.ebpf, hook)?;
        match mode {
            AttachMode::Tcx => {
                // A netlink filter of ours from a run in the other mode would judge twice (it is
                // found by its program's name; there is none on most interfaces).
                let _ = aya::programs::tc::qdisc_detach_program(iface, hook.attach_type(), hook.program());
                let taken_over = PinnedLink::from_pin(&pin).ok().and_then(|old| {
                    let link = SchedClassifierLink::try_from(FdLink::from(old)).ok()?;
                    match prog.attach_to_link(link) {
                        Ok(id) => Some(id),
                        Err(e) => {
                            // Stale: the interface was re-created while no agent ran.
                            log::info!("replacing the stale link pin {}: {e}", pin.display());
                            let _ = std::fs::remove_file(&pin);
                            None
                        }
                    }
                });
                let fresh = taken_over.is_none();
                let id = match taken_over {
                    Some(id) => id,
                    None => prog
                        .attach_with_options(
                            iface,
                            hook.attach_type(),
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(|e| err("TCX attach")(Box::new(e)))?,
                };
                let link = prog.take_link(id).map_err(|e| err("taking the TCX link")(Box::new(e)))?;
                let link = FdLink::try_from(link).map_err(|e| err("taking the TCX link")(Box::new(e)))?;
                let link = if pin.exists() {
                    link
                } else {
                    FdLink::from(link.pin(&pin).map_err(|e| err("pinning the TCX link")(Box::new(e)))?)
                };
                Ok(Attachment { ifindex, link: Link::Tcx { link, pin }, fresh })
            }
            _ => {
                // A TCX link of ours from a run in the other mode would judge twice.
                if let Ok(old) = PinnedLink::from_pin(&pin) {
                    let _ = old.unpin();
                }
                ensure_clsact(iface)?;
                // Replace our filter in place if one is there (a failed replace changes nothing:
                // a foreign filter at our priority is left alone, and the create below fails).
                let replaced = SchedClassifierLink::attached(
                    iface,
                    hook.attach_type(),
                    opts.priority,
                    opts.handle,
                    None,
                )
                .ok()
                .and_then(|old| prog.attach_to_link(old).ok());
                let fresh = replaced.is_none();
                let id = match replaced {
                    Some(id) => id,
                    None => prog
                        .attach_with_options(iface, hook.attach_type(), TcAttachOptions::Netlink(opts))
                        .map_err(|e| err("netlink attach")(Box::new(e)))?,
                };
                let link = prog.take_link(id).map_err(|e| err("taking the netlink link")(Box::new(e)))?;
                Ok(Attachment { ifindex, link: Link::Netlink(link), fresh })
            }
        }
    }

    /// Runs `program` (a guard program or `bench_empty`) on `frame` `repeat` times with
    /// BPF_PROG_TEST_RUN against the live maps, as if it passed `ifindex` (0: `lo`); returns the
    /// kernel's average time per run and the verdict.
    pub fn test_run(
        &mut self,
        program_name: &'static str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(std::time::Duration, i32), GuardError> {
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
        // struct __sk_buff up to and including `ifindex` (offset 40); the kernel takes the device
        // from it.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: (ifindex != 0).then_some(&ctx[..]),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|source| GuardError::Program { name: program_name, source })?;
        Ok((result.duration, result.return_value as i32))
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
        for (_, a) in attached {
            if keep_datapath {
                keep(a.link);
            } else {
                detach(a.link);
            }
        }
        if !keep_datapath {
            self.pins.remove()?;
        }
        Ok(())
    }

    /// After a start that failed: a predecessor's datapath (pins, links, maps as [`Guard::apply`]
    /// restored them) stays as it was and only what this run attached anew is removed; with no
    /// predecessor everything goes.
    pub fn abandon_start(&mut self) -> Result<(), GuardError> {
        if !self.adopted {
            return self.shutdown(false);
        }
        for (_, a) in std::mem::take(&mut self.attached) {
            if a.fresh {
                detach(a.link);
            } else {
                keep(a.link);
            }
        }
        Ok(())
    }
}

/// Leaves an attachment in place after this process exits.
fn keep(link: Link) {
    match link {
        Link::Tcx { link, .. } => drop(link), // the pin keeps the link alive
        Link::Netlink(link) => std::mem::forget(link), // a netlink filter outlives us
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

fn detach(link: Link) {
    match link {
        Link::Tcx { link, pin } => {
            let _ = std::fs::remove_file(&pin);
            drop(link); // last reference: the kernel detaches the link
        }
        Link::Netlink(link) => drop(link), // the wrapper detaches on drop
    }
}

/// The intents written before truth changes: the new intents, each with only the fast-path exits
/// valid both before and after the update (a packet that takes the fast path in between is one
/// that both the old and the new full check pass).
pub fn interim_intents<K: Copy + Eq + Hash>(
    from: &StdHashMap<K, PodIntent>,
    to: &StdHashMap<K, PodIntent>,
) -> StdHashMap<K, PodIntent> {
    to.iter()
        .map(|(k, new)| {
            let before = from.get(k).map(|o| o.allowed).unwrap_or_default();
            (*k, PodIntent { allowed: intersect(&before, &new.allowed), ..*new })
        })
        .collect()
}

/// The fast-path exits valid both before and after an update.
fn intersect(a: &[IfaceKey; ALLOWED_EXITS], b: &[IfaceKey; ALLOWED_EXITS]) -> [IfaceKey; ALLOWED_EXITS] {
    let mut out = [IfaceKey::default(); ALLOWED_EXITS];
    for (slot, key) in out.iter_mut().zip(a.iter().filter(|k| k.ifindex != 0 && b.contains(k))) {
        *slot = *key;
    }
    out
}

/// Summed counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub node: GuardCounters,
    pub pods: Vec<(u32, PodCounters)>,
}

fn add_node(mut acc: GuardCounters, v: &GuardCounters) -> GuardCounters {
    for k in 0..KINDS {
        acc.pod_frames[k] += v.pod_frames[k];
    }
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

/// The kernel's key for `ip` (IPv4 in the first 4 bytes).
pub fn addr_key(ip: IpAddr) -> AddrKey {
    match ip {
        IpAddr::V4(ip) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&ip.octets());
            AddrKey { family: FAMILY_IPV4, addr }
        }
        IpAddr::V6(ip) => AddrKey { family: FAMILY_IPV6, addr: ip.octets() },
    }
}

/// The address a kernel key holds.
pub fn addr_of(key: &AddrKey) -> IpAddr {
    if key.family == FAMILY_IPV6 {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]))
    }
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

/// Makes the pinned hash map hold exactly `want`: removes entries it should not hold (left by an
/// earlier run or an earlier spec), then writes every entry, so it never needs room for both.
fn sync_map<K, V>(ebpf: &mut Ebpf, name: &'static str, want: &StdHashMap<K, V>) -> Result<(), GuardError>
where
    K: Pod + Eq + Hash,
    V: Pod + PartialEq,
{
    let mut map: HashMap<&mut MapData, K, V> = typed(ebpf, name)?;
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !want.contains_key(k)).collect();
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0).map_err(map_err(name))?;
        }
    }
    Ok(())
}

/// Writes the difference from `from` (what the map holds) to `want`.
fn diff_map<K, V>(
    ebpf: &mut Ebpf,
    name: &'static str,
    from: &StdHashMap<K, V>,
    want: &StdHashMap<K, V>,
) -> Result<(), GuardError>
where
    K: Pod + Eq + Hash,
    V: Pod + PartialEq,
{
    let mut map: HashMap<&mut MapData, K, V> = typed(ebpf, name)?;
    for k in from.keys().filter(|k| !want.contains_key(k)) {
        map.remove(k).map_err(map_err(name))?;
    }
    for (k, v) in want.iter().filter(|(k, v)| from.get(k) != Some(v)) {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// A hash map's entries (what a predecessor left, at load).
fn read_map<K, V>(ebpf: &Ebpf, name: &'static str) -> Result<StdHashMap<K, V>, GuardError>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let map = ebpf.map(name).ok_or(GuardError::MissingMap(name))?;
    let map: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// Removes every entry of a (per-CPU, when `per_cpu`) hash map keyed by `K`.
fn clear_map<K: Pod, V: Pod>(ebpf: &mut Ebpf, name: &'static str, per_cpu: bool) -> Result<(), GuardError> {
    if per_cpu {
        let mut map: PerCpuHashMap<&mut MapData, K, V> = typed(ebpf, name)?;
        let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = map.remove(&k);
        }
    } else {
        let mut map: HashMap<&mut MapData, K, V> = typed(ebpf, name)?;
        let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = map.remove(&k);
        }
    }
    Ok(())
}

/// A map's capacity as the kernel holds it.
fn max_entries(ebpf: &Ebpf, name: &'static str) -> Result<u32, GuardError> {
    let map = ebpf.map(name).ok_or(GuardError::MissingMap(name))?;
    let data = match map {
        Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
        _ => return Err(GuardError::MissingMap(name)),
    };
    Ok(data.info().map_err(map_err(name))?.max_entries())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ifindex: u32) -> IfaceKey {
        IfaceKey { ifindex, vlan: 0 }
    }

    fn intent(allowed: &[u32]) -> PodIntent {
        let mut v = PodIntent { pod_id: 1, eni_id: 1, sg_set_id: 1, ..PodIntent::default() };
        for (slot, i) in v.allowed.iter_mut().zip(allowed) {
            *slot = key(*i);
        }
        v
    }

    #[test]
    fn interim_intents_keep_only_exits_valid_before_and_after() {
        let a = [10, 0, 1, 10];
        let b = [10, 0, 1, 11];
        let from = StdHashMap::from([(a, intent(&[3, 4]))]);
        let to = StdHashMap::from([(a, intent(&[4, 5])), (b, intent(&[4]))]);
        let interim = interim_intents(&from, &to);
        assert_eq!(interim[&a].allowed, intent(&[4]).allowed, "exit 3 is gone after, 5 not valid before");
        assert_eq!(
            interim[&b].allowed,
            intent(&[]).allowed,
            "a new pod takes the full check until truth is in"
        );
        assert_eq!(interim.len(), 2);
    }
}
