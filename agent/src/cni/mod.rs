//! The CNI side: the local API the plugin calls ([`api`]: the request and reply types plugin
//! and agent share; [`client`]: the plugin's end; the agent's end is `node::cni_api`), the CNI calling convention itself ([`spec`]: environment, stdin and errors;
//! [`result`]: results and prevResults), what the plugin does per command ([`plugin`]), the DELs
//! the agent could not hear ([`queue`]), and its installation once the agent is ready
//! ([`install`]).

pub mod api;
#[cfg(feature = "control-plane")]
pub mod client;
#[cfg(feature = "control-plane")]
pub mod egress;
#[cfg(feature = "control-plane")]
pub mod install;
#[cfg(feature = "control-plane")]
pub mod plugin;
#[cfg(feature = "control-plane")]
pub mod queue;
#[cfg(feature = "control-plane")]
pub mod result;
pub mod spec;
