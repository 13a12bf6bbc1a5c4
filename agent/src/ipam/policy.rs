//! The warm-pool policy: a pure function of (configuration, datastore, instance limits, max pods,
//! clock) to the actions the control plane should take on this tick (upstream's
//! `updateIPPoolIfRequired`: grow, else shrink). Semantics follow upstream ipamd (see
//! pkg/ipamd/ipamd.go and pkg/ipamd/datastore upstream) with one deliberate change: addresses
//! cooling down do not count as available when deciding to grow (upstream #2896).

use super::{
    datastore::{Datastore, EniView},
    model::{Cidr, UnixNanos, NANOS_PER_SEC},
};

/// Warm-pool settings (upstream environment variable names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// WARM_ENI_TARGET (default 1).
    pub warm_eni_target: u32,
    /// WARM_IP_TARGET (0 = unset).
    pub warm_ip_target: u32,
    /// MINIMUM_IP_TARGET (0 = unset).
    pub minimum_ip_target: u32,
    /// WARM_PREFIX_TARGET (prefix delegation only).
    pub warm_prefix_target: u32,
    /// MAX_ENI (None = the instance limit).
    pub max_eni: Option<u32>,
    pub prefix_delegation: bool,
    /// ENABLE_POD_ENI: keep a slot for the trunk until the Resource Controller attaches it.
    pub pod_eni: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            warm_prefix_target: 0,
            max_eni: None,
            prefix_delegation: false,
            pod_eni: false,
        }
    }
}

impl PoolConfig {
    /// WARM_IP_TARGET or MINIMUM_IP_TARGET set: IP-target mode, WARM_ENI/WARM_PREFIX ignored.
    pub fn ip_target_mode(&self) -> bool {
        self.warm_ip_target > 0 || self.minimum_ip_target > 0
    }
}

/// What the instance type allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_enis: u32,
    /// Ipv4AddressesPerInterface (the primary address included).
    pub ipv4_per_eni: u32,
    /// The Resource Controller can attach a trunk to this type.
    pub trunking_compatible: bool,
}

/// What the node looks like beyond the datastore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub max_pods: u32,
    pub trunk_attached: bool,
    /// When the pool last shrank (upstream waits 30 s between decreases).
    pub last_decrease: Option<UnixNanos>,
}

/// One step for the control plane. Counts are secondary addresses or /28 prefixes as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    AssignToEni { eni: String, count: u32 },
    CreateEni { count: u32 },
    ReleaseCidrs { eni: String, cidrs: Vec<Cidr> },
    DeleteEni { eni: String },
}

impl Action {
    /// The action's kind, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AssignToEni { .. } => "AssignToEni",
            Self::CreateEni { .. } => "CreateEni",
            Self::ReleaseCidrs { .. } => "ReleaseCidrs",
            Self::DeleteEni { .. } => "DeleteEni",
        }
    }
}

pub const MIN_ENI_LIFETIME: u64 = 60 * NANOS_PER_SEC;
pub const DECREASE_INTERVAL: u64 = 30 * NANOS_PER_SEC;
const PREFIX_SIZE: u32 = 16;

/// Decides this tick's actions: growth if the pool is too low, else shrinking if too high (at most
/// one ENI deleted per tick), plus releasing leftovers of the other mode.
pub fn decide(
    cfg: &PoolConfig,
    ds: &Datastore,
    limits: &Limits,
    node: &NodeState,
    now: UnixNanos,
) -> Vec<Action> {
    let mut actions = release_leftovers(ds, now);
    let p = Pool::new(cfg, ds, limits, node, now);
    if p.too_low() {
        actions.extend(p.grow());
    } else if node.last_decrease.is_none_or(|t| now.saturating_sub(t) >= DECREASE_INTERVAL) {
        actions.extend(p.shrink());
    }
    actions
}

/// CIDRs of the other mode (left by a prefix-delegation switch) that nothing uses any more.
fn release_leftovers(ds: &Datastore, now: UnixNanos) -> Vec<Action> {
    let pd = ds.config().prefix_delegation;
    ds.enis(now)
        .iter()
        .filter(|e| e.excluded.is_none())
        .filter_map(|e| {
            let cidrs: Vec<Cidr> =
                ds.freeable_cidrs(&e.id, now).into_iter().filter(|c| c.is_prefix() != pd).collect();
            (!cidrs.is_empty()).then(|| Action::ReleaseCidrs { eni: e.id.clone(), cidrs })
        })
        .collect()
}

struct Pool<'a> {
    cfg: &'a PoolConfig,
    ds: &'a Datastore,
    limits: &'a Limits,
    node: &'a NodeState,
    now: UnixNanos,
    enis: Vec<EniView>,
    total: u32,
    assigned: u32,
    /// Available for growth: neither assigned nor cooling.
    available: u32,
    free_cidrs: u32,
}

impl<'a> Pool<'a> {
    fn new(
        cfg: &'a PoolConfig,
        ds: &'a Datastore,
        limits: &'a Limits,
        node: &'a NodeState,
        now: UnixNanos,
    ) -> Self {
        let s = ds.stats(now);
        Self {
            cfg,
            ds,
            limits,
            node,
            now,
            enis: ds.enis(now),
            total: s.total,
            assigned: s.assigned,
            available: s.available(),
            free_cidrs: s.free_cidrs,
        }
    }

    /// Secondary addresses (or /28 prefixes) one ENI can hold.
    fn cidrs_per_eni(&self) -> u32 {
        self.limits.ipv4_per_eni.saturating_sub(1)
    }

    fn unit(&self) -> u32 {
        if self.cfg.prefix_delegation {
            PREFIX_SIZE
        } else {
            1
        }
    }

    fn max_enis(&self) -> u32 {
        self.cfg.max_eni.map_or(self.limits.max_enis, |m| m.min(self.limits.max_enis))
    }

    /// Addresses missing for the IP targets (upstream `datastoreTargetState`).
    fn short(&self) -> u32 {
        let warm = self.cfg.warm_ip_target.saturating_sub(self.available);
        warm.max(self.cfg.minimum_ip_target.saturating_sub(self.total))
    }

    fn too_low(&self) -> bool {
        if self.total >= self.node.max_pods {
            return false;
        }
        if self.cfg.ip_target_mode() {
            return self.short() > 0;
        }
        let (unit, target) = if self.cfg.prefix_delegation {
            (PREFIX_SIZE, self.cfg.warm_prefix_target)
        } else {
            (self.cidrs_per_eni(), self.cfg.warm_eni_target)
        };
        self.available < unit * target || (target == 0 && self.available == 0)
    }

    /// CIDRs to add on this tick.
    fn needed(&self) -> u32 {
        if self.cfg.ip_target_mode() {
            self.short().div_ceil(self.unit()).max(1)
        } else if self.cfg.prefix_delegation {
            self.cfg.warm_prefix_target.saturating_sub(self.free_cidrs).max(1)
        } else {
            self.cidrs_per_eni()
        }
    }

    fn has_room_for_eni(&self) -> bool {
        let trunk_slot =
            u32::from(self.cfg.pod_eni && !self.node.trunk_attached && self.limits.trunking_compatible);
        (self.enis.len() as u32) + trunk_slot < self.max_enis()
    }

    fn grow(&self) -> Vec<Action> {
        let needed = self.needed();
        for e in self.enis.iter().filter(|e| e.excluded.is_none()) {
            let free_slots = self.cidrs_per_eni().saturating_sub(e.cidrs);
            if free_slots > 0 {
                return vec![Action::AssignToEni { eni: e.id.clone(), count: free_slots.min(needed) }];
            }
        }
        if self.has_room_for_eni() {
            return vec![Action::CreateEni { count: self.cidrs_per_eni().min(needed) }];
        }
        Vec::new()
    }

    /// Free CIDRs beyond what the targets need (IP-target mode, or WARM_PREFIX under PD).
    fn excess_cidrs(&self) -> u32 {
        if self.cfg.ip_target_mode() {
            if self.cfg.prefix_delegation {
                let keep_for_warm = (self.assigned + self.cfg.warm_ip_target).div_ceil(PREFIX_SIZE);
                let keep_for_min = self.cfg.minimum_ip_target.div_ceil(PREFIX_SIZE);
                let in_use_or_kept = keep_for_warm.max(keep_for_min);
                let cidrs = self.total / PREFIX_SIZE;
                cidrs.saturating_sub(in_use_or_kept).min(self.free_cidrs)
            } else {
                let over = self.available.saturating_sub(self.cfg.warm_ip_target);
                over.min(self.total.saturating_sub(self.cfg.minimum_ip_target))
            }
        } else if self.cfg.prefix_delegation {
            self.free_cidrs.saturating_sub(self.cfg.warm_prefix_target)
        } else {
            0 // WARM_ENI mode never releases single addresses
        }
    }

    fn shrink(&self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut excess = self.excess_cidrs();
        // Release from the highest-numbered ENIs first, so that whole ENIs empty out.
        for e in self.enis.iter().rev().filter(|e| e.excluded.is_none()) {
            if excess == 0 {
                break;
            }
            let pd = self.cfg.prefix_delegation;
            let cidrs: Vec<Cidr> = self
                .ds
                .freeable_cidrs(&e.id, self.now)
                .into_iter()
                .filter(|c| c.is_prefix() == pd)
                .take(excess as usize)
                .collect();
            if !cidrs.is_empty() {
                excess -= cidrs.len() as u32;
                actions.push(Action::ReleaseCidrs { eni: e.id.clone(), cidrs });
            }
        }
        if actions.is_empty() {
            if let Some(eni) = self.deletable_eni() {
                actions.push(Action::DeleteEni { eni });
            }
        }
        actions
    }

    /// One ENI that can go (upstream `getDeletableENI` + `shouldRemoveExtraENIs`).
    fn deletable_eni(&self) -> Option<String> {
        let per_eni_addresses = self.cidrs_per_eni() * self.unit();
        // Upstream's `shouldRemoveExtraENIs`: always in IP-target mode; else only with a whole
        // ENI's worth of addresses beyond the warm target, or (prefix delegation) for an ENI that
        // holds no prefix at all.
        let surplus = self.cfg.ip_target_mode() || {
            let target = if self.cfg.prefix_delegation {
                self.cfg.warm_prefix_target
            } else {
                self.cfg.warm_eni_target
            };
            self.available >= (target + 1) * per_eni_addresses
        };
        self.enis.iter().rev().find_map(|e| {
            let young = self.now.saturating_sub(e.added_at) < MIN_ENI_LIFETIME;
            if e.primary || e.excluded.is_some() || young || e.assigned > 0 || e.cooling > 0 {
                return None;
            }
            let empty_prefix_eni = self.cfg.prefix_delegation && e.cidrs == 0;
            if !(surplus || empty_prefix_eni) {
                return None;
            }
            // Still needed if removing it would make the pool too low again.
            let remaining_total = self.total.saturating_sub(e.cidrs * self.unit());
            let remaining_available = self.available.saturating_sub(e.cidrs * self.unit());
            let needed_by_targets = if self.cfg.ip_target_mode() {
                remaining_available < self.cfg.warm_ip_target || remaining_total < self.cfg.minimum_ip_target
            } else {
                false
            };
            (!needed_by_targets).then(|| e.id.clone())
        })
    }
}
