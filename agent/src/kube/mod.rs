//! Kubernetes: what the agent reads from and writes to the API server. So far the pure parts —
//! ENIConfig name resolution and CNINode features — that the client (kube-rs, issue 10) will use.

pub mod cninode;
pub mod eniconfig;
