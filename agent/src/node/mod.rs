//! The node: the startup sequence ([`startup`], the one place where order lives; IPv6 mode's in
//! [`ipv6`]; what both share in [`assemble`]), what it and the
//! loops share about ENIs ([`enis`]), the signals to the Resource Controller ([`signals`]: the
//! decision and carrying it out), the datastore's owner ([`owner`]), the shared state ([`state`]),
//! the loops ([`pool`], [`reconcile`], [`audit`], [`pods`], [`gc`], [`guard_feed`]) started by
//! [`run`], the CNI plugin's socket ([`cni_api`]), audit mode beside aws-node ([`audit_mode`]),
//! the ENI-creation journal ([`journal`]) and the one error type ([`error`]).

#[cfg(feature = "control-plane")]
pub mod assemble;
#[cfg(feature = "control-plane")]
pub mod audit;
#[cfg(feature = "control-plane")]
pub mod audit_mode;
#[cfg(feature = "control-plane")]
pub mod cni_api;
#[cfg(feature = "control-plane")]
pub mod enis;
#[cfg(feature = "control-plane")]
pub mod error;
#[cfg(all(test, feature = "control-plane"))]
pub mod fakes;
#[cfg(feature = "control-plane")]
pub mod gc;
#[cfg(feature = "control-plane")]
pub mod guard_feed;
#[cfg(feature = "control-plane")]
pub mod ipv6;
#[cfg(feature = "control-plane")]
pub mod journal;
#[cfg(feature = "control-plane")]
pub mod owner;
#[cfg(feature = "control-plane")]
pub mod pods;
#[cfg(feature = "control-plane")]
pub mod pool;
#[cfg(feature = "control-plane")]
pub mod reconcile;
pub mod signals;
#[cfg(feature = "control-plane")]
pub mod startup;
#[cfg(feature = "control-plane")]
pub mod state;
#[cfg(feature = "control-plane")]
pub mod subnets;

#[cfg(feature = "control-plane")]
mod loops;
#[cfg(feature = "control-plane")]
pub use loops::run;
