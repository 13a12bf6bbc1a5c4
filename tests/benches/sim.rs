//! Simulator speed: `cargo bench -p eniguard-tests --bench sim` (root adds the fabric rows).
//! - EC2 calls per second through the real aws-sdk-ec2 client on loopback, sequential and with
//!   concurrent callers (goal: at least 1,000 calls/s);
//! - the full default scenario up (EC2 API, IMDS, Kubernetes API with its objects, Resource
//!   Controller; with the fabric, also the namespaces and the primary NIC), until the first
//!   DescribeInstances answers (goal: under 2 s).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a failure should stop the run loudly

#[path = "../tests/common/clients.rs"]
mod clients;

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_sdk_ec2::config::retry::RetryConfig;
use clients::ec2_client;
use eniguard_tests::sim::{
    ec2::{CreateEni, Ec2},
    ec2_api::{self, Ec2Sim},
    scenario::{Scenario, Sim},
};

const CALLS: usize = 4000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut ec2 = Ec2::default();
        let subnet = ec2.add_subnet("vpc-1", "us-west-2a", (Ipv4Addr::new(10, 0, 0, 0), 16));
        let sg = ec2.add_security_group("node");
        ec2.run_instance("m5.large", &subnet, std::slice::from_ref(&sg)).unwrap();
        for _ in 0..20 {
            ec2.create_network_interface(CreateEni {
                subnet_id: subnet.clone(),
                groups: vec![sg.clone()],
                ..Default::default()
            })
            .unwrap();
        }
        let sim = Arc::new(Mutex::new(Ec2Sim { ec2, ..Default::default() }));
        let (endpoint, _) = ec2_api::start(sim).await.unwrap();
        let client = ec2_client(&endpoint, RetryConfig::standard());
        client.describe_network_interfaces().send().await.unwrap(); // warm the connection
        println!("\nsimulated EC2 on loopback, DescribeNetworkInterfaces of 21 ENIs via aws-sdk-ec2");
        println!("| callers | calls | calls/s |");
        println!("|---|---|---|");
        for callers in [1usize, 8] {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..callers {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..CALLS / callers {
                        client.describe_network_interfaces().send().await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let secs = started.elapsed().max(Duration::from_micros(1)).as_secs_f64();
            println!("| {callers} | {CALLS} | {:.0} |", CALLS as f64 / secs);
        }
        scenario_up().await;
    });
}

async fn scenario_up() {
    const RUNS: usize = 10;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    println!("\ndefault scenario up, until the first DescribeInstances answers ({RUNS} runs)");
    println!("| fabric | median ms | max ms |");
    println!("|---|---|---|");
    let scenario = Scenario::default_scenario();
    for fabric in [false, true] {
        if fabric && !root {
            println!("| yes | skipped: needs root | |");
            continue;
        }
        let mut ms = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let sim = if fabric {
                Sim::start_with_fabric(&scenario, "bench-sim").await.unwrap()
            } else {
                Sim::start(&scenario).await.unwrap()
            };
            let client = ec2_client(&sim.ec2_url, RetryConfig::disabled());
            client.describe_instances().send().await.unwrap();
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            drop(sim);
        }
        ms.sort_by(f64::total_cmp);
        println!("| {} | {:.1} | {:.1} |", if fabric { "yes" } else { "no" }, ms[RUNS / 2], ms[RUNS - 1]);
    }
}
