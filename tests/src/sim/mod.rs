//! The simulated VPC and EKS node the end-to-end tests and the demo run against (issue 3).
//!
//! Present so far:
//! - [`ec2`]: the EC2 state and rules (instance limits, error codes, subnets running out, /28
//!   prefixes, attachments and device indexes, DeleteOnTermination);
//! - [`ec2_api`]: the Query API over HTTP: Create/Attach/Detach/DeleteNetworkInterface,
//!   Assign/UnassignPrivateIpAddresses, ModifyNetworkInterfaceAttribute, Create/DeleteTags,
//!   TerminateInstances, Describe{NetworkInterfaces,Instances,InstanceTypes,Subnets,SecurityGroups}
//!   (filters, pagination), throttling/5xx/latency faults and a per-action call counter
//!   (tests/tests/sim_ec2.rs drives it with aws-sdk-ec2);
//! - [`imds`]: IMDSv2 (token required) for the node, read live from the EC2 state;
//! - [`http`]: the HTTP plumbing both share;
//! - [`kube_store`]: the object store of the Kubernetes API subset (resourceVersion, watch event
//!   log with 410 Gone, label and field selectors, merge and JSON patches, 404/409/422) — the HTTP
//!   layer kube-rs talks to is still to come.
//!
//! Still to come (issue 3): the IMDS propagation delay after attach, and aws-config's IMDS client
//! in the tests; the fabric (an attach hot-plugs a veth into the node namespace, a VPC namespace
//! records what leaves); the Kubernetes API's HTTP layer for kube-rs; the VPC Resource Controller; the
//! `vpcsim` binary and its scenarios.

pub mod ec2;
pub mod ec2_api;
pub mod fabric;
pub mod http;
pub mod imds;
pub mod kube_api;
pub mod kube_store;
pub mod rc;
pub mod scenario;
