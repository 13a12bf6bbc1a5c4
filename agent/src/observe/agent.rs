//! The agent's Prometheus metrics (prometheus-client; OpenMetrics text on `/metrics`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::cloud::calls::Calls;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EniLabel {
    pub eni: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub eni: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EniStateLabels {
    pub eni: String,
    pub subnet: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub instance_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// Every agent metric; cheap to clone (each metric is shared).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub eni_max: Gauge,
    pub ip_max: Gauge,
    pub enis: Gauge,
    pub addresses: Family<StateLabel, Gauge>,
    /// Per pool ENI (and its subnet): addresses total, assigned, cooling; CIDRs (/32s or /28s).
    pub eni_addresses: Family<EniStateLabels, Gauge>,
    pub startup_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub reconciles: Family<ResultLabel, Counter>,
    /// Addresses on excluded ENIs (trunk, EFA, ...): held, reported, never handed out.
    pub excluded_addresses: Family<FindingLabels, Gauge>,
    pub sgp_refused: Family<TypeLabel, Gauge>,
    pub subnet_exhausted: Counter,
    /// Subnet discovery found no subnet it may create an ENI in.
    pub no_valid_subnet: Counter,
    pub sg_drift: Family<EniLabel, Gauge>,
    pub trunk_sg_drift: Gauge,
    pub ready: Gauge,
    pub pool_errors: Counter,
    pub pod_gc_released: Counter,
    pub build_info: Family<VersionLabel, Gauge>,
}

impl Metrics {
    /// The registry with every metric, the API call counter included.
    pub fn registry(&self, calls: &Calls) -> Registry {
        let mut r = Registry::with_prefix("eniguard");
        r.register("build_info", "eniguard's version", self.build_info.clone());
        self.build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register(
            "aws_api_calls",
            "Calls to EC2 and IMDS by service, action and result",
            calls.family.clone(),
        );
        r.register("ipam_eni_max", "ENIs the instance type allows (MAX_ENI applied)", self.eni_max.clone());
        r.register("ipam_ip_max", "Pod addresses the node can hold", self.ip_max.clone());
        r.register("ipam_enis", "ENIs in the pool (allocatable)", self.enis.clone());
        r.register(
            "ipam_addresses",
            "Pool addresses by state (total, assigned, cooling)",
            self.addresses.clone(),
        );
        r.register(
            "ipam_eni_addresses",
            "Per pool ENI and its subnet: addresses by state (total, assigned, cooling) and its CIDRs (state cidrs: /32s, or /28 prefixes with prefix delegation)",
            self.eni_addresses.clone(),
        );
        r.register_with_unit(
            "startup_duration",
            "From the process start to the end of the startup sequence",
            prometheus_client::registry::Unit::Seconds,
            self.startup_seconds.clone(),
        );
        r.register(
            "reconciles",
            "Reconcile passes (IMDS against the datastore) by result (ok, error)",
            self.reconciles.clone(),
        );
        r.register(
            "ipam_excluded_addresses",
            "Addresses found on ENIs that never serve pods (trunk, EFA, no_manage, primary under custom networking)",
            self.excluded_addresses.clone(),
        );
        r.register(
            "security_groups_for_pods_refused",
            "1 when security groups for pods was not enabled because the layout leaves no ENI for ordinary pods",
            self.sgp_refused.clone(),
        );
        r.register(
            "subnet_exhausted",
            "Times EC2 said the subnet has no free addresses (the pool then pauses for 120 s)",
            self.subnet_exhausted.clone(),
        );
        r.register(
            "subnet_discovery_no_valid_subnet",
            "Times subnet discovery found no subnet of the node's VPC and availability zone to create an ENI in",
            self.no_valid_subnet.clone(),
        );
        r.register(
            "eni_security_groups_drift",
            "1 when an ENI's security groups (from EC2) differ from what its configuration says",
            self.sg_drift.clone(),
        );
        r.register(
            "trunk_security_groups_drift",
            "1 when the trunk ENI's security groups or subnet differ from its ENIConfig (replace the node)",
            self.trunk_sg_drift.clone(),
        );
        r.register("ready", "1 once the node is ready for pods", self.ready.clone());
        r.register("pool_errors", "Failed pool actions (EC2 or netlink)", self.pool_errors.clone());
        r.register(
            "pod_gc_released",
            "Addresses released because their pod was gone from the node without a CNI DEL",
            self.pod_gc_released.clone(),
        );
        r
    }
}

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The classic Prometheus text format (0.0.4) of `registry`, for scrapers that do not ask for
/// OpenMetrics. prometheus-client writes OpenMetrics only; the two differ in what this rewrites:
/// a counter family `x` has samples `x_total`, which 0.0.4 names in HELP and TYPE too; 0.0.4 has
/// no UNIT lines, no `info` type (its `x_info` samples become a gauge) and no `# EOF`.
pub fn render_classic(registry: &Registry) -> String {
    openmetrics_to_classic(&render(registry))
}

fn openmetrics_to_classic(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut renames: Vec<(String, String)> = Vec::new();
    // First pass: each family's classic name, from its TYPE line.
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                let suffix = match kind {
                    "counter" if !name.ends_with("_total") => "_total",
                    "info" => "_info",
                    _ => continue,
                };
                renames.push((name.to_owned(), format!("{name}{suffix}")));
            }
        }
    }
    let renamed = |name: &str| renames.iter().find(|(from, _)| from == name).map(|(_, to)| to.as_str());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        for (prefix, is_type) in [("# HELP ", false), ("# TYPE ", true)] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if is_type && tail == "info" { "gauge" } else { tail };
                out.push_str(&format!("{prefix}{} {tail}\n", renamed(name).unwrap_or(name)));
            }
        }
        if !line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_and_info_with_their_suffix() {
        let om = "# HELP a_calls Calls.\n# TYPE a_calls counter\na_calls_total{x=\"1\"} 2\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# HELP a_build Build.\n# TYPE a_build info\na_build_info{v=\"1\"} 1\n# HELP a_t Time.\n# TYPE a_t gauge\n# UNIT a_t seconds\na_t 3\n# EOF\n";
        assert_eq!(
            openmetrics_to_classic(om),
            "# HELP a_calls_total Calls.\n# TYPE a_calls_total counter\na_calls_total{x=\"1\"} 2\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# HELP a_build_info Build.\n# TYPE a_build_info gauge\na_build_info{v=\"1\"} 1\n# HELP a_t Time.\n# TYPE a_t gauge\na_t 3\n"
        );
    }
}
