//! The CNI side of the agent: the local API the plugin calls ([`api`]: the request and reply
//! types plugin and agent share; [`server`]: the agent's unix-socket endpoint), and the CNI
//! calling convention itself ([`spec`]: environment, stdin, results and errors).

pub mod api;
#[cfg(feature = "control-plane")]
pub mod client;
#[cfg(feature = "control-plane")]
pub mod server;
pub mod spec;
