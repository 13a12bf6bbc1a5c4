//! Every call to EC2 and IMDS, counted by service, action and result (`ok` or the error code), as
//! the Prometheus counter `eniguard_aws_api_calls_total`.

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
}

impl Calls {
    pub fn record(&self, service: &str, action: &str, result: &str) {
        let labels =
            CallLabels { service: service.to_owned(), action: action.to_owned(), result: result.to_owned() };
        self.family.get_or_create(&labels).inc();
    }
}
