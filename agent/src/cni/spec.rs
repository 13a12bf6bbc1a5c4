//! The CNI calling convention as runtimes use it (the CNI spec's SPEC.md §2): the command and
//! its parameters in the environment, the network configuration on stdin, a result or an error as
//! JSON on stdout. Pure: the plugin binary reads its environment and stdin into these types and
//! writes what they render.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The versions the plugin speaks (the stock 10-aws.conflist says 0.4.0).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Where the agent listens when the configuration does not say (`--run-dir` default).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/eniguard/eniguard.sock";

/// The spec's error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const INTERNAL: u32 = 999;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// A CNI error, rendered as the spec's JSON on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: String::new() }
    }
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
    /// The JSON the runtime reads, in `cni_version` (the request's, when it could be read).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

/// The parameters the runtime passes in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub if_name: String,
    /// CNI_ARGS, `K=V;K=V` (containerd: IgnoreUnknown, K8S_POD_NAMESPACE, K8S_POD_NAME,
    /// K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID).
    pub args: BTreeMap<String, String>,
    pub path: Vec<String>,
}

impl Env {
    /// Reads the environment through `get`, requiring what Go's `skel` requires for the command.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_COMMAND=`{other}`: expected ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ))
            }
            None => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "required env variables [CNI_COMMAND] missing",
                ))
            }
        };
        let container = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut missing = Vec::new();
        let mut need = |k: &'static str, required: bool| {
            let v = var(k);
            if required && v.is_none() {
                missing.push(k);
            }
            v.unwrap_or_default()
        };
        let container_id = need("CNI_CONTAINERID", container);
        let netns = need("CNI_NETNS", matches!(command, Command::Add | Command::Check));
        let if_name = need("CNI_IFNAME", container);
        let path = need("CNI_PATH", command != Command::Version);
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("required env variables [{}] missing", missing.join(" ")),
            ));
        }
        if container && !valid_container_id(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_CONTAINERID=`{container_id}`: expected letters, digits, `_`, `.` or `-`, starting with a letter or digit"),
            ));
        }
        let mut args = BTreeMap::new();
        for pair in var("CNI_ARGS").unwrap_or_default().split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("CNI_ARGS: `{pair}` is not KEY=VALUE"),
                ));
            };
            args.insert(k.to_owned(), v.to_owned());
        }
        let path = path.split(':').filter(|p| !p.is_empty()).map(str::to_owned).collect();
        Ok(Self { command, container_id, netns, if_name, args, path })
    }

    /// The pod's namespace and name from CNI_ARGS (empty when the runtime is not Kubernetes).
    pub fn pod(&self) -> (String, String) {
        let get = |k: &str| self.args.get(k).cloned().unwrap_or_default();
        (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME"))
    }
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The plugin's configuration as the runtime derives it for this plugin (stdin).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The veth's MTU (upstream writes it as a string).
    #[serde(default, deserialize_with = "string_or_number")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub veth_prefix: Option<String>,
    #[serde(default)]
    pub pod_sg_enforcing_mode: Option<String>,
    #[serde(default)]
    pub plugin_log_file: Option<String>,
    #[serde(default)]
    pub plugin_log_level: Option<String>,
    /// The agent's local API socket (eniguard's own key; default [`DEFAULT_AGENT_SOCKET`]).
    #[serde(default)]
    pub agent_socket: Option<String>,
    /// aws-node's run directory, where the network-policy agent's `npa.sock` is (eniguard's own
    /// key; default `/var/run/aws-node`).
    #[serde(default)]
    pub aws_node_run_dir: Option<String>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// Anything else, passed through (the spec allows other keys).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error as _;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom("mtu: expected a positive integer")),
        Some(Value::String(s)) => {
            s.parse().map(Some).map_err(|_| D::Error::custom(format!("mtu: `{s}` is not an integer")))
        }
        Some(other) => Err(D::Error::custom(format!("mtu: expected an integer, got {other}"))),
    }
}

impl NetConf {
    /// Parses stdin; a version this plugin does not speak is code 1, bad JSON code 6.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE_FAILURE, format!("network configuration on stdin: {e}"))
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion `{}`: expected one of {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        Ok(conf)
    }
}

/// VERSION's answer.
pub fn version_reply(cni_version: &str) -> Value {
    json!({"cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS})
}

/// The version field of a VERSION request's stdin, tolerating an empty or partial one.
pub fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "1.1.0".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Env::parse(|k| map.get(k).cloned())
    }

    #[test]
    fn the_environment_is_read_as_skel_does() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.pod(), ("default".into(), "web".into()));
        assert_eq!(e.path, ["/opt/cni/bin", "/usr/lib/cni"]);
        // DEL needs no netns; VERSION needs nothing but the command.
        assert!(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x")
        ])
        .is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn bad_environments_name_what_is_wrong() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/x")]).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (4, "required env variables [CNI_CONTAINERID CNI_NETNS CNI_IFNAME] missing")
        );
        assert_eq!(env(&[]).unwrap_err().msg, "required env variables [CNI_COMMAND] missing");
        assert!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().msg.contains("CNI_COMMAND=`FROB`"));
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ])
        .unwrap_err();
        assert!(e.msg.starts_with("CNI_CONTAINERID=`-bad`"), "{}", e.msg);
        let e = env(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x"), ("CNI_ARGS", "novalue")]).unwrap_err();
        assert!(e.msg.contains("`novalue` is not KEY=VALUE"), "{}", e.msg);
    }

    #[test]
    fn configurations_parse_with_upstreams_string_mtu_and_unknown_versions_are_code_1() {
        let c = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"aws-cni","type":"eniguard-cni","mtu":"9001","vethPrefix":"eni","extra":{"k":1}}"#).unwrap();
        assert_eq!((c.mtu, c.veth_prefix.as_deref()), (Some(9001), Some("eni")));
        assert!(c.other.contains_key("extra"));
        assert_eq!(NetConf::parse(br#"{"cniVersion":"2.0.0","name":"n","type":"t"}"#).unwrap_err().code, 1);
        let e = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, 6);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}"#).unwrap_err();
        assert!(e.msg.contains("mtu: `big` is not an integer"), "{}", e.msg);
        assert_eq!(
            CniError::new(11, "later").to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":11,"msg":"later"})
        );
        assert_eq!(version_reply("1.1.0")["supportedVersions"][0], "0.4.0");
        assert_eq!(requested_version(b""), "1.1.0");
        assert_eq!(requested_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
    }
}
