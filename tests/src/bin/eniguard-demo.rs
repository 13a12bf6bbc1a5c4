//! `cargo xtask demo`: the upstream incident (aws/amazon-vpc-cni-k8s#2792) replayed on this
//! machine's kernel, and the guard catching it.
//!
//! A node namespace has ENI eth1 in the ENIConfig's subnet with the ENIConfig's security group, and
//! a trunk ENI eth2 that the Resource Controller built with the node's default group because it
//! heard "security groups for pods" before "custom networking". Pod `web` got its address from
//! eth1, as it should; pod `victim` got one from the trunk, as v1.16.0–v1.16.3 did. Both should
//! leave with the ENIConfig's group. The guard, given truth (interfaces) and intent (pods), checks
//! every packet.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use eniguard_tests::{
    eniguard_bin,
    netns::sh,
    process::Daemon,
    topology::{Topology, ETH1, ETH2},
};

const PIN_DIR: &str = "/sys/fs/bpf/eniguard-demo";
const INTENT: &str = "/tmp/eniguard-demo-intent.yaml";

fn intent(victim_mode: &str) -> String {
    format!(
        r#"mode: monitor
interfaces:                     # truth, as EC2 describes the ENIs
  - {{ name: eth1, eni: eni-0c0f1, securityGroups: [sg-0c0f1] }}   # ENI from the ENIConfig
  - {{ name: eth2, eni: eni-07a11, securityGroups: [sg-0de] }}     # trunk, built with node defaults
pods:                           # intent: both pods must leave with the ENIConfig's group
  - {{ namespace: shop, name: web, ip: 10.0.1.10, hostInterface: eniweb,
      expect: {{ eni: eni-0c0f1, securityGroups: [sg-0c0f1] }} }}
  - {{ namespace: shop, name: victim, ip: 10.0.2.20, hostInterface: enivictim,
      expect: {{ eni: eni-07a11, securityGroups: [sg-0c0f1] }}, mode: {victim_mode} }}
"#
    )
}

fn main() -> Result<()> {
    step("a node with ENI eth1 (sg-0c0f1, from the ENIConfig) and trunk eth2 (sg-0de, node default)");
    let topo = Topology::build("eniguard-demo")?;
    let web = topo.add_pod("web", "10.0.1.10", &ETH1)?;
    let victim = topo.add_pod("victim", "10.0.2.20", &ETH2)?;
    println!("  pod shop/web    10.0.1.10 leaves through eth1");
    println!("  pod shop/victim 10.0.2.20 got its address from the trunk and leaves through eth2");

    step("eniguard guard attaches to eth1, eth2 and both pod veths (monitor mode)");
    std::fs::write(INTENT, intent("monitor"))?;
    let mut guard = Daemon::spawn(topo.node.cmd(eniguard_bin()).args([
        "guard",
        "--intent",
        INTENT,
        "--metrics-addr",
        "127.0.0.1:9400",
        "--pin-dir",
        PIN_DIR,
    ]))?;
    println!("  {}", guard.wait_for_line("ready:", Duration::from_secs(20))?);

    step("both pods send 5 pings; the guard logs each violation with the pod's identity (stderr)");
    let web_ok = web.ping(5, None)?;
    let victim_ok = victim.ping(5, None)?;
    std::thread::sleep(Duration::from_millis(200));
    println!("  web pings answered: {web_ok}; victim pings answered: {victim_ok} (monitor only reports)");
    show_metrics(&topo)?;

    step("the operator sets the victim pod to enforce and sends SIGHUP");
    std::fs::write(INTENT, intent("enforce"))?;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(guard.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    let web_ok = web.ping(5, None)?;
    let victim_ok = victim.ping(5, None)?;
    println!("  web pings answered: {web_ok}; victim pings answered: {victim_ok} (dropped before leaving the node)");
    show_metrics(&topo)?;

    step(&format!("bpftool reads the pinned intent map with field names: {PIN_DIR}/maps/GUARD_INTENT4_V2"));
    let dump = sh(Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(Path::new(PIN_DIR).join("maps/GUARD_INTENT4_V2")))?;
    for line in dump.lines().take(16) {
        println!("  {line}");
    }

    step("SIGTERM: the guard detaches and removes its pins");
    let status = guard.terminate().context("stopping the guard")?;
    let _ = std::fs::remove_file(INTENT);
    println!("  exited: {status}; pins left behind: {}", Path::new(PIN_DIR).exists());
    Ok(())
}

fn show_metrics(topo: &Topology) -> Result<()> {
    let text = eniguard_tests::http::get(&topo.node, "127.0.0.1:9400", "/metrics")?;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.ends_with(" 0")) {
        println!("  {line}");
    }
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}
