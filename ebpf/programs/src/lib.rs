//! Empty library target: it lets the agent list this crate as a build-dependency so that cargo
//! re-runs the agent's build script (which builds the eBPF binary) when these sources change.
#![no_std]
