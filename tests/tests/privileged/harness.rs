//! A small test runner for tests that need root and the kernel: each test gets its own network
//! namespace and bpffs pin directory, runs alone, and is cleaned up whether it passes or not.
//! Unlike libtest it can report a test as skipped, with the reason, at run time.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    time::Instant,
};

use anyhow::Result;
use eniguard_tests::netns::NetNs;

/// Returned (as an error) by a test that cannot run here; it is reported, never counted as passed.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Skip {}

pub fn skip(reason: impl Into<String>) -> anyhow::Error {
    Skip(reason.into()).into()
}

/// What a test gets: its namespace, a pin directory of its own, and more namespaces on request.
pub struct Ctx {
    pub ns: NetNs,
    pub pin_dir: PathBuf,
    prefix: String,
}

impl Ctx {
    /// A name prefix unique to this test, for namespaces it creates itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Another namespace with a name unique to this test; deleted when the returned value drops.
    pub fn netns(&self, suffix: &str) -> Result<NetNs> {
        NetNs::create(&format!("{}-{suffix}", self.prefix))
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // Pin directories of the agents this test started (`agent::pin_dir`).
        let mine = format!("eniguard-test-{}-", self.prefix);
        for entry in std::fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&mine) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

pub struct Test {
    pub name: &'static str,
    pub run: fn(&mut Ctx) -> Result<()>,
}

pub fn main(tests: &[Test]) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if std::env::args().any(|a| a == "--list") {
        for t in tests {
            println!("{}: test", t.name);
        }
        return std::process::ExitCode::SUCCESS;
    }
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|t| args.is_empty() || args.iter().any(|a| t.name.contains(a.as_str())))
        .collect();
    println!("running {} privileged tests", selected.len());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (i, test) in selected.iter().enumerate() {
        let started = Instant::now();
        let outcome = run_one(test, i);
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({secs:.1}s)", test.name);
            }
            Err(e) if e.downcast_ref::<Skip>().is_some() => {
                skipped += 1;
                println!("test {} ... SKIPPED ({e})", test.name);
            }
            Err(e) => {
                failed += 1;
                println!("test {} ... FAILED ({secs:.1}s)\n    {e:#}", test.name);
            }
        }
    }
    println!("privileged: {passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Runs the demo with a context of its own (torn down when it returns, as a test's).
pub fn demo(run: impl FnOnce(&mut Ctx) -> Result<()>) -> std::process::ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (cargo xtask demo uses sudo -E when needed)");
        return std::process::ExitCode::FAILURE;
    }
    let prefix = format!("egd{}", std::process::id());
    let result = NetNs::create(&prefix).and_then(|ns| {
        let mut ctx =
            Ctx { ns, pin_dir: PathBuf::from(format!("/sys/fs/bpf/eniguard-test-{prefix}")), prefix };
        run(&mut ctx)
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_one(test: &Test, index: usize) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("needs root (run through `cargo xtask test`, which uses sudo -E when needed)");
    }
    let prefix = format!("egt{}-{index}", std::process::id());
    let mut ctx = Ctx {
        ns: NetNs::create(&prefix)?,
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/eniguard-test-{prefix}")),
        prefix,
    };
    match catch_unwind(AssertUnwindSafe(|| (test.run)(&mut ctx))) {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow::bail!("panicked: {msg}")
        }
    }
}
