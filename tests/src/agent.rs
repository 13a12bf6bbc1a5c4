//! `eniguard agent` on a simulated node: the real binary inside the node's namespace, with the
//! simulator's endpoints as seen from there in the SDKs' standard variables and nothing from the
//! host's environment. Used by the end-to-end tests and the agent benchmark.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};

use crate::{
    eniguard_bin, http,
    netns::NetNs,
    process::Daemon,
    sim::{kube_api, scenario::Sim},
};

/// Upstream's ports: metrics on all interfaces, introspection (and health) on loopback.
pub const METRICS_PORT: u16 = 61678;
pub const INTROSPECTION_PORT: u16 = 61679;

/// The agent's aws-node run directory (ipamd.sock, and the network-policy agent's npa.sock).
pub fn aws_node_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("aws-node")
}

/// One agent on one simulated node.
pub struct Agent {
    pub daemon: Daemon,
    pub ns: NetNs,
}

/// The agent's command for node `index` of `sim` (fabric prefix `prefix`), its state in `dir`
/// (kubeconfig, checkpoint, run dir), with `env` on top of the simulator's endpoints.
pub fn command(sim: &Sim, prefix: &str, index: usize, dir: &Path, env: &[(&str, &str)]) -> Result<Command> {
    let mut cmd = base_command(sim, prefix, index, dir, AGENT)?;
    cmd.args(["agent", "--run-dir"])
        .arg(dir.join("run"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--cni-bin-dir")
        .arg(dir.join("bin"))
        .arg("--pin-dir")
        .arg(pin_dir(prefix, index))
        .arg("--aws-node-run-dir")
        .arg(aws_node_dir(dir));
    cmd.envs(env.iter().copied());
    Ok(cmd)
}

/// `eniguard audit` for node `index` (beside what `dir`'s checkpoint describes), as [`command`].
pub fn audit_command(
    sim: &Sim,
    prefix: &str,
    index: usize,
    dir: &Path,
    env: &[(&str, &str)],
) -> Result<Command> {
    let mut cmd = base_command(sim, prefix, index, dir, AUDIT)?;
    cmd.args(["audit", "--pin-dir"]).arg(pin_dir(prefix, index));
    cmd.envs(env.iter().copied());
    Ok(cmd)
}

/// Who a process is to the simulator: its Kubernetes bearer token and its AWS access key id, so
/// that the API server's and EC2's records tell the agent, audit mode and the tests' own clients
/// apart (deploy/'s RBAC and IAM policies are checked against them).
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub token: &'static str,
    pub access_key: &'static str,
}

/// `eniguard agent`.
pub const AGENT: Identity = Identity { token: "eniguard-agent", access_key: "AKIDVPCSIM" };
/// `eniguard audit`.
pub const AUDIT: Identity = Identity { token: "eniguard-audit", access_key: "AKIDAUDIT" };

/// Where agents' logs go instead of the caller's stderr, once [`send_logs_to`] is called.
static LOG_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Sends the logs (stderr) of every agent started from now on to `<dir>/<netns>-<who>.log`,
/// appended across restarts (the demo: its terminal shows only its own lines).
pub fn send_logs_to(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let _ = LOG_DIR.set(dir.to_owned());
    Ok(())
}

/// `eniguard` in node `index`'s namespace with the simulator's endpoints as seen from there in
/// the SDKs' standard variables, and nothing from the host's environment.
fn base_command(sim: &Sim, prefix: &str, index: usize, dir: &Path, who: Identity) -> Result<Command> {
    let node = &sim.nodes[index];
    let inside = node.inside.as_ref().context("a fabric node")?;
    std::fs::create_dir_all(dir)?;
    let kubeconfig = dir.join(format!("kubeconfig-{}", who.token));
    std::fs::write(&kubeconfig, kube_api::kubeconfig_with_token(&inside.kube_url, who.token))?;
    let mut cmd = NetNs::existing(&format!("{prefix}-node{index}")).cmd(eniguard_bin());
    if let Some(logs) = LOG_DIR.get() {
        let path = logs.join(format!("{prefix}-node{index}-{}.log", who.token));
        cmd.stderr(std::fs::OpenOptions::new().create(true).append(true).open(path)?);
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("AWS_ENDPOINT_URL_EC2", &inside.ec2_url)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &inside.imds_url)
        .env("AWS_ACCESS_KEY_ID", who.access_key)
        .env("AWS_SECRET_ACCESS_KEY", "vpcsim")
        .env("KUBECONFIG", &kubeconfig)
        .env("MY_NODE_NAME", &node.name)
        .env("AWS_VPC_K8S_CNI_BACKING_STORE", dir.join("ipam.json"))
        .env("DISABLE_LEAKED_ENI_CLEANUP", "true");
    Ok(cmd)
}

/// The agent's bpffs pin directory (the guard's maps and links) for node `index`; the privileged
/// harness removes `/sys/fs/bpf/eniguard-test-<test prefix>*` after each test.
pub fn pin_dir(prefix: &str, index: usize) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/sys/fs/bpf/eniguard-test-{prefix}-node{index}"))
}

/// Removes an agent's pin directory when dropped. An agent keeps its datapath when it stops (the
/// next one takes it over), so a run that started agents outside the test harness (which cleans
/// up after each test) removes it at its end: pinned links keep programs loaded.
pub struct PinsCleanup(pub std::path::PathBuf);

impl Drop for PinsCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Spawns the agent (see [`command`]) without waiting for it.
pub fn spawn(sim: &Sim, prefix: &str, index: usize, dir: &Path, env: &[(&str, &str)]) -> Result<Agent> {
    let mut cmd = command(sim, prefix, index, dir, env)?;
    Ok(Agent { daemon: Daemon::spawn(&mut cmd)?, ns: NetNs::existing(&format!("{prefix}-node{index}")) })
}

/// Spawns the agent and waits for its `ready:` line.
pub fn start(sim: &Sim, prefix: &str, index: usize, dir: &Path, env: &[(&str, &str)]) -> Result<Agent> {
    let mut agent = spawn(sim, prefix, index, dir, env)?;
    agent.daemon.wait_for_line("ready:", Duration::from_secs(60)).context("agent ready")?;
    Ok(agent)
}

impl Agent {
    /// The whole response to `GET path` on the agent's `port`, inside its namespace.
    pub fn get(&self, port: u16, path: &str) -> Result<String> {
        http::get_in(&self.ns, &format!("127.0.0.1:{port}"), path)
    }

    /// The value of one metric series (exact name with labels) on /metrics.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let text = self.get(METRICS_PORT, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .with_context(|| format!("no series {series} in /metrics"))?
            .trim()
            .parse()
            .context("metric value")
    }

    /// The agent's resident set (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        Ok(self.memory()?.rss_kib)
    }

    /// VmRSS and its parts from /proc/PID/status.
    pub fn memory(&self) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon.pid()))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| name.to_owned())
        };
        Ok(Memory { rss_kib: field("VmRSS:")?, anon_kib: field("RssAnon:")?, file_kib: field("RssFile:")? })
    }
}

/// A process's resident memory (KiB): the whole, its private heap and stacks (RssAnon) and the
/// pages of files it maps (RssFile: mostly its own binary's code, clean and reclaimable).
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |k: u64| k as f64 / 1024.0;
        write!(f, "{:.1} | {:.1} | {:.1}", mib(self.rss_kib), mib(self.anon_kib), mib(self.file_kib))
    }
}

fn sim_addr(sim: &Sim) -> Result<&str> {
    sim.ec2_url.strip_prefix("http://").context("the simulator's EC2 URL")
}

/// The simulator's EC2 call counter: every call received, by action (faulted ones too).
pub fn sim_calls(sim: &Sim) -> Result<BTreeMap<String, u64>> {
    let response = http::request("GET", sim_addr(sim)?, "/_sim/calls")?;
    Ok(serde_json::from_str(http::body(&response))?)
}

/// The simulator's `RequestLimitExceeded` answers by action (its buckets and faults).
pub fn sim_throttled(sim: &Sim) -> Result<BTreeMap<String, u64>> {
    let response = http::request("GET", sim_addr(sim)?, "/_sim/throttled")?;
    Ok(serde_json::from_str(http::body(&response))?)
}

/// A fault or setting on the simulator's control endpoint (`throttle?...`, `latency?ms=N`, ...).
pub fn sim_control(sim: &Sim, query: &str) -> Result<()> {
    let response = http::request("POST", sim_addr(sim)?, &format!("/_sim/{query}"))?;
    ensure!(response.starts_with("HTTP/1.1 200"), "control {query}: {response}");
    Ok(())
}
