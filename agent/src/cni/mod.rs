//! The CNI side of the agent: the local API the plugin calls ([`api`]: the request and reply
//! types plugin and agent share; [`server`]: the agent's unix-socket endpoint; [`client`]: the
//! plugin's end), the CNI calling convention itself ([`spec`]: environment, stdin and errors;
//! [`result`]: results and prevResults), what the plugin does per command ([`plugin`]), the DELs
//! the agent could not hear ([`queue`]), and its installation once the agent is ready
//! ([`install`]).

pub mod api;
#[cfg(feature = "control-plane")]
pub mod client;
#[cfg(feature = "control-plane")]
pub mod install;
#[cfg(feature = "control-plane")]
pub mod plugin;
#[cfg(feature = "control-plane")]
pub mod queue;
#[cfg(feature = "control-plane")]
pub mod result;
#[cfg(feature = "control-plane")]
pub mod server;
pub mod spec;
