//! Linux networking through netlink: ENI links, route tables and rules ([`eni`], rtnetlink),
//! link add/remove notifications for the guard ([`links`]), and host interface names as upstream
//! derives them ([`names`]).

#[cfg(feature = "control-plane")]
pub mod eni;
pub mod links;
pub mod names;
#[cfg(feature = "control-plane")]
pub mod pod;
