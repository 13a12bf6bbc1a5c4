//! Upstream's metrics (`awscni_*`, amazon-vpc-cni-k8s's utils/prometheusmetrics) with its names,
//! types and labels, served beside eniguard's own on the same port, so that the
//! cni-metrics-helper, upstream's dashboards and the alert rules written for aws-node keep
//! working after the swap. Each value comes from where eniguard's own metric of the same thing
//! comes from: the pool gauges are set in `node::pool::update_gauges` from the same datastore
//! snapshot (`eni_max`, `ip_max` and `eni_allocated` are eniguard's gauges registered a second
//! time), the API calls in `cloud::calls` at the call itself.
//!
//! Counters keep upstream's names ([`crate::prom::Count`]); `awscni_aws_api_latency_ms` is a
//! summary without quantiles upstream (only `_sum` and `_count`): here a histogram without
//! buckets, which the classic text format writes as that summary ([`SUMMARIES`]).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
};

use crate::{cloud::calls::FnLabel, prom::Count};

/// The families typed `counter` in the classic text format (in OpenMetrics they are `unknown`).
pub const COUNTERS: &[&str] = &[
    "awscni_ipamd_error_count",
    "awscni_reconcile_count",
    "awscni_add_ip_req_count",
    "awscni_del_ip_req_count",
    "awscni_aws_api_error_count",
    "awscni_ec2api_req_count",
    "awscni_ec2api_error_count",
    "awscni_force_removed_enis",
    "awscni_force_removed_ips",
    "awscni_no_available_ip_addresses",
];

/// The families written as summaries (`_sum` and `_count`) in the classic text format.
pub const SUMMARIES: &[&str] = &["awscni_aws_api_latency_ms"];

/// client_golang's default buckets (upstream's startup histograms use them).
const GO_DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn go_default_histogram() -> Histogram {
    Histogram::new(GO_DEFAULT_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CidrLabel {
    pub cidr: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EniLabel {
    pub eni: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartupLabels {
    pub success: String,
    pub with_api_server: String,
    pub failure_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SuccessLabel {
    pub success: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub goversion: String,
}

/// Upstream's `reason` on every DEL its plugin sends.
pub const DEL_REASON: &str = "PodDeleted";

/// The `awscni_*` values eniguard keeps only for upstream's names (the rest are eniguard's
/// metrics registered again, see the module doc).
#[derive(Clone, Debug)]
pub struct Upstream {
    pub total_ips: Gauge,
    pub assigned_ips: Gauge,
    /// /28 prefixes in the pool (0 without prefix delegation).
    pub prefixes: Gauge,
    pub assigned_per_cidr: Family<CidrLabel, Gauge>,
    pub assigned_per_eni: Family<EniLabel, Gauge>,
    pub add_requests: Count,
    pub del_requests: Family<ReasonLabel, Count>,
    /// ADDs refused because the pool had no free address.
    pub no_address: Count,
    pub ipamd_errors: Family<FnLabel, Count>,
    pub reconciles: Family<FnLabel, Count>,
    pub in_progress: Family<FnLabel, Gauge>,
    /// Always 0: eniguard never removes an ENI or address that a pod holds (reconcile keeps it
    /// and says so).
    pub force_removed_enis: Count,
    pub force_removed_ips: Count,
    pub startup_seconds: Family<StartupLabels, Histogram, fn() -> Histogram>,
    pub node_init_seconds: Family<SuccessLabel, Histogram, fn() -> Histogram>,
    pub build_info: Family<BuildLabels, Gauge>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            total_ips: Gauge::default(),
            assigned_ips: Gauge::default(),
            prefixes: Gauge::default(),
            assigned_per_cidr: Family::default(),
            assigned_per_eni: Family::default(),
            add_requests: Count::default(),
            del_requests: Family::default(),
            no_address: Count::default(),
            ipamd_errors: Family::default(),
            reconciles: Family::default(),
            in_progress: Family::default(),
            force_removed_enis: Count::default(),
            force_removed_ips: Count::default(),
            startup_seconds: Family::new_with_constructor(go_default_histogram),
            node_init_seconds: Family::new_with_constructor(go_default_histogram),
            build_info: Family::default(),
        }
    }
}

impl Upstream {
    /// Marks `action` (upstream's name: `nodeInit`, `increaseDatastorePool`, ...) in progress
    /// until the returned guard drops.
    pub fn in_progress(&self, action: &str) -> InProgress {
        let gauge = self.in_progress.get_or_create_owned(&FnLabel { r#fn: action.to_owned() });
        gauge.inc();
        InProgress(gauge)
    }

    /// A successful start: from the process start (`process`) and of the node's initialisation.
    pub fn started(&self, process: std::time::Duration, node_init: std::time::Duration) {
        let labels = StartupLabels {
            success: "true".into(),
            with_api_server: "true".into(),
            failure_reason: String::new(),
        };
        self.startup_seconds.get_or_create(&labels).observe(process.as_secs_f64());
        self.node_init_seconds
            .get_or_create(&SuccessLabel { success: "true".into() })
            .observe(node_init.as_secs_f64());
    }
}

/// See [`Upstream::in_progress`].
pub struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}
