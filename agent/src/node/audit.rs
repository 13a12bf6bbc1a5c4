//! Audits that need EC2's word: every managed ENI's and the trunk's security groups against what
//! the configuration says (the ENIConfig's groups under custom networking, or the primary ENI's),
//! and the leaked-ENI sweep (upstream's cleanup: hourly, first run jittered 0–300 s, this
//! instance's `aws-K8S-` ENIs left `available` for more than 5 minutes are deleted).

use std::time::Duration;

use crate::{cloud::ec2::InterfaceType, observe::agent::EniLabel};

use super::{
    enis::{timestamp, TAG_CLUSTER, TAG_CREATED_AT, TAG_INSTANCE},
    state::{KnownEni, Shared},
};

pub const LEAK_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
pub const LEAK_SWEEP_JITTER: Duration = Duration::from_secs(300);
/// Upstream's `eniDeleteCooldownTime`.
pub const LEAK_MIN_AGE: Duration = Duration::from_secs(300);

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// What an ENI should carry: subnet (only checked for the trunk under custom networking) and
/// groups.
fn expected(shared: &Shared, eni: &KnownEni) -> Option<(Option<String>, Vec<String>)> {
    if eni.primary
        || eni.unmanaged
        || !matches!(eni.interface_type, InterfaceType::Interface | InterfaceType::Trunk)
    {
        return None;
    }
    let (subnet, groups) = shared.new_eni_placement()?;
    let subnet = (shared.cfg.custom_networking && eni.trunk()).then_some(subnet);
    Some((subnet, groups))
}

/// Compares the groups EC2 reported for every ENI with the expected ones: a gauge per ENI, and
/// for the trunk (whose groups the Resource Controller never changes) a Warning Event.
pub async fn security_groups(shared: &Shared) {
    for eni in shared.enis().values() {
        let Some((subnet, groups)) = expected(shared, eni) else { continue };
        let group_drift = sorted(&eni.security_groups) != sorted(&groups);
        let subnet_drift = subnet.as_ref().is_some_and(|s| *s != eni.subnet_id);
        let drift = group_drift || subnet_drift;
        shared.metrics.sg_drift.get_or_create(&EniLabel { eni: eni.id.clone() }).set(i64::from(drift));
        if !eni.trunk() {
            if drift {
                log::warn!(
                    "ENI {} has groups {:?}, its configuration says {:?}",
                    eni.id,
                    eni.security_groups,
                    groups
                );
            }
            continue;
        }
        let was = shared.metrics.trunk_sg_drift.get();
        shared.metrics.trunk_sg_drift.set(i64::from(drift));
        if drift && was == 0 {
            let message = format!(
                "trunk ENI {} has security groups {:?} in subnet {}, but its ENIConfig says {:?}{}: trunk security groups cannot be changed; replace this node",
                eni.id,
                eni.security_groups,
                eni.subnet_id,
                groups,
                subnet.map(|s| format!(" in subnet {s}")).unwrap_or_default()
            );
            log::warn!("{message}");
            if let Err(e) =
                shared.clients.kube.event(&shared.node(), true, "TrunkSecurityGroupsDrift", &message).await
            {
                log::warn!("{e}");
            }
        }
    }
}

/// Asks EC2 for the groups of every known ENI (one call) and audits them.
pub async fn refresh_security_groups(shared: &Shared) {
    let branches = shared.branch_groups();
    let ids: Vec<String> = shared.enis().keys().chain(branches.keys()).cloned().collect();
    match shared.clients.cloud.describe_enis(&ids).await {
        Ok(described) => {
            for d in described {
                if let Some(mut k) = shared.eni(&d.id) {
                    k.security_groups = d.security_groups;
                    shared.put_eni(k);
                } else if branches.contains_key(&d.id) {
                    shared.set_branch_groups(&d.id, d.security_groups);
                }
            }
            security_groups(shared).await;
        }
        Err(e) => log::warn!("security group audit: {e}"),
    }
}

/// One sweep: this instance's detached `aws-K8S-` ENIs older than 5 minutes are deleted; those
/// without a creation time get one (and go on a later sweep).
pub async fn sweep_leaked(shared: &Shared) {
    let ec2 = shared.clients.cloud.as_ref();
    let id = &shared.id.instance_id;
    let (tag_instance, tag_cluster) = (format!("tag:{TAG_INSTANCE}"), format!("tag:{TAG_CLUSTER}"));
    let mut filters = vec![
        (tag_instance.as_str(), id.as_str()),
        ("status", "available"),
        ("vpc-id", shared.vpc_id.as_str()),
    ];
    if let Some(c) = &shared.cfg.cluster_name {
        filters.push((tag_cluster.as_str(), c.as_str()));
    }
    let found = match ec2.find_enis(&filters).await {
        Ok(f) => f,
        Err(e) => return log::warn!("leaked-ENI sweep: {e}"),
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    for (eni, step) in sweep_plan(&found, now) {
        match step {
            Sweep::StampCreatedAt => {
                let tag = [(TAG_CREATED_AT.to_owned(), timestamp(now))];
                if let Err(e) = ec2.create_tags(&eni, &tag.into_iter().collect()).await {
                    log::warn!("leaked-ENI sweep: tagging {eni}: {e}");
                }
            }
            Sweep::Delete => match ec2.detach_and_delete(&eni, None).await {
                Ok(()) => log::info!("leaked-ENI sweep: deleted {eni}"),
                Err(e) => log::warn!("leaked-ENI sweep: {eni}: {e}"),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// No creation time: stamp one (it goes on a later sweep).
    StampCreatedAt,
    Delete,
}

/// What the sweep does with the detached ENIs it found: only `aws-K8S-` ones; older than
/// [`LEAK_MIN_AGE`] are deleted, those without a creation time stamped, younger ones left.
pub fn sweep_plan(
    found: &[crate::cloud::ec2::EniInfo],
    now: k8s_openapi::jiff::Timestamp,
) -> Vec<(String, Sweep)> {
    let min_age = i64::try_from(LEAK_MIN_AGE.as_secs()).unwrap_or(i64::MAX);
    found
        .iter()
        .filter(|e| e.description.starts_with("aws-K8S-") && e.attachment.is_none())
        .filter_map(|e| match e.tags.get(TAG_CREATED_AT).map(|t| t.parse::<k8s_openapi::jiff::Timestamp>()) {
            None | Some(Err(_)) => Some((e.id.clone(), Sweep::StampCreatedAt)),
            Some(Ok(t)) if now.as_second() - t.as_second() >= min_age => Some((e.id.clone(), Sweep::Delete)),
            Some(Ok(_)) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::ec2::EniInfo;

    fn eni(id: &str, description: &str, created: Option<&str>) -> EniInfo {
        EniInfo {
            id: id.into(),
            mac: String::new(),
            subnet_id: String::new(),
            security_groups: Vec::new(),
            interface_type: crate::cloud::ec2::InterfaceType::Interface,
            description: description.into(),
            status: "available".into(),
            tags: created.map(|c| (TAG_CREATED_AT.to_owned(), c.to_owned())).into_iter().collect(),
            attachment: None,
            primary_ip: None,
            cidrs: Vec::new(),
            ipv6_prefixes: Vec::new(),
        }
    }

    #[test]
    fn old_leaks_go_young_ones_stay_unstamped_ones_get_a_time() {
        let now: k8s_openapi::jiff::Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let found = [
            eni("old", "aws-K8S-i-1", Some("2026-12-01T11:50:00Z")),
            eni("young", "aws-K8S-i-1", Some("2026-12-01T11:58:00Z")),
            eni("unstamped", "aws-K8S-i-1", None),
            eni("garbled", "aws-K8S-i-1", Some("yesterday")),
            eni("foreign", "someone else's", Some("2026-12-01T10:00:00Z")),
        ];
        assert_eq!(
            sweep_plan(&found, now),
            vec![
                ("old".into(), Sweep::Delete),
                ("unstamped".into(), Sweep::StampCreatedAt),
                ("garbled".into(), Sweep::StampCreatedAt)
            ]
        );
    }
}
