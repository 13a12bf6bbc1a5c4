//! eniguard: a node agent for Kubernetes on AWS that allocates pod addresses from ENIs (the ipamd
//! job, in the corrected order) and proves per packet, with eBPF, that each pod leaves through the
//! ENI and security groups its configuration says.
//!
//! One module per concern, each using only those listed below it (the README's Architecture
//! section has the map and the path of a CNI ADD):
//! - [`node`]: the node: the startup order, ENIs, the signals to the Resource Controller (the
//!   #2792 fix), the loops, the CNI plugin's socket, audit mode.
//! - [`cni`]: the CNI plugin: the local API's wire types and client, the CNI calling convention,
//!   pod plumbing per command, the DEL queue, installation.
//! - [`kube`]: Kubernetes (kube-rs): Node, ENIConfig, CNINode features, pods, SecurityGroupPolicies.
//! - [`observe`]: Prometheus metrics, the HTTP endpoints and their answers as types.
//! - [`guard`]: the eBPF egress guard (intent derivation, maps, attachment, events, counters).
//! - [`net`]: Linux networking: netlink helpers, ENI links, pod plumbing, SNAT, names.
//! - [`netpol`]: the contract with EKS's network-policy agent (gRPC on aws-node's sockets).
//! - [`cloud`]: IMDS and EC2 (the AWS SDK), instance limits.
//! - [`config`]: the environment variables (upstream's names and defaults), parsed and validated.
//! - [`ipam`]: the datastore (ENIs, addresses, allocations, exclusion rule), the pool policy and
//!   the checkpoint.
//! - [`sync`]: one lock helper and one backoff; [`prom`]: a counter named as upstream's.
//!
//! The node layer reaches the outside through three seams, [`cloud::Cloud`], [`kube::Cluster`]
//! and [`net::host::Host`]: the agent passes the real clients, the node's unit tests in-memory
//! ones.

#[cfg(feature = "control-plane")]
pub mod cloud;
pub mod cni;
pub mod config;
pub mod guard;
pub mod ipam;
pub mod kube;
pub mod net;
pub mod netpol;
pub mod node;
pub mod observe;
#[cfg(feature = "control-plane")]
pub mod prom;
pub mod sync;
