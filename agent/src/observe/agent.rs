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
    /// Addresses on excluded ENIs (trunk, EFA, ...): held, reported, never handed out.
    pub excluded_addresses: Family<FindingLabels, Gauge>,
    pub sgp_refused: Family<TypeLabel, Gauge>,
    pub subnet_exhausted: Counter,
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
