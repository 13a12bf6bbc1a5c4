//! How TC programs are attached: TCX on kernels that have it (>= 6.6), classic clsact + cls_bpf
//! over netlink otherwise, or whichever the operator selects.

use std::{fmt, str::FromStr};

use aya::{
    programs::{
        tc::{self, NlOptions, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};

use super::GuardError;

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX when the running kernel has it, netlink otherwise.
    #[default]
    Auto,
    /// TCX links (kernel >= 6.6).
    Tcx,
    /// clsact qdisc + cls_bpf filter over netlink (any kernel, 5.10 included).
    Netlink,
}

impl FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "tcx" => Ok(Self::Tcx),
            "netlink" => Ok(Self::Netlink),
            other => Err(format!("attach mode `{other}`: expected auto, tcx or netlink")),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        })
    }
}

/// True when the running kernel supports TCX links.
pub fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

impl AttachMode {
    /// The concrete mode for this kernel: `Auto` becomes `Tcx` or `Netlink`.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if kernel_has_tcx() => Self::Tcx,
            Self::Auto => Self::Netlink,
            explicit => explicit,
        }
    }
}

/// Direction of traffic on an interface, as TC sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ingress" => Ok(Self::Ingress),
            "egress" => Ok(Self::Egress),
            other => Err(format!("direction `{other}`: expected ingress or egress")),
        }
    }
}

/// The interface's index in the current network namespace, or an error naming it.
pub fn ifindex(iface: &str) -> Result<u32, GuardError> {
    let err = |problem: &str| GuardError::Interface { iface: iface.to_owned(), problem: problem.to_owned() };
    let name = std::ffi::CString::new(iface).map_err(|_| err("interface name contains NUL"))?;
    // SAFETY: a NUL-terminated string we own.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(err("no such interface in this network namespace")),
        index => Ok(index),
    }
}

/// Attaches a loaded classifier to `iface` (the pipeline-proof counter; the guard's own attach
/// with takeover is `datapath::Guard::attach`); the program keeps the link (dropped = detached).
/// `priority` is the netlink filter priority (0: the kernel's choice); under TCX the program is
/// appended. Returns the concrete mode used.
pub fn attach(
    program: &mut SchedClassifier,
    iface: &str,
    direction: Direction,
    mode: AttachMode,
    priority: u16,
) -> Result<AttachMode, GuardError> {
    let attach_type = match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    };
    let mode = mode.resolve();
    let options = match mode {
        AttachMode::Tcx => {
            if !kernel_has_tcx() {
                return Err(GuardError::Interface {
                    iface: iface.to_owned(),
                    problem: "TCX needs kernel >= 6.6; use --attach netlink".into(),
                });
            }
            TcAttachOptions::TcxOrder(LinkOrder::default())
        }
        _ => {
            ensure_clsact(iface)?;
            TcAttachOptions::Netlink(NlOptions { priority, ..NlOptions::default() })
        }
    };
    program.attach_with_options(iface, attach_type, options).map_err(|e| GuardError::Attach {
        iface: iface.to_owned(),
        step: if mode == AttachMode::Tcx { "TCX attach" } else { "netlink attach" },
        source: Box::new(e),
    })?;
    Ok(mode)
}

/// Adds the clsact qdisc netlink filters hang off; one that already exists (another agent, an
/// earlier run) is fine.
pub fn ensure_clsact(iface: &str) -> Result<(), GuardError> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(()),
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(GuardError::Attach {
            iface: iface.to_owned(),
            step: "adding clsact qdisc",
            source: Box::new(e),
        }),
    }
}
