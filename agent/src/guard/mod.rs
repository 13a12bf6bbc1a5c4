//! The egress guard: what each pod must leave through, derived from the node's state
//! ([`derive`], as a [`spec`]), the embedded eBPF object and its maps ([`datapath`]), how its
//! programs are attached ([`attach`]), where its maps are pinned ([`pins`]), the guard as the agent
//! runs it ([`live`]), violations read from the ring buffer ([`events`]), interned names
//! ([`intern`]) and the pipeline-proof counter ([`counter`]).

pub mod attach;
pub mod counter;
pub mod datapath;
pub mod derive;
pub mod events;
pub mod intern;
#[cfg(feature = "control-plane")]
pub mod live;
pub mod pins;
pub mod spec;

use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader};

/// The eBPF object built by build.rs from ebpf/programs, embedded in the agent binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eniguard"));

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("interface {iface}: {problem}")]
    Interface { iface: String, problem: String },
    #[error("attaching to interface {iface} ({step}): {source}")]
    Attach {
        iface: String,
        step: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("bpffs: {}: {source}", path.display())]
    Bpffs { path: PathBuf, source: std::io::Error },
    #[error("bpffs: {}: not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`", .0.display())]
    NotBpffs(PathBuf),
    #[error("the guard could not take the node's intent: no apply within {0} s")]
    SyncTimeout(u64),
    #[error("the guard could not take the node's intent: the guard feed stopped")]
    FeedStopped,
    #[error("the guard could not take the node's intent: {0}")]
    Apply(#[source] std::sync::Arc<GuardError>),
    #[error("the guard's apply task: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("the intent has {pods} pods and {ifaces} interfaces; the guard's maps hold {max_pods} pods and {max_ifaces} interfaces (raise --max-pods)")]
    Capacity { pods: usize, ifaces: usize, max_pods: u32, max_ifaces: u32 },
}

/// Loads the embedded object with the given maps pinned (reused when a pin already exists) and the
/// capacity of the named maps set (for maps created now; a reused pin keeps its own).
pub fn load(
    pinned_maps: &[(&'static str, PathBuf)],
    sizes: &[(&'static str, u32)],
) -> Result<Ebpf, GuardError> {
    let mut loader = EbpfLoader::new();
    for (name, path) in pinned_maps {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    Ok(loader.load(EBPF_OBJECT)?)
}
