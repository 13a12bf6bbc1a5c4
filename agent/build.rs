//! Builds the eBPF object (ebpf/programs) with aya-build; the agent embeds it from OUT_DIR.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
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
