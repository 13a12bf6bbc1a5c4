//! Every call to EC2 and IMDS, counted by service, action and result (`ok` or the error code), as
//! the Prometheus counter `eniguard_aws_api_calls_total` and as a snapshot for tests and logs.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CallLabels {
    pub service: String,
    pub action: String,
    pub result: String,
}

/// Shared by both clients; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Calls {
    pub family: Family<CallLabels, Counter>,
    counts: Arc<Mutex<BTreeMap<CallLabels, u64>>>,
}

impl Calls {
    pub fn record(&self, service: &str, action: &str, result: &str) {
        let labels =
            CallLabels { service: service.to_owned(), action: action.to_owned(), result: result.to_owned() };
        self.family.get_or_create(&labels).inc();
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner).entry(labels).or_default() += 1;
    }

    /// Calls so far of one service, by action (all results).
    pub fn by_action(&self, service: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (l, n) in self.counts.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            if l.service == service {
                *out.entry(l.action.clone()).or_default() += n;
            }
        }
        out
    }
}
