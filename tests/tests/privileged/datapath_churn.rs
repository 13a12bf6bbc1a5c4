//! Pod churn through the guard's library interface, with BPF_PROG_TEST_RUN on a real pod veth:
//! thousands of pods come and go, each violating once, far more than the maps hold at a time.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context as _, Result};
use eniguard::guard::{
    attach::{ifindex, AttachMode},
    datapath::{resolve, Capacity, Guard},
    events,
    pins::PinDir,
    spec::Spec,
};
use eniguard_common::guard::REASON_SPOOFED_SOURCE;
use eniguard_tests::{frames::udp_frame, netns::in_netns};

use crate::harness::Ctx;

const PODS: u32 = 5_000;
/// Far fewer than PODS: only id reuse and pruning keep the maps from filling up.
const MAX_PODS: u32 = 8;
const EVENTS_PER_POD_PER_SECOND: u64 = 10;
/// TC_ACT_UNSPEC: monitor mode passes the violation on to the next program.
const PASS: i32 = -1;

/// 5,000 pods created and removed in turn, each violating once: every violation is counted for
/// the right pod, its event names it, the previous pod's counters and rate window are gone, ids
/// stay within the maps' capacity, and the event rate limit still holds at the end.
pub fn churn_5000_pods(ctx: &mut Ctx) -> Result<()> {
    for (a, b) in [("enichurn", "podside"), ("eth1", "vpc1")] {
        ctx.ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        ctx.ns.ip(&["link", "set", a, "up"])?;
    }
    let pins = PinDir::new(&ctx.pin_dir);
    in_netns(&ctx.ns, move || {
        let mut guard = Guard::load(pins, AttachMode::Netlink, Capacity::for_max_pods(MAX_PODS))?;
        let mut ring = guard.take_events()?;
        let veth = ifindex("enichurn")?;
        let spoofed = udp_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            &[],
            "192.0.2.1".parse()?,
            "198.51.100.7".parse()?,
        );
        for i in 0..PODS {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i);
            let spec = Spec::parse(&format!(
                "eventsPerPodPerSecond: {EVENTS_PER_POD_PER_SECOND}\n\
                 interfaces: [{{ name: eth1, eni: eni-a1, securityGroups: [sg-1] }}]\n\
                 pods: [{{ namespace: churn, name: pod-{i}, ip: {ip}, hostInterface: enichurn, \
                 expect: {{ eni: eni-a1, securityGroups: [sg-1] }} }}]\n"
            ))?
            .validate()?;
            guard.apply(&resolve(spec)?)?;
            let (_, verdict) = guard.test_run("guard_pod", &spoofed, veth, 1)?;
            ensure!(verdict == PASS, "pod {i}: verdict {verdict}");
            let stats = guard.stats()?;
            let [(id, counters)] = stats.pods.as_slice() else {
                anyhow::bail!("pod {i}: per-pod entries {:?} (a departed pod's were kept)", stats.pods);
            };
            ensure!(*id <= MAX_PODS, "pod {i} got id {id}: ids are not reused");
            ensure!(counters.violations[REASON_SPOOFED_SOURCE as usize] == 1, "pod {i}: {counters:?}");
            let name = guard.names.pods.name(*id).cloned();
            ensure!(name == Some(("churn".into(), format!("pod-{i}"))), "pod {i}: id {id} names {name:?}");
            let item = ring.next().with_context(|| format!("pod {i}: no event"))?;
            let event = events::decode(&item).context("a short event")?;
            drop(item);
            let named = events::name(&event, &guard.names);
            ensure!(
                named.pod == format!("pod-{i}") && named.reason == "spoofed_source",
                "pod {i}: {named:?}"
            );
            ensure!(ring.next().is_none(), "pod {i}: more than one event");
        }
        let stats = guard.stats()?;
        ensure!(stats.node.violations[REASON_SPOOFED_SOURCE as usize] == u64::from(PODS), "{:?}", stats.node);
        ensure!(stats.node.events_lost == 0 && stats.node.events_rate_limited == 0, "{:?}", stats.node);
        // The last pod, already one event into its second, violates 30 more times.
        guard.test_run("guard_pod", &spoofed, veth, 30)?;
        let limited = guard.stats()?.node.events_rate_limited;
        let delivered = std::iter::from_fn(|| ring.next().map(drop)).count() as u64;
        ensure!(
            (20..=21).contains(&limited) && delivered + limited == 30,
            "rate limit: {delivered} delivered, {limited} held back of 30 (limit {EVENTS_PER_POD_PER_SECOND}/s)"
        );
        guard.shutdown(false)?;
        Ok(())
    })
}

/// Applies write only what changed since the last apply; an entry changed behind the guard's back
/// (here deleted with bpftool) is put right by the next apply that reads the maps back
/// (`reread_next`, the agent's 30 s resync), and a difference that no longer applies (removing
/// an entry that is already gone) falls back to the full rewrite instead of failing.
pub fn diff_and_reread(ctx: &mut Ctx) -> Result<()> {
    ctx.ns.ip(&["link", "add", "eth1", "type", "veth", "peer", "name", "vpc1"])?;
    ctx.ns.ip(&["link", "set", "eth1", "up"])?;
    let pins = PinDir::new(&ctx.pin_dir);
    let pin_dir = ctx.pin_dir.clone();
    let spec = |ips: &[&str]| -> Result<_> {
        let pods: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                format!(
                    "{{ namespace: d, name: p{i}, ip: {ip}, hostInterface: enid{i}, \
                     expect: {{ eni: eni-a1, securityGroups: [sg-1] }} }}"
                )
            })
            .collect();
        let text = format!(
            "interfaces: [{{ name: eth1, eni: eni-a1, securityGroups: [sg-1] }}]\npods: [{}]\n",
            pods.join(", ")
        );
        Ok(eniguard::guard::datapath::resolve_present(Spec::parse(&text)?.validate()?))
    };
    let ips = |list: &[&str]| -> std::collections::BTreeSet<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)).collect()
    };
    let maps = pin_dir.clone();
    let delete = move |ip: [u8; 4]| -> Result<()> {
        let path = maps.join("maps").join(eniguard_common::guard::INTENT_MAP);
        let key: Vec<String> = ip.iter().map(|b| b.to_string()).collect();
        eniguard_tests::netns::sh(
            std::process::Command::new("bpftool")
                .args(["map", "delete", "pinned"])
                .arg(&path)
                .arg("key")
                .args(&key),
        )?;
        Ok(())
    };
    let intent = move || crate::live_guard::map_ips(&pin_dir, eniguard_common::guard::INTENT_MAP);
    in_netns(&ctx.ns, move || {
        let mut guard = Guard::load(pins, AttachMode::Netlink, Capacity::for_max_pods(8))?;
        guard.apply(&spec(&["10.1.0.1", "10.1.0.2", "10.1.0.3"])?)?;
        ensure!(intent()? == ips(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]), "{:?}", intent()?);
        // Someone deletes p0's entry; the next apply changes only p2 (gone): p0 stays missing,
        // since a diff does not read the map.
        delete([10, 1, 0, 1])?;
        guard.apply(&spec(&["10.1.0.1", "10.1.0.2"])?)?;
        ensure!(intent()? == ips(&["10.1.0.2"]), "after a diff: {:?}", intent()?);
        // The resync reads the maps back: p0 is there again.
        guard.reread_next();
        guard.apply(&spec(&["10.1.0.1", "10.1.0.2"])?)?;
        ensure!(intent()? == ips(&["10.1.0.1", "10.1.0.2"]), "after a reread: {:?}", intent()?);
        // p1's entry deleted, then p1 removed: the diff's delete finds nothing, the apply
        // still succeeds (full rewrite).
        delete([10, 1, 0, 2])?;
        guard.apply(&spec(&["10.1.0.1"])?)?;
        ensure!(intent()? == ips(&["10.1.0.1"]), "after a failed diff: {:?}", intent()?);
        guard.shutdown(false)?;
        Ok(())
    })
}
