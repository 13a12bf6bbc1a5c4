//! The CNI calling convention as containerd drives it (the CNI spec's SPEC.md §2): the
//! plugin binary started with a clean environment holding `CNI_*`, the network configuration on
//! stdin, the result or error read from stdout. It runs inside the node's namespace (the host
//! of the pods); pods are network namespaces of their own under /run/netns.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{eniguard_bin, netns::NetNs};

/// `eniguard-cni`, next to `eniguard`.
pub fn plugin_bin() -> PathBuf {
    eniguard_bin().with_file_name("eniguard-cni")
}

/// One pod sandbox as the runtime knows it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub container_id: String,
    pub namespace: String,
    pub name: String,
    pub netns: PathBuf,
    pub if_name: String,
    /// CNI_PATH (containerd's default `/opt/cni/bin`).
    pub cni_path: String,
}

impl Sandbox {
    pub fn new(container_id: &str, namespace: &str, name: &str, netns: &NetNs) -> Self {
        Self {
            container_id: container_id.into(),
            namespace: namespace.into(),
            name: name.into(),
            netns: netns.path(),
            if_name: "eth0".into(),
            cni_path: "/opt/cni/bin".into(),
        }
    }
}

/// What the plugin printed and how it exited.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// stdout as JSON (Null when empty).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
    /// The error code, when the plugin failed with the spec's error JSON.
    pub fn code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }
    pub fn msg(&self) -> String {
        self.json().get("msg").and_then(Value::as_str).unwrap_or_default().to_owned()
    }
}

/// Runs `plugin` in `node` with exactly `env` and `stdin` (nothing from the test's own
/// environment but PATH).
pub fn exec(node: &NetNs, plugin: &Path, env: &[(&str, String)], stdin: &[u8]) -> Result<Outcome> {
    let mut cmd: Command = node.cmd(plugin);
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    let out = child.wait_with_output()?;
    Ok(Outcome {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The environment containerd sets for `command` on `sandbox`.
pub fn env_for(command: &str, sandbox: &Sandbox) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", sandbox.container_id.clone()),
        ("CNI_NETNS", sandbox.netns.display().to_string()),
        ("CNI_IFNAME", sandbox.if_name.clone()),
        ("CNI_PATH", sandbox.cni_path.clone()),
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                sandbox.namespace, sandbox.name, sandbox.container_id
            ),
        ),
    ]
}

/// The first plugin's configuration as the runtime derives it from `conflist` (`name` and
/// `cniVersion` injected, `capabilities` dropped; `prevResult` for DEL and CHECK), in
/// `cni_version` rather than the list's when given.
pub fn conf(conflist: &Value, cni_version: Option<&str>, prev: Option<&Value>) -> Value {
    let mut c = conflist["plugins"][0].clone();
    if let Some(obj) = c.as_object_mut() {
        obj.remove("capabilities");
    }
    c["name"] = conflist["name"].clone();
    c["cniVersion"] = cni_version.map_or_else(|| conflist["cniVersion"].clone(), Value::from);
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// One command on one sandbox.
pub fn call(node: &NetNs, plugin: &Path, command: &str, sandbox: &Sandbox, conf: &Value) -> Result<Outcome> {
    exec(node, plugin, &env_for(command, sandbox), conf.to_string().as_bytes())
}
