//! IPv6 in the simulated EC2: a subnet's /64 with the addresses and /80 prefixes taken from it,
//! and AssignIpv6Addresses / UnassignIpv6Addresses on an ENI. EC2 picks IPv6 addresses and
//! prefixes anywhere in the /64; the simulator takes the lowest free ones, so runs repeat:
//! addresses from `::4` upward (EC2 reserves the first four and the last address of a subnet's
//! CIDR, and the VPC router answers at `::1`), prefixes from the second /80 upward.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
    time::Instant,
};

use super::ec2::{invalid, ApiError, Ec2};

/// Addresses in one /80 prefix.
const PREFIX_SIZE: u128 = 1 << 48;
/// /80 prefixes in a /64.
const PREFIXES_PER_SUBNET: u128 = 1 << 16;

/// A subnet's IPv6 /64 and what is taken from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet6 {
    /// The /64's network address.
    pub cidr: Ipv6Addr,
    addresses: BTreeSet<u128>,
    prefixes: BTreeSet<u128>,
}

/// What AssignIpv6Addresses asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assign6Request {
    Count(u32),
    Addresses(Vec<Ipv6Addr>),
    PrefixCount(u32),
    /// Network addresses of /80s.
    Prefixes(Vec<Ipv6Addr>),
}

impl Assign6Request {
    pub fn is_prefix(&self) -> bool {
        matches!(self, Self::PrefixCount(_) | Self::Prefixes(_))
    }

    fn len(&self) -> u32 {
        match self {
            Self::Count(n) | Self::PrefixCount(n) => *n,
            Self::Addresses(v) | Self::Prefixes(v) => v.len() as u32,
        }
    }
}

impl Subnet6 {
    pub fn new(cidr: Ipv6Addr) -> Self {
        Self { cidr, addresses: BTreeSet::new(), prefixes: BTreeSet::new() }
    }

    fn range(&self) -> (u128, u128) {
        let lo = u128::from(self.cidr);
        (lo, lo + (1 << 64) - 1)
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let (lo, hi) = self.range();
        (lo..=hi).contains(&u128::from(ip))
    }

    fn reserved(&self, a: u128) -> bool {
        let (lo, hi) = self.range();
        a < lo + 4 || a == hi
    }

    fn in_prefix(&self, a: u128) -> bool {
        self.prefixes.contains(&(a & !(PREFIX_SIZE - 1)))
    }

    fn address_free(&self, a: u128) -> bool {
        self.contains(Ipv6Addr::from(a))
            && !self.reserved(a)
            && !self.addresses.contains(&a)
            && !self.in_prefix(a)
    }

    fn prefix_free(&self, p: u128) -> bool {
        let (lo, hi) = self.range();
        p.is_multiple_of(PREFIX_SIZE)
            && p > lo
            && p + PREFIX_SIZE - 1 < hi
            && !self.prefixes.contains(&p)
            && self.addresses.range(p..p + PREFIX_SIZE).next().is_none()
    }

    /// The lowest `n` free addresses (a /64 does not run out).
    pub fn take_addresses(&mut self, n: u32) -> Vec<Ipv6Addr> {
        let (lo, hi) = self.range();
        let mut taken = Vec::new();
        let mut a = lo + 4;
        while taken.len() < n as usize && a < hi {
            if self.in_prefix(a) {
                a = (a | (PREFIX_SIZE - 1)) + 1;
                continue;
            }
            if self.addresses.insert(a) {
                taken.push(Ipv6Addr::from(a));
            }
            a += 1;
        }
        taken
    }

    /// The lowest free /80 with no address taken in it.
    fn take_prefix(&mut self) -> Option<Ipv6Addr> {
        let (lo, _) = self.range();
        let p = (1..PREFIXES_PER_SUBNET).map(|k| lo + k * PREFIX_SIZE).find(|p| self.prefix_free(*p))?;
        self.prefixes.insert(p);
        Some(Ipv6Addr::from(p))
    }

    pub fn release(&mut self, addresses: &[Ipv6Addr], prefixes: &[Ipv6Addr]) {
        for a in addresses {
            self.addresses.remove(&u128::from(*a));
        }
        for p in prefixes {
            self.prefixes.remove(&u128::from(*p));
        }
    }

    /// Takes what `req` asks for, all or nothing.
    fn take(&mut self, req: &Assign6Request, subnet_id: &str) -> Result<Vec<Ipv6Addr>, ApiError> {
        match req {
            Assign6Request::Count(n) => Ok(self.take_addresses(*n)),
            Assign6Request::PrefixCount(n) => {
                let mut taken = Vec::new();
                for _ in 0..*n {
                    match self.take_prefix() {
                        Some(p) => taken.push(p),
                        None => {
                            self.release(&[], &taken);
                            return Err(ApiError {
                                code: "InsufficientCidrBlocks",
                                message: format!(
                                    "The specified subnet {subnet_id} does not have enough free IPv6 cidr blocks to satisfy the request."
                                ),
                            });
                        }
                    }
                }
                Ok(taken)
            }
            Assign6Request::Addresses(ips) => {
                let taken = listed(ips, |a| self.address_free(a), "Address", "", subnet_id)?;
                self.addresses.extend(taken);
                Ok(ips.clone())
            }
            Assign6Request::Prefixes(ps) => {
                let taken = listed(ps, |p| self.prefix_free(p), "Prefix", "/80", subnet_id)?;
                self.prefixes.extend(taken);
                Ok(ps.clone())
            }
        }
    }
}

/// The distinct values of `items` (addresses or prefixes named in the request), if each is
/// `free` and none is named twice.
fn listed(
    items: &[Ipv6Addr],
    free: impl Fn(u128) -> bool,
    what: &str,
    suffix: &str,
    subnet_id: &str,
) -> Result<BTreeSet<u128>, ApiError> {
    if let Some(item) = items.iter().find(|i| !free(u128::from(**i))) {
        return Err(invalid(format!("{what} {item}{suffix} is not available in subnet {subnet_id}")));
    }
    let distinct: BTreeSet<u128> = items.iter().map(|i| u128::from(*i)).collect();
    if distinct.len() != items.len() {
        return Err(invalid(format!("The same IPv6 {} is given twice", what.to_lowercase())));
    }
    Ok(distinct)
}

/// EC2's refusal of IPv6 in a subnet without an IPv6 CIDR (its exact code for this case is not
/// confirmed; InvalidParameterValue is its usual answer to a value it cannot use).
pub fn no_ipv6(subnet_id: &str) -> ApiError {
    invalid(format!("The subnet {subnet_id} has no IPv6 CIDR block, so it cannot give IPv6 addresses."))
}

impl Ec2 {
    /// Gives `subnet_id` the IPv6 /64 `cidr`.
    pub fn set_subnet_ipv6(&mut self, subnet_id: &str, cidr: Ipv6Addr) -> Result<(), ApiError> {
        self.subnet(subnet_id)?;
        if let Some(s) = self.subnets.get_mut(subnet_id) {
            s.ipv6 = Some(Subnet6::new(cidr));
        }
        Ok(())
    }

    /// AssignIpv6Addresses: returns only the addresses (or /80 prefixes) it added. Addresses
    /// and prefixes count against the instance type's limit per interface, one each.
    pub fn assign_ipv6(&mut self, eni_id: &str, req: Assign6Request) -> Result<Vec<Ipv6Addr>, ApiError> {
        let eni = self.eni(eni_id)?.clone();
        let limit = self.address_limit(&eni)?;
        let used = (eni.ipv6_addresses.len() + eni.ipv6_prefixes.len()) as u64;
        if used + u64::from(req.len()) > u64::from(limit) {
            // EC2's exact code for IPv6 is not confirmed; this is its IPv4 answer.
            return Err(ApiError {
                code: "PrivateIpAddressLimitExceeded",
                message: format!(
                    "Number of IPv6 addresses and prefixes will exceed limit. (limit: {limit}, in use: {used})"
                ),
            });
        }
        let subnet = self.subnets.get_mut(&eni.subnet_id).and_then(|s| s.ipv6.as_mut());
        let added = subnet.ok_or_else(|| no_ipv6(&eni.subnet_id))?.take(&req, &eni.subnet_id)?;
        if let Some(e) = self.enis.get_mut(eni_id) {
            let now = Instant::now();
            e.assigned_at.extend(added.iter().map(|ip| (IpAddr::from(*ip), now)));
            if req.is_prefix() {
                e.ipv6_prefixes.extend(&added);
            } else {
                e.ipv6_addresses.extend(&added);
            }
        }
        Ok(added)
    }

    /// UnassignIpv6Addresses: every address and prefix named must be on the ENI.
    pub fn unassign_ipv6(
        &mut self,
        eni_id: &str,
        addresses: &[Ipv6Addr],
        prefixes: &[Ipv6Addr],
    ) -> Result<(), ApiError> {
        let eni = self.eni(eni_id)?.clone();
        if let Some(a) = addresses.iter().find(|a| !eni.ipv6_addresses.contains(a)) {
            return Err(invalid(format!("The IPv6 address {a} is not assigned to interface {eni_id}")));
        }
        if let Some(p) = prefixes.iter().find(|p| !eni.ipv6_prefixes.contains(p)) {
            return Err(invalid(format!("The IPv6 prefix {p}/80 is not assigned to interface {eni_id}")));
        }
        if let Some(v6) = self.subnets.get_mut(&eni.subnet_id).and_then(|s| s.ipv6.as_mut()) {
            v6.release(addresses, prefixes);
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.ipv6_addresses.retain(|a| !addresses.contains(a));
            e.ipv6_prefixes.retain(|p| !prefixes.contains(p));
            e.assigned_at.retain(|ip, _| match ip {
                IpAddr::V6(ip) => !addresses.contains(ip) && !prefixes.contains(ip),
                IpAddr::V4(_) => true,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Subnet6 {
        Subnet6::new("2600:1f14:abc:de01::".parse().unwrap())
    }

    #[test]
    fn addresses_skip_the_reserved_and_prefixes_skip_addresses() {
        let mut s = subnet();
        let a = s.take_addresses(2);
        assert_eq!(
            a,
            ["2600:1f14:abc:de01::4".parse::<Ipv6Addr>().unwrap(), "2600:1f14:abc:de01::5".parse().unwrap()]
        );
        let p = s.take(&Assign6Request::PrefixCount(1), "subnet-1").unwrap();
        assert_eq!(p, ["2600:1f14:abc:de01:1::".parse::<Ipv6Addr>().unwrap()]);
        // The first /80 holds addresses, so it cannot be delegated; the taken /80 holds no address.
        let first = Assign6Request::Prefixes(vec!["2600:1f14:abc:de01::".parse().unwrap()]);
        assert!(s.take(&first, "subnet-1").unwrap_err().message.contains("not available"));
        let inside = Assign6Request::Addresses(vec!["2600:1f14:abc:de01:1::9".parse().unwrap()]);
        assert!(s.take(&inside, "subnet-1").is_err());
        let reserved = Assign6Request::Addresses(vec!["2600:1f14:abc:de01::1".parse().unwrap()]);
        assert!(s.take(&reserved, "subnet-1").is_err());
        s.release(&a, &p);
        assert_eq!(s.take_addresses(1), a[..1]);
    }
}
