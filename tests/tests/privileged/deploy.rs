//! deploy/'s RBAC and IAM policies against what the agent and audit mode really called: the
//! simulated API server records every request by bearer token and EC2 every action by access key
//! id (see `eniguard_tests::agent::{AGENT, AUDIT}`), each simulator writes its record when it is
//! dropped, and this test — the last of the test command — compares their union with
//! deploy/{agent,audit}/rbac.yaml and deploy/iam/*.json: nothing granted that is never used,
//! nothing used that is not granted.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context as _, Result};
use eniguard_tests::{
    agent::{Identity, AGENT, AUDIT},
    sim::scenario::CALLS_DIR_VAR,
};
use serde::Deserialize as _;
use serde_json::Value;

use crate::harness::{skip, Ctx};

/// Actions the agent calls on paths no test reaches in its time, with why; each must be granted,
/// and leaves this list the day a test calls it (the check fails until it does).
const NOT_REACHED: &[(&str, &str)] = &[(
    "CreateTags",
    "the leaked-ENI sweep stamps node.k8s.amazonaws.com/createdAt on a detached ENI it first sees; \
     its first run comes 0-300 s after start (upstream's jitter), later than any test; \
     node::audit's sweep_plan unit tests cover the decision",
)];

/// Set by `cargo xtask test` when it runs every test (no filter): only then is the union whole.
const COMPLETE_VAR: &str = "ENIGUARD_CALLS_COMPLETE";

type Triples = eniguard_tests::sim::kube_api::Requests;
/// Kubernetes triples by bearer token, EC2 actions by access key id.
type Recorded = (BTreeMap<String, Triples>, BTreeMap<String, BTreeSet<String>>);

/// What every simulator of this test command recorded: Kubernetes triples by token, EC2 actions
/// by access key.
fn recorded() -> Result<Recorded> {
    let dir = std::env::var_os(CALLS_DIR_VAR).context("ENIGUARD_CALLS_DIR")?;
    let (mut kube, mut ec2): (BTreeMap<String, Triples>, BTreeMap<String, BTreeSet<String>>) =
        Default::default();
    for entry in std::fs::read_dir(&dir)? {
        let v: Value = serde_json::from_slice(&std::fs::read(entry?.path())?)?;
        let by_token: BTreeMap<String, Triples> = serde_json::from_value(v["kube"].clone())?;
        for (token, t) in by_token {
            kube.entry(token).or_default().extend(t);
        }
        let by_key: BTreeMap<String, BTreeMap<String, u64>> = serde_json::from_value(v["ec2"].clone())?;
        for (key, actions) in by_key {
            ec2.entry(key).or_default().extend(actions.into_keys());
        }
    }
    Ok((kube, ec2))
}

fn deploy(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// The ClusterRole in `file`, expanded to (group, resource, verb) triples.
fn cluster_role(file: &str) -> Result<Triples> {
    let text = std::fs::read_to_string(deploy(file))?;
    let mut out = Triples::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let o = Value::deserialize(doc)?;
        if o["kind"] != "ClusterRole" {
            continue;
        }
        for rule in o["rules"].as_array().context("rules")? {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The EC2 actions an IAM policy allows, without the `ec2:` prefix.
fn policy_actions(file: &str) -> Result<BTreeSet<String>> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(deploy(file))?)?;
    Ok(v["Statement"]
        .as_array()
        .context("Statement")?
        .iter()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().and_then(|a| a.strip_prefix("ec2:")).map(str::to_owned))
        .collect())
}

fn show<T: std::fmt::Debug>(set: impl IntoIterator<Item = T>) -> String {
    set.into_iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
}

fn compare<T: Ord + Clone + std::fmt::Debug>(
    what: &str,
    granted: &BTreeSet<T>,
    used: &BTreeSet<T>,
) -> Result<()> {
    let unused: Vec<&T> = granted.difference(used).collect();
    let refused: Vec<&T> = used.difference(granted).collect();
    ensure!(
        unused.is_empty() && refused.is_empty(),
        "{what}: granted but never used: [{}]; used but not granted: [{}]",
        show(unused),
        show(refused)
    );
    Ok(())
}

pub fn rbac_and_iam_equal_calls(_ctx: &mut Ctx) -> Result<()> {
    if std::env::var_os(COMPLETE_VAR).is_none() {
        return Err(skip("needs every test's record: run `cargo xtask test` without a filter"));
    }
    let (kube, ec2) = recorded()?;
    let roles: [(Identity, &str, &str); 2] = [
        (AGENT, "agent/rbac.yaml", "iam/eniguard-agent-policy.json"),
        (AUDIT, "audit/rbac.yaml", "iam/eniguard-audit-policy.json"),
    ];
    for (who, rbac, iam) in roles {
        let used = kube.get(who.token).cloned().unwrap_or_default();
        compare(&format!("deploy/{rbac} for {}", who.token), &cluster_role(rbac)?, &used)?;
        let mut used = ec2.get(who.access_key).cloned().unwrap_or_default();
        if who.token == AGENT.token {
            for (action, _why) in NOT_REACHED {
                ensure!(
                    !used.contains(*action),
                    "{action} is called in the tests now: drop it from NOT_REACHED"
                );
                used.insert((*action).to_owned());
            }
        }
        compare(&format!("deploy/{iam} for {}", who.token), &policy_actions(iam)?, &used)?;
    }
    Ok(())
}
