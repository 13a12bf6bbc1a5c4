//! The host-network changes the node layer makes, as one seam: [`HostNet`] makes them through
//! netlink and nftables; the node layer's unit tests record them in memory.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::{
    eni::{EniLink, HostNet},
    netlink::NetError,
    pod,
    snat::{self, SnatError},
};

#[async_trait::async_trait]
pub trait Host: Send + Sync {
    /// Sets the MTU of the link with this MAC; returns its index.
    async fn set_mtu(&self, mac: &str, mtu: u32) -> Result<u32, NetError>;
    /// Turns on net.ipv4.ip_forward; true when it was off.
    fn enable_ipv4_forwarding(&self) -> Result<bool, NetError>;
    /// IPv6 mode's host settings on the primary interface `primary_if` (see
    /// [`HostNet::enable_ipv6`]).
    fn enable_ipv6(&self, primary_if: &str) -> Result<(), NetError>;
    /// net.ipv4.tcp_early_demux=0; true if it was on.
    fn disable_tcp_early_demux(&self) -> Result<bool, NetError>;
    /// `lookup local` from priority 0 to `to`, for IPv4 or (`ipv6`) IPv6.
    async fn move_local_rule(&self, to: u32, ipv6: bool) -> Result<(), NetError>;
    /// The index and name of the link with this MAC.
    async fn link_by_mac(&self, mac: &str) -> Result<Option<(u32, String)>, NetError>;
    /// Every link's name by MAC.
    async fn links_by_mac(&self) -> Result<BTreeMap<String, String>, NetError>;
    /// A secondary ENI's link, table and rule; returns the link's index.
    async fn setup_eni(&self, eni: &EniLink, mtu: u32) -> Result<u32, NetError>;
    /// Removes `from <ip>` (an ENI going away).
    async fn remove_rule(&self, ip: Ipv4Addr) -> Result<(), NetError>;
    /// The node's nftables table and policy rules: SNAT, NodePort marks, external services.
    async fn apply_snat(&self, plan: &snat::Plan) -> Result<(), SnatError>;
    /// The host side of a pod's address whose pod is gone (rules and route).
    async fn teardown_pod(&self, ip: std::net::IpAddr) -> Result<(), NetError>;
}

#[async_trait::async_trait]
impl Host for HostNet {
    async fn set_mtu(&self, mac: &str, mtu: u32) -> Result<u32, NetError> {
        HostNet::set_mtu(self, mac, mtu).await
    }
    fn enable_ipv4_forwarding(&self) -> Result<bool, NetError> {
        HostNet::enable_ipv4_forwarding(self)
    }
    fn enable_ipv6(&self, primary_if: &str) -> Result<(), NetError> {
        HostNet::enable_ipv6(self, primary_if)
    }
    fn disable_tcp_early_demux(&self) -> Result<bool, NetError> {
        HostNet::disable_tcp_early_demux(self)
    }
    async fn move_local_rule(&self, to: u32, ipv6: bool) -> Result<(), NetError> {
        HostNet::move_local_rule(self, to, ipv6).await
    }
    async fn link_by_mac(&self, mac: &str) -> Result<Option<(u32, String)>, NetError> {
        HostNet::link_by_mac(self, mac).await
    }
    async fn links_by_mac(&self) -> Result<BTreeMap<String, String>, NetError> {
        HostNet::links_by_mac(self).await
    }
    async fn setup_eni(&self, eni: &EniLink, mtu: u32) -> Result<u32, NetError> {
        HostNet::setup_eni(self, eni, mtu).await
    }
    async fn remove_rule(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        HostNet::remove_rule(self, ip).await
    }
    async fn apply_snat(&self, plan: &snat::Plan) -> Result<(), SnatError> {
        snat::apply(self.handle(), plan).await
    }
    async fn teardown_pod(&self, ip: std::net::IpAddr) -> Result<(), NetError> {
        pod::teardown(self.handle(), ip, None).await
    }
}
