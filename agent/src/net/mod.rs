//! Linux networking through netlink: ENI links, route tables and rules ([`eni`], rtnetlink), and
//! link add/remove notifications for the guard ([`links`]).

#[cfg(feature = "control-plane")]
pub mod eni;
pub mod links;
