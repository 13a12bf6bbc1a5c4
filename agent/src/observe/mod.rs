//! What operators see: Prometheus metrics and the introspection HTTP endpoint.

pub mod http;
pub mod metrics;
