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

use super::model::{exclusion, AllocKey, Allocation, Cidr, EniSpec, Exclusion, PodRef, UnixNanos};

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
    /// Which ENI holds each pool CIDR: finding an address's home is two hash lookups.
    cidr_owner: HashMap<Cidr, String>,
    allocations: HashMap<AllocKey, Allocation>,
    findings: Vec<Finding>,
}

impl Datastore {
    pub fn new(cfg: DatastoreConfig) -> Self {
        Self {
            cfg,
            enis: BTreeMap::new(),
            pool_order: Vec::new(),
            cidr_owner: HashMap::new(),
            allocations: HashMap::new(),
            findings: Vec::new(),
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

    /// Adds a CIDR found on (or assigned to) an ENI. On an excluded ENI it is recorded as a
    /// finding and returned, never added to the pool. A CIDR of the other mode (a leftover of a
    /// prefix-delegation switch) is kept but never handed out, so that it can be released.
    pub fn add_cidr(&mut self, eni: &str, cidr: Cidr) -> Result<Option<Finding>, DatastoreError> {
        let pd = self.cfg.prefix_delegation;
        let state = self.enis.get_mut(eni).ok_or_else(|| DatastoreError::UnknownEni(eni.to_owned()))?;
        if let Some(why) = state.excluded {
            let finding = Finding { eni: eni.to_owned(), cidr, why };
            self.findings.push(finding.clone());
            return Ok(Some(finding));
        }
        if state.cidrs.contains_key(&cidr) {
            return Err(DatastoreError::DuplicateCidr { cidr, eni: eni.to_owned() });
        }
        if let Some(other) = state.cidrs.keys().find(|c| c.contains(cidr.addr) || cidr.contains(c.addr)) {
            return Err(DatastoreError::OverlappingCidr { cidr, other: *other, eni: eni.to_owned() });
        }
        state.cidrs.insert(cidr, BTreeSet::new());
        self.cidr_owner.insert(cidr, eni.to_owned());
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
    /// out-of-cooldown reused addresses before never-used ones.
    pub fn assign(
        &mut self,
        key: &AllocKey,
        pod: &PodRef,
        now: UnixNanos,
    ) -> Result<Allocation, DatastoreError> {
        if let Some(a) = self.allocations.get(key) {
            return Ok(a.clone());
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
            if cidr.is_prefix() == pd {
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
            state.reusable.insert(allocation.ip);
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
    /// allocation whose address is no longer in the pool is dropped and returned; a duplicate
    /// address or key refuses the whole restore (nothing is changed).
    pub fn restore(&mut self, allocations: Vec<Allocation>) -> Result<Vec<Allocation>, DatastoreError> {
        let mut seen_ip: HashMap<Ipv4Addr, &AllocKey> = HashMap::new();
        let mut seen_key: BTreeSet<&AllocKey> = BTreeSet::new();
        for a in &allocations {
            if !seen_key.insert(&a.key) || self.allocations.contains_key(&a.key) {
                return Err(DatastoreError::DuplicateKey(Box::new(a.key.clone())));
            }
            if let Some(first) = seen_ip.insert(a.ip, &a.key) {
                return Err(DatastoreError::DuplicateAddress {
                    ip: a.ip,
                    first: Box::new(first.clone()),
                    second: Box::new(a.key.clone()),
                });
            }
            if let Some(existing) = self.allocations.values().find(|e| e.ip == a.ip) {
                return Err(DatastoreError::DuplicateAddress {
                    ip: a.ip,
                    first: Box::new(existing.key.clone()),
                    second: Box::new(a.key.clone()),
                });
            }
        }
        let mut dropped = Vec::new();
        for a in allocations {
            match self.home_of(a.ip) {
                Some((state, cidr)) => {
                    state.fresh.remove(&a.ip);
                    state.reusable.remove(&a.ip);
                    state.cooling.retain(|(ip, _)| *ip != a.ip);
                    state.cidrs.entry(cidr).or_default().insert(a.ip);
                    self.allocations.insert(a.key.clone(), a);
                }
                None => dropped.push(a),
            }
        }
        Ok(dropped)
    }

    /// The pool ENI and CIDR holding `ip` (excluded ENIs hold no pool CIDRs).
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

    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Whether `eni` is excluded, and why.
    pub fn exclusion_of(&self, eni: &str) -> Option<Exclusion> {
        self.enis.get(eni).and_then(|e| e.excluded)
    }

    pub fn stats(&self, now: UnixNanos) -> Stats {
        let pd = self.cfg.prefix_delegation;
        let mut s = Stats::default();
        for e in self.enis.values().filter(|e| e.excluded.is_none()) {
            s.enis += 1;
            let cooling: BTreeSet<Ipv4Addr> = e
                .cooling
                .iter()
                .filter(|(_, at)| now.saturating_sub(*at) < self.cfg.cooldown_nanos)
                .map(|(ip, _)| *ip)
                .collect();
            for (cidr, assigned) in e.cidrs.iter().filter(|(c, _)| c.is_prefix() == pd) {
                s.cidrs += 1;
                s.total += cidr.size();
                s.assigned += assigned.len() as u32;
                let cooling_here = cooling.iter().filter(|ip| cidr.contains(**ip)).count() as u32;
                s.cooling += cooling_here;
                if assigned.is_empty() && cooling_here == 0 {
                    s.free_cidrs += 1;
                }
            }
        }
        s
    }

    /// Per allocatable ENI: id, device number, number of current-mode CIDRs, when it was added.
    pub fn enis(&self) -> Vec<EniView> {
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
                cooling: e.cooling.len() as u32,
                added_at: e.added_at,
            })
            .collect();
        v.sort_by_key(|e| e.device_number);
        v
    }

    /// CIDRs that can be released from `eni`: no assigned or cooling address; leftovers of the
    /// other mode first.
    pub fn freeable_cidrs(&self, eni: &str, now: UnixNanos) -> Vec<Cidr> {
        let pd = self.cfg.prefix_delegation;
        let Some(e) = self.enis.get(eni).filter(|e| e.excluded.is_none()) else { return Vec::new() };
        let mut v: Vec<Cidr> =
            e.cidrs
                .iter()
                .filter(|(c, assigned)| {
                    assigned.is_empty()
                        && !e.cooling.iter().any(|(ip, at)| {
                            c.contains(*ip) && now.saturating_sub(*at) < self.cfg.cooldown_nanos
                        })
                })
                .map(|(c, _)| *c)
                .collect();
        v.sort_by_key(|c| (c.is_prefix() == pd, *c));
        v
    }
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
