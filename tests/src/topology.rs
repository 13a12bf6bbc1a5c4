//! A small EKS-like node built from network namespaces, for the guard's tests and the demo.
//!
//! ```text
//!  pod ns (eth0 10.0.1.x/32) ── veth ── enixxxx ┐
//!                                               │ node ns: forwarding, policy routing
//!        eth1 10.0.1.5/24 (ENI, table 101) ─────┼── vpc1 10.0.1.1 ┐
//!        eth2 10.0.2.5/24 ("trunk", table 102) ─┴── vpc2 10.0.2.1 ┴ vpc ns, 10.0.9.9 on lo
//! ```
//! Each pod's source-based rule (priority 1536, as upstream) picks the ENI table it leaves by;
//! [`Topology::route_pod`] moves it, which is how a test makes a pod leave the wrong way.
//! Neighbours are static, so no ARP is needed and counts are exact.

use std::process::Command;

use anyhow::Result;

use crate::netns::{sh, veth_pair, Link, NetNs};

/// The VPC destination every pod talks to.
pub const VPC_DEST: &str = "10.0.9.9";

pub struct Eni {
    pub name: &'static str,
    pub peer: &'static str,
    pub addr: &'static str,
    pub gateway: &'static str,
    pub table: u32,
}

pub const ETH1: Eni = Eni { name: "eth1", peer: "vpc1", addr: "10.0.1.5", gateway: "10.0.1.1", table: 101 };
pub const ETH2: Eni = Eni { name: "eth2", peer: "vpc2", addr: "10.0.2.5", gateway: "10.0.2.1", table: 102 };

pub struct Pod {
    pub ns: NetNs,
    pub ip: String,
    pub host_veth: String,
}

pub struct Topology {
    pub node: NetNs,
    pub vpc: NetNs,
    prefix: String,
}

impl Topology {
    /// Namespaces `<prefix>-node`, `<prefix>-vpc`, and the two ENIs.
    pub fn build(prefix: &str) -> Result<Self> {
        let node = NetNs::create(&format!("{prefix}-node"))?;
        let vpc = NetNs::create(&format!("{prefix}-vpc"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        for ns in [&node, &vpc] {
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        vpc.ip(&["addr", "add", &format!("{VPC_DEST}/32"), "dev", "lo"])?;
        for eni in [&ETH1, &ETH2] {
            veth_pair(
                Link { ns: &node, name: eni.name.into(), addr: eni.addr.into() },
                Link { ns: &vpc, name: eni.peer.into(), addr: eni.gateway.into() },
                24,
            )?;
            node.ip(&[
                "route",
                "add",
                "default",
                "via",
                eni.gateway,
                "dev",
                eni.name,
                "table",
                &eni.table.to_string(),
            ])?;
        }
        Ok(Self { node, vpc, prefix: prefix.to_owned() })
    }

    /// A pod with address `ip` whose traffic leaves through `eni`'s table.
    pub fn add_pod(&self, name: &str, ip: &str, eni: &Eni) -> Result<Pod> {
        let ns = NetNs::create(&format!("{}-{name}", self.prefix))?;
        let pod = Pod { ns, ip: ip.to_owned(), host_veth: format!("eni{name}") };
        self.plug(&pod)?;
        self.node.ip(&["rule", "add", "from", ip, "lookup", &eni.table.to_string(), "priority", "1536"])?;
        // Replies from the VPC come back through the ENI the pod's subnet is on.
        let (peer, node_if) =
            if ip.starts_with("10.0.2.") { (ETH2.peer, ETH2.name) } else { (ETH1.peer, ETH1.name) };
        let node_mac = self.node.mac(node_if)?;
        self.vpc.ip(&["neigh", "replace", ip, "lladdr", &node_mac, "dev", peer, "nud", "permanent"])?;
        Ok(pod)
    }

    /// (Re)creates the pod's veth pair, address and routes, as a CNI ADD does.
    pub fn plug(&self, pod: &Pod) -> Result<()> {
        let (ns, ip, host_veth) = (&pod.ns, pod.ip.as_str(), pod.host_veth.as_str());
        sh(Command::new("ip")
            .args(["-n", self.node.name(), "link", "add", host_veth, "type", "veth"])
            .args(["peer", "name", "eth0", "netns", ns.name()]))?;
        for (n, ifname) in [(&self.node, host_veth), (ns, "eth0")] {
            n.sysctl(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "1")?;
            n.ip(&["link", "set", ifname, "up"])?;
        }
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ns.ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
        let host_mac = self.node.mac(host_veth)?;
        ns.ip(&["neigh", "replace", "169.254.1.1", "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"])?;
        let pod_mac = ns.mac("eth0")?;
        self.node.ip(&["neigh", "replace", ip, "lladdr", &pod_mac, "dev", host_veth, "nud", "permanent"])?;
        self.node.ip(&["route", "add", ip, "dev", host_veth, "scope", "link"])?;
        Ok(())
    }

    /// Removes the pod's veth pair, as a CNI DEL does.
    pub fn unplug(&self, pod: &Pod) -> Result<()> {
        self.node.ip(&["link", "del", &pod.host_veth]).map(|_| ())
    }

    /// Makes the pod's traffic leave through `eni` instead.
    pub fn route_pod(&self, pod: &Pod, eni: &Eni) -> Result<()> {
        self.node.ip(&["rule", "del", "from", &pod.ip, "priority", "1536"])?;
        self.node.ip(&[
            "rule",
            "add",
            "from",
            &pod.ip,
            "lookup",
            &eni.table.to_string(),
            "priority",
            "1536",
        ])?;
        Ok(())
    }

    /// Packets received by the VPC side of `eni` (what actually left the node there).
    pub fn vpc_rx_packets(&self, eni: &Eni) -> Result<u64> {
        let out = self.vpc.ip(&["-s", "-j", "link", "show", "dev", eni.peer])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0))
    }
}

impl Pod {
    /// Sends `count` pings to the VPC destination (from `source`, default the pod's address).
    /// Returns whether ping saw replies; dropped packets are not an error here.
    pub fn ping(&self, count: u32, source: Option<&str>) -> Result<bool> {
        let mut cmd = self.ns.cmd("ping");
        cmd.args(["-c", &count.to_string(), "-i", "0.02", "-W", "1", "-q"]);
        if let Some(src) = source {
            cmd.args(["-I", src]);
        }
        let out = cmd.arg(VPC_DEST).output()?;
        Ok(out.status.success())
    }
}
