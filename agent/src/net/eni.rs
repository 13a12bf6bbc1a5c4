//! Host networking for ENIs, through rtnetlink (upstream's `SetupENINetwork`,
//! pkg/networkutils/network.go upstream): the link with the ENI's MAC gets the MTU, is brought up and
//! carries the ENI's primary address; the ENI's route table (device number + 1) gets a link route
//! to the subnet gateway and a default route via it; the main table loses the subnet route the
//! address added; and `from <ENI primary IP> lookup <table>` sits at priority 32765 — except on
//! the trunk, which gets its link and table but no rule (its addresses are not the node's).
//! Everything is idempotent: a restarted agent runs it again and changes nothing.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{LinkAttribute, LinkFlags},
        route::{RouteProtocol, RouteScope},
        rule::{RuleAction, RuleAttribute},
    },
    Handle, LinkUnspec, RouteMessageBuilder,
};

use super::netlink::{
    call, delete_rules, delete_rules6, gateway_routes, is_exists, is_missing, mac_bytes, rules, rules6,
    set_sysctl, NetError, Rule,
};
use crate::ipam::model::Cidr;

/// Priority of the `from <ENI primary IP>` rules (upstream's).
pub const FROM_ENI_PRIORITY: u32 = 32765;

/// What an ENI needs on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniLink {
    pub mac: String,
    pub device_number: u32,
    pub primary_ip: Ipv4Addr,
    pub subnet: Cidr,
    pub trunk: bool,
}

impl EniLink {
    pub fn table(&self) -> u32 {
        self.device_number + 1
    }
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.addr) + 1)
    }
}

/// A netlink connection in the agent's network namespace.
#[derive(Clone)]
pub struct HostNet {
    handle: Handle,
}

impl HostNet {
    /// Opens the connection; its driver runs on the current tokio runtime.
    pub fn open() -> Result<Self, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The netlink handle, for the other host-network modules.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The index and name of the link whose MAC is `mac`.
    pub async fn link_by_mac(&self, mac: &str) -> Result<Option<(u32, String)>, NetError> {
        let want = mac_bytes(mac).ok_or_else(|| NetError::NoLink(mac.to_owned()))?;
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(call("listing links"))? {
            let attrs = &link.attributes;
            if attrs.iter().any(|a| matches!(a, LinkAttribute::Address(m) if *m == want)) {
                let name = attrs
                    .iter()
                    .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
                    .unwrap_or_default();
                return Ok(Some((link.header.index, name)));
            }
        }
        Ok(None)
    }

    /// Every link's name by its MAC (`0a:1b:...`, lowercase), in one dump.
    pub async fn links_by_mac(&self) -> Result<std::collections::BTreeMap<String, String>, NetError> {
        let mut out = std::collections::BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(call("listing links"))? {
            let mut mac = None;
            let mut name = None;
            for a in &link.attributes {
                match a {
                    LinkAttribute::Address(m) if m.len() == 6 => {
                        mac = Some(m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
                    }
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    _ => {}
                }
            }
            if let (Some(mac), Some(name)) = (mac, name) {
                out.entry(mac).or_insert(name);
            }
        }
        Ok(out)
    }

    /// Whether the link with this MAC is up.
    pub async fn is_up(&self, index: u32) -> Result<bool, NetError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links.try_next().await.map_err(call(format!("link {index}")))?;
        Ok(link.is_some_and(|l| l.header.flags.contains(LinkFlags::Up)))
    }

    /// Turns on IPv4 forwarding (pods' traffic is routed through the host); true if it was off.
    pub fn enable_ipv4_forwarding(&self) -> Result<bool, NetError> {
        set_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    }

    /// IPv6 mode, as upstream sets the host up: IPv6 on, forwarding on, and the primary
    /// interface `primary_if` still taking router advertisements (`accept_ra=2`: forwarding
    /// would otherwise make the kernel ignore them, and the node's default route comes from
    /// them). accept_ra first, so that no advertisement is missed in between.
    pub fn enable_ipv6(&self, primary_if: &str) -> Result<(), NetError> {
        set_sysctl(&format!("/proc/sys/net/ipv6/conf/{primary_if}/accept_ra"), "2")?;
        set_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "0")?;
        set_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        Ok(())
    }

    /// net.ipv4.tcp_early_demux=0 (upstream's DISABLE_TCP_EARLY_DEMUX: the kubelet's probes
    /// reach branch pods, whose replies come back on another interface); true if it was on.
    pub fn disable_tcp_early_demux(&self) -> Result<bool, NetError> {
        set_sysctl("/proc/sys/net/ipv4/tcp_early_demux", "0")
    }

    /// Moves `lookup local` from priority 0 to `to` (upstream does it for security groups for
    /// pods in strict mode, so that the VLAN rules at priority 10 come first and a branch pod's
    /// traffic to the node's own addresses also leaves through its branch ENI), for the pods'
    /// family (`ipv6`: IPv6 mode). Idempotent.
    pub async fn move_local_rule(&self, to: u32, ipv6: bool) -> Result<(), NetError> {
        const LOCAL_TABLE: u32 = 255;
        let rules = if ipv6 { rules6(&self.handle).await? } else { rules(&self.handle).await? };
        let is_local = |r: &Rule, prio: u32| {
            r.table == LOCAL_TABLE
                && r.priority.unwrap_or(0) == prio
                && r.src.is_none()
                && r.dst.is_none()
                && r.src6.is_none()
                && r.dst6.is_none()
                && r.iif.is_none()
        };
        if !rules.iter().any(|r| is_local(r, to)) {
            let add = if ipv6 {
                self.handle
                    .rule()
                    .add()
                    .v6()
                    .table_id(LOCAL_TABLE)
                    .priority(to)
                    .action(RuleAction::ToTable)
                    .execute()
                    .await
            } else {
                self.handle
                    .rule()
                    .add()
                    .v4()
                    .table_id(LOCAL_TABLE)
                    .priority(to)
                    .action(RuleAction::ToTable)
                    .execute()
                    .await
            };
            match add {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(call(format!("rule {to}: lookup local"))(e)),
            }
        }
        if rules.iter().any(|r| is_local(r, 0)) {
            if ipv6 {
                delete_rules6(&self.handle, |r| is_local(r, 0)).await?;
            } else {
                delete_rules(&self.handle, |r| is_local(r, 0)).await?;
            }
        }
        Ok(())
    }

    /// Sets the primary ENI's MTU (the rest of its configuration is the instance's own).
    pub async fn set_mtu(&self, mac: &str, mtu: u32) -> Result<u32, NetError> {
        let (index, name) = self.link_by_mac(mac).await?.ok_or_else(|| NetError::NoLink(mac.into()))?;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle.link().set(msg).execute().await.map_err(call(format!("MTU of {name}")))?;
        Ok(index)
    }

    /// Sets up a secondary ENI's link, table and rule (see the module doc). Returns the ifindex.
    pub async fn setup_eni(&self, eni: &EniLink, mtu: u32) -> Result<u32, NetError> {
        let (index, name) =
            self.link_by_mac(&eni.mac).await?.ok_or_else(|| NetError::NoLink(eni.mac.clone()))?;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle.link().set(msg).execute().await.map_err(call(format!("bringing up {name}")))?;
        self.set_address(index, &name, eni).await?;
        let table = eni.table();
        let gw = eni.gateway();
        gateway_routes(&self.handle, table, index, gw.into()).await?;
        // The kernel's subnet route in main for this link: traffic to the subnet must not
        // prefer a secondary ENI.
        let subnet_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(254)
            .output_interface(index)
            .destination_prefix(eni.subnet.addr, eni.subnet.prefix_len)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Kernel) // the kernel added it; a delete must say so to match
            .build();
        match self.handle.route().del(subnet_route).execute().await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(call(format!("subnet route of {name}"))(e)),
        }
        if eni.trunk {
            self.remove_rule(eni.primary_ip).await?;
        } else {
            self.ensure_rule(eni.primary_ip, table).await?;
        }
        Ok(index)
    }

    /// Makes the ENI's primary address the link's only global IPv4 address.
    async fn set_address(&self, index: u32, name: &str, eni: &EniLink) -> Result<(), NetError> {
        let want = IpAddr::V4(eni.primary_ip);
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        let mut present = false;
        let mut stale = Vec::new();
        while let Some(a) = addrs.try_next().await.map_err(call(format!("addresses of {name}")))? {
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip @ IpAddr::V4(_)) => Some(*ip),
                _ => None,
            });
            match addr {
                Some(ip) if ip == want && a.header.prefix_len == eni.subnet.prefix_len => present = true,
                Some(_) if a.header.scope == rtnetlink::packet_route::address::AddressScope::Universe => {
                    stale.push(a)
                }
                _ => {}
            }
        }
        for a in stale {
            self.handle.address().del(a).execute().await.map_err(call(format!("old address on {name}")))?;
        }
        if !present {
            match self.handle.address().add(index, want, eni.subnet.prefix_len).execute().await {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(call(format!("address {want} on {name}"))(e)),
            }
        }
        Ok(())
    }

    /// The `from <ip>` rules at [`FROM_ENI_PRIORITY`], as (source, table).
    pub async fn from_rules(&self) -> Result<Vec<(Ipv4Addr, u32)>, NetError> {
        let mut rules = self.handle.rule().get(rtnetlink::IpVersion::V4).execute();
        let mut out = Vec::new();
        while let Some(r) = rules.try_next().await.map_err(call("listing rules"))? {
            let prio = r.attributes.iter().find_map(|a| {
                if let RuleAttribute::Priority(p) = a {
                    Some(*p)
                } else {
                    None
                }
            });
            if prio != Some(FROM_ENI_PRIORITY) || r.header.src_len != 32 {
                continue;
            }
            let src = r.attributes.iter().find_map(|a| match a {
                RuleAttribute::Source(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let table = r
                .attributes
                .iter()
                .find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None })
                .unwrap_or(u32::from(r.header.table));
            if let Some(src) = src {
                out.push((src, table));
            }
        }
        Ok(out)
    }

    async fn ensure_rule(&self, ip: Ipv4Addr, table: u32) -> Result<(), NetError> {
        let existing = self.from_rules().await?;
        if existing.contains(&(ip, table)) {
            return Ok(());
        }
        if existing.iter().any(|(src, _)| *src == ip) {
            self.remove_rule(ip).await?;
        }
        self.handle
            .rule()
            .add()
            .v4()
            .source_prefix(ip, 32)
            .table_id(table)
            .priority(FROM_ENI_PRIORITY)
            .action(RuleAction::ToTable)
            .execute()
            .await
            .map_err(call(format!("rule from {ip} lookup {table}")))
    }

    /// Removes `from <ip>` at [`FROM_ENI_PRIORITY`] (an ENI that is going away, or a trunk).
    pub async fn remove_rule(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        let mut rules = self.handle.rule().get(rtnetlink::IpVersion::V4).execute();
        let mut doomed = Vec::new();
        while let Some(r) = rules.try_next().await.map_err(call("listing rules"))? {
            let prio = r.attributes.iter().any(|a| matches!(a, RuleAttribute::Priority(FROM_ENI_PRIORITY)));
            let src =
                r.attributes.iter().any(|a| matches!(a, RuleAttribute::Source(IpAddr::V4(s)) if *s == ip));
            if prio && src {
                doomed.push(r);
            }
        }
        for r in doomed {
            match self.handle.rule().del(r).execute().await {
                Ok(()) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(call(format!("rule from {ip}"))(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_gateways_and_macs() {
        let eni = EniLink {
            mac: "02:00:00:00:00:01".into(),
            device_number: 2,
            primary_ip: "100.64.0.7".parse().unwrap(),
            subnet: Cidr { addr: "100.64.0.0".parse().unwrap(), prefix_len: 19 },
            trunk: false,
        };
        assert_eq!((eni.table(), eni.gateway()), (3, "100.64.0.1".parse().unwrap()));
        assert_eq!(mac_bytes("02:00:00:00:00:0a"), Some(vec![2, 0, 0, 0, 0, 10]));
        assert_eq!(mac_bytes("02:00:00"), None);
    }
}
