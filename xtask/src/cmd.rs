//! Small helpers to run commands with clear errors.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Runs `cmd` with inherited stdio; fails with the command line when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails (with its stderr) when it exits non-zero.
pub fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as root: directly when we are root, else through `sudo -E`.
pub fn privileged(program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    if is_root() {
        return Ok(Command::new(program));
    }
    if which("sudo").is_none() {
        bail!("this step needs root and sudo is not installed: run the command as root");
    }
    let mut cmd = Command::new("sudo");
    cmd.arg("-E").arg(program);
    Ok(cmd)
}

pub fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}
