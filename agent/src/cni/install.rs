//! Ready means reachable: once the agent can serve ADD it installs `eniguard-cni` into the CNI
//! bin directory and writes `10-eniguard.conflist` into the conf directory, each through a
//! temporary file in the same directory and a rename (containerd reloads on the rename and
//! never reads half a file; a running plugin binary is never overwritten in place). Both stay
//! when the agent stops, so that the node stays Ready across agent restarts (the plugin answers
//! "network is not ready" meanwhile and the kubelet retries after a second).
//!
//! The network keeps upstream's name, `aws-cni`: the IPAM key includes it, so pods started under
//! aws-node (their allocations imported from its checkpoint) are released by DELs that libcni
//! sends with the conflist loaded now. An `10-aws.conflist` left by aws-node would sort first and
//! win (containerd loads only the first file): it is renamed aside, not deleted, so that going
//! back is a rename.
//!
//! Versions: `cniVersion` is what every runtime in use accepts, upstream's 0.4.0 (containerd 1.6
//! and 1.7 embed a libcni that refuses results newer than 1.0.0, and they read only this field).
//! `cniVersions` (CNI 1.1) lists every version that eniguard-cni and the chained portmap both
//! speak (portmap is asked with VERSION); a runtime that reads it takes the highest it supports,
//! so containerd 2 gets 1.1.0 (STATUS, GC) where portmap speaks it. The file depends only on the
//! configuration and the plugins installed, so a restarted agent writes the same bytes.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};

use super::spec::SUPPORTED_VERSIONS;
use crate::config::{Config, EnforcingMode};

pub const CONFLIST_NAME: &str = "10-eniguard.conflist";
pub const PLUGIN_NAME: &str = "eniguard-cni";
/// Upstream's network name (see the module doc).
pub const NETWORK_NAME: &str = "aws-cni";
const UPSTREAM_CONFLIST: &str = "10-aws.conflist";
/// The list's `cniVersion`, what runtimes that predate `cniVersions` use (see the module doc).
pub const CONFLIST_VERSION: &str = "0.4.0";

#[derive(Debug, thiserror::Error)]
#[error("installing the CNI plugin: {what} {path}: {source}")]
pub struct InstallError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub plugin: PathBuf,
    pub conflist: PathBuf,
    pub cni_version: String,
    /// Whether portmap was found and chained.
    pub portmap: bool,
    /// Whether bandwidth was chained (ENABLE_BANDWIDTH_PLUGIN).
    pub bandwidth: bool,
    /// Whether tuning was chained (DISABLE_POD_V6).
    pub tuning: bool,
    /// aws-node's conflist, renamed aside.
    pub shelved: Option<PathBuf>,
}

/// The temporary name beside `path` that a write goes to before its rename.
fn temporary(path: &Path) -> PathBuf {
    path.with_file_name(format!(
        ".{}.eniguard-tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ))
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = temporary(path);
    let err = |what| move |source| InstallError { what, path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("writing"))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err("writing"))?;
    std::fs::rename(&tmp, path).map_err(err("renaming into"))
}

/// Copies `source` to `path` atomically, as [`write_atomic`] does, in the kernel
/// (`copy_file_range`): the plugin is megabytes, and a node's agent should not read it through
/// its own memory at every start.
fn copy_atomic(source: &Path, path: &Path, mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = temporary(path);
    let err = |what, at: &Path| {
        let at = at.to_owned();
        move |source| InstallError { what, path: at, source }
    };
    std::fs::copy(source, &tmp).map_err(err("reading", source))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err("writing", path))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(err("writing", path))?;
    std::fs::rename(&tmp, path).map_err(err("renaming into", path))
}

/// Whether both files exist with the same bytes (the sizes first: a fresh node reads nothing).
fn same_content(a: &Path, b: &Path) -> bool {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    match (size(a), size(b)) {
        (Some(x), Some(y)) if x == y => {
            matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}

/// The spec versions a plugin binary answers VERSION with (empty if it cannot be run).
pub fn plugin_versions(binary: &Path) -> Vec<String> {
    let run = || -> std::io::Result<Vec<u8>> {
        let mut child = Command::new(binary)
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(br#"{"cniVersion":"1.0.0"}"#)?;
        }
        Ok(child.wait_with_output()?.stdout)
    };
    let out = run().unwrap_or_default();
    serde_json::from_slice::<Value>(&out)
        .ok()
        .and_then(|v| v.get("supportedVersions").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The plugins chained after eniguard-cni, each with the versions it answered VERSION with.
#[derive(Clone, Debug, Default)]
pub struct Chained {
    /// Empty: portmap is not installed (and not chained).
    pub portmap: Vec<String>,
    /// With ENABLE_BANDWIDTH_PLUGIN only (it must be installed then).
    pub bandwidth: Option<Vec<String>>,
    /// With DISABLE_POD_V6 only (it must be installed then).
    pub tuning: Option<Vec<String>>,
}

/// What upstream's DISABLE_POD_V6 has `tuning` set in the pod's namespace.
const POD_V6_OFF: [&str; 3] =
    ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6", "net.ipv6.conf.lo.disable_ipv6"];

/// The conflist (pure).
pub fn conflist(cfg: &Config, sockets: &Sockets, chained: &Chained) -> Value {
    let speaks = |plugin: &[String], v: &str| plugin.is_empty() || plugin.iter().any(|p| p == v);
    let versions: Vec<&str> = SUPPORTED_VERSIONS
        .iter()
        .copied()
        .filter(|v| {
            speaks(&chained.portmap, v)
                && [&chained.bandwidth, &chained.tuning]
                    .iter()
                    .all(|c| c.as_deref().is_none_or(|p| speaks(p, v)))
        })
        .collect();
    // 0.4.0 unless a future portmap dropped it; then the oldest version both speak.
    let version = if versions.contains(&CONFLIST_VERSION) {
        CONFLIST_VERSION
    } else {
        versions.first().copied().unwrap_or(CONFLIST_VERSION)
    };
    let mut plugins = vec![json!({
        "name": NETWORK_NAME,
        "type": PLUGIN_NAME,
        "vethPrefix": cfg.veth_prefix,
        "mtu": cfg.pod_mtu.to_string(),
        "podSGEnforcingMode": match cfg.pod_sg_enforcing_mode {
            EnforcingMode::Strict => "strict",
            EnforcingMode::Standard => "standard",
        },
        "pluginLogFile": cfg.plugin_log_file,
        "pluginLogLevel": cfg.plugin_log_level,
        "agentSocket": sockets.agent.display().to_string(),
        "awsNodeRunDir": sockets.aws_node_run_dir.display().to_string(),
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
    })];
    if !chained.portmap.is_empty() {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    }
    if chained.bandwidth.is_some() {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    if chained.tuning.is_some() {
        let sysctl: serde_json::Map<String, Value> =
            POD_V6_OFF.iter().map(|k| ((*k).to_owned(), json!("1"))).collect();
        plugins.push(json!({"type": "tuning", "sysctl": sysctl}));
    }
    json!({
        "cniVersion": version,
        "cniVersions": if versions.is_empty() { vec![version] } else { versions },
        "name": NETWORK_NAME,
        "plugins": plugins,
    })
}

/// Where the plugin finds the agent and the network-policy agent.
pub struct Sockets {
    /// The agent's local API socket.
    pub agent: PathBuf,
    /// aws-node's run directory (`npa.sock`).
    pub aws_node_run_dir: PathBuf,
}

/// Installs the plugin (from beside the running agent) and the conflist; see the module doc.
pub fn install(
    cfg: &Config,
    bin_dir: &Path,
    conf_dir: &Path,
    sockets: &Sockets,
) -> Result<Installed, InstallError> {
    let source = std::env::current_exe()
        .map(|e| e.with_file_name(PLUGIN_NAME))
        .map_err(|source| InstallError { what: "finding", path: PathBuf::from(PLUGIN_NAME), source })?;
    let plugin = bin_dir.join(PLUGIN_NAME);
    let mkdir = |dir: &Path| {
        std::fs::create_dir_all(dir).map_err(|source| InstallError {
            what: "creating",
            path: dir.to_owned(),
            source,
        })
    };
    mkdir(bin_dir)?;
    mkdir(conf_dir)?;
    if !same_content(&source, &plugin) {
        copy_atomic(&source, &plugin, 0o755)?;
    }
    let required = |wanted: bool, name: &str, what: &'static str| match wanted {
        false => Ok(None),
        true => match plugin_versions(&bin_dir.join(name)) {
            v if v.is_empty() => Err(InstallError {
                what,
                path: bin_dir.join(name),
                source: std::io::ErrorKind::NotFound.into(),
            }),
            v => Ok(Some(v)),
        },
    };
    let bandwidth = required(
        cfg.bandwidth_plugin,
        "bandwidth",
        "ENABLE_BANDWIDTH_PLUGIN=true: no working `bandwidth` plugin at",
    )?;
    let tuning =
        required(cfg.disable_pod_v6, "tuning", "DISABLE_POD_V6=true: no working `tuning` plugin at")?;
    let chained = Chained { portmap: plugin_versions(&bin_dir.join("portmap")), bandwidth, tuning };
    let list = conflist(cfg, sockets, &chained);
    let conflist_path = conf_dir.join(CONFLIST_NAME);
    let text = serde_json::to_vec_pretty(&list).unwrap_or_default();
    if std::fs::read(&conflist_path).ok().as_deref() != Some(text.as_slice()) {
        write_atomic(&conflist_path, &text, 0o644)?;
    }
    let upstream = conf_dir.join(UPSTREAM_CONFLIST);
    let shelved = if upstream.exists() {
        let aside = conf_dir.join(format!("{UPSTREAM_CONFLIST}.replaced-by-eniguard"));
        std::fs::rename(&upstream, &aside).map_err(|source| InstallError {
            what: "renaming aside",
            path: upstream.clone(),
            source,
        })?;
        Some(aside)
    } else {
        None
    };
    Ok(Installed {
        plugin,
        conflist: conflist_path,
        cni_version: list["cniVersion"].as_str().unwrap_or_default().to_owned(),
        portmap: !chained.portmap.is_empty(),
        bandwidth: chained.bandwidth.is_some(),
        tuning: chained.tuning.is_some(),
        shelved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_has_upstreams_fields_and_versions_every_runtime_accepts() {
        let cfg = Config::from_lookup(|_| None).unwrap();
        let sockets = Sockets {
            agent: PathBuf::from("/run/eniguard/eniguard.sock"),
            aws_node_run_dir: PathBuf::from("/var/run/aws-node"),
        };
        let with = |portmap: &[&str]| Chained {
            portmap: portmap.iter().map(|v| (*v).to_owned()).collect(),
            bandwidth: None,
            tuning: None,
        };
        let c = conflist(&cfg, &sockets, &with(&["0.3.1", "0.4.0", "1.0.0"]));
        assert_eq!((c["cniVersion"].as_str(), c["name"].as_str()), (Some("0.4.0"), Some("aws-cni")));
        assert_eq!(c["cniVersions"], json!(["0.4.0", "1.0.0"]));
        let p = &c["plugins"][0];
        assert_eq!(
            (p["type"].as_str(), p["mtu"].as_str(), p["vethPrefix"].as_str()),
            (Some("eniguard-cni"), Some("9001"), Some("eni"))
        );
        assert_eq!(p["podSGEnforcingMode"], "strict");
        assert_eq!(p["pluginLogFile"], "/var/log/aws-routed-eni/plugin.log");
        assert_eq!(p["awsNodeRunDir"], "/var/run/aws-node");
        assert_eq!(c["plugins"][1]["type"], "portmap");
        let c = conflist(&cfg, &sockets, &with(&["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(
            (c["cniVersion"].as_str(), c["cniVersions"].clone()),
            (Some("0.4.0"), json!(SUPPORTED_VERSIONS))
        );
        let alone = conflist(&cfg, &sockets, &with(&[]));
        assert_eq!(
            (alone["cniVersion"].as_str(), alone["plugins"].as_array().map(Vec::len)),
            (Some("0.4.0"), Some(1))
        );
        assert_eq!(alone["cniVersions"], json!(SUPPORTED_VERSIONS));
        // cniVersion is always one of cniVersions.
        assert!(alone["cniVersions"].as_array().unwrap().contains(&json!(CONFLIST_VERSION)));
        let c = conflist(&cfg, &sockets, &with(&["1.0.0", "1.1.0", "2.0.0"]));
        assert_eq!(
            (c["cniVersion"].as_str(), c["cniVersions"].clone()),
            (Some("1.0.0"), json!(["1.0.0", "1.1.0"]))
        );
        // ENABLE_BANDWIDTH_PLUGIN: bandwidth last, and the versions all three speak.
        let chained = Chained {
            bandwidth: Some(vec!["0.4.0".into(), "1.0.0".into()]),
            ..with(&["0.4.0", "1.0.0", "1.1.0"])
        };
        let c = conflist(&cfg, &sockets, &chained);
        assert_eq!(c["plugins"][2], json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
        assert_eq!(c["cniVersions"], json!(["0.4.0", "1.0.0"]));
        // DISABLE_POD_V6: tuning last with upstream's three sysctls, in the versions it speaks.
        let chained = Chained { tuning: Some(vec!["0.4.0".into(), "1.1.0".into()]), ..chained };
        let c = conflist(&cfg, &sockets, &chained);
        let off = json!("1");
        assert_eq!(
            c["plugins"][3],
            json!({"type": "tuning", "sysctl": {"net.ipv6.conf.all.disable_ipv6": off,
                "net.ipv6.conf.default.disable_ipv6": off, "net.ipv6.conf.lo.disable_ipv6": off}})
        );
        assert_eq!(c["cniVersions"], json!(["0.4.0"]));
    }
}
