//! `cargo xtask demo`: shows what eniguard does, on this machine's kernel, in network namespaces.
//!
//! At this stage: the datapath pipeline. A node namespace with an ENI-like interface wired to a
//! "VPC" namespace; the agent attaches its TC classifier, real packets are counted in a pinned
//! per-CPU map, and bpftool prints that map with its field names.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use eniguard_tests::{
    eniguard_bin,
    netns::{sh, veth_pair, Link, NetNs},
    process::Daemon,
};

fn main() -> Result<()> {
    let pin_dir = "/sys/fs/bpf/eniguard-demo";
    let node = NetNs::create("eniguard-demo-node")?;
    let vpc = NetNs::create("eniguard-demo-vpc")?;
    step("a node namespace with ENI interface eth1, wired to a VPC namespace");
    veth_pair(
        Link {
            ns: &node,
            name: "eth1".into(),
            addr: "10.0.1.10".into(),
        },
        Link {
            ns: &vpc,
            name: "vpc-eni1".into(),
            addr: "10.0.1.1".into(),
        },
        24,
    )?;

    step("the agent loads its embedded eBPF object and attaches tc_count to eth1 egress");
    let mut agent = Daemon::spawn(node.cmd(eniguard_bin()).args([
        "counter",
        "run",
        "--iface",
        "eth1",
        "--direction",
        "egress",
        "--pin-dir",
        pin_dir,
    ]))?;
    println!(
        "  {}",
        agent.wait_for_line("ready:", Duration::from_secs(20))?
    );

    step("the node sends 10 pings to the VPC");
    node.run("ping", &["-c", "10", "-i", "0.05", "-q", "10.0.1.1"])?;

    step("the agent reads the per-CPU counter back (summed over CPUs)");
    print!(
        "  {}",
        sh(node
            .cmd(eniguard_bin())
            .args(["counter", "show", "--pin-dir", pin_dir]))?
    );

    step(&format!("bpftool dumps the pinned map with its field names: bpftool map dump pinned {pin_dir}/maps/TC_COUNTER_V1"));
    let dump = sh(Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(format!("{pin_dir}/maps/TC_COUNTER_V1")))?;
    for line in dump.lines().take(12) {
        println!("  {line}");
    }

    step("SIGTERM: the agent detaches and removes its pins");
    let status = agent.terminate().context("stopping the agent")?;
    println!(
        "  agent exited: {status}; {pin_dir} exists afterwards: {}",
        std::path::Path::new(pin_dir).exists()
    );
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}
