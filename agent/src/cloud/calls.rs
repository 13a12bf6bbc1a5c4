//! Every call to EC2 and IMDS, counted by service, action and result (`ok` or the error code), as
//! the Prometheus counter `eniguard_aws_api_calls_total`, and at the same point as upstream's
//! `awscni_*` views of the same calls ([`UpstreamCalls`]).

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};

use crate::prom::Count;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CallLabels {
    pub service: String,
    pub action: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnLabel {
    pub r#fn: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabels {
    pub api: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub api: String,
    /// `true` or `false`.
    pub error: String,
    /// `200`, the error code, or empty (upstream's awsReqStatus).
    pub status: String,
}

/// A latency with no buckets: only `_sum` and `_count`, as upstream's summary without objectives.
fn sum_and_count() -> Histogram {
    Histogram::new(std::iter::empty())
}

/// Upstream's views of the calls: `awscni_ec2api_req_count{fn}`, `awscni_ec2api_error_count{fn}`,
/// `awscni_aws_api_error_count{api,error}` and `awscni_aws_api_latency_ms{api,error,status}`.
#[derive(Clone, Debug)]
pub struct UpstreamCalls {
    pub ec2_requests: Family<FnLabel, Count>,
    pub ec2_errors: Family<FnLabel, Count>,
    pub api_errors: Family<ApiErrorLabels, Count>,
    pub latency_ms: Family<LatencyLabels, Histogram, fn() -> Histogram>,
}

impl Default for UpstreamCalls {
    fn default() -> Self {
        Self {
            ec2_requests: Family::default(),
            ec2_errors: Family::default(),
            api_errors: Family::default(),
            latency_ms: Family::new_with_constructor(sum_and_count),
        }
    }
}

/// Shared by both clients; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Calls {
    pub family: Family<CallLabels, Counter>,
    pub upstream: UpstreamCalls,
}

impl Calls {
    /// One call of `action` that ended with `result` (`ok`, an error code, `404` or `error`)
    /// after `took`.
    pub fn record(&self, service: &str, action: &str, result: &str, took: Duration) {
        let labels =
            CallLabels { service: service.to_owned(), action: action.to_owned(), result: result.to_owned() };
        self.family.get_or_create(&labels).inc();
        let ok = result == "ok";
        // Upstream names every IMDS read GetMetadata.
        let api = if service == "imds" { "GetMetadata" } else { action };
        let u = &self.upstream;
        if service == "ec2" {
            let fn_label = FnLabel { r#fn: action.to_owned() };
            u.ec2_requests.get_or_create(&fn_label).inc();
            if !ok {
                u.ec2_errors.get_or_create(&fn_label).inc();
            }
        }
        if !ok && result != "error" {
            u.api_errors
                .get_or_create(&ApiErrorLabels { api: api.to_owned(), error: result.to_owned() })
                .inc();
        }
        let status = match result {
            "ok" => "200",
            "error" => "",
            code => code,
        };
        let latency =
            LatencyLabels { api: api.to_owned(), error: (!ok).to_string(), status: status.to_owned() };
        u.latency_ms.get_or_create(&latency).observe(took.as_secs_f64() * 1000.0);
    }
}
