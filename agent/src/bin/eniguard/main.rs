//! `eniguard`: the node agent and its CLI.

mod agent;
mod audit;
mod checkpoint;
mod cli;
mod guard;
mod introspect;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use eniguard::guard::{
    attach::{AttachMode, Direction},
    counter,
    pins::{PinDir, DEFAULT_PIN_DIR},
};
use eniguard_common::TC_COUNTER_MAP;

#[derive(Parser)]
#[command(
    name = "eniguard",
    version,
    about = "ENI and pod-IP management with per-packet egress verification"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The node agent (configured through upstream's environment variables).
    Agent {
        /// Print the configuration in effect (every variable and host path with its value) and exit.
        #[arg(long)]
        print_config: bool,
        #[command(flatten)]
        paths: eniguard::config::HostPaths,
    },
    /// Audit mode, beside an existing aws-node: the guard judges aws-node's pods (intent from its
    /// checkpoint, the ENIConfig and EC2) and reports; nothing is allocated, plumbed or signalled.
    /// Metrics on :61680 and introspection on 127.0.0.1:61681 unless METRICS_BIND_ADDRESS /
    /// INTROSPECTION_BIND_ADDRESS are set.
    Audit {
        /// Directory under bpffs for eniguard's pins.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Readiness, the pool, the guard, findings and violations, from a running agent (or audit
    /// mode with --addr 127.0.0.1:61681).
    Status {
        /// Introspection address (default: INTROSPECTION_BIND_ADDRESS or 127.0.0.1:61679).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Why a pod must leave through its ENI with its groups, what EC2 says that interface
    /// carries, and its last verdicts.
    Explain {
        /// <namespace>/<pod>
        pod: String,
        #[arg(long)]
        addr: Option<String>,
    },
    /// The guard's recent violations, one line each.
    Events {
        /// Keep printing new ones.
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        addr: Option<String>,
    },
    /// The IPAM checkpoint (`vpc-cni-ipam/1`, upstream's /var/run/aws-node/ipam.json).
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// The egress guard: check every pod packet against an intent file (YAML or JSON).
    Guard {
        /// Intent file: interfaces (truth) and pods (intent); re-read on SIGHUP.
        #[arg(long)]
        intent: PathBuf,
        /// Serve Prometheus metrics (/metrics) and recent violations (/v1/events) here.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// auto (TCX on kernels >= 6.6, netlink otherwise), tcx or netlink.
        #[arg(long, default_value_t = AttachMode::Auto)]
        attach: AttachMode,
        /// Directory under bpffs for eniguard's pins.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// On exit leave programs attached and maps pinned, for the next agent to take over.
        #[arg(long)]
        keep_datapath: bool,
        /// Size the pod maps for this many pods (default 1024; maps a predecessor pinned keep
        /// their size).
        #[arg(long)]
        max_pods: Option<u32>,
    },
    /// The pipeline-proof TC packet counter.
    Counter {
        #[command(subcommand)]
        command: CounterCommand,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Validate a checkpoint and print a summary; exit 0 valid, 1 invalid, 2 unreadable.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum CounterCommand {
    /// Attach the counter to an interface and keep it attached until SIGINT/SIGTERM.
    Run {
        /// Interface in the current network namespace.
        #[arg(long)]
        iface: String,
        /// ingress or egress.
        #[arg(long, default_value = "egress")]
        direction: Direction,
        /// auto (TCX on kernels >= 6.6, netlink otherwise), tcx or netlink.
        #[arg(long, default_value_t = AttachMode::Auto)]
        attach: AttachMode,
        /// Directory under bpffs for eniguard's pins.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Leave the pinned map in place on exit.
        #[arg(long)]
        keep_pins: bool,
        /// Netlink filter priority (0: the kernel picks one ahead of the existing filters). Under
        /// TCX the counter is appended after the programs already attached.
        #[arg(long, default_value_t = 0)]
        priority: u16,
    },
    /// Print the pinned counter (summed over CPUs).
    Show {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// glibc gives each thread that allocates an arena of its own; the agent's few, mostly idle
/// threads (tokio workers, the blocking pool) do not need them, and two arenas keep the resident
/// set at 250 pods within the 25 MiB target (README, performance). MALLOC_ARENA_MAX still wins.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt before any other thread exists; it only tunes the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> Result<()> {
    let command = Cli::parse().command;
    // The daemons' configuration: a bad variable stops them here, before any EC2 or Kubernetes
    // call; it also says where they log.
    let daemon = match command {
        Command::Agent { .. } | Command::Audit { .. } => Some(eniguard::config::Config::from_env()?),
        _ => None,
    };
    init_logging(daemon.as_ref())?;
    match (command, daemon) {
        (Command::Agent { print_config, paths }, Some(config)) => {
            if print_config {
                for (var, value) in config.entries().into_iter().chain(paths.entries()) {
                    println!("{var}={value}");
                }
                return Ok(());
            }
            limit_malloc_arenas();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(agent::run(config, paths))
        }
        (Command::Audit { pin_dir }, Some(config)) => {
            limit_malloc_arenas();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(audit::run(config, pin_dir))
        }
        (Command::Agent { .. } | Command::Audit { .. }, None) => anyhow::bail!("no configuration"),
        (Command::Status { addr }, _) => {
            cli_runtime()?.block_on(cli::status(&addr.unwrap_or_else(cli::default_addr)))
        }
        (Command::Explain { pod, addr }, _) => {
            cli_runtime()?.block_on(cli::explain(&addr.unwrap_or_else(cli::default_addr), &pod))
        }
        (Command::Events { follow, addr }, _) => {
            cli_runtime()?.block_on(cli::events(&addr.unwrap_or_else(cli::default_addr), follow))
        }
        (Command::Checkpoint { command: CheckpointCommand::Check { file } }, _) => {
            std::process::exit(checkpoint::check(&file))
        }
        (Command::Guard { intent, metrics_addr, attach, pin_dir, keep_datapath, max_pods }, _) => {
            let args = guard::Args { intent, metrics_addr, attach, pin_dir, keep_datapath, max_pods };
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(guard::run(args))
        }
        (Command::Counter { command }, _) => match command {
            CounterCommand::Run { iface, direction, attach, pin_dir, keep_pins, priority } => {
                run_counter(&iface, direction, attach, priority, &PinDir::new(pin_dir), keep_pins)
            }
            CounterCommand::Show { pin_dir } => {
                let c = counter::read_counter(&PinDir::new(pin_dir).map(TC_COUNTER_MAP))?;
                println!("packets={} bytes={}", c.packets, c.bytes);
                Ok(())
            }
        },
    }
}

/// Logs through tracing: one JSON object per line (ENIGUARD_LOG_FORMAT=json, the default, for a
/// cluster's log pipeline) or text (`text`, for people); `log` records (the code's and its
/// libraries') are bridged. The daemons log where AWS_VPC_K8S_CNI_LOG_FILE says, at
/// AWS_VPC_K8S_CNI_LOGLEVEL; the CLI on stderr at info. RUST_LOG, when set, wins.
fn init_logging(daemon: Option<&eniguard::config::Config>) -> Result<()> {
    use eniguard::config::LogFile;
    use tracing_subscriber::{fmt, fmt::writer::BoxMakeWriter, EnvFilter};
    let level = daemon.map_or("info", |c| c.log_level.filter());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let writer = match daemon.map(|c| &c.log_file) {
        None | Some(LogFile::Stderr) => BoxMakeWriter::new(std::io::stderr),
        Some(LogFile::Stdout) => BoxMakeWriter::new(std::io::stdout),
        Some(LogFile::Path(p)) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("AWS_VPC_K8S_CNI_LOG_FILE: creating {}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("AWS_VPC_K8S_CNI_LOG_FILE: opening {}", p.display()))?;
            BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
    };
    let logs = fmt().with_env_filter(filter).with_writer(writer);
    match std::env::var("ENIGUARD_LOG_FORMAT").as_deref() {
        Ok("json") | Err(_) => logs.json().flatten_event(true).init(),
        Ok("text") => logs.init(),
        Ok(other) => anyhow::bail!("ENIGUARD_LOG_FORMAT=`{other}`: expected json or text"),
    }
    if let Some(c) = daemon {
        for var in &c.deprecated_set {
            log::info!("{var} is deprecated upstream and has no effect");
        }
    }
    Ok(())
}

fn cli_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn run_counter(
    iface: &str,
    direction: Direction,
    mode: AttachMode,
    priority: u16,
    pins: &PinDir,
    keep_pins: bool,
) -> Result<()> {
    let attached = counter::attach_counter(pins, iface, direction, mode, priority)
        .with_context(|| format!("attaching the counter to {iface}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers before the readiness line: a SIGTERM right after it must stop us cleanly.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // The readiness line scripts and tests wait for.
        println!(
            "ready: tc_count attached to {iface} ({}), map {}",
            attached.mode,
            pins.map(TC_COUNTER_MAP).display()
        );
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        anyhow::Ok(())
    })?;
    drop(attached);
    if !keep_pins {
        pins.remove()?;
    }
    log::info!("detached from {iface}");
    Ok(())
}
