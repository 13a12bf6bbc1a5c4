//! EC2's account-wide request-token buckets ("Request throttling" in the EC2 API reference): one
//! bucket per API action, sized by the action's category, shared by every caller of the account
//! (every node of a scenario). Each request takes a token; a bucket refills at a fixed rate per
//! second up to its maximum; an empty bucket answers `RequestLimitExceeded` (HTTP 503).
//!
//! Categories (max tokens / refill per second):
//! - non-mutating (`Describe*`, `List*`, `Search*`, `Get*`): 100 / 20;
//! - unfiltered and unpaginated non-mutating (`DescribeInstances`, `DescribeNetworkInterfaces`,
//!   ... called without a filter or pagination): 50 / 10, a bucket of its own;
//! - uncategorized: `AssignPrivateIpAddresses`, `UnassignPrivateIpAddresses`,
//!   `AssignIpv6Addresses`, `CreateNetworkInterface`, `DeleteNetworkInterface`,
//!   `ModifyNetworkInterfaceAttribute` 100 / 5; `CreateTags`, `DeleteTags` 100 / 10;
//! - every other mutating action (`AttachNetworkInterface`, `DetachNetworkInterface`, ...): 50 / 5.
//!
//! `scale` multiplies both numbers (quick tests use a small one).

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

/// The actions the "unfiltered and unpaginated" category names.
const UNFILTERED: &[&str] = &[
    "DescribeInstances",
    "DescribeInstanceStatus",
    "DescribeNetworkInterfaces",
    "DescribeSecurityGroups",
    "DescribeSnapshots",
    "DescribeSpotInstanceRequests",
    "DescribeVolumes",
];

/// Max tokens and refill per second of `action`'s bucket (before scaling); `unfiltered` when
/// the request has no filter and no pagination.
pub fn size(action: &str, unfiltered: bool) -> (f64, f64) {
    match action {
        a if unfiltered && UNFILTERED.contains(&a) => (50.0, 10.0),
        a if ["Describe", "List", "Search", "Get"].iter().any(|p| a.starts_with(p)) => (100.0, 20.0),
        "AssignPrivateIpAddresses"
        | "UnassignPrivateIpAddresses"
        | "AssignIpv6Addresses"
        | "CreateNetworkInterface"
        | "DeleteNetworkInterface"
        | "ModifyNetworkInterfaceAttribute" => (100.0, 5.0),
        "CreateTags" | "DeleteTags" => (100.0, 10.0),
        _ => (50.0, 5.0),
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    max: f64,
    refill: f64,
    tokens: f64,
    at: Instant,
    /// Requests it served.
    served: u64,
    /// Its first request (it was created full then).
    first: Instant,
}

/// One bucket as [`Buckets::report`] shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketReport {
    /// The action, `(unfiltered)` for the unfiltered category's bucket.
    pub key: String,
    pub max: f64,
    pub refill: f64,
    pub served: u64,
    /// When it got its first request: [`Self::minimum_seconds`] counts from then.
    pub first: Instant,
}

impl BucketReport {
    /// The least time in which a full bucket serves `served` requests: the first `max` at once,
    /// the rest at the refill rate.
    pub fn minimum_seconds(&self) -> f64 {
        ((self.served as f64 - self.max).max(0.0)) / self.refill
    }
}

/// The account's buckets, created full on first use.
#[derive(Debug)]
pub struct Buckets {
    scale: f64,
    buckets: HashMap<String, Bucket>,
    /// Action → requests answered `RequestLimitExceeded` by a bucket.
    pub throttled: BTreeMap<String, u64>,
}

impl Buckets {
    pub fn new(scale: f64) -> Self {
        Self { scale, buckets: HashMap::new(), throttled: BTreeMap::new() }
    }

    /// Takes a token for one `action` request at `now`; false (and counted) when the bucket is
    /// empty.
    pub fn take(&mut self, action: &str, unfiltered: bool, now: Instant) -> bool {
        let (max, refill) = size(action, unfiltered);
        let key = if unfiltered && UNFILTERED.contains(&action) {
            format!("{action} (unfiltered)")
        } else {
            action.to_owned()
        };
        let scale = self.scale;
        let b = self.buckets.entry(key).or_insert_with(|| Bucket {
            max: max * scale,
            refill: refill * scale,
            tokens: max * scale,
            at: now,
            served: 0,
            first: now,
        });
        b.tokens = (b.tokens + b.refill * now.saturating_duration_since(b.at).as_secs_f64()).min(b.max);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.served += 1;
            true
        } else {
            *self.throttled.entry(action.to_owned()).or_default() += 1;
            false
        }
    }
}

impl Buckets {
    /// Every bucket used so far, by key.
    pub fn report(&self) -> Vec<BucketReport> {
        let mut v: Vec<BucketReport> = self
            .buckets
            .iter()
            .map(|(key, b)| BucketReport {
                key: key.clone(),
                max: b.max,
                refill: b.refill,
                served: b.served,
                first: b.first,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_drain_and_refill_at_their_rates() {
        let mut b = Buckets::new(0.1);
        let t0 = Instant::now();
        // CreateNetworkInterface: 100 / 5 → 10 / 0.5 at 0.1.
        assert_eq!((0..12).filter(|_| b.take("CreateNetworkInterface", false, t0)).count(), 10);
        assert!(!b.take("CreateNetworkInterface", false, t0 + Duration::from_millis(1900)));
        assert!(b.take("CreateNetworkInterface", false, t0 + Duration::from_millis(2100)));
        assert_eq!(b.throttled["CreateNetworkInterface"], 3);
        // Unfiltered DescribeNetworkInterfaces has a smaller bucket of its own.
        assert_eq!((0..10).filter(|_| b.take("DescribeNetworkInterfaces", true, t0)).count(), 5);
        assert_eq!((0..12).filter(|_| b.take("DescribeNetworkInterfaces", false, t0)).count(), 10);
        assert_eq!(size("AttachNetworkInterface", false), (50.0, 5.0));
        let create = b.report().into_iter().find(|r| r.key == "CreateNetworkInterface").unwrap();
        assert_eq!(create.served, 11);
        assert!((create.minimum_seconds() - 2.0).abs() < 1e-9, "10 at once, the 11th after 2 s");
        assert_eq!(size("CreateTags", false), (100.0, 10.0));
    }
}
