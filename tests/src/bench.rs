//! What the CNI benchmarks share (`eniguard-cni-bench`, `eniguard-pod-bench`): `eniguard agent`
//! on a vpcsim node with its pool grown before the first pod, and percentiles.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};

use crate::{
    agent::{self, Agent, PinsCleanup},
    netns::NetNs,
    sim::scenario::{Scenario, Sim},
};

/// The agent on the default scenario's node with prefix delegation, max-pods and
/// MINIMUM_IP_TARGET at `addresses` (no ADD waits for EC2) and a 1 s cooldown (a row reuses
/// the addresses the previous one released). Fields drop in order: the agent, its pins, then
/// the simulator and its runtime.
pub struct PoolNode {
    pub agent: Agent,
    _pins: PinsCleanup,
    /// The node's namespace.
    pub ns: NetNs,
    /// The agent's state (its CNI dirs: `bin/`, `net.d/`), removed at the end.
    pub dir: PathBuf,
    pub sim: Sim,
    pub rt: tokio::runtime::Runtime,
}

impl PoolNode {
    pub fn start(prefix: &str, addresses: u32) -> Result<Self> {
        Self::start_with(prefix, addresses, &[])
    }

    /// An IPv6 node (ENABLE_IPv6, upstream's settings: V4 egress on, the guard in its default
    /// monitor mode): pods get /128s of the primary ENI's /80, no pool to wait for.
    pub fn start_ipv6(prefix: &str) -> Result<Self> {
        let mut scenario = Scenario::default_scenario();
        scenario.vpc.ipv6_cidrs = vec!["2600:1f14:abc:de00::/56".into()];
        scenario.subnets[0].ipv6_cidr = Some("2600:1f14:abc:de01::/64".into());
        let env = [("ENABLE_IPv6", "true"), ("ENABLE_IPv4", "false"), ("ENABLE_PREFIX_DELEGATION", "true")];
        Self::start_in(scenario, prefix, 0, &env)
    }

    /// [`PoolNode::start`] with more of the agent's environment.
    pub fn start_with(prefix: &str, addresses: u32, extra_env: &[(&str, &str)]) -> Result<Self> {
        let mut scenario = Scenario::default_scenario();
        scenario.nodes[0].max_pods = Some(addresses);
        let minimum = addresses.to_string();
        let mut env = vec![("ENABLE_PREFIX_DELEGATION", "true"), ("MINIMUM_IP_TARGET", minimum.as_str())];
        env.extend_from_slice(extra_env);
        Self::start_in(scenario, prefix, addresses, &env)
    }

    /// The agent on `scenario`'s first node, ready with `addresses` in its pool.
    fn start_in(
        scenario: Scenario,
        prefix: &str,
        addresses: u32,
        extra_env: &[(&str, &str)],
    ) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let sim = rt.block_on(Sim::start_with_fabric(&scenario, prefix))?;
        let dir = std::env::temp_dir().join(format!("{prefix}-agent"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut env = vec![("IP_COOLDOWN_PERIOD", "1")];
        env.extend_from_slice(extra_env);
        let pins = PinsCleanup(agent::pin_dir(prefix, 0));
        let agent = agent::start(&sim, prefix, 0, &dir, &env)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while addresses > 0
            && agent.metric("eniguard_ipam_addresses{state=\"total\"}")? < f64::from(addresses)
        {
            ensure!(Instant::now() < deadline, "the pool did not reach {addresses} addresses");
            std::thread::sleep(Duration::from_millis(200));
        }
        let ns = NetNs::existing(&format!("{prefix}-node0"));
        Ok(Self { agent, _pins: pins, ns, dir, sim, rt })
    }

    /// Pod `name` in `default` on the node, as the API server has it (the agent's pod GC
    /// leaves its address alone).
    pub fn create_pod(&self, name: &str) -> Result<()> {
        let pod = serde_json::json!({"metadata": {"name": name},
            "spec": {"nodeName": self.sim.nodes[0].name, "containers": [{"name": "c"}]}});
        self.sim
            .kube
            .create(crate::sim::kube_api::PODS, Some("default"), pod)
            .map_err(|e| anyhow::anyhow!(e.message))
            .map(|_| ())
    }
}

impl Drop for PoolNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `p`th percentile of sorted values (nearest rank; NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// (p50, p99) of unsorted values.
pub fn summary(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (percentile(&values, 50.0), percentile(&values, 99.0))
}
