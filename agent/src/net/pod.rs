//! A pod's network, through rtnetlink (upstream's cmd/routed-eni-cni-plugin/driver/driver.go and
//! pkg/networkutils/network.go), for the CNI plugin:
//!
//! - a veth whose host end is created in the host namespace and whose pod end is created
//!   directly in the pod's namespace (the peer carries the namespace's fd; nothing is moved
//!   afterwards: moving links serialises on the rtnl lock, upstream PR #3764);
//! - in the pod: the /32, a link route to 169.254.1.1, the default route via it, and a permanent
//!   neighbour entry for 169.254.1.1 with the host end's MAC;
//! - on the host: the route to the pod in main, rule 512 `to <pod> lookup main` and, for an
//!   address of a secondary ENI, rule 1536 `from <pod> lookup <ENI table>`.
//!
//! An IPv6 pod (IPv6 mode, ENABLE_IPv6) gets the same shape as upstream's: its
//! /128 (without duplicate address detection: the address is the pod's alone), `fe80::1` as
//! gateway with a permanent neighbour entry, IPv6 on in the pod (`disable_ipv6=0` on its
//! interface and loopback); on the host the route to the /128, and the host end hardened as
//! upstream's (`accept_ra=0`, `accept_redirects=1`, `forwarding=0` on that interface). Rules and
//! branch ENIs are IPv4 only so far.
//!
//! Netlink inside the pod's namespace goes through a socket opened there by a short-lived thread
//! that did `setns` (a socket stays in the namespace it was created in; setns acts per thread).
//! Everything tolerates what is already there (ADD is retried) and what is already gone (DEL is
//! best effort).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoVeth, LinkAttribute, LinkMessage},
        route::RouteScope,
        rule::RuleAction,
    },
    Handle, LinkUnspec, LinkVeth, LinkVlan, RouteMessageBuilder,
};

use super::netlink::{
    call, delete_link, delete_rules, delete_rules6, gateway_routes, is_exists, is_missing, link_by_name,
    rules, set_sysctl, NetError, Rule,
};

/// The pod's gateway: a link-local address that only ever resolves to the host end.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// An IPv6 pod's gateway, the same way.
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The gateway of a pod with address `ip`.
pub fn gateway(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(POD_GATEWAY),
        IpAddr::V6(_) => IpAddr::V6(POD_GATEWAY6),
    }
}

/// The prefix length of one address of `ip`'s family.
fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// A route to `ip`/`len` (and via `gateway`) in either family.
fn route(ip: IpAddr, len: u8, gateway: Option<IpAddr>) -> Result<RouteMessageBuilder<IpAddr>, NetError> {
    let bad = |e: String| NetError::Invalid(format!("route to {ip}/{len}: {e}"));
    let r = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, len)
        .map_err(|e| bad(format!("{e:?}")))?;
    match gateway {
        Some(g) => r.gateway(g).map_err(|e| bad(format!("{e:?}"))),
        None => Ok(r),
    }
}

/// `to <pod> lookup main` (upstream's ToContainerRulePriority).
pub const TO_POD_PRIORITY: u32 = 512;
/// `from <pod> lookup <ENI table>` (upstream's FromPodRulePriority).
pub const FROM_POD_PRIORITY: u32 = 1536;
const MAIN_TABLE: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// The pod's network namespace cannot be entered (gone, or not a namespace).
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("interface {0} already exists in the pod's network namespace")]
    Exists(String),
    /// CHECK found something missing or different.
    #[error("{0}")]
    Drifted(String),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// What ADD sets up for one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub netns: PathBuf,
    /// The pod's interface (CNI_IFNAME).
    pub if_name: String,
    /// The host end (`net::names::host_veth_name`).
    pub host_veth: String,
    pub ip: IpAddr,
    /// The ENI's route table; None for the primary ENI (main).
    pub table: Option<u32>,
    pub mtu: u32,
}

/// What ADD created, for the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbed {
    pub host_mac: String,
    pub pod_mac: String,
}

/// A netlink connection inside the namespace at `path`; its driver runs on the current runtime.
pub fn open_netns(path: &Path) -> Result<Handle, PodNetError> {
    let err = |source| PodNetError::Netns { path: path.to_owned(), source };
    let file = File::open(path).map_err(err)?;
    let runtime = tokio::runtime::Handle::current();
    let opened = std::thread::scope(|s| {
        s.spawn(|| {
            // The socket registers with the runtime's reactor; the thread ends right after.
            let _enter = runtime.enter();
            // SAFETY: setns on this thread only, with an fd we hold open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            rtnetlink::new_connection()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")))
    });
    let (conn, handle, _) = opened.map_err(err)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Address(m) = a { Some(m.clone()) } else { None })
        .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
        .unwrap_or_default()
}

/// ADD's plumbing (see the module doc). A stale host end of the same name (a retried ADD, a
/// leaked pod) is replaced.
pub async fn setup(host: &Handle, net: &PodNetwork) -> Result<Plumbed, PodNetError> {
    let (index, plumbed) = veth(host, net).await?;
    host_side(host, net, index).await?;
    Ok(plumbed)
}

/// A pod's egress interface of the other family (`crate::cni::egress`): the veth and the pod's
/// side as for any pod of that family, and on the host only the route back (the range is not the
/// VPC's: no ENI table, no rules). `main_if` (IPv6 egress): the pod's main interface, whose IPv6
/// goes off first, as upstream's egress-cni does.
pub async fn setup_egress(
    host: &Handle,
    net: &PodNetwork,
    main_if: Option<&str>,
) -> Result<Plumbed, PodNetError> {
    if let Some(main_if) = main_if {
        let path = format!("/proc/sys/net/ipv6/conf/{main_if}/disable_ipv6");
        sysctls_in_netns(&net.netns, &[(path, "1")])?;
    }
    let (index, plumbed) = veth(host, net).await?;
    host_route(host, net, index).await?;
    Ok(plumbed)
}

/// The veth, the pod's side of it, and the host end up; returns the host end's index.
async fn veth(host: &Handle, net: &PodNetwork) -> Result<(u32, Plumbed), PodNetError> {
    let pod = open_netns(&net.netns)?;
    let netns =
        File::open(&net.netns).map_err(|source| PodNetError::Netns { path: net.netns.clone(), source })?;
    delete_link(host, &net.host_veth).await?;
    if link_by_name(&pod, &net.if_name).await?.is_some() {
        return Err(PodNetError::Exists(net.if_name.clone()));
    }
    let peer = LinkUnspec::new_with_name(&net.if_name).setns_by_fd(netns.as_raw_fd()).mtu(net.mtu).build();
    let veth = LinkVeth::new(&net.host_veth, &net.if_name)
        .mtu(net.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(veth).execute().await.map_err(call(format!(
        "veth {} ↔ {} in {}",
        net.host_veth,
        net.if_name,
        net.netns.display()
    )))?;
    let host_link =
        link_by_name(host, &net.host_veth).await?.ok_or_else(|| NetError::NoLink(net.host_veth.clone()))?;
    let pod_link =
        link_by_name(&pod, &net.if_name).await?.ok_or_else(|| NetError::NoLink(net.if_name.clone()))?;
    let (host_index, pod_index) = (host_link.header.index, pod_link.header.index);
    let host_mac = mac_of(&host_link);
    pod_side(&pod, net, pod_index, &host_link).await?;
    host.link()
        .set(LinkUnspec::new_with_index(host_index).up().build())
        .execute()
        .await
        .map_err(call(format!("bringing up {}", net.host_veth)))?;
    Ok((host_index, Plumbed { host_mac, pod_mac: mac_of(&pod_link) }))
}

/// A branch-ENI pod's way out: a VLAN on the trunk with the branch ENI's MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchLink {
    pub vlan_id: u16,
    pub mac: String,
    /// The branch subnet's gateway (IPv4), or EC2's link-local router `fe80:ec2::1` (IPv6).
    pub gateway: IpAddr,
    /// The trunk's link.
    pub parent_if_index: u32,
    /// POD_SECURITY_GROUP_ENFORCING_MODE=strict: everything of the pod, even to the node, goes
    /// through the branch ENI (rules by interface at priority 10); standard: rules by address.
    pub strict: bool,
}

impl BranchLink {
    pub fn link_name(&self) -> String {
        format!("vlan.eth.{}", self.vlan_id)
    }
    pub fn table(&self) -> u32 {
        u32::from(self.vlan_id) + 100
    }
}

/// Priority of the strict mode's `iif` rules (upstream's VlanRulePriority).
pub const VLAN_RULE_PRIORITY: u32 = 10;

/// ADD's plumbing for a branch-ENI pod (upstream's SetupBranchENIPodNetwork): the VLAN link
/// `vlan.eth.<id>` on the trunk with the branch's MAC (an old one replaced), table `id + 100`
/// with the gateway's link route and the default route, the veth as for any pod, then strict
/// mode's `iif` rules and the pod's route in that table, or standard mode's address rules.
pub async fn setup_branch(host: &Handle, net: &PodNetwork, b: &BranchLink) -> Result<Plumbed, PodNetError> {
    if net.ip.is_ipv4() != b.gateway.is_ipv4() {
        return Err(NetError::Invalid(format!(
            "branch pod {} with gateway {}: not one family",
            net.ip, b.gateway
        ))
        .into());
    }
    let name = b.link_name();
    let table = b.table();
    delete_link(host, &name).await?;
    let mac = super::netlink::mac_bytes(&b.mac).ok_or_else(|| NetError::NoLink(b.mac.clone()))?;
    let vlan = LinkVlan::new(&name, b.parent_if_index, b.vlan_id).address(mac).mtu(net.mtu).up().build();
    host.link()
        .add(vlan)
        .execute()
        .await
        .map_err(call(format!("VLAN link {name} on ifindex {}", b.parent_if_index)))?;
    let vlan_index =
        link_by_name(host, &name).await?.ok_or_else(|| NetError::NoLink(name.clone()))?.header.index;
    if net.ip.is_ipv6() {
        harden_ipv6(&name)?;
    }
    gateway_routes(host, table, vlan_index, b.gateway).await?;
    let stale =
        |r: &Rule| r.priority == Some(VLAN_RULE_PRIORITY) && r.iif.as_deref() == Some(net.host_veth.as_str());
    delete_rules(host, stale).await?;
    delete_rules6(host, stale).await?;
    let (index, plumbed) = veth(host, net).await?;
    if b.strict {
        let pod_route = route(net.ip, host_len(net.ip), None)?
            .table_id(table)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        host.route()
            .add(pod_route)
            .replace()
            .execute()
            .await
            .map_err(call(format!("route to {} in table {table}", net.ip)))?;
        for iif in [name.as_str(), net.host_veth.as_str()] {
            let added = if net.ip.is_ipv4() {
                let rule = host.rule().add().v4().input_interface(iif);
                rule.table_id(table).priority(VLAN_RULE_PRIORITY).action(RuleAction::ToTable).execute().await
            } else {
                let rule = host.rule().add().v6().input_interface(iif);
                rule.table_id(table).priority(VLAN_RULE_PRIORITY).action(RuleAction::ToTable).execute().await
            };
            match added {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(call(format!("rule iif {iif} lookup {table}"))(e).into()),
            }
        }
    } else {
        host_side(host, &PodNetwork { table: Some(table), ..net.clone() }, index).await?;
    }
    Ok(plumbed)
}

async fn pod_side(
    pod: &Handle,
    net: &PodNetwork,
    index: u32,
    host_link: &LinkMessage,
) -> Result<(), NetError> {
    let ifn = &net.if_name;
    let (len, gw) = (host_len(net.ip), gateway(net.ip));
    if net.ip.is_ipv6() {
        let conf = |i: &str, key: &str| format!("/proc/sys/net/ipv6/conf/{i}/{key}");
        sysctls_in_netns(
            &net.netns,
            &[
                (conf(ifn, "disable_ipv6"), "0"),
                (conf("lo", "disable_ipv6"), "0"),
                (conf(ifn, "accept_dad"), "0"),
            ],
        )?;
    }
    match pod.address().add(index, net.ip, len).execute().await {
        Ok(()) => {}
        Err(e) if is_exists(&e) => {}
        Err(e) => return Err(call(format!("address {} on {ifn}", net.ip))(e)),
    }
    pod.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(call(format!("bringing up {ifn}")))?;
    let link_route = route(gw, len, None)?.output_interface(index).scope(RouteScope::Link).build();
    pod.route().add(link_route).replace().execute().await.map_err(call(format!("route to {gw}")))?;
    let any =
        if net.ip.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    let default = route(any, 0, Some(gw))?.output_interface(index).build();
    pod.route().add(default).replace().execute().await.map_err(call("the pod's default route"))?;
    let mac: Vec<u8> = host_link
        .attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Address(m) = a { Some(m.clone()) } else { None })
        .unwrap_or_default();
    pod.neighbours()
        .add(index, gw)
        .link_layer_address(&mac)
        .replace()
        .execute()
        .await
        .map_err(call(format!("neighbour {gw}")))
}

/// Writes sysctls inside the namespace at `netns`, from a short-lived thread that entered it
/// (`/proc/sys/net` is the writing thread's namespace).
fn sysctls_in_netns(netns: &Path, settings: &[(String, &str)]) -> Result<(), NetError> {
    let file =
        File::open(netns).map_err(|source| NetError::Sysctl { path: netns.display().to_string(), source })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with an fd we hold open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let source = std::io::Error::last_os_error();
                return Err(NetError::Sysctl { path: netns.display().to_string(), source });
            }
            settings.iter().try_for_each(|(path, value)| set_sysctl(path, value).map(drop))
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Invalid("the sysctl thread panicked".into())))
    })
}

async fn host_route(host: &Handle, net: &PodNetwork, index: u32) -> Result<(), NetError> {
    let to_pod =
        route(net.ip, host_len(net.ip), None)?.output_interface(index).scope(RouteScope::Link).build();
    host.route().add(to_pod).replace().execute().await.map_err(call(format!("host route to {}", net.ip)))
}

/// Upstream's hardening of a host-side IPv6 link (a pod's host end, a branch's VLAN link).
fn harden_ipv6(link: &str) -> Result<(), NetError> {
    let conf = |key: &str| format!("/proc/sys/net/ipv6/conf/{link}/{key}");
    for (key, value) in [("accept_ra", "0"), ("accept_redirects", "1"), ("forwarding", "0")] {
        set_sysctl(&conf(key), value)?;
    }
    Ok(())
}

async fn host_side(host: &Handle, net: &PodNetwork, index: u32) -> Result<(), NetError> {
    host_route(host, net, index).await?;
    let ip = match net.ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => {
            harden_ipv6(&net.host_veth)?;
            // One ENI in IPv6 mode, so no rules but a branch pod's (standard mode).
            return match net.table {
                Some(table) => address_rules6(host, ip, table).await,
                None => Ok(()),
            };
        }
    };
    // A leaked pod's rules for this address may name another table: start clean.
    delete_rules(host, |r| r.priority == Some(FROM_POD_PRIORITY) && r.src == Some(ip)).await?;
    let to = host
        .rule()
        .add()
        .v4()
        .destination_prefix(ip, 32)
        .table_id(MAIN_TABLE)
        .priority(TO_POD_PRIORITY)
        .action(RuleAction::ToTable);
    match to.execute().await {
        Ok(()) => {}
        Err(e) if is_exists(&e) => {}
        Err(e) => return Err(call(format!("rule to {ip}"))(e)),
    }
    if let Some(table) = net.table {
        host.rule()
            .add()
            .v4()
            .source_prefix(ip, 32)
            .table_id(table)
            .priority(FROM_POD_PRIORITY)
            .action(RuleAction::ToTable)
            .execute()
            .await
            .map_err(call(format!("rule from {ip} lookup {table}")))?;
    }
    Ok(())
}

/// A branch pod's address rules in standard mode, IPv6: `to <pod> lookup main` (512) and
/// `from <pod> lookup <table>` (1536).
async fn address_rules6(host: &Handle, ip: Ipv6Addr, table: u32) -> Result<(), NetError> {
    delete_rules6(host, |r| r.priority == Some(FROM_POD_PRIORITY) && r.src6 == Some(ip)).await?;
    let to = host.rule().add().v6().destination_prefix(ip, 128);
    match to.table_id(MAIN_TABLE).priority(TO_POD_PRIORITY).action(RuleAction::ToTable).execute().await {
        Ok(()) => {}
        Err(e) if is_exists(&e) => {}
        Err(e) => return Err(call(format!("rule to {ip}"))(e)),
    }
    let from = host.rule().add().v6().source_prefix(ip, 128);
    from.table_id(table)
        .priority(FROM_POD_PRIORITY)
        .action(RuleAction::ToTable)
        .execute()
        .await
        .map_err(call(format!("rule from {ip} lookup {table}")))
}

/// DEL's host-side teardown for one address: rules 512 and 1536 (whatever table), the host
/// route, and the host end of the veth unless it routes another address (a host end of the same
/// name that serves a newer sandbox of the pod stays). Anything already gone is fine.
pub async fn teardown(host: &Handle, ip: IpAddr, host_veth: Option<&str>) -> Result<(), NetError> {
    let mut ours = None;
    if let Some(name) = host_veth {
        if let Some(link) = link_by_name(host, name).await? {
            if routed_via(host, link.header.index).await?.iter().all(|r| *r == ip) {
                ours = Some(name);
            }
        }
    }
    match ip {
        IpAddr::V4(ip) => {
            delete_rules(host, |r| {
                (r.priority == Some(TO_POD_PRIORITY) && r.dst == Some(ip))
                    || (r.priority == Some(FROM_POD_PRIORITY) && r.src == Some(ip))
            })
            .await?;
        }
        IpAddr::V6(ip) => {
            delete_rules6(host, |r| {
                (r.priority == Some(TO_POD_PRIORITY) && r.dst6 == Some(ip))
                    || (r.priority == Some(FROM_POD_PRIORITY) && r.src6 == Some(ip))
            })
            .await?;
        }
    }
    let to_pod = route(ip, host_len(ip), None)?.scope(RouteScope::Link).build();
    match host.route().del(to_pod).execute().await {
        Ok(()) => {}
        Err(e) if is_missing(&e) => {}
        Err(e) => return Err(call(format!("host route to {ip}"))(e)),
    }
    if let Some(name) = ours {
        delete_link(host, name).await?;
    }
    Ok(())
}

/// DEL's teardown for a branch-ENI pod (upstream's layout): the VLAN link, its priority-10 rules
/// and every rule into table `vlan + 100`, of either family.
pub async fn teardown_branch(host: &Handle, vlan: u16, host_veth: Option<&str>) -> Result<(), NetError> {
    let vlan_link = format!("vlan.eth.{vlan}");
    let table = u32::from(vlan) + 100;
    let doomed = |r: &Rule| {
        r.table == table
            || (r.priority == Some(VLAN_RULE_PRIORITY)
                && (r.iif.as_deref() == Some(vlan_link.as_str()) || r.iif.as_deref() == host_veth))
    };
    delete_rules(host, doomed).await?;
    delete_rules6(host, doomed).await?;
    delete_link(host, &vlan_link).await?;
    if let Some(name) = host_veth {
        delete_link(host, name).await?;
    }
    Ok(())
}

/// CHECK: everything ADD set up is still there; the first thing missing is named.
pub async fn check(host: &Handle, net: &PodNetwork) -> Result<(), PodNetError> {
    let drift = |what: String| Err(PodNetError::Drifted(what));
    let ip = net.ip;
    let pod = open_netns(&net.netns)?;
    let Some(pod_link) = link_by_name(&pod, &net.if_name).await? else {
        return drift(format!("interface {} is missing in the pod", net.if_name));
    };
    let index = pod_link.header.index;
    let has_ip = pod
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_filter(|a| {
            futures::future::ready(a.attributes.iter().any(
                |x| matches!(x, rtnetlink::packet_route::address::AddressAttribute::Address(a) if *a == ip),
            ))
        })
        .try_next()
        .await
        .map_err(call("pod addresses"))?
        .is_some();
    if !has_ip {
        return drift(format!("{} has lost its address {}", net.if_name, ip));
    }
    let gateway = gateway(ip);
    if !has_route(&pod, Route::Default { via: gateway }, index).await? {
        return drift(format!("the pod's default route via {gateway} is missing"));
    }
    let Some(host_link) = link_by_name(host, &net.host_veth).await? else {
        return drift(format!("host interface {} is missing", net.host_veth));
    };
    if !has_route(host, Route::To(ip), host_link.header.index).await? {
        return drift(format!("the host route to {} via {} is missing", ip, net.host_veth));
    }
    // An IPv6 pod (IPv6 mode: one ENI, table main) has no rules.
    let IpAddr::V4(ip) = ip else { return Ok(()) };
    let rules = rules(host).await?;
    if !rules.iter().any(|r| r.priority == Some(TO_POD_PRIORITY) && r.dst == Some(ip)) {
        return drift(format!("rule {TO_POD_PRIORITY} `to {}` is missing", ip));
    }
    if let Some(table) = net.table {
        let from = |r: &Rule| r.priority == Some(FROM_POD_PRIORITY) && r.src == Some(ip) && r.table == table;
        if !rules.iter().any(from) {
            return drift(format!("rule {FROM_POD_PRIORITY} `from {} lookup {table}` is missing", ip));
        }
    }
    Ok(())
}

/// The single-address destinations (/32, /128) that main routes through link `index`.
async fn routed_via(handle: &Handle, index: u32) -> Result<Vec<IpAddr>, NetError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let mut out = Vec::new();
    let filters = [
        RouteMessageBuilder::<Ipv4Addr>::new().table_id(MAIN_TABLE).build(),
        RouteMessageBuilder::<Ipv6Addr>::new().table_id(MAIN_TABLE).build(),
    ];
    for filter in filters {
        let mut routes = handle.route().get(filter).execute();
        while let Some(r) = routes.try_next().await.map_err(call("listing routes"))? {
            let oif = r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
                _ => None,
            });
            // A dump may hold other tables: IPv6's `local` one has the host end's own address.
            let main = r.header.table == MAIN_TABLE as u8;
            if let (true, true, Some(d)) = (oif, main, dst) {
                if r.header.destination_prefix_length == host_len(d) {
                    out.push(d);
                }
            }
        }
    }
    Ok(out)
}

/// A route [`has_route`] looks for in main.
#[derive(Clone, Copy)]
enum Route {
    /// The host route to this address.
    To(IpAddr),
    /// The default route of this gateway's family, via it.
    Default { via: IpAddr },
}

/// Whether main has `route` through link `index`.
async fn has_route(handle: &Handle, route: Route, index: u32) -> Result<bool, NetError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let filter = match route {
        Route::To(IpAddr::V4(_)) | Route::Default { via: IpAddr::V4(_) } => {
            RouteMessageBuilder::<Ipv4Addr>::new().table_id(MAIN_TABLE).build()
        }
        _ => RouteMessageBuilder::<Ipv6Addr>::new().table_id(MAIN_TABLE).build(),
    };
    let mut routes = handle.route().get(filter).execute();
    while let Some(r) = routes.try_next().await.map_err(call("listing routes"))? {
        let attr_ip = |want: fn(&RouteAttribute) -> Option<&RouteAddress>| {
            r.attributes.iter().find_map(want).and_then(|a| match a {
                RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
                RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
                _ => None,
            })
        };
        let oif = r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
        let main = r.header.table == MAIN_TABLE as u8;
        let r_dst = attr_ip(|a| if let RouteAttribute::Destination(d) = a { Some(d) } else { None });
        let r_gw = attr_ip(|a| if let RouteAttribute::Gateway(g) = a { Some(g) } else { None });
        let found = match route {
            Route::To(d) => r.header.destination_prefix_length == host_len(d) && r_dst == Some(d),
            Route::Default { via } => r.header.destination_prefix_length == 0 && r_gw == Some(via),
        };
        if oif && main && found {
            return Ok(true);
        }
    }
    Ok(false)
}
