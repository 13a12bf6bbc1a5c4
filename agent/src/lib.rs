//! eniguard: a node agent for Kubernetes on AWS that allocates pod addresses from ENIs (the ipamd
//! job, in the corrected order) and proves per packet, with eBPF, that each pod leaves through the
//! ENI and security groups its configuration says.
//!
//! One module per concern (the README's Development section has the crate map). Present so far:
//! - [`cni`]: the local API the CNI plugin calls (shared types; the agent's socket server).
//! - [`config`]: the environment variables (upstream's names and defaults), parsed and validated.
//! - [`guard`]: the eBPF egress guard (intent spec, maps, attachment, events, counters).
//! - [`ipam`]: the datastore (ENIs, addresses, allocations, exclusion rule) and its checkpoint.
//! - [`kube`]: ENIConfig name resolution and CNINode features (the client comes with issue 10).
//! - [`node`]: the order of the signals to the Resource Controller (the #2792 fix), as a pure step.
//! - [`net`]: netlink (link notifications so far).
//! - [`observe`]: Prometheus metrics and the introspection HTTP endpoint.

#[cfg(feature = "control-plane")]
pub mod cloud;
pub mod cni;
pub mod config;
pub mod guard;
pub mod ipam;
pub mod kube;
pub mod net;
pub mod node;
pub mod observe;
pub mod sync;
