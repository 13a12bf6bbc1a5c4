//! What operators see: Prometheus metrics and the HTTP endpoints. The agent's metrics
//! ([`agent`]) and upstream's names for them ([`awscni`]), the guard's counters read at scrape time ([`guard`]), both on prometheus-client;
//! the endpoints of agent and guard ([`server`], hyper) and their answers as types ([`views`]),
//! which the CLI reads back.

#[cfg(feature = "control-plane")]
pub mod agent;
#[cfg(feature = "control-plane")]
pub mod awscni;
#[cfg(feature = "control-plane")]
pub mod guard;
#[cfg(feature = "control-plane")]
pub mod server;
pub mod upstream_views;
pub mod views;
