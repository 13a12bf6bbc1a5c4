//! Datastore and checkpoint behaviour, including property tests over random operation sequences.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf};

use proptest::prelude::*;

use super::{
    checkpoint::{Checkpoint, Contents},
    datastore::Finding,
    datastore::{Datastore, DatastoreConfig, DatastoreError},
    model::{AllocKey, Allocation, Cidr, EniFlags, EniSpec, Exclusion, PodRef, NANOS_PER_SEC},
    Ipam, IpamError,
};

const COOLDOWN: u64 = 30 * NANOS_PER_SEC;

fn cfg(pd: bool, cn: bool) -> DatastoreConfig {
    DatastoreConfig { prefix_delegation: pd, custom_networking: cn, cooldown_nanos: COOLDOWN }
}

fn eni(id: &str, dev: u32, flags: EniFlags) -> EniSpec {
    EniSpec {
        id: id.into(),
        device_number: dev,
        subnet_id: "subnet-1".into(),
        security_groups: vec!["sg-1".into()],
        flags,
    }
}

fn key(c: &str) -> AllocKey {
    AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
}

fn pod(n: &str) -> PodRef {
    PodRef { namespace: "default".into(), name: n.into() }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// Primary (10.0.0.x), a trunk carrying addresses (the pre-fix incident), and eth1 (10.0.1.x).
fn node(pd: bool, cn: bool) -> Datastore {
    let mut ds = Datastore::new(cfg(pd, cn));
    ds.add_eni(eni("eni-primary", 0, EniFlags { primary: true, ..Default::default() }), 0).unwrap();
    ds.add_eni(eni("eni-trunk", 2, EniFlags { trunk: true, ..Default::default() }), 0).unwrap();
    ds.add_eni(eni("eni-1", 1, EniFlags::default()), 0).unwrap();
    if pd {
        ds.add_cidr("eni-primary", cidr("10.0.0.16/28")).unwrap();
        ds.add_cidr("eni-trunk", cidr("10.0.2.16/28")).unwrap();
        ds.add_cidr("eni-1", cidr("10.0.1.32/28")).unwrap();
    } else {
        for i in 5..8 {
            ds.add_cidr("eni-primary", cidr(&format!("10.0.0.{i}"))).unwrap();
            ds.add_cidr("eni-trunk", cidr(&format!("10.0.2.{i}"))).unwrap();
            ds.add_cidr("eni-1", cidr(&format!("10.0.1.{i}"))).unwrap();
        }
    }
    ds
}

#[test]
fn trunk_addresses_are_findings_never_handed_out() {
    let mut ds = node(false, false);
    assert_eq!(ds.findings().len(), 3);
    assert!(ds.findings().iter().all(|f| f.eni == "eni-trunk" && f.why == Exclusion::Trunk));
    let mut got = Vec::new();
    for i in 0..6 {
        got.push(ds.assign(&key(&format!("c{i}")), &pod("p"), 0).unwrap().ip);
    }
    assert!(got.iter().all(|a| !a.to_string().starts_with("10.0.2.")), "{got:?}");
    assert_eq!(ds.assign(&key("c7"), &pod("p"), 0), Err(DatastoreError::NoAvailableAddress));
    assert_eq!(ds.stats(0).total, 6);
}

#[test]
fn primary_is_excluded_under_custom_networking() {
    let mut ds = node(false, true);
    for i in 0..3 {
        assert!(ds
            .assign(&key(&format!("c{i}")), &pod("p"), 0)
            .unwrap()
            .ip
            .to_string()
            .starts_with("10.0.1."));
    }
    assert_eq!(ds.assign(&key("c3"), &pod("p"), 0), Err(DatastoreError::NoAvailableAddress));
}

#[test]
fn assign_is_idempotent_and_lowest_device_first() {
    let mut ds = node(false, false);
    let a = ds.assign(&key("c1"), &pod("web"), 0).unwrap();
    assert_eq!(a.ip, ip("10.0.0.5"));
    assert_eq!(ds.assign(&key("c1"), &pod("web"), 5).unwrap(), a);
    assert_eq!(ds.stats(0).assigned, 1);
}

#[test]
fn released_addresses_cool_down_then_are_reused_first() {
    let mut ds = node(false, false);
    let a = ds.assign(&key("c1"), &pod("p"), 0).unwrap().ip;
    ds.release(&key("c1"), 10).unwrap();
    let s = ds.stats(10);
    assert_eq!((s.assigned, s.cooling, s.available()), (0, 1, 5));
    let b = ds.assign(&key("c2"), &pod("p"), 20).unwrap().ip;
    assert_ne!(a, b, "a cooling address was handed out");
    ds.release(&key("c2"), 20).unwrap();
    let c = ds.assign(&key("c3"), &pod("p"), 10 + COOLDOWN).unwrap().ip;
    assert_eq!(c, a, "the cooled-down address should be reused before fresh ones");
    assert!(ds.release(&key("nope"), 0).is_none());
}

#[test]
fn prefixes_are_carved_lowest_first_and_freed_only_when_empty() {
    let mut ds = node(true, true);
    let first = ds.assign(&key("c1"), &pod("p"), 0).unwrap().ip;
    assert_eq!(first, ip("10.0.1.32"));
    assert_eq!(ds.assign(&key("c2"), &pod("p"), 0).unwrap().ip, ip("10.0.1.33"));
    assert!(ds.freeable_cidrs("eni-1", 0).is_empty());
    assert_eq!(
        ds.remove_cidr("eni-1", cidr("10.0.1.32/28")),
        Err(DatastoreError::CidrInUse { cidr: cidr("10.0.1.32/28"), eni: "eni-1".into() })
    );
    ds.release(&key("c1"), 0).unwrap();
    ds.release(&key("c2"), 0).unwrap();
    assert!(ds.freeable_cidrs("eni-1", 1).is_empty(), "cooling addresses keep the prefix");
    assert_eq!(ds.freeable_cidrs("eni-1", COOLDOWN), vec![cidr("10.0.1.32/28")]);
    let s = ds.stats(0);
    assert_eq!((s.total, s.cidrs), (16, 1));
}

#[test]
fn leftovers_of_the_other_mode_are_ignored_and_freeable() {
    let mut ds = node(true, true);
    ds.add_cidr("eni-1", cidr("10.0.1.5")).unwrap();
    assert_eq!(ds.stats(0).total, 16);
    for i in 0..16 {
        assert!(ds.assign(&key(&format!("c{i}")), &pod("p"), 0).unwrap().ip != ip("10.0.1.5"));
    }
    assert_eq!(ds.assign(&key("x"), &pod("p"), 0), Err(DatastoreError::NoAvailableAddress));
    assert_eq!(ds.freeable_cidrs("eni-1", 0), vec![cidr("10.0.1.5/32")]);
}

#[test]
fn restore_drops_vanished_addresses_and_refuses_duplicates() {
    let mut ds = node(false, false);
    let dropped = ds.restore(vec![alloc("a", "10.0.1.6"), alloc("b", "10.0.9.9")]).unwrap().dropped;
    assert_eq!(dropped.iter().map(|a| a.key.container_id.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(ds.allocation(&key("a")).unwrap().ip, ip("10.0.1.6"));
    for i in 0..5 {
        assert_ne!(ds.assign(&key(&format!("n{i}")), &pod("p"), 0).unwrap().ip, ip("10.0.1.6"));
    }
    let mut ds = node(false, false);
    let e = ds.restore(vec![alloc("a", "10.0.1.6"), alloc("b", "10.0.1.6")]).unwrap_err();
    assert!(matches!(e, DatastoreError::DuplicateAddress { .. }));
    assert!(ds.allocations().is_empty(), "a refused restore changed the datastore");
}

fn alloc(c: &str, a: &str) -> Allocation {
    Allocation { key: key(c), ip: ip(a), pod: pod(c), allocated_at: 1 }
}

#[test]
fn restore_keeps_trunk_allocations_as_findings_never_hands_them_out() {
    // A node left by aws-node v1.16.0-3: pod `t` holds a trunk address.
    let dir = temp_dir("trunk-restore");
    let path = dir.join("ipam.json");
    let allocations = vec![alloc("a", "10.0.1.6"), alloc("t", "10.0.2.5")];
    Checkpoint::new(&path).write(&Contents { allocations, ..Contents::default() }).unwrap();
    let mut ipam = Ipam::new(node(false, false), Checkpoint::new(&path));
    let restored = ipam.restore(0).unwrap();
    assert!(restored.dropped.is_empty(), "{:?}", restored.dropped);
    let [(a, finding)] = restored.on_excluded.as_slice() else { panic!("{:?}", restored.on_excluded) };
    assert_eq!(a.key, key("t"));
    assert_eq!(
        finding,
        &Finding { eni: "eni-trunk".into(), cidr: cidr("10.0.2.5/32"), why: Exclusion::Trunk }
    );
    // The evidence stays in the checkpoint, across a write and a restart.
    ipam.assign(&key("n"), &pod("n"), 0).unwrap();
    let on_disk = Checkpoint::new(&path).read().unwrap().unwrap().allocations;
    assert!(on_disk.iter().any(|a| a.key == key("t") && a.ip == ip("10.0.2.5")), "{on_disk:?}");
    // Never handed out: not to its own key (an ADD retry), not to anyone else.
    let refused = match ipam.assign(&key("t"), &pod("t"), 0) {
        Err(IpamError::Datastore(e)) => e,
        other => panic!("expected a datastore refusal, got {other:?}"),
    };
    assert_eq!(
        refused,
        DatastoreError::HeldOnExcludedEni {
            ip: ip("10.0.2.5"),
            eni: "eni-trunk".into(),
            why: Exclusion::Trunk
        }
    );
    for i in 0..20 {
        if let Ok(a) = ipam.assign(&key(&format!("x{i}")), &pod("x"), 0) {
            assert!(!a.ip.to_string().starts_with("10.0.2."), "{}", a.ip);
        }
    }
    // Its DEL still works, and frees nothing into the pool.
    assert_eq!(ipam.release(&key("t"), 0).unwrap().map(|a| a.ip), Some(ip("10.0.2.5").into()));
    assert_eq!(ipam.datastore.stats(0).total, 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_address_has_one_owner() {
    let mut ds = node(false, false);
    // The same /32 on a second ENI, a /28 holding eni-1's /32, a /32 inside a /28 elsewhere.
    assert_eq!(
        ds.add_cidr("eni-primary", cidr("10.0.1.5")),
        Err(DatastoreError::OverlappingCidr {
            cidr: cidr("10.0.1.5/32"),
            other: cidr("10.0.1.5/32"),
            eni: "eni-1".into()
        })
    );
    assert_eq!(
        ds.add_cidr("eni-primary", cidr("10.0.1.0/28")),
        Err(DatastoreError::OverlappingCidr {
            cidr: cidr("10.0.1.0/28"),
            other: cidr("10.0.1.5/32"),
            eni: "eni-1".into()
        })
    );
    assert_eq!(
        ds.add_cidr("eni-1", cidr("10.0.1.5")),
        Err(DatastoreError::DuplicateCidr { cidr: cidr("10.0.1.5/32"), eni: "eni-1".into() })
    );
    // Also against an excluded ENI's addresses.
    assert!(matches!(ds.add_cidr("eni-1", cidr("10.0.2.5")), Err(DatastoreError::OverlappingCidr { .. })));
    let mut ds = node(true, false);
    assert!(matches!(
        ds.add_cidr("eni-primary", cidr("10.0.1.40")),
        Err(DatastoreError::OverlappingCidr { .. })
    ));
    // Nothing was added: every address is handed out once.
    let mut seen = std::collections::HashSet::new();
    while let Ok(a) = ds.assign(&key(&format!("c{}", seen.len())), &pod("p"), 0) {
        assert!(seen.insert(a.ip), "{} handed out twice", a.ip);
    }
    assert_eq!(seen.len(), 32);
}

#[test]
fn exclusion_is_reevaluated_when_flags_change() {
    let mut ds = node(false, false);
    let first = ds.assign(&key("a"), &pod("a"), 0).unwrap().ip;
    assert_eq!(first, ip("10.0.0.5"));
    // eni-1 gets tagged no_manage: its addresses leave the pool and become findings.
    let no_manage = EniFlags { no_manage: true, ..Default::default() };
    assert_eq!(ds.set_flags("eni-1", no_manage), Ok(Some(Exclusion::NoManage)));
    assert_eq!(ds.stats(0).total, 3);
    assert_eq!(ds.findings().iter().filter(|f| f.eni == "eni-1").count(), 3);
    for c in ["b", "c"] {
        assert!(ds.assign(&key(c), &pod(c), 0).unwrap().ip.to_string().starts_with("10.0.0."));
    }
    assert_eq!(ds.assign(&key("d"), &pod("d"), 0), Err(DatastoreError::NoAvailableAddress));
    // The tag is removed: back in the pool, every address that is not assigned.
    assert_eq!(ds.set_flags("eni-1", EniFlags::default()), Ok(None));
    assert_eq!(ds.stats(0).total, 6);
    assert!(ds.assign(&key("d"), &pod("d"), 0).unwrap().ip.to_string().starts_with("10.0.1."));
    // Custom networking turned on later: the primary leaves the pool, its pods stay assigned.
    ds.set_custom_networking(true);
    assert_eq!(ds.exclusion_of("eni-primary"), Some(Exclusion::PrimaryUnderCustomNetworking));
    assert_eq!(ds.stats(0).total, 3);
    assert_eq!(ds.stats(0).assigned, 1);
    assert_eq!(ds.findings().len(), 3 + 3, "the trunk's and the primary's addresses");
}

#[test]
fn cooldown_survives_a_restart() {
    let dir = temp_dir("cooldown-restart");
    let path = dir.join("ipam.json");
    let mut ipam = Ipam::new(node(false, false), Checkpoint::new(&path));
    let a = ipam.assign(&key("a"), &pod("a"), 0).unwrap().ip;
    ipam.release(&key("a"), 10).unwrap();
    // Restart 1 s later: the released address is still cooling, so another one is handed out.
    let mut ipam = Ipam::new(node(false, false), Checkpoint::new(&path));
    ipam.restore(NANOS_PER_SEC).unwrap();
    assert_eq!(ipam.datastore.stats(NANOS_PER_SEC).cooling, 1);
    assert_ne!(ipam.assign(&key("b"), &pod("b"), NANOS_PER_SEC).unwrap().ip, a);
    // After the cooldown it is the first one reused.
    assert_eq!(ipam.assign(&key("c"), &pod("c"), 10 + COOLDOWN).unwrap().ip, a);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("eg-ipam-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_failed_checkpoint_write_rolls_back() {
    let dir = temp_dir("rollback");
    let mut ipam = Ipam::new(node(false, false), Checkpoint::new(dir.join("ipam.json")));
    let a = ipam.assign(&key("c1"), &pod("p"), 0).unwrap();
    std::fs::remove_dir_all(&dir).unwrap(); // every further write fails
    assert!(matches!(ipam.assign(&key("c2"), &pod("p"), 0), Err(IpamError::Checkpoint(_))));
    assert!(ipam.datastore.allocation(&key("c2")).is_none());
    assert!(matches!(ipam.release(&key("c1"), 0), Err(IpamError::Checkpoint(_))));
    assert_eq!(ipam.datastore.allocation(&key("c1")), Some(&a));
    std::fs::create_dir_all(&dir).unwrap();
    // The rolled-back address is handed out again, not lost.
    assert_eq!(ipam.assign(&key("c2"), &pod("p"), 0).unwrap().ip, ip("10.0.0.6"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Assign(u8),
    Release(u8),
    Restart,
    /// The agent dies after writing the temporary file and before renaming it.
    CrashBeforeRename(u8),
    Tick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24).prop_map(Op::Assign),
        3 => (0u8..24).prop_map(Op::Release),
        1 => Just(Op::Restart),
        1 => (0u8..24).prop_map(Op::CrashBeforeRename),
        1 => (0u8..40).prop_map(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// No address is ever assigned twice or from an excluded ENI, and restarts (clean or in the
    /// middle of a write) lose no acknowledged allocation and invent none.
    #[test]
    fn random_sequences_keep_every_invariant(pd in any::<bool>(), cn in any::<bool>(), ops in prop::collection::vec(op(), 1..80)) {
        let dir = temp_dir(&format!("prop-{pd}-{cn}"));
        let path = dir.join("ipam.json");
        let fresh = || node(pd, cn);
        let mut ipam = Ipam::new(fresh(), Checkpoint::new(&path));
        let mut acknowledged: HashMap<AllocKey, Ipv4Addr> = HashMap::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Assign(c) => {
                    if let Ok(a) = ipam.assign(&key(&c.to_string()), &pod("p"), now) {
                        prop_assert!(!a.ip.to_string().starts_with("10.0.2."), "trunk address {}", a.ip);
                        if cn { prop_assert!(!a.ip.to_string().starts_with("10.0.0."), "primary address under CN"); }
                        acknowledged.insert(a.key.clone(), a.ip);
                    }
                }
                Op::Release(c) => {
                    if ipam.release(&key(&c.to_string()), now).unwrap().is_some() {
                        acknowledged.remove(&key(&c.to_string()));
                    }
                }
                Op::Restart => {
                    ipam = Ipam::new(fresh(), Checkpoint::new(&path));
                    let restored = ipam.restore(now).unwrap();
                    prop_assert!(restored.dropped.is_empty());
                }
                Op::CrashBeforeRename(c) => {
                    // Assign in memory and write only the temporary file, then "crash".
                    if ipam.datastore.assign(&key(&format!("crash{c}")), &pod("p"), now).is_ok() {
                        let contents = Contents { allocations: ipam.datastore.allocations(), ..Contents::default() };
                        let _tmp = Checkpoint::new(&path).prepare(&contents).unwrap();
                    }
                    ipam = Ipam::new(fresh(), Checkpoint::new(&path));
                    ipam.restore(now).unwrap();
                }
                Op::Tick(s) => now += u64::from(s) * NANOS_PER_SEC,
            }
            let all = ipam.datastore.allocations();
            let mut seen = std::collections::HashSet::new();
            for a in &all {
                prop_assert!(seen.insert(a.ip), "{} assigned twice", a.ip);
            }
            let held: HashMap<AllocKey, Ipv4Addr> = all.iter().map(|a| (a.key.clone(), a.ip)).collect();
            prop_assert_eq!(&held, &acknowledged);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn an_ipv6_nodes_checkpoint_is_refused_and_left_alone() {
    let dir = temp_dir("v6-refused");
    let path = dir.join("ipam.json");
    let v6 = Allocation {
        key: key("six"),
        ip: "2600:1f14:abc:de01:1::2".parse::<std::net::Ipv6Addr>().unwrap(),
        pod: pod("six"),
        allocated_at: 1,
    };
    Checkpoint::new(&path).write(&Contents { allocations6: vec![v6], ..Contents::default() }).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut ipam = Ipam::new(node(false, false), Checkpoint::new(&path));
    let e = ipam.restore(0).unwrap_err();
    assert!(matches!(e, IpamError::Ipv6Checkpoint(1)), "{e}");
    assert!(e.to_string().contains("1 IPv6 allocations"), "{e}");
    assert!(ipam.datastore.allocations().is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is left as it was");
}
