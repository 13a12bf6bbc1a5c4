//! IPv6 mode's one prefix (upstream's ipamd in IPv6 mode: a /80 on the primary ENI, looked up at
//! start and assigned once if there is none; extra prefixes are ignored). Not yet part of the
//! startup sequence: the agent still runs IPv4 pods only.

use super::error::NodeError;
use crate::{cloud::Cloud, ipam::model::Cidr6};

/// The primary ENI's /80: the first one IMDS shows; else the first one EC2 describes (IMDS may
/// lag behind an assignment a previous run made moments ago, and a second /80 would be a leak);
/// else one assigned now. At most one DescribeNetworkInterfaces and one AssignIpv6Addresses.
pub async fn ensure_prefix(
    cloud: &dyn Cloud,
    primary_eni: &str,
    primary_mac: &str,
) -> Result<Cidr6, NodeError> {
    if let Some(p) = cloud.ipv6(primary_mac).await?.prefixes.first() {
        return Ok(*p);
    }
    let described = cloud.describe_enis(&[primary_eni.to_owned()]).await?;
    if let Some(p) = described.iter().find(|e| e.id == primary_eni).and_then(|e| e.ipv6_prefixes.first()) {
        return Ok(*p);
    }
    Ok(cloud.assign_ipv6_prefix(primary_eni).await?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::node::fakes::{FakeCloud, World, PRIMARY_ENI, PRIMARY_MAC};

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().map(|rt| rt.block_on(f)).unwrap()
    }

    #[test]
    fn the_prefix_is_assigned_once_and_found_again_from_imds_or_ec2() {
        let world = Arc::new(World::default());
        let cloud = FakeCloud::new(world.clone());
        let first = run(ensure_prefix(&cloud, PRIMARY_ENI, PRIMARY_MAC)).unwrap();
        assert_eq!(first.prefix_len, 80);
        assert_eq!(
            world.calls_to("ec2"),
            [
                format!("ec2 DescribeNetworkInterfaces {PRIMARY_ENI}"),
                format!("ec2 AssignIpv6Addresses {PRIMARY_ENI} /80")
            ]
        );
        // A restart: IMDS shows it, no EC2 call.
        assert_eq!(run(ensure_prefix(&cloud, PRIMARY_ENI, PRIMARY_MAC)).unwrap(), first);
        assert_eq!(world.calls_to("ec2").len(), 2);
        // A restart while IMDS lags behind the assignment: EC2's answer, and no second /80.
        cloud.ipv6_imds_lags();
        assert_eq!(run(ensure_prefix(&cloud, PRIMARY_ENI, PRIMARY_MAC)).unwrap(), first);
        assert_eq!(world.calls_to("ec2 AssignIpv6Addresses").len(), 1);
        assert_eq!(world.calls_to("ec2 DescribeNetworkInterfaces").len(), 2);
    }
}
