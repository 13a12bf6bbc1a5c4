//! Prometheus text exposition (format 0.0.4) of the guard's counters.

use std::fmt::Write as _;

use eniguard_common::guard::{KIND_NAMES, REASONS, REASON_NAMES};

use crate::guard::datapath::{Names, Stats};

/// Renders the guard metrics. Per-pod series exist only for pods with a violation.
pub fn render_guard(stats: &Stats, names: &Names) -> String {
    let mut out = String::new();
    let n = &stats.node;
    counter(
        &mut out,
        "eniguard_guard_checked_packets_total",
        "Packets from pod addresses checked against their intent on ENI, trunk and branch interfaces.",
        &[("", n.checked)],
    );
    counter(
        &mut out,
        "eniguard_guard_checked_sources_total",
        "Packets from pod veths checked for their source address.",
        &[("", n.checked_sources)],
    );
    let kinds: Vec<(String, u64)> =
        KIND_NAMES.iter().zip(&n.pod_frames).map(|(k, v)| (format!("kind=\"{k}\""), *v)).collect();
    counter_labeled(
        &mut out,
        "eniguard_guard_pod_frames_total",
        "Frames from pod veths by what they carry (ipv4, arp, ipv6, other, unreadable).",
        &kinds,
    );
    let by_reason = |values: &[u64; REASONS]| -> Vec<(String, u64)> {
        REASON_NAMES.iter().zip(values).map(|(r, v)| (format!("reason=\"{r}\""), *v)).collect()
    };
    counter_labeled(
        &mut out,
        "eniguard_guard_violation_packets_total",
        "Packets that violated their pod's intent, by reason.",
        &by_reason(&n.violations),
    );
    counter_labeled(
        &mut out,
        "eniguard_guard_dropped_packets_total",
        "Violating packets dropped in enforce mode, by reason.",
        &by_reason(&n.dropped),
    );
    counter(
        &mut out,
        "eniguard_guard_events_lost_total",
        "Violation events lost because the ring buffer was full.",
        &[("", n.events_lost)],
    );
    counter(
        &mut out,
        "eniguard_guard_events_rate_limited_total",
        "Violation events held back by the per-pod rate limit (packets still counted).",
        &[("", n.events_rate_limited)],
    );
    let mut pod_violations = Vec::new();
    let mut pod_drops = Vec::new();
    for (pod_id, c) in &stats.pods {
        let (ns, pod) =
            names.pods.name(*pod_id).cloned().unwrap_or_else(|| (String::new(), format!("pod-id-{pod_id}")));
        for (r, reason) in REASON_NAMES.iter().enumerate() {
            let labels =
                format!("namespace=\"{}\",pod=\"{}\",reason=\"{reason}\"", escape(&ns), escape(&pod));
            if c.violations[r] > 0 {
                pod_violations.push((labels.clone(), c.violations[r]));
            }
            if c.dropped[r] > 0 {
                pod_drops.push((labels, c.dropped[r]));
            }
        }
    }
    counter_labeled(
        &mut out,
        "eniguard_guard_pod_violation_packets_total",
        "Violating packets per pod and reason.",
        &pod_violations,
    );
    counter_labeled(
        &mut out,
        "eniguard_guard_pod_dropped_packets_total",
        "Dropped packets per pod and reason.",
        &pod_drops,
    );
    out
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    header(out, name, help);
    for (_, v) in values {
        let _ = writeln!(out, "{name} {v}");
    }
}

fn counter_labeled(out: &mut String, name: &str, help: &str, values: &[(String, u64)]) {
    header(out, name, help);
    for (labels, v) in values {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use eniguard_common::guard::{GuardCounters, PodCounters, REASON_SG_MISMATCH};

    #[test]
    fn renders_node_and_pod_series() {
        let mut names = Names::default();
        let id = names.pods.id(&("default".into(), "web-1".into()));
        let mut node = GuardCounters { checked: 7, ..Default::default() };
        node.violations[REASON_SG_MISMATCH as usize] = 3;
        let mut pod = PodCounters::default();
        pod.violations[REASON_SG_MISMATCH as usize] = 3;
        let text = render_guard(&Stats { node, pods: vec![(id, pod)] }, &names);
        assert!(text.contains("eniguard_guard_checked_packets_total 7\n"), "{text}");
        assert!(text.contains("eniguard_guard_violation_packets_total{reason=\"sg_mismatch\"} 3\n"));
        assert!(text.contains("eniguard_guard_violation_packets_total{reason=\"wrong_eni\"} 0\n"));
        assert!(text.contains(
            "eniguard_guard_pod_violation_packets_total{namespace=\"default\",pod=\"web-1\",reason=\"sg_mismatch\"} 3\n"
        ));
        assert!(!text.contains("reason=\"wrong_eni\"} 0\neniguard_guard_pod"), "zero pod series rendered");
        assert!(text.contains("# TYPE eniguard_guard_events_lost_total counter"));
    }
}
