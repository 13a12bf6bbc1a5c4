//! The simulated VPC and EKS node the end-to-end tests and the demo run against (issue 3).
//!
//! Present so far: [`ec2`], the EC2 state and rules (limits, error codes, subnets running out).
//! Still to come, on top of it: the EC2 Query API over HTTP (XML, SigV4 accepted, faults and call
//! counters), IMDS with IMDSv2 tokens, the fabric (an ENI attach hot-plugs a veth into the node
//! namespace), the Kubernetes API subset for kube-rs, the VPC Resource Controller, and `vpcsim`.

pub mod ec2;
