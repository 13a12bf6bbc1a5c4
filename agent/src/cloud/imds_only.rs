//! ENABLE_IMDS_ONLY_MODE: the cloud as IMDS alone shows it, for nodes that may not call EC2
//! (strict VPC endpoints or IAM). Each attached ENI is described from IMDS (its subnet, security
//! groups, addresses and prefixes); nothing is created, assigned, tagged or deleted, and no EC2
//! call is made: every EC2 action answers an error naming the mode.
//!
//! What IMDS cannot say: an ENI's type and tags. Every ENI is taken as an ordinary one (as
//! upstream does in this mode); the configuration refuses security groups for pods with it, so no
//! trunk is expected. A trunk or EFA ENI attached by someone else is not told apart: its
//! secondary addresses, if it has any, would join the pool.

use std::collections::BTreeMap;

use super::{
    calls::Calls,
    ec2::{Attachment, Ec2Error, EniInfo, InterfaceType, NewEni, SubnetInfo, TypeInfo},
    imds::{Identity, Imds, ImdsEni, ImdsFailure},
    Cloud,
};
use crate::ipam::model::Cidr;

pub struct ImdsOnly {
    imds: Imds,
}

impl ImdsOnly {
    pub fn new(calls: Calls) -> Self {
        Self { imds: Imds::new(calls) }
    }
}

fn no_ec2<T>(action: &'static str) -> Result<T, Ec2Error> {
    Err(Ec2Error::local(action, "ENABLE_IMDS_ONLY_MODE=true: eniguard makes no EC2 call"))
}

/// An attached ENI as EC2 would describe it, from what IMDS shows.
fn described(e: ImdsEni) -> EniInfo {
    EniInfo {
        cidrs: e.cidrs(),
        ipv6_prefixes: Vec::new(),
        id: e.id,
        mac: e.mac,
        subnet_id: e.subnet_id,
        security_groups: e.security_groups,
        interface_type: InterfaceType::Interface,
        description: String::new(),
        status: "in-use".into(),
        tags: BTreeMap::new(),
        attachment: Some(Attachment {
            id: String::new(),
            instance_id: String::new(),
            device_index: e.device_number,
            status: "attached".into(),
        }),
        primary_ip: Some(e.primary_ip),
    }
}

#[async_trait::async_trait]
impl Cloud for ImdsOnly {
    async fn identity(&self) -> Result<Identity, ImdsFailure> {
        self.imds.identity().await
    }
    async fn attached_enis(&self) -> Result<Vec<ImdsEni>, ImdsFailure> {
        self.imds.enis().await
    }
    async fn attached_eni(&self, mac: &str) -> Result<Option<ImdsEni>, ImdsFailure> {
        self.imds.attached_eni(mac).await
    }
    async fn primary_security_groups(&self, mac: &str) -> Result<Vec<String>, ImdsFailure> {
        self.imds.primary_security_groups(mac).await
    }
    async fn ipv6(&self, mac: &str) -> Result<super::imds::Ipv6View, ImdsFailure> {
        self.imds.ipv6(mac).await
    }
    /// The attached ENIs among `ids`, from IMDS (an ENI not attached here is not found).
    async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniInfo>, Ec2Error> {
        let seen = self
            .imds
            .enis()
            .await
            .map_err(|e| Ec2Error::local("DescribeNetworkInterfaces", format!("IMDS-only mode: {e}")))?;
        Ok(seen.into_iter().filter(|e| ids.contains(&e.id)).map(described).collect())
    }
    async fn find_enis(&self, _filters: &[(&str, &str)]) -> Result<Vec<EniInfo>, Ec2Error> {
        no_ec2("DescribeNetworkInterfaces")
    }
    async fn describe_instance_type(&self, _name: &str) -> Result<TypeInfo, Ec2Error> {
        no_ec2("DescribeInstanceTypes")
    }
    async fn describe_subnets(&self, _vpc_id: &str, _az: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        no_ec2("DescribeSubnets")
    }
    async fn used_device_indexes(&self, _instance_id: &str) -> Result<Vec<u32>, Ec2Error> {
        no_ec2("DescribeInstances")
    }
    async fn create_eni(&self, _new: &NewEni) -> Result<EniInfo, Ec2Error> {
        no_ec2("CreateNetworkInterface")
    }
    async fn attach(&self, _eni: &str, _instance_id: &str, _device_index: u32) -> Result<String, Ec2Error> {
        no_ec2("AttachNetworkInterface")
    }
    async fn delete_on_termination(&self, _eni: &str, _attachment_id: &str) -> Result<(), Ec2Error> {
        no_ec2("ModifyNetworkInterfaceAttribute")
    }
    async fn assign(&self, _eni: &str, _count: u32, _prefixes: bool) -> Result<Vec<Cidr>, Ec2Error> {
        no_ec2("AssignPrivateIpAddresses")
    }
    async fn unassign(&self, _eni: &str, _cidrs: &[Cidr]) -> Result<(), Ec2Error> {
        no_ec2("UnassignPrivateIpAddresses")
    }
    async fn assign_ipv6_prefix(&self, _eni: &str) -> Result<crate::ipam::model::Cidr6, Ec2Error> {
        no_ec2("AssignIpv6Addresses")
    }
    async fn create_tags(&self, _eni: &str, _tags: &BTreeMap<String, String>) -> Result<(), Ec2Error> {
        no_ec2("CreateTags")
    }
    async fn detach_and_delete(&self, _eni: &str, _attachment_id: Option<&str>) -> Result<(), Ec2Error> {
        no_ec2("DeleteNetworkInterface")
    }
}
