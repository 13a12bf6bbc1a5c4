//! What operators see: Prometheus metrics and the HTTP endpoints. The agent's metrics
//! ([`agent`], prometheus-client), the endpoints of agent and guard ([`server`], hyper); the
//! standalone guard's hand-written exposition ([`metrics`]) moves onto prometheus-client with the
//! live guard (issue 12).

#[cfg(feature = "control-plane")]
pub mod agent;
pub mod metrics;
#[cfg(feature = "control-plane")]
pub mod server;
