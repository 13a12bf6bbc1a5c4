//! Subnet discovery (ENABLE_SUBNET_DISCOVERY, upstream's rules of v1.22, `createENI` and
//! `isSubnetValidForENICreation` in pkg/awsutils/awsutils.go): without custom networking, a new
//! ENI goes to a subnet of the node's VPC and availability zone, the one with the most free
//! addresses first (the next when EC2 says one is full):
//!
//! - `kubernetes.io/role/cni=0` excludes a subnet, the node's own included;
//! - the node's own subnet is valid without the tag; any other only with it (not `0`);
//! - a subnet with a `cni.networking.k8s.aws/cluster/<name>` tag is valid only for that cluster
//!   (CLUSTER_NAME; without it, cluster tags are not looked at).
//!
//! ENIs in a discovered subnet get the primary ENI's security groups, so the pods on them are
//! judged against the node's groups, as everywhere without custom networking. Upstream describes
//! the subnets for every new ENI; here the answer is kept for `state::SUBNETS_CACHED_FOR` (and dropped when a
//! subnet turns out to be full), so a node that adds several ENIs at start asks once.

use crate::cloud::ec2::SubnetInfo;

use super::{error::NodeError, state::Shared};

/// Opts a subnet in (any value but `0`) or out (`0`).
pub const TAG_CNI_ROLE: &str = "kubernetes.io/role/cni";
/// `<prefix><cluster name>`: the subnet is for that cluster only.
pub const TAG_CLUSTER_PREFIX: &str = "cni.networking.k8s.aws/cluster/";

/// Whether an ENI may be created in `s` (the rules in the module doc).
pub fn valid(s: &SubnetInfo, node_subnet: &str, cluster: Option<&str>) -> bool {
    let role_ok = match s.tags.get(TAG_CNI_ROLE).map(String::as_str) {
        Some("0") => false,
        Some(_) => true,
        None => s.id == node_subnet,
    };
    let cluster_ok = match cluster {
        None => true,
        Some(name) => {
            let mut clusters = s.tags.keys().filter_map(|k| k.strip_prefix(TAG_CLUSTER_PREFIX)).peekable();
            clusters.peek().is_none() || clusters.any(|c| c == name)
        }
    };
    role_ok && cluster_ok
}

/// The valid subnets, most free addresses first (ties: by id, for a stable order).
pub fn candidates(subnets: &[SubnetInfo], node_subnet: &str, cluster: Option<&str>) -> Vec<SubnetInfo> {
    let mut valid: Vec<SubnetInfo> =
        subnets.iter().filter(|s| valid(s, node_subnet, cluster)).cloned().collect();
    valid.sort_by(|a, b| b.available.cmp(&a.available).then_with(|| a.id.cmp(&b.id)));
    valid
}

/// Where the next ENI may go, in order (subnet discovery on, no custom networking).
pub async fn discover(shared: &Shared) -> Result<Vec<String>, NodeError> {
    let subnets = match shared.changing.subnets.fresh() {
        Some(s) => s,
        None => {
            let s =
                shared.clients.cloud.describe_subnets(&shared.vpc_id, &shared.id.availability_zone).await?;
            shared.changing.subnets.put(s.clone());
            s
        }
    };
    let found = candidates(&subnets, &shared.primary_subnet, shared.cfg.cluster_name.as_deref());
    if found.is_empty() {
        return Err(NodeError::NoValidSubnet {
            vpc: shared.vpc_id.clone(),
            az: shared.id.availability_zone.clone(),
        });
    }
    Ok(found.into_iter().map(|s| s.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, available: u32, tags: &[(&str, &str)]) -> SubnetInfo {
        SubnetInfo {
            id: id.into(),
            available,
            tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn ids(v: Vec<SubnetInfo>) -> Vec<String> {
        v.into_iter().map(|s| s.id).collect()
    }

    #[test]
    fn upstreams_rules_most_free_first() {
        let subnets = [
            subnet("node", 10, &[]),
            subnet("untagged", 500, &[]),
            subnet("opted-in", 300, &[(TAG_CNI_ROLE, "1")]),
            subnet("opted-out", 900, &[(TAG_CNI_ROLE, "0")]),
            subnet("bigger", 400, &[(TAG_CNI_ROLE, "")]),
        ];
        assert_eq!(ids(candidates(&subnets, "node", None)), ["bigger", "opted-in", "node"]);
        let mut excluded_node = subnets.to_vec();
        excluded_node[0].tags.insert(TAG_CNI_ROLE.into(), "0".into());
        assert_eq!(ids(candidates(&excluded_node, "node", None)), ["bigger", "opted-in"]);
        assert!(candidates(&[subnet("node", 10, &[(TAG_CNI_ROLE, "0")])], "node", None).is_empty());
    }

    #[test]
    fn cluster_tags_restrict_a_subnet_to_their_clusters() {
        let ours = format!("{TAG_CLUSTER_PREFIX}prod");
        let theirs = format!("{TAG_CLUSTER_PREFIX}dev");
        let subnets = [
            subnet("shared", 100, &[(TAG_CNI_ROLE, "1")]),
            subnet("prod-only", 200, &[(TAG_CNI_ROLE, "1"), (&ours, "1")]),
            subnet("dev-only", 300, &[(TAG_CNI_ROLE, "1"), (&theirs, "1")]),
            subnet("both", 50, &[(TAG_CNI_ROLE, "1"), (&ours, "1"), (&theirs, "1")]),
        ];
        assert_eq!(ids(candidates(&subnets, "node", Some("prod"))), ["prod-only", "shared", "both"]);
        assert_eq!(ids(candidates(&subnets, "node", None)), ["dev-only", "prod-only", "shared", "both"]);
    }
}
