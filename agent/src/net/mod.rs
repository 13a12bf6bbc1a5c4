//! Linux networking: the netlink helpers the others share ([`netlink`]), ENI links, route tables
//! and rules ([`eni`], rtnetlink), a pod's veth, routes and rules ([`pod`], rtnetlink), SNAT of
//! traffic leaving the VPC ([`snat`], nftables), link add/remove notifications for the guard
//! ([`links`]), host interface names as upstream derives them ([`names`]), and the host-network
//! changes the node layer makes as one seam ([`host`]).

#[cfg(feature = "control-plane")]
pub mod eni;
#[cfg(feature = "control-plane")]
pub mod host;
pub mod links;
pub mod names;
#[cfg(feature = "control-plane")]
pub mod netlink;
#[cfg(feature = "control-plane")]
pub mod pod;
#[cfg(feature = "control-plane")]
pub mod snat;
