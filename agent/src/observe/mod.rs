//! What operators see: Prometheus metrics and the HTTP endpoints. The agent's metrics
//! ([`agent`], prometheus-client) and endpoints ([`server`], hyper); the standalone guard's
//! hand-written exposition ([`metrics`], [`http`]) moves onto them with the live guard (issue 12).

#[cfg(feature = "control-plane")]
pub mod agent;
pub mod http;
pub mod metrics;
#[cfg(feature = "control-plane")]
pub mod server;
