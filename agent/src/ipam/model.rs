//! What the datastore holds: ENIs, their CIDRs (secondary /32s and /28 prefixes), addresses and
//! the allocations keyed like upstream's (network name, container id, interface name).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Nanoseconds since the Unix epoch: the checkpoint's timestamp unit, and the datastore's clock.
pub type UnixNanos = u64;

/// Now, as the datastore's clock (Unix nanoseconds).
pub fn now() -> UnixNanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// An IPv4 CIDR, /0 to /32, written as its network address (no host bits), the agent's one
/// CIDR type: pod address ranges (a /32 secondary address or a /28 delegated prefix), subnets,
/// VPC blocks and SNAT exclusions alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    /// `addr/prefix_len`, if `prefix_len` is at most 32 and `addr` has no host bits.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        let c = Self { addr, prefix_len };
        (prefix_len <= 32 && c.contains(addr) && u32::from(addr) & !c.mask() == 0).then_some(c)
    }

    fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len.min(32)))
        }
    }

    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, prefix_len: 32 }
    }

    /// A /28; `addr` must be its network address (16-aligned).
    pub fn prefix28(addr: Ipv4Addr) -> Option<Self> {
        (u32::from(addr) % 16 == 0).then_some(Self { addr, prefix_len: 28 })
    }

    pub fn is_prefix(&self) -> bool {
        self.prefix_len < 32
    }

    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix_len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Every address of the CIDR, lowest first (all 16 of a /28 are usable: the whole prefix is
    /// routed to the ENI).
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.addr);
        (0..self.size()).map(move |i| Ipv4Addr::from(base + i))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a string is not a [`Cidr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected an IPv4 CIDR such as 10.0.0.0/16")]
    Syntax,
    #[error("expected an IPv6 CIDR such as 2600:1f14:abc:de01::/64")]
    Syntax6,
    #[error("the address has host bits set: a CIDR starts at its network address")]
    HostBits,
}

/// `a.b.c.d/len`, or a bare address as a /32.
impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.trim().split_once('/').unwrap_or((s.trim(), "32"));
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| CidrError::Syntax)?;
        let len: u8 = len.trim().parse().ok().filter(|l| *l <= 32).ok_or(CidrError::Syntax)?;
        Self::new(addr, len).ok_or(CidrError::HostBits)
    }
}

/// An IPv6 CIDR, /0 to /128, written as its network address: IPv6 mode's /80 on the primary
/// ENI, a subnet's /64, the VPC's IPv6 blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr6 {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Cidr6 {
    /// `addr/prefix_len`, if `prefix_len` is at most 128 and `addr` has no host bits.
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Option<Self> {
        let c = Self { addr, prefix_len };
        (prefix_len <= 128 && u128::from(addr) & !c.mask() == 0).then_some(c)
    }

    fn mask(&self) -> u128 {
        match self.prefix_len {
            0 => 0,
            len => u128::MAX << (128 - u32::from(len.min(128))),
        }
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr)
    }

    /// The address `offset` places above the network address, if it is inside the CIDR.
    pub fn nth(&self, offset: u128) -> Option<Ipv6Addr> {
        let ip = Ipv6Addr::from(u128::from(self.addr).checked_add(offset)?);
        self.contains(ip).then_some(ip)
    }
}

impl fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `addr/len`, or a bare address as a /128.
impl FromStr for Cidr6 {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.trim().split_once('/').unwrap_or((s.trim(), "128"));
        let addr: Ipv6Addr = addr.trim().parse().map_err(|_| CidrError::Syntax6)?;
        let len: u8 = len.trim().parse().ok().filter(|l| *l <= 128).ok_or(CidrError::Syntax6)?;
        Self::new(addr, len).ok_or(CidrError::HostBits)
    }
}

/// Upstream's IPAM key: one allocation per (network, container, interface).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocKey {
    pub network_name: String,
    pub container_id: String,
    pub if_name: String,
}

/// The pod an allocation belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// What an ENI is, as far as handing out addresses is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EniFlags {
    /// The instance's primary ENI (device 0).
    pub primary: bool,
    /// InterfaceType `trunk` (security groups for pods): owned by the VPC Resource Controller.
    pub trunk: bool,
    /// InterfaceType `efa`.
    pub efa: bool,
    /// InterfaceType `efa-only`.
    pub efa_only: bool,
    /// Tagged `node.k8s.amazonaws.com/no_manage=true`.
    pub no_manage: bool,
    /// Its subnet is excluded from pod addresses (tag `kubernetes.io/role/cni=0`).
    pub excluded_subnet: bool,
}

/// Why an ENI never gets or hands out pod addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    Trunk,
    Efa,
    EfaOnly,
    NoManage,
    ExcludedSubnet,
    PrimaryUnderCustomNetworking,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trunk => "trunk ENI (security groups for pods)",
            Self::Efa => "EFA ENI",
            Self::EfaOnly => "EFA-only ENI",
            Self::NoManage => "ENI tagged node.k8s.amazonaws.com/no_manage=true",
            Self::ExcludedSubnet => "ENI in a subnet excluded from pod addresses",
            Self::PrimaryUnderCustomNetworking => "primary ENI under custom networking",
        })
    }
}

/// The one exclusion rule, used by every path that could put an address on an ENI, hand one out,
/// import one, free one or change an ENI's security groups.
pub fn exclusion(flags: &EniFlags, custom_networking: bool) -> Option<Exclusion> {
    if flags.trunk {
        Some(Exclusion::Trunk)
    } else if flags.efa_only {
        Some(Exclusion::EfaOnly)
    } else if flags.efa {
        Some(Exclusion::Efa)
    } else if flags.no_manage {
        Some(Exclusion::NoManage)
    } else if flags.excluded_subnet {
        Some(Exclusion::ExcludedSubnet)
    } else if flags.primary && custom_networking {
        Some(Exclusion::PrimaryUnderCustomNetworking)
    } else {
        None
    }
}

/// An ENI as the control plane describes it to the datastore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniSpec {
    pub id: String,
    pub device_number: u32,
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub flags: EniFlags,
}

/// One allocation, as held and checkpointed: an IPv4 address, or in IPv6 mode an IPv6 one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation<A = Ipv4Addr> {
    pub key: AllocKey,
    pub ip: A,
    pub pod: PodRef,
    pub allocated_at: UnixNanos,
}

impl<A: Into<IpAddr>> Allocation<A> {
    /// The same allocation with its address as either family.
    pub fn widen(self) -> Allocation<IpAddr> {
        Allocation { key: self.key, ip: self.ip.into(), pod: self.pod, allocated_at: self.allocated_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_contain() {
        let p: Cidr = "10.0.1.16/28".parse().unwrap();
        assert!(p.is_prefix() && p.size() == 16);
        assert!(p.contains("10.0.1.31".parse().unwrap()) && !p.contains("10.0.1.32".parse().unwrap()));
        assert_eq!(p.addresses().count(), 16);
        assert_eq!("10.0.1.17/28".parse::<Cidr>(), Err(CidrError::HostBits));
        assert_eq!("10.0.1.0/33".parse::<Cidr>(), Err(CidrError::Syntax));
        assert_eq!("10.0.1.0/24".parse::<Cidr>().map(|c| c.size()), Ok(256));
        assert_eq!("0.0.0.0/0".parse::<Cidr>().map(|c| c.contains("8.8.8.8".parse().unwrap())), Ok(true));
        assert_eq!("10.0.1.5".parse::<Cidr>().unwrap(), Cidr::host("10.0.1.5".parse().unwrap()));
    }

    #[test]
    fn ipv6_cidrs_parse_and_contain() {
        let p: Cidr6 = "2600:1f14:abc:de01:5::/80".parse().unwrap();
        assert!(p.contains("2600:1f14:abc:de01:5:0:ffff:1".parse().unwrap()));
        assert!(!p.contains("2600:1f14:abc:de01:6::".parse().unwrap()));
        assert_eq!(p.nth(1), Some("2600:1f14:abc:de01:5::1".parse().unwrap()));
        assert_eq!(p.nth(1 << 48), None, "past the /80");
        assert_eq!(p.to_string(), "2600:1f14:abc:de01:5::/80");
        assert_eq!("2600:1f14:abc:de01:5::1/80".parse::<Cidr6>(), Err(CidrError::HostBits));
        assert_eq!("2600::/129".parse::<Cidr6>(), Err(CidrError::Syntax6));
        assert_eq!("10.0.0.0/16".parse::<Cidr6>(), Err(CidrError::Syntax6));
        assert_eq!("::/0".parse::<Cidr6>().map(|c| c.contains("2001:db8::1".parse().unwrap())), Ok(true));
        assert_eq!("2001:db8::1".parse::<Cidr6>().map(|c| c.prefix_len), Ok(128));
    }

    #[test]
    fn exclusion_covers_every_special_eni() {
        let f = |flags: EniFlags, cn| exclusion(&flags, cn);
        assert_eq!(f(EniFlags { trunk: true, ..Default::default() }, false), Some(Exclusion::Trunk));
        assert_eq!(f(EniFlags { efa: true, ..Default::default() }, false), Some(Exclusion::Efa));
        assert_eq!(f(EniFlags { efa_only: true, ..Default::default() }, false), Some(Exclusion::EfaOnly));
        assert_eq!(f(EniFlags { no_manage: true, ..Default::default() }, false), Some(Exclusion::NoManage));
        assert_eq!(
            f(EniFlags { excluded_subnet: true, ..Default::default() }, false),
            Some(Exclusion::ExcludedSubnet)
        );
        assert_eq!(f(EniFlags { primary: true, ..Default::default() }, false), None);
        assert_eq!(
            f(EniFlags { primary: true, ..Default::default() }, true),
            Some(Exclusion::PrimaryUnderCustomNetworking)
        );
        assert_eq!(f(EniFlags::default(), true), None);
    }
}
