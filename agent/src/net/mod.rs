//! Linux networking through netlink. Present so far: link add/remove notifications.

pub mod links;
