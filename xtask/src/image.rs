//! `cargo xtask image`: the container image of deploy/image/Containerfile, built on this machine
//! without pulling anything. The binaries are static (musl), so the image starts `FROM scratch`;
//! what the agent runs besides itself (`nft` and the libraries it loads, the CA bundle) is copied
//! from this machine's Debian packages. buildah builds and runs it (no daemon).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{output_of, run},
    setup::ensure_packages,
};

const TARGET: &str = "x86_64-unknown-linux-musl";
pub const TAG: &str = concat!("localhost/eniguard:", env!("CARGO_PKG_VERSION"));

const PACKAGES: &[(&str, &str)] = &[
    ("buildah", "builds and runs the image without a daemon"),
    ("musl-tools", "musl-gcc: ring's C and assembly for the static binaries"),
    ("nftables", "nft, copied into the image with its libraries"),
    ("ca-certificates", "the CA bundle copied into the image"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn image() -> Result<()> {
    let started = Instant::now();
    ensure_packages(PACKAGES)?;
    run(Command::new("rustup").args(["target", "add", TARGET]))
        .context("rustup target add (needs the Rust registry)")?;
    let build = Instant::now();
    run(Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["build", "--release", "--target", TARGET, "-p", "eniguard", "--bins"])
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc"))?;
    let build = build.elapsed();
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bins = target_dir.join(TARGET).join("release");

    let context = root().join("target/image");
    let rootfs = context.join("rootfs");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(rootfs.join("app"))?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    for bin in ["eniguard", "eniguard-cni"] {
        let from = bins.join(bin);
        ensure_static(&from)?;
        copy(&from, &rootfs.join("app").join(bin))?;
    }
    let nft = PathBuf::from("/usr/sbin/nft");
    copy(&nft, &rootfs.join("usr/sbin/nft"))?;
    for lib in shared_libraries(&nft)? {
        copy(&lib, &rootfs.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    copy(bundle, &rootfs.join("etc/ssl/certs/ca-certificates.crt"))?;
    std::fs::copy(root().join("deploy/image/Containerfile"), context.join("Containerfile"))?;

    run(Command::new("buildah")
        .args(["build", "--quiet", "--layers=false", "-t", TAG, "-f"])
        .arg(context.join("Containerfile"))
        .arg(&context))?;
    let size = output_of(Command::new("buildah").args(["images", "--format", "{{.Size}}", TAG]))?;
    // The image runs: a container from it prints the version. Chroot isolation: this machine's
    // cgroup hybrid mode is one crun refuses, and the check needs no namespaces.
    let container = output_of(Command::new("buildah").args(["from", "--quiet", TAG]))?;
    let container = container.trim();
    let run_in = |program: &str| {
        output_of(Command::new("buildah").args([
            "run",
            "--isolation",
            "chroot",
            container,
            "--",
            program,
            "--version",
        ]))
    };
    let version = run_in("/app/eniguard");
    let nft_runs = run_in("/usr/sbin/nft");
    run(Command::new("buildah").args(["rm", container]))?;
    let version = version?;
    let nft_runs = nft_runs?;
    println!("image {TAG}: {} ({})", size.trim(), root().join("deploy/image/Containerfile").display());
    println!("  /app/eniguard --version: {}", version.trim());
    println!("  /usr/sbin/nft --version: {}", nft_runs.trim());
    println!(
        "  built in {:.0} s (of which the static binaries {:.0} s)",
        started.elapsed().as_secs_f64(),
        build.as_secs_f64()
    );
    Ok(())
}

/// Copies a file, creating the parent directories, keeping its mode.
fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Fails unless `bin` is statically linked (no program interpreter).
fn ensure_static(bin: &Path) -> Result<()> {
    let header = output_of(Command::new("readelf").arg("-l").arg(bin))?;
    if header.contains("Requesting program interpreter") {
        bail!("{} is dynamically linked; the image has no libc for it", bin.display());
    }
    Ok(())
}

/// The shared libraries `bin` loads (ldd), its interpreter included, as absolute paths.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = output_of(Command::new("ldd").arg(bin))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
