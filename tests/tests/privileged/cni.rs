//! `eniguard-cni` end to end: the real plugin, called as containerd calls it (environment and
//! stdin, see `eniguard_tests::cni`), inside a vpcsim node namespace where `eniguard agent` runs;
//! pods are network namespaces; their traffic is real and the VPC namespace's recorder says
//! which ENI it left through. What a pod got is read back from EC2 and the kernel, not from the
//! plugin's words.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use aws_sdk_ec2::{config::retry::RetryConfig, types::NetworkInterface};
use eniguard::net::names::host_veth_name;
use eniguard_tests::{
    agent::{self, Agent},
    cni::{self, Sandbox},
    netns::{sh, NetNs},
    sim::{
        fabric::{Fabric, Verdict, INTERNET, ROUTER6},
        kube_api,
        scenario::{Scenario, Sim},
    },
};
use serde_json::Value;

use crate::{agent::attached, clients::ec2_client, harness::Ctx};

/// Custom networking + security groups for pods + prefix delegation (the #2792 setup), a short
/// cooldown so that a released address is seen coming back.
pub(crate) const ENV: &[(&str, &str)] = &[
    ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
    ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
    ("ENABLE_POD_ENI", "true"),
    ("ENABLE_PREFIX_DELEGATION", "true"),
    ("WARM_PREFIX_TARGET", "1"),
    ("IP_COOLDOWN_PERIOD", "3"),
];

/// The conflist and plugin the agent installed under `dir` (its --cni-conf-dir and
/// --cni-bin-dir), once it is ready.
fn installed(dir: &std::path::Path) -> Result<(Value, std::path::PathBuf)> {
    let list =
        std::fs::read_to_string(dir.join("net.d/10-eniguard.conflist")).context("the installed conflist")?;
    let plugin = dir.join("bin/eniguard-cni");
    ensure!(plugin.exists(), "no plugin in {}", plugin.display());
    Ok((serde_json::from_str(&list)?, plugin))
}

/// The incident scenario's m5.large with its agent, and what the tests need around it.
pub(crate) struct Node {
    pub sim: Sim,
    pub rt: tokio::runtime::Runtime,
    pub ec2: aws_sdk_ec2::Client,
    /// Behind a lock so that a thread can kill and restart it.
    pub agent: std::sync::Mutex<Agent>,
    /// The agent's environment (for restarts).
    pub env: Vec<(String, String)>,
    pub ns: NetNs,
    pub dir: std::path::PathBuf,
    pub prefix: String,
    /// What the agent installed: the conflist and the plugin binary.
    pub conflist: Value,
    pub plugin: std::path::PathBuf,
}

impl Node {
    pub fn start(ctx: &Ctx, tag: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(ctx, tag, env, |_| ())
    }

    /// With the scenario changed first (max-pods, policies).
    pub fn start_with(
        ctx: &Ctx,
        tag: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut Scenario),
    ) -> Result<Self> {
        let prefix = format!("{}-{tag}", ctx.prefix());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mut scenario = Scenario::parse(include_str!("../../scenarios/incident.yaml"))?;
        tweak(&mut scenario);
        let sim = rt.block_on(Sim::start_with_fabric(&scenario, &prefix))?;
        let ec2 = ec2_client(&sim.ec2_url, RetryConfig::disabled());
        let dir = std::env::temp_dir().join(format!("{prefix}-agent"));
        let _ = std::fs::remove_dir_all(&dir);
        // Debian's portmap, bandwidth, tuning and host-local (containernetworking-plugins), as a
        // node's bin dir holds them.
        for plugin in ["portmap", "bandwidth", "tuning", "host-local"] {
            let debian = std::path::Path::new("/usr/lib/cni").join(plugin);
            if debian.exists() {
                std::fs::create_dir_all(dir.join("bin"))?;
                std::fs::copy(&debian, dir.join("bin").join(plugin))?;
            }
        }
        let log = dir.join("plugin.log").display().to_string();
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        env.push(("AWS_VPC_K8S_PLUGIN_LOG_FILE".into(), log));
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let agent = std::sync::Mutex::new(agent::start(&sim, &prefix, 0, &dir, &pairs)?);
        let ns = NetNs::existing(&format!("{prefix}-node0"));
        let (conflist, plugin) = installed(&dir)?;
        Ok(Self { sim, rt, ec2, agent, env, ns, dir, prefix, conflist, plugin })
    }

    /// What the VPC saw of `pod` pinging the internet address.
    fn to_internet(&self, pod: &NetNs) -> Result<Vec<eniguard_tests::sim::fabric::Frame>> {
        pod.run("ping", &["-c", "1", "-W", "2", &INTERNET.to_string()])
            .context("the pod pings the internet")?;
        Ok(self.fabric()?.frames().into_iter().filter(|f| f.dst == INTERNET).collect())
    }

    pub fn agent(&self) -> std::sync::MutexGuard<'_, Agent> {
        self.agent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Kills the agent with -9 and starts another (not waiting for it to be ready).
    pub fn kill_and_restart(&self) -> Result<()> {
        let mut agent = self.agent();
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(agent.daemon.pid() as i32, libc::SIGKILL) };
        agent.daemon.wait_exit(Duration::from_secs(5))?;
        let pairs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        *agent = agent::spawn(&self.sim, &self.prefix, 0, &self.dir, &pairs)?;
        Ok(())
    }

    pub fn fabric(&self) -> Result<&Fabric> {
        self.sim.fabric.as_deref().context("a fabric")
    }

    pub fn conf(&self, version: &str, prev: Option<&Value>) -> Value {
        cni::conf(&self.conflist, Some(version), prev)
    }

    /// Pod `name` in `default` on this node, as the API server has it (so that the agent's pod
    /// GC leaves its address alone).
    pub fn create_pod(&self, name: &str) -> Result<()> {
        self.create_pod_with(name, serde_json::json!({}))
    }

    /// [`Node::create_pod`] with more metadata (`labels`, `annotations`).
    pub fn create_pod_with(&self, name: &str, mut metadata: Value) -> Result<()> {
        metadata["name"] = Value::from(name);
        let pod = serde_json::json!({"metadata": metadata,
            "spec": {"nodeName": self.sim.nodes[0].name, "containers": [{"name": "c"}]}});
        self.sim.kube.create(kube_api::PODS, Some("default"), pod).map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(())
    }

    /// A sandbox for pod `name` (see [`Node::create_pod`]), the node's bin dir as CNI_PATH.
    pub fn sandbox(&self, container_id: &str, name: &str, netns: &NetNs) -> Result<Sandbox> {
        self.create_pod(name)?;
        let mut sandbox = Sandbox::new(container_id, "default", name, netns);
        sandbox.cni_path = self.dir.join("bin").display().to_string();
        Ok(sandbox)
    }

    pub fn call(&self, command: &str, sandbox: &Sandbox, conf: &Value) -> Result<cni::Outcome> {
        cni::call(&self.ns, &self.plugin, command, sandbox, conf)
    }

    /// The ENI that EC2 says holds `ip` (as a secondary address or inside a /28 prefix).
    pub fn eni_holding(&self, ip: Ipv4Addr) -> Result<NetworkInterface> {
        let enis = self.rt.block_on(attached(&self.ec2, &self.sim.nodes[0].instance_id))?;
        enis.into_values()
            .find(|n| {
                n.private_ip_addresses()
                    .iter()
                    .any(|a| a.private_ip_address() == Some(ip.to_string().as_str()))
                    || n.ipv4_prefixes().iter().any(|p| {
                        p.ipv4_prefix()
                            .and_then(|p| p.split('/').next()?.parse::<Ipv4Addr>().ok())
                            .is_some_and(|base| u32::from(ip) & !0xf == u32::from(base))
                    })
            })
            .with_context(|| format!("no ENI holds {ip}"))
    }

    /// The node's primary ENI (device 0), as EC2 describes it.
    pub fn primary_eni(&self) -> Result<NetworkInterface> {
        let mut enis = self.rt.block_on(attached(&self.ec2, &self.sim.nodes[0].instance_id))?;
        enis.remove(&0).context("the primary ENI")
    }

    /// The host's rules that mention `ip` (`ip rule` lines).
    pub fn rules_for(&self, ip: Ipv4Addr) -> Result<Vec<String>> {
        let out = self.ns.ip(&["rule", "show"])?;
        Ok(out
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == ip.to_string()))
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn pod_ip(result: &Value) -> Result<Ipv4Addr> {
    let addr = result["ips"][0]["address"].as_str().context("ips[0].address")?;
    Ok(addr.split('/').next().context("address")?.parse()?)
}

/// Once per cniVersion: ADD → the pod has an address of the ENIConfig's subnet and pings the
/// VPC through that ENI (never the trunk); CHECK passes, then notices a removed route; DEL
/// removes links, routes and rules; the address cools down and comes back.
pub fn pods_per_version(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start(ctx, "cniv", ENV)?;
    let pods_a = node.sim.subnets["pods-a"].clone();
    let log = node.dir.join("plugin.log");
    let plugin = &node.conflist["plugins"][0];
    ensure!(
        node.conflist["name"] == "aws-cni" && plugin["type"] == "eniguard-cni" && plugin["mtu"] == "9001",
        "installed conflist: {}",
        node.conflist
    );
    // Chained with portmap; cniVersion 0.4.0 for runtimes that read only it, cniVersions what
    // both plugins speak (Debian's portmap stops at 1.0.0).
    if std::path::Path::new("/usr/lib/cni/portmap").exists() {
        ensure!(
            node.conflist["plugins"][1]["type"] == "portmap"
                && node.conflist["cniVersion"] == "0.4.0"
                && node.conflist["cniVersions"] == serde_json::json!(["0.4.0", "1.0.0"]),
            "portmap chained, 0.4.0 and cniVersions [0.4.0, 1.0.0]: {}",
            node.conflist
        );
    } else {
        println!("  (no /usr/lib/cni/portmap: the chained conflist is not checked)");
    }
    let enis = node.rt.block_on(attached(&node.ec2, &node.sim.nodes[0].instance_id))?;
    let primary = enis.get(&0).context("the primary ENI")?;
    let primary_eni = primary.network_interface_id().context("id")?.to_owned();
    let primary_ip: Ipv4Addr = primary.private_ip_address().context("primary ip")?.parse()?;
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod_ns = NetNs::create(&format!("{}-pod{i}", node.prefix))?;
        let pod_name = format!("web-{i}");
        let sandbox = node.sandbox(&format!("sandbox{i}"), &pod_name, &pod_ns)?;
        let add = node.call("ADD", &sandbox, &node.conf(version, None))?;
        ensure!(add.success, "{version} ADD: {} {}", add.stdout, add.stderr);
        let result = add.json();
        ensure!(result["cniVersion"] == version, "{version}: result {result}");
        ensure!(
            (result["ips"][0].get("version") == Some(&Value::from("4"))) == version.starts_with("0."),
            "{version}: ips[].version in {result}"
        );
        let ip = pod_ip(&result)?;
        let host_veth = host_veth_name("eni", "default", &pod_name);
        ensure!(result["interfaces"][0]["name"] == host_veth.as_str(), "{version}: host veth in {result}");
        ensure!(result["interfaces"][1]["name"] == "eth0", "{version}: containerd needs eth0: {result}");

        // EC2: an ENI of the ENIConfig's subnet, not the trunk.
        let eni = node.eni_holding(ip)?;
        let eni_id = eni.network_interface_id().context("eni id")?.to_owned();
        ensure!(eni.subnet_id() == Some(pods_a.as_str()), "{version}: {ip} on subnet {:?}", eni.subnet_id());
        ensure!(eni.interface_type().map(|t| t.as_str()) != Some("trunk"), "{version}: {ip} on the trunk");
        // The kernel: host veth, route, rules 512 and 1536 (the ENI's table).
        node.ns.link(&host_veth).with_context(|| format!("{version}: host veth {host_veth}"))?;
        let rules = node.rules_for(ip)?;
        ensure!(rules.iter().any(|r| r.starts_with("512:") && r.contains(&format!("to {ip}"))), "{rules:?}");
        ensure!(
            rules.iter().any(|r| r.starts_with("1536:") && r.contains(&format!("from {ip}"))),
            "{rules:?}"
        );
        let pod_addr = pod_ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
        ensure!(pod_addr.contains(&format!("{ip}/32")), "{version}: pod address {pod_addr}");

        // Real traffic: the pod pings the VPC; the VPC saw it arrive through that ENI only.
        node.fabric()?.clear();
        if let Err(e) = pod_ns.run("ping", &["-c", "2", "-W", "2", "-i", "0.2", "10.0.0.1"]) {
            let diag = [
                node.ns.ip(&["rule"]).unwrap_or_default(),
                node.ns.ip(&["route", "show", "table", "all"]).unwrap_or_default(),
                node.ns.ip(&["-br", "link"]).unwrap_or_default(),
                node.ns.ip(&["-br", "addr"]).unwrap_or_default(),
                pod_ns.ip(&["route"]).unwrap_or_default(),
                pod_ns.ip(&["neigh"]).unwrap_or_default(),
                node.fabric()?.vpc().ip(&["route"]).unwrap_or_default(),
                format!("{:#?}", node.fabric()?.frames()),
            ];
            anyhow::bail!("the pod pings the VPC: {e}\n{}", diag.join("\n---\n"));
        }
        let frames: Vec<_> = node.fabric()?.frames().into_iter().filter(|f| f.src == ip).collect();
        ensure!(!frames.is_empty(), "{version}: the VPC saw nothing from {ip}");
        for f in &frames {
            ensure!(
                f.eni_id == eni_id && f.verdict == Verdict::Delivered && f.vlan.is_none(),
                "{version}: {ip} left through {} ({:?}), expected {eni_id}",
                f.eni_id,
                f.verdict
            );
        }

        // Outside the VPC: SNAT to the primary ENI's address, out through the primary ENI.
        node.fabric()?.clear();
        let out = node.to_internet(&pod_ns)?;
        ensure!(
            !out.is_empty()
                && out.iter().all(|f| f.src == primary_ip
                    && f.eni_id == primary_eni
                    && f.verdict == Verdict::Delivered),
            "{version}: to the internet, {ip} should leave as {primary_ip} through {primary_eni}: {out:?}"
        );

        // CHECK: fine, then a route goes missing and CHECK says which.
        let check = node.call("CHECK", &sandbox, &node.conf(version, Some(&result)))?;
        ensure!(check.success && check.stdout.is_empty(), "{version} CHECK: {}", check.stdout);
        node.ns.ip(&["route", "del", &format!("{ip}/32"), "dev", &host_veth])?;
        let check = node.call("CHECK", &sandbox, &node.conf(version, Some(&result)))?;
        ensure!(
            !check.success && check.msg().contains("host route"),
            "{version} CHECK after a removed route: {}",
            check.stdout
        );

        // DEL: links, routes and rules go; a second DEL is fine; the address cools down.
        let cooling_before = node.agent().metric("eniguard_ipam_addresses{state=\"cooling\"}")?;
        if version == "1.1.0" {
            // GC: an attachment in the valid list stays; one that is not goes, with its rules.
            let gc = |valid: Value| -> Result<cni::Outcome> {
                let mut conf = node.conf(version, None);
                conf["cni.dev/valid-attachments"] = valid;
                let env: Vec<(&str, String)> =
                    vec![("CNI_COMMAND", "GC".into()), ("CNI_PATH", "/opt/cni/bin".into())];
                cni::exec(&node.ns, &node.plugin, &env, conf.to_string().as_bytes())
            };
            let keep = gc(serde_json::json!([{"containerID": sandbox.container_id, "ifname": "eth0"}]))?;
            ensure!(
                keep.success && node.rules_for(ip)?.len() == 2,
                "GC with the pod listed: {}",
                keep.stdout
            );
            let drop = gc(serde_json::json!([]))?;
            ensure!(
                drop.success && node.rules_for(ip)?.is_empty(),
                "GC without the pod: {} {:?}",
                drop.stdout,
                node.rules_for(ip)?
            );
        }
        let del = node.call("DEL", &sandbox, &node.conf(version, Some(&result)))?;
        ensure!(del.success && del.stdout.is_empty(), "{version} DEL: {} {}", del.stdout, del.stderr);
        ensure!(node.rules_for(ip)?.is_empty(), "{version}: rules left: {:?}", node.rules_for(ip)?);
        let routes = node.ns.ip(&["route", "show", &format!("{ip}/32")])?;
        ensure!(routes.trim().is_empty(), "{version}: route left: {routes}");
        let del = node.call("DEL", &sandbox, &node.conf(version, Some(&result)))?;
        ensure!(del.success, "{version}: a second DEL: {}", del.stdout);
        // The veth goes with the pod's namespace, which the runtime removes after DEL.
        ensure!(node.ns.link(&host_veth).is_ok(), "{version}: {host_veth} should stay until the netns goes");
        drop(pod_ns);
        crate::live_guard::eventually(
            &format!("{version}: {host_veth} gone with the netns"),
            Duration::from_secs(5),
            || Ok(node.ns.link(&host_veth).is_err()),
        )?;
        let cooling = node.agent().metric("eniguard_ipam_addresses{state=\"cooling\"}")?;
        ensure!(cooling == cooling_before + 1.0, "{version}: cooling {cooling_before} → {cooling}");
        // Back in the pool once the cooldown (3 s) is over, by the next pool tick at the latest.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while node.agent().metric("eniguard_ipam_addresses{state=\"cooling\"}")? != 0.0 {
            ensure!(std::time::Instant::now() < deadline, "{version}: {ip} still cooling after 15 s");
            std::thread::sleep(Duration::from_millis(250));
        }
        println!("  {version}: {ip} on {eni_id}, {} frames through it", frames.len());
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(logged.contains("ADD default/web-0"), "plugin log {log:?}: {logged}");

    // The agent stops: plugin and conflist stay (the node stays Ready) and ADD asks the kubelet
    // to retry soon.
    let pid = node.agent().daemon.pid();
    std::process::Command::new("kill").arg(pid.to_string()).status()?;
    ensure!(
        node.agent().daemon.wait_exit(Duration::from_secs(10))?.is_some(),
        "the agent did not stop on SIGTERM"
    );
    let (after, _) = installed(&node.dir)?;
    ensure!(after == node.conflist, "the conflist changed when the agent stopped: {after}");
    let pod_ns = NetNs::create(&format!("{}-podlate", node.prefix))?;
    let late = node.sandbox("sandboxlate", "late", &pod_ns)?;
    let add = node.call("ADD", &late, &node.conf("1.1.0", None))?;
    ensure!(
        add.code() == Some(11) && add.msg().contains("network is not ready"),
        "ADD without an agent: {}",
        add.stdout
    );
    Ok(())
}

/// Bad input gets the right code and message, and allocates nothing.
pub fn bad_input(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start(ctx, "cnibad", ENV)?;
    let assigned = || node.agent().metric("eniguard_ipam_addresses{state=\"assigned\"}");
    let pod_ns = NetNs::create(&format!("{}-podbad", node.prefix))?;
    let sandbox = node.sandbox("sandboxbad", "bad", &pod_ns)?;
    let conf = node.conf("1.0.0", None);
    type Case<'a> = (&'a str, Vec<(&'static str, String)>, Vec<u8>, u64, &'a str);
    let mut env = cni::env_for("ADD", &sandbox);
    let without =
        |k: &str, env: &[(&'static str, String)]| env.iter().filter(|(n, _)| *n != k).cloned().collect();
    let with = |k: &'static str, v: &str, env: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut e: Vec<_> = without(k, env);
        e.push((k, v.to_owned()));
        e
    };
    let body = conf.to_string().into_bytes();
    let cases: Vec<Case> = vec![
        ("malformed stdin", env.clone(), b"{\"cniVersion\":".to_vec(), 6, "network configuration on stdin"),
        ("no CNI_NETNS", without("CNI_NETNS", &env), body.clone(), 4, "CNI_NETNS"),
        ("no CNI_COMMAND", without("CNI_COMMAND", &env), body.clone(), 4, "CNI_COMMAND"),
        (
            "unknown cniVersion",
            env.clone(),
            node.conf("9.9.9", None).to_string().into_bytes(),
            1,
            "cniVersion `9.9.9`",
        ),
        ("no such netns", with("CNI_NETNS", "/run/netns/nope", &env), body.clone(), 4, "/run/netns/nope"),
        ("no pod name", with("CNI_ARGS", "IgnoreUnknown=1", &env), body.clone(), 4, "K8S_POD_NAME"),
    ];
    for (what, env, stdin, code, needle) in &cases {
        let out = cni::exec(&node.ns, &node.plugin, env, stdin)?;
        ensure!(!out.success && out.code() == Some(*code), "{what}: want code {code}, got {}", out.stdout);
        ensure!(out.msg().contains(needle), "{what}: message {:?} should name {needle}", out.msg());
        ensure!(assigned()? == 0.0, "{what}: an address was allocated");
    }
    // The agent down: ADD says "try again later" and "network is not ready"; DEL succeeds.
    let mut down = node.conf("1.0.0", None);
    let nowhere = node.dir.join("nowhere");
    std::fs::create_dir_all(&nowhere)?;
    down["agentSocket"] = Value::from(nowhere.join("eniguard.sock").display().to_string());
    let out = node.call("ADD", &sandbox, &down)?;
    ensure!(
        out.code() == Some(11) && out.msg().contains("network is not ready"),
        "agent down: {}",
        out.stdout
    );
    let out = node.call("DEL", &sandbox, &down)?;
    ensure!(out.success, "DEL with the agent down: {}", out.stdout);
    let queued = eniguard::cni::queue::pending(&nowhere.join("del-queue"));
    ensure!(
        queued.len() == 1 && queued[0].1.request.container_id == "sandboxbad",
        "the release is queued for the agent: {queued:?}"
    );
    let out = node.call("CHECK", &sandbox, &down)?;
    ensure!(out.code() == Some(11), "CHECK with the agent down: {}", out.stdout);
    // An interface of that name already in the pod: refused, and the address given back.
    pod_ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "other0"])?;
    env = cni::env_for("ADD", &sandbox);
    let out = cni::exec(&node.ns, &node.plugin, &env, &body)?;
    ensure!(!out.success && out.msg().contains("eth0 already exists"), "eth0 taken: {}", out.stdout);
    ensure!(assigned()? == 0.0, "eth0 taken: the address was kept");
    Ok(())
}

/// AWS_VPC_K8S_CNI_EXTERNALSNAT: no table of eniguard's, and a pod reaches outside the VPC with
/// its own address through its own ENI (a NAT gateway would translate it).
pub fn external_snat(ctx: &mut Ctx) -> Result<()> {
    let mut env = ENV.to_vec();
    env.push(("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"));
    let node = Node::start(ctx, "cniext", &env)?;
    // The table stays for NodePort support (its marks), without SNAT.
    let table = node.ns.run("nft", &["list", "table", "ip", "eniguard"])?;
    ensure!(!table.contains("snat") && !table.contains("postrouting"), "SNAT with external SNAT: {table}");
    let pod_ns = NetNs::create(&format!("{}-podext", node.prefix))?;
    let sandbox = node.sandbox("sandboxext", "ext", &pod_ns)?;
    let add = node.call("ADD", &sandbox, &node.conf("1.0.0", None))?;
    ensure!(add.success, "ADD: {}", add.stdout);
    let ip = pod_ip(&add.json())?;
    let eni = node.eni_holding(ip)?;
    let out = node.to_internet(&pod_ns)?;
    ensure!(
        !out.is_empty()
            && out.iter().all(|f| f.src == ip && Some(f.eni_id.as_str()) == eni.network_interface_id()),
        "{ip} should leave untranslated through its ENI: {out:?}"
    );
    Ok(())
}

/// An address whose pod is gone from the node without a DEL (the runtime lost it) is released
/// after the cooldown, its host rules with it; the address of a pod that exists stays.
pub fn gc_of_gone_pods(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start(ctx, "cnigc", ENV)?;
    let (kept_ns, gone_ns) = (
        NetNs::create(&format!("{}-podkept", node.prefix))?,
        NetNs::create(&format!("{}-podgone", node.prefix))?,
    );
    let kept = node.sandbox("sandboxkept", "kept", &kept_ns)?;
    // No Pod object: as if the pod was deleted while the agent could not hear the DEL.
    let gone = Sandbox::new("sandboxgone", "default", "gone", &gone_ns);
    let mut ips = Vec::new();
    for s in [&kept, &gone] {
        let add = node.call("ADD", s, &node.conf("1.0.0", None))?;
        ensure!(add.success, "ADD {}: {}", s.name, add.stdout);
        ips.push(pod_ip(&add.json())?);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while node.agent().metric("eniguard_pod_gc_released_total")? < 1.0 {
        ensure!(std::time::Instant::now() < deadline, "the gone pod's address was not collected in 30 s");
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(
        node.rules_for(ips[1])?.is_empty(),
        "rules of the collected address: {:?}",
        node.rules_for(ips[1])?
    );
    ensure!(node.rules_for(ips[0])?.len() == 2, "the kept pod lost its rules: {:?}", node.rules_for(ips[0])?);
    ensure!(node.agent().metric("eniguard_ipam_addresses{state=\"assigned\"}")? == 1.0, "assigned after GC");
    let ping = kept_ns.run("ping", &["-c", "1", "-W", "2", "10.0.0.1"]);
    ensure!(ping.is_ok(), "the kept pod lost its network: {ping:?}");
    Ok(())
}

/// A small xorshift generator: the churn's choices, reproducible from the seed it prints.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A pod as the runtime drives it: its namespace, its current sandbox and ADD result.
pub(crate) struct Pod {
    pub ns: NetNs,
    pub name: String,
    pub sandboxes: u32,
    pub live: Option<(Sandbox, Value)>,
}

/// Why ADDs were retried (the first words of the message), for the churn's report.
static RETRY_REASONS: std::sync::Mutex<std::collections::BTreeMap<String, u32>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// containerd's ADD: a new sandbox per attempt; a failed ADD is followed by a DEL of that
/// sandbox without prevResult; "try again later" is retried (the kubelet's 1 s, shortened).
pub(crate) fn runtime_add(node: &Node, pod: &mut Pod) -> Result<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut retries = 0;
    loop {
        pod.sandboxes += 1;
        let sandbox =
            Sandbox::new(&format!("{}-s{}", pod.name, pod.sandboxes), "default", &pod.name, &pod.ns);
        let add = node.call("ADD", &sandbox, &node.conf("1.0.0", None))?;
        if add.success {
            pod.live = Some((sandbox, add.json()));
            return Ok(retries);
        }
        ensure!(add.code() == Some(11), "ADD {}: {} {}", pod.name, add.stdout, add.stderr);
        let why: String = add.msg().chars().take(60).collect();
        *RETRY_REASONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(why).or_default() += 1;
        runtime_del(node, &sandbox, None)?;
        ensure!(
            std::time::Instant::now() < deadline,
            "{} found no address in 60 s: {}",
            pod.name,
            add.stdout
        );
        retries += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// containerd's DEL: retried until it succeeds (it does, agent or not, unless the queue is full).
pub(crate) fn runtime_del(node: &Node, sandbox: &Sandbox, prev: Option<&Value>) -> Result<()> {
    for _ in 0..50 {
        let del = node.call("DEL", sandbox, &node.conf("1.0.0", prev))?;
        if del.success {
            return Ok(());
        }
        ensure!(del.code() == Some(11), "DEL {}: {}", sandbox.container_id, del.stdout);
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("DEL {} kept failing", sandbox.container_id)
}

/// As many pods as the pool holds (100, prefix delegation on the m5.large's one pod ENI), then
/// 1,000 ADD/DEL operations while the agent is killed with -9 at random moments and restarted:
/// afterwards the checkpoint holds exactly the live sandboxes, no address twice, nothing leaked
/// (no stray rule, route or veth), and every pod reaches the VPC through the ENI that EC2 says
/// holds its address — never the trunk.
pub fn churn_with_kill_9(ctx: &mut Ctx) -> Result<()> {
    const PODS: usize = 100;
    const OPS: usize = 1000;
    // EKS runs an m5.large with prefix delegation at max-pods 110.
    // MINIMUM_IP_TARGET as an operator sets it for a known pod count: the pool is there at once.
    // A 1 s cooldown: with max-pods 110 and 100 pods, 10 spare addresses and the cooldown set
    // the churn's pace.
    let mut env: Vec<_> = ENV.iter().copied().filter(|(k, _)| *k != "IP_COOLDOWN_PERIOD").collect();
    env.extend([("MINIMUM_IP_TARGET", "110"), ("IP_COOLDOWN_PERIOD", "1")]);
    let node = Node::start_with(ctx, "cnichurn", &env, |s| s.nodes[0].max_pods = Some(110))?;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    println!("  seed {seed}");
    let mut pods = Vec::new();
    for i in 0..PODS {
        let name = format!("p{i}");
        let ns = NetNs::create(&format!("{}-{name}", node.prefix))?;
        let pod = serde_json::json!({"metadata": {"name": name},
            "spec": {"nodeName": node.sim.nodes[0].name, "containers": [{"name": "c"}]}});
        node.sim.kube.create(kube_api::PODS, Some("default"), pod).map_err(|e| anyhow::anyhow!(e.message))?;
        pods.push(Pod { ns, name, sandboxes: 0, live: None });
    }
    let started = std::time::Instant::now();
    for pod in &mut pods {
        runtime_add(&node, pod)?;
    }
    println!("  {PODS} pods up in {:.1} s", started.elapsed().as_secs_f64());

    let stop = std::sync::atomic::AtomicBool::new(false);
    let kills = std::sync::atomic::AtomicUsize::new(0);
    let (retries, churn_time) = std::thread::scope(|s| -> Result<(u32, Duration)> {
        let killer = s.spawn(|| -> Result<()> {
            let mut rng = Rng(seed.rotate_left(17) | 1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1000 + rng.below(4000)));
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                node.kill_and_restart()?;
                kills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        });
        let started = std::time::Instant::now();
        let mut retries = 0;
        let result = (|| -> Result<()> {
            for _ in 0..OPS / 2 {
                let pod = &mut pods[rng.below(PODS as u64) as usize];
                let (sandbox, result) = pod.live.take().context("a live sandbox")?;
                runtime_del(&node, &sandbox, Some(&result))?;
                retries += runtime_add(&node, pod)?;
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        killer.join().map_err(|_| anyhow::anyhow!("the killer thread panicked"))??;
        result.map(|()| (retries, started.elapsed()))
    })?;
    let kills = kills.into_inner();
    println!(
        "  {OPS} ADD/DEL in {:.1} s with {kills} kill -9 restarts ({retries} ADDs retried)",
        churn_time.as_secs_f64()
    );
    println!(
        "  retried because: {:?}",
        RETRY_REASONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    );
    ensure!(kills >= 3, "only {kills} restarts: the churn did not overlap the kills");

    // The last agent is ready and has drained what was queued while it was down.
    node.agent().daemon.wait_for_line("ready:", Duration::from_secs(60))?;
    let queue = node.dir.join("run/del-queue");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !eniguard::cni::queue::pending(&queue).is_empty() {
        ensure!(std::time::Instant::now() < deadline, "queued DELs not drained in 20 s");
        std::thread::sleep(Duration::from_millis(250));
    }
    let kept = eniguard::ipam::checkpoint::Checkpoint::new(node.dir.join("ipam.json"))
        .read()?
        .context("checkpoint")?;
    let live: std::collections::BTreeMap<String, Ipv4Addr> = pods
        .iter()
        .filter_map(|p| p.live.as_ref())
        .map(|(s, r)| Ok((s.container_id.clone(), pod_ip(r)?)))
        .collect::<Result<_>>()?;
    let held: std::collections::BTreeMap<String, Ipv4Addr> =
        kept.allocations.iter().map(|a| (a.key.container_id.clone(), a.ip)).collect();
    ensure!(held.len() == kept.allocations.len(), "a sandbox holds two addresses");
    let leaked: Vec<_> = held.keys().filter(|k| !live.contains_key(*k)).collect();
    ensure!(leaked.is_empty(), "leaked allocations: {leaked:?}");
    ensure!(held == live, "the checkpoint disagrees with the live sandboxes");
    let distinct: std::collections::BTreeSet<_> = live.values().collect();
    ensure!(distinct.len() == PODS, "an address is assigned twice");
    ensure!(
        node.agent().metric("eniguard_ipam_addresses{state=\"assigned\"}")? == PODS as f64,
        "assigned gauge"
    );
    // Nothing stray on the host: rules 512 and 1536 and the veths are exactly the live pods'.
    let rules = node.ns.ip(&["rule", "show"])?;
    for prio in ["512:", "1536:"] {
        let n = rules.lines().filter(|l| l.starts_with(prio)).count();
        ensure!(n == PODS, "{n} rules at {prio} for {PODS} pods");
    }
    let veths = node.ns.ip(&["-br", "link"])?.lines().filter(|l| l.starts_with("eni")).count();
    ensure!(veths == PODS, "{veths} host veths for {PODS} pods");
    // Every pod reaches the VPC through the ENI that holds its address.
    node.fabric()?.clear();
    for pod in &pods {
        pod.ns
            .run("ping", &["-c", "1", "-W", "2", "10.0.0.1"])
            .with_context(|| format!("{} pings the VPC", pod.name))?;
    }
    let frames = node.fabric()?.frames();
    let enis = node.rt.block_on(attached(&node.ec2, &node.sim.nodes[0].instance_id))?;
    let trunk = enis.values().find(|n| n.interface_type().map(|t| t.as_str()) == Some("trunk"));
    for ip in live.values() {
        let eni = node.eni_holding(*ip)?;
        let mine: Vec<_> = frames.iter().filter(|f| f.src == *ip).collect();
        ensure!(!mine.is_empty(), "nothing from {ip} reached the VPC");
        ensure!(
            mine.iter()
                .all(|f| Some(f.eni_id.as_str()) == eni.network_interface_id()
                    && f.verdict == Verdict::Delivered),
            "{ip} left through {:?}",
            mine.iter().map(|f| &f.eni_id).collect::<Vec<_>>()
        );
        ensure!(
            trunk.and_then(|t| t.network_interface_id()) != eni.network_interface_id(),
            "{ip} is on the trunk"
        );
    }
    Ok(())
}

/// Branch-ENI pods through the plugin's plumbing on a real 802.1Q kernel (the kernel matrix VMs;
/// skipped on a kernel without VLAN devices): a VLAN link on the trunk with the branch ENI's MAC,
/// table `vlan + 100`, strict mode's `iif` rules and standard mode's address rules, for IPv4 and
/// for IPv6 pods (IPv6 mode: the branch's IPv6 address, `fe80:ec2::1` as the VLAN's gateway,
/// the rules of IPv6); each pod reaches its branch subnet's router, which sits on a VLAN of that
/// id on the VPC side (so the frames were tagged), from the branch ENI's MAC; the guard judges
/// its packets; DEL's teardown removes link and rules.
pub fn branch_pods_strict_and_standard(ctx: &mut Ctx) -> Result<()> {
    use eniguard::net::pod::{self, BranchLink, PodNetwork};
    use eniguard_tests::{
        netns::in_netns,
        topology::{Topology, ETH2},
    };
    let topo = Topology::build(ctx.prefix())?;
    if let Err(e) =
        topo.node.ip(&["link", "add", "link", ETH2.name, "name", "probe", "type", "vlan", "id", "9"])
    {
        return Err(crate::harness::skip(format!("this kernel has no 802.1Q VLAN devices ({e})")));
    }
    topo.node.ip(&["link", "del", "probe"])?;
    let trunk = topo.node.ifindex(ETH2.name)?;
    // IPv6 forwarding, as the agent sets it in IPv6 mode; no duplicate address detection on
    // these private wires (new links inherit it).
    topo.node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    for ns in [&topo.node, &topo.vpc] {
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    }
    for (vlan, strict, ipv6) in
        [(7u16, true, false), (8u16, false, false), (9, true, true), (10, false, true)]
    {
        // The pod's address, the VLAN's gateway (what the table routes to), the router the pod
        // pings (its branch subnet's, on the VPC's end of the VLAN), its prefix length.
        let (ip, gw, router, len): (IpAddr, IpAddr, IpAddr, u8) = if ipv6 {
            let subnet = format!("2600:1f14:abc:de{vlan:02}");
            (format!("{subnet}::20").parse()?, ROUTER6.into(), format!("{subnet}::1").parse()?, 64)
        } else {
            let subnet = format!("10.0.{}", 57 + vlan);
            let gw: IpAddr = format!("{subnet}.1").parse()?;
            (format!("{subnet}.20").parse()?, gw, gw, 24)
        };
        let vpc_vlan = format!("{}.{vlan}", ETH2.peer);
        topo.vpc.ip(&[
            "link",
            "add",
            "link",
            ETH2.peer,
            "name",
            &vpc_vlan,
            "type",
            "vlan",
            "id",
            &vlan.to_string(),
        ])?;
        topo.vpc.ip(&["addr", "add", &format!("{router}/{len}"), "dev", &vpc_vlan])?;
        if ipv6 {
            topo.vpc.ip(&["addr", "add", &format!("{gw}/64"), "dev", &vpc_vlan])?;
        }
        topo.vpc.ip(&["link", "set", &vpc_vlan, "up"])?;
        let pod_ns = NetNs::create(&format!("{}-b{vlan}", ctx.prefix()))?;
        let host_veth =
            host_veth_name(if strict { "vlan" } else { "eni" }, "default", &format!("branch{vlan}"));
        let net = PodNetwork {
            netns: pod_ns.path(),
            if_name: "eth0".into(),
            host_veth: host_veth.clone(),
            ip,
            table: None,
            mtu: 1500,
        };
        let mac = format!("02:00:00:00:0{vlan}:01");
        let b = BranchLink { vlan_id: vlan, mac: mac.clone(), gateway: gw, parent_if_index: trunk, strict };
        let node_netlink = |f: fn(
            rtnetlink::Handle,
            PodNetwork,
            BranchLink,
        ) -> futures::future::BoxFuture<'static, Result<()>>| {
            let (net, b) = (net.clone(), b.clone());
            in_netns(&topo.node, move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection()?;
                    tokio::spawn(conn);
                    f(handle, net, b).await
                })
            })
        };
        node_netlink(|h, net, b| {
            Box::pin(async move { pod::setup_branch(&h, &net, &b).await.map(|_| ()).map_err(Into::into) })
        })?;
        let family = if ipv6 { "-6" } else { "-4" };
        let rules = topo.node.ip(&[family, "rule", "show"])?;
        let table = 100 + u32::from(vlan);
        if strict {
            ensure!(
                rules.contains(&format!("10:\tfrom all iif vlan.eth.{vlan} lookup {table}")),
                "strict rules: {rules}"
            );
            ensure!(
                rules.contains(&format!("10:\tfrom all iif {host_veth} lookup {table}")),
                "strict rules: {rules}"
            );
        } else {
            ensure!(rules.contains(&format!("1536:\tfrom {ip} lookup {table}")), "standard rules: {rules}");
            ensure!(
                rules.contains(&format!("512:\tfrom all to {ip} lookup main")),
                "standard rules: {rules}"
            );
        }
        // The VPC knows which MAC holds the branch address (EC2 needs no ARP): answers go to the
        // branch ENI's MAC, which only the VLAN link carries.
        topo.vpc.ip(&[
            family,
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &mac,
            "dev",
            &vpc_vlan,
            "nud",
            "permanent",
        ])?;
        pod_ns
            .run("ping", &["-c", "2", "-W", "2", &router.to_string()])
            .with_context(|| format!("VLAN {vlan}: the pod pings its subnet's router"))?;
        let stats: Value =
            serde_json::from_str(&topo.vpc.ip(&["-j", "-s", "link", "show", "dev", &vpc_vlan])?)?;
        let rx = stats[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or_default();
        ensure!(rx >= 2, "VLAN {vlan}: {rx} frames arrived tagged {vlan} at the VPC");
        guard_judges_branch_pod(ctx, &topo, &pod_ns, vlan, ip, router, strict)?;
        node_netlink(|h, net, b| {
            Box::pin(async move {
                pod::teardown_branch(&h, b.vlan_id, Some(&net.host_veth)).await.map_err(Into::into)
            })
        })?;
        let rules = topo.node.ip(&[family, "rule", "show"])?;
        ensure!(!rules.contains(&format!("lookup {table}")), "VLAN {vlan}: rules left: {rules}");
        ensure!(topo.node.link(&format!("vlan.eth.{vlan}")).is_err(), "VLAN {vlan}: link left");
        ensure!(topo.node.link(&host_veth).is_err(), "VLAN {vlan}: {host_veth} left");
        println!("  VLAN {vlan} ({}): {ip} via {mac}", if strict { "strict" } else { "standard" });
    }
    Ok(())
}

/// The guard with the spec the agent derives for this branch pod (`guard::derive`): tagged
/// through the trunk and its `vlan.eth.<id>` as its branch ENI with its policy's groups. While
/// EC2's truth for the branch matches, its pings are checked and pass; when the branch ENI's
/// groups differ (drift), every one is `sg_mismatch`.
fn guard_judges_branch_pod(
    ctx: &Ctx,
    topo: &eniguard_tests::topology::Topology,
    pod_ns: &NetNs,
    vlan: u16,
    ip: IpAddr,
    router: IpAddr,
    strict: bool,
) -> Result<()> {
    use eniguard::guard::{
        attach::AttachMode,
        datapath::{resolve_present, Capacity, Guard},
        derive::{derive, BranchPod, Inputs},
        pins::PinDir,
    };
    use eniguard_common::guard::{REASONS, REASON_SG_MISMATCH};
    let inputs = |actual: &str| Inputs {
        branches: vec![BranchPod {
            namespace: "default".into(),
            name: format!("branch{vlan}"),
            ip,
            eni: "eni-b0".into(),
            vlan,
            expected_groups: vec!["sg-b0".into()],
            basis: "SecurityGroupPolicy `test`".into(),
            actual_groups: Some(vec![actual.into()]),
        }],
        trunk_link: Some(eniguard_tests::topology::ETH2.name.into()),
        branch_veth_prefix: if strict { "vlan" } else { "eni" }.into(),
        veth_prefix: "eni".into(),
        ..Inputs::default()
    };
    let pins = PinDir::new(ctx.pin_dir.join(format!("branch{vlan}")));
    let spec = derive(&inputs("sg-b0")).spec;
    let mut guard = eniguard_tests::netns::in_netns(&topo.node, move || {
        let mut g = Guard::load(pins, AttachMode::Auto, Capacity::default())?;
        g.apply(&resolve_present(spec))?;
        Ok(g)
    })?;
    let ping = || pod_ns.run("ping", &["-c", "3", "-i", "0.2", "-W", "2", &router.to_string()]);
    let violations = |g: &Guard| -> Result<[u64; REASONS]> { Ok(g.stats()?.node.violations) };
    let checked = guard.stats()?.node.checked;
    ping().with_context(|| format!("VLAN {vlan}: pings with the guard on"))?;
    let stats = guard.stats()?;
    ensure!(stats.node.checked >= checked + 3, "VLAN {vlan}: the branch pod's packets were not checked");
    ensure!(violations(&guard)?.iter().sum::<u64>() == 0, "VLAN {vlan}: {:?}", violations(&guard)?);
    // The branch ENI's groups changed in EC2: the next packets are sg_mismatch.
    let spec = derive(&inputs("sg-0ff")).spec;
    guard = eniguard_tests::netns::in_netns(&topo.node, move || {
        guard.apply(&resolve_present(spec))?;
        Ok(guard)
    })?;
    ping()?;
    let v = violations(&guard)?;
    ensure!(
        v[REASON_SG_MISMATCH as usize] >= 3 && v.iter().sum::<u64>() == v[REASON_SG_MISMATCH as usize],
        "VLAN {vlan}: {v:?}"
    );
    guard.shutdown(false)?;
    Ok(())
}

/// Strict mode: `lookup local` of the family (`-4` or `-6`) moved from 0 to 20, behind the VLAN
/// rules, as upstream does.
pub fn local_rule_moved(node: &Node, family: &str) -> Result<()> {
    let rules = node.ns.ip(&[family, "rule", "show"])?;
    ensure!(
        rules.contains("20:\tfrom all lookup local") && !rules.lines().any(|l| l.starts_with("0:")),
        "the local rule ({family}) in strict mode: {rules}"
    );
    Ok(())
}

/// The index of the node's link with this MAC, if there is one.
pub fn link_index(node: &Node, mac: &str) -> Result<Option<u64>> {
    Ok(node
        .ns
        .ip(&["-o", "link"])?
        .lines()
        .find(|l| l.contains(mac))
        .and_then(|l| l.split(':').next()?.trim().parse::<u64>().ok()))
}

/// The agent's guard entry for pod `default/<name>` (its introspection, `/v1/eniguard/guard`).
pub fn guard_entry(node: &Node, name: &str) -> Result<Value> {
    let guard: Value = serde_json::from_str(eniguard_tests::http::body(
        &node.agent().get(agent::INTROSPECTION_PORT, "/v1/eniguard/guard")?,
    ))?;
    guard["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .cloned()
        .with_context(|| format!("no guard entry for default/{name}: {guard}"))
}

/// The trunk the Resource Controller attached to the node's instance, within 20 s.
pub fn wait_for_trunk(node: &Node) -> Result<aws_sdk_ec2::types::NetworkInterface> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let enis = node.rt.block_on(attached(&node.ec2, &node.sim.nodes[0].instance_id))?;
        if let Some(t) = enis.into_values().find(|n| n.interface_type().map(|t| t.as_str()) == Some("trunk"))
        {
            return Ok(t);
        }
        ensure!(std::time::Instant::now() < deadline, "no trunk in 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod `default/<name>` labelled `app: payments` (a SecurityGroupPolicy of the scenario selects
/// it): waits for the Resource Controller's annotation, then calls the agent's ADD as the plugin
/// does, retried as the kubelet would while the agent has not adopted the trunk yet. Returns the
/// annotation's first entry and the reply.
pub fn branch_pod_add(node: &Node, name: &str, container_id: &str) -> Result<(Value, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pod = serde_json::json!({"metadata": {"name": name, "labels": {"app": "payments"}},
        "spec": {"nodeName": node.sim.nodes[0].name, "containers": [{"name": "c"}]}});
    node.sim.kube.create(kube_api::PODS, Some("default"), pod).map_err(|e| anyhow::anyhow!(e.message))?;
    let key = kube_api::PODS.key(Some("default"), name);
    let annotation = loop {
        let p = node.sim.kube.read(|s| s.get(&key)).map_err(|e| anyhow::anyhow!(e.message))?;
        if let Some(a) = p.pointer("/metadata/annotations/vpc.amazonaws.com~1pod-eni").and_then(Value::as_str)
        {
            break serde_json::from_str::<Value>(a)?;
        }
        ensure!(std::time::Instant::now() < deadline, "the pod was not annotated");
        std::thread::sleep(Duration::from_millis(200));
    };
    let socket = node.dir.join("run/eniguard.sock");
    let body = serde_json::json!({"clientVersion": env!("CARGO_PKG_VERSION"), "networkName": "aws-cni",
        "containerId": container_id, "ifName": "eth0", "netns": "/run/netns/x", "podNamespace": "default", "podName": name});
    loop {
        let out = std::process::Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(&socket)
            .args(["-H", "content-type: application/json", "--data-binary", &body.to_string()])
            .arg("http://agent/v1/cni/add")
            .output()?;
        let reply: Value = serde_json::from_slice(&out.stdout).context("ADD reply")?;
        if reply["kind"] != "branch_pending" || std::time::Instant::now() > deadline {
            return Ok((annotation[0].clone(), reply));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A branch-ENI pod on the host (no 802.1Q here: the plumbing itself runs in the VMs): the agent
/// answers ADD with the branch ENI the Resource Controller annotated — VLAN, MAC, gateway, the
/// trunk's ifindex — and no pool address; the plugin's failure to make the VLAN leaves nothing
/// behind; DEL of an upstream-layout branch pod (dummy interface, VLAN as MAC) succeeds.
pub fn branch_pod_reply(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start_with(ctx, "cnibr", ENV, |s| {
        s.security_group_policies
            .push(eniguard_tests::sim::scenario::PolicySpec::for_app("default", "payments", "eks-pods"));
    })?;
    let trunk = wait_for_trunk(&node)?;
    local_rule_moved(&node, "-4")?;
    let (annotation, reply) = branch_pod_add(&node, "pay", "paysandbox")?;
    let branch = &reply["branch"];
    let want = &annotation;
    let trunk_index = link_index(&node, trunk.mac_address().context("trunk mac")?)?;
    ensure!(
        branch["vlanId"] == want["vlanId"]
            && branch["mac"] == want["ifAddress"]
            && reply["ip"] == want["privateIp"],
        "reply {reply} for annotation {want}"
    );
    ensure!(
        branch["parentIfIndex"].as_u64() == trunk_index && branch["enforcingMode"] == "strict",
        "reply {reply}"
    );
    ensure!(
        branch["gateway"] == "100.64.0.1"
            && reply["routeTable"] == want["vlanId"].as_u64().map(|v| v + 100).context("vlan")?,
        "{reply}"
    );
    ensure!(
        node.agent().metric("eniguard_ipam_addresses{state=\"assigned\"}")? == 0.0,
        "a branch pod took a pool address"
    );
    // The guard took its intent before the reply: its branch ENI, VLAN and the policy's groups,
    // and the truth for that VLAN on the trunk from EC2; `eniguard explain` says so.
    let pods_sg = node.sim.security_groups["eks-pods"].clone();
    let entry = guard_entry(&node, "pay")?;
    ensure!(
        entry["ip"] == want["privateIp"]
            && entry["expectEni"] == want["eniId"]
            && entry["expectVlan"] == want["vlanId"]
            && entry["expectSecurityGroups"] == serde_json::json!([pods_sg])
            && entry["hostInterface"] == host_veth_name("vlan", "default", "pay").as_str(),
        "guard entry {entry}"
    );
    let explain = sh(node.ns.cmd(eniguard_tests::eniguard_bin()).args(["explain", "default/pay"]))?;
    for w in [
        format!("on VLAN {}", want["vlanId"]),
        "its branch ENI".to_owned(),
        "SecurityGroupPolicy `payments`".to_owned(),
        format!("carries [{pods_sg}]: as intended"),
    ] {
        ensure!(explain.contains(&w), "explain default/pay lacks `{w}`:\n{explain}");
    }
    // The plugin: this kernel cannot make the VLAN; it says so and leaves nothing.
    let pod_ns = NetNs::create(&format!("{}-pay", node.prefix))?;
    let sandbox = Sandbox::new("paysandbox", "default", "pay", &pod_ns);
    let add = node.call("ADD", &sandbox, &node.conf("1.0.0", None))?;
    ensure!(
        !add.success && add.msg().contains("VLAN link vlan.eth."),
        "ADD on a kernel without 802.1Q: {}",
        add.stdout
    );
    let veth = host_veth_name("vlan", "default", "pay");
    ensure!(node.ns.link(&veth).is_err() && pod_ns.link("eth0").is_err(), "a failed branch ADD left links");
    let vlan = want["vlanId"].as_u64().context("vlan")?;
    let prev = serde_json::json!({"cniVersion": "0.4.0",
        "interfaces": [{"name": veth}, {"name": "eth0", "sandbox": pod_ns.path().display().to_string(), "mac": "0"},
                       {"name": format!("dummy{}", &veth[4..]), "mac": vlan.to_string(), "sandbox": "0"}],
        "ips": [{"version": "4", "address": format!("{}/32", want["privateIp"].as_str().unwrap_or_default()), "interface": 1}]});
    let del = node.call("DEL", &sandbox, &node.conf("1.0.0", Some(&prev)))?;
    ensure!(del.success, "DEL of an upstream-layout branch pod: {}", del.stdout);
    Ok(())
}

/// Debian's libcni (golang-github-appc-cni-dev 1.1.2, the library containerd 1.6 embeds a copy
/// of), through a small caller built here (`tests/libcni/main.go`): the list as the agent
/// installed it, unedited, passes libcni's validation (VERSION of every plugin); ADD, CHECK
/// and DEL through libcni (its result cache gives CHECK and DEL their prevResult) work at the
/// list's 0.4.0, before and after a kill -9 of the agent, whose successor writes the same file;
/// and again at 1.0.0, the other version the list's `cniVersions` offers.
pub fn debian_libcni(ctx: &mut Ctx) -> Result<()> {
    let node = Node::start(ctx, "libcni", ENV)?;
    let caller = node.dir.join("libcni-call");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("libcni");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&caller)
        .arg(".")
        .current_dir(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", node.dir.join("go-cache"))
        .output()
        .context("go (golang-go, installed by cargo xtask setup)")?;
    ensure!(built.status.success(), "building the libcni caller: {}", String::from_utf8_lossy(&built.stderr));
    let conf_dir = node.dir.join("net.d");
    let installed = std::fs::read(conf_dir.join("10-eniguard.conflist"))?;
    let pods_a = node.sim.subnets["pods-a"].clone();
    let libcni = |args: &[&str], name: &str| -> Result<String> {
        let mut cmd = node.ns.cmd(&caller);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_PATH", node.dir.join("bin"))
            .env("CNI_CACHE_DIR", node.dir.join("cni-cache"))
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=x"))
            .args(args);
        sh(&mut cmd).with_context(|| format!("libcni {}", args.join(" ")))
    };
    let validated = libcni(&["validate", &conf_dir.display().to_string(), "aws-cni"], "")?;
    ensure!(validated.starts_with("version 0.4.0"), "libcni read the list as {validated}");
    let round = |dir: &std::path::Path, name: &str, version: &str, restart: bool| -> Result<()> {
        let ns = NetNs::create(&format!("{}-{name}", node.prefix))?;
        node.create_pod(name)?;
        let dir = dir.display().to_string();
        let netns = ns.path().display().to_string();
        let id = format!("{name}-sandbox");
        let add = libcni(&["add", &dir, "aws-cni", &id, &netns], name)?;
        let result: Value =
            serde_json::from_str(add.lines().find_map(|l| l.strip_prefix("result ")).context("no result")?)?;
        ensure!(add.starts_with(&format!("version {version}")) && result["cniVersion"] == version, "{add}");
        let ip = pod_ip(&result)?;
        let eni = node.eni_holding(ip)?;
        ensure!(eni.subnet_id() == Some(pods_a.as_str()), "{version}: {ip} on {:?}", eni.subnet_id());
        ns.run("ping", &["-c", "1", "-W", "2", "10.0.0.1"])
            .with_context(|| format!("{version}: {name} pings"))?;
        libcni(&["check", &dir, "aws-cni", &id, &netns], name)?;
        if restart {
            node.kill_and_restart()?;
            node.agent().daemon.wait_for_line("ready:", Duration::from_secs(60))?;
            ensure!(
                std::fs::read(conf_dir.join("10-eniguard.conflist"))? == installed,
                "the restarted agent wrote another conflist"
            );
            libcni(&["check", &dir, "aws-cni", &id, &netns], name).context("CHECK after the restart")?;
        }
        libcni(&["del", &dir, "aws-cni", &id, &netns], name)?;
        ensure!(node.rules_for(ip)?.is_empty(), "{version}: rules left after DEL");
        libcni(&["del", &dir, "aws-cni", &id, &netns], name).context("a second DEL")?;
        println!(
            "  libcni {version}: {name} got {ip}, CHECK and DEL passed{}",
            if restart { " across a kill -9" } else { "" }
        );
        Ok(())
    };
    round(&conf_dir, "lc0", "0.4.0", true)?;
    // What a runtime that reads cniVersions may choose instead (libcni 1.1 reads only cniVersion).
    let other = node.dir.join("net.d-1.0.0");
    std::fs::create_dir_all(&other)?;
    let mut list: Value = serde_json::from_slice(&installed)?;
    ensure!(list["cniVersions"].as_array().is_some_and(|v| v.contains(&Value::from("1.0.0"))), "{list}");
    list["cniVersion"] = Value::from("1.0.0");
    std::fs::write(other.join("10-eniguard.conflist"), list.to_string())?;
    round(&other, "lc1", "1.0.0", false)
}

/// A TCP server in a pod: it answers every connection with `hello <client address>`.
const SERVER: &str = r"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8080))
s.listen(8)
print('listening', flush=True)
while True:
    c, a = s.accept()
    c.sendall(('hello %s\n' % a[0]).encode())
    c.close()
";

/// A client: connects (3 s), prints the first line it gets.
const CLIENT: &str = r"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.makefile().readline().strip())
";

/// NodePort with externalTrafficPolicy=Local, as kube-proxy does it: DNAT on the node to a pod
/// on a secondary ENI, no masquerade. A client on the VPC side gets the pod's answer through the
/// primary ENI with AWS_VPC_CNI_NODE_PORT_SUPPORT (the default); with it off, the reply leaves
/// through the pod's ENI with the node's address, and the fabric drops it as EC2 would.
pub fn node_port_local(ctx: &mut Ctx) -> Result<()> {
    for support in [true, false] {
        let mut env = ENV.to_vec();
        if support {
            env.push(("AWS_EXTERNAL_SERVICE_CIDRS", "192.0.2.0/24,198.51.100.0/24"));
        } else {
            env.push(("AWS_VPC_CNI_NODE_PORT_SUPPORT", "false"));
        }
        let tag = if support { "np" } else { "npoff" };
        let node = Node::start(ctx, tag, &env)?;
        let rules = node.ns.ip(&["rule", "show"])?;
        ensure!(rules.contains("fwmark 0x80/0x80 lookup main"), "rule 1024: {rules}");
        let external = rules.lines().filter(|l| l.starts_with("1535:") && l.contains("lookup main")).count();
        ensure!(external == if support { 2 } else { 0 }, "AWS_EXTERNAL_SERVICE_CIDRS rules: {rules}");
        let table = node.ns.run("nft", &["list", "table", "ip", "eniguard"])?;
        ensure!(table.contains("iifname \"eth0\"") == support, "NodePort marking {support}: {table}");
        let loose = node.ns.run("cat", &["/proc/sys/net/ipv4/conf/eth0/rp_filter"])?;
        ensure!(!support || loose.trim() == "2", "rp_filter on eth0: {loose}");

        let pod_ns = NetNs::create(&format!("{}-pod{tag}", node.prefix))?;
        let sandbox = node.sandbox(&format!("sandbox{tag}"), tag, &pod_ns)?;
        let add = node.call("ADD", &sandbox, &node.conf("1.0.0", None))?;
        ensure!(add.success, "ADD: {}", add.stdout);
        let pod = pod_ip(&add.json())?;
        let eni = node.eni_holding(pod)?;
        let primary = node.primary_eni()?;
        let node_ip = primary.private_ip_address().context("the primary ENI's address")?.to_owned();
        ensure!(
            eni.network_interface_id() != primary.network_interface_id(),
            "the pod's address is on a secondary ENI"
        );
        let mut server = eniguard_tests::process::Daemon::spawn(pod_ns.cmd("python3").args(["-c", SERVER]))?;
        server.wait_for_line("listening", Duration::from_secs(5))?;
        // kube-proxy's DNAT for a Local service: no masquerade, the client's address is kept.
        let kube_proxy = format!(
            "table ip kubeproxy {{\n chain prerouting {{\n  type nat hook prerouting priority -100;\n  \
             tcp dport 30080 dnat to {pod}:8080\n }}\n}}\n"
        );
        let rules_file = node.dir.join("kube-proxy.nft");
        std::fs::write(&rules_file, kube_proxy)?;
        sh(node.ns.cmd("nft").arg("-f").arg(&rules_file))?;
        let fabric = node.fabric()?;
        fabric.clear();
        let answer = fabric.vpc().run("python3", &["-c", CLIENT, &node_ip, "30080"]);
        let replies: Vec<_> = fabric
            .frames()
            .into_iter()
            .filter(|f| f.src.to_string() == node_ip && f.dst != INTERNET)
            .collect();
        if support {
            let answer = answer.context("the NodePort answer")?;
            ensure!(answer.starts_with("hello "), "{answer}");
            ensure!(!answer.contains(&node_ip), "the client's own address reached the pod: {answer}");
            ensure!(
                replies.iter().all(|f| f.verdict == Verdict::Delivered
                    && f.eni_id != eni.network_interface_id().unwrap_or_default()),
                "replies left through the primary ENI: {replies:?}"
            );
        } else {
            ensure!(answer.is_err(), "an answer without NodePort support: {answer:?}");
            ensure!(
                replies.iter().any(|f| f.verdict == Verdict::SourceDestCheck
                    && Some(f.eni_id.as_str()) == eni.network_interface_id()),
                "the reply should leave through the pod's ENI and be dropped: {replies:?}"
            );
        }
        drop(server);
    }
    Ok(())
}

/// The network-policy agent's contract (NETWORK_POLICY_ENFORCING_MODE): the agent answers
/// GetNetworkPolicyConfigs on ipamd.sock; the plugin calls EnforceNpToPod after plumbing and
/// DeletePodNp on DEL with the pod's name, namespace and the mode; a refusal or an absent agent
/// fails the ADD and the runtime's DEL leaves nothing; without a mode, no call.
pub fn network_policy_agent(ctx: &mut Ctx) -> Result<()> {
    let mut env = ENV.to_vec();
    env.push(("NETWORK_POLICY_ENFORCING_MODE", "standard"));
    let node = Node::start(ctx, "npa", &env)?;
    let dir = agent::aws_node_dir(&node.dir);
    let facts = node.rt.block_on(eniguard_tests::npa::policy_configs(&dir))?;
    let node_ip = node.primary_eni()?.private_ip_address().context("the primary ENI's address")?.to_owned();
    ensure!(
        facts.network_policy_mode == "standard"
            && facts.node_i_pv4 == node_ip
            && facts.instance_id == node.sim.nodes[0].instance_id
            && !facts.region.is_empty()
            && !facts.multi_nic_enabled,
        "GetNetworkPolicyConfigs: {facts:?}"
    );
    let pod = |tag: &str| -> Result<(NetNs, Sandbox)> {
        let ns = NetNs::create(&format!("{}-pod{tag}", node.prefix))?;
        let sandbox = node.sandbox(&format!("sandbox{tag}"), tag, &ns)?;
        Ok((ns, sandbox))
    };
    let conf = node.conf("1.0.0", None);

    // No network-policy agent yet: the ADD fails; the DEL waits for it, as upstream's.
    let (_ns1, absent) = pod("npabsent")?;
    let add = node.call("ADD", &absent, &conf)?;
    ensure!(!add.success && add.stdout.contains("network policy"), "ADD without the agent: {}", add.stdout);
    let _guard = node.rt.enter();
    let stand_in = eniguard_tests::npa::StandIn::start(&dir)?;
    let del = node.call("DEL", &absent, &conf)?;
    ensure!(del.success, "DEL once the agent is there: {}", del.stdout);

    // Enforced and deleted, with the pod's identity and the mode.
    let (_ns2, ok) = pod("npok")?;
    let add = node.call("ADD", &ok, &conf)?;
    ensure!(add.success, "ADD: {}", add.stdout);
    let ip = pod_ip(&add.json())?;
    ensure!(node.call("DEL", &ok, &conf)?.success, "DEL");
    // A refusal fails the ADD; the DEL that follows leaves nothing.
    stand_in.refuse(true);
    let (_ns3, refused) = pod("npno")?;
    let add = node.call("ADD", &refused, &conf)?;
    ensure!(!add.success && add.stdout.contains("network policy"), "ADD refused: {}", add.stdout);
    let del = node.call("DEL", &refused, &conf)?;
    ensure!(del.success, "DEL after a refusal: {}", del.stdout);
    stand_in.refuse(false);
    let enforce = |name: &str| eniguard_tests::npa::NpCall::Enforce {
        namespace: "default".into(),
        name: name.into(),
        mode: "standard".into(),
        interfaces: 1,
    };
    let delete =
        |name: &str| eniguard_tests::npa::NpCall::Delete { namespace: "default".into(), name: name.into() };
    let calls = stand_in.calls();
    ensure!(
        calls == [delete("npabsent"), enforce("npok"), delete("npok"), enforce("npno"), delete("npno")],
        "calls: {calls:?}"
    );
    // Every pod is gone: nothing is held, no rule stays.
    let kept = eniguard::ipam::checkpoint::Checkpoint::new(node.dir.join("ipam.json"))
        .read()?
        .context("checkpoint")?;
    ensure!(kept.allocations.is_empty(), "held after DEL: {:?}", kept.allocations);
    ensure!(node.rules_for(ip)?.is_empty(), "rules for {ip} after DEL");
    drop(stand_in);

    // Without a mode the plugin never calls it.
    let quiet = Node::start(ctx, "npaoff", ENV)?;
    let _guard = quiet.rt.enter();
    let stand_in = eniguard_tests::npa::StandIn::start(&agent::aws_node_dir(&quiet.dir))?;
    let ns = NetNs::create(&format!("{}-podquiet", quiet.prefix))?;
    let sandbox = quiet.sandbox("sandboxquiet", "quiet", &ns)?;
    let conf = quiet.conf("1.0.0", None);
    ensure!(quiet.call("ADD", &sandbox, &conf)?.success && quiet.call("DEL", &sandbox, &conf)?.success);
    ensure!(stand_in.calls().is_empty(), "calls without a mode: {:?}", stand_in.calls());
    Ok(())
}

/// Subnet discovery (ENABLE_SUBNET_DISCOVERY, on by default) on vpcsim, without custom
/// networking: new ENIs go to the opted-in subnet of the node's VPC and AZ with the most free
/// addresses, never to an opted-out, untagged or other-AZ one, with the primary ENI's groups; a
/// pod on such an ENI reaches the VPC through it and the guard judges it against the node's
/// groups (no violation). The subnets are described once.
pub fn subnet_discovery(ctx: &mut Ctx) -> Result<()> {
    use eniguard_tests::sim::scenario::SubnetSpec;
    const ROLE: &str = "kubernetes.io/role/cni";
    let subnet = |name: &str, az: &str, cidr: &str, role: Option<&str>| SubnetSpec {
        name: name.into(),
        az: az.into(),
        cidr: cidr.into(),
        tags: role.map(|r| (ROLE.to_owned(), r.to_owned())).into_iter().collect(),
        ipv6_cidr: None,
    };
    let node = Node::start_with(ctx, "disc", &[("MINIMUM_IP_TARGET", "15")], |s| {
        s.subnets.push(subnet("plain-a", "us-west-2a", "10.0.32.0/19", None));
        s.subnets.push(subnet("disc-a", "us-west-2a", "10.0.64.0/18", Some("1")));
        s.subnets.push(subnet("out-a", "us-west-2a", "10.0.128.0/17", Some("0")));
        s.subnets.push(subnet("disc-b", "us-west-2b", "100.64.128.0/17", Some("1")));
    })?;
    // The agent's calls from start to ready (before this test's own).
    let calls = agent::sim_calls(&node.sim)?;
    println!("  EC2 calls from start to ready, subnet discovery on: {calls:?}");
    ensure!(calls.get("DescribeSubnets") == Some(&1), "DescribeSubnets once: {calls:?}");
    let found = node.rt.block_on(
        node.ec2
            .describe_subnets()
            .filters(
                aws_sdk_ec2::types::Filter::builder().name("availability-zone").values("us-west-2a").build(),
            )
            .filters(aws_sdk_ec2::types::Filter::builder().name(format!("tag:{ROLE}")).values("1").build())
            .send(),
    )?;
    let disc = found.subnets().first().and_then(|s| s.subnet_id()).context("disc-a")?.to_owned();
    let enis = node.rt.block_on(attached(&node.ec2, &node.sim.nodes[0].instance_id))?;
    let primary = enis.get(&0).context("the primary ENI")?;
    let node_groups: Vec<&str> = primary.groups().iter().filter_map(|g| g.group_id()).collect();
    let created: Vec<_> = enis.iter().filter(|(d, _)| **d > 0).map(|(_, n)| n).collect();
    ensure!(!created.is_empty(), "the warm ENI");
    for eni in &created {
        let groups: Vec<&str> = eni.groups().iter().filter_map(|g| g.group_id()).collect();
        ensure!(
            eni.subnet_id() == Some(disc.as_str()) && groups == node_groups,
            "{:?} in {:?} with {groups:?}: expected {disc} with {node_groups:?}",
            eni.network_interface_id(),
            eni.subnet_id()
        );
    }

    // Pods until one is given an address of the discovered ENI (the primary ENI's come first).
    let disc_eni = created[0].network_interface_id().context("id")?.to_owned();
    let mut on_disc = None;
    let mut namespaces = Vec::new();
    for i in 0..24 {
        let pod_ns = NetNs::create(&format!("{}-d{i}", node.prefix))?;
        let sandbox = node.sandbox(&format!("sandboxd{i}"), &format!("d{i}"), &pod_ns)?;
        let add = node.call("ADD", &sandbox, &node.conf("1.0.0", None))?;
        ensure!(add.success, "ADD d{i}: {}", add.stdout);
        let ip = pod_ip(&add.json())?;
        if node.eni_holding(ip)?.network_interface_id() == Some(disc_eni.as_str()) {
            on_disc = Some((format!("d{i}"), ip, pod_ns));
            break;
        }
        namespaces.push(pod_ns);
    }
    let (name, ip, pod_ns) = on_disc.context("no pod was given an address of the discovered ENI")?;
    node.fabric()?.clear();
    pod_ns.run("ping", &["-c", "2", "-W", "2", "-i", "0.2", "10.0.0.1"]).context("the pod pings the VPC")?;
    let out: Vec<_> = node.fabric()?.frames().into_iter().filter(|f| f.src == ip).collect();
    ensure!(
        !out.is_empty() && out.iter().all(|f| f.eni_id == disc_eni && f.verdict == Verdict::Delivered),
        "{ip} should leave through {disc_eni}: {out:?}"
    );
    let guard = node.agent().get(61679, "/v1/eniguard/guard")?;
    let guard: eniguard::observe::views::GuardView =
        serde_json::from_str(eniguard_tests::http::body(&guard)).context("/v1/eniguard/guard")?;
    let judged = guard.pods.iter().find(|p| p.name == name).context("the pod in /v1/guard")?;
    ensure!(
        judged.expect_eni == disc_eni
            && judged.expect_security_groups.iter().map(String::as_str).eq(node_groups.iter().copied())
            && judged.verdicts.is_empty(),
        "the guard's intent for {name}: {judged:?}"
    );
    Ok(())
}
