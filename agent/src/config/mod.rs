//! The agent's configuration: the environment variables of upstream's aws-node (same names, same
//! defaults: upstream's README and pkg/ipamd) and eniguard's own under `ENIGUARD_`, parsed once
//! into one validated struct. A bad value is an error naming the variable, the value and what was
//! expected, before anything talks to EC2 or Kubernetes.
//!
//! Booleans accept what Go's `strconv.ParseBool` accepts (upstream reads them with it): `1`, `t`,
//! `T`, `TRUE`, `true`, `True` and the same for false. Where upstream tolerates a value and falls
//! back (a negative `WARM_ENI_TARGET`, `MAX_ENI` below 1), so does eniguard, and
//! `eniguard agent --print-config` shows the value in effect.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use crate::ipam::{
    checkpoint::DEFAULT_PATH as DEFAULT_BACKING_STORE,
    model::{Cidr, CidrError},
};

/// Upstream's default for ENI_CONFIG_LABEL_DEF and ENI_CONFIG_ANNOTATION_DEF.
pub const DEFAULT_ENI_CONFIG_KEY: &str = "k8s.amazonaws.com/eniConfig";
pub const DEFAULT_METRICS_ADDRESS: &str = ":61678";
pub const DEFAULT_INTROSPECTION_ADDRESS: &str = "127.0.0.1:61679";
/// AWS_VPC_ENI_MTU's range for IPv4 and its default (jumbo frames inside a VPC).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9001;
pub const DEFAULT_MTU: u32 = 9001;
/// Upstream's AWS_VPC_K8S_CNI_CONNMARK.
pub const DEFAULT_CONNMARK: u32 = 0x80;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}=`{value}`: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

/// AWS_VPC_K8S_CNI_RANDOMIZESNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomizeSnat {
    /// `--random-fully` (upstream's default).
    Prng,
    /// `--random`.
    HashRandom,
    None,
}

/// POD_SECURITY_GROUP_ENFORCING_MODE (also on the agent-to-plugin wire, as `strict` or
/// `standard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcingMode {
    /// Branch-ENI pods talk only through their branch ENI (upstream's default).
    Strict,
    /// Branch-ENI pods may also reach node-local endpoints through the host.
    Standard,
}

/// NETWORK_POLICY_ENFORCING_MODE: what the network-policy agent is told for each pod (upstream's
/// values; the plugin passes the name on as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkPolicyMode {
    Standard,
    Strict,
    None,
}

impl NetworkPolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Strict => "strict",
            Self::None => "none",
        }
    }
}

/// ENIGUARD_GUARD_MODE: what the egress guard does with a violation on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardMode {
    Off,
    /// Count and report (the default).
    Monitor,
    /// Count, report and drop.
    Enforce,
}

/// ENIGUARD_EC2_PACING: how EC2 calls are retried when the account's request buckets run dry
/// (`RequestLimitExceeded`) or EC2 answers 5xx (README, "A fleet under EC2's shared buckets").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ec2Pacing {
    /// Full-jitter backoff from 200 ms, capped at 2 s, up to 30 attempts (the default).
    Paced,
    /// The SDK's adaptive mode (client-side rate limiting after the first throttle), 10 attempts.
    Adaptive,
    /// The SDK's standard mode as upstream's client has it: 3 attempts, 1 s doubling to 20 s.
    Standard,
}

/// Everything the agent reads from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG (false).
    pub custom_networking: bool,
    /// ENI_CONFIG_LABEL_DEF.
    pub eni_config_label: String,
    /// ENI_CONFIG_ANNOTATION_DEF.
    pub eni_config_annotation: String,
    /// ENABLE_POD_ENI (false): security groups for pods.
    pub pod_eni: bool,
    /// ENABLE_PREFIX_DELEGATION (false).
    pub prefix_delegation: bool,
    /// ENABLE_IPv4 (true) and ENABLE_IPv6 (false): the pods' address family, exactly one of the
    /// two (upstream's `isConfigValid`, see [`Config::check_family`]).
    pub ipv4: bool,
    pub ipv6: bool,
    /// ENABLE_V4_EGRESS (true): IPv4 egress for IPv6 pods (only read in IPv6 mode).
    pub v4_egress: bool,
    /// ENABLE_V6_EGRESS (false): IPv6 egress for IPv4 pods (only read in IPv4 mode, and only
    /// in effect when the instance has an IPv6 address, as upstream).
    pub v6_egress: bool,
    /// WARM_ENI_TARGET (1; negative means 1, as upstream).
    pub warm_eni_target: u32,
    /// WARM_IP_TARGET (unset = 0).
    pub warm_ip_target: u32,
    /// MINIMUM_IP_TARGET (unset = 0).
    pub minimum_ip_target: u32,
    /// WARM_PREFIX_TARGET (0, upstream's code default; its manifest sets 1).
    pub warm_prefix_target: u32,
    /// MAX_ENI (-1 = the instance type's limit; values below 1 are ignored, as upstream).
    pub max_eni: Option<u32>,
    /// IP_COOLDOWN_PERIOD in seconds (30).
    pub ip_cooldown: Duration,
    /// AWS_VPC_K8S_CNI_BACKING_STORE: the IPAM checkpoint.
    pub backing_store: PathBuf,
    /// AWS_VPC_ENI_MTU (9001).
    pub eni_mtu: u32,
    /// POD_MTU (defaults to the ENI MTU).
    pub pod_mtu: u32,
    /// AWS_VPC_K8S_CNI_VETHPREFIX (`eni`).
    pub veth_prefix: String,
    /// AWS_VPC_K8S_CNI_EXTERNALSNAT (false).
    pub external_snat: bool,
    /// AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS (comma-separated).
    pub exclude_snat_cidrs: Vec<Cidr>,
    /// AWS_VPC_K8S_CNI_RANDOMIZESNAT (`prng`).
    pub randomize_snat: RandomizeSnat,
    /// AWS_VPC_CNI_NODE_PORT_SUPPORT (true): connections that arrive on the primary ENI for a
    /// local address are marked, so that pods' replies leave through the primary ENI.
    pub node_port_support: bool,
    /// AWS_VPC_K8S_CNI_CONNMARK (`0x80`): the connection mark (and packet mark) for those and for
    /// SNATed connections.
    pub connmark: u32,
    /// AWS_EXTERNAL_SERVICE_CIDRS (comma-separated): destinations always routed through the main
    /// table (services outside the VPC reached through the primary ENI).
    pub external_service_cidrs: Vec<Cidr>,
    /// ENABLE_SUBNET_DISCOVERY (true): without custom networking, new ENIs go to the opted-in
    /// subnet of the node's VPC and AZ with the most free addresses (the node's own included).
    pub subnet_discovery: bool,
    /// NETWORK_POLICY_ENFORCING_MODE (unset: the network-policy agent is never called).
    pub network_policy_mode: Option<NetworkPolicyMode>,
    /// POD_SECURITY_GROUP_ENFORCING_MODE (`strict`).
    pub pod_sg_enforcing_mode: EnforcingMode,
    /// DISABLE_LEAKED_ENI_CLEANUP (false).
    pub disable_leaked_eni_cleanup: bool,
    /// MANAGE_UNTAGGED_ENI (true).
    pub manage_untagged_eni: bool,
    /// AWS_MANAGE_ENIS_NON_SCHEDULABLE (false).
    pub manage_enis_non_schedulable: bool,
    /// CLUSTER_NAME (tags created ENIs when set).
    pub cluster_name: Option<String>,
    /// ADDITIONAL_ENI_TAGS: a JSON object of string values; no key may contain
    /// `k8s.amazonaws.com` (upstream's reserved tags).
    pub additional_eni_tags: BTreeMap<String, String>,
    /// MY_NODE_NAME (the downward API's spec.nodeName).
    pub node_name: Option<String>,
    /// DISABLE_METRICS (false).
    pub disable_metrics: bool,
    /// METRICS_BIND_ADDRESS (`:61678`).
    pub metrics_bind_address: String,
    /// DISABLE_INTROSPECTION (false).
    pub disable_introspection: bool,
    /// INTROSPECTION_BIND_ADDRESS (`127.0.0.1:61679`).
    pub introspection_bind_address: String,
    /// AWS_VPC_K8S_PLUGIN_LOG_FILE (`/var/log/aws-routed-eni/plugin.log`; `stderr` allowed).
    pub plugin_log_file: String,
    /// AWS_VPC_K8S_PLUGIN_LOG_LEVEL (`Debug`).
    pub plugin_log_level: String,
    /// AWS_VPC_K8S_CNI_LOGLEVEL (`DEBUG`).
    pub log_level: LogLevel,
    /// AWS_VPC_K8S_CNI_LOG_FILE (unset: stderr).
    pub log_file: LogFile,
    /// AWS_EC2_ENDPOINT: the EC2 endpoint (unset: the SDK's own resolution).
    pub ec2_endpoint: Option<String>,
    /// HTTP_TIMEOUT in seconds (10; below 10 means 10, as upstream): per EC2 request attempt.
    pub http_timeout: Duration,
    /// CLUSTER_ENDPOINT: the API server's URL (unset: in-cluster or KUBECONFIG).
    pub cluster_endpoint: Option<String>,
    /// ANNOTATE_POD_IP (false): `vpc.amazonaws.com/pod-ips` on each pod.
    pub annotate_pod_ip: bool,
    /// ENABLE_BANDWIDTH_PLUGIN (false): chain `bandwidth` in the conflist.
    pub bandwidth_plugin: bool,
    /// DISABLE_POD_V6 (false): chain `tuning` in the conflist with IPv6 off in the pod.
    pub disable_pod_v6: bool,
    /// DISABLE_TCP_EARLY_DEMUX (false): set net.ipv4.tcp_early_demux=0 at start.
    pub disable_tcp_early_demux: bool,
    /// DISABLE_NETWORK_RESOURCE_PROVISIONING (false; true with IMDS-only mode): nothing is
    /// created, assigned, released or tagged in EC2.
    pub disable_provisioning: bool,
    /// ENABLE_IMDS_ONLY_MODE (false): no EC2 call at all.
    pub imds_only: bool,
    /// ENIGUARD_GUARD_MODE (`monitor`).
    pub guard_mode: GuardMode,
    /// ENIGUARD_EC2_PACING (`paced`).
    pub ec2_pacing: Ec2Pacing,
    /// ENIGUARD_SG_AUDIT_INTERVAL (seconds, `3600`): how often every ENI's security groups are
    /// read from EC2 for drift (one DescribeNetworkInterfaces each time).
    pub sg_audit_interval: Duration,
    /// Variables deprecated upstream that are set (logged once at start).
    pub deprecated_set: Vec<&'static str>,
}

/// AWS_VPC_K8S_CNI_LOGLEVEL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }

    /// The tracing filter: eniguard's own records at this level; its libraries' at most at
    /// info (their debug records are not ipamd's).
    pub fn filter(self) -> &'static str {
        match self {
            Self::Debug => "info,eniguard=debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error | Self::Fatal => "error",
        }
    }
}

/// AWS_VPC_K8S_CNI_LOG_FILE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFile {
    Stdout,
    Stderr,
    /// Appended to (the directory is created).
    Path(PathBuf),
}

impl std::fmt::Display for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Stderr => f.write_str("stderr"),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

pub mod variables;

pub use variables::{NotYet, DEPRECATED, NOT_YET, VARIABLES};

/// Reads variables through `get` (the process environment, or a map in tests).
struct Reader<F> {
    get: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The variable's value; unset and empty both count as unset (as upstream's `os.Getenv`).
    fn raw(&self, var: &str) -> Option<String> {
        (self.get)(var).filter(|v| !v.is_empty())
    }

    fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var).as_deref() {
            None => Ok(default),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
            Some(other) => Err(bad(var, other, "true or false")),
        }
    }

    /// See [`NOT_YET`] and [`DEPRECATED`].
    fn refuse_what_is_not_done_yet(&self) -> Result<(), ConfigError> {
        for n in NOT_YET {
            let Some(v) = self.raw(n.var) else { continue };
            let harmless = n.harmless;
            if self.bool(n.var, harmless)? != harmless {
                return Err(bad(n.var, &v, &format!("{harmless}: eniguard does not {} yet", n.needs)));
            }
        }
        Ok(())
    }

    /// An http(s) URL (unset: None).
    fn url(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.raw(var) else { return Ok(None) };
        let t = v.trim();
        let host = t.strip_prefix("https://").or_else(|| t.strip_prefix("http://"));
        let ok = host
            .is_some_and(|h| !h.is_empty() && !h.starts_with(['/', ':']) && !h.contains(char::is_whitespace));
        if ok {
            Ok(Some(t.to_owned()))
        } else {
            Err(bad(
                var,
                &v,
                "an http:// or https:// URL with a host, such as https://ec2.us-west-2.amazonaws.com",
            ))
        }
    }

    /// Comma-separated IPv4 CIDRs (unset: none).
    fn cidrs(&self, var: &'static str) -> Result<Vec<Cidr>, ConfigError> {
        let Some(v) = self.raw(var) else { return Ok(Vec::new()) };
        v.split(',').map(str::trim).filter(|c| !c.is_empty()).map(|c| parse_cidr(var, c)).collect()
    }

    /// A mark as upstream reads it (Go's base-0 integers: `0x80`, `128`, `0o200`, `0b…`), 1 to
    /// 2^32-1.
    fn mark(&self, var: &'static str, default: u32) -> Result<u32, ConfigError> {
        let Some(v) = self.raw(var) else { return Ok(default) };
        let t = v.trim().to_owned();
        let (digits, radix) = match t.get(..2).map(str::to_ascii_lowercase).as_deref() {
            Some("0x") => (&t[2..], 16),
            Some("0o") => (&t[2..], 8),
            Some("0b") => (&t[2..], 2),
            _ if t.len() > 1 && t.starts_with('0') => (&t[1..], 8),
            _ => (t.as_str(), 10),
        };
        u32::from_str_radix(digits, radix)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| bad(var, &v, "a mark from 1 to 0xffffffff, such as 0x80"))
    }

    fn int(&self, var: &'static str) -> Result<Option<i64>, ConfigError> {
        self.raw(var).map(|v| v.trim().parse::<i64>().map_err(|_| bad(var, &v, "an integer"))).transpose()
    }

    /// A count: unset → `default`, negative → `negative` (upstream's fallback), too large → error.
    fn count(&self, var: &'static str, default: u32, negative: u32) -> Result<u32, ConfigError> {
        match self.int(var)? {
            None => Ok(default),
            Some(n) if n < 0 => Ok(negative),
            Some(n) => u32::try_from(n).map_err(|_| bad(var, &n.to_string(), "a count below 2^32")),
        }
    }

    fn string(&self, var: &'static str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_owned())
    }

    fn choice<T: Copy>(
        &self,
        var: &'static str,
        default: T,
        options: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(v) = self.raw(var) else { return Ok(default) };
        options.iter().find(|(name, _)| name.eq_ignore_ascii_case(v.trim())).map(|(_, t)| *t).ok_or_else(
            || {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                bad(var, &v, &format!("one of {}", names.join(", ")))
            },
        )
    }

    fn mtu(&self, var: &'static str, default: u32) -> Result<u32, ConfigError> {
        let mtu = self.count(var, default, u32::MAX)?;
        if MTU_RANGE.contains(&mtu) {
            Ok(mtu)
        } else {
            let value = self.raw(var).unwrap_or_default();
            Err(bad(var, &value, &format!("an MTU from {} to {}", MTU_RANGE.start(), MTU_RANGE.end())))
        }
    }
}

fn bad(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError { var, value: value.to_owned(), expected: expected.to_owned() }
}

fn parse_cidr(var: &'static str, s: &str) -> Result<Cidr, ConfigError> {
    if !s.contains('/') {
        return Err(bad(var, s, "comma-separated IPv4 CIDRs such as 10.0.0.0/16"));
    }
    s.parse().map_err(|e: CidrError| match e {
        CidrError::Syntax | CidrError::Syntax6 => {
            bad(var, s, "comma-separated IPv4 CIDRs such as 10.0.0.0/16")
        }
        CidrError::HostBits => bad(var, s, "a CIDR without host bits (the network address)"),
    })
}

impl Config {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any lookup of variable → value.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { get };
        r.refuse_what_is_not_done_yet()?;
        let eni_mtu = r.mtu("AWS_VPC_ENI_MTU", DEFAULT_MTU)?;
        let veth_prefix = r.string("AWS_VPC_K8S_CNI_VETHPREFIX", "eni");
        // Upstream's rule: at most 4 characters, and not a prefix the node's own links use.
        if veth_prefix.len() > 4
            || !veth_prefix.chars().all(|c| c.is_ascii_alphanumeric())
            || ["eth", "vlan", "lo"].contains(&veth_prefix.as_str())
        {
            return Err(bad(
                "AWS_VPC_K8S_CNI_VETHPREFIX",
                &veth_prefix,
                "1 to 4 letters or digits, other than eth, vlan or lo",
            ));
        }
        let exclude_snat_cidrs = r.cidrs("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS")?;
        let additional_eni_tags = match r.raw("ADDITIONAL_ENI_TAGS") {
            None => BTreeMap::new(),
            Some(v) => {
                let tags: BTreeMap<String, String> = serde_json::from_str(&v)
                    .map_err(|_| bad("ADDITIONAL_ENI_TAGS", &v, "a JSON object of string values"))?;
                if let Some(k) = tags.keys().find(|k| k.contains("k8s.amazonaws.com")) {
                    return Err(bad(
                        "ADDITIONAL_ENI_TAGS",
                        &v,
                        &format!("tag keys without `k8s.amazonaws.com` (`{k}` is reserved)"),
                    ));
                }
                tags
            }
        };
        let imds_only = r.bool("ENABLE_IMDS_ONLY_MODE", false)?;
        if imds_only && r.bool("ENABLE_POD_ENI", false)? {
            return Err(bad(
                "ENABLE_IMDS_ONLY_MODE",
                "true",
                "false with ENABLE_POD_ENI=true (IMDS cannot tell the trunk ENI from the others)",
            ));
        }
        let max_eni = match r.int("MAX_ENI")? {
            Some(n) if n >= 1 => {
                Some(u32::try_from(n).map_err(|_| bad("MAX_ENI", &n.to_string(), "a count below 2^32"))?)
            }
            _ => None,
        };
        let config = Self {
            custom_networking: r.bool("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", false)?,
            eni_config_label: r.string("ENI_CONFIG_LABEL_DEF", DEFAULT_ENI_CONFIG_KEY),
            eni_config_annotation: r.string("ENI_CONFIG_ANNOTATION_DEF", DEFAULT_ENI_CONFIG_KEY),
            pod_eni: r.bool("ENABLE_POD_ENI", false)?,
            prefix_delegation: r.bool("ENABLE_PREFIX_DELEGATION", false)?,
            ipv4: r.bool("ENABLE_IPv4", true)?,
            ipv6: r.bool("ENABLE_IPv6", false)?,
            v4_egress: r.bool("ENABLE_V4_EGRESS", true)?,
            v6_egress: r.bool("ENABLE_V6_EGRESS", false)?,
            warm_eni_target: r.count("WARM_ENI_TARGET", 1, 1)?,
            warm_ip_target: r.count("WARM_IP_TARGET", 0, 0)?,
            minimum_ip_target: r.count("MINIMUM_IP_TARGET", 0, 0)?,
            warm_prefix_target: r.count("WARM_PREFIX_TARGET", 0, 0)?,
            max_eni,
            ip_cooldown: Duration::from_secs(u64::from(r.count("IP_COOLDOWN_PERIOD", 30, 30)?)),
            backing_store: PathBuf::from(r.string("AWS_VPC_K8S_CNI_BACKING_STORE", DEFAULT_BACKING_STORE)),
            eni_mtu,
            pod_mtu: r.mtu("POD_MTU", eni_mtu)?,
            veth_prefix,
            external_snat: r.bool("AWS_VPC_K8S_CNI_EXTERNALSNAT", false)?,
            exclude_snat_cidrs,
            randomize_snat: r.choice(
                "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
                RandomizeSnat::Prng,
                &[
                    ("prng", RandomizeSnat::Prng),
                    ("hashrandom", RandomizeSnat::HashRandom),
                    ("none", RandomizeSnat::None),
                ],
            )?,
            node_port_support: r.bool("AWS_VPC_CNI_NODE_PORT_SUPPORT", true)?,
            connmark: r.mark("AWS_VPC_K8S_CNI_CONNMARK", DEFAULT_CONNMARK)?,
            external_service_cidrs: r.cidrs("AWS_EXTERNAL_SERVICE_CIDRS")?,
            subnet_discovery: r.bool("ENABLE_SUBNET_DISCOVERY", true)?,
            network_policy_mode: r
                .raw("NETWORK_POLICY_ENFORCING_MODE")
                .map(|_| {
                    r.choice(
                        "NETWORK_POLICY_ENFORCING_MODE",
                        NetworkPolicyMode::Standard,
                        &[
                            ("standard", NetworkPolicyMode::Standard),
                            ("strict", NetworkPolicyMode::Strict),
                            ("none", NetworkPolicyMode::None),
                        ],
                    )
                })
                .transpose()?,
            pod_sg_enforcing_mode: r.choice(
                "POD_SECURITY_GROUP_ENFORCING_MODE",
                EnforcingMode::Strict,
                &[("strict", EnforcingMode::Strict), ("standard", EnforcingMode::Standard)],
            )?,
            // As upstream: IMDS-only mode implies both.
            disable_leaked_eni_cleanup: r.bool("DISABLE_LEAKED_ENI_CLEANUP", false)? || imds_only,
            manage_untagged_eni: r.bool("MANAGE_UNTAGGED_ENI", true)?,
            manage_enis_non_schedulable: r.bool("AWS_MANAGE_ENIS_NON_SCHEDULABLE", false)?,
            cluster_name: r.raw("CLUSTER_NAME"),
            additional_eni_tags,
            node_name: r.raw("MY_NODE_NAME"),
            disable_metrics: r.bool("DISABLE_METRICS", false)?,
            metrics_bind_address: r.string("METRICS_BIND_ADDRESS", DEFAULT_METRICS_ADDRESS),
            disable_introspection: r.bool("DISABLE_INTROSPECTION", false)?,
            introspection_bind_address: r.string("INTROSPECTION_BIND_ADDRESS", DEFAULT_INTROSPECTION_ADDRESS),
            plugin_log_file: r.string("AWS_VPC_K8S_PLUGIN_LOG_FILE", "/var/log/aws-routed-eni/plugin.log"),
            plugin_log_level: r
                .choice(
                    "AWS_VPC_K8S_PLUGIN_LOG_LEVEL",
                    "Debug",
                    &[("Debug", "Debug"), ("Info", "Info"), ("Warn", "Warn"), ("Error", "Error")],
                )?
                .to_owned(),
            log_level: r.choice(
                "AWS_VPC_K8S_CNI_LOGLEVEL",
                LogLevel::Debug,
                &[
                    ("DEBUG", LogLevel::Debug),
                    ("INFO", LogLevel::Info),
                    ("WARN", LogLevel::Warn),
                    ("ERROR", LogLevel::Error),
                    ("FATAL", LogLevel::Fatal),
                ],
            )?,
            log_file: match r.raw("AWS_VPC_K8S_CNI_LOG_FILE").as_deref().map(str::trim) {
                None | Some("stderr") => LogFile::Stderr,
                Some("stdout") => LogFile::Stdout,
                Some(p) if p.starts_with('/') => LogFile::Path(PathBuf::from(p)),
                Some(p) => {
                    return Err(bad("AWS_VPC_K8S_CNI_LOG_FILE", p, "stdout, stderr or an absolute path"))
                }
            },
            ec2_endpoint: r.url("AWS_EC2_ENDPOINT")?,
            http_timeout: Duration::from_secs(u64::from(r.count("HTTP_TIMEOUT", 10, 10)?.max(10))),
            cluster_endpoint: r.url("CLUSTER_ENDPOINT")?,
            annotate_pod_ip: r.bool("ANNOTATE_POD_IP", false)?,
            bandwidth_plugin: r.bool("ENABLE_BANDWIDTH_PLUGIN", false)?,
            disable_pod_v6: r.bool("DISABLE_POD_V6", false)?,
            disable_tcp_early_demux: r.bool("DISABLE_TCP_EARLY_DEMUX", false)?,
            disable_provisioning: r.bool("DISABLE_NETWORK_RESOURCE_PROVISIONING", false)? || imds_only,
            imds_only,
            guard_mode: r.choice(
                "ENIGUARD_GUARD_MODE",
                GuardMode::Monitor,
                &[("off", GuardMode::Off), ("monitor", GuardMode::Monitor), ("enforce", GuardMode::Enforce)],
            )?,
            ec2_pacing: r.choice(
                "ENIGUARD_EC2_PACING",
                Ec2Pacing::Paced,
                &[
                    ("paced", Ec2Pacing::Paced),
                    ("adaptive", Ec2Pacing::Adaptive),
                    ("standard", Ec2Pacing::Standard),
                ],
            )?,
            sg_audit_interval: match r.count("ENIGUARD_SG_AUDIT_INTERVAL", 3600, 0)? {
                n if n >= 10 => Duration::from_secs(u64::from(n)),
                n => return Err(bad("ENIGUARD_SG_AUDIT_INTERVAL", &n.to_string(), "seconds, at least 10")),
            },
            deprecated_set: DEPRECATED.iter().copied().filter(|v| r.raw(v).is_some()).collect(),
        };
        config.check_family()?;
        Ok(config)
    }

    /// Upstream's `isConfigValid` for the address family (exactly one of IPv4 and IPv6; IPv6 with
    /// prefix delegation and without custom networking), and IPv6 turned off in pods that need
    /// it, each refused by name.
    fn check_family(&self) -> Result<(), ConfigError> {
        let with_v6 = "with ENABLE_IPv6=true";
        match (self.ipv4, self.ipv6) {
            (true, true) => Err(bad(
                "ENABLE_IPv4",
                "true",
                &format!("false {with_v6} (a node runs one address family, as upstream; dual stack is not supported)"),
            )),
            (false, false) => Err(bad("ENABLE_IPv4", "false", "true, or ENABLE_IPv6=true (a node runs one address family)")),
            (false, true) if !self.prefix_delegation => Err(bad(
                "ENABLE_PREFIX_DELEGATION",
                "false",
                &format!("true {with_v6} (IPv6 pods get /128s from a /80 prefix, as upstream)"),
            )),
            (false, true) if self.custom_networking => Err(bad(
                "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
                "true",
                &format!("false {with_v6} (custom networking has no IPv6 mode, as upstream)"),
            )),
            (false, true) if self.disable_pod_v6 => {
                Err(bad("DISABLE_POD_V6", "true", &format!("false {with_v6} (IPv6 pods need IPv6)")))
            }
            (true, false) if self.disable_pod_v6 && self.v6_egress => Err(bad(
                "DISABLE_POD_V6",
                "true",
                "false with ENABLE_V6_EGRESS=true (the pods' IPv6 egress needs IPv6 in the pod)",
            )),
            (false, true) | (true, false) => Ok(()),
        }
    }

    /// Every variable with the value in effect, in [`VARIABLES`] order (`--print-config`).
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let b = |v: bool| v.to_string();
        let values = [
            b(self.custom_networking),
            self.eni_config_label.clone(),
            self.eni_config_annotation.clone(),
            b(self.pod_eni),
            b(self.prefix_delegation),
            b(self.ipv4),
            b(self.ipv6),
            b(self.v4_egress),
            b(self.v6_egress),
            self.warm_eni_target.to_string(),
            self.warm_ip_target.to_string(),
            self.minimum_ip_target.to_string(),
            self.warm_prefix_target.to_string(),
            self.max_eni.map_or_else(|| "-1".to_owned(), |n| n.to_string()),
            self.ip_cooldown.as_secs().to_string(),
            self.backing_store.display().to_string(),
            self.eni_mtu.to_string(),
            self.pod_mtu.to_string(),
            self.veth_prefix.clone(),
            b(self.external_snat),
            self.exclude_snat_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            match self.randomize_snat {
                RandomizeSnat::Prng => "prng",
                RandomizeSnat::HashRandom => "hashrandom",
                RandomizeSnat::None => "none",
            }
            .to_owned(),
            b(self.node_port_support),
            format!("{:#x}", self.connmark),
            self.external_service_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            self.network_policy_mode.map(NetworkPolicyMode::as_str).unwrap_or_default().to_owned(),
            b(self.subnet_discovery),
            match self.pod_sg_enforcing_mode {
                EnforcingMode::Strict => "strict",
                EnforcingMode::Standard => "standard",
            }
            .to_owned(),
            b(self.disable_leaked_eni_cleanup),
            b(self.manage_untagged_eni),
            b(self.manage_enis_non_schedulable),
            self.cluster_name.clone().unwrap_or_default(),
            if self.additional_eni_tags.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&self.additional_eni_tags).unwrap_or_default()
            },
            self.node_name.clone().unwrap_or_default(),
            b(self.disable_metrics),
            self.metrics_bind_address.clone(),
            b(self.disable_introspection),
            self.introspection_bind_address.clone(),
            self.plugin_log_file.clone(),
            self.plugin_log_level.clone(),
            self.log_level.as_str().to_owned(),
            self.log_file.to_string(),
            self.ec2_endpoint.clone().unwrap_or_default(),
            self.http_timeout.as_secs().to_string(),
            self.cluster_endpoint.clone().unwrap_or_default(),
            b(self.annotate_pod_ip),
            b(self.bandwidth_plugin),
            b(self.disable_pod_v6),
            b(self.disable_tcp_early_demux),
            b(self.disable_provisioning),
            b(self.imds_only),
            match self.guard_mode {
                GuardMode::Off => "off",
                GuardMode::Monitor => "monitor",
                GuardMode::Enforce => "enforce",
            }
            .to_owned(),
            self.sg_audit_interval.as_secs().to_string(),
            match self.ec2_pacing {
                Ec2Pacing::Paced => "paced",
                Ec2Pacing::Adaptive => "adaptive",
                Ec2Pacing::Standard => "standard",
            }
            .to_owned(),
        ];
        VARIABLES.iter().map(|v| v.name).zip(values).collect()
    }
}

/// Where the agent keeps things on the host. Flags (so that several simulated nodes can run side
/// by side); the CNI directories also read upstream's variables.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct HostPaths {
    /// Where the conflist is written (`10-eniguard.conflist`); upstream's HOST_CNI_CONFDIR_PATH
    /// when the flag is not given.
    #[arg(long, env = "HOST_CNI_CONFDIR_PATH", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where the `eniguard-cni` plugin is installed; upstream's HOST_CNI_BIN_PATH when the flag
    /// is not given.
    #[arg(long, env = "HOST_CNI_BIN_PATH", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The agent's socket and state.
    #[arg(long, default_value = "/run/eniguard")]
    pub run_dir: PathBuf,
    /// eniguard's directory under bpffs.
    #[arg(long, default_value = crate::guard::pins::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// aws-node's run directory, shared with the network-policy agent: this agent serves
    /// `ipamd.sock` there and the plugin dials `npa.sock` there.
    #[arg(long, default_value = crate::netpol::DEFAULT_RUN_DIR)]
    pub aws_node_run_dir: PathBuf,
}

impl HostPaths {
    /// Each path as `--print-config` shows it, by flag.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        [
            ("--cni-conf-dir", &self.cni_conf_dir),
            ("--cni-bin-dir", &self.cni_bin_dir),
            ("--run-dir", &self.run_dir),
            ("--pin-dir", &self.pin_dir),
            ("--aws-node-run-dir", &self.aws_node_run_dir),
        ]
        .into_iter()
        .map(|(flag, p)| (flag, p.display().to_string()))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        parse(vars).unwrap_err().to_string()
    }

    /// Upstream variables eniguard does not act on yet: refused by name unless harmless.
    #[test]
    fn what_is_not_done_yet_is_refused_by_name() {
        let e = err(&[("ENABLE_MULTI_NIC", "TRUE")]);
        assert!(e.contains("ENABLE_MULTI_NIC") && e.contains("more than one network card"), "{e}");
        let e = err(&[("ENABLE_IMDS_ONLY_MODE", "1"), ("ENABLE_POD_ENI", "true")]);
        assert!(e.contains("ENABLE_IMDS_ONLY_MODE=`true`") && e.contains("trunk"), "{e}");
        let c = parse(&[("ENABLE_IMDS_ONLY_MODE", "1")]).unwrap();
        assert!(
            c.imds_only && c.disable_provisioning && c.disable_leaked_eni_cleanup,
            "implied, as upstream"
        );
        let c = parse(&[("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true")]).unwrap();
        assert!(c.disable_provisioning && !c.imds_only && !c.disable_leaked_eni_cleanup);
        let e = err(&[("ENABLE_V4_EGRESS", "yes")]);
        assert!(e.contains("ENABLE_V4_EGRESS=`yes`: expected true or false"), "{e}");
        // Upstream's defaults, in its spellings, change nothing and are accepted.
        let harmless = [
            ("ENABLE_IPv6", "false"),
            ("ENABLE_IPv4", "True"),
            ("ENABLE_MULTI_NIC", "0"),
            ("ENABLE_V4_EGRESS", "true"),
            ("AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER", "false"),
            ("ENABLE_NFTABLES", "true"),
        ];
        let c = parse(&harmless).unwrap();
        assert_eq!(c.deprecated_set, ["AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER", "ENABLE_NFTABLES"]);
    }

    /// Upstream's `isConfigValid`: one family; IPv6 with prefix delegation and without custom
    /// networking. What IPv6 mode does not do yet is refused by name too.
    #[test]
    fn ipv6_mode_is_checked_as_upstream_checks_it() {
        let c = parse(&[]).unwrap();
        assert!(c.ipv4 && !c.ipv6 && c.v4_egress, "upstream's defaults");
        let v6 = [("ENABLE_IPv6", "true"), ("ENABLE_IPv4", "false"), ("ENABLE_PREFIX_DELEGATION", "true")];
        let c = parse(&v6).unwrap();
        assert!(c.ipv6 && !c.ipv4 && c.prefix_delegation && c.v4_egress);
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars: BTreeMap<&str, &str> = v6.into_iter().collect();
            vars.extend(extra.iter().copied());
            err(&vars.into_iter().collect::<Vec<_>>())
        };
        for (extra, expected) in [
            (&[("ENABLE_IPv4", "true")][..], "ENABLE_IPv4=`true`: expected false with ENABLE_IPv6=true"),
            (&[("ENABLE_IPv6", "false")][..], "ENABLE_IPv4=`false`: expected true, or ENABLE_IPv6=true"),
            (
                &[("ENABLE_PREFIX_DELEGATION", "false")][..],
                "ENABLE_PREFIX_DELEGATION=`false`: expected true with ENABLE_IPv6=true",
            ),
            (
                &[("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")][..],
                "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=`true`: expected false",
            ),
        ] {
            let e = with(extra);
            assert!(e.contains(expected), "{extra:?}: {e}");
        }
        let e = err(&[("ENABLE_IPv6", "true")]);
        assert!(e.contains("ENABLE_IPv4=`true`: expected false with ENABLE_IPv6=true"), "{e}");
        // In IPv4 mode ENABLE_V4_EGRESS is not read (upstream's default is true).
        assert!(parse(&[("ENABLE_V4_EGRESS", "false")]).is_ok());
        let mut without_egress = v6.to_vec();
        without_egress.push(("ENABLE_V4_EGRESS", "false"));
        assert!(!parse(&without_egress).unwrap().v4_egress);
        let mut branch_pods = v6.to_vec();
        branch_pods.push(("ENABLE_POD_ENI", "true"));
        assert!(parse(&branch_pods).unwrap().pod_eni, "security groups for pods in IPv6 mode, as upstream");
        // DISABLE_POD_V6: IPv4 pods only, and not with their IPv6 egress.
        assert!(parse(&[("DISABLE_POD_V6", "true")]).unwrap().disable_pod_v6);
        let mut no_v6 = v6.to_vec();
        no_v6.push(("DISABLE_POD_V6", "true"));
        assert!(err(&no_v6).contains("DISABLE_POD_V6=`true`: expected false with ENABLE_IPv6=true"));
        let e = err(&[("DISABLE_POD_V6", "true"), ("ENABLE_V6_EGRESS", "true")]);
        assert!(e.contains("DISABLE_POD_V6=`true`: expected false with ENABLE_V6_EGRESS=true"), "{e}");
        assert!(parse(&[("ENABLE_V6_EGRESS", "true")]).unwrap().v6_egress);
        let e = err(&[("ENABLE_V6_EGRESS", "yes")]);
        assert!(e.contains("ENABLE_V6_EGRESS=`yes`"), "{e}");
    }

    #[test]
    fn logging_endpoints_and_node_variables_as_upstream_reads_them() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.log_level, &c.log_file), (LogLevel::Debug, &LogFile::Stderr));
        assert_eq!((c.ec2_endpoint.as_deref(), c.cluster_endpoint.as_deref()), (None, None));
        assert_eq!(c.http_timeout, Duration::from_secs(10));
        assert!(!c.annotate_pod_ip && !c.bandwidth_plugin && !c.disable_tcp_early_demux);
        let c = parse(&[
            ("AWS_VPC_K8S_CNI_LOGLEVEL", "warn"),
            ("AWS_VPC_K8S_CNI_LOG_FILE", "/host/var/log/aws-routed-eni/ipamd.log"),
            ("AWS_EC2_ENDPOINT", "http://127.0.0.1:8080"),
            ("HTTP_TIMEOUT", "30"),
            ("CLUSTER_ENDPOINT", "https://ABC.gr7.us-west-2.eks.amazonaws.com"),
            ("ANNOTATE_POD_IP", "true"),
            ("ENABLE_BANDWIDTH_PLUGIN", "true"),
            ("DISABLE_TCP_EARLY_DEMUX", "True"),
        ])
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.log_file, LogFile::Path("/host/var/log/aws-routed-eni/ipamd.log".into()));
        assert_eq!(c.ec2_endpoint.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(c.http_timeout, Duration::from_secs(30));
        assert!(c.cluster_endpoint.is_some() && c.annotate_pod_ip && c.bandwidth_plugin);
        assert!(c.disable_tcp_early_demux);
        assert_eq!(parse(&[("AWS_VPC_K8S_CNI_LOG_FILE", "stdout")]).unwrap().log_file, LogFile::Stdout);
        // Upstream falls back to 10 s below 10.
        assert_eq!(parse(&[("HTTP_TIMEOUT", "3")]).unwrap().http_timeout, Duration::from_secs(10));
        for (var, value, says) in [
            ("AWS_VPC_K8S_CNI_LOGLEVEL", "trace", "one of DEBUG, INFO, WARN, ERROR, FATAL"),
            ("AWS_VPC_K8S_CNI_LOG_FILE", "ipamd.log", "stdout, stderr or an absolute path"),
            ("AWS_EC2_ENDPOINT", "ec2.internal", "an http:// or https:// URL"),
            ("CLUSTER_ENDPOINT", "https://", "an http:// or https:// URL"),
            ("HTTP_TIMEOUT", "ten", "an integer"),
        ] {
            let e = err(&[(var, value)]);
            assert!(e.starts_with(&format!("{var}=`{value}`: expected")) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn node_port_variables_as_upstream_reads_them() {
        let c = parse(&[]).unwrap();
        assert!(c.node_port_support);
        assert_eq!(c.connmark, 0x80);
        assert!(c.external_service_cidrs.is_empty());
        for (text, mark) in
            [("0x4000", 0x4000), ("128", 128), ("0200", 0o200), ("0b1", 1), ("0xffffffff", u32::MAX)]
        {
            assert_eq!(parse(&[("AWS_VPC_K8S_CNI_CONNMARK", text)]).unwrap().connmark, mark, "{text}");
        }
        for bad in ["0", "-1", "0x100000000", "mark", "0x"] {
            let e = err(&[("AWS_VPC_K8S_CNI_CONNMARK", bad)]);
            assert!(e.contains("AWS_VPC_K8S_CNI_CONNMARK") && e.contains("0x80"), "{bad}: {e}");
        }
        let c = parse(&[
            ("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"),
            ("AWS_EXTERNAL_SERVICE_CIDRS", "192.0.2.0/24, 198.51.100.7/32"),
        ])
        .unwrap();
        assert!(!c.node_port_support);
        assert_eq!(
            c.external_service_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["192.0.2.0/24", "198.51.100.7/32"]
        );
        assert_eq!(parse(&[]).unwrap().network_policy_mode, None);
        assert_eq!(
            parse(&[("NETWORK_POLICY_ENFORCING_MODE", "Strict")]).unwrap().network_policy_mode,
            Some(NetworkPolicyMode::Strict)
        );
        let e = err(&[("NETWORK_POLICY_ENFORCING_MODE", "enforce")]);
        assert!(e.contains("NETWORK_POLICY_ENFORCING_MODE") && e.contains("standard, strict, none"), "{e}");
        let e = err(&[("AWS_EXTERNAL_SERVICE_CIDRS", "192.0.2.1/24")]);
        assert!(e.contains("AWS_EXTERNAL_SERVICE_CIDRS") && e.contains("host bits"), "{e}");
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = parse(&[]).unwrap();
        let e: BTreeMap<&str, String> = c.entries().into_iter().collect();
        assert_eq!(e.len(), VARIABLES.len());
        for (var, want) in [
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "false"),
            ("ENI_CONFIG_LABEL_DEF", "k8s.amazonaws.com/eniConfig"),
            ("WARM_ENI_TARGET", "1"),
            ("WARM_IP_TARGET", "0"),
            ("WARM_PREFIX_TARGET", "0"),
            ("MAX_ENI", "-1"),
            ("IP_COOLDOWN_PERIOD", "30"),
            ("AWS_VPC_K8S_CNI_BACKING_STORE", "/var/run/aws-node/ipam.json"),
            ("AWS_VPC_ENI_MTU", "9001"),
            ("POD_MTU", "9001"),
            ("AWS_VPC_K8S_CNI_VETHPREFIX", "eni"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "prng"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", "strict"),
            ("MANAGE_UNTAGGED_ENI", "true"),
            ("METRICS_BIND_ADDRESS", ":61678"),
            ("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:61679"),
            ("ENIGUARD_GUARD_MODE", "monitor"),
            ("ENIGUARD_SG_AUDIT_INTERVAL", "3600"),
            ("ENIGUARD_EC2_PACING", "paced"),
        ] {
            assert_eq!(e[var], want, "{var}");
        }
    }

    #[test]
    fn values_parse_as_upstream_reads_them() {
        let c = parse(&[
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "True"),
            ("ENABLE_POD_ENI", "1"),
            ("WARM_ENI_TARGET", "-3"),
            ("MAX_ENI", "0"),
            ("AWS_VPC_ENI_MTU", "1500"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.8.0.0/16, 192.168.0.0/24"),
            ("ADDITIONAL_ENI_TAGS", r#"{"team":"net"}"#),
            ("ENIGUARD_GUARD_MODE", "ENFORCE"),
        ])
        .unwrap();
        assert!(c.custom_networking && c.pod_eni);
        assert_eq!(c.warm_eni_target, 1, "negative means 1, as upstream");
        assert_eq!(c.max_eni, None, "below 1 is ignored, as upstream");
        assert_eq!((c.eni_mtu, c.pod_mtu), (1500, 1500), "POD_MTU follows the ENI MTU");
        assert_eq!(c.exclude_snat_cidrs.len(), 2);
        assert_eq!(c.additional_eni_tags["team"], "net");
        assert_eq!(c.guard_mode, GuardMode::Enforce);
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_what_was_expected() {
        assert_eq!(err(&[("ENABLE_POD_ENI", "yes")]), "ENABLE_POD_ENI=`yes`: expected true or false");
        assert_eq!(err(&[("WARM_IP_TARGET", "five")]), "WARM_IP_TARGET=`five`: expected an integer");
        assert_eq!(
            err(&[("AWS_VPC_ENI_MTU", "9500")]),
            "AWS_VPC_ENI_MTU=`9500`: expected an MTU from 576 to 9001"
        );
        assert_eq!(err(&[("POD_MTU", "100")]), "POD_MTU=`100`: expected an MTU from 576 to 9001");
        assert!(
            err(&[("AWS_VPC_K8S_CNI_VETHPREFIX", "ethx1")]).starts_with("AWS_VPC_K8S_CNI_VETHPREFIX=`ethx1`")
        );
        assert!(err(&[("AWS_VPC_K8S_CNI_VETHPREFIX", "eth")]).contains("other than eth"));
        assert_eq!(
            err(&[("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.0.0.1/16")]),
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS=`10.0.0.1/16`: expected a CIDR without host bits (the network address)"
        );
        assert!(err(&[("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "fast")])
            .ends_with("expected one of prng, hashrandom, none"));
        assert!(err(&[("POD_SECURITY_GROUP_ENFORCING_MODE", "loose")]).contains("one of strict, standard"));
        assert!(err(&[("ADDITIONAL_ENI_TAGS", "team=net")]).contains("a JSON object of string values"));
        assert!(
            err(&[("ADDITIONAL_ENI_TAGS", r#"{"node.k8s.amazonaws.com/x":"y"}"#)]).contains("is reserved")
        );
        assert!(err(&[("ENIGUARD_GUARD_MODE", "drop")]).contains("one of off, monitor, enforce"));
        assert_eq!(
            err(&[("ENIGUARD_SG_AUDIT_INTERVAL", "5")]),
            "ENIGUARD_SG_AUDIT_INTERVAL=`5`: expected seconds, at least 10"
        );
        assert!(err(&[("MAX_ENI", "99999999999")]).contains("MAX_ENI"));
    }
}
