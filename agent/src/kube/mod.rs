//! Kubernetes: what the agent reads from and writes to the API server — the client ([`client`],
//! kube-rs), ENIConfig name resolution, CNINode features and branch-ENI pod annotations.

#[cfg(feature = "control-plane")]
pub mod client;
pub mod cninode;
pub mod eniconfig;
#[cfg(feature = "control-plane")]
pub mod pod_eni;
pub mod sgp;
