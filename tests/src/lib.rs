//! Support for eniguard's integration tests: network namespaces, veths, the agent binary, and
//! (later) the simulated VPC they run against.

pub mod agent;
pub mod bench;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod frames;
pub mod grpc;
pub mod http;
pub mod netns;
pub mod npa;
pub mod process;
pub mod sim;
pub mod topology;

use std::path::PathBuf;

/// The `eniguard` binary under test: `$ENIGUARD_BIN`, else next to the test executable's
/// `deps/` directory (cargo's layout: target/<profile>/deps/test-HASH → target/<profile>/eniguard).
pub fn eniguard_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENIGUARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).map(PathBuf::from).unwrap_or_default();
    profile_dir.join("eniguard")
}
