//! eniguard: a node agent for Kubernetes on AWS that allocates pod addresses from ENIs (the ipamd
//! job, in the corrected order) and proves per packet, with eBPF, that each pod leaves through the
//! ENI and security groups its configuration says.
//!
//! One module per concern; see ../shared/DESIGN.md for the map. Present so far:
//! - [`guard`]: the eBPF egress guard (intent spec, maps, attachment, events, counters).
//! - [`observe`]: Prometheus metrics and the introspection HTTP endpoint.

pub mod guard;
pub mod observe;
