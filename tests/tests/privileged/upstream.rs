//! What a node's tools read from aws-node, read from eniguard: the `awscni_*` metrics (names,
//! types, label names, values that agree with the pool) in the classic text format and in
//! OpenMetrics, and upstream's introspection answers (here on a unix socket, as
//! INTROSPECTION_BIND_ADDRESS=unix:PATH allows).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context as _, Result};
use eniguard_tests::{agent::METRICS_PORT, http, netns::NetNs};
use serde_json::Value;

use crate::{
    cni::{Node, ENV},
    harness::Ctx,
};

/// Upstream's families (utils/prometheusmetrics, pkg/version): name, classic type, label names.
/// A family with labels appears with its first sample, upstream's and eniguard's alike: the
/// error counters only after an error, the reconcile counter after the first pass (60 s after
/// the start) ([`ONCE_IT_HAPPENS`]).
const UPSTREAM_FAMILIES: &[(&str, &str, &[&str])] = &[
    ("awscni_build_info", "gauge", &["goversion", "version"]),
    ("awscni_ipamd_error_count", "counter", &["fn"]),
    ("awscni_ipamd_action_inprogress", "gauge", &["fn"]),
    ("awscni_eni_max", "gauge", &[]),
    ("awscni_ip_max", "gauge", &[]),
    ("awscni_reconcile_count", "counter", &["fn"]),
    ("awscni_add_ip_req_count", "counter", &[]),
    ("awscni_del_ip_req_count", "counter", &["reason"]),
    ("awscni_aws_api_latency_ms", "summary", &["api", "error", "status"]),
    ("awscni_aws_api_error_count", "counter", &["api", "error"]),
    ("awscni_ec2api_req_count", "counter", &["fn"]),
    ("awscni_ec2api_error_count", "counter", &["fn"]),
    ("awscni_eni_allocated", "gauge", &[]),
    ("awscni_total_ip_addresses", "gauge", &[]),
    ("awscni_assigned_ip_addresses", "gauge", &[]),
    ("awscni_force_removed_enis", "counter", &[]),
    ("awscni_force_removed_ips", "counter", &[]),
    ("awscni_total_ipv4_prefixes", "gauge", &[]),
    ("awscni_assigned_ip_per_cidr", "gauge", &["cidr"]),
    ("awscni_no_available_ip_addresses", "counter", &[]),
    ("awscni_assigned_ip_per_eni", "gauge", &["eni"]),
    ("awscni_ipamd_startup_duration_seconds", "histogram", &["failure_reason", "success", "with_api_server"]),
    ("awscni_ipamd_node_initialization_duration_seconds", "histogram", &["success"]),
];

const ONCE_IT_HAPPENS: &[&str] = &[
    "awscni_ipamd_error_count",
    "awscni_aws_api_error_count",
    "awscni_ec2api_error_count",
    "awscni_reconcile_count",
];

/// Each family of a classic text exposition: its type and the label names its samples carry
/// (`le` and `quantile` aside), and each sample's value by its line's series.
struct Exposition {
    families: BTreeMap<String, (String, BTreeSet<String>)>,
    samples: BTreeMap<String, f64>,
}

fn parse(text: &str) -> Result<Exposition> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE line")?;
            families.insert(name.to_owned(), (kind.to_owned(), BTreeSet::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').context("sample line")?;
            samples.insert(series.to_owned(), value.parse()?);
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let family = families
                .keys()
                .filter(|f| name.starts_with(f.as_str()))
                .max_by_key(|f| f.len())
                .cloned()
                .with_context(|| format!("sample {name} before its TYPE"))?;
            let names = &mut families.get_mut(&family).context("family")?.1;
            for pair in labels.trim_end_matches('}').split(',').filter(|p| !p.is_empty()) {
                let key = pair.split_once('=').context("label")?.0;
                if key != "le" && key != "quantile" {
                    names.insert(key.to_owned());
                }
            }
        }
    }
    Ok(Exposition { families, samples })
}

impl Exposition {
    fn value(&self, series: &str) -> Result<f64> {
        self.samples.get(series).copied().with_context(|| format!("no series {series}"))
    }

    /// The sum of a family's samples named `name` exactly (any labels).
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(s, _)| s.split_once('{').map_or(s.as_str(), |(n, _)| n) == name)
            .map(|(_, v)| v)
            .sum()
    }
}

/// The Prometheus project's OpenMetrics parser (Debian's python3-prometheus-client) on `text`.
fn parses_as_openmetrics(text: &str) -> Result<()> {
    use std::io::Write as _;
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nprint(len(list(p(sys.stdin.read()))))";
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("/usr/bin/python3 (with python3-prometheus-client: `cargo xtask setup`)")?;
    child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "not valid OpenMetrics: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Two pods ADDed on a node with custom networking, security groups for pods and prefix
/// delegation; then every upstream family is exported with upstream's type and label names,
/// `promtool check metrics` passes, the values agree with the pool and with eniguard's own
/// metrics, an OpenMetrics scrape parses and keeps upstream's sample names; `/`, `/v1/enis`,
/// `/v1/eni-configs` and both env-settings answer in upstream's shape on a unix socket, and
/// `eniguard status` reads the agent there.
pub fn metrics_and_introspection(ctx: &mut Ctx) -> Result<()> {
    let socket_dir = std::env::temp_dir().join(format!("{}-upstream", ctx.prefix()));
    std::fs::create_dir_all(&socket_dir)?;
    let socket = format!("unix:{}", socket_dir.join("introspection.sock").display());
    let mut env = ENV.to_vec();
    env.push(("INTROSPECTION_BIND_ADDRESS", socket.as_str()));
    let node = Node::start(ctx, "cniup", &env)?;
    let mut pods = BTreeMap::new();
    for i in 0..2 {
        let pod_ns = NetNs::create(&format!("{}-pod{i}", node.prefix))?;
        let name = format!("web-{i}");
        let sandbox = node.sandbox(&format!("sandbox{i}"), &name, &pod_ns)?;
        let add = node.call("ADD", &sandbox, &node.conf("1.0.0", None))?;
        ensure!(add.success, "ADD {name}: {} {}", add.stdout, add.stderr);
        pods.insert(name, (crate::cni::pod_ip(&add.json())?, pod_ns));
    }
    // A third pod, ADDed and DELeted.
    let gone_ns = NetNs::create(&format!("{}-pod2", node.prefix))?;
    let gone = node.sandbox("sandbox2", "web-2", &gone_ns)?;
    for command in ["ADD", "DEL"] {
        let out = node.call(command, &gone, &node.conf("1.0.0", None))?;
        ensure!(out.success, "{command} web-2: {} {}", out.stdout, out.stderr);
    }

    // The classic text format, as curl and the cni-metrics-helper get it.
    let response = node.agent().get(METRICS_PORT, "/metrics")?;
    ensure!(
        response.contains("text/plain; version=0.0.4"),
        "{}",
        response.lines().take(8).collect::<Vec<_>>().join("\n")
    );
    crate::live_guard::promtool(&response)?;
    let m = parse(http::body(&response))?;
    for (name, kind, labels) in UPSTREAM_FAMILIES {
        let Some((got_kind, got_labels)) = m.families.get(*name) else {
            ensure!(ONCE_IT_HAPPENS.contains(name), "no family {name}");
            continue;
        };
        let want: BTreeSet<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        ensure!(
            got_kind == kind && *got_labels == want,
            "{name}: {got_kind} {got_labels:?}, want {kind} {want:?}"
        );
    }
    // The values, against the pool and eniguard's own metrics of the same thing.
    let assigned = m.value("awscni_assigned_ip_addresses")?;
    ensure!(assigned == 2.0, "assigned {assigned} for 2 pods");
    ensure!(
        m.value("eniguard_ipam_addresses{state=\"assigned\"}")? == assigned,
        "eniguard and awscni disagree"
    );
    let total = m.value("awscni_total_ip_addresses")?;
    ensure!(total == m.value("eniguard_ipam_addresses{state=\"total\"}")? && total >= 16.0, "total {total}");
    ensure!(
        m.sum("awscni_assigned_ip_per_cidr") == 2.0 && m.sum("awscni_assigned_ip_per_eni") == 2.0,
        "per CIDR/ENI"
    );
    let prefixes = m.value("awscni_total_ipv4_prefixes")?;
    ensure!(prefixes * 16.0 == total, "{prefixes} prefixes for {total} addresses");
    ensure!(m.value("awscni_eni_allocated")? == m.value("eniguard_ipam_enis")?, "ENIs");
    ensure!(
        m.value("awscni_eni_max")? == 3.0 && m.value("awscni_add_ip_req_count")? >= 2.0,
        "m5.large, 2 ADDs"
    );
    ensure!(m.value("awscni_ec2api_req_count{fn=\"DescribeNetworkInterfaces\"}")? >= 1.0, "EC2 calls");
    ensure!(
        m.value("awscni_aws_api_latency_ms_count{api=\"DescribeNetworkInterfaces\",error=\"false\",status=\"200\"}")? >= 1.0,
        "latency of the calls"
    );
    ensure!(m.value("awscni_ipamd_startup_duration_seconds_count{success=\"true\",with_api_server=\"true\",failure_reason=\"\"}")? == 1.0, "one start");

    // OpenMetrics, as Prometheus asks for it: valid, and upstream's counter names kept.
    let om = http::get_in_with(
        &node.ns,
        &format!("127.0.0.1:{METRICS_PORT}"),
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0\r\n",
    )?;
    ensure!(om.contains("application/openmetrics-text"), "not OpenMetrics");
    let body = http::body(&om);
    parses_as_openmetrics(body)?;
    ensure!(
        body.lines().any(|l| l.starts_with("awscni_add_ip_req_count ")),
        "awscni_add_ip_req_count renamed"
    );

    // Introspection, upstream's shape.
    let get = |path: &str| -> Result<Value> {
        let r = http::get_in(&node.ns, &socket, path)?;
        ensure!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        Ok(serde_json::from_str(http::body(&r))?)
    };
    let root = get("/")?;
    let commands: Vec<&str> = root["AvailableCommands"]
        .as_array()
        .context("AvailableCommands")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for p in ["/v1/enis", "/v1/eni-configs", "/v1/networkutils-env-settings", "/v1/ipamd-env-settings"] {
        ensure!(commands.contains(&p), "{p} not in {commands:?}");
    }
    ensure!(get("/v1/eni-configs")? == "us-west-2a", "the node's ENIConfig name");
    let ipamd = get("/v1/ipamd-env-settings")?;
    ensure!(ipamd["WARM_ENI_TARGET"] == 1 && ipamd["AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG"] == true, "{ipamd}");
    let net = get("/v1/networkutils-env-settings")?;
    ensure!(net["AWS_VPC_K8S_CNI_CONNMARK"] == 128 && net["AWS_VPC_K8S_CNI_VETHPREFIX"] == "eni", "{net}");
    // The Resource Controller attaches the trunk a moment after the node signals it.
    crate::live_guard::eventually("the trunk in /v1/enis", std::time::Duration::from_secs(30), || {
        let enis = get("/v1/enis")?;
        Ok(enis["0"]["ENIs"].as_object().is_some_and(|all| all.values().any(|e| e["IsTrunk"] == true)))
    })?;
    let enis = get("/v1/enis")?;
    let card = &enis["0"];
    // The pool may have grown since the scrape above (a warm prefix): against a scrape now.
    let total_now = parse(http::body(&node.agent().get(METRICS_PORT, "/metrics")?))?
        .value("awscni_total_ip_addresses")?;
    ensure!(
        card["TotalIPs"] == total_now as u64 && card["AssignedIPs"] == 2,
        "metrics: {total_now} total; {card}"
    );
    let all = card["ENIs"].as_object().context("ENIs")?;
    let trunk = all.values().find(|e| e["IsTrunk"] == true).context("the trunk ENI")?;
    ensure!(trunk["IsExcludedForPodIPs"] == true, "{trunk}");
    let primary = all.values().find(|e| e["IsPrimary"] == true).context("the primary ENI")?;
    ensure!(
        primary["IsExcludedForPodIPs"] == true && primary["DeviceNumber"] == 0,
        "custom networking: {primary}"
    );
    for (name, (ip, _)) in &pods {
        let eni = node.eni_holding(*ip)?;
        let id = eni.network_interface_id().context("id")?;
        let cidrs = all[id]["AvailableIPv4Cidrs"].as_object().context("AvailableIPv4Cidrs")?;
        let (_, cidr) = cidrs
            .iter()
            .find(|(_, c)| c["IPAddresses"].get(ip.to_string()).is_some())
            .with_context(|| format!("{ip} in no CIDR of {id}"))?;
        ensure!(
            cidr["IsPrefix"] == true && cidr["Cidr"]["Mask"] == "////8A==" && cidr["AddressFamily"] == "4",
            "{cidr}"
        );
        let a = &cidr["IPAddresses"][ip.to_string()];
        ensure!(
            a["IPAMKey"]["containerID"] == ""
                && a["IPAMKey"]["ifName"] == ""
                && a["IPAMKey"]["networkName"] == "aws-cni",
            "{a}"
        );
        ensure!(
            a["IPAMMetadata"]["k8sPodName"] == name.as_str() && a["UnassignedTime"] == "0001-01-01T00:00:00Z",
            "{a}"
        );
    }
    let status = crate::live_guard::cli(&node.ns, &["status", "--addr", &socket])?;
    ensure!(status.contains("ready"), "eniguard status over the unix socket: {status}");
    drop(node);
    let _ = std::fs::remove_dir_all(&socket_dir);
    Ok(())
}
