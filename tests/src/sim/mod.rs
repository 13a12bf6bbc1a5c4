//! The simulated VPC and EKS node the end-to-end tests and the demo run against (issue 3). Every
//! piece speaks the real wire protocol, so tests drive it with the real clients (aws-sdk-ec2,
//! aws-config's IMDS client, kube-rs):
//!
//! - [`ec2`]: the EC2 state and rules (instance limits, error codes, subnets running out, /28
//!   prefixes, attachments and device indexes, DeleteOnTermination, trunk associations);
//! - [`ec2_v6`]: IPv6 in the EC2 state (a subnet's /64, addresses and /80 prefixes on ENIs);
//! - [`ec2_api`]: the Query API over HTTP, with throttling/5xx/latency faults and per-action call
//!   and throttle counters under `/_sim/`;
//! - [`buckets`]: EC2's account-wide request-token buckets (scenario `ec2Buckets`);
//! - [`imds`]: IMDSv2 per node, read live from the EC2 state, with a propagation delay after attach;
//! - [`kube_store`] and [`kube_api`]: the Kubernetes API subset (Node, Pod, Event, ENIConfig,
//!   CNINode, SecurityGroupPolicy; get/list/watch/create/replace/patch/delete) and a kubeconfig;
//! - [`rc`]: the VPC Resource Controller (CNINode per node, the trunk ENI at the first
//!   SecurityGroupsForPods signal, branch ENIs and the `vpc.amazonaws.com/pod-eni` annotation);
//! - [`fabric`]: nodes as network namespaces whose NICs follow the attachments, and a VPC
//!   namespace that records frames and applies EC2's source/destination check (root);
//! - [`follower`]: the thread that applies the model's changes to the fabric, off the lock;
//! - [`scenario`]: declarative scenarios (tests/scenarios/*.yaml) and the running [`scenario::Sim`];
//! - [`http`]: the HTTP plumbing they share.
//!
//! The `vpcsim` binary (tests/src/bin/vpcsim.rs) runs a scenario for the demo and manual use.

pub mod buckets;
pub mod ec2;
pub mod ec2_api;
pub mod ec2_v6;
pub mod fabric;
pub mod follower;
pub mod http;
pub mod imds;
pub mod kube_api;
pub mod kube_store;
pub mod rc;
pub mod scenario;
