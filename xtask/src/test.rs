//! `cargo xtask test`: setup when needed, build everything (the eBPF object included), unit tests,
//! then the privileged integration tests, ending with one line `N passed, N failed, N skipped`.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{privileged, run},
    counts::{parse_summary, Counts},
    setup,
};

/// The eBPF crate targets bpfel-unknown-none; agent/build.rs builds it, host builds exclude it.
pub const EBPF_CRATE: &str = "eniguard-ebpf";
/// Where simulators record their callers (tests/src/sim/scenario.rs, `CALLS_DIR_VAR`).
const CALLS_DIR_VAR: &str = "ENIGUARD_CALLS_DIR";

pub fn test(filter: Option<&str>) -> Result<()> {
    if !setup::is_complete() {
        println!("xtask test: setup is incomplete, running it first");
        setup::setup()?;
    }
    // One build for binaries and tests: `cargo test` unifies the dev-dependencies' features, and a
    // separate `cargo build --bins` would compile aws-sdk-ec2 a second time with other features.
    // The integration tests need every binary of their package, so this builds them all.
    let tests = build(&["test", "--no-run"])?;
    let agent = artifact(&tests, "eniguard")?;
    // Every simulator records who called what here; the last privileged test checks deploy/'s
    // RBAC and IAM against the union, when every test ran.
    let calls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/eniguard-calls");
    let _ = std::fs::remove_dir_all(&calls);
    std::fs::create_dir_all(&calls).with_context(|| format!("creating {}", calls.display()))?;

    let mut total = Counts::default();
    for t in tests.iter().filter(|t| t.is_test && t.name != "privileged") {
        let mut cmd = Command::new(&t.path);
        cmd.env("ENIGUARD_BIN", &agent).env(CALLS_DIR_VAR, &calls).args(filter);
        total.add(run_counted(&mut cmd, &t.name)?);
    }
    let harness = artifact(&tests, "privileged")?;
    let mut cmd = privileged(&harness)?;
    // Agents that fail on purpose (bad input) should print their error, not a backtrace.
    cmd.env("ENIGUARD_BIN", &agent).env("RUST_BACKTRACE", "0").env(CALLS_DIR_VAR, &calls).args(filter);
    if filter.is_none() {
        cmd.env("ENIGUARD_CALLS_COMPLETE", "1");
    }
    total.add(run_counted(&mut cmd, "privileged")?);
    total.add(vm_matrix(&agent, &harness, filter)?);

    println!("{} passed, {} failed, {} skipped", total.passed, total.failed, total.skipped);
    if total.failed > 0 {
        bail!("{} tests failed", total.failed);
    }
    Ok(())
}

/// The datapath tests on the other kernels (5.10, 6.1, 6.12) under qemu, or one skip per
/// kernel with the reason when this machine cannot boot them.
fn vm_matrix(agent: &std::path::Path, harness: &std::path::Path, filter: Option<&str>) -> Result<Counts> {
    if std::env::var("ENIGUARD_SKIP_VM").is_ok_and(|v| !v.is_empty() && v != "0") {
        println!("vm: SKIPPED (ENIGUARD_SKIP_VM is set)");
        return Ok(Counts { skipped: 3, ..Counts::default() });
    }
    if let Err(reason) = crate::vm::available() {
        println!("vm: SKIPPED ({reason})");
        return Ok(Counts { skipped: 3, ..Counts::default() });
    }
    let filters: Vec<&str> = match filter {
        Some(f) => vec![f],
        None => crate::vm::VM_TESTS.to_vec(),
    };
    crate::vm::run_matrix(agent, harness, &filters)
}

pub struct Artifact {
    pub name: String,
    pub path: PathBuf,
    /// Built with the test harness (a unit or integration test executable).
    pub is_test: bool,
}

fn artifact(list: &[Artifact], name: &str) -> Result<PathBuf> {
    // A binary and its unit-test harness share the name: prefer the binary.
    list.iter()
        .filter(|a| a.name == name)
        .min_by_key(|a| a.is_test)
        .map(|a| a.path.clone())
        .with_context(|| format!("cargo built no executable named {name}"))
}

/// Runs `cargo <args> --workspace --exclude eniguard-ebpf` and returns the executables it built.
pub fn build(args: &[&str]) -> Result<Vec<Artifact>> {
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .args(["--workspace", "--exclude", EBPF_CRATE, "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let msg: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(path), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str()) {
            let is_test = msg["profile"]["test"].as_bool().unwrap_or(false);
            found.push(Artifact { name: name.to_owned(), path: PathBuf::from(path), is_test });
        }
    }
    if !child.wait()?.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(found)
}

/// Runs a test executable, echoing its output, and reads its counts from the summary lines:
/// libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; ...` or the privileged harness's
/// `privileged: 3 passed, 0 failed, 1 skipped`.
fn run_counted(cmd: &mut Command, name: &str) -> Result<Counts> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start {name}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut counts = Counts::default();
    let mut summaries = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(c) = parse_summary(&line) {
            counts.add(c);
            summaries += 1;
        }
    }
    let status = child.wait()?;
    if summaries == 0 {
        // It crashed or could not start its tests: count that as a failure, never as nothing.
        println!("{name}: no test summary ({status}); counted as 1 failed");
        counts.failed += 1;
    } else if !status.success() && counts.failed == 0 {
        counts.failed += 1;
    }
    Ok(counts)
}

/// `cargo xtask vm-test`: builds, then runs only the kernel matrix.
pub fn vm_test(filter: Option<&str>) -> Result<()> {
    if !setup::is_complete() {
        setup::setup()?;
    }
    let tests = build(&["test", "--no-run"])?;
    let (agent, harness) = (artifact(&tests, "eniguard")?, artifact(&tests, "privileged")?);
    let c = vm_matrix(&agent, &harness, filter)?;
    println!("{} passed, {} failed, {} skipped", c.passed, c.failed, c.skipped);
    if c.failed > 0 {
        bail!("{} tests failed", c.failed);
    }
    Ok(())
}

/// Builds the datapath benchmark, a release binary of the tests crate (a binary, not a bench
/// target, so that the crate's dev-dependencies — aws-sdk-ec2 among them — are not built in
/// release), and runs it as root.
pub fn run_bench() -> Result<()> {
    let bins = build(&["build", "--release", "--bin", "eniguard-bench"])?;
    run(&mut privileged(artifact(&bins, "eniguard-bench")?)?)
}

/// Builds (unprivileged) and runs one of the tests crate's binaries as root.
pub fn run_privileged_bin(bin: &str, args: &[&str]) -> Result<()> {
    let bins = build(&["test", "--no-run"])?;
    let agent = artifact(&bins, "eniguard")?;
    let mut cmd = privileged(artifact(&bins, bin)?)?;
    run(cmd.env("ENIGUARD_BIN", agent).args(args))
}

/// A CNI benchmark (`eniguard-cni-bench` or `eniguard-pod-bench`), against the debug agent and
/// plugin or (`release`) optimised ones built first (`cargo build --release -p eniguard --bins`:
/// aws-sdk-ec2 in release, several minutes).
pub fn run_cni_bench(bench: &str, release: bool, args: &[&str]) -> Result<()> {
    let bins = build(&["test", "--no-run"])?;
    let agent = if release {
        release_build(&["-p", "eniguard", "--bins"], "eniguard")?
    } else {
        artifact(&bins, "eniguard")?
    };
    let bench_bin = if release && bench == FLEET_BENCH {
        // The fleet's simulator (EC2, IMDS, Kubernetes, the fabric) runs in the bench's process
        // on the same two cores as a hundred agents: optimised too, or its debug build's CPU
        // delays every agent's first call.
        release_build(&["-p", "eniguard-tests", "--bin", bench], bench)?
    } else {
        artifact(&bins, bench)?
    };
    let mut cmd = privileged(bench_bin)?;
    run(cmd.env("ENIGUARD_BIN", agent).args(args))
}

/// `cargo build --release ARGS`, and the path of the executable `name` it built.
fn release_build(args: &[&str], name: &str) -> Result<PathBuf> {
    let status = Command::new(env!("CARGO")).args(["build", "--release"]).args(args).status()?;
    anyhow::ensure!(status.success(), "cargo build --release {}: {status}", args.join(" "));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    Ok(target.join("release").join(name))
}

/// The fleet benchmark, whose simulator is built in release with `--release`.
pub const FLEET_BENCH: &str = "eniguard-fleet-bench";
