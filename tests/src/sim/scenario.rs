//! Scenarios: a declarative description of a VPC and its EKS nodes (YAML, see
//! tests/scenarios/*.yaml), and the running simulator built from one: the EC2 API, one IMDS per
//! node, the Kubernetes API with the Node, ENIConfig and SecurityGroupPolicy objects, and the
//! Resource Controller. Names in the file (subnets, security groups) are resolved to the ids the
//! simulator gives them.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::json;

use super::{
    ec2::{Ec2, Timing},
    ec2_api::{self, Ec2Sim, Shared},
    fabric::Fabric,
    follower::{Follower, Snapshot},
    imds,
    kube_api::{self, Kube, ENICONFIGS, NODES, SECURITY_GROUP_POLICIES},
    rc,
};

/// The scenario `vpcsim` runs when given no file.
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/default.yaml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    #[serde(default = "default_region")]
    pub region: String,
    pub vpc: VpcSpec,
    pub subnets: Vec<SubnetSpec>,
    pub security_groups: Vec<String>,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub eni_configs: Vec<EniConfigSpec>,
    #[serde(default)]
    pub security_group_policies: Vec<PolicySpec>,
    /// How long after an attachment, or an address or prefix assignment, IMDS starts showing it.
    #[serde(default)]
    pub imds_propagation_delay_ms: u64,
    /// How long EC2 takes from `attaching` to `attached`.
    #[serde(default = "default_attach_delay")]
    pub attach_delay_ms: u64,
    /// How long EC2 takes to detach (the ENI stays in use, not deletable, until then).
    #[serde(default = "default_detach_delay")]
    pub detach_delay_ms: u64,
    /// EC2's account-wide request-token buckets (`default`, or `{scale: F}` to multiply every
    /// bucket's size and refill), shared by every node; off when absent.
    #[serde(default)]
    pub ec2_buckets: Option<BucketsSpec>,
    /// How long a new ENI, and a new attachment, stay out of DescribeNetworkInterfaces after
    /// the call that made them returned (EC2's eventual consistency).
    #[serde(default)]
    pub describe_lag_ms: u64,
}

/// `ec2Buckets`: `default`, or `{scale: F}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum BucketsSpec {
    Named(String),
    Scaled(ScaledBuckets),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaledBuckets {
    pub scale: f64,
}

impl BucketsSpec {
    /// The scale, or an error naming the field.
    pub fn scale(&self) -> Result<f64> {
        match self {
            Self::Named(n) if n == "default" => Ok(1.0),
            Self::Named(n) => bail!("ec2Buckets: `{n}` is neither `default` nor {{scale: F}}"),
            Self::Scaled(ScaledBuckets { scale }) if *scale > 0.0 && scale.is_finite() => Ok(*scale),
            Self::Scaled(ScaledBuckets { scale }) => {
                bail!("ec2Buckets.scale: {scale} is not a positive number")
            }
        }
    }
}

fn default_attach_delay() -> u64 {
    50
}

fn default_detach_delay() -> u64 {
    200
}

/// How often the simulator finishes attachments and detachments when no request comes.
const SETTLE_INTERVAL: Duration = Duration::from_millis(20);

fn default_region() -> String {
    "us-west-2".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VpcSpec {
    pub cidrs: Vec<String>,
    /// The VPC's IPv6 blocks (`2600:1f14:abc:de00::/56`, as Amazon gives them).
    #[serde(default)]
    pub ipv6_cidrs: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubnetSpec {
    pub name: String,
    pub az: String,
    pub cidr: String,
    /// The subnet's IPv6 /64, inside one of the VPC's `ipv6Cidrs`. Its instances get an IPv6
    /// address at launch, as an EKS IPv6 cluster's subnets must give them.
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
    /// The subnet's tags (`kubernetes.io/role/cni: "1"` opts it in to subnet discovery).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// Defaults to EC2's private DNS name, `ip-A-B-C-D.<region>.compute.internal`.
    #[serde(default)]
    pub name: Option<String>,
    pub instance_type: String,
    pub subnet: String,
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The kubelet's max-pods (status.capacity.pods), when set (EKS sets 110 with prefix
    /// delegation on an m5.large).
    #[serde(default)]
    pub max_pods: Option<u32>,
    /// N nodes like this one, named `<name>-0` … `<name>-<N-1>` (a fleet).
    #[serde(default)]
    pub count: Option<u32>,
}

impl NodeSpec {
    /// The nodes this entry stands for: itself, or `count` copies with numbered names.
    fn expand(&self) -> Vec<NodeSpec> {
        match self.count {
            None => vec![self.clone()],
            Some(n) => (0..n)
                .map(|k| NodeSpec {
                    name: self.name.as_ref().map(|name| format!("{name}-{k}")),
                    count: None,
                    ..self.clone()
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EniConfigSpec {
    pub name: String,
    pub subnet: String,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub name: String,
    /// matchLabels of the policy's podSelector.
    pub pod_selector: BTreeMap<String, String>,
    pub security_groups: Vec<String>,
}

impl PolicySpec {
    /// A policy named `name` in `namespace` that selects pods labelled `app: <name>` and gives
    /// them the scenario's group `group`.
    pub fn for_app(namespace: &str, name: &str, group: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            pod_selector: [("app".to_owned(), name.to_owned())].into(),
            security_groups: vec![group.into()],
        }
    }
}

fn default_namespace() -> String {
    "default".into()
}

impl Scenario {
    pub fn parse(yaml: &str) -> Result<Self> {
        serde_yaml::from_str(yaml).context("scenario file")
    }

    pub fn default_scenario() -> Self {
        // The embedded file is checked by a unit test.
        Self::parse(DEFAULT_SCENARIO).unwrap_or_else(|e| panic!("tests/scenarios/default.yaml: {e:#}"))
    }
}

/// `a.b.c.d/n` as (network, prefix length), with the field named in the error.
pub fn parse_cidr(field: &str, s: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, len) =
        s.split_once('/').with_context(|| format!("{field}: `{s}` is not an IPv4 CIDR (a.b.c.d/n)"))?;
    let ip: Ipv4Addr = ip.parse().with_context(|| format!("{field}: `{ip}` is not an IPv4 address"))?;
    let len: u8 = len.parse().ok().filter(|l| (16..=28).contains(l)).with_context(|| {
        format!("{field}: prefix length `/{len}` is outside /16../28, what EC2 allows for a subnet")
    })?;
    if u32::from(ip) & !(u32::MAX >> len) != u32::from(ip) {
        bail!("{field}: `{s}` has host bits set");
    }
    Ok((ip, len))
}

/// An IPv6 CIDR as (network, prefix length) with its length in `lengths`, the field named in
/// the error.
pub fn parse_cidr6(field: &str, s: &str, lengths: std::ops::RangeInclusive<u8>) -> Result<Cidr6> {
    let (ip, len) =
        s.split_once('/').with_context(|| format!("{field}: `{s}` is not an IPv6 CIDR (address/length)"))?;
    let ip: Ipv6Addr = ip.parse().with_context(|| format!("{field}: `{ip}` is not an IPv6 address"))?;
    let len: u8 = len.parse().ok().filter(|l| lengths.contains(l)).with_context(|| {
        format!("{field}: prefix length `/{len}` is outside /{}../{}", lengths.start(), lengths.end())
    })?;
    if u128::from(ip) & !(u128::MAX >> len) != u128::from(ip) {
        bail!("{field}: `{s}` has host bits set");
    }
    Ok((ip, len))
}

/// An IPv6 CIDR: network and prefix length.
pub type Cidr6 = (Ipv6Addr, u8);

/// The VPC's IPv6 blocks, and each subnet's /64 checked to lie inside one of them.
fn ipv6_plan(scenario: &Scenario) -> Result<(Vec<Cidr6>, Vec<Option<Ipv6Addr>>)> {
    let vpc = scenario
        .vpc
        .ipv6_cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| parse_cidr6(&format!("vpc.ipv6Cidrs[{i}]"), c, 44..=56))
        .collect::<Result<Vec<_>>>()?;
    let mut subnets = Vec::new();
    for (i, s) in scenario.subnets.iter().enumerate() {
        let Some(c) = &s.ipv6_cidr else {
            subnets.push(None);
            continue;
        };
        let field = format!("subnets[{i}].ipv6Cidr");
        let (ip, _) = parse_cidr6(&field, c, 64..=64)?;
        let inside = |(net, len): &Cidr6| u128::from(ip) & !(u128::MAX >> len) == u128::from(*net);
        if !vpc.iter().any(inside) {
            bail!("{field}: `{c}` is not inside any of vpc.ipv6Cidrs");
        }
        subnets.push(Some(ip));
    }
    Ok((vpc, subnets))
}

fn lookup<'a>(
    field: &str,
    names: &'a BTreeMap<String, String>,
    name: &str,
    what: &str,
) -> Result<&'a String> {
    names.get(name).with_context(|| {
        let known: Vec<&str> = names.keys().map(String::as_str).collect();
        format!("{field}: no {what} named `{name}` (the scenario defines: {})", known.join(", "))
    })
}

/// One simulated node: its instance and its IMDS.
#[derive(Clone, Debug)]
pub struct SimNode {
    pub name: String,
    pub instance_id: String,
    pub imds_url: String,
    /// With a fabric: the EC2, IMDS and Kubernetes endpoints as seen from inside the node's
    /// namespace (relays on its loopback), for an agent running there.
    pub inside: Option<Endpoints>,
}

/// The simulator's endpoints as one node sees them.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub ec2_url: String,
    pub imds_url: String,
    pub kube_url: String,
}

/// A running scenario. Servers and the controller run on the caller's tokio runtime.
pub struct Sim {
    pub ec2: Shared,
    pub kube: Arc<Kube>,
    pub ec2_url: String,
    pub kube_url: String,
    pub nodes: Vec<SimNode>,
    /// Name in the scenario → id.
    pub subnets: BTreeMap<String, String>,
    pub security_groups: BTreeMap<String, String>,
    pub vpc_id: String,
    /// The namespaces and wires, when started with [`Sim::start_with_fabric`].
    pub fabric: Option<Arc<Fabric>>,
    controller: tokio::task::JoinHandle<()>,
    /// Finishes attachments and detachments on time (see [`Ec2::settle`]).
    settler: tokio::task::JoinHandle<()>,
    relays: Vec<tokio::task::JoinHandle<()>>,
}

impl Sim {
    /// What each client asked of the simulator: EC2 actions by access key id, Kubernetes
    /// (group, resource, verb) by bearer token.
    pub fn calls(&self) -> serde_json::Value {
        let ec2 = super::ec2_api::lock(&self.ec2).faults.calls_by_key.clone();
        serde_json::json!({"ec2": ec2, "kube": self.kube.all_requests()})
    }

    /// Adds [`Self::calls`] to the directory named by ENIGUARD_CALLS_DIR (the test command sets
    /// it; deploy/'s RBAC and IAM are checked against the union once every test ran).
    fn record_calls(&self) {
        let Some(dir) = std::env::var_os(CALLS_DIR_VAR) else { return };
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let file = std::path::Path::new(&dir).join(format!(
            "{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::create_dir_all(&dir);
        if let Err(e) = std::fs::write(&file, self.calls().to_string()) {
            eprintln!("vpcsim: recording calls in {}: {e}", file.display());
        }
    }
}

/// Where simulators record who called what (see [`Sim::calls`]).
pub const CALLS_DIR_VAR: &str = "ENIGUARD_CALLS_DIR";

impl Drop for Sim {
    fn drop(&mut self) {
        self.record_calls();
        self.controller.abort();
        self.settler.abort();
        for r in &self.relays {
            r.abort();
        }
        // Taken in its own statement: the follower may be waiting for the lock to copy the model.
        let follower = ec2_api::lock(&self.ec2).follower.take();
        if let Some(follower) = follower {
            follower.stop();
        }
        if let Some(f) = &self.fabric {
            f.teardown();
        }
    }
}

impl Sim {
    /// Builds the scenario's EC2 and Kubernetes state and starts every server.
    pub async fn start(scenario: &Scenario) -> Result<Self> {
        Self::start_inner(scenario, None).await
    }

    /// Like [`Sim::start`], with every node a network namespace (`<prefix>-node<i>`) whose NICs
    /// follow the attachments, wired to `<prefix>-vpc` (see [`fabric`](super::fabric)). Root only.
    pub async fn start_with_fabric(scenario: &Scenario, prefix: &str) -> Result<Self> {
        Self::start_inner(scenario, Some(prefix)).await
    }

    async fn start_inner(scenario: &Scenario, fabric_prefix: Option<&str>) -> Result<Self> {
        let mut ec2 = Ec2::default();
        let vpc_id = "vpc-0e1a2b3c4d5e6f701".to_owned();
        let mut cidrs = Vec::new();
        for (i, c) in scenario.vpc.cidrs.iter().enumerate() {
            let (ip, len) = parse_cidr(&format!("vpc.cidrs[{i}]"), c)?;
            cidrs.push(format!("{ip}/{len}"));
        }
        ec2.vpc_cidrs.insert(vpc_id.clone(), cidrs.join("\n"));
        let (vpc6, subnets6) = ipv6_plan(scenario)?;
        if !vpc6.is_empty() {
            let blocks: Vec<String> = vpc6.iter().map(|(ip, len)| format!("{ip}/{len}")).collect();
            ec2.vpc_ipv6_cidrs.insert(vpc_id.clone(), blocks.join("\n"));
        }
        let mut subnets = BTreeMap::new();
        for (i, s) in scenario.subnets.iter().enumerate() {
            let cidr = parse_cidr(&format!("subnets[{i}].cidr"), &s.cidr)?;
            let id = ec2.add_subnet(&vpc_id, &s.az, cidr);
            if let Some(v6) = subnets6[i] {
                ec2.set_subnet_ipv6(&id, v6).map_err(|e| anyhow::anyhow!("subnets[{i}].ipv6Cidr: {e}"))?;
            }
            if !s.tags.is_empty() {
                ec2.create_tags(&id, &s.tags)
                    .map_err(|e| anyhow::anyhow!("subnets[{i}].tags: {}", e.message))?;
            }
            subnets.insert(s.name.clone(), id);
        }
        let mut security_groups = BTreeMap::new();
        for name in &scenario.security_groups {
            security_groups.insert(name.clone(), ec2.add_security_group(name));
        }
        let groups = |field: &str, names: &[String]| -> Result<Vec<String>> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    lookup(&format!("{field}[{i}]"), &security_groups, n, "security group").cloned()
                })
                .collect()
        };
        let kube = Kube::new();
        let mut instances = Vec::new();
        let nodes: Vec<(usize, NodeSpec)> = scenario
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.expand().into_iter().map(move |n| (i, n)))
            .collect();
        for (i, n) in &nodes {
            let subnet = lookup(&format!("nodes[{i}].subnet"), &subnets, &n.subnet, "subnet")?;
            let sgs = groups(&format!("nodes[{i}].securityGroups"), &n.security_groups)?;
            let id = ec2
                .run_instance(&n.instance_type, subnet, &sgs)
                .map_err(|e| anyhow::anyhow!("nodes[{i}].instanceType: {e}"))?;
            let primary = ec2.attached_to(&id).first().map(|e| e.primary_ip).context("no primary ENI")?;
            let instance = ec2.instances.get(&id).context("instance vanished")?;
            let name = n.name.clone().unwrap_or_else(|| {
                format!("ip-{}.{}.compute.internal", primary.to_string().replace('.', "-"), scenario.region)
            });
            let mut labels = json!({
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": n.instance_type,
                "topology.kubernetes.io/region": scenario.region,
                "topology.kubernetes.io/zone": instance.az,
            });
            for (k, v) in &n.labels {
                labels[k] = json!(v);
            }
            let mut node = json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"providerID": format!("aws:///{}/{id}", instance.az)},
                "status": {"addresses": [{"type": "InternalIP", "address": primary.to_string()},
                                         {"type": "Hostname", "address": name}]},
            });
            if let Some(pods) = n.max_pods {
                node["status"]["capacity"] = json!({"pods": pods.to_string()});
            }
            kube.create(NODES, None, node).map_err(|e| anyhow::anyhow!("nodes[{i}]: {}", e.message))?;
            instances.push((name, id));
        }
        for (i, c) in scenario.eni_configs.iter().enumerate() {
            let subnet = lookup(&format!("eniConfigs[{i}].subnet"), &subnets, &c.subnet, "subnet")?;
            let sgs = groups(&format!("eniConfigs[{i}].securityGroups"), &c.security_groups)?;
            let obj =
                json!({"metadata": {"name": c.name}, "spec": {"subnet": subnet, "securityGroups": sgs}});
            kube.create(ENICONFIGS, None, obj)
                .map_err(|e| anyhow::anyhow!("eniConfigs[{i}]: {}", e.message))?;
        }
        for (i, p) in scenario.security_group_policies.iter().enumerate() {
            let sgs = groups(&format!("securityGroupPolicies[{i}].securityGroups"), &p.security_groups)?;
            let obj = json!({"metadata": {"name": p.name}, "spec": {
                "podSelector": {"matchLabels": p.pod_selector}, "securityGroups": {"groupIds": sgs}}});
            kube.create(SECURITY_GROUP_POLICIES, Some(&p.namespace), obj)
                .map_err(|e| anyhow::anyhow!("securityGroupPolicies[{i}]: {}", e.message))?;
        }

        ec2.timing = Timing {
            attach: Duration::from_millis(scenario.attach_delay_ms),
            detach: Duration::from_millis(scenario.detach_delay_ms),
            describe_lag: Duration::from_millis(scenario.describe_lag_ms),
        };
        let buckets = scenario.ec2_buckets.as_ref().map(BucketsSpec::scale).transpose()?;
        let sim = Ec2Sim { ec2, buckets: buckets.map(super::buckets::Buckets::new), ..Default::default() };
        let fabric = match fabric_prefix {
            Some(prefix) => {
                let ids: Vec<String> = instances.iter().map(|(_, id)| id.clone()).collect();
                let fabric = Arc::new(Fabric::create(prefix, &ids, !vpc6.is_empty())?);
                fabric.sync(&sim.ec2)?;
                Some(fabric)
            }
            None => None,
        };
        let ec2: Shared = Arc::new(Mutex::new(sim));
        if let Some(fabric) = &fabric {
            let model = Arc::downgrade(&ec2);
            let snapshot: Snapshot = Box::new(move || {
                let sim = model.upgrade()?;
                let s = ec2_api::lock(&sim);
                Some((s.changes, s.ec2.clone()))
            });
            ec2_api::lock(&ec2).follower = Some(Follower::start(fabric.clone(), snapshot, 0)?);
        }
        let (ec2_url, _) = ec2_api::start(ec2.clone()).await?;
        let (kube_url, _) = kube_api::start(kube.clone()).await?;
        let delay = Duration::from_millis(scenario.imds_propagation_delay_ms);
        let mut nodes = Vec::new();
        let mut relays = Vec::new();
        for (name, instance_id) in instances {
            let (imds_url, _) = imds::start(ec2.clone(), &instance_id, delay).await?;
            let inside = match fabric.as_ref().and_then(|f| f.node(&instance_id)) {
                Some(ns) => {
                    let mut urls = Vec::new();
                    for url in [&ec2_url, &imds_url, &kube_url] {
                        let target = url.trim_start_matches("http://").parse().context("simulator URL")?;
                        let (addr, task) = crate::netns::relay_into(ns, target).await?;
                        relays.push(task);
                        urls.push(format!("http://{addr}"));
                    }
                    let [ec2_url, imds_url, kube_url] =
                        <[String; 3]>::try_from(urls).map_err(|_| anyhow::anyhow!("three relays"))?;
                    Some(Endpoints { ec2_url, imds_url, kube_url })
                }
                None => None,
            };
            nodes.push(SimNode { name, instance_id, imds_url, inside });
        }
        let controller = rc::spawn(kube.clone(), ec2.clone());
        let settler = {
            let ec2 = ec2.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SETTLE_INTERVAL).await;
                    let mut s = ec2_api::lock(&ec2);
                    if s.ec2.settle(std::time::Instant::now()) {
                        // IMDS shows the attachment now; the agent waits for its NIC.
                        let _ = s.changed();
                    }
                }
            })
        };
        Ok(Self {
            ec2,
            kube,
            ec2_url,
            kube_url,
            nodes,
            subnets,
            security_groups,
            vpc_id,
            fabric,
            controller,
            settler,
            relays,
        })
    }

    /// A kubeconfig for this scenario's API server.
    pub fn kubeconfig(&self) -> String {
        kube_api::kubeconfig(&self.kube_url)
    }

    /// Runs `f` on the EC2 model.
    pub fn with_ec2<T>(&self, f: impl FnOnce(&mut Ec2Sim) -> T) -> T {
        f(&mut ec2_api::lock(&self.ec2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_scenarios_parse() {
        let d = Scenario::default_scenario();
        assert_eq!((d.nodes.len(), d.subnets.len(), d.eni_configs.len()), (1, 4, 2));
        let two = Scenario::parse(include_str!("../../scenarios/sgp-two-nodes.yaml")).unwrap();
        assert_eq!(two.nodes[0].name.as_deref(), Some("small-a"));
        assert_eq!(two.imds_propagation_delay_ms, 500);
    }

    #[test]
    fn bad_scenarios_name_the_field() {
        let err = Scenario::parse("vpc: {cidrs: []}\nsubnets: []\nsecurityGroups: []\nnodes: []\nextra: 1\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `extra`"), "{err:#}");
        assert!(parse_cidr("subnets[0].cidr", "10.0.0.1/24").unwrap_err().to_string().contains("host bits"));
        assert!(parse_cidr("subnets[0].cidr", "10.0.0.0/8").unwrap_err().to_string().contains("/16../28"));
    }

    #[tokio::test]
    async fn ipv6_cidrs_are_checked_by_field() {
        for (vpc, subnet, says) in [
            (
                "2600:1f14:abc:de00::/56",
                "2600:1f14:abc:ee01::/64",
                "subnets[0].ipv6Cidr: `2600:1f14:abc:ee01::/64` is not inside",
            ),
            (
                "2600:1f14:abc:de00::/56",
                "2600:1f14:abc:de00::/60",
                "subnets[0].ipv6Cidr: prefix length `/60` is outside /64../64",
            ),
            (
                "2600:1f14:abc:de00::1/56",
                "2600:1f14:abc:de01::/64",
                "vpc.ipv6Cidrs[0]: `2600:1f14:abc:de00::1/56` has host bits set",
            ),
            ("10.0.0.0/16", "2600:1f14:abc:de01::/64", "vpc.ipv6Cidrs[0]: `10.0.0.0` is not an IPv6 address"),
        ] {
            let mut s = Scenario::default_scenario();
            s.vpc.ipv6_cidrs = vec![vpc.into()];
            s.subnets[0].ipv6_cidr = Some(subnet.into());
            let err = Sim::start(&s).await.err().unwrap();
            assert!(err.to_string().starts_with(says), "{err}");
        }
    }

    #[tokio::test]
    async fn unknown_names_are_reported_with_their_field() {
        let mut s = Scenario::default_scenario();
        s.nodes[0].subnet = "nowhere".into();
        let err = Sim::start(&s).await.err().unwrap();
        assert!(err.to_string().starts_with("nodes[0].subnet: no subnet named `nowhere`"), "{err}");
        let mut s = Scenario::default_scenario();
        s.eni_configs[0].security_groups = vec!["ghost".into()];
        let err = Sim::start(&s).await.err().unwrap();
        assert!(err.to_string().starts_with("eniConfigs[0].securityGroups[0]: no security group"), "{err}");
    }

    /// `count` makes a fleet of numbered nodes; `ec2Buckets` and `describeLagMs` reach the model.
    #[tokio::test]
    async fn fleets_buckets_and_lag() {
        let mut s = Scenario::default_scenario();
        s.nodes[0].name = Some("fleet".into());
        s.nodes[0].count = Some(3);
        s.ec2_buckets = Some(BucketsSpec::Scaled(ScaledBuckets { scale: 0.5 }));
        s.describe_lag_ms = 700;
        let sim = Sim::start(&s).await.unwrap();
        let names: Vec<&str> = sim.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["fleet-0", "fleet-1", "fleet-2"]);
        sim.with_ec2(|e| {
            assert!(e.buckets.is_some());
            assert_eq!(e.ec2.timing.describe_lag, Duration::from_millis(700));
        });
        for (yaml, says) in
            [("ec2Buckets: lots", "ec2Buckets: `lots`"), ("ec2Buckets: {scale: 0}", "ec2Buckets.scale: 0")]
        {
            let mut bad = Scenario::default_scenario();
            bad.ec2_buckets = Scenario::parse(&format!(
                "vpc: {{cidrs: []}}\nsubnets: []\nsecurityGroups: []\nnodes: []\n{yaml}\n"
            ))
            .unwrap()
            .ec2_buckets;
            let err = Sim::start(&bad).await.err().unwrap();
            assert!(err.to_string().contains(says), "{err}");
        }
    }
}
