//! Linux networking through netlink: ENI links, route tables and rules ([`eni`], rtnetlink), and
//! link add/remove notifications for the guard ([`links`]).

pub mod eni;
pub mod links;
