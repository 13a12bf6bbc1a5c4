//! Instance limits: ENIs per instance and IPv4 addresses per ENI, from a built-in table, and from
//! EC2 DescribeInstanceTypes for a type the table lacks (upstream's `FetchInstanceTypeLimits`).
//! Trunking compatibility is the VPC Resource Controller's (pkg/aws/vpc/limits.go): a type not in
//! the table is taken as not trunking-compatible, so no ENI slot is reserved for a trunk that
//! would never come (upstream #3094).
//!
//! The ENI and address columns are EC2's `NetworkInfo.MaximumNetworkInterfaces` and
//! `Ipv4AddressesPerInterface`; to regenerate or extend them:
//!
//! ```text
//! aws ec2 describe-instance-types --query 'InstanceTypes[].[InstanceType,
//!   NetworkInfo.MaximumNetworkInterfaces, NetworkInfo.Ipv4AddressesPerInterface, Hypervisor,
//!   NetworkInfo.EfaSupported]' --output text | sort
//! ```
//!
//! and take trunking from `IsTrunkingCompatible` in the Resource Controller's limits.go.

use crate::ipam::policy::Limits;

/// One row: type, ENIs, IPv4 addresses per ENI, Nitro, trunking-compatible.
pub struct Row {
    pub name: &'static str,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub nitro: bool,
    pub trunking: bool,
}

const fn row(name: &'static str, max_enis: u32, ipv4_per_eni: u32, trunking: bool) -> Row {
    Row { name, max_enis, ipv4_per_eni, nitro: true, trunking }
}

/// Every type vpcsim knows, and the common current families.
pub const TABLE: &[Row] = &[
    row("c5.large", 3, 10, true),
    row("c5.xlarge", 4, 15, true),
    row("c5.2xlarge", 4, 15, true),
    row("c5.4xlarge", 8, 30, true),
    row("c5.9xlarge", 8, 30, true),
    row("c5.18xlarge", 15, 50, true),
    row("c5n.18xlarge", 15, 50, true),
    row("c6g.large", 3, 10, true),
    row("c6g.xlarge", 4, 15, true),
    row("c6i.large", 3, 10, true),
    row("c6i.xlarge", 4, 15, true),
    row("c7g.large", 3, 10, true),
    row("c7i.large", 3, 10, true),
    row("m5.large", 3, 10, true),
    row("m5.xlarge", 4, 15, true),
    row("m5.2xlarge", 4, 15, true),
    row("m5.4xlarge", 8, 30, true),
    row("m5.8xlarge", 8, 30, true),
    row("m5.12xlarge", 8, 30, true),
    row("m5.16xlarge", 15, 50, true),
    row("m5.24xlarge", 15, 50, true),
    row("m6g.large", 3, 10, true),
    row("m6i.large", 3, 10, true),
    row("m6i.xlarge", 4, 15, true),
    row("m6i.2xlarge", 4, 15, true),
    row("m6i.4xlarge", 8, 30, true),
    row("m7a.medium", 2, 4, true),
    row("m7g.large", 3, 10, true),
    row("m7g.xlarge", 4, 15, true),
    row("m7i.large", 3, 10, true),
    row("m7i.xlarge", 4, 15, true),
    row("p3dn.24xlarge", 15, 50, true),
    row("r5.large", 3, 10, true),
    row("r5.xlarge", 4, 15, true),
    row("r5.2xlarge", 4, 15, true),
    row("r6i.large", 3, 10, true),
    row("r7a.medium", 2, 4, true),
    row("r7g.large", 3, 10, true),
    row("t3.micro", 2, 2, false),
    row("t3.small", 3, 4, false),
    row("t3.medium", 3, 6, false),
    row("t3.large", 3, 12, false),
    row("t3.xlarge", 4, 15, false),
    row("t3.2xlarge", 4, 15, false),
];

pub fn lookup(name: &str) -> Option<&'static Row> {
    TABLE.iter().find(|r| r.name == name)
}

/// The limits the pool policy uses, with MAX_ENI applied.
pub fn limits(max_enis: u32, ipv4_per_eni: u32, trunking: bool, max_eni_env: Option<u32>) -> Limits {
    Limits {
        max_enis: max_eni_env.map_or(max_enis, |m| m.min(max_enis)),
        ipv4_per_eni,
        trunking_compatible: trunking,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_unique_and_sane() {
        let mut names: Vec<&str> = TABLE.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TABLE.len(), "a type appears twice");
        assert!(TABLE.iter().all(|r| r.max_enis >= 2 && r.ipv4_per_eni >= 2));
        let m5 = lookup("m5.large").unwrap();
        assert_eq!((m5.max_enis, m5.ipv4_per_eni, m5.trunking), (3, 10, true));
        assert!(!lookup("t3.medium").unwrap().trunking);
        assert_eq!(limits(3, 10, true, Some(2)).max_enis, 2);
        assert_eq!(limits(3, 10, true, Some(8)).max_enis, 3);
    }
}
