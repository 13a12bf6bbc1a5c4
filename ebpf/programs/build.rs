// Re-run the eBPF build when bpf-linker changes (it is not a cargo dependency).
//
// bpf-linker generates the code, so code-generation features go to it: with
// allows-misaligned-mem-access a header field is read with one load rather than assembled byte
// by byte (BPF's LLVM backend otherwise splits every load it cannot prove aligned, and packet
// data has no alignment). The verifier accepts unaligned packet reads unless the program asks
// for strict alignment or the architecture lacks efficient unaligned access; x86-64 and arm64,
// every EKS node, have it.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
