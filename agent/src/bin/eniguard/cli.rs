//! `eniguard status`, `eniguard explain <namespace>/<pod>`, `eniguard events [--follow]`: the
//! agent's (or audit mode's) introspection endpoint, read and put in words.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{client::conn::http1, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The agent's introspection address: INTROSPECTION_BIND_ADDRESS, as the agent reads it.
pub fn default_addr() -> String {
    std::env::var("INTROSPECTION_BIND_ADDRESS").unwrap_or_else(|_| "127.0.0.1:61679".into())
}

/// One GET; the body as JSON (or an error naming the address and what came back).
async fn get(addr: &str, path: &str) -> Result<Value> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| {
        format!(
            "no eniguard agent answers on {addr} (INTROSPECTION_BIND_ADDRESS; audit mode: 127.0.0.1:61681)"
        )
    })?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", addr).body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{addr}{path}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).with_context(|| format!("{addr}{path}: not JSON"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn groups(v: &Value) -> String {
    format!("[{}]", strs(v).join(", "))
}

/// Readiness, the pool as a table, the guard, findings and drift.
pub async fn status(addr: &str) -> Result<()> {
    let s = get(addr, "/v1/status").await?;
    let state = if s["ready"] == true {
        "ready".to_owned()
    } else {
        format!("not ready ({})", s["step"].as_str().unwrap_or("?"))
    };
    println!("{}{state}", if s["mode"] == "audit" { "audit mode: " } else { "" });
    if let Some(p) = s["problem"].as_str() {
        println!("problem: {p}");
    }
    if let Some(r) = s["refused"].as_str() {
        println!("security groups for pods refused: {r}");
    }
    if let Ok(enis) = get(addr, "/v1/enis").await {
        println!(
            "\nnode {} ({})\n{:<24} {:>3}  {:<9} {:<28} {:<32} addresses",
            enis["instanceId"].as_str().unwrap_or("?"),
            enis["instanceType"].as_str().unwrap_or("?"),
            "ENI",
            "dev",
            "type",
            "security groups",
            "excluded"
        );
        for e in enis["enis"].as_array().into_iter().flatten() {
            println!(
                "{:<24} {:>3}  {:<9} {:<28} {:<32} {}",
                e["id"].as_str().unwrap_or("?"),
                e["deviceNumber"],
                e["interfaceType"].as_str().unwrap_or("?"),
                groups(&e["securityGroups"]),
                e["excluded"].as_str().unwrap_or("-"),
                strs(&e["cidrs"]).join(" ")
            );
        }
    }
    let g = get(addr, "/v1/guard").await?;
    if g["applied"] != true {
        println!("\nguard: {}", if g["enabled"] == true { "starting" } else { "off" });
        return Ok(());
    }
    let pods = g["pods"].as_array().map(Vec::len).unwrap_or(0);
    let violating: Vec<&Value> = g["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["verdicts"].as_object().is_some_and(|v| !v.is_empty()))
        .collect();
    println!(
        "\nguard: {} mode, {pods} pods judged on {} interfaces; expected groups from {}",
        g["mode"].as_str().unwrap_or("?"),
        g["interfaces"].as_array().map(Vec::len).unwrap_or(0),
        g["basis"].as_str().unwrap_or("?")
    );
    for f in g["findings"].as_array().into_iter().flatten() {
        println!(
            "finding: {}/{} has {} on {} ({})",
            f["namespace"].as_str().unwrap_or("?"),
            f["pod"].as_str().unwrap_or("?"),
            f["ip"].as_str().unwrap_or("?"),
            f["eni"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("?")
        );
    }
    for p in &violating {
        println!(
            "violations: {}/{}: {}",
            p["namespace"].as_str().unwrap_or("?"),
            p["name"].as_str().unwrap_or("?"),
            verdicts(&p["verdicts"])
        );
    }
    if violating.is_empty() {
        println!("no violations");
    }
    Ok(())
}

fn verdicts(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(reason, c)| format!("{reason} {} packets ({} dropped)", c["packets"], c["dropped"]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Why `namespace/pod` must leave where it must (intent), what EC2 says that interface carries
/// (truth), and the last verdicts.
pub async fn explain(addr: &str, who: &str) -> Result<()> {
    let (namespace, name) =
        who.split_once('/').with_context(|| format!("`{who}`: expected <namespace>/<pod>"))?;
    let g = get(addr, "/v1/guard").await?;
    if g["applied"] != true {
        bail!("the guard is {} on this node", if g["enabled"] == true { "still starting" } else { "off" });
    }
    let pods: Vec<&Value> = g["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["namespace"] == namespace && p["name"] == name)
        .collect();
    if pods.is_empty() {
        bail!("{who}: no address of this pod is judged here (not on this node, host network, or guard-mode off)");
    }
    let truth: BTreeMap<String, &Value> = g["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["eni"].as_str()?.to_owned(), i)))
        .collect();
    let findings: Vec<&Value> = g["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["namespace"] == namespace && f["pod"] == name)
        .collect();
    for p in pods {
        let eni = p["expectEni"].as_str().unwrap_or("?");
        let want = groups(&p["expectSecurityGroups"]);
        println!("{who} {} ({} mode)", p["ip"].as_str().unwrap_or("?"), p["mode"].as_str().unwrap_or("?"));
        let vlan = p["expectVlan"].as_u64().unwrap_or(0);
        let via = if vlan > 0 { format!(" on VLAN {vlan}") } else { String::new() };
        let basis = p["basis"].as_str().or(g["basis"].as_str()).unwrap_or("?");
        let whose = if vlan > 0 {
            "its branch ENI, tagged through the trunk"
        } else {
            "the ENI that holds its address"
        };
        println!("  intent: leave through {eni}{via}, {whose}, with {want}: {basis}");
        for f in &findings {
            println!(
                "  finding: its address {} is on {} ({}); no pod may be given it",
                f["ip"].as_str().unwrap_or("?"),
                f["eni"].as_str().unwrap_or("?"),
                f["reason"].as_str().unwrap_or("?")
            );
        }
        match truth.get(eni) {
            Some(t) => {
                let actual = groups(&t["securityGroups"]);
                let verdict =
                    if actual == want { "as intended" } else { "NOT what the intent says: sg_mismatch" };
                println!(
                    "  truth: EC2 says {eni} ({}) carries {actual}: {verdict}",
                    t["name"].as_str().unwrap_or("?")
                );
            }
            None => {
                println!("  truth: {eni} has no link on this node yet: its packets are unknown_interface")
            }
        }
        let v = verdicts(&p["verdicts"]);
        println!("  verdicts: {}", if v.is_empty() { "no violation".into() } else { v });
    }
    let events = get(addr, "/v1/events").await?;
    let mine: Vec<&Value> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["namespace"] == namespace && e["pod"] == name)
        .collect();
    for e in mine.iter().rev().take(3).rev() {
        println!("  event: {}", event_line(e));
    }
    Ok(())
}

fn event_line(e: &Value) -> String {
    format!(
        "{}/{} {} {} {} → {} left {} with {}, expected {} with {}",
        e["namespace"].as_str().unwrap_or("?"),
        e["pod"].as_str().unwrap_or("?"),
        e["reason"].as_str().unwrap_or("?"),
        e["verdict"].as_str().unwrap_or("?"),
        e["src"].as_str().unwrap_or("?"),
        e["dst"].as_str().unwrap_or("?"),
        e["actual_eni"].as_str().unwrap_or("?"),
        groups(&e["actual_security_groups"]),
        e["expected_eni"].as_str().unwrap_or("?"),
        groups(&e["expected_security_groups"]),
    )
}

/// The recent violations, and with `follow` new ones as they come (polled every second).
pub async fn events(addr: &str, follow: bool) -> Result<()> {
    let mut seen: Option<u64> = None;
    loop {
        let events = get(addr, "/v1/events").await?;
        for e in events.as_array().into_iter().flatten() {
            let ts = e["timestamp_ns"].as_u64().unwrap_or(0);
            if seen.is_none_or(|s| ts > s) {
                println!("{}", event_line(e));
                seen = Some(ts);
            }
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
