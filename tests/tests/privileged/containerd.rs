//! Pods started the way a node starts them: the kubelet's CRI calls to Debian's containerd,
//! which runs in the simulated node's namespace and calls the plugin that the agent installed,
//! with the conflist that the agent wrote, unedited. What a pod got is read back from
//! containerd, EC2, the kernel and the VPC's recorder.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{ensure, Context as _, Result};
use eniguard::net::names::host_veth_name;
use eniguard_tests::{
    containerd::{Containerd, BUSYBOX_IMAGE},
    cri::{Cri, Exec, PodSpec},
    sim::{fabric::Verdict, kube_api},
};

use crate::{
    cni::{Node, ENV},
    harness::Ctx,
};

/// A node whose pods containerd starts: the agent (and its simulated VPC) and the runtime.
/// The runtime is declared first so that it stops first, while the agent still answers DELs.
pub(crate) struct Kubelet {
    pub runtime: Containerd,
    pub node: Node,
}

impl Kubelet {
    pub fn start(ctx: &Ctx, tag: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::on(Node::start(ctx, tag, env)?)
    }

    /// containerd on a node whose agent is ready.
    pub fn on(node: Node) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-containerd", node.prefix));
        let runtime = Containerd::start(&node.ns, &dir, &node.dir.join("bin"), &node.dir.join("net.d"))?;
        Ok(Self { runtime, node })
    }

    pub fn cri(&self) -> &Cri {
        &self.runtime.cri
    }

    pub fn block_on<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.runtime.block_on(f)
    }

    /// The kubelet's pod: its API object first (as the scheduler made it), then RunPodSandbox.
    pub fn run_pod(&self, name: &str) -> Result<(PodSpec, String)> {
        self.run_pod_with(name, serde_json::json!({}))
    }

    /// [`Kubelet::run_pod`] for a pod with more metadata (`labels`, `annotations`); the
    /// annotations also go to the runtime, as the kubelet passes them.
    pub fn run_pod_with(&self, name: &str, metadata: serde_json::Value) -> Result<(PodSpec, String)> {
        let mut pod = self.runtime.pod("default", name, &format!("uid-{name}"));
        if let Some(a) = metadata["annotations"].as_object() {
            pod.annotations =
                a.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect();
        }
        self.node.create_pod_with(name, metadata)?;
        let id = self.block_on(self.cri().run_pod(&pod)).with_context(|| {
            format!("RunPodSandbox {name}\ncontainerd's log:\n{}", tail(&self.runtime.log()))
        })?;
        Ok((pod, id))
    }

    /// A running busybox container in the sandbox (sleeps until stopped).
    pub fn start_busybox(&self, pod: &PodSpec, sandbox: &str) -> Result<String> {
        self.block_on(self.cri().start_container(sandbox, pod, "app", BUSYBOX_IMAGE, &["sleep", "3600"]))
    }

    /// The pod's address as containerd reports it, checked to be ready.
    pub fn pod_ip(&self, sandbox: &str) -> Result<Ipv4Addr> {
        let status = self.block_on(self.cri().status(sandbox))?;
        ensure!(status.ready, "sandbox {sandbox} is not ready");
        status.ip.parse().with_context(|| format!("sandbox {sandbox}: ip `{}`", status.ip))
    }

    /// The kubelet's cleanup of sandboxes that did not become ready: each is stopped and removed.
    pub fn remove_not_ready(&self) -> Result<()> {
        for (id, ready) in self.block_on(self.cri().list_pods())? {
            if !ready {
                self.block_on(self.cri().stop_and_remove(&id))?;
            }
        }
        Ok(())
    }

    /// RunPodSandbox as the kubelet keeps trying it: a sandbox that failed is removed and the pod
    /// tried again a second later, until `patience` has passed; then the last error.
    pub fn run_pod_retrying(&self, pod: &PodSpec, patience: Duration) -> Result<String> {
        let started = std::time::Instant::now();
        loop {
            match self.block_on(self.cri().run_pod(pod)) {
                Ok(id) => return Ok(id),
                Err(e) if started.elapsed() > patience => return Err(e),
                Err(_) => {
                    self.remove_not_ready()?;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// `count` pings from the container to the VPC's router, `wait` seconds for each reply.
    pub fn ping(&self, container: &str, count: u32, wait: u32) -> Result<Exec> {
        let (count, wait) = (count.to_string(), wait.to_string());
        self.block_on(self.cri().exec(
            container,
            &["ping", "-c", &count, "-W", &wait, "-i", "0.2", "10.0.0.1"],
            Duration::from_secs(10),
        ))
    }

    /// The container pings the VPC's router; every frame the VPC saw from `ip` left through the
    /// ENI that EC2 says holds it, never the trunk.
    pub fn reaches_the_vpc(&self, container: &str, ip: Ipv4Addr) -> Result<String> {
        let fabric = self.node.fabric()?;
        fabric.clear();
        let ping = self.ping(container, 2, 2)?;
        ensure!(ping.exit_code == 0, "{ip}: ping from the container: {} {}", ping.stdout, ping.stderr);
        let eni = self.node.eni_holding(ip)?;
        let eni_id = eni.network_interface_id().context("eni id")?.to_owned();
        ensure!(eni.interface_type().map(|t| t.as_str()) != Some("trunk"), "{ip} is on the trunk");
        let frames: Vec<_> = fabric.frames().into_iter().filter(|f| f.src == ip).collect();
        ensure!(!frames.is_empty(), "the VPC saw nothing from {ip}");
        for f in &frames {
            ensure!(
                f.eni_id == eni_id && f.verdict == Verdict::Delivered && f.vlan.is_none(),
                "{ip} left through {} ({:?}), expected {eni_id}",
                f.eni_id,
                f.verdict
            );
        }
        Ok(eni_id)
    }

    /// The addresses the agent's checkpoint holds, by sandbox id.
    pub fn checkpoint(&self) -> Result<BTreeMap<String, Ipv4Addr>> {
        let kept = eniguard::ipam::checkpoint::Checkpoint::new(self.node.dir.join("ipam.json"))
            .read()?
            .context("checkpoint")?;
        let held: BTreeMap<String, Ipv4Addr> =
            kept.allocations.iter().map(|a| (a.key.container_id.clone(), a.ip)).collect();
        ensure!(held.len() == kept.allocations.len(), "a sandbox holds two addresses in the checkpoint");
        Ok(held)
    }

    /// Nothing of pod `name` (address `ip`) is left on the host: no veth, rule or route.
    pub fn host_is_clean_of(&self, name: &str, ip: Ipv4Addr) -> Result<()> {
        // The veth goes with the pod's namespace, which containerd removes after DEL.
        let veth = host_veth_name("eni", "default", name);
        crate::live_guard::eventually(&format!("{veth} of {name} gone"), Duration::from_secs(5), || {
            Ok(self.node.ns.link(&veth).is_err())
        })?;
        let rules = self.node.rules_for(ip)?;
        ensure!(rules.is_empty(), "rules of {name} ({ip}) left: {rules:?}");
        let routes = self.node.ns.ip(&["route", "show", "table", "all", &format!("{ip}/32")])?;
        ensure!(routes.trim().is_empty(), "routes of {name} ({ip}) left: {routes}");
        Ok(())
    }

    /// The kubelet's teardown of every sandbox, then the runtime stops with nothing left behind.
    pub fn stop(self) -> Result<()> {
        let Self { runtime, node } = self;
        let pods = runtime.block_on(runtime.cri.list_pods())?;
        for (id, _) in pods {
            runtime.block_on(runtime.cri.stop_and_remove(&id))?;
        }
        runtime.stop()?;
        drop(node);
        Ok(())
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// In each mode (secondary addresses in the node's subnet; custom networking; custom networking
/// with prefix delegation) containerd starts pods with the conflist as the agent wrote it: each
/// gets an address of the expected subnet on a non-trunk ENI and its container reaches the VPC
/// through that ENI. The agent killed -9 and restarted writes the same conflist, and the next
/// pod starts.
pub fn pods_on_the_right_eni(ctx: &mut Ctx) -> Result<()> {
    let custom: Vec<(&str, &str)> = ENV
        .iter()
        .copied()
        .filter(|(k, _)| !matches!(*k, "ENABLE_PREFIX_DELEGATION" | "WARM_PREFIX_TARGET"))
        .collect();
    // (tag, the agent's environment, the subnet its pods' addresses come from)
    type Mode<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let modes: [Mode; 3] =
        [("ctdflat", &[], "node-a"), ("ctdcustom", &custom, "pods-a"), ("ctdprefix", ENV, "pods-a")];
    for (tag, env, subnet) in modes {
        let k = Kubelet::start(ctx, tag, env)?;
        let subnet_id = k.node.sim.subnets[subnet].clone();
        let conflist = std::fs::read(k.node.dir.join("net.d/10-eniguard.conflist"))?;
        let check_pod = |name: &str| -> Result<Ipv4Addr> {
            let (pod, sandbox) = k.run_pod(name)?;
            let ip = k.pod_ip(&sandbox)?;
            let eni = k.node.eni_holding(ip)?;
            ensure!(
                eni.subnet_id() == Some(subnet_id.as_str()),
                "{tag}: {ip} on subnet {:?}",
                eni.subnet_id()
            );
            let container = k.start_busybox(&pod, &sandbox)?;
            let eni_id = k.reaches_the_vpc(&container, ip)?;
            println!("  {tag}: {name} got {ip} on {eni_id} ({subnet})");
            Ok(ip)
        };
        check_pod("web-0")?;
        check_pod("web-1")?;
        k.node.kill_and_restart()?;
        k.node.agent().daemon.wait_for_line("ready:", Duration::from_secs(60))?;
        let again = std::fs::read(k.node.dir.join("net.d/10-eniguard.conflist"))?;
        ensure!(again == conflist, "{tag}: the restarted agent rewrote the conflist differently");
        check_pod("web-2")?;
        let held = k.checkpoint()?;
        ensure!(held.len() == 3, "{tag}: checkpoint holds {held:?}");
        k.stop()?;
    }
    Ok(())
}

/// containerd's DEL sequence for one pod (StopPodSandbox with the netns, StopPodSandbox again
/// and RemovePodSandbox without one) succeeds at each step and leaves nothing: the checkpoint
/// forgets the sandbox at the first, no veth, rule or route stays, the address cools down. With
/// NETWORK_POLICY_ENFORCING_MODE, a stand-in network-policy agent hears of the pod and each DEL.
pub fn del_sequence_is_idempotent(ctx: &mut Ctx) -> Result<()> {
    let mut env = ENV.to_vec();
    env.push(("NETWORK_POLICY_ENFORCING_MODE", "standard"));
    let k = Kubelet::start(ctx, "ctddel", &env)?;
    let _rt = k.node.rt.enter();
    let policy_agent =
        eniguard_tests::npa::StandIn::start(&eniguard_tests::agent::aws_node_dir(&k.node.dir))?;
    let (pod, sandbox) = k.run_pod("web")?;
    let ip = k.pod_ip(&sandbox)?;
    k.start_busybox(&pod, &sandbox)?;
    ensure!(k.checkpoint()?.get(&sandbox) == Some(&ip), "the checkpoint holds {sandbox} → {ip}");
    let cooling_before = k.node.agent().metric("eniguard_ipam_addresses{state=\"cooling\"}")?;
    k.block_on(k.cri().stop_pod(&sandbox)).context("the first StopPodSandbox")?;
    ensure!(!k.checkpoint()?.contains_key(&sandbox), "the checkpoint still holds {sandbox}");
    k.host_is_clean_of("web", ip)?;
    k.block_on(k.cri().stop_pod(&sandbox)).context("the second StopPodSandbox")?;
    k.block_on(k.cri().remove_pod(&sandbox)).context("RemovePodSandbox")?;
    k.host_is_clean_of("web", ip)?;
    let cooling = k.node.agent().metric("eniguard_ipam_addresses{state=\"cooling\"}")?;
    ensure!(cooling == cooling_before + 1.0, "cooling {cooling_before} → {cooling}: released once");
    let log = std::fs::read_to_string(k.node.dir.join("plugin.log")).unwrap_or_default();
    // One line per invocation (the plugin's debug log): stop, stop again, remove.
    let dels = log.lines().filter(|l| l.contains(&format!("Del container {sandbox}"))).count();
    ensure!(
        dels == 3,
        "the plugin was called for {dels} DELs of {sandbox}, containerd 1.6 sends three\n{log}"
    );
    println!("  containerd called DEL {dels} times for one pod; each succeeded");
    // The network-policy agent heard of the pod once plumbed, and of each DEL (as upstream's).
    use eniguard_tests::npa::NpCall;
    let calls = policy_agent.calls();
    let enforce = NpCall::Enforce {
        namespace: "default".into(),
        name: "web".into(),
        mode: "standard".into(),
        interfaces: 1,
    };
    let delete = NpCall::Delete { namespace: "default".into(), name: "web".into() };
    ensure!(
        calls.first() == Some(&enforce) && calls.len() == 1 + dels && calls[1..].iter().all(|c| *c == delete),
        "the network-policy agent's calls: {calls:?}"
    );
    ensure!(k.block_on(k.cri().list_pods())?.is_empty(), "containerd still lists a sandbox");
    k.stop()
}

/// containerd restarted (its shims and pods keep running): the running pod keeps its network,
/// its container still answers exec through the new containerd, and the next pod starts.
pub fn restart_keeps_pods(ctx: &mut Ctx) -> Result<()> {
    let mut k = Kubelet::start(ctx, "ctdrestart", ENV)?;
    let (pod, sandbox) = k.run_pod("web-0")?;
    let ip = k.pod_ip(&sandbox)?;
    let container = k.start_busybox(&pod, &sandbox)?;
    let before = k.reaches_the_vpc(&container, ip)?;
    k.runtime.restart()?;
    ensure!(k.pod_ip(&sandbox)? == ip, "the pod's address after the restart");
    let after = k.reaches_the_vpc(&container, ip)?;
    ensure!(before == after, "{ip} moved from {before} to {after}");
    let (pod1, sandbox1) = k.run_pod("web-1")?;
    let ip1 = k.pod_ip(&sandbox1)?;
    let c1 = k.start_busybox(&pod1, &sandbox1)?;
    k.reaches_the_vpc(&c1, ip1)?;
    let held = k.checkpoint()?;
    ensure!(
        held.len() == 2 && held.get(&sandbox) == Some(&ip) && held.get(&sandbox1) == Some(&ip1),
        "{held:?}"
    );
    k.stop()
}

/// A burst of 30 RunPodSandbox while the agent is killed with -9 and restarted: every sandbox
/// ends ready with a working network, or fails and is stopped and removed as the kubelet does
/// (and its pod retried); afterwards the checkpoint holds exactly the ready sandboxes, no
/// address twice, one veth and two rules each.
pub fn burst_with_kill_9(ctx: &mut Ctx) -> Result<()> {
    const PODS: usize = 30;
    let k = Kubelet::start(ctx, "ctdburst", ENV)?;
    for i in 0..PODS {
        k.node.create_pod(&format!("b{i}"))?;
    }
    let specs: Vec<PodSpec> =
        (0..PODS).map(|i| k.runtime.pod("default", &format!("b{i}"), &format!("uid-b{i}"))).collect();
    let burst = async {
        let runs = specs.iter().map(|p| {
            let cri = k.cri().clone();
            let p = p.clone();
            tokio::spawn(async move { cri.run_pod(&p).await })
        });
        // The kill lands mid-burst: once a third of the pods have been given an address.
        let log = k.node.dir.join("plugin.log");
        let kill = async {
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.lines().filter(|l| l.contains("ADD default/b")).count() >= PODS / 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            k.node.kill_and_restart()
        };
        let (results, killed) = tokio::join!(futures::future::join_all(runs), kill);
        killed?;
        Ok::<_, anyhow::Error>(results)
    };
    let results = k.block_on(burst)?;
    let mut ready: BTreeMap<String, (PodSpec, String)> = BTreeMap::new();
    let mut failed = Vec::new();
    for (spec, r) in specs.iter().zip(results) {
        match r? {
            Ok(id) => {
                ready.insert(spec.name.clone(), (spec.clone(), id));
            }
            Err(e) => failed.push((spec.clone(), format!("{e:#}"))),
        }
    }
    println!("  burst: {} ready at once, {} failed while the agent restarted", ready.len(), failed.len());
    if let Some((_, why)) = failed.first() {
        let start = why.char_indices().rev().nth(160).map_or(0, |(i, _)| i);
        println!("    e.g. …{}", &why[start..]);
    }
    // The kubelet: stop and remove what is not ready, then try those pods again.
    k.node.agent().daemon.wait_for_line("ready:", Duration::from_secs(60))?;
    k.remove_not_ready()?;
    for (spec, _) in failed {
        // As the kubelet: again until it starts (the pool may still be growing back).
        let id = k
            .run_pod_retrying(&spec, Duration::from_secs(30))
            .with_context(|| format!("{} retried", spec.name))?;
        ready.insert(spec.name.clone(), (spec, id));
    }
    ensure!(ready.len() == PODS, "{} of {PODS} pods ready", ready.len());
    let mut live = BTreeMap::new();
    for (name, (spec, id)) in &ready {
        let ip = k.pod_ip(id)?;
        let c = k.start_busybox(spec, id)?;
        k.reaches_the_vpc(&c, ip).with_context(|| name.clone())?;
        live.insert(id.clone(), ip);
    }
    let held = k.checkpoint()?;
    ensure!(held == live, "the checkpoint {held:?} disagrees with the ready sandboxes {live:?}");
    let distinct: std::collections::BTreeSet<_> = live.values().collect();
    ensure!(distinct.len() == PODS, "an address is assigned twice");
    let rules = k.node.ns.ip(&["rule", "show"])?;
    for prio in ["512:", "1536:"] {
        let n = rules.lines().filter(|l| l.starts_with(prio)).count();
        ensure!(n == PODS, "{n} rules at {prio} for {PODS} pods");
    }
    let veths = k.node.ns.ip(&["-br", "link"])?.lines().filter(|l| l.starts_with("eni")).count();
    ensure!(veths == PODS, "{veths} host veths for {PODS} pods");
    k.stop()
}

/// The sum of `family`'s series that carry `label` (e.g. `pod="web"`), from the agent's metrics.
fn series_sum(k: &Kubelet, family: &str, label: &str) -> Result<f64> {
    let agent = k.node.agent();
    let text = agent.get(eniguard_tests::agent::METRICS_PORT, "/metrics")?;
    Ok(eniguard_tests::http::body(&text)
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The guard judges what containers send. Two pods started by containerd, one left to the
/// node's mode (monitor) and one annotated `eniguard.io/guard-mode: enforce`: their pings are
/// checked and nothing is counted against them. Then the host loses their source rules (1536),
/// so that their packets leave through the primary ENI instead of theirs: the monitored pod's
/// packets are counted as violations under its name and still leave; not one of the enforced
/// pod's reaches the VPC, and its drops are counted under its name.
pub fn guard_judges_containers(ctx: &mut Ctx) -> Result<()> {
    let k = Kubelet::start(ctx, "ctdguard", ENV)?;
    let mut pods = Vec::new();
    for (name, mode) in [("watched", None), ("strict", Some("enforce"))] {
        let metadata = match mode {
            Some(m) => serde_json::json!({"annotations": {eniguard::guard::derive::POD_MODE_ANNOTATION: m}}),
            None => serde_json::json!({}),
        };
        let (pod, sandbox) = k.run_pod_with(name, metadata)?;
        let ip = k.pod_ip(&sandbox)?;
        let container = k.start_busybox(&pod, &sandbox)?;
        pods.push((name, ip, container));
    }
    let violations =
        |name: &str| series_sum(&k, "eniguard_guard_pod_violation_packets_total", &format!("pod=\"{name}\""));
    for (name, ip, container) in &pods {
        k.reaches_the_vpc(container, *ip).with_context(|| format!("{name} before the drift"))?;
        ensure!(violations(name)? == 0.0, "{name}: correct packets counted as violations");
    }
    // The drift: the pods' source rules are gone, so their packets take the main table.
    for (_, ip, _) in &pods {
        for rule in k.node.rules_for(*ip)?.iter().filter(|r| r.starts_with("1536:")) {
            let args: Vec<&str> = rule.split_whitespace().skip(1).collect();
            let mut cmd = vec!["rule", "del", "priority", "1536"];
            cmd.extend(args.iter().copied().filter(|a| *a != "all"));
            k.node.ns.ip(&cmd).with_context(|| format!("deleting `{rule}`"))?;
        }
    }
    let fabric = k.node.fabric()?;
    for (name, ip, container) in &pods {
        fabric.clear();
        let ping = k.ping(container, 3, 1)?;
        let seen: Vec<_> = fabric.frames().into_iter().filter(|f| f.src == *ip).collect();
        let v = violations(name)?;
        println!(
            "  {name} ({ip}) after the drift: ping exit {}, {} frames reached the VPC, {v} violations",
            ping.exit_code,
            seen.len()
        );
        ensure!(v >= 3.0, "{name}: {v} violations counted for 3 misrouted packets");
        if *name == "strict" {
            ensure!(
                seen.is_empty() && ping.exit_code != 0,
                "enforce: {} packets of {name} left: {seen:?}",
                seen.len()
            );
            let dropped = series_sum(&k, "eniguard_guard_pod_dropped_packets_total", "pod=\"strict\"")?;
            ensure!(dropped >= 3.0, "{name}: {dropped} drops counted");
        } else {
            ensure!(!seen.is_empty(), "monitor: {name}'s packets should still leave");
        }
    }
    k.stop()
}

/// A branch-ENI pod started by containerd (security groups for pods, strict mode): it gets the
/// address the Resource Controller annotated, and its container's packets reach the VPC tagged
/// with its VLAN through the trunk. Needs 802.1Q VLAN devices: skipped, with the reason, on a
/// kernel without them (the kernel matrix plumbs branch pods by hand there).
pub fn branch_pod(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start_with(ctx, "ctdbranch", ENV, |s| {
        s.security_group_policies
            .push(eniguard_tests::sim::scenario::PolicySpec::for_app("default", "payments", "eks-pods"));
    })?;
    let probe =
        node.ns.ip(&["link", "add", "egprobe", "type", "veth", "peer", "name", "egprobep"]).and_then(|_| {
            node.ns.ip(&["link", "add", "link", "egprobe", "name", "egprobe.9", "type", "vlan", "id", "9"])
        });
    let _ = node.ns.ip(&["link", "del", "egprobe"]);
    if let Err(e) = probe {
        return Err(crate::harness::skip(format!(
            "this kernel has no 802.1Q VLAN devices ({e}); cni_branch_pods_strict_and_standard plumbs branch pods in the kernel matrix"
        )));
    }
    let k = Kubelet::on(node)?;
    k.node.create_pod_with("pay", serde_json::json!({"labels": {"app": "payments"}}))?;
    let key = eniguard_tests::sim::kube_api::PODS.key(Some("default"), "pay");
    let mut annotation = serde_json::Value::Null;
    crate::live_guard::eventually("the branch ENI annotation", Duration::from_secs(20), || {
        let p = k.node.sim.kube.read(|s| s.get(&key)).map_err(|e| anyhow::anyhow!(e.message))?;
        if let Some(a) =
            p.pointer("/metadata/annotations/vpc.amazonaws.com~1pod-eni").and_then(|a| a.as_str())
        {
            annotation = serde_json::from_str(a)?;
        }
        Ok(!annotation.is_null())
    })?;
    let want_ip: Ipv4Addr = annotation[0]["privateIp"].as_str().context("privateIp")?.parse()?;
    let vlan = annotation[0]["vlanId"].as_u64().context("vlanId")?;
    let spec = k.runtime.pod("default", "pay", "uid-pay");
    // The kubelet retries while the agent has not adopted the trunk yet.
    let sandbox = k.run_pod_retrying(&spec, Duration::from_secs(20)).context("RunPodSandbox pay")?;
    let ip = k.pod_ip(&sandbox)?;
    ensure!(ip == want_ip, "pay got {ip}, the annotation says {want_ip}");
    let container = k.start_busybox(&spec, &sandbox)?;
    let fabric = k.node.fabric()?;
    fabric.clear();
    let ping = k.ping(&container, 2, 2)?;
    let frames: Vec<_> = fabric.frames().into_iter().filter(|f| f.src == ip).collect();
    ensure!(
        !frames.is_empty()
            && frames.iter().all(|f| f.vlan.map(u64::from) == Some(vlan) && f.verdict == Verdict::Delivered),
        "pay's packets (ping exit {}): {frames:?}",
        ping.exit_code
    );
    k.stop()
}

/// `eniguard audit` beside a node run as aws-node v1.16.3 runs it (#2792), whose pods containerd
/// started through aws-node's conflist and an emulation of upstream's plugin
/// (`tests/aws-node/aws-cni`, upstream's layout; the addresses are the ones ipamd gave, one of
/// them from the trunk): audit mode judges the containers' packets, catches shop/payments-0
/// with its identity and counts nothing against default/web.
pub fn audit_beside_aws_node(ctx: &mut Ctx) -> Result<()> {
    use eniguard::ipam::{
        checkpoint::{Checkpoint, Contents},
        model::{AllocKey, Allocation, PodRef},
    };
    let scenario =
        eniguard_tests::sim::scenario::Scenario::parse(include_str!("../../scenarios/incident.yaml"))?;
    let w = crate::agent::World::new(ctx, "ctdaudit", &scenario)?;
    let layout = crate::aws_node::set_up_enis(&w)?;
    let node_ns = eniguard_tests::netns::NetNs::existing(&format!("{}-node0", w.prefix));
    // aws-node's CNI directories: its conflist and plugin, and what ipamd answers for each pod.
    let (bin, conf) = (w.dir.join("cni-bin"), w.dir.join("cni-net.d"));
    std::fs::create_dir_all(bin.join("aws-node-pods"))?;
    std::fs::create_dir_all(&conf)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("aws-node/aws-cni");
    std::fs::copy(&script, bin.join("aws-cni"))?;
    let list = serde_json::json!({"cniVersion": "0.4.0", "name": "aws-cni", "disableCheck": true,
        "plugins": [{"name": "aws-cni", "type": "aws-cni", "vethPrefix": "eni", "mtu": "9001"}]});
    std::fs::write(conf.join("10-aws.conflist"), list.to_string())?;
    let pods = [
        ("shop", "payments-0", layout.victim.ip, layout.trunk_table),
        ("default", "web", layout.web_ip, layout.pods_table),
    ];
    for (namespace, name, ip, table) in pods {
        std::fs::write(bin.join(format!("aws-node-pods/{namespace}_{name}")), format!("{ip} {table}\n"))?;
    }
    let runtime = Containerd::start(&node_ns, &w.dir.join("containerd"), &bin, &conf)?;
    let mut allocations = Vec::new();
    let mut containers = Vec::new();
    for (i, (namespace, name, ip, _)) in pods.into_iter().enumerate() {
        let spec = runtime.pod(namespace, name, &format!("uid-{name}"));
        let sandbox =
            runtime.block_on(runtime.cri.run_pod(&spec)).with_context(|| format!("{namespace}/{name}"))?;
        let status = runtime.block_on(runtime.cri.status(&sandbox))?;
        ensure!(
            status.ready && status.ip == ip.to_string(),
            "{namespace}/{name}: {status:?}, ipamd gave {ip}"
        );
        let container = runtime.block_on(runtime.cri.start_container(
            &sandbox,
            &spec,
            "app",
            BUSYBOX_IMAGE,
            &["sleep", "3600"],
        ))?;
        containers.push((name, ip, container));
        allocations.push(Allocation {
            key: AllocKey { network_name: "aws-cni".into(), container_id: sandbox, if_name: "eth0".into() },
            ip,
            pod: PodRef { namespace: namespace.into(), name: name.into() },
            allocated_at: i as u64 + 1,
        });
    }
    // aws-node's checkpoint, keyed by the sandboxes containerd made.
    Checkpoint::new(w.dir.join("ipam.json")).write(&Contents { allocations, ..Contents::default() })?;
    let mut audit = eniguard_tests::process::Daemon::spawn(&mut eniguard_tests::agent::audit_command(
        &w.sim,
        &w.prefix,
        0,
        &w.dir,
        crate::agent::INCIDENT_ENV,
    )?)?;
    let line = audit.wait_for_line("ready:", Duration::from_secs(60)).context("audit ready")?;
    ensure!(line.contains("2 pods judged") && line.contains("1 findings"), "{line}");
    let fabric = w.sim.fabric.as_deref().context("a fabric")?;
    fabric.clear();
    for (name, ip, container) in &containers {
        let ping = runtime.block_on(runtime.cri.exec(
            container,
            &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.1"],
            Duration::from_secs(10),
        ))?;
        ensure!(ping.exit_code == 0, "{name} ({ip}) pings: {} {}", ping.stdout, ping.stderr);
    }
    ensure!(
        fabric.frames().iter().any(|f| f.src == layout.victim.ip && f.eni_id == layout.trunk_id),
        "payments-0 leaves through the trunk"
    );
    let text = eniguard_tests::http::get_in(&node_ns, "127.0.0.1:61680", "/metrics")?;
    let series = "eniguard_guard_pod_violation_packets_total{namespace=\"shop\",pod=\"payments-0\",reason=\"sg_mismatch\"}";
    let caught: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .with_context(|| format!("no {series} in audit mode's metrics"))?;
    ensure!(caught >= 3.0, "{series} = {caught}");
    ensure!(!text.contains("pod=\"web\""), "the correct pod is counted");
    println!("  audit mode caught shop/payments-0 ({caught} packets, sg_mismatch); default/web not counted");
    audit.terminate()?;
    for (id, _) in runtime.block_on(runtime.cri.list_pods())? {
        runtime.block_on(runtime.cri.stop_and_remove(&id))?;
    }
    let rules = node_ns.ip(&["rule", "show"])?;
    ensure!(
        !rules.lines().any(|l| l.starts_with("512:") || l.starts_with("1536:")),
        "aws-cni DEL left rules: {rules}"
    );
    runtime.stop()
}

/// DISABLE_POD_V6 under containerd: the conflist chains Debian's `tuning` last with upstream's
/// three sysctls, and in a pod containerd starts IPv6 is off (its container reads 1 from each),
/// while its IPv4 address and the kubelet's teardown are as for any pod.
pub fn disable_pod_v6(ctx: &mut Ctx) -> Result<()> {
    if !std::path::Path::new("/usr/lib/cni/tuning").exists() {
        return Err(crate::harness::skip("no /usr/lib/cni/tuning (containernetworking-plugins)"));
    }
    let k = Kubelet::start(ctx, "ctdv6off", &[("DISABLE_POD_V6", "true")])?;
    let last = k.node.conflist["plugins"].as_array().and_then(|p| p.last()).cloned().unwrap_or_default();
    ensure!(
        last["type"] == "tuning" && last["sysctl"]["net.ipv6.conf.all.disable_ipv6"] == "1",
        "tuning not chained: {}",
        k.node.conflist
    );
    let (pod, sandbox) = k.run_pod("nov6")?;
    let ip = k.pod_ip(&sandbox)?;
    let container = k.start_busybox(&pod, &sandbox)?;
    for key in ["all", "default", "lo"] {
        let path = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
        let read = k.block_on(k.cri().exec(&container, &["cat", &path], Duration::from_secs(10)))?;
        ensure!(read.exit_code == 0 && read.stdout.trim() == "1", "{path} in the pod ({ip}): {read:?}");
    }
    k.block_on(k.cri().stop_and_remove(&sandbox))?;
    k.stop()
}

/// ANNOTATE_POD_IP and ENABLE_BANDWIDTH_PLUGIN under containerd: the conflist chains Debian's
/// `bandwidth`; a pod with `kubernetes.io/ingress-bandwidth` gets a tbf qdisc on its host veth
/// (containerd passes the annotation as the `bandwidth` capability); its API object carries
/// `vpc.amazonaws.com/pod-ips` with its address once RunPodSandbox returns, blanked after the
/// kubelet's teardown.
pub fn annotation_and_bandwidth(ctx: &mut Ctx) -> Result<()> {
    if !std::path::Path::new("/usr/lib/cni/bandwidth").exists() {
        return Err(crate::harness::skip("no /usr/lib/cni/bandwidth (containernetworking-plugins)"));
    }
    let env = [("ANNOTATE_POD_IP", "true"), ("ENABLE_BANDWIDTH_PLUGIN", "true")];
    let k = Kubelet::start(ctx, "ctdbw", &env)?;
    let plugins: Vec<&str> = k.node.conflist["plugins"]
        .as_array()
        .context("plugins")?
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    ensure!(plugins.last() == Some(&"bandwidth"), "bandwidth not chained: {plugins:?}");
    let limits = serde_json::json!({"annotations": {"kubernetes.io/ingress-bandwidth": "10M"}});
    let (_, sandbox) = k.run_pod_with("limited", limits)?;
    let ip = k.pod_ip(&sandbox)?;
    let pod_ips = || -> Result<Option<String>> {
        let pod = k
            .node
            .sim
            .kube
            .read(|s| s.get(&kube_api::PODS.key(Some("default"), "limited")))
            .map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(pod["metadata"]["annotations"]["vpc.amazonaws.com/pod-ips"].as_str().map(str::to_owned))
    };
    ensure!(pod_ips()? == Some(ip.to_string()), "annotation {:?}, address {ip}", pod_ips()?);
    let veth = host_veth_name("eni", "default", "limited");
    let qdisc = k.node.ns.run("tc", &["qdisc", "show", "dev", &veth])?;
    ensure!(qdisc.contains("tbf") && qdisc.contains("rate 10Mbit"), "{veth}: {qdisc}");
    k.block_on(k.cri().stop_and_remove(&sandbox))?;
    ensure!(pod_ips()?.as_deref() == Some(""), "after the teardown: {:?}", pod_ips()?);
    k.stop()
}
