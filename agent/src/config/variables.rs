//! Every upstream aws-node variable and what eniguard does with it: read with upstream's meaning
//! ([`VARIABLES`], in `--print-config` order), read by a flag's or a library's standard
//! ([`ELSEWHERE`]), refused by name unless harmless ([`NOT_YET`]) or deprecated upstream too
//! ([`DEPRECATED`]). The README's variable table is generated from these lists ([`markdown`]) and
//! a test keeps the two equal.

/// One variable as the README's table shows it.
#[derive(Clone, Copy, Debug)]
pub struct Var {
    pub name: &'static str,
    /// Upstream's default (`-` when upstream has none).
    pub upstream_default: &'static str,
    /// What eniguard does with it.
    pub eniguard: &'static str,
    /// The tests that show it (unit tests by function name, privileged tests by harness name).
    pub shown_by: &'static str,
}

const fn var(
    name: &'static str,
    upstream_default: &'static str,
    eniguard: &'static str,
    shown_by: &'static str,
) -> Var {
    Var { name, upstream_default, eniguard, shown_by }
}

/// Every variable the agent reads, in the order `--print-config` prints them.
#[rustfmt::skip]
pub const VARIABLES: &[Var] = &[
    var("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "false", "custom networking: ENIs in the ENIConfig's subnet with its groups, no pod addresses on the primary ENI; told to the Resource Controller before security groups for pods", "agent_incident_order"),
    var("ENI_CONFIG_LABEL_DEF", "k8s.amazonaws.com/eniConfig", "the node label naming its ENIConfig", "agent_incident_order"),
    var("ENI_CONFIG_ANNOTATION_DEF", "k8s.amazonaws.com/eniConfig", "the node annotation naming its ENIConfig (wins over the label)", "first_match_wins_in_upstreams_order"),
    var("ENABLE_POD_ENI", "false", "security groups for pods: the CNINode feature (after custom networking), branch pods through the trunk", "agent_incident_order cni_branch_pods_strict_and_standard"),
    var("ENABLE_PREFIX_DELEGATION", "false", "/28 prefixes instead of secondary addresses", "agent_warm_pool_rows"),
    var("ENABLE_IPv4", "true", "IPv4 pods; false only with ENABLE_IPv6=true (one family per node, as upstream)", "ipv6_mode_is_checked_as_upstream_checks_it"),
    var("ENABLE_IPv6", "false", "IPv6 pods: /128s from one /80 on the primary ENI, no warm pool; needs ENABLE_IPv4=false and ENABLE_PREFIX_DELEGATION=true, refused with custom networking (as upstream); with ENABLE_POD_ENI, branch pods get their branch ENI's IPv6 address through the trunk", "agent_ipv6_node containerd_ipv6_pod agent_ipv6_branch_pod cni_branch_pods_strict_and_standard"),
    var("ENABLE_V4_EGRESS", "true", "IPv6 mode: each pod also gets `v4if0` with a host-local address of 169.254.172.0/22, SNATed to the node's IPv4 (read in IPv6 mode only)", "agent_ipv6_node"),
    var("ENABLE_V6_EGRESS", "false", "IPv4 mode: each pod also gets `v6if0` with a host-local address of fd00::ac:0/118, SNATed to the node's IPv6, and IPv6 off on its eth0 (read in IPv4 mode only; off, with a warning, when the instance has no IPv6 address, as upstream)", "agent_v6_egress"),
    var("WARM_ENI_TARGET", "1", "as upstream (negative means 1)", "agent_warm_pool_rows"),
    var("WARM_IP_TARGET", "-", "as upstream", "agent_warm_pool_rows"),
    var("MINIMUM_IP_TARGET", "-", "as upstream", "agent_warm_pool_rows"),
    var("WARM_PREFIX_TARGET", "0", "as upstream", "agent_warm_pool_rows"),
    var("MAX_ENI", "-1", "as upstream (below 1: the instance type's limit)", "agent_unknown_type_and_shrink"),
    var("IP_COOLDOWN_PERIOD", "30", "seconds a released address rests before reuse", "agent_follows_ec2_and_its_pods"),
    var("AWS_VPC_K8S_CNI_BACKING_STORE", "/var/run/aws-node/ipam.json", "the checkpoint, in upstream's format", "containerd_restart_keeps_pods"),
    var("AWS_VPC_ENI_MTU", "9001", "the ENIs' MTU (576-9001)", "cni_pods_per_version"),
    var("POD_MTU", "AWS_VPC_ENI_MTU", "the pods' MTU", "cni_pods_per_version"),
    var("AWS_VPC_K8S_CNI_VETHPREFIX", "eni", "host-side veth names", "cni_pods_per_version"),
    var("AWS_VPC_K8S_CNI_EXTERNALSNAT", "false", "no SNAT for traffic leaving the VPC", "cni_external_snat"),
    var("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "-", "destinations never SNATed", "cni_external_snat"),
    var("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "prng", "SNAT port selection", "values_parse_as_upstream_reads_them"),
    var("AWS_VPC_CNI_NODE_PORT_SUPPORT", "true", "NodePort replies from pods on secondary ENIs leave through the primary ENI", "cni_node_port_local"),
    var("AWS_VPC_K8S_CNI_CONNMARK", "0x80", "the connection mark for NodePort and SNAT", "node_port_variables_as_upstream_reads_them cni_node_port_local"),
    var("AWS_EXTERNAL_SERVICE_CIDRS", "-", "destinations always routed through the main table", "node_port_variables_as_upstream_reads_them"),
    var("NETWORK_POLICY_ENFORCING_MODE", "standard", "passed to the network-policy agent on every ADD; unset: it is not called", "cni_network_policy_agent"),
    var("ENABLE_SUBNET_DISCOVERY", "true", "new ENIs in the opted-in subnet with the most free addresses", "cni_subnet_discovery"),
    var("POD_SECURITY_GROUP_ENFORCING_MODE", "strict", "branch pods' host routing", "cni_branch_pods_strict_and_standard"),
    var("DISABLE_LEAKED_ENI_CLEANUP", "false", "as upstream", "agent_follows_ec2_and_its_pods"),
    var("MANAGE_UNTAGGED_ENI", "true", "ENIs without eniguard's or upstream's tag are left alone when false", "agent_pre_fix_node"),
    var("AWS_MANAGE_ENIS_NON_SCHEDULABLE", "false", "a cordoned node gets no new ENI unless true", "agent_cordoned_node_gets_no_new_eni"),
    var("CLUSTER_NAME", "-", "tags created ENIs; restricts discovered subnets", "cni_subnet_discovery"),
    var("ADDITIONAL_ENI_TAGS", "-", "tags on created ENIs (no k8s.amazonaws.com keys)", "values_parse_as_upstream_reads_them"),
    var("MY_NODE_NAME", "-", "the node (downward API)", "agent_incident_order"),
    var("DISABLE_METRICS", "false", "no metrics endpoint", "prints_every_variable_with_the_value_in_effect"),
    var("METRICS_BIND_ADDRESS", "-", "eniguard's (upstream always serves :61678): the metrics address, default `:61678`", "agent_local_api"),
    var("DISABLE_INTROSPECTION", "false", "no introspection endpoint", "prints_every_variable_with_the_value_in_effect"),
    var("INTROSPECTION_BIND_ADDRESS", "127.0.0.1:61679", "health and introspection", "agent_local_api"),
    var("AWS_VPC_K8S_PLUGIN_LOG_FILE", "/var/log/aws-routed-eni/plugin.log", "the plugin's log (`stderr` allowed)", "cni_bad_input"),
    var("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", "Debug", "the plugin's log level", "cni_bad_input"),
    var("AWS_VPC_K8S_CNI_LOGLEVEL", "DEBUG", "the agent's log level (DEBUG, INFO, WARN, ERROR, FATAL); RUST_LOG wins when set", "agent_upstream_variables"),
    var("AWS_VPC_K8S_CNI_LOG_FILE", "/host/var/log/aws-routed-eni/ipamd.log", "the agent's log: `stdout`, `stderr` or a file (appended, not rotated); unset: stderr, for `kubectl logs` (deliberately not upstream's default)", "agent_upstream_variables"),
    var("AWS_EC2_ENDPOINT", "-", "the EC2 endpoint (the SDK's AWS_ENDPOINT_URL_EC2 is read when this is unset)", "agent_upstream_variables"),
    var("HTTP_TIMEOUT", "10", "seconds per EC2 request attempt (below 10: 10, as upstream)", "agent_upstream_variables"),
    var("CLUSTER_ENDPOINT", "-", "the API server's URL instead of the in-cluster or kubeconfig one", "agent_upstream_variables"),
    var("ANNOTATE_POD_IP", "false", "`vpc.amazonaws.com/pod-ips` set on ADD before the reply, blanked on DEL", "containerd_annotation_and_bandwidth"),
    var("ENABLE_BANDWIDTH_PLUGIN", "false", "`bandwidth` chained in the conflist (it must be in the CNI bin dir)", "containerd_annotation_and_bandwidth"),
    var("DISABLE_POD_V6", "false", "`tuning` chained last in the conflist with net.ipv6.conf.{all,default,lo}.disable_ipv6=1 in the pod, as upstream (it must be in the CNI bin dir); refused in IPv6 mode and with ENABLE_V6_EGRESS", "containerd_disable_pod_v6"),
    var("DISABLE_TCP_EARLY_DEMUX", "false", "net.ipv4.tcp_early_demux=0 at start when true", "agent_upstream_variables"),
    var("DISABLE_NETWORK_RESOURCE_PROVISIONING", "false", "no ENI or address is created, assigned, released or tagged: the pool is what is attached (EC2 is still read)", "agent_without_provisioning"),
    var("ENABLE_IMDS_ONLY_MODE", "false", "no EC2 call at all: ENIs and addresses as IMDS shows them; implies the two above and DISABLE_LEAKED_ENI_CLEANUP; refused with ENABLE_POD_ENI (IMDS cannot tell a trunk)", "agent_without_provisioning"),
    var("ENIGUARD_GUARD_MODE", "-", "eniguard's: the egress guard (off, monitor, enforce; default monitor)", "live_pre_fix_pod_caught_and_enforce_survives_restarts"),
    var("ENIGUARD_SG_AUDIT_INTERVAL", "-", "eniguard's: seconds between security-group audits (default 3600)", "live_drift_is_caught"),
    var("ENIGUARD_EC2_PACING", "-", "eniguard's: EC2 retries under throttling (paced, adaptive, standard; default paced)", "agent_under_buckets_and_describe_lag"),
];

/// Upstream variables read where eniguard's flag or library reads its own.
#[rustfmt::skip]
pub const ELSEWHERE: &[Var] = &[
    var("HOST_CNI_BIN_PATH", "/host/opt/cni/bin", "the default of `--cni-bin-dir` (the flag wins)", "host_paths_have_upstream_like_defaults_and_flags_override_them"),
    var("HOST_CNI_CONFDIR_PATH", "/host/etc/cni/net.d", "the default of `--cni-conf-dir` (the flag wins)", "host_paths_have_upstream_like_defaults_and_flags_override_them"),
    var("KUBECONFIG", "-", "read by kube-rs when not in a cluster", "agent_incident_order"),
];

/// An upstream variable eniguard does not act on yet: refused at start, by name, when set to
/// anything but a harmless value, so that a copied aws-node environment never changes less than
/// it says.
#[derive(Clone, Copy, Debug)]
pub struct NotYet {
    pub var: &'static str,
    /// The boolean (upstream's default, in any of upstream's spellings) it may be set to
    /// without changing anything.
    pub harmless: bool,
    /// What eniguard would have to do.
    pub needs: &'static str,
}

const fn not_yet(var: &'static str, harmless: bool, needs: &'static str) -> NotYet {
    NotYet { var, harmless, needs }
}

/// Upstream's variables that eniguard refuses unless harmless.
pub const NOT_YET: &[NotYet] = &[not_yet("ENABLE_MULTI_NIC", false, "use more than one network card")];

/// The tests that show [`NOT_YET`]'s refusals.
pub const NOT_YET_SHOWN_BY: &str = "what_is_not_done_yet_is_refused_by_name agent_bad_input";

/// Deprecated upstream and without effect there too: one log line when set.
pub const DEPRECATED: &[&str] = &["AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER", "ENABLE_NFTABLES"];

/// Upstream's variables: its README's list and those only its code reads.
pub const UPSTREAM: &[&str] = &[
    "AWS_MANAGE_ENIS_NON_SCHEDULABLE",
    "AWS_VPC_CNI_NODE_PORT_SUPPORT",
    "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
    "ENI_CONFIG_ANNOTATION_DEF",
    "ENI_CONFIG_LABEL_DEF",
    "HOST_CNI_BIN_PATH",
    "HOST_CNI_CONFDIR_PATH",
    "AWS_VPC_ENI_MTU",
    "AWS_VPC_K8S_CNI_EXTERNALSNAT",
    "AWS_VPC_K8S_CNI_RANDOMIZESNAT",
    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
    "POD_MTU",
    "WARM_ENI_TARGET",
    "WARM_IP_TARGET",
    "MINIMUM_IP_TARGET",
    "MAX_ENI",
    "AWS_VPC_K8S_CNI_LOGLEVEL",
    "AWS_VPC_K8S_CNI_LOG_FILE",
    "AWS_VPC_K8S_PLUGIN_LOG_FILE",
    "AWS_VPC_K8S_PLUGIN_LOG_LEVEL",
    "INTROSPECTION_BIND_ADDRESS",
    "DISABLE_INTROSPECTION",
    "DISABLE_METRICS",
    "AWS_VPC_K8S_CNI_VETHPREFIX",
    "ADDITIONAL_ENI_TAGS",
    "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER",
    "CLUSTER_NAME",
    "CLUSTER_ENDPOINT",
    "ENABLE_POD_ENI",
    "POD_SECURITY_GROUP_ENFORCING_MODE",
    "DISABLE_TCP_EARLY_DEMUX",
    "ENABLE_SUBNET_DISCOVERY",
    "ENABLE_PREFIX_DELEGATION",
    "WARM_PREFIX_TARGET",
    "DISABLE_NETWORK_RESOURCE_PROVISIONING",
    "ENABLE_BANDWIDTH_PLUGIN",
    "ANNOTATE_POD_IP",
    "ENABLE_IPv4",
    "ENABLE_IPv6",
    "ENABLE_NFTABLES",
    "AWS_EXTERNAL_SERVICE_CIDRS",
    "AWS_EC2_ENDPOINT",
    "DISABLE_LEAKED_ENI_CLEANUP",
    "ENABLE_V6_EGRESS",
    "ENABLE_V4_EGRESS",
    "IP_COOLDOWN_PERIOD",
    "DISABLE_POD_V6",
    "NETWORK_POLICY_ENFORCING_MODE",
    "ENABLE_IMDS_ONLY_MODE",
    "ENABLE_MULTI_NIC",
    // Read by upstream's code only.
    "AWS_VPC_K8S_CNI_BACKING_STORE",
    "MANAGE_UNTAGGED_ENI",
    "MY_NODE_NAME",
    "AWS_VPC_K8S_CNI_CONNMARK",
    "HTTP_TIMEOUT",
    "KUBECONFIG",
];

/// The README's table: every variable, upstream's default, what eniguard does, the tests that
/// show it.
pub fn markdown() -> String {
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let code = |s: &str| if s == "-" { "-".to_owned() } else { format!("`{s}`") };
    let tests = |s: &str| s.split_whitespace().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ");
    for v in VARIABLES.iter().chain(ELSEWHERE) {
        rows.push((v.name.to_owned(), code(v.upstream_default), v.eniguard.to_owned(), tests(v.shown_by)));
    }
    for n in NOT_YET {
        let harmless = n.harmless.to_string();
        rows.push((
            n.var.to_owned(),
            code(&harmless),
            format!("refused at start unless `{harmless}`: eniguard does not {} yet", n.needs),
            tests(NOT_YET_SHOWN_BY),
        ));
    }
    for d in DEPRECATED {
        rows.push((
            (*d).to_owned(),
            "-".to_owned(),
            "deprecated upstream, no effect: one log line".to_owned(),
            tests("what_is_not_done_yet_is_refused_by_name"),
        ));
    }
    let mut out =
        String::from("| Variable | Upstream's default | eniguard | Shown by |\n|---|---|---|---|\n");
    for (name, default, what, shown) in rows {
        out.push_str(&format!("| `{name}` | {default} | {what} | {shown} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn all_names() -> Vec<&'static str> {
        VARIABLES
            .iter()
            .chain(ELSEWHERE)
            .map(|v| v.name)
            .chain(NOT_YET.iter().map(|n| n.var))
            .chain(DEPRECATED.iter().copied())
            .collect()
    }

    #[test]
    fn every_upstream_variable_is_read_or_refused_exactly_once() {
        let names = all_names();
        for u in UPSTREAM {
            assert_eq!(names.iter().filter(|n| *n == u).count(), 1, "{u}");
        }
        for n in &names {
            let own = n.starts_with("ENIGUARD_") || *n == "METRICS_BIND_ADDRESS";
            assert!(UPSTREAM.contains(n) || own, "{n} is neither upstream's nor eniguard's");
        }
    }

    /// Every source file of the workspace, concatenated (to find test functions by name).
    fn sources(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with("target") {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }

    #[test]
    fn every_named_test_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut all = String::new();
        for d in ["agent", "tests"] {
            sources(&root.join(d), &mut all);
        }
        let named = VARIABLES.iter().chain(ELSEWHERE).map(|v| v.shown_by).chain([NOT_YET_SHOWN_BY]);
        for t in named.flat_map(str::split_whitespace) {
            assert!(
                all.contains(&format!("fn {t}(")) || all.contains(&format!("name: \"{t}\"")),
                "no test {t}"
            );
        }
    }

    /// The README's table is [`markdown`]'s; `ENIGUARD_BLESS=1` rewrites it.
    #[test]
    fn the_readme_table_is_generated() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let (start, end) = ("<!-- variables:begin -->\n", "<!-- variables:end -->");
        let a = readme.find(start).expect("README: no variables:begin marker") + start.len();
        let b = readme.find(end).expect("README: no variables:end marker");
        let table = markdown();
        if readme[a..b] != table {
            if std::env::var_os("ENIGUARD_BLESS").is_some() {
                std::fs::write(&path, format!("{}{table}{}", &readme[..a], &readme[b..])).unwrap();
            } else {
                panic!("README's variable table is stale; run with ENIGUARD_BLESS=1:\n{table}");
            }
        }
    }
}
