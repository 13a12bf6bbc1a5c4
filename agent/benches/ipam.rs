//! IPAM datastore benchmarks: `cargo bench -p eniguard --bench ipam` (no root needed).
//!
//! - assign + release of one pod, in memory, with 250 and with 750 pods already assigned on
//!   15 ENIs x 50 secondary addresses (an m6i/c5n-sized pool); goal at most 2 us per pair.
//! - the checkpoint write (temp file, fsync, rename, fsync of the directory) of 250 and 750
//!   allocations, reported separately: it is bounded by the disk, not the datastore.

#![allow(clippy::expect_used)] // benchmark setup: a failure should stop the run loudly

use std::{hint::black_box, net::Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use eniguard::ipam::{
    checkpoint::{Checkpoint, Contents},
    datastore::{Datastore, DatastoreConfig},
    model::{AllocKey, Cidr, EniFlags, EniSpec, PodRef, NANOS_PER_SEC},
};

const ENIS: u32 = 15;
const PER_ENI: u32 = 50;
const COOLDOWN: u64 = 30 * NANOS_PER_SEC;

fn key(i: u32) -> AllocKey {
    AllocKey { network_name: "aws-cni".into(), container_id: format!("{i:064x}"), if_name: "eth0".into() }
}

fn pool(assigned: u32) -> Datastore {
    let cfg =
        DatastoreConfig { prefix_delegation: false, custom_networking: false, cooldown_nanos: COOLDOWN };
    let mut ds = Datastore::new(cfg);
    for dev in 0..ENIS {
        let id = format!("eni-{dev:017x}");
        let flags = EniFlags { primary: dev == 0, ..Default::default() };
        let spec = EniSpec {
            id: id.clone(),
            device_number: dev,
            subnet_id: "subnet-1".into(),
            security_groups: vec![],
            flags,
        };
        ds.add_eni(spec, 0).expect("eni");
        for a in 0..PER_ENI {
            ds.add_cidr(&id, Cidr::host(Ipv4Addr::new(10, 0, dev as u8, 10 + a as u8))).expect("cidr");
        }
    }
    let pod = PodRef { namespace: "default".into(), name: "p".into() };
    for i in 0..assigned {
        ds.assign(&key(i), &pod, 0).expect("assign");
    }
    ds
}

fn assign_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("assign_release_pair");
    for assigned in [249u32, 749] {
        let mut ds = pool(assigned);
        let pod = PodRef { namespace: "default".into(), name: "bench".into() };
        let k = key(1_000_000);
        let mut now = 0u64;
        g.bench_function(BenchmarkId::from_parameter(assigned + 1), |b| {
            b.iter(|| {
                // Time moves past the cooldown each round, so the pool never runs dry.
                now += COOLDOWN + 1;
                let a = ds.assign(&k, &pod, now).expect("assign");
                black_box(a.ip);
                black_box(ds.release(&k, now));
            })
        });
    }
    g.finish();
}

fn checkpoint_write(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("eniguard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut g = c.benchmark_group("checkpoint_write_fsync");
    for assigned in [250u32, 750] {
        let all = pool(assigned).allocations();
        let ckpt = Checkpoint::new(dir.join("ipam.json"));
        g.bench_function(BenchmarkId::from_parameter(assigned), |b| {
            let contents = Contents { allocations: all.clone(), ..Contents::default() };
            b.iter(|| ckpt.write(&contents).expect("write"))
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, assign_release, checkpoint_write);
criterion_main!(benches);
