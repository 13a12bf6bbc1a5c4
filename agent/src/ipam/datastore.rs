//! The datastore: which addresses exist on which ENI, which are assigned to which pod, which are
//! cooling down. Pure: no EC2, Kubernetes or netlink; the clock is a parameter.
//!
//! Every path goes through [`exclusion`]: an excluded ENI (trunk, EFA, EFA-only, no_manage,
//! excluded subnet, primary under custom networking) never contributes an address to the pool,
//! never hands one out, and addresses found on it are returned as findings.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::Ipv4Addr,
};

use super::model::{exclusion, AllocKey, Allocation, Cidr, EniFlags, EniSpec, Exclusion, PodRef, UnixNanos};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatastoreConfig {
    /// Prefix delegation: /28 prefixes are the pool; otherwise /32 secondary addresses are.
    pub prefix_delegation: bool,
    pub custom_networking: bool,
    /// IP_COOLDOWN_PERIOD: a released address is not handed out again before this has passed.
    pub cooldown_nanos: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatastoreError {
    #[error("ENI {0} is already in the datastore")]
    DuplicateEni(String),
    #[error("ENI {0} is not in the datastore")]
    UnknownEni(String),
    #[error("{cidr} is already on ENI {eni}")]
    DuplicateCidr { cidr: Cidr, eni: String },
    #[error("{cidr} overlaps {other} on ENI {eni}")]
    OverlappingCidr { cidr: Cidr, other: Cidr, eni: String },
    #[error("{ip} is held on ENI {eni}, a {why}: it is never handed out")]
    HeldOnExcludedEni { ip: Ipv4Addr, eni: String, why: Exclusion },
    #[error("no free address: every allocatable ENI is full or cooling down")]
    NoAvailableAddress,
    #[error("{cidr} on ENI {eni} still has assigned addresses")]
    CidrInUse { cidr: Cidr, eni: String },
    #[error("address {ip} is allocated twice: to {first:?} and to {second:?}")]
    DuplicateAddress { ip: Ipv4Addr, first: Box<AllocKey>, second: Box<AllocKey> },
    #[error("allocation {0:?} appears twice")]
    DuplicateKey(Box<AllocKey>),
}

/// An address found where pods must never get one (reported and exported, never handed out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub eni: String,
    pub cidr: Cidr,
    pub why: Exclusion,
}

/// What [`Datastore::restore`] did with allocations it could not simply take back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Their address is on no ENI of the node any more: dropped.
    pub dropped: Vec<Allocation>,
    /// Their address sits on an excluded ENI (a trunk address handed out by a pre-fix aws-node):
    /// kept, so that the checkpoint keeps the evidence and the pod can still be deleted, but
    /// never handed out again. Each comes with the finding that names the ENI and why.
    pub on_excluded: Vec<(Allocation, Finding)>,
    /// IPv6 mode: their address is outside the node's /80 (an earlier prefix): dropped.
    pub dropped6: Vec<super::pool6::Allocation6>,
}

#[derive(Debug)]
struct EniState {
    spec: EniSpec,
    excluded: Option<Exclusion>,
    added_at: UnixNanos,
    /// Current-mode and leftover CIDRs, with the addresses of each that are assigned.
    cidrs: BTreeMap<Cidr, BTreeSet<Ipv4Addr>>,
    /// Current-mode addresses never handed out since they were added (lowest first).
    fresh: BTreeSet<Ipv4Addr>,
    /// Released addresses whose cooldown has passed (reused before fresh ones).
    reusable: BTreeSet<Ipv4Addr>,
    /// Released addresses in release order (so also in cooldown-expiry order).
    cooling: VecDeque<(Ipv4Addr, UnixNanos)>,
}

impl EniState {
    /// The /32 or /28 on this ENI that holds `ip` (two map lookups).
    fn cidr_of(&self, ip: Ipv4Addr) -> Option<Cidr> {
        let host = Cidr::host(ip);
        if self.cidrs.contains_key(&host) {
            return Some(host);
        }
        Cidr::prefix28(Ipv4Addr::from(u32::from(ip) & !15)).filter(|p| self.cidrs.contains_key(p))
    }

    fn promote_cooled(&mut self, now: UnixNanos, cooldown: u64) {
        while let Some((ip, at)) = self.cooling.front().copied() {
            if now.saturating_sub(at) < cooldown {
                break;
            }
            self.cooling.pop_front();
            self.reusable.insert(ip);
        }
    }
}

/// Counts over allocatable ENIs and current-mode CIDRs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: u32,
    pub assigned: u32,
    pub cooling: u32,
    /// Prefixes (PD) or /32s (otherwise) in the pool.
    pub cidrs: u32,
    /// Current-mode CIDRs with no assigned or cooling address.
    pub free_cidrs: u32,
    /// ENIs in the pool (allocatable).
    pub enis: u32,
}

impl Stats {
    /// Addresses that can be handed out now. Unlike upstream (#2896), cooling addresses are not
    /// counted, so a pool full of just-released addresses still grows.
    pub fn available(&self) -> u32 {
        self.total - self.assigned - self.cooling
    }
}

#[derive(Debug)]
pub struct Datastore {
    cfg: DatastoreConfig,
    enis: BTreeMap<String, EniState>,
    /// Allocatable ENIs, lowest device number first: the order addresses are handed out in.
    pool_order: Vec<String>,
    /// Which ENI holds each CIDR, excluded ENIs included: an address's home is two hash lookups,
    /// and no address can be added to two ENIs.
    cidr_owner: HashMap<Cidr, String>,
    allocations: HashMap<AllocKey, Allocation>,
}

impl Datastore {
    pub fn new(cfg: DatastoreConfig) -> Self {
        Self {
            cfg,
            enis: BTreeMap::new(),
            pool_order: Vec::new(),
            cidr_owner: HashMap::new(),
            allocations: HashMap::new(),
        }
    }

    fn reorder_pool(&mut self) {
        let mut order: Vec<(u32, String)> = self
            .enis
            .values()
            .filter(|e| e.excluded.is_none())
            .map(|e| (e.spec.device_number, e.spec.id.clone()))
            .collect();
        order.sort();
        self.pool_order = order.into_iter().map(|(_, id)| id).collect();
    }

    pub fn config(&self) -> &DatastoreConfig {
        &self.cfg
    }

    /// How many addresses are allocated to pods (no walk: the agent asks every second).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Adds an ENI (import at start, or one the control plane attached).
    pub fn add_eni(&mut self, spec: EniSpec, now: UnixNanos) -> Result<(), DatastoreError> {
        if self.enis.contains_key(&spec.id) {
            return Err(DatastoreError::DuplicateEni(spec.id));
        }
        let excluded = exclusion(&spec.flags, self.cfg.custom_networking);
        let state = EniState {
            spec,
            excluded,
            added_at: now,
            cidrs: BTreeMap::new(),
            fresh: BTreeSet::new(),
            reusable: BTreeSet::new(),
            cooling: VecDeque::new(),
        };
        self.enis.insert(state.spec.id.clone(), state);
        self.reorder_pool();
        Ok(())
    }

    /// Changes an ENI's flags (a `no_manage` tag or a subnet exclusion added or removed on a live
    /// ENI) and applies the exclusion rule again. Returns the ENI's exclusion now.
    pub fn set_flags(&mut self, eni: &str, flags: EniFlags) -> Result<Option<Exclusion>, DatastoreError> {
        let state = self.enis.get_mut(eni).ok_or_else(|| DatastoreError::UnknownEni(eni.to_owned()))?;
        state.spec.flags = flags;
        Ok(self.reevaluate(eni))
    }

    /// Turns custom networking on or off (the node's ENIConfig appeared or went away); the
    /// primary ENI leaves or joins the pool.
    pub fn set_custom_networking(&mut self, on: bool) {
        self.cfg.custom_networking = on;
        let ids: Vec<String> = self.enis.keys().cloned().collect();
        for id in ids {
            self.reevaluate(&id);
        }
    }

    /// Applies the exclusion rule to `eni` again. An ENI that leaves the pool hands out nothing
    /// more (its assigned addresses become findings); one that joins it offers every address
    /// of the current mode that is neither assigned nor cooling.
    fn reevaluate(&mut self, eni: &str) -> Option<Exclusion> {
        let pd = self.cfg.prefix_delegation;
        let state = self.enis.get_mut(eni)?;
        let before = state.excluded;
        state.excluded = exclusion(&state.spec.flags, self.cfg.custom_networking);
        if state.excluded.is_some() {
            state.fresh.clear();
            state.reusable.clear();
        } else if before.is_some() {
            let cooling: BTreeSet<Ipv4Addr> = state.cooling.iter().map(|(ip, _)| *ip).collect();
            state.fresh = state
                .cidrs
                .iter()
                .filter(|(c, _)| c.is_prefix() == pd)
                .flat_map(|(c, assigned)| c.addresses().filter(move |ip| !assigned.contains(ip)))
                .filter(|ip| !cooling.contains(ip))
                .collect();
        }
        let now = state.excluded;
        if now != before {
            self.reorder_pool();
        }
        now
    }

    /// The CIDR (of any ENI) that `cidr` would collide with, and its ENI.
    fn collision(&self, cidr: Cidr) -> Option<(Cidr, &String)> {
        let found = |c: Cidr| self.cidr_owner.get(&c).map(|eni| (c, eni));
        if let Some(hit) = found(cidr) {
            return Some(hit);
        }
        if cidr.is_prefix() {
            cidr.addresses().find_map(|ip| found(Cidr::host(ip)))
        } else {
            Cidr::prefix28(Ipv4Addr::from(u32::from(cidr.addr) & !15)).and_then(found)
        }
    }

    /// Adds a CIDR found on (or assigned to) an ENI. On an excluded ENI it is recorded as a
    /// finding and returned, never added to the pool. A CIDR of the other mode (a leftover of a
    /// prefix-delegation switch) is kept but never handed out, so that it can be released. A CIDR
    /// that is, or overlaps, one already on any ENI is refused: one address, one owner.
    pub fn add_cidr(&mut self, eni: &str, cidr: Cidr) -> Result<Option<Finding>, DatastoreError> {
        if !self.enis.contains_key(eni) {
            return Err(DatastoreError::UnknownEni(eni.to_owned()));
        }
        if let Some((other, owner)) = self.collision(cidr) {
            return Err(if other == cidr && owner == eni {
                DatastoreError::DuplicateCidr { cidr, eni: eni.to_owned() }
            } else {
                DatastoreError::OverlappingCidr { cidr, other, eni: owner.clone() }
            });
        }
        let pd = self.cfg.prefix_delegation;
        let Some(state) = self.enis.get_mut(eni) else {
            return Err(DatastoreError::UnknownEni(eni.to_owned()));
        };
        state.cidrs.insert(cidr, BTreeSet::new());
        self.cidr_owner.insert(cidr, eni.to_owned());
        if let Some(why) = state.excluded {
            return Ok(Some(Finding { eni: eni.to_owned(), cidr, why }));
        }
        if cidr.is_prefix() == pd {
            state.fresh.extend(cidr.addresses());
        }
        Ok(None)
    }

    /// Removes a CIDR that has no assigned address (after EC2 released it).
    pub fn remove_cidr(&mut self, eni: &str, cidr: Cidr) -> Result<(), DatastoreError> {
        let state = self.enis.get_mut(eni).ok_or_else(|| DatastoreError::UnknownEni(eni.to_owned()))?;
        match state.cidrs.get(&cidr) {
            None => return Ok(()),
            Some(assigned) if !assigned.is_empty() => {
                return Err(DatastoreError::CidrInUse { cidr, eni: eni.to_owned() })
            }
            Some(_) => {}
        }
        state.cidrs.remove(&cidr);
        self.cidr_owner.remove(&cidr);
        state.fresh.retain(|ip| !cidr.contains(*ip));
        state.reusable.retain(|ip| !cidr.contains(*ip));
        state.cooling.retain(|(ip, _)| !cidr.contains(*ip));
        Ok(())
    }

    /// Removes an ENI without assigned addresses (after EC2 detached and deleted it).
    pub fn remove_eni(&mut self, eni: &str) -> Result<(), DatastoreError> {
        let Some(state) = self.enis.get(eni) else { return Ok(()) };
        if let Some((cidr, _)) = state.cidrs.iter().find(|(_, a)| !a.is_empty()) {
            return Err(DatastoreError::CidrInUse { cidr: *cidr, eni: eni.to_owned() });
        }
        if let Some(state) = self.enis.remove(eni) {
            for cidr in state.cidrs.keys() {
                self.cidr_owner.remove(cidr);
            }
        }
        self.reorder_pool();
        Ok(())
    }

    /// Hands an address to `key`: the existing one if `key` already has one (CNI ADD is
    /// idempotent), else the first free address of the lowest-numbered allocatable ENI,
    /// out-of-cooldown reused addresses before never-used ones. An existing allocation on an
    /// excluded ENI (restored from a pre-fix checkpoint) is refused, never handed out again.
    pub fn assign(
        &mut self,
        key: &AllocKey,
        pod: &PodRef,
        now: UnixNanos,
    ) -> Result<Allocation, DatastoreError> {
        if let Some(a) = self.allocations.get(key).cloned() {
            if let Some((eni, why)) =
                self.home_of(a.ip).and_then(|(s, _)| s.excluded.map(|w| (s.spec.id.clone(), w)))
            {
                return Err(DatastoreError::HeldOnExcludedEni { ip: a.ip, eni, why });
            }
            return Ok(a);
        }
        let cooldown = self.cfg.cooldown_nanos;
        for id in &self.pool_order {
            let Some(state) = self.enis.get_mut(id) else { continue };
            state.promote_cooled(now, cooldown);
            let ip = match state.reusable.pop_first() {
                Some(ip) => ip,
                None => match state.fresh.pop_first() {
                    Some(ip) => ip,
                    None => continue,
                },
            };
            if let Some(cidr) = state.cidr_of(ip) {
                state.cidrs.entry(cidr).or_default().insert(ip);
            }
            let allocation = Allocation { key: key.clone(), ip, pod: pod.clone(), allocated_at: now };
            self.allocations.insert(key.clone(), allocation.clone());
            return Ok(allocation);
        }
        Err(DatastoreError::NoAvailableAddress)
    }

    /// Releases `key`'s address (CNI DEL); it cools down before it can be handed out again.
    /// `None` when `key` has nothing (DEL is idempotent).
    pub fn release(&mut self, key: &AllocKey, now: UnixNanos) -> Option<Allocation> {
        let allocation = self.allocations.remove(key)?;
        let pd = self.cfg.prefix_delegation;
        if let Some((state, cidr)) = self.home_of(allocation.ip) {
            if let Some(assigned) = state.cidrs.get_mut(&cidr) {
                assigned.remove(&allocation.ip);
            }
            if cidr.is_prefix() == pd && state.excluded.is_none() {
                state.cooling.push_back((allocation.ip, now));
            }
        }
        Some(allocation)
    }

    /// Undoes [`Datastore::assign`] exactly (checkpoint write failed): the address goes back to
    /// where it came from without cooling down.
    pub fn unassign_rollback(&mut self, key: &AllocKey) {
        let Some(allocation) = self.allocations.remove(key) else { return };
        if let Some((state, cidr)) = self.home_of(allocation.ip) {
            if let Some(assigned) = state.cidrs.get_mut(&cidr) {
                assigned.remove(&allocation.ip);
            }
            if state.excluded.is_none() {
                state.reusable.insert(allocation.ip);
            }
        }
    }

    /// Undoes [`Datastore::release`] exactly (checkpoint write failed).
    pub fn release_rollback(&mut self, allocation: Allocation) {
        if let Some((state, cidr)) = self.home_of(allocation.ip) {
            state.cooling.retain(|(ip, _)| *ip != allocation.ip);
            if let Some(assigned) = state.cidrs.get_mut(&cidr) {
                assigned.insert(allocation.ip);
            }
        }
        self.allocations.insert(allocation.key.clone(), allocation);
    }

    /// Restores allocations from a checkpoint, after the ENIs and CIDRs were imported. An
    /// allocation whose address is on no ENI any more is dropped; one whose address sits on an
    /// excluded ENI is kept and reported with its finding (see [`Restored`]). A duplicate
    /// address or key refuses the whole restore (nothing is changed).
    pub fn restore(&mut self, allocations: Vec<Allocation>) -> Result<Restored, DatastoreError> {
        let by_ip: HashMap<Ipv4Addr, &AllocKey> = self.allocations.values().map(|a| (a.ip, &a.key)).collect();
        let mut seen_ip: HashMap<Ipv4Addr, &AllocKey> = HashMap::new();
        let mut seen_key: BTreeSet<&AllocKey> = BTreeSet::new();
        for a in &allocations {
            if !seen_key.insert(&a.key) || self.allocations.contains_key(&a.key) {
                return Err(DatastoreError::DuplicateKey(Box::new(a.key.clone())));
            }
            if let Some(first) = seen_ip.insert(a.ip, &a.key).or_else(|| by_ip.get(&a.ip).copied()) {
                return Err(DatastoreError::DuplicateAddress {
                    ip: a.ip,
                    first: Box::new(first.clone()),
                    second: Box::new(a.key.clone()),
                });
            }
        }
        let mut restored = Restored::default();
        for a in allocations {
            let Some((state, cidr)) = self.home_of(a.ip) else {
                restored.dropped.push(a);
                continue;
            };
            state.fresh.remove(&a.ip);
            state.reusable.remove(&a.ip);
            state.cooling.retain(|(ip, _)| *ip != a.ip);
            state.cidrs.entry(cidr).or_default().insert(a.ip);
            if let Some(why) = state.excluded {
                restored.on_excluded.push((a.clone(), Finding { eni: state.spec.id.clone(), cidr, why }));
            }
            self.allocations.insert(a.key.clone(), a);
        }
        Ok(restored)
    }

    /// Puts addresses released before a restart back into cooldown (from the checkpoint), so
    /// that an address released just before a restart is not handed out at once after it.
    /// Addresses that are assigned, gone, or on an excluded ENI are ignored.
    pub fn restore_cooling(&mut self, cooling: &[(Ipv4Addr, UnixNanos)]) {
        for &(ip, at) in cooling {
            let Some((state, _)) = self.home_of(ip) else { continue };
            if state.excluded.is_some() || !(state.fresh.remove(&ip) || state.reusable.remove(&ip)) {
                continue;
            }
            state.cooling.push_back((ip, at));
            state.cooling.make_contiguous().sort_by_key(|(_, at)| *at);
        }
    }

    /// Released addresses still cooling down at `now`, with when they were released (what the
    /// checkpoint keeps beside the allocations).
    pub fn cooling(&self, now: UnixNanos) -> Vec<(Ipv4Addr, UnixNanos)> {
        let mut v: Vec<(Ipv4Addr, UnixNanos)> = self
            .enis
            .values()
            .filter(|e| e.excluded.is_none())
            .flat_map(|e| e.cooling.iter().copied())
            .filter(|(_, at)| now.saturating_sub(*at) < self.cfg.cooldown_nanos)
            .collect();
        v.sort();
        v
    }

    /// The ENI holding `ip` and its device number (excluded ENIs included).
    pub fn eni_of(&self, ip: Ipv4Addr) -> Option<(String, u32)> {
        let host = Cidr::host(ip);
        let prefix = Cidr::prefix28(Ipv4Addr::from(u32::from(ip) & !15));
        let owner = self.cidr_owner.get(&host).or_else(|| prefix.and_then(|p| self.cidr_owner.get(&p)))?;
        self.enis.get(owner).map(|e| (e.spec.id.clone(), e.spec.device_number))
    }

    /// The ENI and CIDR holding `ip`, excluded ENIs included.
    fn home_of(&mut self, ip: Ipv4Addr) -> Option<(&mut EniState, Cidr)> {
        let host = Cidr::host(ip);
        let cidr = if self.cidr_owner.contains_key(&host) {
            host
        } else {
            Cidr::prefix28(Ipv4Addr::from(u32::from(ip) & !15)).filter(|p| self.cidr_owner.contains_key(p))?
        };
        let owner = self.cidr_owner.get(&cidr)?;
        self.enis.get_mut(owner).map(|state| (state, cidr))
    }

    pub fn allocation(&self, key: &AllocKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// All allocations, sorted by key (the checkpoint's order).
    pub fn allocations(&self) -> Vec<Allocation> {
        let mut all: Vec<Allocation> = self.allocations.values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Every CIDR on an excluded ENI, as of now (flags re-evaluated, removed CIDRs gone).
    pub fn findings(&self) -> Vec<Finding> {
        self.enis
            .values()
            .filter_map(|e| e.excluded.map(|why| (e, why)))
            .flat_map(|(e, why)| {
                e.cidrs.keys().map(move |cidr| Finding { eni: e.spec.id.clone(), cidr: *cidr, why })
            })
            .collect()
    }

    /// Whether `eni` is excluded, and why.
    pub fn exclusion_of(&self, eni: &str) -> Option<Exclusion> {
        self.enis.get(eni).and_then(|e| e.excluded)
    }

    /// The addresses on `e` still cooling down at `now`.
    fn cooling_at(&self, e: &EniState, now: UnixNanos) -> BTreeSet<Ipv4Addr> {
        e.cooling
            .iter()
            .filter(|(_, at)| now.saturating_sub(*at) < self.cfg.cooldown_nanos)
            .map(|(ip, _)| *ip)
            .collect()
    }

    pub fn stats(&self, now: UnixNanos) -> Stats {
        let pd = self.cfg.prefix_delegation;
        let mut s = Stats::default();
        for e in self.enis.values().filter(|e| e.excluded.is_none()) {
            s.enis += 1;
            let mut cooling: HashMap<Cidr, u32> = HashMap::new();
            for ip in self.cooling_at(e, now) {
                if let Some(c) = e.cidr_of(ip) {
                    *cooling.entry(c).or_default() += 1;
                }
            }
            for (cidr, assigned) in e.cidrs.iter().filter(|(c, _)| c.is_prefix() == pd) {
                s.cidrs += 1;
                s.total += cidr.size();
                s.assigned += assigned.len() as u32;
                let cooling_here = cooling.get(cidr).copied().unwrap_or(0);
                s.cooling += cooling_here;
                if assigned.is_empty() && cooling_here == 0 {
                    s.free_cidrs += 1;
                }
            }
        }
        s
    }

    /// Per ENI: id, device number, number of current-mode CIDRs, addresses assigned and still
    /// cooling at `now`, when it was added.
    pub fn enis(&self, now: UnixNanos) -> Vec<EniView> {
        let pd = self.cfg.prefix_delegation;
        let mut v: Vec<EniView> = self
            .enis
            .values()
            .map(|e| EniView {
                id: e.spec.id.clone(),
                device_number: e.spec.device_number,
                primary: e.spec.flags.primary,
                excluded: e.excluded,
                cidrs: e.cidrs.keys().filter(|c| c.is_prefix() == pd).count() as u32,
                assigned: e.cidrs.values().map(|a| a.len() as u32).sum(),
                cooling: self.cooling_at(e, now).len() as u32,
                added_at: e.added_at,
            })
            .collect();
        v.sort_by_key(|e| e.device_number);
        v
    }

    /// Every CIDR of every ENI (excluded ENIs included) with the addresses assigned in it and
    /// those cooling at `now`, by device number (upstream's per-CIDR metric and `/v1/enis`).
    pub fn cidr_views(&self, now: UnixNanos) -> Vec<CidrView> {
        let mut enis: Vec<&EniState> = self.enis.values().collect();
        enis.sort_by_key(|e| e.spec.device_number);
        let by_ip: HashMap<Ipv4Addr, &Allocation> = self.allocations.values().map(|a| (a.ip, a)).collect();
        let mut out = Vec::new();
        for e in enis {
            for (cidr, assigned) in &e.cidrs {
                let cooling = e
                    .cooling
                    .iter()
                    .filter(|(ip, at)| {
                        cidr.contains(*ip) && now.saturating_sub(*at) < self.cfg.cooldown_nanos
                    })
                    .copied()
                    .collect();
                out.push(CidrView {
                    eni: e.spec.id.clone(),
                    cidr: *cidr,
                    excluded: e.excluded.is_some(),
                    assigned: assigned.iter().filter_map(|ip| by_ip.get(ip).map(|a| (*a).clone())).collect(),
                    cooling,
                });
            }
        }
        out
    }

    /// Every CIDR on `eni` (excluded ENIs included), for reconciling with IMDS and EC2.
    pub fn cidrs_of(&self, eni: &str) -> Vec<Cidr> {
        self.enis.get(eni).map(|e| e.cidrs.keys().copied().collect()).unwrap_or_default()
    }

    /// CIDRs that can be released from `eni`: no assigned or cooling address; leftovers of the
    /// other mode first.
    pub fn freeable_cidrs(&self, eni: &str, now: UnixNanos) -> Vec<Cidr> {
        let pd = self.cfg.prefix_delegation;
        let Some(e) = self.enis.get(eni).filter(|e| e.excluded.is_none()) else { return Vec::new() };
        let cooling: BTreeSet<Cidr> =
            self.cooling_at(e, now).into_iter().filter_map(|ip| e.cidr_of(ip)).collect();
        let mut v: Vec<Cidr> = e
            .cidrs
            .iter()
            .filter(|(c, assigned)| assigned.is_empty() && !cooling.contains(c))
            .map(|(c, _)| *c)
            .collect();
        v.sort_by_key(|c| (c.is_prefix() == pd, *c));
        v
    }
}

/// One CIDR as [`Datastore::cidr_views`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrView {
    pub eni: String,
    pub cidr: Cidr,
    pub excluded: bool,
    pub assigned: Vec<Allocation>,
    /// Released addresses still cooling, with when they were released.
    pub cooling: Vec<(Ipv4Addr, UnixNanos)>,
}

/// An ENI as the warm-pool policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    pub device_number: u32,
    pub primary: bool,
    pub excluded: Option<Exclusion>,
    /// Current-mode CIDRs on it.
    pub cidrs: u32,
    pub assigned: u32,
    pub cooling: u32,
    pub added_at: UnixNanos,
}
