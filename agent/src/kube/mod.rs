//! Kubernetes: what the agent reads from and writes to the API server — the client ([`client`],
//! kube-rs), ENIConfig name resolution and CNINode features.

#[cfg(feature = "control-plane")]
pub mod client;
pub mod cninode;
pub mod eniconfig;
