//! The netlink helpers the host-network modules share: the error type, what an errno means,
//! links by name, gateway routes and rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        link::LinkMessage,
        route::RouteScope,
        rule::{RuleAttribute, RuleMessage},
    },
    Handle, RouteMessageBuilder,
};

use crate::ipam::model::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Socket(std::io::Error),
    #[error("netlink {what}: {source}")]
    Call { what: String, source: rtnetlink::Error },
    #[error("no link with MAC {0}")]
    NoLink(String),
    #[error("{path}: {source}")]
    Sysctl { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Writes `value` to the sysctl at `path` unless it holds it already; true if it changed.
/// `/proc/sys/net` is the calling thread's network namespace.
pub fn set_sysctl(path: &str, value: &str) -> Result<bool, NetError> {
    let err = |source| NetError::Sysctl { path: path.to_owned(), source };
    if std::fs::read_to_string(path).map_err(err)?.trim() == value {
        return Ok(false);
    }
    std::fs::write(path, value).map_err(err)?;
    Ok(true)
}

pub fn call(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Call { what, source }
}

pub fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

pub fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if [-libc::ESRCH, -libc::ENOENT].contains(&m.raw_code()))
}

pub fn mac_bytes(mac: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).ok()).collect::<Option<_>>()?;
    (bytes.len() == 6).then_some(bytes)
}

fn is_no_device(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

/// The link called `name`, if there is one.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(e) if is_missing(&e) || is_no_device(&e) => Ok(None),
        Err(e) => Err(call(format!("link {name}"))(e)),
    }
}

/// Deletes the link called `name` if it exists (its veth peer goes with it).
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetError> {
    let Some(link) = link_by_name(handle, name).await? else { return Ok(false) };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) || is_no_device(&e) => Ok(false),
        Err(e) => Err(call(format!("deleting {name}"))(e)),
    }
}

/// Table `table`'s way out through link `index`: a link route to the gateway and the default
/// route via it (an ENI's table, or a branch pod's VLAN table).
pub async fn gateway_routes(handle: &Handle, table: u32, index: u32, gw: IpAddr) -> Result<(), NetError> {
    let bad = |e: String| NetError::Invalid(format!("routes via {gw}: {e}"));
    let host_len = if gw.is_ipv4() { 32 } else { 128 };
    let link_route = RouteMessageBuilder::<IpAddr>::new()
        .table_id(table)
        .output_interface(index)
        .destination_prefix(gw, host_len)
        .map_err(|e| bad(format!("{e:?}")))?
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(link_route)
        .replace()
        .execute()
        .await
        .map_err(call(format!("route to {gw} in table {table}")))?;
    let any =
        if gw.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    let default = RouteMessageBuilder::<IpAddr>::new()
        .table_id(table)
        .output_interface(index)
        .destination_prefix(any, 0)
        .and_then(|r| r.gateway(gw))
        .map_err(|e| bad(format!("{e:?}")))?
        .build();
    handle
        .route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(call(format!("default route in table {table}")))
}

/// A rule, as much of it as pod plumbing looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub priority: Option<u32>,
    /// A /32 source or destination.
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    /// A /128 source or destination (IPv6 rules).
    pub src6: Option<Ipv6Addr>,
    pub dst6: Option<Ipv6Addr>,
    pub iif: Option<String>,
    pub table: u32,
    /// The destination, whatever its length.
    pub dst_cidr: Option<Cidr>,
    pub fwmark: Option<u32>,
}

impl Rule {
    fn of(m: &RuleMessage) -> Self {
        let mut r = Self {
            priority: None,
            src: None,
            dst: None,
            src6: None,
            dst6: None,
            iif: None,
            table: u32::from(m.header.table),
            dst_cidr: None,
            fwmark: None,
        };
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => r.priority = Some(*p),
                RuleAttribute::Source(IpAddr::V4(ip)) if m.header.src_len == 32 => r.src = Some(*ip),
                RuleAttribute::Destination(IpAddr::V4(ip)) => {
                    r.dst_cidr = Cidr::new(*ip, m.header.dst_len);
                    if m.header.dst_len == 32 {
                        r.dst = Some(*ip);
                    }
                }
                RuleAttribute::Source(IpAddr::V6(ip)) if m.header.src_len == 128 => r.src6 = Some(*ip),
                RuleAttribute::Destination(IpAddr::V6(ip)) if m.header.dst_len == 128 => r.dst6 = Some(*ip),
                RuleAttribute::FwMark(mark) => r.fwmark = Some(*mark),
                RuleAttribute::Iifname(n) => r.iif = Some(n.clone()),
                RuleAttribute::Table(t) => r.table = *t,
                _ => {}
            }
        }
        r
    }
}

/// Every IPv4 rule.
pub async fn rules(handle: &Handle) -> Result<Vec<Rule>, NetError> {
    rules_of(handle, rtnetlink::IpVersion::V4).await
}

/// Every IPv6 rule.
pub async fn rules6(handle: &Handle) -> Result<Vec<Rule>, NetError> {
    rules_of(handle, rtnetlink::IpVersion::V6).await
}

async fn rules_of(handle: &Handle, version: rtnetlink::IpVersion) -> Result<Vec<Rule>, NetError> {
    let mut out = Vec::new();
    let mut dump = handle.rule().get(version).execute();
    while let Some(m) = dump.try_next().await.map_err(call("listing rules"))? {
        out.push(Rule::of(&m));
    }
    Ok(out)
}

/// Deletes every IPv4 rule `doomed` selects; returns how many went.
pub async fn delete_rules(handle: &Handle, doomed: impl Fn(&Rule) -> bool) -> Result<usize, NetError> {
    delete_rules_of(handle, rtnetlink::IpVersion::V4, doomed).await
}

/// Deletes every IPv6 rule `doomed` selects; returns how many went.
pub async fn delete_rules6(handle: &Handle, doomed: impl Fn(&Rule) -> bool) -> Result<usize, NetError> {
    delete_rules_of(handle, rtnetlink::IpVersion::V6, doomed).await
}

async fn delete_rules_of(
    handle: &Handle,
    version: rtnetlink::IpVersion,
    doomed: impl Fn(&Rule) -> bool,
) -> Result<usize, NetError> {
    let mut matching = Vec::new();
    let mut dump = handle.rule().get(version).execute();
    while let Some(m) = dump.try_next().await.map_err(call("listing rules"))? {
        if doomed(&Rule::of(&m)) {
            matching.push(m);
        }
    }
    let mut deleted = 0;
    for m in matching {
        match handle.rule().del(m).execute().await {
            Ok(()) => deleted += 1,
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(call("deleting a rule")(e)),
        }
    }
    Ok(deleted)
}
