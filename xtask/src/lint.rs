//! `cargo xtask lint`: rustfmt, clippy -D warnings for userspace, and separately for the eBPF crate.

use std::process::Command;

use anyhow::Result;

use crate::{cmd::run, setup::NIGHTLY, test::EBPF_CRATE};

pub fn lint() -> Result<()> {
    run(Command::new(env!("CARGO")).args(["fmt", "--all", "--", "--check"]))?;
    // Userspace crates; the agent's manifest denies unwrap/expect outside tests (clippy.toml).
    run(Command::new(env!("CARGO"))
        .args(["clippy", "--workspace", "--exclude", EBPF_CRATE, "--all-targets"])
        .args(["--", "-D", "warnings"]))?;
    // The eBPF crate, for its real target. Target-only RUSTFLAGS leave host artifacts untouched.
    run(Command::new("rustup")
        .args(["run", NIGHTLY, "cargo", "clippy", "--package", EBPF_CRATE])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--release"])
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    println!("lint: clean");
    Ok(())
}
