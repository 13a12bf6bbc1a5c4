//! The CNI side of the agent: the local API the plugin calls ([`api`]: the request and reply
//! types plugin and agent share; [`server`]: the agent's unix-socket endpoint).

pub mod api;
#[cfg(feature = "control-plane")]
pub mod server;
