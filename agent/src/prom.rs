//! What eniguard adds to prometheus-client for upstream's metric names: [`Count`], a counter as
//! client_golang's classic text format writes it.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder},
    metrics::{MetricType, TypedMetric},
};

/// A counter that keeps upstream's name as it is (`awscni_add_ip_req_count`, no `_total`).
/// prometheus-client writes a counter's samples as `<name>_total`, as OpenMetrics requires; this
/// one is typed `unknown` in OpenMetrics (one sample under the family's own name, which
/// Prometheus stores under that name, as it stores upstream's) and `counter` in the classic text
/// format ([`crate::observe::agent::render_classic`]), as upstream's client_golang serves it.
#[derive(Clone, Debug, Default)]
pub struct Count(Arc<AtomicU64>);

impl Count {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Count {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for Count {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
