//! IPv6 mode's pool (ENABLE_IPv6, always with prefix delegation, as upstream): the one /80 on
//! the primary ENI, assigned once, from which every pod gets a /128. There is no warm pool to
//! keep: a /80 holds 2^48 addresses. Pure, like the datastore: the clock is a parameter.
//!
//! An address goes to the lowest offset in the /80 that is neither assigned nor cooling down
//! (offset 0, the /80's network address, is never handed out: in the /64's first /80 it is the
//! subnet-router anycast address). A released address cools down for IP_COOLDOWN_PERIOD, as in
//! IPv4, so a restarted pod's old address does not go to another pod at once.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::Ipv6Addr,
};

use super::model::{AllocKey, Allocation, Cidr6, PodRef, UnixNanos};

/// An IPv6 allocation.
pub type Allocation6 = Allocation<Ipv6Addr>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Pool6Error {
    #[error("no free address in {0}")]
    Full(Cidr6),
    #[error("address {ip} is allocated twice: to {first:?} and to {second:?}")]
    DuplicateAddress { ip: Ipv6Addr, first: Box<AllocKey>, second: Box<AllocKey> },
    #[error("allocation {0:?} appears twice")]
    DuplicateKey(Box<AllocKey>),
}

#[derive(Debug)]
pub struct Pool6 {
    prefix: Cidr6,
    cooldown_nanos: u64,
    allocations: BTreeMap<AllocKey, Allocation6>,
    assigned: BTreeSet<Ipv6Addr>,
    /// Released addresses in release order (so also in cooldown-expiry order).
    cooling: VecDeque<(Ipv6Addr, UnixNanos)>,
}

impl Pool6 {
    pub fn new(prefix: Cidr6, cooldown_nanos: u64) -> Self {
        Self {
            prefix,
            cooldown_nanos,
            allocations: BTreeMap::new(),
            assigned: BTreeSet::new(),
            cooling: VecDeque::new(),
        }
    }

    pub fn prefix(&self) -> Cidr6 {
        self.prefix
    }

    /// Hands an address to `key`: the existing one if it has one (CNI ADD is idempotent), else
    /// the lowest free one.
    pub fn assign(
        &mut self,
        key: &AllocKey,
        pod: &PodRef,
        now: UnixNanos,
    ) -> Result<Allocation6, Pool6Error> {
        if let Some(a) = self.allocations.get(key) {
            return Ok(a.clone());
        }
        while self.cooling.front().is_some_and(|(_, at)| now.saturating_sub(*at) >= self.cooldown_nanos) {
            self.cooling.pop_front();
        }
        let ip = self.lowest_free().ok_or(Pool6Error::Full(self.prefix))?;
        let allocation = Allocation { key: key.clone(), ip, pod: pod.clone(), allocated_at: now };
        self.assigned.insert(ip);
        self.allocations.insert(key.clone(), allocation.clone());
        Ok(allocation)
    }

    fn lowest_free(&self) -> Option<Ipv6Addr> {
        let base = u128::from(self.prefix.addr);
        let taken: BTreeSet<u128> = self
            .assigned
            .iter()
            .chain(self.cooling.iter().map(|(ip, _)| ip))
            .map(|ip| u128::from(*ip).wrapping_sub(base))
            .collect();
        let mut offset = 1u128;
        for t in taken.range(1..) {
            if *t > offset {
                break;
            }
            offset += 1;
        }
        self.prefix.nth(offset)
    }

    /// Releases `key`'s address (CNI DEL); it cools down. `None` when `key` has none.
    pub fn release(&mut self, key: &AllocKey, now: UnixNanos) -> Option<Allocation6> {
        let allocation = self.allocations.remove(key)?;
        self.assigned.remove(&allocation.ip);
        self.cooling.push_back((allocation.ip, now));
        Some(allocation)
    }

    /// Undoes [`Pool6::assign`] exactly (the checkpoint write failed).
    pub fn unassign_rollback(&mut self, key: &AllocKey) {
        if let Some(a) = self.allocations.remove(key) {
            self.assigned.remove(&a.ip);
        }
    }

    /// Undoes [`Pool6::release`] exactly (the checkpoint write failed).
    pub fn release_rollback(&mut self, allocation: Allocation6) {
        self.cooling.retain(|(ip, _)| *ip != allocation.ip);
        self.assigned.insert(allocation.ip);
        self.allocations.insert(allocation.key.clone(), allocation);
    }

    /// Restores allocations from a checkpoint; those outside the /80 (an earlier prefix) are
    /// returned as dropped. A duplicate address or key refuses the whole restore.
    pub fn restore(&mut self, allocations: Vec<Allocation6>) -> Result<Vec<Allocation6>, Pool6Error> {
        let mut seen_ip: BTreeMap<Ipv6Addr, &AllocKey> =
            self.allocations.values().map(|a| (a.ip, &a.key)).collect();
        let mut seen_key: BTreeSet<&AllocKey> = BTreeSet::new();
        for a in &allocations {
            if !seen_key.insert(&a.key) || self.allocations.contains_key(&a.key) {
                return Err(Pool6Error::DuplicateKey(Box::new(a.key.clone())));
            }
            if let Some(first) = seen_ip.insert(a.ip, &a.key) {
                return Err(Pool6Error::DuplicateAddress {
                    ip: a.ip,
                    first: Box::new(first.clone()),
                    second: Box::new(a.key.clone()),
                });
            }
        }
        let mut dropped = Vec::new();
        for a in allocations {
            if !self.prefix.contains(a.ip) {
                dropped.push(a);
                continue;
            }
            self.cooling.retain(|(ip, _)| *ip != a.ip);
            self.assigned.insert(a.ip);
            self.allocations.insert(a.key.clone(), a);
        }
        Ok(dropped)
    }

    /// Puts addresses released before a restart back into cooldown (those in the /80 and not
    /// assigned).
    pub fn restore_cooling(&mut self, cooling: &[(Ipv6Addr, UnixNanos)]) {
        for &(ip, at) in cooling {
            if self.prefix.contains(ip)
                && !self.assigned.contains(&ip)
                && !self.cooling.iter().any(|(c, _)| *c == ip)
            {
                self.cooling.push_back((ip, at));
            }
        }
        self.cooling.make_contiguous().sort_by_key(|(_, at)| *at);
    }

    /// Released addresses still cooling down at `now`, with when they were released.
    pub fn cooling(&self, now: UnixNanos) -> Vec<(Ipv6Addr, UnixNanos)> {
        let mut v: Vec<(Ipv6Addr, UnixNanos)> = self
            .cooling
            .iter()
            .copied()
            .filter(|(_, at)| now.saturating_sub(*at) < self.cooldown_nanos)
            .collect();
        v.sort();
        v
    }

    pub fn allocation(&self, key: &AllocKey) -> Option<&Allocation6> {
        self.allocations.get(key)
    }

    pub fn allocations(&self) -> Vec<Allocation6> {
        self.allocations.values().cloned().collect()
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Addresses free at `now`: the /80's host addresses (offset 0 is never handed out) less the
    /// assigned and cooling ones, counted up to `u32::MAX`.
    pub fn available(&self, now: UnixNanos) -> u32 {
        let size = 1u128.checked_shl(128 - u32::from(self.prefix.prefix_len)).unwrap_or(u128::MAX);
        let busy = self.allocations.len() + self.cooling(now).len();
        let free = (size - 1).saturating_sub(busy as u128);
        u32::try_from(free).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::model::NANOS_PER_SEC;

    fn key(c: &str) -> AllocKey {
        AllocKey { network_name: "aws-cni".into(), container_id: c.into(), if_name: "eth0".into() }
    }

    fn pool() -> Pool6 {
        Pool6::new("2600:1f14:abc:de01:1::/80".parse().unwrap(), 30 * NANOS_PER_SEC)
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_the_lowest_free_and_cool_down_after_release() {
        let mut p = pool();
        let pod = PodRef::default();
        let a = p.assign(&key("a"), &pod, 0).unwrap();
        assert_eq!(a.ip, ip("2600:1f14:abc:de01:1::1"), "offset 0 is never handed out");
        assert_eq!(p.assign(&key("a"), &pod, 5).unwrap(), a, "idempotent");
        assert_eq!(p.assign(&key("b"), &pod, 0).unwrap().ip, ip("2600:1f14:abc:de01:1::2"));
        assert_eq!(p.release(&key("a"), 10 * NANOS_PER_SEC).map(|a| a.ip), Some(a.ip));
        assert_eq!(p.release(&key("a"), 10 * NANOS_PER_SEC), None, "DEL is idempotent");
        assert_eq!(p.cooling(11 * NANOS_PER_SEC), [(a.ip, 10 * NANOS_PER_SEC)]);
        // ::1 cools down: the next pod gets ::3, and ::1 again once the cooldown has passed.
        assert_eq!(p.assign(&key("c"), &pod, 20 * NANOS_PER_SEC).unwrap().ip, ip("2600:1f14:abc:de01:1::3"));
        assert_eq!(p.assign(&key("d"), &pod, 41 * NANOS_PER_SEC).unwrap().ip, a.ip);
        assert!(p.cooling(41 * NANOS_PER_SEC).is_empty());
    }

    #[test]
    fn rollbacks_undo_exactly() {
        let mut p = pool();
        let a = p.assign(&key("a"), &PodRef::default(), 0).unwrap();
        p.unassign_rollback(&key("a"));
        assert!(p.allocations().is_empty() && p.cooling(0).is_empty());
        let a2 = p.assign(&key("a"), &PodRef::default(), 0).unwrap();
        assert_eq!(a2.ip, a.ip, "no cooldown after a rollback");
        let released = p.release(&key("a"), 1).unwrap();
        p.release_rollback(released.clone());
        assert_eq!(p.allocations(), [released]);
        assert!(p.cooling(2).is_empty());
    }

    #[test]
    fn restore_keeps_the_prefix_and_refuses_duplicates() {
        let alloc =
            |c: &str, a: &str| Allocation { key: key(c), ip: ip(a), pod: PodRef::default(), allocated_at: 1 };
        let mut p = pool();
        let dropped = p
            .restore(vec![alloc("a", "2600:1f14:abc:de01:1::1"), alloc("old", "2600:1f14:abc:de01:9::1")])
            .unwrap();
        assert_eq!(dropped, [alloc("old", "2600:1f14:abc:de01:9::1")], "outside the /80");
        p.restore_cooling(&[(ip("2600:1f14:abc:de01:1::2"), 0), (ip("2600:1f14:abc:de01:1::1"), 0)]);
        assert_eq!(p.cooling(1), [(ip("2600:1f14:abc:de01:1::2"), 0)], "an assigned address does not cool");
        assert_eq!(p.assign(&key("b"), &PodRef::default(), 1).unwrap().ip, ip("2600:1f14:abc:de01:1::3"));
        let mut q = pool();
        let twice =
            q.restore(vec![alloc("a", "2600:1f14:abc:de01:1::1"), alloc("b", "2600:1f14:abc:de01:1::1")]);
        assert!(matches!(twice, Err(Pool6Error::DuplicateAddress { .. })), "{twice:?}");
        assert!(q.allocations().is_empty(), "nothing restored");
        let same_key =
            q.restore(vec![alloc("a", "2600:1f14:abc:de01:1::1"), alloc("a", "2600:1f14:abc:de01:1::2")]);
        assert!(matches!(same_key, Err(Pool6Error::DuplicateKey(_))), "{same_key:?}");
    }
}
