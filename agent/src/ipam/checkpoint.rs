//! The checkpoint: upstream's `vpc-cni-ipam/1` JSON (`/var/run/aws-node/ipam.json`), so that a
//! node can switch from aws-node in place and the network-policy agent can keep reading it.
//!
//! ```json
//! {"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"…",
//!   "ifName":"eth0","ipv4":"10.0.1.5","allocationTimestamp":1700000000000000000,
//!   "metadata":{"k8sPodNamespace":"default","k8sPodName":"web-1"}}]}
//! ```
//! An IPv6 node's allocations carry `"ipv6":"2600:…"` instead of `ipv4` (upstream's IPv6 mode).
//! Beside upstream's fields, eniguard keeps the addresses still cooling down (`eniguardCooldown`:
//! `[{"ipv4":"10.0.1.7","releasedAt":1700000000000000000}]`, `ipv6` for IPv6 ones, omitted when
//! empty), so that an address released just before a restart is not handed out again at once.
//! aws-node and the network-policy agent ignore the field (Go's encoding/json skips unknown
//! fields).
//!
//! Written atomically: a temporary file in the same directory, fsync, rename, fsync of the
//! directory. Read strictly: every problem names the allocation and field, and nothing is changed.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::model::{AllocKey, Allocation, PodRef, UnixNanos};

pub const VERSION: &str = "vpc-cni-ipam/1";
pub const DEFAULT_PATH: &str = "/var/run/aws-node/ipam.json";

#[derive(Debug, Serialize, Deserialize)]
struct FileFormat {
    version: String,
    allocations: Vec<Entry>,
    #[serde(rename = "eniguardCooldown", default, skip_serializing_if = "Vec::is_empty")]
    cooldown: Vec<CoolingEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CoolingEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv6: Option<String>,
    released_at: i64,
}

/// What a checkpoint holds: an IPv4 node's allocations, or an IPv6 node's (upstream never
/// writes both kinds in one file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    pub allocations: Vec<Allocation>,
    /// Released addresses still cooling down, with when they were released.
    pub cooling: Vec<(Ipv4Addr, UnixNanos)>,
    pub allocations6: Vec<Allocation<Ipv6Addr>>,
    pub cooling6: Vec<(Ipv6Addr, UnixNanos)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    network_name: String,
    #[serde(rename = "containerID")]
    container_id: String,
    if_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv6: Option<String>,
    allocation_timestamp: i64,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Metadata {
    #[serde(rename = "k8sPodNamespace", default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(rename = "k8sPodName", default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "interfacesCount", default, skip_serializing_if = "Option::is_none")]
    interfaces_count: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a valid checkpoint: {source}")]
    Syntax { path: String, source: serde_json::Error },
    #[error("{path}: version: `{found}`, expected `{VERSION}`")]
    Version { path: String, found: String },
    #[error("{path}: allocations[{index}].{field}: {problem}")]
    Invalid { path: String, index: usize, field: &'static str, problem: String },
    #[error("{path}: eniguardCooldown[{index}].{field}: {problem}")]
    InvalidCooling { path: String, index: usize, field: &'static str, problem: String },
    #[error("{path}: cannot write: {source}")]
    Write { path: String, source: std::io::Error },
}

/// A checkpoint file.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    path: PathBuf,
}

impl Checkpoint {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file holds; `Ok(None)` when there is no file (a fresh node).
    pub fn read(&self) -> Result<Option<Contents>, CheckpointError> {
        let p = self.path.display().to_string();
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CheckpointError::Read { path: p, source: e }),
        };
        parse(&p, &bytes).map(Some)
    }

    /// Replaces the file with `contents`, atomically and durably.
    pub fn write(&self, contents: &Contents) -> Result<(), CheckpointError> {
        let tmp = self.prepare(contents)?;
        self.commit(&tmp)
    }

    /// First half of [`Checkpoint::write`]: the new content, fsynced, in a temporary file next to
    /// the checkpoint. Until [`Checkpoint::commit`], the checkpoint itself is unchanged.
    pub fn prepare(&self, contents: &Contents) -> Result<PathBuf, CheckpointError> {
        let err =
            |source: std::io::Error| CheckpointError::Write { path: self.path.display().to_string(), source };
        let cooling_entry = |ip: IpAddr, at: UnixNanos| CoolingEntry {
            ipv4: ip.is_ipv4().then(|| ip.to_string()),
            ipv6: ip.is_ipv6().then(|| ip.to_string()),
            released_at: i64::try_from(at).unwrap_or(i64::MAX),
        };
        let data = FileFormat {
            version: VERSION.to_owned(),
            allocations: contents
                .allocations
                .iter()
                .map(entry)
                .chain(contents.allocations6.iter().map(entry))
                .collect(),
            cooldown: contents
                .cooling
                .iter()
                .map(|(ip, at)| cooling_entry(IpAddr::V4(*ip), *at))
                .chain(contents.cooling6.iter().map(|(ip, at)| cooling_entry(IpAddr::V6(*ip), *at)))
                .collect(),
        };
        let json = serde_json::to_vec(&data).map_err(|e| err(e.into()))?;
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = self.path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let mut file = File::create(&tmp).map_err(err)?;
        file.write_all(&json).map_err(err)?;
        file.sync_all().map_err(err)?;
        Ok(tmp)
    }

    /// Second half: rename over the checkpoint, then fsync the directory.
    pub fn commit(&self, tmp: &Path) -> Result<(), CheckpointError> {
        let err =
            |source: std::io::Error| CheckpointError::Write { path: self.path.display().to_string(), source };
        fs::rename(tmp, &self.path).map_err(err)?;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

fn entry<A: Copy + Into<IpAddr>>(a: &Allocation<A>) -> Entry {
    let ip: IpAddr = a.ip.into();
    Entry {
        network_name: a.key.network_name.clone(),
        container_id: a.key.container_id.clone(),
        if_name: a.key.if_name.clone(),
        ipv4: ip.is_ipv4().then(|| ip.to_string()),
        ipv6: ip.is_ipv6().then(|| ip.to_string()),
        allocation_timestamp: i64::try_from(a.allocated_at).unwrap_or(i64::MAX),
        metadata: Metadata {
            namespace: a.pod.namespace.clone(),
            name: a.pod.name.clone(),
            interfaces_count: None,
        },
    }
}

/// Parses and validates a checkpoint's bytes; `path` is only used in errors.
pub fn parse(path: &str, bytes: &[u8]) -> Result<Contents, CheckpointError> {
    let data: FileFormat = serde_json::from_slice(bytes)
        .map_err(|source| CheckpointError::Syntax { path: path.to_owned(), source })?;
    if data.version != VERSION {
        return Err(CheckpointError::Version { path: path.to_owned(), found: data.version });
    }
    let invalid = |index, field, problem: String| CheckpointError::Invalid {
        path: path.to_owned(),
        index,
        field,
        problem,
    };
    let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
    let mut by_key: HashMap<AllocKey, usize> = HashMap::new();
    let mut out = Contents::default();
    for (i, e) in data.allocations.into_iter().enumerate() {
        for (field, value) in
            [("networkName", &e.network_name), ("containerID", &e.container_id), ("ifName", &e.if_name)]
        {
            if value.is_empty() {
                return Err(invalid(i, field, "must not be empty".into()));
            }
        }
        let (ip, field) = match (&e.ipv4, &e.ipv6) {
            (Some(v4), None) => (
                IpAddr::V4(
                    v4.parse().map_err(|_| invalid(i, "ipv4", format!("`{v4}` is not an IPv4 address")))?,
                ),
                "ipv4",
            ),
            (None, Some(v6)) => (
                IpAddr::V6(
                    v6.parse().map_err(|_| invalid(i, "ipv6", format!("`{v6}` is not an IPv6 address")))?,
                ),
                "ipv6",
            ),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    i,
                    "ipv6",
                    "an allocation has one address, ipv4 or ipv6, not both".into(),
                ))
            }
            (None, None) => return Err(invalid(i, "ipv4", "missing: an allocation needs an address".into())),
        };
        let allocated_at = u64::try_from(e.allocation_timestamp).map_err(|_| {
            invalid(
                i,
                "allocationTimestamp",
                format!("{}: expected Unix nanoseconds >= 0", e.allocation_timestamp),
            )
        })?;
        let key = AllocKey { network_name: e.network_name, container_id: e.container_id, if_name: e.if_name };
        if let Some(j) = by_ip.insert(ip, i) {
            return Err(invalid(i, field, format!("{ip} is already allocated to allocations[{j}]")));
        }
        if let Some(j) = by_key.insert(key.clone(), i) {
            return Err(invalid(
                i,
                "containerID",
                format!("same (networkName, containerID, ifName) as allocations[{j}]"),
            ));
        }
        let pod = PodRef { namespace: e.metadata.namespace, name: e.metadata.name };
        match ip {
            IpAddr::V4(ip) => out.allocations.push(Allocation { key, ip, pod, allocated_at }),
            IpAddr::V6(ip) => out.allocations6.push(Allocation { key, ip, pod, allocated_at }),
        }
    }
    if !out.allocations.is_empty() && !out.allocations6.is_empty() {
        return Err(invalid(
            out.allocations.len(),
            "ipv6",
            "IPv4 and IPv6 allocations in one file: a node runs one family".into(),
        ));
    }
    for (index, c) in data.cooldown.into_iter().enumerate() {
        let invalid =
            |field, problem| CheckpointError::InvalidCooling { path: path.to_owned(), index, field, problem };
        let at = u64::try_from(c.released_at).map_err(|_| {
            invalid("releasedAt", format!("{}: expected Unix nanoseconds >= 0", c.released_at))
        })?;
        match (&c.ipv4, &c.ipv6) {
            (Some(v4), None) => out.cooling.push((
                v4.parse().map_err(|_| invalid("ipv4", format!("`{v4}` is not an IPv4 address")))?,
                at,
            )),
            (None, Some(v6)) => out.cooling6.push((
                v6.parse().map_err(|_| invalid("ipv6", format!("`{v6}` is not an IPv6 address")))?,
                at,
            )),
            _ => return Err(invalid("ipv4", "expected one address, ipv4 or ipv6".into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As upstream aws-node writes it (Go's encoding/json, field order of its structs).
    const UPSTREAM: &str = r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"3f1e0c0b7a2d","ifName":"eth0","ipv4":"10.0.1.5","allocationTimestamp":1732600000123456789,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-1"}},{"networkName":"aws-cni","containerID":"9a8b7c6d5e4f","ifName":"eth0","ipv4":"10.0.1.6","allocationTimestamp":1732600001000000000,"metadata":{"k8sPodNamespace":"kube-system","k8sPodName":"coredns-abc","interfacesCount":1}}]}"#;

    fn err(text: &str) -> String {
        parse("ipam.json", text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn reads_what_upstream_writes() {
        let a = parse("ipam.json", UPSTREAM.as_bytes()).unwrap().allocations;
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].ip, Ipv4Addr::new(10, 0, 1, 5));
        assert_eq!(a[0].key.container_id, "3f1e0c0b7a2d");
        assert_eq!(a[0].allocated_at, 1_732_600_000_123_456_789);
        assert_eq!(a[1].pod, PodRef { namespace: "kube-system".into(), name: "coredns-abc".into() });
    }

    #[test]
    fn writes_what_upstream_reads_and_round_trips() {
        let a = parse("ipam.json", UPSTREAM.as_bytes()).unwrap().allocations;
        let dir = std::env::temp_dir().join(format!("eg-ckpt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let c = Checkpoint::new(dir.join("ipam.json"));
        let v4 =
            |allocations: Vec<Allocation>, cooling| Contents { allocations, cooling, ..Default::default() };
        c.write(&v4(a.clone(), vec![])).unwrap();
        let text = fs::read_to_string(c.path()).unwrap();
        assert!(text.starts_with(r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"3f1e0c0b7a2d","ifName":"eth0","ipv4":"10.0.1.5","allocationTimestamp":1732600000123456789,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-1"}}"#), "{text}");
        assert!(!text.contains("eniguardCooldown"), "an empty cooldown list is omitted: {text}");
        assert_eq!(c.read().unwrap().unwrap(), v4(a.clone(), vec![]));
        let cooling = vec![(Ipv4Addr::new(10, 0, 1, 9), 1_732_600_002_000_000_000)];
        c.write(&v4(a.clone(), cooling.clone())).unwrap();
        let text = fs::read_to_string(c.path()).unwrap();
        assert!(
            text.ends_with(r#"],"eniguardCooldown":[{"ipv4":"10.0.1.9","releasedAt":1732600002000000000}]}"#),
            "{text}"
        );
        assert_eq!(c.read().unwrap().unwrap(), v4(a, cooling));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// An IPv6 node's file, as upstream's IPv6 mode writes it.
    const UPSTREAM6: &str = r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni","containerID":"5b7e2f","ifName":"eth0","ipv6":"2600:1f14:abc:de01:1::2","allocationTimestamp":1732600000123456789,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web-6"}}]}"#;

    #[test]
    fn ipv6_allocations_read_write_and_round_trip() {
        let read = parse("ipam.json", UPSTREAM6.as_bytes()).unwrap();
        assert!(read.allocations.is_empty());
        assert_eq!(read.allocations6.len(), 1);
        assert_eq!(read.allocations6[0].ip, "2600:1f14:abc:de01:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(read.allocations6[0].pod.name, "web-6");
        let dir = std::env::temp_dir().join(format!("eg-ckpt6-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let c = Checkpoint::new(dir.join("ipam.json"));
        let contents = Contents {
            cooling6: vec![("2600:1f14:abc:de01:1::1".parse().unwrap(), 1_732_600_002_000_000_000)],
            ..read
        };
        c.write(&contents).unwrap();
        let text = fs::read_to_string(c.path()).unwrap();
        assert!(text.starts_with(&UPSTREAM6[..UPSTREAM6.len() - 2]), "upstream's bytes: {text}");
        assert!(
            text.ends_with(
                r#""eniguardCooldown":[{"ipv6":"2600:1f14:abc:de01:1::1","releasedAt":1732600002000000000}]}"#
            ),
            "{text}"
        );
        assert_eq!(c.read().unwrap().unwrap(), contents);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            err(&UPSTREAM6.replace("de01:1::2", "de01:1::zz")),
            "ipam.json: allocations[0].ipv6: `2600:1f14:abc:de01:1::zz` is not an IPv6 address"
        );
        assert_eq!(
            err(&UPSTREAM6.replace(r#""ipv6""#, r#""ipv4":"10.0.1.5","ipv6""#)),
            "ipam.json: allocations[0].ipv6: an allocation has one address, ipv4 or ipv6, not both"
        );
        let mixed = UPSTREAM.replacen("]}", &format!(",{}]}}", &UPSTREAM6[43..UPSTREAM6.len() - 2]), 1);
        assert_eq!(
            err(&mixed),
            "ipam.json: allocations[2].ipv6: IPv4 and IPv6 allocations in one file: a node runs one family"
        );
    }

    #[test]
    fn broken_files_are_rejected_with_the_place_and_reason() {
        assert!(err("not json").contains("not a valid checkpoint"));
        assert!(err(&UPSTREAM[..UPSTREAM.len() / 2]).contains("EOF"));
        assert_eq!(
            err(&UPSTREAM.replace("vpc-cni-ipam/1", "vpc-cni-ipam/2")),
            "ipam.json: version: `vpc-cni-ipam/2`, expected `vpc-cni-ipam/1`"
        );
        assert_eq!(
            err(&UPSTREAM.replace("10.0.1.6", "10.0.1.5")),
            "ipam.json: allocations[1].ipv4: 10.0.1.5 is already allocated to allocations[0]"
        );
        assert_eq!(
            err(&UPSTREAM.replace("10.0.1.6", "10.0.1.600")),
            "ipam.json: allocations[1].ipv4: `10.0.1.600` is not an IPv4 address"
        );
        assert!(err(&UPSTREAM.replace("9a8b7c6d5e4f", "3f1e0c0b7a2d")).contains("allocations[1].containerID"));
        assert!(err(&UPSTREAM.replace("1732600001000000000", "-5")).contains("allocationTimestamp"));
        assert!(err(r#"{"version":"vpc-cni-ipam/1"}"#).contains("allocations"));
        let cool = |entry: &str| UPSTREAM.replacen("]}", &format!(r#"],"eniguardCooldown":[{entry}]}}"#), 1);
        let _ = parse("ipam.json", cool(r#"{"ipv4":"10.0.1.9","releasedAt":5}"#).as_bytes()).unwrap();
        assert_eq!(
            err(&cool(r#"{"ipv4":"10.0.1.999","releasedAt":5}"#)),
            "ipam.json: eniguardCooldown[0].ipv4: `10.0.1.999` is not an IPv4 address"
        );
        assert_eq!(
            err(&cool(r#"{"ipv4":"10.0.1.9","releasedAt":-1}"#)),
            "ipam.json: eniguardCooldown[0].releasedAt: -1: expected Unix nanoseconds >= 0"
        );
    }
}
