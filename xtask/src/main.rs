//! Developer and CI tasks: `cargo xtask <setup|test|lint|demo|image|...>`.
//!
//! Run as a normal user, everything builds as that user and only the steps that need root (the
//! privileged tests, the demo) run through `sudo -E`; run as root (CI), no sudo is needed.

mod cmd;
mod counts;
mod image;
mod lint;
mod setup;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "eniguard developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (rust-src, bpf-linker, OS packages); idempotent.
    Setup,
    /// Build everything, run unit and privileged integration tests, print `N passed, N failed, N skipped`.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// rustfmt check and clippy -D warnings (userspace and eBPF).
    Lint,
    /// The product on vpcsim, start to finish: a node as aws-node v1.16.3 runs it with
    /// `eniguard audit` beside it, then a node run by `eniguard agent` (needs root).
    Demo {
        /// Leave both nodes running for a person to poke at (Ctrl-C ends it).
        #[arg(long)]
        keep: bool,
    },
    /// The container image (deploy/image/Containerfile) with buildah, nothing pulled: static
    /// binaries, `nft` and the CA bundle from this machine's packages; runs `eniguard --version` in it.
    Image,
    /// The privileged datapath tests on kernels 5.10, 6.1 and 6.12 under qemu.
    VmTest {
        /// Only tests whose name contains this (default: the datapath tests).
        filter: Option<String>,
    },
    /// Datapath benchmarks: BPF_PROG_TEST_RUN ns/packet and iperf3 throughput (needs root).
    Bench,
    /// The agent against vpcsim: EC2 calls (start, idle) beside upstream's, start-to-ready, RSS
    /// (needs root; about 12 minutes with the default 10 idle minutes).
    AgentBench {
        /// Passed to eniguard-agent-bench (`--idle-minutes N`, `--runs N`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// eniguard-cni against ptp + host-local: ADD/DEL p50/p99, a concurrent burst, the agent's
    /// RSS with pods (needs root; `--release` builds the agent and plugin optimised first).
    CniBench {
        /// Passed to eniguard-cni-bench (`--pods N`, `--burst N`, `--rss-pods N`), after
        /// `--release` if given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A fleet joining at once under EC2's account-wide buckets: time to all ready against the
    /// bucket-limited minimum, calls and throttled calls, RSS (needs root; `--release` builds
    /// the agents and the bench's simulator optimised).
    FleetBench {
        /// Passed to eniguard-fleet-bench (`--nodes N`), after `--release` if given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Pods through containerd: RunPodSandbox/StopPodSandbox p50/p99 and a concurrent burst,
    /// eniguard against ptp + host-local, then the agent's RSS (needs root; `--release` as for
    /// cni-bench).
    PodBench {
        /// Passed to eniguard-pod-bench (`--pods N`, `--burst N`), after `--release` if given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Test { filter } => test::test(filter.as_deref()),
        Task::Lint => lint::lint(),
        Task::Demo { keep } => {
            if !setup::is_complete() {
                setup::setup()?;
            }
            let args: &[&str] = if keep { &["--demo", "--keep"] } else { &["--demo"] };
            test::run_privileged_bin("privileged", args)
        }
        Task::Image => image::image(),
        Task::VmTest { filter } => test::vm_test(filter.as_deref()),
        Task::Bench => {
            if !setup::is_complete() {
                setup::setup()?;
            }
            test::run_bench()
        }
        Task::AgentBench { args } => {
            if !setup::is_complete() {
                setup::setup()?;
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            test::run_privileged_bin("eniguard-agent-bench", &args)
        }
        Task::CniBench { args } => agents_bench("eniguard-cni-bench", &args),
        Task::PodBench { args } => agents_bench("eniguard-pod-bench", &args),
        Task::FleetBench { args } => agents_bench(test::FLEET_BENCH, &args),
    }
}

/// A benchmark that runs agents (the plugin by hand or through containerd, a fleet), against the
/// debug agent or, after `--release`, optimised ones.
fn agents_bench(bench: &str, args: &[String]) -> Result<()> {
    if !setup::is_complete() {
        setup::setup()?;
    }
    let release = args.first().is_some_and(|a| a == "--release");
    let args: Vec<&str> = args.iter().skip(usize::from(release)).map(String::as_str).collect();
    test::run_cni_bench(bench, release, &args)
}
