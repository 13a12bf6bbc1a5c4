//! eniguard: a node agent for Kubernetes on AWS that allocates pod addresses from ENIs (the ipamd
//! job, in the corrected order) and proves per packet, with eBPF, that each pod leaves through the
//! ENI and security groups its configuration says.
//!
//! One module per concern; see ../shared/DESIGN.md for the map. Present so far:
//! - [`guard`]: loading the eBPF object, attaching TC programs, pinned maps.

pub mod guard;
