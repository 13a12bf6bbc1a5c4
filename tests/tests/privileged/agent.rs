//! `eniguard agent` end to end: the real binary in a vpcsim node namespace (root, fabric), talking
//! to the simulator's EC2, IMDS and Kubernetes API through the real SDK and kube-rs clients, with
//! the endpoints in the standard variables. What the node ends up with is read back from EC2
//! (DescribeNetworkInterfaces through aws-sdk-ec2) and from the simulated API server's write log,
//! never from the agent's own words.

use std::{collections::BTreeMap, io::Read as _, net::Ipv4Addr, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use aws_sdk_ec2::{
    config::retry::RetryConfig,
    types::{Filter, NetworkInterface},
    Client as Ec2,
};
use eniguard_tests::{
    agent::{self, sim_calls, sim_control, INTROSPECTION_PORT},
    sim::{
        kube_api::{self, CNINODES},
        scenario::{Scenario, Sim, SimNode},
    },
};
use serde_json::Value;

use crate::{clients::ec2_client, harness::Ctx};

/// One test's simulator (with its fabric), its EC2 client, node 0, and a fresh state directory
/// for node 0's agent, removed at the end.
pub(crate) struct World {
    pub sim: Sim,
    pub rt: tokio::runtime::Runtime,
    pub ec2: Ec2,
    pub node: SimNode,
    pub dir: std::path::PathBuf,
    pub prefix: String,
}

impl World {
    pub fn new(ctx: &Ctx, tag: &str, scenario: &Scenario) -> Result<Self> {
        let prefix = format!("{}-{tag}", ctx.prefix());
        let rt = runtime()?;
        let sim = rt.block_on(Sim::start_with_fabric(scenario, &prefix))?;
        let ec2 = ec2_client(&sim.ec2_url, RetryConfig::disabled());
        let node = sim.nodes[0].clone();
        let dir = std::env::temp_dir().join(format!("{prefix}-agent"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Self { sim, rt, ec2, node, dir, prefix })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// The ENIs attached to `instance`, by device index.
pub async fn attached(ec2: &Ec2, instance: &str) -> Result<BTreeMap<i32, NetworkInterface>> {
    let out = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("attachment.instance-id").values(instance).build())
        .send()
        .await?;
    Ok(out
        .network_interfaces()
        .iter()
        .map(|n| (n.attachment().and_then(|a| a.device_index()).unwrap_or(-1), n.clone()))
        .collect())
}

fn secondaries(n: &NetworkInterface) -> usize {
    n.private_ip_addresses().iter().filter(|a| a.private_ip_address() != n.private_ip_address()).count()
}

fn groups(n: &NetworkInterface) -> Vec<String> {
    n.groups().iter().filter_map(|g| g.group_id().map(str::to_owned)).collect()
}

/// (secondary addresses, prefixes) per device index, as EC2 shows them.
async fn pool(ec2: &Ec2, instance: &str) -> Result<BTreeMap<i32, (usize, usize)>> {
    Ok(attached(ec2, instance)
        .await?
        .iter()
        .map(|(d, n)| (*d, (secondaries(n), n.ipv4_prefixes().len())))
        .collect())
}

fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Default scenario (m5.large: 3 ENIs, 10 addresses each), one row per pool mode: what EC2 shows
/// after `ready` is what upstream's tables give for 0 pods (docs/eni-and-ip-target.md and
/// docs/prefix-and-ip-target.md in aws/amazon-vpc-cni-k8s), for 9 usable addresses or /28
/// slots per ENI.
pub fn warm_pool_rows(ctx: &mut Ctx) -> Result<()> {
    type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(i32, (usize, usize))]);
    let rows: &[Row] = &[
        // WARM_ENI_TARGET=1: the primary ENI fills up (9 available ≥ 1 ENI's worth), no 2nd ENI.
        ("warm-eni", &[], &[(0, (9, 0))]),
        // WARM_IP_TARGET=2, MINIMUM_IP_TARGET=5: short = max(2 − 0, 5 − 0) = 5 on the primary.
        ("ip-targets", &[("WARM_IP_TARGET", "2"), ("MINIMUM_IP_TARGET", "5")], &[(0, (5, 0))]),
        // Prefix delegation, WARM_PREFIX_TARGET=1: one /28 on the primary.
        ("prefixes", &[("ENABLE_PREFIX_DELEGATION", "true"), ("WARM_PREFIX_TARGET", "1")], &[(0, (0, 1))]),
    ];
    let rt = runtime()?;
    for (i, (name, env, want)) in rows.iter().enumerate() {
        let prefix = format!("{}-p{i}", ctx.prefix());
        let sim = rt.block_on(Sim::start_with_fabric(&Scenario::default_scenario(), &prefix))?;
        let dir = std::env::temp_dir().join(format!("{prefix}-agent"));
        let _ = std::fs::remove_dir_all(&dir);
        let agent = agent::start(&sim, &prefix, 0, &dir, env)?;
        let ec2 = ec2_client(&sim.ec2_url, RetryConfig::disabled());
        let got = rt.block_on(pool(&ec2, &sim.nodes[0].instance_id))?;
        let want: BTreeMap<i32, (usize, usize)> = want.iter().copied().collect();
        ensure!(got == want, "{name}: EC2 shows {got:?}, the policy's table says {want:?}");
        let total = agent.metric("eniguard_ipam_addresses{state=\"total\"}")?;
        let expected_total: usize = want.values().map(|(ips, pfx)| ips + 16 * pfx).sum();
        ensure!(total == expected_total as f64, "{name}: agent reports {total} addresses");
        ensure!(agent.get(INTROSPECTION_PORT, "/readyz")?.starts_with("HTTP/1.1 200"), "{name}: /readyz");
        // A second tick changes nothing: the pool is at its target.
        let before = sim_calls(&sim)?;
        std::thread::sleep(Duration::from_secs(6));
        let after = sim_calls(&sim)?;
        for action in ["AssignPrivateIpAddresses", "CreateNetworkInterface", "UnassignPrivateIpAddresses"] {
            ensure!(
                before.get(action) == after.get(action),
                "{name}: {action} while idle: {before:?} → {after:?}"
            );
        }
        agent.daemon.terminate()?;
        let _ = std::fs::remove_dir_all(&dir);
        println!("  {name}: {got:?}");
    }
    Ok(())
}

/// The CNINode states the API server recorded for `node`, in write order, as feature lists.
/// A CNINode's features as (name, value).
type Features = Vec<(String, Option<String>)>;

fn cninode_history(sim: &Sim, node: &str) -> Result<Vec<Features>> {
    let events = sim.kube.read(|s| s.all_events_since(0)).map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(events
        .into_iter()
        .filter(|e| e.key.resource == CNINODES.store_name() && e.key.name == node)
        .map(|e| {
            e.object
                .pointer("/spec/features")
                .and_then(Value::as_array)
                .map(|fs| {
                    fs.iter()
                        .map(|f| {
                            (
                                f["name"].as_str().unwrap_or("").to_owned(),
                                f["value"].as_str().map(str::to_owned),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect())
}

pub(crate) fn events_on(sim: &Sim, node: &str, reason: &str) -> Result<Vec<Value>> {
    let events = sim.kube.read(|s| s.all_events_since(0)).map_err(|e| anyhow::anyhow!(e.message))?;
    Ok(events
        .into_iter()
        .filter(|e| e.key.resource == "events")
        .map(|e| e.object)
        .filter(|o| o["involvedObject"]["name"] == node && o["reason"] == reason)
        .collect())
}

fn prefixes_and_ips(n: &NetworkInterface) -> (usize, usize) {
    (secondaries(n), n.ipv4_prefixes().len())
}

pub(crate) const INCIDENT_ENV: &[(&str, &str)] = &[
    ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
    ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
    ("ENABLE_POD_ENI", "true"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("WARM_PREFIX_TARGET", "1"),
];

/// The seed's scenario: custom networking + security groups for pods + prefix delegation on an
/// m5.large and an r7a.medium, two agents at once. On the m5.large the trunk is built from the
/// ENIConfig (the API server saw CustomNetworking before SecurityGroupsForPods) and never gets an
/// address, after start, after a scale-up and after a restart; the r7a.medium refuses security
/// groups for pods with an Event and still gets an ENI for ordinary pods.
pub fn incident_order(ctx: &mut Ctx) -> Result<()> {
    let prefix = format!("{}-inc", ctx.prefix());
    let scenario = Scenario::parse(include_str!("../../scenarios/incident.yaml"))?;
    let rt = runtime()?;
    let sim = rt.block_on(Sim::start_with_fabric(&scenario, &prefix))?;
    let ec2 = ec2_client(&sim.ec2_url, RetryConfig::disabled());
    let (big, small) = (sim.nodes[0].clone(), sim.nodes[1].clone());
    let dirs = [
        std::env::temp_dir().join(format!("{prefix}-a0")),
        std::env::temp_dir().join(format!("{prefix}-a1")),
    ];
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    let big_agent = agent::start(&sim, &prefix, 0, &dirs[0], INCIDENT_ENV)?;
    let small_agent = agent::start(&sim, &prefix, 1, &dirs[1], INCIDENT_ENV)?;

    // The order, from the API server's log: CustomNetworking=us-west-2a is recorded before any
    // state with SecurityGroupsForPods.
    let history = cninode_history(&sim, &big.name)?;
    let cn_at = history
        .iter()
        .position(|f| f.iter().any(|(n, v)| n == "CustomNetworking" && v.as_deref() == Some("us-west-2a")));
    let sgp_at = history.iter().position(|f| f.iter().any(|(n, _)| n == "SecurityGroupsForPods"));
    ensure!(matches!((cn_at, sgp_at), (Some(c), Some(s)) if c < s), "CNINode history {history:?}");

    // The trunk the Resource Controller built: the ENIConfig's subnet and groups.
    let pods_a = sim.subnets["pods-a"].clone();
    let eks_pods = sim.security_groups["eks-pods"].clone();
    let trunk = eventually("the trunk", Duration::from_secs(20), || {
        let enis = rt.block_on(attached(&ec2, &big.instance_id))?;
        Ok(enis.into_values().find(|n| n.interface_type().map(|t| t.as_str()) == Some("trunk")))
    })?;
    ensure!(trunk.subnet_id() == Some(pods_a.as_str()), "trunk subnet {:?}", trunk.subnet_id());
    ensure!(groups(&trunk) == [eks_pods.clone()], "trunk groups {:?}", groups(&trunk));
    let trunk_id = trunk.network_interface_id().context("trunk id")?.to_owned();
    let check_trunk_empty = |when: &str| -> Result<()> {
        let enis = rt.block_on(attached(&ec2, &big.instance_id))?;
        let t =
            enis.values().find(|n| n.network_interface_id() == Some(trunk_id.as_str())).context("trunk")?;
        ensure!(prefixes_and_ips(t) == (0, 0), "{when}: the trunk holds {:?}", prefixes_and_ips(t));
        Ok(())
    };
    check_trunk_empty("after start")?;

    // Ordinary pods: an ENI in the ENIConfig's subnet with its groups, holding the /28.
    let pods_eni = eventually("an ENI for ordinary pods with a /28", Duration::from_secs(30), || {
        let enis = rt.block_on(attached(&ec2, &big.instance_id))?;
        Ok(enis.into_values().find(|n| {
            n.interface_type().map(|t| t.as_str()) == Some("interface")
                && n.attachment().and_then(|a| a.device_index()) != Some(0)
                && !n.ipv4_prefixes().is_empty()
        }))
    })?;
    ensure!(
        pods_eni.subnet_id() == Some(pods_a.as_str()) && groups(&pods_eni) == [eks_pods.clone()],
        "{pods_eni:?}"
    );
    let primary = rt.block_on(attached(&ec2, &big.instance_id))?.remove(&0).context("primary")?;
    ensure!(
        prefixes_and_ips(&primary) == (0, 0),
        "the primary ENI holds pod addresses under custom networking"
    );
    ensure!(big_agent.metric("eniguard_trunk_security_groups_drift")? == 0.0, "no drift on a correct trunk");

    // The r7a.medium: refused, with the Event, no SecurityGroupsForPods, no trunk; ordinary pods
    // still get an ENI with a /28 in the ENIConfig's subnet.
    let refused = events_on(&sim, &small.name, "SecurityGroupsForPodsRefused")?;
    ensure!(refused.len() == 1 && refused[0]["type"] == "Warning", "{refused:?}");
    let msg = refused[0]["message"].as_str().unwrap_or_default();
    ensure!(msg.contains("r7a.medium") && msg.contains("at least 3 ENIs"), "{msg}");
    ensure!(
        !cninode_history(&sim, &small.name)?.iter().flatten().any(|(n, _)| n == "SecurityGroupsForPods"),
        "SecurityGroupsForPods signalled on the r7a.medium"
    );
    ensure!(
        small_agent.metric("eniguard_security_groups_for_pods_refused{instance_type=\"r7a.medium\"}")? == 1.0,
        "metric"
    );
    let small_enis = rt.block_on(attached(&ec2, &small.instance_id))?;
    let pods_b = sim.subnets["pods-b"].clone();
    ensure!(
        small_enis.len() == 2
            && small_enis
                .get(&1)
                .is_some_and(|n| n.subnet_id() == Some(pods_b.as_str()) && n.ipv4_prefixes().len() == 1),
        "r7a.medium ENIs: {:?}",
        small_enis
            .values()
            .map(|n| (n.subnet_id(), n.interface_type(), n.ipv4_prefixes().len()))
            .collect::<Vec<_>>()
    );

    // Restart with a higher warm target: the pool grows on the pods ENI, never on the trunk, and
    // nothing that exists is allocated again.
    big_agent.daemon.terminate()?;
    let creates = sim_calls(&sim)?.get("CreateNetworkInterface").copied();
    let mut env = INCIDENT_ENV.to_vec();
    env.retain(|(k, _)| *k != "WARM_PREFIX_TARGET");
    env.push(("WARM_PREFIX_TARGET", "3"));
    let big_agent = agent::start(&sim, &prefix, 0, &dirs[0], &env)?;
    let grown = rt.block_on(attached(&ec2, &big.instance_id))?;
    let on_pods_eni = grown
        .values()
        .find(|n| n.network_interface_id() == pods_eni.network_interface_id())
        .map(|n| n.ipv4_prefixes().len());
    ensure!(on_pods_eni == Some(3), "after restart with WARM_PREFIX_TARGET=3: {on_pods_eni:?} prefixes");
    ensure!(sim_calls(&sim)?.get("CreateNetworkInterface").copied() == creates, "the restart created an ENI");
    check_trunk_empty("after scale-up and restart")?;
    // The host side: the trunk's link is up with no rule; the pods ENI has its rule.
    let rules = big_agent.ns.ip(&["rule", "show"])?;
    let trunk_ip: Ipv4Addr = trunk.private_ip_address().context("trunk ip")?.parse()?;
    let pods_ip: Ipv4Addr = pods_eni.private_ip_address().context("pods ENI ip")?.parse()?;
    ensure!(!rules.contains(&format!("from {trunk_ip} ")), "a rule for the trunk: {rules}");
    ensure!(rules.contains(&format!("32765:\tfrom {pods_ip} lookup")), "no rule for the pods ENI: {rules}");
    drop(small_agent);
    drop(big_agent);
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

/// A node left behind by a pre-fix aws-node (v1.16.0–v1.16.3): SecurityGroupsForPods was
/// signalled first, so the trunk has the node's subnet and groups; a /28 sits on the trunk and the
/// checkpoint hands one of its addresses to a pod. The agent reports those addresses as findings
/// and never counts them in the pool, keeps the allocation as evidence, and reports the trunk's
/// drift with the replace-node Event.
pub fn pre_fix_node(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "old", &Scenario::parse(include_str!("../../scenarios/incident.yaml"))?)?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    let PreFix { trunk_id, allocation, .. } = pre_fix_layout(&w)?;
    let agent = agent::start(sim, prefix, 0, dir, INCIDENT_ENV)?;
    let reason = "trunk ENI (security groups for pods)";
    let finding = agent
        .metric(&format!("eniguard_ipam_excluded_addresses{{eni=\"{trunk_id}\",reason=\"{reason}\"}}"))?;
    ensure!(finding == 16.0, "the trunk's /28 is reported: {finding}");
    // The pool counts only the pods ENI's /28.
    ensure!(agent.metric("eniguard_ipam_addresses{state=\"total\"}")? == 16.0, "trunk addresses in the pool");
    let drift = events_on(sim, &node.name, "TrunkSecurityGroupsDrift")?;
    ensure!(drift.len() == 1 && drift[0]["type"] == "Warning", "{drift:?}");
    let msg = drift[0]["message"].as_str().unwrap_or_default();
    ensure!(msg.contains(&trunk_id) && msg.contains("replace this node"), "{msg}");
    ensure!(agent.metric("eniguard_trunk_security_groups_drift")? == 1.0, "drift gauge");
    // The evidence stays in the checkpoint; the trunk keeps its prefix (nothing hands it out).
    let kept =
        eniguard::ipam::checkpoint::Checkpoint::new(dir.join("ipam.json")).read()?.context("checkpoint")?;
    ensure!(kept.allocations == [allocation], "checkpoint now {:?}", kept.allocations);
    let enis = rt.block_on(attached(ec2, &node.instance_id))?;
    let t = enis.values().find(|n| n.network_interface_id() == Some(trunk_id.as_str())).context("trunk")?;
    ensure!(prefixes_and_ips(t) == (0, 1), "the trunk's /28 was touched: {:?}", prefixes_and_ips(t));
    drop(agent);
    Ok(())
}

/// A node as aws-node v1.16.0–3 left it (the #2792 layout): SecurityGroupsForPods signalled alone,
/// so the trunk sits in the node's subnet with the node's groups; a /28 on the trunk and one of its
/// addresses given to shop/payments-0 in the checkpoint.
pub(crate) struct PreFix {
    pub trunk_id: String,
    /// The trunk's device index (its route table is this + 1).
    pub trunk_device: i32,
    pub victim: Ipv4Addr,
    pub allocation: eniguard::ipam::model::Allocation,
}

pub(crate) fn pre_fix_layout(w: &World) -> Result<PreFix> {
    use eniguard::ipam::{
        checkpoint::{Checkpoint, Contents},
        model::{AllocKey, Allocation, PodRef},
    };
    let World { sim, rt, ec2, node, dir, .. } = w;
    // The buggy order: SecurityGroupsForPods alone (once the Resource Controller made the CNINode).
    eventually("the CNINode", Duration::from_secs(10), || {
        Ok(sim.kube.read(|s| s.get(&CNINODES.key(None, &node.name))).ok().map(|_| ()))
    })?;
    sim.kube
        .write(|s| {
            s.merge_patch(
                &CNINODES.key(None, &node.name),
                &serde_json::json!({"spec": {"features": [{"name": "SecurityGroupsForPods"}]}}),
            )
        })
        .map_err(|e| anyhow::anyhow!(e.message))?;
    // Attached, not attaching: only then does IMDS list it (as on EC2), and the agent import it.
    let trunk = eventually("the trunk attached", Duration::from_secs(20), || {
        let enis = rt.block_on(attached(ec2, &node.instance_id))?;
        Ok(enis.into_values().find(|n| {
            n.interface_type().map(|t| t.as_str()) == Some("trunk")
                && n.attachment().and_then(|a| a.status()).map(|s| s.as_str()) == Some("attached")
        }))
    })?;
    let trunk_id = trunk.network_interface_id().context("trunk id")?.to_owned();
    ensure!(
        trunk.subnet_id() == Some(sim.subnets["node-a"].as_str()),
        "the buggy trunk is in the node subnet"
    );
    // ipamd v1.16.3 put a /28 on it and gave an address from it to a pod.
    let assigned = rt.block_on(
        ec2.assign_private_ip_addresses().network_interface_id(&trunk_id).ipv4_prefix_count(1).send(),
    )?;
    let on_trunk = assigned.assigned_ipv4_prefixes()[0].ipv4_prefix().context("prefix")?.to_owned();
    let victim: Ipv4Addr = on_trunk.split('/').next().context("prefix address")?.parse()?;
    std::fs::create_dir_all(dir)?;
    let key =
        AllocKey { network_name: "aws-cni".into(), container_id: "c0ffee".into(), if_name: "eth0".into() };
    let pod = PodRef { namespace: "shop".into(), name: "payments-0".into() };
    let allocation = Allocation { key, ip: victim, pod, allocated_at: 1 };
    Checkpoint::new(dir.join("ipam.json"))
        .write(&Contents { allocations: vec![allocation.clone()], ..Contents::default() })?;

    let trunk_device = trunk.attachment().and_then(|a| a.device_index()).context("trunk device index")?;
    Ok(PreFix { trunk_id, trunk_device, victim, allocation })
}

/// Bad input stops or holds the agent with a message naming what is wrong, and nothing is created
/// in EC2: every invalid variable (exit before any EC2 or Kubernetes call), custom networking with
/// no ENIConfig for the node (a Warning Event; ready once it exists), an ENIConfig naming a subnet
/// that does not exist (a Warning Event, retried after the pause, no ENI).
pub fn bad_input(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "bad", &Scenario::default_scenario())?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    let calls_before = sim_calls(sim)?;
    let bad: &[(&str, &str, &str)] = &[
        ("WARM_ENI_TARGET", "lots", "WARM_ENI_TARGET=`lots`: expected"),
        ("AWS_VPC_ENI_MTU", "100", "AWS_VPC_ENI_MTU=`100`: expected"),
        ("ENABLE_POD_ENI", "maybe", "ENABLE_POD_ENI=`maybe`: expected"),
        (
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
            "10.0.0.0/33",
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS=`10.0.0.0/33`",
        ),
        ("ADDITIONAL_ENI_TAGS", "{not json", "ADDITIONAL_ENI_TAGS=`{not json`"),
        ("MY_NODE_NAME", "", "MY_NODE_NAME"),
        ("AWS_VPC_K8S_CNI_LOG_FILE", "ipamd.log", "AWS_VPC_K8S_CNI_LOG_FILE=`ipamd.log`: expected"),
        ("CLUSTER_ENDPOINT", "kubernetes.default", "CLUSTER_ENDPOINT=`kubernetes.default`: expected"),
    ];
    // Upstream's variables eniguard does not act on yet, each set alone to what is not upstream's
    // default: refused by name.
    let not_yet: Vec<(&str, &str, String)> = eniguard::config::NOT_YET
        .iter()
        .map(|n| {
            let harmless = n.harmless;
            let value = if harmless { "false" } else { "true" };
            (n.var, value, format!("{}=`{value}`: expected {harmless}: eniguard does not", n.var))
        })
        .collect();
    let bad = bad.iter().map(|(v, x, s)| (*v, *x, (*s).to_owned())).chain(not_yet);
    for (var, value, says) in bad {
        let mut child = agent::command(sim, prefix, 0, dir, &[(var, value)])?
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("{var}={value} did not stop the agent");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child.stderr.take().context("stderr")?.read_to_string(&mut stderr)?;
        ensure!(!status.success() && stderr.contains(&says), "{var}={value}: exit {status}, stderr {stderr}");
    }
    ensure!(
        sim_calls(sim)? == calls_before,
        "bad variables reached EC2: {calls_before:?} → {:?}",
        sim_calls(sim)?
    );
    ensure!(rt.block_on(attached(ec2, &node.instance_id))?.len() == 1, "an ENI was created");

    // Custom networking, and the node's ENIConfig (named after its zone) does not exist yet.
    let saved = sim
        .kube
        .read(|s| s.get(&kube_api::ENICONFIGS.key(None, "us-west-2a")))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    sim.kube
        .write(|s| s.delete(&kube_api::ENICONFIGS.key(None, "us-west-2a")))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let cn = [
        ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
        ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
    ];
    let mut agent = agent::spawn(sim, prefix, 0, dir, &cn)?;
    let missing = eventually("the MissingENIConfig Event", Duration::from_secs(20), || {
        Ok(events_on(sim, &node.name, "MissingENIConfig")?.into_iter().next())
    })?;
    let msg = missing["message"].as_str().unwrap_or_default().to_owned();
    ensure!(missing["type"] == "Warning" && msg.contains("`us-west-2a`"), "{missing}");
    ensure!(
        agent.get(INTROSPECTION_PORT, "/readyz")?.starts_with("HTTP/1.1 503"),
        "ready without an ENIConfig"
    );
    ensure!(
        !sim_calls(sim)?.contains_key("CreateNetworkInterface"),
        "an ENI was created without an ENIConfig"
    );
    // The operator creates it: the agent goes on and gets ready with an ENI from it.
    let mut obj = saved.clone();
    obj["metadata"] = serde_json::json!({"name": "us-west-2a"});
    sim.kube.create(kube_api::ENICONFIGS, None, obj).map_err(|e| anyhow::anyhow!(e.message))?;
    agent
        .daemon
        .wait_for_line("ready:", Duration::from_secs(60))
        .context("ready once the ENIConfig exists")?;
    let enis = rt.block_on(attached(ec2, &node.instance_id))?;
    ensure!(
        enis.get(&1).and_then(|n| n.subnet_id()) == Some(sim.subnets["pods-a"].as_str()),
        "no ENI from the ENIConfig"
    );
    agent.daemon.terminate()?;

    // An ENIConfig naming a subnet that does not exist (on a node of its own: a fresh sim).
    drop(w);
    let w = World::new(ctx, "bad2", &Scenario::default_scenario())?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    sim.kube
        .write(|s| {
            s.merge_patch(
                &kube_api::ENICONFIGS.key(None, "us-west-2a"),
                &serde_json::json!({"spec": {"subnet": "subnet-0000000000000dead"}}),
            )
        })
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let agent = agent::spawn(sim, prefix, 0, dir, &cn)?;
    let invalid = eventually("the InvalidENIConfig Event", Duration::from_secs(20), || {
        Ok(events_on(sim, &node.name, "InvalidENIConfig")?.into_iter().next())
    })?;
    let msg = invalid["message"].as_str().unwrap_or_default();
    ensure!(
        msg.contains("ENIConfig `us-west-2a`")
            && msg.contains("subnet-0000000000000dead")
            && msg.contains("InvalidSubnetID.NotFound"),
        "{msg}"
    );
    std::thread::sleep(Duration::from_secs(6));
    let creates = sim_calls(sim)?.get("CreateNetworkInterface").copied().unwrap_or(0);
    ensure!(creates == 1, "{creates} CreateNetworkInterface calls: the pause did not hold");
    ensure!(rt.block_on(attached(ec2, &node.instance_id))?.len() == 1, "an ENI was created");
    let leftovers = rt.block_on(
        ec2.describe_network_interfaces()
            .filters(Filter::builder().name("status").values("available").build())
            .send(),
    )?;
    ensure!(leftovers.network_interfaces().is_empty(), "an unattached ENI was left");
    ensure!(
        agent.get(INTROSPECTION_PORT, "/readyz")?.starts_with("HTTP/1.1 503"),
        "ready without an address"
    );
    drop(agent);
    Ok(())
}

/// The ENIs eniguard created in the VPC (its description), attached or not.
async fn created_enis(ec2: &Ec2, instance: &str) -> Result<Vec<NetworkInterface>> {
    let out = ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("description").values(format!("aws-K8S-{instance}")).build())
        .send()
        .await?;
    Ok(out.network_interfaces().to_vec())
}

/// Start under 50 % throttling for 30 s, bursts of 5xx on the ENI calls and 500 ms on every
/// call: the agent converges to the pool WARM_IP_TARGET=20 asks for (9 + 9 + 2 on an m5.large),
/// creates no ENI twice, leaves none unattached, and keeps running.
pub fn converges_under_faults(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "flt", &Scenario::default_scenario())?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    sim_control(sim, "throttle?rate=0.5&seconds=30")?;
    sim_control(sim, "fail?action=CreateNetworkInterface&count=3&status=500")?;
    sim_control(sim, "fail?action=AttachNetworkInterface&count=2&status=503")?;
    sim_control(sim, "latency?ms=500")?;
    let mut agent = agent::spawn(sim, prefix, 0, dir, &[("WARM_IP_TARGET", "20")])?;
    agent.daemon.wait_for_line("ready:", Duration::from_secs(120)).context("ready under faults")?;
    let want: BTreeMap<i32, (usize, usize)> = [(0, (9, 0)), (1, (9, 0)), (2, (2, 0))].into();
    // The test's own calls are throttled too while the fault lasts (and it does not retry).
    let got = eventually("the warm pool", Duration::from_secs(120), || {
        Ok(rt.block_on(pool(ec2, &node.instance_id)).ok().filter(|got| *got == want))
    })?;
    let created = eventually("the created ENIs", Duration::from_secs(40), || {
        Ok(rt.block_on(created_enis(ec2, &node.instance_id)).ok())
    })?;
    ensure!(created.len() == 2, "{} ENIs created for 2 slots: {created:?}", created.len());
    ensure!(created.iter().all(|n| n.attachment().is_some()), "an unattached ENI was left");
    ensure!(agent.daemon.wait_exit(Duration::from_millis(10))?.is_none(), "the agent exited");
    let calls = sim_calls(sim)?;
    println!("  converged to {got:?}; EC2 calls received (faulted ones too): {calls:?}");
    drop(agent);
    Ok(())
}

/// The subnet runs out: EC2's InsufficientFreeAddressesInSubnet pauses the pool for 120 s with a
/// Warning Event and the counter; when addresses free up the pool completes after the pause.
pub fn subnet_exhaustion(ctx: &mut Ctx) -> Result<()> {
    let mut scenario = Scenario::default_scenario();
    // 32 − 5 reserved = 27 addresses; the primary ENI holds one.
    scenario.subnets[0].cidr = "10.0.0.0/27".into();
    let w = World::new(ctx, "sub", &scenario)?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    // Other tenants of the subnet: 10 + 3 addresses.
    let mut squatters = Vec::new();
    for n in [9, 2] {
        let eni = rt.block_on(
            ec2.create_network_interface()
                .subnet_id(&sim.subnets["node-a"])
                .groups(&sim.security_groups["eks-node"])
                .secondary_private_ip_address_count(n)
                .send(),
        )?;
        squatters
            .push(eni.network_interface().and_then(|e| e.network_interface_id()).context("id")?.to_owned());
    }
    // WARM_IP_TARGET=15: 9 on the primary (4 left), then an ENI with 6 needs 7: refused.
    let mut agent = agent::spawn(sim, prefix, 0, dir, &[("WARM_IP_TARGET", "15")])?;
    agent.daemon.wait_for_line("ready:", Duration::from_secs(60))?;
    let event = eventually("the SubnetExhausted Event", Duration::from_secs(20), || {
        Ok(events_on(sim, &node.name, "SubnetExhausted")?.into_iter().next())
    })?;
    ensure!(event["type"] == "Warning", "{event}");
    ensure!(agent.metric("eniguard_subnet_exhausted_total")? == 1.0, "counter");
    ensure!(rt.block_on(pool(ec2, &node.instance_id))? == [(0, (9, 0))].into(), "grew while paused");
    let creates = sim_calls(sim)?.get("CreateNetworkInterface").copied();
    std::thread::sleep(Duration::from_secs(10));
    ensure!(sim_calls(sim)?.get("CreateNetworkInterface").copied() == creates, "retried during the pause");
    // Addresses free up: after the pause the pool completes.
    rt.block_on(ec2.delete_network_interface().network_interface_id(&squatters[0]).send())?;
    let want: BTreeMap<i32, (usize, usize)> = [(0, (9, 0)), (1, (6, 0))].into();
    eventually("the pool after the pause", Duration::from_secs(150), || {
        Ok((rt.block_on(pool(ec2, &node.instance_id))? == want).then_some(()))
    })?;
    drop(agent);
    Ok(())
}

/// kill -9 at spread-out points of a scale-up (WARM_IP_TARGET=20: an address assignment and two
/// ENI creations, 100 ms per EC2 call), ten times: after a restart on the same checkpoint and run
/// directory every ENI eniguard created is attached with DeleteOnTermination and in the pool, or
/// gone; no address is held twice; the pool is the one the policy asks for.
pub fn survives_kill_9(ctx: &mut Ctx) -> Result<()> {
    let rt = runtime()?;
    let want: BTreeMap<i32, (usize, usize)> = [(0, (9, 0)), (1, (9, 0)), (2, (2, 0))].into();
    for run in 0..10u64 {
        let prefix = format!("{}-k{run}", ctx.prefix());
        let sim = rt.block_on(Sim::start_with_fabric(&Scenario::default_scenario(), &prefix))?;
        let ec2 = ec2_client(&sim.ec2_url, RetryConfig::disabled());
        let node = sim.nodes[0].clone();
        sim_control(&sim, "latency?ms=100")?;
        let dir = std::env::temp_dir().join(format!("{prefix}-agent"));
        let _ = std::fs::remove_dir_all(&dir);
        let env = [("WARM_IP_TARGET", "20")];
        let first = agent::spawn(&sim, &prefix, 0, &dir, &env)?;
        // Spread over the scale-up (about 1.5 s): 0.2 s .. 1.55 s after the start.
        std::thread::sleep(Duration::from_millis(200 + run * 150));
        drop(first); // SIGKILL
        let calls = sim_calls(&sim)?;
        let agent = agent::start(&sim, &prefix, 0, &dir, &env)?;
        eventually("the warm pool after the restart", Duration::from_secs(60), || {
            Ok((rt.block_on(pool(&ec2, &node.instance_id))? == want).then_some(()))
        })?;
        let created = rt.block_on(created_enis(&ec2, &node.instance_id))?;
        for n in &created {
            let att = n
                .attachment()
                .with_context(|| format!("run {run}: {:?} left unattached", n.network_interface_id()))?;
            ensure!(
                att.delete_on_termination() == Some(true),
                "run {run}: {:?} without DeleteOnTermination",
                n.network_interface_id()
            );
        }
        ensure!(created.len() == 2, "run {run}: {} ENIs created", created.len());
        let mut ips: Vec<String> = rt
            .block_on(attached(&ec2, &node.instance_id))?
            .values()
            .flat_map(|n| {
                n.private_ip_addresses().iter().filter_map(|a| a.private_ip_address().map(str::to_owned))
            })
            .collect();
        let n = ips.len();
        ips.sort();
        ips.dedup();
        ensure!(ips.len() == n, "run {run}: an address is held twice");
        ensure!(
            agent.metric("eniguard_ipam_addresses{state=\"total\"}")? == 20.0,
            "run {run}: the agent's pool"
        );
        println!("  run {run}: killed after {:?}", calls);
        drop(agent);
        drop(sim);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The agent follows EC2 and its own pods: addresses someone else assigns to (or removes from) a
/// pool ENI are taken in (or out) at the next reconcile, with one DescribeNetworkInterfaces for
/// the ENI IMDS shows changed; the pod watch sees this node's pods and no other node's.
pub fn follows_ec2_and_its_pods(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "rec", &Scenario::default_scenario())?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    let agent = agent::start(sim, prefix, 0, dir, &[])?;
    for (name, on) in [("mine", node.name.as_str()), ("theirs", "ip-10-0-9-9.us-west-2.compute.internal")] {
        let pod = serde_json::json!({"metadata": {"name": name}, "spec": {"nodeName": on, "containers": [{"name": "c"}]}});
        sim.kube.create(kube_api::PODS, Some("default"), pod).map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let listed = eventually("the pod watch", Duration::from_secs(20), || {
        let body: Value = serde_json::from_str(eniguard_tests::http::body(
            &agent.get(INTROSPECTION_PORT, "/v1/eniguard/pods")?,
        ))?;
        let names: Vec<String> = body["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        Ok((!names.is_empty()).then_some(names))
    })?;
    ensure!(listed == ["mine"], "the watch lists {listed:?}");

    // Someone else changes the primary ENI's addresses.
    let primary = rt.block_on(attached(ec2, &node.instance_id))?.remove(&0).context("primary")?;
    let primary_id = primary.network_interface_id().context("id")?.to_owned();
    let own = primary.private_ip_address().context("primary address")?.to_owned();
    let gone: Vec<String> = primary
        .private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address().map(str::to_owned))
        .filter(|ip| *ip != own)
        .take(2)
        .collect();
    // The ENI is full (9 + its primary): two go, one comes.
    let unassign = ec2.unassign_private_ip_addresses().network_interface_id(&primary_id);
    rt.block_on(unassign.set_private_ip_addresses(Some(gone)).send()).context("unassigning two")?;
    let assign = ec2.assign_private_ip_addresses().network_interface_id(&primary_id);
    rt.block_on(assign.secondary_private_ip_address_count(1).send()).context("assigning one")?;
    // At the next reconcile (60 s) the agent holds exactly what EC2 shows (the address EC2 took
    // back is gone, the one it handed out again is kept), and the pool loop tops the ENI up again.
    let ec2_view = || -> Result<Vec<String>> {
        let p = rt.block_on(attached(ec2, &node.instance_id))?.remove(&0).context("primary")?;
        let mut v: Vec<String> = p
            .private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address().map(str::to_owned))
            .filter(|ip| *ip != own)
            .map(|ip| format!("{ip}/32"))
            .collect();
        v.sort();
        Ok(v)
    };
    let agent_view = || -> Result<Vec<String>> {
        let body: Value = serde_json::from_str(eniguard_tests::http::body(
            &agent.get(INTROSPECTION_PORT, "/v1/eniguard/enis")?,
        ))?;
        let eni = body["enis"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["id"] == primary_id.as_str())
            .context("primary in /v1/enis")?;
        let mut v: Vec<String> = eni["cidrs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        v.sort();
        Ok(v)
    };
    let assigns =
        r#"eniguard_aws_api_calls_total{service="ec2",action="AssignPrivateIpAddresses",result="ok"}"#;
    let held = eventually("the reconcile (every 60 s) and the top-up", Duration::from_secs(90), || {
        let (e, a) = (ec2_view()?, agent_view()?);
        Ok((e == a && e.len() == 9 && agent.metric(assigns)? == 2.0).then_some(a))
    })?;
    // The agent's own count (the simulator's includes this test's polling): one at start, one
    // for the ENI IMDS showed changed.
    let describes =
        r#"eniguard_aws_api_calls_total{service="ec2",action="DescribeNetworkInterfaces",result="ok"}"#;
    ensure!(agent.metric(describes)? == 2.0, "{} DescribeNetworkInterfaces", agent.metric(describes)?);
    println!("  the agent holds what EC2 shows: {held:?}");
    drop(agent);
    Ok(())
}

/// A cordoned node (the `node.kubernetes.io/unschedulable:NoSchedule` taint) gets addresses on
/// the ENIs it has but no new ENI, unless AWS_MANAGE_ENIS_NON_SCHEDULABLE=true (upstream #1223).
pub fn cordoned_node_gets_no_new_eni(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "cor", &Scenario::default_scenario())?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    let taint = serde_json::json!({"spec": {"unschedulable": true,
        "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}});
    sim.kube
        .write(|s| s.merge_patch(&kube_api::NODES.key(None, &node.name), &taint))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let env = [("WARM_IP_TARGET", "20")];
    let agent = agent::start(sim, prefix, 0, dir, &env)?;
    std::thread::sleep(Duration::from_secs(6));
    ensure!(
        rt.block_on(pool(ec2, &node.instance_id))? == [(0, (9, 0))].into(),
        "a cordoned node grew an ENI"
    );
    ensure!(
        !sim_calls(sim)?.contains_key("CreateNetworkInterface"),
        "CreateNetworkInterface on a cordoned node"
    );
    agent.daemon.terminate()?;
    let manage = [("WARM_IP_TARGET", "20"), ("AWS_MANAGE_ENIS_NON_SCHEDULABLE", "true")];
    let agent = agent::start(sim, prefix, 0, dir, &manage)?;
    let want: BTreeMap<i32, (usize, usize)> = [(0, (9, 0)), (1, (9, 0)), (2, (2, 0))].into();
    eventually("ENIs with AWS_MANAGE_ENIS_NON_SCHEDULABLE", Duration::from_secs(30), || {
        Ok((rt.block_on(pool(ec2, &node.instance_id))? == want).then_some(()))
    })?;
    drop(agent);
    Ok(())
}

/// Upstream's variables for endpoints, timeouts, logs and the host, honoured: EC2 only through
/// AWS_EC2_ENDPOINT (the SDK's AWS_ENDPOINT_URL_EC2 unset), the API server only through
/// CLUSTER_ENDPOINT (the kubeconfig's server is a closed port), HTTP_TIMEOUT accepted,
/// DISABLE_TCP_EARLY_DEMUX sets the node's sysctl, and the agent's log goes to
/// AWS_VPC_K8S_CNI_LOG_FILE at AWS_VPC_K8S_CNI_LOGLEVEL (RUST_LOG unset).
pub fn upstream_variables(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "vars", &Scenario::default_scenario())?;
    let World { sim, node, dir, prefix, .. } = &w;
    let inside = node.inside.as_ref().context("a fabric node")?;
    let ns = eniguard_tests::netns::NetNs::existing(&format!("{prefix}-node0"));
    let early_demux = || -> Result<String> {
        Ok(ns.run("cat", &["/proc/sys/net/ipv4/tcp_early_demux"])?.trim().to_owned())
    };
    ensure!(early_demux()? == "1", "a new namespace starts with early demux on");
    let log = dir.join("logs/ipamd.log");
    let log_arg = log.display().to_string();
    let env = [
        ("AWS_EC2_ENDPOINT", inside.ec2_url.as_str()),
        ("CLUSTER_ENDPOINT", inside.kube_url.as_str()),
        ("HTTP_TIMEOUT", "20"),
        ("DISABLE_TCP_EARLY_DEMUX", "true"),
        ("AWS_VPC_K8S_CNI_LOGLEVEL", "INFO"),
        ("AWS_VPC_K8S_CNI_LOG_FILE", log_arg.as_str()),
    ];
    let mut cmd = agent::command(sim, prefix, 0, dir, &env)?;
    cmd.env_remove("AWS_ENDPOINT_URL_EC2").env_remove("RUST_LOG");
    let kubeconfig = dir.join(format!("kubeconfig-{}", agent::AGENT.token));
    std::fs::write(&kubeconfig, kube_api::kubeconfig_with_token("http://127.0.0.1:9", agent::AGENT.token))?;
    let before = sim_calls(sim)?;
    let mut daemon = eniguard_tests::process::Daemon::spawn(&mut cmd)?;
    daemon.wait_for_line("ready:", Duration::from_secs(60)).context("agent ready")?;
    let after = sim_calls(sim)?;
    ensure!(after.get("DescribeNetworkInterfaces") > before.get("DescribeNetworkInterfaces"), "{after:?}");
    ensure!(early_demux()? == "0", "DISABLE_TCP_EARLY_DEMUX=true left tcp_early_demux on");
    let text = std::fs::read_to_string(&log).with_context(|| format!("{}", log.display()))?;
    let records: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(
        records.iter().any(|r| r["message"].as_str().is_some_and(|m| m.starts_with("local API on"))),
        "the log file lacks the agent's records: {text}"
    );
    ensure!(records.iter().all(|r| r["level"] != "DEBUG"), "LOGLEVEL=INFO wrote DEBUG records: {text}");
    daemon.terminate()?;
    Ok(())
}

/// DISABLE_NETWORK_RESOURCE_PROVISIONING and ENABLE_IMDS_ONLY_MODE on a node whose primary ENI
/// someone gave 4 secondary addresses: in IMDS-only mode the agent makes no EC2 call at all,
/// from start through a pod's ADD and several pool ticks, although WARM_IP_TARGET=10 asks for
/// more; its pool is those 4 and the pod gets one of them. With provisioning off alone it reads
/// EC2 (DescribeNetworkInterfaces) and still changes nothing there.
pub fn without_provisioning(ctx: &mut Ctx) -> Result<()> {
    let w = World::new(ctx, "noprov", &Scenario::default_scenario())?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    let primary = rt.block_on(attached(ec2, &node.instance_id))?.remove(&0).context("the primary ENI")?;
    let primary_id = primary.network_interface_id().context("id")?.to_owned();
    let given = rt.block_on(
        ec2.assign_private_ip_addresses()
            .network_interface_id(&primary_id)
            .secondary_private_ip_address_count(4)
            .send(),
    )?;
    let given: Vec<String> = given
        .assigned_private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address().map(str::to_owned))
        .collect();
    ensure!(given.len() == 4, "{given:?}");
    let before = sim_calls(sim)?;
    let env = [("ENABLE_IMDS_ONLY_MODE", "true"), ("WARM_IP_TARGET", "10")];
    let agent = agent::start(sim, prefix, 0, dir, &env)?;
    let socket = dir.join("run/eniguard.sock");
    let add = serde_json::json!({"clientVersion": env!("CARGO_PKG_VERSION"), "networkName": "aws-cni",
        "containerId": "c0ffee", "ifName": "eth0", "netns": "/var/run/netns/cni-1",
        "podNamespace": "default", "podName": "web"});
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&socket)
        .args(["-X", "POST", "-H", "content-type: application/json", "--data-binary", &add.to_string()])
        .arg("http://agent/v1/cni/add")
        .output()?;
    let reply: Value = serde_json::from_slice(&out.stdout).context("ADD reply")?;
    let ip = reply["ip"].as_str().context("ip")?;
    ensure!(given.iter().any(|g| g == ip), "{ip} is not one of the given {given:?}");
    std::thread::sleep(Duration::from_secs(6));
    ensure!(agent.metric("awscni_total_ip_addresses")? == 4.0, "the pool is what IMDS shows");
    ensure!(sim_calls(sim)? == before, "IMDS-only mode called EC2: {before:?} → {:?}", sim_calls(sim)?);
    agent.daemon.terminate()?;

    let env = [("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true"), ("WARM_IP_TARGET", "10")];
    let agent = agent::start(sim, prefix, 0, dir, &env)?;
    std::thread::sleep(Duration::from_secs(6));
    let after = sim_calls(sim)?;
    let changed: BTreeMap<&String, u64> = after
        .iter()
        .filter(|(action, n)| before.get(*action) != Some(*n))
        .map(|(action, n)| (action, n - before.get(action).copied().unwrap_or(0)))
        .collect();
    ensure!(
        changed.keys().all(|a| a.starts_with("Describe"))
            && changed.contains_key(&"DescribeNetworkInterfaces".to_owned()),
        "provisioning off: EC2 read only, got {changed:?}"
    );
    ensure!(rt.block_on(attached(ec2, &node.instance_id))?.len() == 1, "an ENI was created");
    drop(agent);
    Ok(())
}

/// EC2 as a fleet sees it, at a small scale: the account's buckets at 0.02 of EC2's sizes and
/// rates (so a few calls empty them) and DescribeNetworkInterfaces 1.5 s behind every create and
/// attach. The agent (WARM_IP_TARGET=12: one ENI more than the primary) still gets its ENI, creates exactly one ENI (no duplicate
/// for one it could not describe yet), and leaves none unattached; then it restarts into the same
/// state without creating another.
pub fn under_buckets_and_describe_lag(ctx: &mut Ctx) -> Result<()> {
    let mut scenario = Scenario::default_scenario();
    scenario.ec2_buckets = Some(eniguard_tests::sim::scenario::BucketsSpec::Scaled(
        eniguard_tests::sim::scenario::ScaledBuckets { scale: 0.02 },
    ));
    scenario.describe_lag_ms = 1500;
    let w = World::new(ctx, "lag", &scenario)?;
    let World { sim, node, dir, prefix, ec2, rt } = &w;
    // 9 addresses fit on the primary ENI: 12 need a second ENI.
    let env = [("WARM_IP_TARGET", "12")];
    // Another tenant of the account has just spent the DescribeNetworkInterfaces bucket (2
    // tokens at this scale, 0.4 a second): the agent's first read at start waits its turn.
    for _ in 0..4 {
        let filter = Filter::builder().name("vpc-id").values("vpc-0e1a2b3c4d5e6f701").build();
        let _ = rt.block_on(ec2.describe_network_interfaces().filters(filter).send());
    }
    let agent = agent::start(sim, prefix, 0, dir, &env)?;
    // Read from the model, not through the API: the test's own calls would spend the account's
    // tokens too.
    let enis = || -> (usize, usize) {
        sim.with_ec2(|s| {
            let attached = s.ec2.attached_to(&node.instance_id).len();
            (attached, s.ec2.enis.values().filter(|e| e.attachment.is_none()).count())
        })
    };
    eventually("the warm ENI", Duration::from_secs(30), || Ok((enis().0 == 2).then_some(())))?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(enis() == (2, 0), "one ENI created, none left unattached: {:?}", enis());
    let created = sim_calls(sim)?.get("CreateNetworkInterface").copied().unwrap_or(0);
    ensure!(created == 1, "CreateNetworkInterface called {created} times");
    agent.daemon.terminate()?;
    let again = agent::start(sim, prefix, 0, dir, &env)?;
    std::thread::sleep(Duration::from_secs(3));
    ensure!(enis() == (2, 0), "after a restart: {:?}", enis());
    let throttled = agent::sim_throttled(sim)?;
    println!("  throttled by the buckets: {throttled:?}");
    ensure!(!throttled.is_empty(), "the buckets never ran dry: the test shows nothing");
    drop(again);
    Ok(())
}

/// An instance type the built-in table lacks (m8g.large: limits from DescribeInstanceTypes), and
/// the pool shrinking when the operator lowers the warm targets: after a restart with
/// MINIMUM_IP_TARGET 25 → WARM_IP_TARGET 1, the ENIs no pod needs are detached and deleted once
/// past their minimum lifetime (60 s), and EC2 no longer has them.
pub fn unknown_type_and_shrink(ctx: &mut Ctx) -> Result<()> {
    let mut scenario = Scenario::default_scenario();
    scenario.nodes[0].instance_type = "m8g.large".into();
    let w = World::new(ctx, "shrink", &scenario)?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    let agent = agent::start(sim, prefix, 0, dir, &[("MINIMUM_IP_TARGET", "25")])?;
    ensure!(sim_calls(sim)?.get("DescribeInstanceTypes") == Some(&1), "{:?}", sim_calls(sim)?);
    ensure!(agent.metric("eniguard_ipam_eni_max")? == 3.0, "m8g.large's limits from EC2");
    let three = eventually("three ENIs for MINIMUM_IP_TARGET=25", Duration::from_secs(30), || {
        let enis = rt.block_on(attached(ec2, &node.instance_id))?;
        Ok((enis.len() == 3).then_some(enis))
    })?;
    let extra: Vec<String> = three
        .iter()
        .filter(|(device, _)| **device > 0)
        .filter_map(|(_, n)| n.network_interface_id().map(str::to_owned))
        .collect();
    agent.daemon.terminate()?;
    let agent = agent::start(sim, prefix, 0, dir, &[("WARM_IP_TARGET", "1")])?;
    eventually("the surplus ENIs deleted", Duration::from_secs(120), || {
        let enis = rt.block_on(attached(ec2, &node.instance_id))?;
        Ok((enis.len() == 1).then_some(()))
    })?;
    // Deleted once the detach completed (DeleteNetworkInterface retried while it is in use).
    eventually("the surplus ENIs gone from EC2", Duration::from_secs(30), || {
        let left = extra
            .iter()
            .filter(|id| {
                rt.block_on(ec2.describe_network_interfaces().network_interface_ids(*id).send()).is_ok()
            })
            .count();
        Ok((left == 0).then_some(()))
    })?;
    let calls = sim_calls(sim)?;
    ensure!(calls.get("DetachNetworkInterface").copied().unwrap_or(0) >= 2, "{calls:?}");
    ensure!(agent.metric("eniguard_ipam_enis")? == 1.0, "the agent still counts the deleted ENIs");
    drop(agent);
    Ok(())
}

/// `curl --unix-socket <run dir>/eniguard.sock`: the agent's local API answers as the CNI plugin
/// will call it. ADD hands out a pool address from the ENI that holds it, only after it is in the
/// checkpoint, and is idempotent per key; DEL releases (and is fine twice); another version and
/// a malformed body are refused with the field or both versions named; the socket is 0600.
pub fn local_api(ctx: &mut Ctx) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new(ctx, "api", &Scenario::default_scenario())?;
    let World { sim, dir, prefix, .. } = &w;
    let agent = agent::start(sim, prefix, 0, dir, &[])?;
    let socket = dir.join("run/eniguard.sock");
    let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "socket mode {mode:o}");
    let curl = |method: &str, path: &str, body: &str| -> Result<(u16, Value)> {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&socket)
            .args(["-X", method, "-H", "content-type: application/json", "--data-binary", body])
            .arg(format!("http://agent{path}"))
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        let (json, code) = text.rsplit_once('\n').context("curl output")?;
        Ok((code.parse()?, serde_json::from_str(json).unwrap_or(Value::Null)))
    };
    let version = env!("CARGO_PKG_VERSION");
    let add = serde_json::json!({"clientVersion": version, "networkName": "eniguard", "containerId": "c0ffee",
        "ifName": "eth0", "netns": "/var/run/netns/cni-1", "podNamespace": "default", "podName": "web"});
    let (code, reply) = curl("POST", "/v1/cni/add", &add.to_string())?;
    ensure!(code == 200, "add: {code} {reply}");
    let ip = reply["ip"].as_str().context("ip")?.to_owned();
    ensure!(reply["deviceNumber"] == 0 && reply["routeTable"].is_null() && reply["mtu"] == 9001, "{reply}");
    ensure!(reply["vpcCidrs"].as_array().is_some_and(|c| c.iter().any(|c| c == "10.0.0.0/16")), "{reply}");
    let kept =
        eniguard::ipam::checkpoint::Checkpoint::new(dir.join("ipam.json")).read()?.context("checkpoint")?;
    ensure!(
        kept.allocations.iter().any(|a| a.ip.to_string() == ip && a.pod.name == "web"),
        "not checkpointed: {kept:?}"
    );
    let (code, again) = curl("POST", "/v1/cni/add", &add.to_string())?;
    ensure!(code == 200 && again["ip"] == ip.as_str(), "ADD is not idempotent: {again}");
    let assigned = agent.metric("eniguard_ipam_addresses{state=\"assigned\"}");
    ensure!(
        matches!(assigned, Ok(1.0)),
        "assigned gauge: {assigned:?} in {}",
        agent.get(agent::METRICS_PORT, "/metrics")?
    );

    let mut old = add.clone();
    old["clientVersion"] = "0.0.1".into();
    let (code, e) = curl("POST", "/v1/cni/add", &old.to_string())?;
    ensure!(code == 409 && e["kind"] == "version_mismatch", "{code} {e}");
    ensure!(e["message"].as_str().is_some_and(|m| m.contains("0.0.1") && m.contains(version)), "{e}");
    let (code, e) = curl("POST", "/v1/cni/add", r#"{"clientVersion": "x"}"#)?;
    ensure!(code == 400 && e["message"].as_str().is_some_and(|m| m.contains("networkName")), "{code} {e}");
    // The plugin's STATUS, as the runtime calls it, against the running agent: success, no output.
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "eniguard", "type": "eniguard-cni",
        "agentSocket": socket.display().to_string()});
    let mut status = std::process::Command::new(eniguard_tests::cni::plugin_bin())
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut status.stdin.take().context("stdin")?, conf.to_string().as_bytes())?;
    let out = status.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout.is_empty(),
        "STATUS: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, s) = curl("GET", "/v1/cni/status", "")?;
    ensure!(code == 200 && s["ready"] == true && s["available"] == 8, "{code} {s}");

    let del = serde_json::json!({"clientVersion": version, "networkName": "eniguard", "containerId": "c0ffee", "ifName": "eth0"});
    let (code, d) = curl("POST", "/v1/cni/del", &del.to_string())?;
    ensure!(code == 200 && d["released"] == ip.as_str(), "{code} {d}");
    let (code, d) = curl("POST", "/v1/cni/del", &del.to_string())?;
    ensure!(code == 200 && d["released"].is_null(), "a second DEL: {code} {d}");
    let kept =
        eniguard::ipam::checkpoint::Checkpoint::new(dir.join("ipam.json")).read()?.context("checkpoint")?;
    ensure!(kept.allocations.is_empty(), "still checkpointed: {kept:?}");
    drop(agent);
    Ok(())
}

/// IMDS lags behind EC2 (3 s here): an ENI another tool attached at device 1 is not in IMDS yet
/// when the agent needs its warm ENI, so the agent's attach at IMDS's lowest free index (1) is
/// refused; the agent asks EC2 once (DescribeInstances) and attaches at 2.
pub fn attach_past_a_lagging_imds(ctx: &mut Ctx) -> Result<()> {
    let mut scenario = Scenario::default_scenario();
    scenario.imds_propagation_delay_ms = 3000;
    let w = World::new(ctx, "idx", &scenario)?;
    let World { sim, rt, ec2, node, dir, prefix } = &w;
    let other = rt.block_on(
        ec2.create_network_interface()
            .subnet_id(&sim.subnets["node-a"])
            .groups(&sim.security_groups["eks-node"])
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(aws_sdk_ec2::types::ResourceType::NetworkInterface)
                    .tags(
                        aws_sdk_ec2::types::Tag::builder()
                            .key("node.k8s.amazonaws.com/no_manage")
                            .value("true")
                            .build(),
                    )
                    .build(),
            )
            .send(),
    )?;
    let other = other.network_interface().and_then(|e| e.network_interface_id()).context("id")?.to_owned();
    rt.block_on(
        ec2.attach_network_interface()
            .network_interface_id(&other)
            .instance_id(&node.instance_id)
            .device_index(1)
            .send(),
    )?;
    let _agent = agent::start(sim, prefix, 0, dir, &[("WARM_IP_TARGET", "12")])?;
    let enis = eventually("the agent's ENI", Duration::from_secs(30), || {
        let enis = rt.block_on(attached(ec2, &node.instance_id))?;
        Ok((enis.len() == 3).then_some(enis))
    })?;
    ensure!(
        enis.get(&1).and_then(|e| e.network_interface_id()) == Some(other.as_str()),
        "device 1 is the other tool's"
    );
    let calls = sim_calls(sim)?;
    ensure!(calls.get("DescribeInstances") == Some(&1), "one DescribeInstances: {calls:?}");
    ensure!(
        calls.get("AttachNetworkInterface") == Some(&3),
        "the test's, the refused one, the agent's at 2: {calls:?}"
    );
    Ok(())
}
