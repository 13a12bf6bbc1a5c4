//! IPv4 egress for IPv6 pods (IPv6 mode with ENABLE_V4_EGRESS), as upstream's egress-cni plugin
//! gives it: a second interface `v4if0` in the pod whose address comes from the `host-local` IPAM
//! plugin (found in CNI_PATH and delegated to as the CNI spec delegates, with upstream's range and
//! data directory, so that the allocations of an aws-node this agent replaced are seen), the pod's
//! IPv4 default route through the node and the node's route back. The agent's nftables table
//! SNATs the range to the node's IPv4 and rejects new connections into it (`net::snat`). As
//! upstream, the address is not in the CNI result: the pod's IP in Kubernetes stays its IPv6 one.
//!
//! host-local is run as a program, not reimplemented: its store (one file per address under
//! `<dataDir>/<network>`) is what an upstream node already holds.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use rtnetlink::Handle;
use serde_json::{json, Value};

use super::spec::{code, CniError, Env};
use crate::net::{
    names::host_veth_name,
    netlink,
    pod::{self, PodNetwork},
    snat::V4_EGRESS_RANGE,
};

/// The pod's IPv4 egress interface (upstream's name).
pub const IF_NAME: &str = "v4if0";
/// host-local's store (upstream's dataDir).
pub const DATA_DIR: &str = "/run/cni/v4pd/egress-v4-ipam";
/// The host end's prefix; the rest as for the pod's main veth.
const HOST_VETH_PREFIX: &str = "egv4";

/// The host end of `namespace/pod`'s egress veth.
pub fn host_veth(namespace: &str, pod: &str) -> String {
    host_veth_name(HOST_VETH_PREFIX, namespace, pod)
}

/// host-local's network configuration (upstream's egress-cni `ipam` section).
fn ipam_conf(network: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": V4_EGRESS_RANGE.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": DATA_DIR,
        },
    })
}

/// Runs host-local for `command` as the CNI spec delegates to an IPAM plugin: the runtime's
/// parameters, CNI_IFNAME `v4if0`, the configuration on stdin; its error JSON kept in ours.
fn host_local(env: &Env, command: &str, network: &str) -> Result<Value, CniError> {
    let plugin: PathBuf =
        env.path.iter().map(|d| Path::new(d).join("host-local")).find(|p| p.is_file()).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "ENABLE_V4_EGRESS: no host-local IPAM plugin in CNI_PATH `{}` (containernetworking-plugins)",
                    env.path.join(":")
                ),
            )
        })?;
    let failed = |e: std::io::Error| CniError::new(code::INTERNAL, format!("{}: {e}", plugin.display()));
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", IF_NAME)
        .env("CNI_PATH", env.path.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ipam_conf(network).to_string().as_bytes()).map_err(failed)?;
    }
    let out = child.wait_with_output().map_err(failed)?;
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if out.status.success() {
        return Ok(reply);
    }
    let message = reply["msg"]
        .as_str()
        .map_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned(), str::to_owned);
    let code = reply["code"].as_u64().and_then(|c| u32::try_from(c).ok()).unwrap_or(code::INTERNAL);
    Err(CniError::new(code, format!("host-local {command} (IPv4 egress): {}", message.trim())))
}

/// ADD: an address from host-local, then `v4if0` plumbed as an IPv4 pod's interface (the /32,
/// `169.254.1.1` as gateway) with only the route back on the host. On failure host-local's
/// allocation is released again.
pub async fn add(
    host: &Handle,
    env: &Env,
    network: &str,
    host_veth: String,
    mtu: u32,
) -> Result<Ipv4Addr, CniError> {
    let (env2, net2) = (env.clone(), network.to_owned());
    let result = tokio::task::spawn_blocking(move || host_local(&env2, "ADD", &net2))
        .await
        .map_err(|e| CniError::new(code::INTERNAL, format!("host-local: {e}")))??;
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = match address.split('/').next().map(str::parse::<Ipv4Addr>) {
        Some(Ok(ip)) => ip,
        _ => {
            let _ = del(host, env, network, None).await;
            return Err(CniError::new(
                code::INTERNAL,
                format!("host-local ADD (IPv4 egress): expected ips[0].address, got {result}"),
            ));
        }
    };
    let net = PodNetwork {
        netns: PathBuf::from(&env.netns),
        if_name: IF_NAME.into(),
        host_veth,
        ip: ip.into(),
        table: None,
        mtu,
    };
    if let Err(e) = pod::setup_egress(host, &net).await {
        let _ = del(host, env, network, Some(&net.host_veth)).await;
        return Err(CniError::new(code::INTERNAL, format!("IPv4 egress: {e}")));
    }
    Ok(ip)
}

/// Whether host-local's store holds an address for this container (one file per address, the
/// container id on its first line): only then does DEL have anything of IPv4 egress to undo.
fn holds(network: &str, container_id: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(Path::new(DATA_DIR).join(network)) else { return false };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path()).is_ok_and(|c| c.lines().next().map(str::trim) == Some(container_id))
    })
}

/// DEL: host-local's release and the host end `host_veth` when given (the pod's namespace is
/// gone; otherwise the veth goes with it), for a container host-local holds an address for.
/// Nothing for any other (an IPv4 pod, a DEL repeated): no host-local needed.
pub async fn del(host: &Handle, env: &Env, network: &str, host_veth: Option<&str>) -> Result<(), CniError> {
    if !holds(network, &env.container_id) {
        return Ok(());
    }
    let (env2, net2) = (env.clone(), network.to_owned());
    tokio::task::spawn_blocking(move || host_local(&env2, "DEL", &net2))
        .await
        .map_err(|e| CniError::new(code::INTERNAL, format!("host-local: {e}")))??;
    if let Some(name) = host_veth {
        netlink::delete_link(host, name)
            .await
            .map_err(|e| CniError::new(code::INTERNAL, format!("IPv4 egress: {e}")))?;
    }
    Ok(())
}
