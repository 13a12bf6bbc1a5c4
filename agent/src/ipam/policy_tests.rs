//! The warm-pool policy against upstream's worked examples (docs/eni-and-ip-target.md and
//! docs/prefix-and-ip-target.md in aws/amazon-vpc-cni-k8s), driven like the
//! real loop: decide, let a simulated EC2 execute, repeat until the policy is satisfied.

use std::net::Ipv4Addr;

use super::{
    datastore::{Datastore, DatastoreConfig},
    model::{AllocKey, Cidr, EniFlags, EniSpec, PodRef, NANOS_PER_SEC},
    policy::{decide, Action, Limits, NodeState, PoolConfig, MIN_ENI_LIFETIME},
};

const T3_SMALL: Limits = Limits { max_enis: 3, ipv4_per_eni: 4, trunking_compatible: true };
const P3DN: Limits = Limits { max_enis: 15, ipv4_per_eni: 50, trunking_compatible: true };
const TICK: u64 = 5 * NANOS_PER_SEC;

struct Sim {
    cfg: PoolConfig,
    limits: Limits,
    ds: Datastore,
    node: NodeState,
    now: u64,
    pods: u32,
    next_addr: Vec<u32>,
}

impl Sim {
    fn new(cfg: PoolConfig, limits: Limits) -> Self {
        let ds_cfg = DatastoreConfig {
            prefix_delegation: cfg.prefix_delegation,
            custom_networking: false,
            cooldown_nanos: 30 * NANOS_PER_SEC,
        };
        let mut sim = Self {
            cfg,
            limits,
            ds: Datastore::new(ds_cfg),
            node: NodeState { max_pods: 1000, trunk_attached: false, last_decrease: None },
            now: 0,
            pods: 0,
            next_addr: Vec::new(),
        };
        sim.attach(EniFlags { primary: true, ..Default::default() });
        sim
    }

    fn attach(&mut self, flags: EniFlags) -> String {
        let dev = self.next_addr.len() as u32;
        let id = format!("eni-{dev}");
        self.ds
            .add_eni(
                EniSpec {
                    id: id.clone(),
                    device_number: dev,
                    subnet_id: "s".into(),
                    security_groups: vec![],
                    flags,
                },
                self.now,
            )
            .unwrap();
        self.next_addr.push(16);
        id
    }

    /// Simulated EC2: /32s or aligned /28s from 10.<device>.0.0/16.
    fn add_cidrs(&mut self, eni: &str, count: u32) {
        let dev: usize = eni.trim_start_matches("eni-").parse().unwrap();
        for _ in 0..count {
            let base = u32::from(Ipv4Addr::new(10, dev as u8, 0, 0)) + self.next_addr[dev];
            let cidr = if self.cfg.prefix_delegation {
                self.next_addr[dev] += 16;
                Cidr::prefix28(Ipv4Addr::from(base)).unwrap()
            } else {
                self.next_addr[dev] += 1;
                Cidr::host(Ipv4Addr::from(base))
            };
            self.ds.add_cidr(eni, cidr).unwrap();
        }
    }

    fn tick(&mut self) -> Vec<Action> {
        let actions = decide(&self.cfg, &self.ds, &self.limits, &self.node, self.now);
        for a in &actions {
            match a {
                Action::AssignToEni { eni, count } => self.add_cidrs(eni, *count),
                Action::CreateEni { count } => {
                    let id = self.attach(EniFlags::default());
                    self.add_cidrs(&id, *count);
                }
                Action::ReleaseCidrs { eni, cidrs } => {
                    for c in cidrs {
                        self.ds.remove_cidr(eni, *c).unwrap();
                    }
                    self.node.last_decrease = Some(self.now);
                }
                Action::DeleteEni { eni } => {
                    self.ds.remove_eni(eni).unwrap();
                    self.node.last_decrease = Some(self.now);
                }
            }
        }
        self.now += TICK;
        actions
    }

    fn settle(&mut self) {
        for _ in 0..60 {
            if self.tick().is_empty() {
                return;
            }
        }
        panic!("the policy never settled");
    }

    fn run_pods(&mut self, pods: u32) -> &mut Self {
        self.settle();
        while self.pods < pods {
            let k = AllocKey {
                network_name: "n".into(),
                container_id: format!("c{}", self.pods),
                if_name: "eth0".into(),
            };
            self.ds.assign(&k, &PodRef::default(), self.now).expect("the pool ran dry");
            self.pods += 1;
            self.settle();
        }
        self
    }

    /// Deletes the newest pods down to `pods`, waits out the cooldown and the minimum ENI
    /// lifetime, and lets the policy shrink the pool for ten minutes.
    fn drain_to(&mut self, pods: u32) -> &mut Self {
        while self.pods > pods {
            self.pods -= 1;
            let k = AllocKey {
                network_name: "n".into(),
                container_id: format!("c{}", self.pods),
                if_name: "eth0".into(),
            };
            self.ds.release(&k, self.now).expect("a pod that was never started");
        }
        self.now += 30 * NANOS_PER_SEC + MIN_ENI_LIFETIME;
        // Ten minutes of ticks: decreases are 30 s apart, so quiet ticks come between them.
        for _ in 0..120 {
            self.tick();
        }
        self
    }

    /// (CIDRs per ENI in device order, unused addresses).
    fn layout(&self) -> (Vec<u32>, u32) {
        let cidrs = self.ds.enis(self.now).iter().map(|e| e.cidrs).collect();
        let s = self.ds.stats(self.now);
        (cidrs, s.total - s.assigned)
    }
}

fn secondary(warm_eni: u32, warm_ip: u32, min_ip: u32) -> PoolConfig {
    PoolConfig {
        warm_eni_target: warm_eni,
        warm_ip_target: warm_ip,
        minimum_ip_target: min_ip,
        ..Default::default()
    }
}

fn prefix(warm_prefix: u32, warm_ip: u32, min_ip: u32) -> PoolConfig {
    PoolConfig {
        warm_prefix_target: warm_prefix,
        warm_ip_target: warm_ip,
        minimum_ip_target: min_ip,
        prefix_delegation: true,
        ..Default::default()
    }
}

/// (config, limits, pods, expected CIDRs per ENI in any order, expected unused).
type Row = (PoolConfig, Limits, u32, &'static [u32], u32);

fn check(rows: &[Row]) {
    for (i, (cfg, limits, pods, want, unused)) in rows.iter().enumerate() {
        let mut sim = Sim::new(*cfg, *limits);
        sim.run_pods(*pods);
        let (mut got, got_unused) = sim.layout();
        let mut want = want.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!((got, got_unused), (want, *unused), "row {i}: {cfg:?}, {pods} pods");
    }
}

#[test]
fn secondary_ip_mode_matches_upstream_tables() {
    check(&[
        // t3.small, WARM_ENI_TARGET=1
        (secondary(1, 0, 0), T3_SMALL, 0, &[3], 3),
        (secondary(1, 0, 0), T3_SMALL, 5, &[3, 3, 3], 4),
        (secondary(1, 0, 0), T3_SMALL, 9, &[3, 3, 3], 0),
        // t3.small, WARM_IP_TARGET=1, MINIMUM_IP_TARGET=1
        (secondary(1, 1, 1), T3_SMALL, 0, &[1], 1),
        (secondary(1, 1, 1), T3_SMALL, 5, &[3, 3], 1),
        (secondary(1, 1, 1), T3_SMALL, 9, &[3, 3, 3], 0),
        // t3.small, WARM_IP_TARGET=2, MINIMUM_IP_TARGET=5
        (secondary(1, 2, 5), T3_SMALL, 0, &[2, 3], 5),
        (secondary(1, 2, 5), T3_SMALL, 5, &[3, 3, 1], 2),
        (secondary(1, 2, 5), T3_SMALL, 9, &[3, 3, 3], 0),
        // p3dn.24xlarge, WARM_ENI_TARGET=1
        (secondary(1, 0, 0), P3DN, 0, &[49], 49),
        (secondary(1, 0, 0), P3DN, 3, &[49, 49], 95),
        (secondary(1, 0, 0), P3DN, 95, &[49, 49, 49], 52),
        // p3dn.24xlarge, WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10
        (secondary(1, 5, 10), P3DN, 0, &[10], 10),
        (secondary(1, 5, 10), P3DN, 7, &[12], 5),
        (secondary(1, 5, 10), P3DN, 15, &[20], 5),
        (secondary(1, 5, 10), P3DN, 45, &[49, 1], 5),
    ]);
}

#[test]
fn prefix_mode_matches_upstream_tables() {
    check(&[
        // t3.small, WARM_PREFIX_TARGET=1
        (prefix(1, 0, 0), T3_SMALL, 0, &[1], 16),
        (prefix(1, 0, 0), T3_SMALL, 5, &[2], 27),
        (prefix(1, 0, 0), T3_SMALL, 16, &[2], 16),
        (prefix(1, 0, 0), T3_SMALL, 17, &[3], 31),
        (prefix(1, 0, 0), T3_SMALL, 58, &[3, 2], 22),
        // t3.small, WARM_IP_TARGET=1, MINIMUM_IP_TARGET=1
        (prefix(0, 1, 1), T3_SMALL, 0, &[1], 16),
        (prefix(0, 1, 1), T3_SMALL, 5, &[1], 11),
        (prefix(0, 1, 1), T3_SMALL, 17, &[2], 15),
        (prefix(0, 1, 1), T3_SMALL, 58, &[3, 1], 6),
        // t3.small, WARM_IP_TARGET=7, MINIMUM_IP_TARGET=20. Upstream's table prints 16 unused for
        // 0 pods; MINIMUM_IP_TARGET=20 needs 2 prefixes, i.e. 32 (the code's semantics, as the
        // reference notes).
        (prefix(0, 7, 20), T3_SMALL, 0, &[2], 32),
        (prefix(0, 7, 20), T3_SMALL, 5, &[2], 27),
        (prefix(0, 7, 20), T3_SMALL, 17, &[2], 15),
        (prefix(0, 7, 20), T3_SMALL, 58, &[3, 2], 22),
        // p3dn.24xlarge, WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10
        (prefix(0, 5, 10), P3DN, 0, &[1], 16),
        (prefix(0, 5, 10), P3DN, 7, &[1], 9),
        (prefix(0, 5, 10), P3DN, 15, &[2], 17),
        (prefix(0, 5, 10), P3DN, 45, &[4], 19),
    ]);
}

/// (config, limits, pods at the peak, pods after, expected CIDRs per ENI in any order, unused).
type DownRow = (PoolConfig, Limits, u32, u32, &'static [u32], u32);

/// Scale-down in every mode: after the pods go and the cooldown passes, the pool shrinks to what
/// the same targets keep for that many pods (upstream's tables read backwards).
#[test]
fn the_pool_shrinks_back_in_every_mode() {
    let rows: &[DownRow] = &[
        // WARM_ENI_TARGET (the default): whole ENIs go once a spare one is beyond the target.
        (secondary(1, 0, 0), T3_SMALL, 9, 0, &[3], 3),
        (secondary(1, 0, 0), T3_SMALL, 9, 5, &[3, 3, 3], 4),
        (secondary(1, 0, 0), P3DN, 95, 0, &[49], 49),
        (secondary(2, 0, 0), P3DN, 95, 3, &[49, 49, 49], 144),
        // WARM_IP_TARGET / MINIMUM_IP_TARGET: addresses go, then empty ENIs.
        (secondary(1, 1, 1), T3_SMALL, 9, 0, &[1], 1),
        (secondary(1, 2, 5), T3_SMALL, 9, 0, &[3, 2], 5),
        (secondary(1, 5, 10), P3DN, 45, 7, &[12], 5),
        // WARM_PREFIX_TARGET: prefixes go, then an ENI left without a prefix.
        (prefix(1, 0, 0), T3_SMALL, 58, 0, &[1], 16),
        (prefix(1, 0, 0), T3_SMALL, 58, 17, &[3], 31),
        // Prefixes with WARM_IP_TARGET / MINIMUM_IP_TARGET.
        (prefix(0, 1, 1), T3_SMALL, 58, 0, &[1], 16),
        (prefix(0, 5, 10), P3DN, 45, 7, &[1], 9),
    ];
    for (i, (cfg, limits, peak, after, want, unused)) in rows.iter().enumerate() {
        let mut sim = Sim::new(*cfg, *limits);
        sim.run_pods(*peak).drain_to(*after);
        let (mut got, got_unused) = sim.layout();
        let mut want = want.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!((got, got_unused), (want, *unused), "row {i}: {cfg:?}, {peak} -> {after} pods");
    }
}

#[test]
fn a_slot_is_kept_for_the_trunk_until_it_is_attached() {
    let cfg = PoolConfig { pod_eni: true, ..secondary(1, 0, 0) };
    let mut sim = Sim::new(cfg, T3_SMALL);
    sim.run_pods(6);
    assert_eq!(sim.layout().0.len(), 2, "the third slot belongs to the trunk");
    // Not for instance types the Resource Controller cannot trunk (upstream #3094).
    let mut sim = Sim::new(cfg, Limits { trunking_compatible: false, ..T3_SMALL });
    sim.run_pods(6);
    assert_eq!(sim.layout().0.len(), 3);
}

#[test]
fn growth_stops_at_max_pods() {
    let mut sim = Sim::new(secondary(1, 0, 0), P3DN);
    sim.node.max_pods = 58;
    sim.run_pods(50);
    let total = sim.ds.stats(sim.now).total;
    assert!((58..58 + 49).contains(&total), "total {total} should stop growing once it reaches max pods");
    sim.run_pods(58);
    assert_eq!(sim.ds.stats(sim.now).total, 98, "two full ENIs cover 58 pods; no third");
}

#[test]
fn cooling_addresses_do_not_count_as_available_for_growth() {
    // upstream #2896. WARM_IP_TARGET=2: two pods come and go, two new pods take the two
    // addresses that are not cooling. Upstream counts the two cooling addresses as available and
    // does not grow, so a fifth pod would wait out the cooldown; eniguard grows at once.
    let key =
        |i: u32| AllocKey { network_name: "n".into(), container_id: format!("c{i}"), if_name: "eth0".into() };
    let mut sim = Sim::new(secondary(1, 2, 0), P3DN);
    sim.run_pods(2);
    assert_eq!(sim.ds.stats(sim.now).total, 4);
    for i in 0..2 {
        sim.ds.release(&key(i), sim.now).unwrap();
    }
    for i in 10..12 {
        sim.ds.assign(&key(i), &PodRef::default(), sim.now).unwrap();
    }
    let s = sim.ds.stats(sim.now);
    assert_eq!((s.total, s.assigned, s.cooling), (4, 2, 2));
    assert_eq!(sim.tick(), vec![Action::AssignToEni { eni: "eni-0".into(), count: 2 }]);
    assert_eq!(sim.ds.stats(sim.now).available(), 2);
}

#[test]
fn enis_are_deleted_one_per_tick_after_their_minimum_lifetime() {
    let mut sim = Sim::new(secondary(1, 1, 1), T3_SMALL);
    sim.run_pods(7);
    assert_eq!(sim.layout().0.len(), 3);
    for i in 0..7 {
        let k = AllocKey { network_name: "n".into(), container_id: format!("c{i}"), if_name: "eth0".into() };
        sim.ds.release(&k, sim.now).unwrap();
    }
    sim.pods = 0;
    // Cooling addresses block release; young ENIs are kept.
    assert!(sim.tick().is_empty());
    sim.now += 30 * NANOS_PER_SEC + MIN_ENI_LIFETIME;
    let mut deletions = 0;
    for _ in 0..40 {
        let actions = sim.tick();
        let deleted = actions.iter().filter(|a| matches!(a, Action::DeleteEni { .. })).count();
        assert!(deleted <= 1, "more than one ENI deleted in one tick: {actions:?}");
        deletions += deleted;
    }
    assert_eq!(deletions, 2, "both secondary ENIs go, the primary stays");
    assert_eq!(sim.layout(), (vec![1], 1), "WARM_IP=1/MIN_IP=1 keep one address");
}

#[test]
fn shrinking_waits_30_seconds_between_decreases() {
    let mut sim = Sim::new(secondary(1, 1, 1), P3DN);
    sim.run_pods(20);
    for i in 0..20 {
        let k = AllocKey { network_name: "n".into(), container_id: format!("c{i}"), if_name: "eth0".into() };
        sim.ds.release(&k, sim.now).unwrap();
    }
    sim.now += 31 * NANOS_PER_SEC;
    assert!(matches!(sim.tick().as_slice(), [Action::ReleaseCidrs { .. }]));
    sim.node.last_decrease = Some(sim.now);
    sim.now += 10 * NANOS_PER_SEC;
    assert!(sim.tick().is_empty(), "a second decrease within 30 s");
}
