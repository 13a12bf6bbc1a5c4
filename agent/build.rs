//! Builds the eBPF object (ebpf/programs) with aya-build, which the agent embeds from OUT_DIR, and
//! the network-policy agent's gRPC interface (proto/rpc.proto) with tonic-prost-build; records the
//! compiler's version (awscni_build_info).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    // awscni_build_info's `goversion` label: the compiler that built the agent.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=ENIGUARD_RUSTC_VERSION={version}");
    tonic_prost_build::configure()
        .compile_protos(&["proto/rpc.proto"], &["proto"])
        .context("compiling proto/rpc.proto (needs protoc: `cargo xtask setup`)")?;
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent/ has no parent directory"))?
        .join("ebpf/programs");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "eniguard-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
