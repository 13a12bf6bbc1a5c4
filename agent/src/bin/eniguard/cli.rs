//! `eniguard status`, `eniguard explain <namespace>/<pod>`, `eniguard events [--follow]`: the
//! agent's (or audit mode's) introspection endpoint, read and put in words.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use eniguard::observe::views::{
    path, EnisView, EventView, GuardView, JudgedPodView, StatusView, VerdictCount,
};
use http_body_util::{BodyExt as _, Empty};
use hyper::{client::conn::http1, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// The agent's introspection address: INTROSPECTION_BIND_ADDRESS, as the agent reads it.
pub fn default_addr() -> String {
    std::env::var("INTROSPECTION_BIND_ADDRESS").unwrap_or_else(|_| "127.0.0.1:61679".into())
}

/// One GET; the body as `T` (or an error naming the address and what came back). `addr` is
/// `host:port` or `unix:PATH`, as INTROSPECTION_BIND_ADDRESS.
async fn get<T: DeserializeOwned>(addr: &str, path: &str) -> Result<T> {
    let unreachable = || {
        format!(
            "no eniguard agent answers on {addr} (INTROSPECTION_BIND_ADDRESS; audit mode: 127.0.0.1:61681)"
        )
    };
    let (status, body) = match addr.strip_prefix("unix:") {
        Some(socket) => {
            let stream = tokio::net::UnixStream::connect(socket).await.with_context(unreachable)?;
            send(stream, "localhost", path).await?
        }
        None => {
            let stream = tokio::net::TcpStream::connect(addr).await.with_context(unreachable)?;
            send(stream, addr, path).await?
        }
    };
    if !status.is_success() {
        bail!("{addr}{path}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).with_context(|| format!("{addr}{path}: not the answer this CLI reads"))
}

async fn send<S>(stream: S, host: &str, path: &str) -> Result<(hyper::StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

fn groups(v: &[String]) -> String {
    format!("[{}]", v.join(", "))
}

/// Readiness, the pool as a table, the guard, findings and drift.
pub async fn status(addr: &str) -> Result<()> {
    let s: StatusView = get(addr, path::STATUS).await?;
    let state = if s.ready { "ready".to_owned() } else { format!("not ready ({})", s.step) };
    println!("{}{state}", if s.mode.as_deref() == Some("audit") { "audit mode: " } else { "" });
    if let Some(p) = &s.problem {
        println!("problem: {p}");
    }
    if let Some(r) = &s.refused {
        println!("security groups for pods refused: {r}");
    }
    if let Ok(enis) = get::<EnisView>(addr, path::ENIS).await {
        println!(
            "\nnode {} ({})\n{:<24} {:>3}  {:<9} {:<28} {:<32} addresses",
            enis.instance_id, enis.instance_type, "ENI", "dev", "type", "security groups", "excluded"
        );
        for e in &enis.enis {
            println!(
                "{:<24} {:>3}  {:<9} {:<28} {:<32} {}",
                e.id,
                e.device_number,
                e.interface_type,
                groups(&e.security_groups),
                e.excluded.as_deref().unwrap_or("-"),
                e.cidrs.join(" ")
            );
        }
    }
    let g: GuardView = get(addr, path::GUARD).await?;
    if !g.applied {
        println!("\nguard: {}", if g.enabled { "starting" } else { "off" });
        return Ok(());
    }
    let violating: Vec<&JudgedPodView> = g.pods.iter().filter(|p| !p.verdicts.is_empty()).collect();
    println!(
        "\nguard: {} mode, {} pods judged on {} interfaces; expected groups from {}",
        g.mode.as_deref().unwrap_or("?"),
        g.pods.len(),
        g.interfaces.len(),
        g.basis.as_deref().unwrap_or("?")
    );
    for f in &g.findings {
        println!("finding: {}/{} has {} on {} ({})", f.namespace, f.pod, f.ip, f.eni, f.reason);
    }
    for p in &violating {
        println!("violations: {}/{}: {}", p.namespace, p.name, verdicts(&p.verdicts));
    }
    if violating.is_empty() {
        println!("no violations");
    }
    Ok(())
}

fn verdicts(v: &BTreeMap<String, VerdictCount>) -> String {
    v.iter()
        .map(|(reason, c)| format!("{reason} {} packets ({} dropped)", c.packets, c.dropped))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `namespace/pod` must leave where it must (intent), what EC2 says that interface carries
/// (truth), and the last verdicts.
pub async fn explain(addr: &str, who: &str) -> Result<()> {
    let (namespace, name) =
        who.split_once('/').with_context(|| format!("`{who}`: expected <namespace>/<pod>"))?;
    let g: GuardView = get(addr, path::GUARD).await?;
    if !g.applied {
        bail!("the guard is {} on this node", if g.enabled { "still starting" } else { "off" });
    }
    let pods: Vec<&JudgedPodView> =
        g.pods.iter().filter(|p| p.namespace == namespace && p.name == name).collect();
    if pods.is_empty() {
        bail!("{who}: no address of this pod is judged here (not on this node, host network, or guard-mode off)");
    }
    let truth: BTreeMap<&str, _> = g.interfaces.iter().map(|i| (i.eni.as_str(), i)).collect();
    let findings: Vec<_> = g.findings.iter().filter(|f| f.namespace == namespace && f.pod == name).collect();
    for p in pods {
        let eni = p.expect_eni.as_str();
        let want = groups(&p.expect_security_groups);
        println!("{who} {} ({} mode)", p.ip, p.mode);
        let vlan = p.expect_vlan;
        let via = if vlan > 0 { format!(" on VLAN {vlan}") } else { String::new() };
        let whose = if vlan > 0 {
            "its branch ENI, tagged through the trunk"
        } else {
            "the ENI that holds its address"
        };
        println!("  intent: leave through {eni}{via}, {whose}, with {want}: {}", p.basis);
        for f in &findings {
            println!(
                "  finding: its address {} is on {} ({}); no pod may be given it",
                f.ip, f.eni, f.reason
            );
        }
        match truth.get(eni) {
            Some(t) => {
                let actual = groups(&t.security_groups);
                let verdict =
                    if actual == want { "as intended" } else { "NOT what the intent says: sg_mismatch" };
                println!("  truth: EC2 says {eni} ({}) carries {actual}: {verdict}", t.name);
            }
            None => {
                println!("  truth: {eni} has no link on this node yet: its packets are unknown_interface")
            }
        }
        let v = verdicts(&p.verdicts);
        println!("  verdicts: {}", if v.is_empty() { "no violation".into() } else { v });
    }
    let events: Vec<EventView> = get(addr, path::EVENTS).await?;
    let mine: Vec<&EventView> = events.iter().filter(|e| e.namespace == namespace && e.pod == name).collect();
    for e in mine.iter().rev().take(3).rev() {
        println!("  event: {}", event_line(e));
    }
    Ok(())
}

fn event_line(e: &EventView) -> String {
    format!(
        "{}/{} {} {} {} → {} left {} with {}, expected {} with {}",
        e.namespace,
        e.pod,
        e.reason,
        e.verdict,
        e.src,
        e.dst,
        e.actual_eni,
        groups(&e.actual_security_groups),
        e.expected_eni,
        groups(&e.expected_security_groups),
    )
}

/// The recent violations, and with `follow` new ones as they come (polled every second).
pub async fn events(addr: &str, follow: bool) -> Result<()> {
    let mut seen: Option<u64> = None;
    loop {
        let events: Vec<EventView> = get(addr, path::EVENTS).await?;
        for e in &events {
            if seen.is_none_or(|s| e.timestamp_ns > s) {
                println!("{}", event_line(e));
                seen = Some(e.timestamp_ns);
            }
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
