//! The agent's Prometheus metrics (prometheus-client; OpenMetrics text on `/metrics`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use prometheus_client::collector::Collector;

use super::awscni::{BuildLabels, Upstream, COUNTERS, SUMMARIES};
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
    /// What only upstream's `awscni_*` names need.
    pub upstream: Upstream,
}

impl Metrics {
    /// The registry with every metric, the API call counter included: eniguard's own (`eniguard_`,
    /// with `collector`, the guard's counters) and upstream's (`awscni_`).
    pub fn registry(&self, calls: &Calls, collector: Option<Box<dyn Collector>>) -> Registry {
        let mut root = Registry::default();
        self.register_upstream(&mut root, calls);
        let r = root.sub_registry_with_prefix("eniguard");
        if let Some(c) = collector {
            r.register_collector(c);
        }
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
        root
    }

    /// Upstream's families (see [`super::awscni`]), with upstream's help texts.
    fn register_upstream(&self, r: &mut Registry, calls: &Calls) {
        let u = &self.upstream;
        let c = &calls.upstream;
        u.build_info
            .get_or_create(&BuildLabels {
                version: format!("eniguard-{}", env!("CARGO_PKG_VERSION")),
                goversion: env!("ENIGUARD_RUSTC_VERSION").into(),
            })
            .set(1);
        r.register(
            "awscni_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which amazon-vpc-cni-k8s was built.",
            u.build_info.clone(),
        );
        r.register(
            "awscni_ipamd_error_count",
            "The number of errors encountered in ipamd",
            u.ipamd_errors.clone(),
        );
        r.register(
            "awscni_ipamd_action_inprogress",
            "The number of ipamd actions in progress",
            u.in_progress.clone(),
        );
        r.register(
            "awscni_eni_max",
            "The maximum number of ENIs that can be attached to the instance, accounting for unmanaged ENIs",
            self.eni_max.clone(),
        );
        r.register(
            "awscni_ip_max",
            "The maximum number of IP addresses that can be allocated to the instance",
            self.ip_max.clone(),
        );
        r.register(
            "awscni_reconcile_count",
            "The number of times ipamd reconciles on ENIs and IP/Prefix addresses",
            u.reconciles.clone(),
        );
        r.register(
            "awscni_add_ip_req_count",
            "The number of add IP address requests",
            u.add_requests.clone(),
        );
        r.register(
            "awscni_del_ip_req_count",
            "The number of delete IP address requests",
            u.del_requests.clone(),
        );
        r.register("awscni_aws_api_latency_ms", "AWS API call latency in ms", c.latency_ms.clone());
        r.register(
            "awscni_aws_api_error_count",
            "The number of times AWS API returns an error",
            c.api_errors.clone(),
        );
        r.register(
            "awscni_ec2api_req_count",
            "The number of requests made to EC2 APIs by CNI",
            c.ec2_requests.clone(),
        );
        r.register(
            "awscni_ec2api_error_count",
            "The number of failed EC2 APIs requests",
            c.ec2_errors.clone(),
        );
        r.register("awscni_eni_allocated", "The number of ENIs allocated", self.enis.clone());
        r.register("awscni_total_ip_addresses", "The total number of IP addresses", u.total_ips.clone());
        r.register(
            "awscni_assigned_ip_addresses",
            "The number of IP addresses assigned to pods",
            u.assigned_ips.clone(),
        );
        r.register(
            "awscni_force_removed_enis",
            "The number of ENIs force removed while they had assigned pods",
            u.force_removed_enis.clone(),
        );
        r.register(
            "awscni_force_removed_ips",
            "The number of IPs force removed while they had assigned pods",
            u.force_removed_ips.clone(),
        );
        r.register("awscni_total_ipv4_prefixes", "The total number of IPv4 prefixes", u.prefixes.clone());
        r.register(
            "awscni_assigned_ip_per_cidr",
            "The total number of IP addresses assigned per cidr",
            u.assigned_per_cidr.clone(),
        );
        r.register(
            "awscni_no_available_ip_addresses",
            "The number of pod IP assignments that fail due to no available IP addresses",
            u.no_address.clone(),
        );
        r.register(
            "awscni_assigned_ip_per_eni",
            "The number of allocated ips partitioned by eni",
            u.assigned_per_eni.clone(),
        );
        r.register(
            "awscni_ipamd_startup_duration_seconds",
            "The duration of IPAMD startup from process start to ready to serve CNI requests",
            u.startup_seconds.clone(),
        );
        r.register(
            "awscni_ipamd_node_initialization_duration_seconds",
            "The duration of node initialization during IPAMD startup",
            u.node_init_seconds.clone(),
        );
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
/// no UNIT lines, no `info` type (its `x_info` samples become a gauge), no `unknown` type
/// (upstream's counters, see [`crate::prom::Count`], become `counter`, anything else `untyped`)
/// and no `# EOF`; upstream's summaries without quantiles lose their one `+Inf` bucket.
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
    let summary_bucket =
        |line: &str| SUMMARIES.iter().any(|s| line.strip_prefix(s).is_some_and(|r| r.starts_with("_bucket")));
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") || summary_bucket(line) {
            continue;
        }
        for (prefix, is_type) in [("# HELP ", false), ("# TYPE ", true)] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = match (is_type, tail) {
                    (true, "info") => "gauge",
                    (true, "unknown") if COUNTERS.contains(&name) => "counter",
                    (true, "unknown") => "untyped",
                    (true, "histogram") if SUMMARIES.contains(&name) => "summary",
                    _ => tail,
                };
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
