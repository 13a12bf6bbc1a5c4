//! deploy/ against the code it deploys (no root needed):
//! - every manifest validates offline against the Kubernetes 1.33 schemas (kubernetes-validate,
//!   strict: an unknown field fails), kinds without a bundled schema are checked here by hand;
//! - every variable a DaemonSet sets is one the agent reads, with the value the agent uses when
//!   it is unset (`eniguard agent --print-config` with and without it), and every host path the
//!   agent uses is mounted;
//! - the PodMonitor scrapes the port the DaemonSets name `metrics`, and the IAM policies parse.
//!
//! RBAC and IAM against what the agent really calls: tests/tests/privileged/deploy.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its location

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every file under deploy/ with one of `exts`, sorted.
fn files(exts: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.retain(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)));
    out.sort();
    out
}

/// Every object of every manifest, with the file it came from.
fn objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for f in files(&["yaml", "yml"]) {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

fn daemonsets() -> Vec<(PathBuf, Value)> {
    objects().into_iter().filter(|(_, o)| o["kind"] == "DaemonSet").collect()
}

fn kubernetes_validate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/kubernetes-validate/bin/kubernetes-validate")
}

#[test]
fn manifests_validate_against_kubernetes_1_33() {
    let tool = kubernetes_validate();
    assert!(tool.exists(), "{} is missing: run `cargo xtask setup`", tool.display());
    let manifests = files(&["yaml", "yml"]);
    assert!(manifests.len() >= 7, "deploy/ has {} manifests", manifests.len());
    let out = Command::new(&tool)
        .args(["--kubernetes-version", "1.33.0", "--strict"])
        .args(&manifests)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "kubernetes-validate:\n{text}");
    // Every built-in object was checked against a schema; only the operator's PodMonitor has
    // none bundled (checked below).
    let passed = text.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
    let custom = objects().iter().filter(|(_, o)| o["kind"] == "PodMonitor").count();
    assert_eq!(passed + custom, objects().len(), "kubernetes-validate:\n{text}");
}

/// The validator must fail what the API server would refuse (so that the test above can fail).
#[test]
fn the_validator_refuses_an_unknown_field() {
    let (_, ds) = daemonsets().into_iter().next().unwrap();
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["hostNetwrk"] = Value::Bool(true);
    let file = std::env::temp_dir().join(format!("eniguard-bad-{}.yaml", std::process::id()));
    std::fs::write(&file, serde_yaml::to_string(&bad).unwrap()).unwrap();
    let out = Command::new(kubernetes_validate())
        .args(["--kubernetes-version", "1.33.0", "--strict"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success(), "a misspelt field passed");
}

/// `eniguard agent --print-config` with `env` (and nothing else from this process) as a map.
fn print_config(env: &[(String, String)], args: &[String]) -> BTreeMap<String, String> {
    let out = Command::new(eniguard_tests::eniguard_bin())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("agent")
        .args(args)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "--print-config with {env:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// The container's env: literal values, and the names set from elsewhere (fieldRef).
fn container_env(c: &Value) -> (Vec<(String, String)>, Vec<String>) {
    let mut literal = Vec::new();
    let mut other = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_owned();
        match e.get("value") {
            Some(v) => literal.push((name, v.as_str().unwrap_or_default().to_owned())),
            None => other.push(name),
        }
    }
    (literal, other)
}

/// Variables the agent's DaemonSets set away from the agent's default, and why.
const NOT_DEFAULT: &[(&str, &str)] = &[(
    "NETWORK_POLICY_ENFORCING_MODE",
    "the network-policy agent runs beside it, as in upstream's manifest",
)];

#[test]
fn daemonset_env_is_what_the_agent_reads_with_its_defaults() {
    let known: Vec<&str> = eniguard::config::VARIABLES.iter().map(|v| v.name).collect();
    let defaults = print_config(&[], &[]);
    let sets = daemonsets();
    assert_eq!(sets.len(), 3, "agent, agent without privileges, audit");
    for (file, ds) in sets {
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        let (literal, other) = container_env(c);
        assert_eq!(other, ["MY_NODE_NAME"], "{}: only the node's name comes from the pod", file.display());
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in &literal {
            assert!(known.contains(&name.as_str()), "{}: {name} is not read by the agent", file.display());
            assert!(seen.insert(name.clone()), "{}: {name} twice", file.display());
            let with = print_config(&[(name.clone(), value.clone())], &[]);
            if let Some((_, why)) = NOT_DEFAULT.iter().find(|(n, _)| n == name) {
                assert_ne!(
                    with.get(name),
                    defaults.get(name),
                    "{}: {name}: set on purpose ({why})",
                    file.display()
                );
                continue;
            }
            assert_eq!(
                with.get(name),
                defaults.get(name),
                "{}: {name}={value:?} differs from the agent's default",
                file.display()
            );
        }
        if c["args"][0] == "agent" {
            // The agent's DaemonSets set every variable, so that an operator sees each one.
            let missing: Vec<&&str> =
                known.iter().filter(|k| **k != "MY_NODE_NAME" && !seen.contains(**k)).collect();
            assert!(missing.is_empty(), "{}: not set: {missing:?}", file.display());
        }
    }
}

/// Whether `path` is at or under one of the container's mount paths.
fn mounted(c: &Value, path: &str) -> bool {
    c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
        let at = m["mountPath"].as_str().unwrap_or("/nowhere");
        Path::new(path).starts_with(at)
    })
}

#[test]
fn every_host_path_the_agent_uses_is_mounted() {
    for (file, ds) in daemonsets() {
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true, "{}", file.display());
        assert!(spec["priorityClassName"].as_str().is_some(), "{}", file.display());
        let c = &spec["containers"][0];
        let args: Vec<String> =
            c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
        let (env, _) = container_env(c);
        let pin_dir = |args: &[String]| {
            args.iter()
                .find_map(|a| a.strip_prefix("--pin-dir="))
                .map(str::to_owned)
                .unwrap_or_else(|| eniguard::guard::pins::DEFAULT_PIN_DIR.to_owned())
        };
        let backing = env
            .iter()
            .find(|(k, _)| k == "AWS_VPC_K8S_CNI_BACKING_STORE")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let backing_dir = Path::new(&backing).parent().unwrap().display().to_string();
        let mut paths = vec![pin_dir(&args), backing_dir];
        if args[0] == "agent" {
            let config = print_config(&env, &args[1..]);
            for flag in ["--cni-conf-dir", "--cni-bin-dir", "--run-dir", "--pin-dir"] {
                paths.push(config[flag].clone());
            }
        }
        for p in paths {
            assert!(mounted(c, &p), "{}: {p} is not mounted", file.display());
        }
        // Probes on the introspection server's health endpoints.
        for probe in ["livenessProbe", "readinessProbe"] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["host"], "127.0.0.1", "{}: {probe}", file.display());
            assert!(get["path"] == "/healthz" || get["path"] == "/readyz", "{}: {probe}", file.display());
        }
    }
}

#[test]
fn the_pod_monitor_scrapes_the_metrics_ports() {
    let monitors: Vec<Value> =
        objects().into_iter().filter(|(_, o)| o["kind"] == "PodMonitor").map(|(_, o)| o).collect();
    assert_eq!(monitors.len(), 1);
    let m = &monitors[0];
    assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
    let selected: Vec<&str> = m["spec"]["selector"]["matchExpressions"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let port = m["spec"]["podMetricsEndpoints"][0]["port"].as_str().unwrap();
    for (file, ds) in daemonsets() {
        let labels = &ds["spec"]["template"]["metadata"]["labels"];
        assert!(
            selected.contains(&labels["app.kubernetes.io/name"].as_str().unwrap()),
            "{}: not selected by the PodMonitor",
            file.display()
        );
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        assert!(
            c["ports"].as_array().unwrap().iter().any(|p| p["name"] == port),
            "{}: no port named {port}",
            file.display()
        );
    }
}

#[test]
fn iam_policies_and_dashboard_parse() {
    for f in files(&["json"]) {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if f.starts_with(deploy_dir().join("iam")) {
            assert_eq!(v["Version"], "2012-10-17", "{}", f.display());
            for s in v["Statement"].as_array().unwrap() {
                assert_eq!(s["Effect"], "Allow", "{}", f.display());
                assert!(
                    s["Action"].as_array().unwrap().iter().all(|a| a.as_str().unwrap().starts_with("ec2:")),
                    "{}",
                    f.display()
                );
            }
        }
    }
}
