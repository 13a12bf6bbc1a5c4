//! Egress of the other address family for pods, as upstream's egress-cni plugin gives it:
//!
//! - [`Egress::V4`], IPv6 mode with ENABLE_V4_EGRESS: IPv4 egress for IPv6 pods through `v4if0`,
//!   an address of 169.254.172.0/22, SNATed to the node's IPv4;
//! - [`Egress::V6`], IPv4 mode with ENABLE_V6_EGRESS: IPv6 egress for IPv4 pods through `v6if0`,
//!   an address of fd00::ac:0/118, SNATed to the node's IPv6; IPv6 is turned off on the pod's
//!   main interface, as upstream does.
//!
//! A second veth in the pod whose address comes from the `host-local` IPAM plugin (found in
//! CNI_PATH and delegated to as the CNI spec delegates, with upstream's range and data directory,
//! so that the allocations of an aws-node this agent replaced are seen), the pod's default route
//! of that family through the node and the node's route back. The agent's nftables tables SNAT
//! the range and reject new connections into it (`net::snat`). As upstream, the address is not
//! in the CNI result: the pod's IP in Kubernetes stays its main one.
//!
//! host-local is run as a program, not reimplemented: its store (one file per address under
//! `<dataDir>/<network>`) is what an upstream node already holds.

use std::{
    io::Write as _,
    net::IpAddr,
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
    snat::{V4_EGRESS_RANGE, V6_EGRESS_RANGE},
};

/// Which family of egress a pod gets besides its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// IPv4 egress for an IPv6 pod.
    V4,
    /// IPv6 egress for an IPv4 pod.
    V6,
}

impl Egress {
    pub const BOTH: [Egress; 2] = [Egress::V4, Egress::V6];

    /// The pod's egress interface (upstream's name).
    pub const fn if_name(self) -> &'static str {
        match self {
            Egress::V4 => "v4if0",
            Egress::V6 => "v6if0",
        }
    }

    /// host-local's store (upstream's dataDir for each direction).
    pub const fn data_dir(self) -> &'static str {
        match self {
            Egress::V4 => "/run/cni/v6pd/egress-v4-ipam",
            Egress::V6 => "/run/cni/v4pd/egress-v6-ipam",
        }
    }

    /// The host end's prefix; the rest as for the pod's main veth.
    const fn host_veth_prefix(self) -> &'static str {
        match self {
            Egress::V4 => "egv4",
            Egress::V6 => "egv6",
        }
    }

    const fn what(self) -> &'static str {
        match self {
            Egress::V4 => "IPv4 egress (ENABLE_V4_EGRESS)",
            Egress::V6 => "IPv6 egress (ENABLE_V6_EGRESS)",
        }
    }

    /// The host end of `namespace/pod`'s egress veth.
    pub fn host_veth(self, namespace: &str, pod: &str) -> String {
        host_veth_name(self.host_veth_prefix(), namespace, pod)
    }

    /// host-local's network configuration (upstream's egress-cni `ipam` section).
    fn ipam_conf(self, network: &str) -> Value {
        let (range, all) = match self {
            Egress::V4 => (V4_EGRESS_RANGE.to_string(), "0.0.0.0/0"),
            Egress::V6 => (V6_EGRESS_RANGE.to_string(), "::/0"),
        };
        json!({
            "cniVersion": "1.0.0",
            "name": network,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": range}]],
                "routes": [{"dst": all}],
                "dataDir": self.data_dir(),
            },
        })
    }
}

/// Runs host-local for `command` as the CNI spec delegates to an IPAM plugin: the runtime's
/// parameters, CNI_IFNAME the egress interface, the configuration on stdin; its error JSON kept
/// in ours.
fn host_local(env: &Env, command: &str, network: &str, egress: Egress) -> Result<Value, CniError> {
    let plugin: PathBuf =
        env.path.iter().map(|d| Path::new(d).join("host-local")).find(|p| p.is_file()).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "{}: no host-local IPAM plugin in CNI_PATH `{}` (containernetworking-plugins)",
                    egress.what(),
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
        .env("CNI_IFNAME", egress.if_name())
        .env("CNI_PATH", env.path.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(egress.ipam_conf(network).to_string().as_bytes()).map_err(failed)?;
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
    Err(CniError::new(code, format!("host-local {command} ({}): {}", egress.what(), message.trim())))
}

async fn run_host_local(
    env: &Env,
    command: &'static str,
    network: &str,
    egress: Egress,
) -> Result<Value, CniError> {
    let (env, network) = (env.clone(), network.to_owned());
    tokio::task::spawn_blocking(move || host_local(&env, command, &network, egress))
        .await
        .map_err(|e| CniError::new(code::INTERNAL, format!("host-local: {e}")))?
}

/// ADD: an address from host-local, then the egress interface plumbed as a pod's interface of
/// that family (the /32 with `169.254.1.1`, or the /128 with `fe80::1`, as gateway) with only
/// the route back on the host; for IPv6 egress, IPv6 off on the pod's main interface. On failure
/// host-local's allocation is released again.
pub async fn add(
    host: &Handle,
    env: &Env,
    network: &str,
    egress: Egress,
    host_veth: String,
    mtu: u32,
) -> Result<IpAddr, CniError> {
    let result = run_host_local(env, "ADD", network, egress).await?;
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = match address.split('/').next().map(str::parse::<IpAddr>) {
        Some(Ok(ip)) if ip.is_ipv4() == (egress == Egress::V4) => ip,
        _ => {
            let _ = del(host, env, network, egress, None).await;
            return Err(CniError::new(
                code::INTERNAL,
                format!(
                    "host-local ADD ({}): expected ips[0].address of the range, got {result}",
                    egress.what()
                ),
            ));
        }
    };
    let net = PodNetwork {
        netns: PathBuf::from(&env.netns),
        if_name: egress.if_name().into(),
        host_veth,
        ip,
        table: None,
        mtu,
    };
    let main_if = (egress == Egress::V6).then_some(env.if_name.as_str());
    if let Err(e) = pod::setup_egress(host, &net, main_if).await {
        let _ = del(host, env, network, egress, Some(&net.host_veth)).await;
        return Err(CniError::new(code::INTERNAL, format!("{}: {e}", egress.what())));
    }
    Ok(ip)
}

/// Whether host-local's store holds an address for this container (one file per address, the
/// container id on its first line): only then does DEL have anything of this egress to undo.
fn holds(network: &str, container_id: &str, egress: Egress) -> bool {
    let Ok(entries) = std::fs::read_dir(Path::new(egress.data_dir()).join(network)) else { return false };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path()).is_ok_and(|c| c.lines().next().map(str::trim) == Some(container_id))
    })
}

/// DEL: host-local's release and the host end `host_veth` when given (the pod's namespace is
/// gone; otherwise the veth goes with it), for a container host-local holds an address for.
/// Nothing for any other (a pod without this egress, a DEL repeated): no host-local needed.
pub async fn del(
    host: &Handle,
    env: &Env,
    network: &str,
    egress: Egress,
    host_veth: Option<&str>,
) -> Result<(), CniError> {
    if !holds(network, &env.container_id, egress) {
        return Ok(());
    }
    run_host_local(env, "DEL", network, egress).await?;
    if let Some(name) = host_veth {
        netlink::delete_link(host, name)
            .await
            .map_err(|e| CniError::new(code::INTERNAL, format!("{}: {e}", egress.what())))?;
    }
    Ok(())
}
