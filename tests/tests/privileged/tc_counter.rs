//! The pipeline proof: the agent loads the embedded eBPF object, attaches the counter to an
//! interface, real packets are counted, and bpftool dumps the pinned map with field names.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use eniguard_tests::{
    eniguard_bin,
    netns::{sh, veth_pair, Link},
    process::Daemon,
};

use crate::harness::{skip, Ctx};

const PINGS: u64 = 5;
/// Ethernet (14) + IPv4 (20) + ICMP (8) + ping's default 56 data bytes.
const PING_FRAME_BYTES: u64 = 98;

pub fn counts_over_tcx(ctx: &mut Ctx) -> Result<()> {
    if !crate::kernel_at_least(6, 6) {
        return Err(skip("TCX needs kernel >= 6.6"));
    }
    counts(ctx, "tcx")
}

pub fn counts_over_netlink(ctx: &mut Ctx) -> Result<()> {
    counts(ctx, "netlink")
}

fn counts(ctx: &mut Ctx, attach: &str) -> Result<()> {
    let peer = ctx.netns("vpc")?;
    let node = &ctx.ns;
    veth_pair(
        Link { ns: node, name: "eth1".into(), addr: "10.99.0.1".into() },
        Link { ns: &peer, name: "vpc1".into(), addr: "10.99.0.2".into() },
        24,
    )?;
    let pin_dir = ctx.pin_dir.display().to_string();
    let tcx_before = tcx_links_of("tc_count")?;
    let mut agent =
        Daemon::spawn(
            node.cmd(eniguard_bin())
                .args(["counter", "run", "--iface", "eth1", "--direction", "egress"])
                .args(["--attach", attach, "--pin-dir", &pin_dir]),
        )?;
    let ready = agent.wait_for_line("ready:", Duration::from_secs(20))?;
    ensure!(ready.contains(&format!("({attach})")), "attached in the wrong mode: {ready}");
    let map = ctx.pin_dir.join("maps/TC_COUNTER_V1");

    // The program is really attached where we asked.
    match attach {
        "netlink" => {
            let filters = node.run("tc", &["filter", "show", "dev", "eth1", "egress"])?;
            ensure!(filters.contains("tc_count"), "no tc_count filter on eth1 egress: {filters}");
        }
        _ => {
            let new = tcx_links_of("tc_count")?.len() - tcx_before.len();
            ensure!(new == 1, "expected one new TCX link running tc_count, found {new}");
        }
    }

    node.run("ping", &["-c", &PINGS.to_string(), "-i", "0.05", "-W", "1", "10.99.0.2"])?;

    let shown = sh(node.cmd(eniguard_bin()).args(["counter", "show", "--pin-dir", &pin_dir]))?;
    ensure!(
        shown.trim() == format!("packets={PINGS} bytes={}", PINGS * PING_FRAME_BYTES),
        "counter after {PINGS} pings: {shown}"
    );

    // bpftool reads the same pinned map and knows the struct's field names (BTF).
    let dump = sh(std::process::Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&map))?;
    ensure!(dump.contains("packets") && dump.contains("bytes"), "bpftool dump lacks field names:\n{dump}");
    let json = sh(std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&map))?;
    ensure!(sum_field(&json, "packets")? == PINGS, "bpftool's per-CPU packets do not sum to {PINGS}: {json}");

    let status = agent.terminate()?;
    ensure!(status.success(), "agent exited with {status} on SIGTERM");
    ensure!(!ctx.pin_dir.exists(), "clean shutdown left {} behind", ctx.pin_dir.display());
    if attach == "netlink" {
        let filters = node.run("tc", &["filter", "show", "dev", "eth1", "egress"])?;
        ensure!(!filters.contains("tc_count"), "filter left attached after shutdown: {filters}");
    } else {
        ensure!(tcx_links_of("tc_count")? == tcx_before, "TCX link left behind after shutdown");
    }
    Ok(())
}

pub fn rejects_unknown_interface(ctx: &mut Ctx) -> Result<()> {
    let out = ctx
        .ns
        .cmd(eniguard_bin())
        .args(["counter", "run", "--iface", "nosuch0", "--pin-dir"])
        .arg(&ctx.pin_dir)
        .output()?;
    ensure!(!out.status.success(), "attaching to a missing interface succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("nosuch0"), "error does not name the interface: {stderr}");
    ensure!(!ctx.pin_dir.exists(), "a failed attach left pins in {}", ctx.pin_dir.display());
    Ok(())
}

/// Ids of TCX links (bpftool 7.1 prints their type as 11) whose program is named `prog`.
fn tcx_links_of(prog: &str) -> Result<Vec<u64>> {
    let links: serde_json::Value =
        serde_json::from_str(&sh(std::process::Command::new("bpftool").args(["-j", "link", "show"]))?)?;
    let mut ids = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        let is_tcx = link["type"] == 11 || link["type"] == "tcx";
        let (Some(id), Some(prog_id)) = (link["id"].as_u64(), link["prog_id"].as_u64()) else {
            continue;
        };
        if !is_tcx {
            continue;
        }
        let info = sh(std::process::Command::new("bpftool").args([
            "-j",
            "prog",
            "show",
            "id",
            &prog_id.to_string(),
        ]))?;
        let info: serde_json::Value = serde_json::from_str(&info)?;
        if info["name"] == prog {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Sums `formatted.values[].value.<field>` over CPUs in `bpftool -j map dump` output.
fn sum_field(json: &str, field: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(json).context("bpftool -j output is not JSON")?;
    let values = v[0]["formatted"]["values"].as_array().context("no formatted.values (no BTF?)")?;
    Ok(values.iter().filter_map(|cpu| cpu["value"][field].as_u64()).sum())
}
