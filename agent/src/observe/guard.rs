//! The guard's counters as Prometheus metrics (prometheus-client), read from the per-CPU maps at
//! scrape time and summed. Per-pod series exist only for pods with a violation or a finding, so
//! cardinality stays bounded on a busy node.

use std::sync::{Arc, Mutex};

use super::views::{FindingView, GuardView, InterfaceView, JudgedPodView, VerdictCount};

use eniguard_common::guard::{KIND_NAMES, REASONS, REASON_NAMES};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::guard::{
    datapath::{Guard, Names, Stats},
    live::LiveGuard,
};

/// Where the collector reads from: a guard (standalone), or the agent's live guard (which adds
/// its findings).
#[derive(Clone)]
pub enum GuardSource {
    Standalone(Arc<Mutex<Guard>>),
    Live(Arc<LiveGuard>),
}

impl std::fmt::Debug for GuardSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardSource")
    }
}

/// Registers with `Registry::register_collector`.
#[derive(Debug)]
pub struct GuardCollector(pub GuardSource);

type Labels = Vec<(&'static str, String)>;

impl Collector for GuardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let guard = match &self.0 {
            GuardSource::Standalone(g) => g.clone(),
            GuardSource::Live(l) => l.guard(),
        };
        let (stats, pods) = {
            let guard = crate::sync::lock(&guard);
            // A failed read leaves the guard series out of this scrape (the log says why).
            let Ok(stats) = guard.stats().inspect_err(|e| log::warn!("reading the guard's counters: {e}"))
            else {
                return Ok(());
            };
            let pods = pod_series(&stats, &guard.names);
            (stats, pods)
        };
        encode_guard(&mut encoder, &stats, &pods)?;
        if let GuardSource::Live(live) = &self.0 {
            let findings: Vec<(Labels, i64)> = live
                .findings()
                .into_iter()
                .map(|f| {
                    (
                        vec![
                            ("namespace", f.namespace),
                            ("pod", f.pod),
                            ("eni", f.eni),
                            ("reason", f.reason),
                        ],
                        1,
                    )
                })
                .collect();
            gauges(
                &mut encoder,
                "guard_pod_findings",
                "1 for a pod whose address sits on an ENI that never serves ordinary pods (trunk, EFA, no_manage, the primary under custom networking), by reason",
                &findings,
            )?;
        }
        Ok(())
    }
}

/// Per-pod (violations, drops) series with a non-zero value, labelled by pod and reason.
struct PodSeries {
    violations: Vec<(Labels, u64)>,
    dropped: Vec<(Labels, u64)>,
}

fn pod_series(stats: &Stats, names: &Names) -> PodSeries {
    let mut out = PodSeries { violations: Vec::new(), dropped: Vec::new() };
    for (pod_id, c) in &stats.pods {
        let (ns, pod) =
            names.pods.name(*pod_id).cloned().unwrap_or_else(|| (String::new(), format!("pod-id-{pod_id}")));
        for (r, reason) in REASON_NAMES.iter().enumerate() {
            let labels =
                || vec![("namespace", ns.clone()), ("pod", pod.clone()), ("reason", (*reason).to_owned())];
            if c.violations[r] > 0 {
                out.violations.push((labels(), c.violations[r]));
            }
            if c.dropped[r] > 0 {
                out.dropped.push((labels(), c.dropped[r]));
            }
        }
    }
    out
}

fn by_reason(values: &[u64; REASONS]) -> Vec<(Labels, u64)> {
    REASON_NAMES.iter().zip(values).map(|(r, v)| (vec![("reason", (*r).to_owned())], *v)).collect()
}

fn encode_guard(
    encoder: &mut DescriptorEncoder<'_>,
    stats: &Stats,
    pods: &PodSeries,
) -> Result<(), std::fmt::Error> {
    let n = &stats.node;
    let none = |v: u64| vec![(Vec::new(), v)];
    counters(
        encoder,
        "guard_checked_packets",
        "Packets from pod addresses checked against their intent on ENI, trunk and branch interfaces",
        &none(n.checked),
    )?;
    counters(
        encoder,
        "guard_checked_sources",
        "Packets from pod veths checked for their source address",
        &none(n.checked_sources),
    )?;
    let kinds: Vec<(Labels, u64)> =
        KIND_NAMES.iter().zip(&n.pod_frames).map(|(k, v)| (vec![("kind", (*k).to_owned())], *v)).collect();
    counters(
        encoder,
        "guard_pod_frames",
        "Frames from pod veths by what they carry (ipv4, arp, ipv6, other, unreadable)",
        &kinds,
    )?;
    counters(
        encoder,
        "guard_violation_packets",
        "Packets that violated their pod's intent, by reason",
        &by_reason(&n.violations),
    )?;
    counters(
        encoder,
        "guard_dropped_packets",
        "Violating packets dropped in enforce mode, by reason",
        &by_reason(&n.dropped),
    )?;
    counters(
        encoder,
        "guard_events_lost",
        "Violation events lost because the ring buffer was full",
        &none(n.events_lost),
    )?;
    counters(
        encoder,
        "guard_events_rate_limited",
        "Violation events held back by the per-pod rate limit (packets still counted)",
        &none(n.events_rate_limited),
    )?;
    counters(
        encoder,
        "guard_pod_violation_packets",
        "Violating packets per pod and reason",
        &pods.violations,
    )?;
    counters(encoder, "guard_pod_dropped_packets", "Dropped packets per pod and reason", &pods.dropped)
}

fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, MetricType::Counter, series.iter().map(|(l, v)| (l, ConstCounter::new(*v))))
}

fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    family(encoder, name, help, MetricType::Gauge, series.iter().map(|(l, v)| (l, ConstGauge::new(*v))))
}

/// One metric family: its descriptor, then each series. A family of one series without labels
/// is written bare (an empty label set would come out as `name{}`).
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl Iterator<Item = (&'a Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    let mut series = series.peekable();
    if series.peek().is_some_and(|(labels, _)| labels.is_empty()) {
        if let Some((_, metric)) = series.next() {
            return metric.encode(family);
        }
    }
    for (labels, metric) in series {
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// What the guard holds (truth, intent, findings as last applied) and each pod's verdicts.
pub fn guard_state(guard: Option<&LiveGuard>) -> GuardView {
    let Some((live, applied)) = guard.and_then(|g| Some((g, g.applied()?))) else {
        return GuardView { enabled: guard.is_some(), ..GuardView::default() };
    };
    let verdicts = live.pod_verdicts();
    let spec = &applied.spec;
    let mode = |m: crate::guard::spec::Mode| format!("{m:?}").to_lowercase();
    GuardView {
        enabled: true,
        applied: true,
        mode: Some(mode(spec.mode)),
        basis: Some(applied.basis.clone()),
        interfaces: spec
            .interfaces
            .iter()
            .map(|i| InterfaceView {
                name: i.name.clone(),
                eni: i.eni.clone(),
                vlan: i.vlan,
                security_groups: i.security_groups.clone(),
            })
            .collect(),
        pods: spec
            .pods
            .iter()
            .map(|p| {
                let key = (p.pod.namespace.clone(), p.pod.name.clone());
                JudgedPodView {
                    namespace: p.pod.namespace.clone(),
                    name: p.pod.name.clone(),
                    ip: p.ip.to_string(),
                    host_interface: p.pod.host_interface.clone(),
                    expect_eni: p.pod.expect.eni.clone(),
                    expect_vlan: p.pod.expect.vlan,
                    expect_security_groups: p.pod.expect.security_groups.clone(),
                    mode: mode(p.pod.mode.unwrap_or(spec.mode)),
                    verdicts: verdicts
                        .get(&key)
                        .map(|m| {
                            m.iter()
                                .map(|(r, (packets, dropped))| {
                                    ((*r).to_owned(), VerdictCount { packets: *packets, dropped: *dropped })
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    basis: applied.branch_basis.get(&key).unwrap_or(&applied.basis).clone(),
                }
            })
            .collect(),
        findings: applied
            .findings
            .iter()
            .map(|f| FindingView {
                namespace: f.namespace.clone(),
                pod: f.pod.clone(),
                ip: f.ip.to_string(),
                eni: f.eni.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eniguard_common::guard::{GuardCounters, PodCounters, REASON_SG_MISMATCH};
    use prometheus_client::registry::Registry;

    /// A collector over fixed numbers (the encoding, without a kernel).
    #[derive(Debug)]
    struct Fixed(Stats, Vec<(u32, (String, String))>);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            let mut names = Names::default();
            for (_, pod) in &self.1 {
                names.pods.id(pod);
            }
            encode_guard(&mut encoder, &self.0, &pod_series(&self.0, &names))
        }
    }

    #[test]
    fn renders_node_and_pod_series_in_openmetrics() {
        let mut node = GuardCounters { checked: 7, ..Default::default() };
        node.violations[REASON_SG_MISMATCH as usize] = 3;
        let mut pod = PodCounters::default();
        pod.violations[REASON_SG_MISMATCH as usize] = 3;
        let stats = Stats { node, pods: vec![(1, pod)] };
        let mut registry = Registry::with_prefix("eniguard");
        registry.register_collector(Box::new(Fixed(stats, vec![(1, ("default".into(), "web-1".into()))])));
        let text = crate::observe::agent::render(&registry);
        assert!(text.contains("eniguard_guard_checked_packets_total 7\n"), "{text}");
        assert!(
            text.contains("eniguard_guard_violation_packets_total{reason=\"sg_mismatch\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("eniguard_guard_violation_packets_total{reason=\"wrong_eni\"} 0\n"));
        assert!(text.contains(
            "eniguard_guard_pod_violation_packets_total{namespace=\"default\",pod=\"web-1\",reason=\"sg_mismatch\"} 3\n"
        ));
        assert!(!text.contains("pod=\"web-1\",reason=\"wrong_eni\""), "zero pod series rendered: {text}");
        assert!(text.contains("# TYPE eniguard_guard_events_lost counter"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
