//! The simulated VPC and EKS node the end-to-end tests and the demo run against (issue 3).
//!
//! Present so far:
//! - [`ec2`]: the EC2 state and rules (instance limits, error codes, subnets running out, /28
//!   prefixes, attachments and device indexes, DeleteOnTermination);
//! - [`ec2_api`]: the Query API over HTTP for CreateNetworkInterface, AttachNetworkInterface,
//!   DetachNetworkInterface, DeleteNetworkInterface, AssignPrivateIpAddresses,
//!   UnassignPrivateIpAddresses and DescribeNetworkInterfaces (filters, pagination), with
//!   throttling/5xx/latency faults and a per-action call counter (tests/tests/sim_ec2.rs drives it
//!   with aws-sdk-ec2).
//!
//! Still to come (issue 3): DescribeInstances/InstanceTypes/Subnets/SecurityGroups,
//! ModifyNetworkInterfaceAttribute, Create/DeleteTags, TerminateInstances on the wire; IMDS with
//! IMDSv2 tokens; the fabric (an attach hot-plugs a veth into the node namespace, a VPC namespace
//! records what leaves); the Kubernetes API subset for kube-rs; the VPC Resource Controller; and
//! the `vpcsim` binary.

pub mod ec2;
pub mod ec2_api;
