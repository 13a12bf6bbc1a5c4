//! `cargo xtask setup`: installs what a fresh Debian-like machine lacks, idempotently.
//!
//! Each step checks first and only acts when something is missing, so a second run is a
//! handful of cheap queries. A step that cannot be done says what is missing and how to fix it.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{is_root, output_of, run};

/// The nightly toolchain that builds the eBPF crate (aya-build's default).
pub const NIGHTLY: &str = "nightly";
/// bpf-linker version known to work with the pinned aya family (aya =0.14.0, see Cargo.toml).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests, benchmarks and kernel matrix use, with the command each provides.
const OS_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip, tc: network namespaces, veth, qdiscs"),
    ("bpftool", "dumps pinned maps with BTF field names"),
    ("iputils-ping", "ping: traffic in integration tests"),
    ("iperf3", "throughput benchmarks"),
    ("nftables", "nft: the simulated VPC drops what EC2's source/destination check would"),
    ("containernetworking-plugins", "portmap to chain; ptp + host-local, the CNI benchmark's peer"),
    ("prometheus", "promtool check metrics: the agent's and audit mode's /metrics (no server is started)"),
    (
        "python3-prometheus-client",
        "the Prometheus project's OpenMetrics parser: an OpenMetrics scrape of the agent parses",
    ),
    ("qemu-system-x86", "boots other kernels for the kernel matrix"),
    ("busybox-static", "initramfs userland for the kernel matrix; the busybox image containerd runs"),
    ("containerd", "the container runtime that starts the tests' pods over CRI, as the kubelet does"),
    ("runc", "containerd's OCI runtime"),
    ("golang-go", "builds the tests' libcni caller against Debian's libcni, offline"),
    ("golang-github-appc-cni-dev", "Debian's libcni, the library runtimes call CNI plugins with"),
    (
        "protobuf-compiler",
        "protoc: the k8s-cri crate compiles CRI's proto for the tests' kubelet-side client",
    ),
    ("kmod", "module dependency resolution for the kernel matrix"),
    ("cpio", "initramfs archives for the kernel matrix"),
    ("xz-utils", "decompresses the kernel matrix's modules (.ko.xz)"),
];

pub fn setup() -> Result<()> {
    let mut problems = Vec::new();
    let steps: [(&str, Step); 5] = [
        ("rust-src for the nightly toolchain", rust_src),
        ("bpf-linker against the nightly's libLLVM", bpf_linker),
        ("OS packages", os_packages),
        ("bpffs at /sys/fs/bpf", bpffs),
        ("kubernetes-validate (PyPI) for deploy/'s manifests", kubernetes_validate),
    ];
    for (name, step) in steps {
        match step() {
            Ok(Outcome::Present) => println!("setup: {name}: present"),
            Ok(Outcome::Installed) => println!("setup: {name}: installed"),
            Err(err) => {
                println!("setup: {name}: MISSING");
                problems.push(format!("{name}: {err:#}"));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!("setup is incomplete:\n  - {}", problems.join("\n  - "))
}

/// True when every setup step would be a no-op; cheap enough to call before each test run.
pub fn is_complete() -> bool {
    has_rust_src().unwrap_or(false)
        && bpf_linker_matches().unwrap_or(false)
        && missing_packages().map(|m| m.is_empty()).unwrap_or(false)
        && bpffs_mounted()
        && kubernetes_validate_matches()
}

type Step = fn() -> Result<Outcome>;

enum Outcome {
    Present,
    Installed,
}

fn has_rust_src() -> Result<bool> {
    let installed = output_of(
        Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]),
    )
    .with_context(|| {
        format!("rustup cannot list the {NIGHTLY} toolchain; install it with `rustup toolchain install {NIGHTLY}`")
    })?;
    Ok(installed.lines().any(|l| l.starts_with("rust-src")))
}

fn rust_src() -> Result<Outcome> {
    if has_rust_src()? {
        return Ok(Outcome::Present);
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY])).context(
        "`rustup component add rust-src --toolchain nightly` failed (is the Rust registry reachable?)",
    )?;
    Ok(Outcome::Installed)
}

/// The nightly's own libLLVM, e.g. `.../lib/libLLVM.so.22.1-rust-1.97.0-nightly`, and its major version.
fn nightly_llvm() -> Result<(PathBuf, u32)> {
    let sysroot = output_of(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .with_context(|| {
            format!("the {NIGHTLY} toolchain is missing: `rustup toolchain install {NIGHTLY}`")
        })?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(major) = llvm_major_from_file_name(&name) {
            return Ok((lib.join(name), major));
        }
    }
    bail!("no libLLVM.so.<major>.* in {}; the nightly toolchain looks incomplete", lib.display())
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` → 22.
fn llvm_major_from_file_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("libLLVM.so.")?;
    rest.split('.').next()?.parse().ok()
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// A stamp next to the installed bpf-linker records which libLLVM it was built against.
fn bpf_linker_stamp() -> PathBuf {
    cargo_home().join("bpf-linker.llvm")
}

fn bpf_linker_matches() -> Result<bool> {
    let (llvm, _) = nightly_llvm()?;
    let works =
        Command::new("bpf-linker").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    let stamp = fs::read_to_string(bpf_linker_stamp()).unwrap_or_default();
    Ok(works && stamp.trim() == llvm.display().to_string())
}

fn bpf_linker() -> Result<Outcome> {
    if bpf_linker_matches()? {
        return Ok(Outcome::Present);
    }
    let (llvm, major) = nightly_llvm()?;
    let lib_dir = llvm.parent().context("libLLVM has no parent directory")?;
    // bpf-linker's build looks for $LLVM_PREFIX/lib/libLLVM.so: point it at the toolchain's copy.
    let prefix = cargo_home().join("bpf-linker-llvm");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("symlinking {} to {}", link.display(), llvm.display()))?;
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about 75 s on 2 cores)");
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display())))
    .context("building bpf-linker failed (needs the crates.io registry and a C toolchain)")?;
    fs::write(bpf_linker_stamp(), llvm.display().to_string())?;
    Ok(Outcome::Installed)
}

fn missing_packages() -> Result<Vec<&'static str>> {
    missing_of(OS_PACKAGES)
}

/// The packages of `list` that dpkg does not have installed.
fn missing_of(list: &[(&'static str, &str)]) -> Result<Vec<&'static str>> {
    let names: Vec<&str> = list.iter().map(|(p, _)| *p).collect();
    // dpkg-query exits non-zero when a package is unknown; the output still lists the known ones.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\n"])
        .args(&names)
        .output()
        .context("dpkg-query is missing: setup supports Debian-like systems only")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(names.into_iter().filter(|p| !text.lines().any(|l| l == format!("{p} installed"))).collect())
}

fn os_packages() -> Result<Outcome> {
    install_packages(OS_PACKAGES)
}

/// Installs the Debian packages of `list` (package, what it is for) that are missing.
pub fn ensure_packages(list: &[(&'static str, &str)]) -> Result<()> {
    install_packages(list).map(|_| ())
}

fn install_packages(list: &[(&'static str, &str)]) -> Result<Outcome> {
    let missing = missing_of(list)?;
    if missing.is_empty() {
        return Ok(Outcome::Present);
    }
    let why: Vec<String> =
        list.iter().filter(|(p, _)| missing.contains(p)).map(|(p, w)| format!("{p} ({w})")).collect();
    if !is_root() {
        bail!(
            "missing {}; run as root or: sudo apt-get install --no-install-recommends {}",
            why.join(", "),
            missing.join(" ")
        );
    }
    println!("setup: installing {}", why.join(", "));
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed (no network to the Debian mirror?)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {} failed", missing.join(" ")))?;
    Ok(Outcome::Installed)
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.split(' ').nth(2) == Some("bpf"))
        })
        .unwrap_or(false)
}

fn bpffs() -> Result<Outcome> {
    if bpffs_mounted() {
        return Ok(Outcome::Present);
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf; run as root or: sudo mount -t bpf bpf /sys/fs/bpf");
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(Outcome::Installed)
}

/// The offline Kubernetes schema validator the deploy tests run (`tests/tests/deploy.rs`): it
/// ships the JSON schemas of every Kubernetes minor inside the package, so nothing is fetched at
/// test time. In a virtualenv of its own under the repository's target/tools.
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

pub fn kubernetes_validate_venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/kubernetes-validate")
}

fn kubernetes_validate_stamp() -> PathBuf {
    kubernetes_validate_venv().join("installed")
}

fn kubernetes_validate_matches() -> bool {
    fs::read_to_string(kubernetes_validate_stamp()).is_ok_and(|s| s.trim() == KUBERNETES_VALIDATE)
}

fn kubernetes_validate() -> Result<Outcome> {
    if kubernetes_validate_matches() {
        return Ok(Outcome::Present);
    }
    let venv = kubernetes_validate_venv();
    run(Command::new("python3").arg("-m").arg("venv").arg("--clear").arg(&venv))
        .context("python3 -m venv failed (is python3 with venv installed?)")?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]))
        .with_context(|| format!("pip install {KUBERNETES_VALIDATE} failed (is PyPI reachable?)"))?;
    fs::write(kubernetes_validate_stamp(), KUBERNETES_VALIDATE)?;
    Ok(Outcome::Installed)
}

#[cfg(test)]
mod tests {
    use super::llvm_major_from_file_name;

    #[test]
    fn llvm_major_is_read_from_the_library_file_name() {
        assert_eq!(llvm_major_from_file_name("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major_from_file_name("libLLVM.so.19.1-rust-1.84.0-nightly"), Some(19));
        assert_eq!(llvm_major_from_file_name("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(llvm_major_from_file_name("librustc_driver-b5a9.so"), None);
    }
}
