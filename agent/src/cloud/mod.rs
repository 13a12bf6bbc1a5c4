//! The cloud: IMDS (aws-config's IMDSv2 client) and EC2 (aws-sdk-ec2), and the instance limits.
//! Endpoints, region and credentials come from the SDKs' standard sources
//! (`AWS_ENDPOINT_URL_EC2`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_REGION`, the default
//! credential chain), so the same code runs against AWS and against vpcsim. Every call is counted
//! by service, action and result ([`calls`]). [`Cloud`] is the node layer's seam: [`Aws`] makes
//! the calls, the node's unit tests answer them from memory.

pub mod calls;
pub mod ec2;
pub mod imds;
pub mod imds_only;
pub mod limits;

use aws_sdk_ec2::config::SharedHttpClient;
use aws_smithy_http_client::{
    tls::{self, rustls_provider::CryptoMode},
    Builder,
};

/// The HTTP client both SDK clients use: rustls with ring for AWS, plain HTTP where the endpoint
/// says `http://` (a simulator on loopback). The platform's roots are read once per process (the
/// SDK keeps them in a static), whichever client comes first.
pub fn http_client() -> SharedHttpClient {
    Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https()
}

use ec2::{Ec2, Ec2Error, Ec2Options, EniInfo, NewEni, SubnetInfo, TypeInfo};
use imds::{Identity, Imds, ImdsEni, ImdsFailure, Ipv6View};

use crate::ipam::model::{Cidr, Cidr6};

/// The IMDS and EC2 calls the node layer makes. [`Aws`] makes them against AWS (or vpcsim); the
/// node layer's unit tests answer them from memory.
#[async_trait::async_trait]
pub trait Cloud: Send + Sync {
    /// This instance (IMDS). Read first: the EC2 client's region comes from it.
    async fn identity(&self) -> Result<Identity, ImdsFailure>;
    /// Every attached ENI as IMDS shows it.
    async fn attached_enis(&self) -> Result<Vec<ImdsEni>, ImdsFailure>;
    /// The attached ENI with this MAC, once IMDS lists it (None before).
    async fn attached_eni(&self, mac: &str) -> Result<Option<ImdsEni>, ImdsFailure>;
    async fn primary_security_groups(&self, mac: &str) -> Result<Vec<String>, ImdsFailure>;
    /// IPv6 for the instance and the ENI `mac` (IMDS).
    async fn ipv6(&self, mac: &str) -> Result<Ipv6View, ImdsFailure>;

    async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniInfo>, Ec2Error>;
    async fn find_enis(&self, filters: &[(&str, &str)]) -> Result<Vec<EniInfo>, Ec2Error>;
    async fn describe_instance_type(&self, name: &str) -> Result<TypeInfo, Ec2Error>;
    /// The subnets of the VPC in the availability zone (subnet discovery).
    async fn describe_subnets(&self, vpc_id: &str, az: &str) -> Result<Vec<SubnetInfo>, Ec2Error>;
    async fn used_device_indexes(&self, instance_id: &str) -> Result<Vec<u32>, Ec2Error>;
    async fn create_eni(&self, new: &NewEni) -> Result<EniInfo, Ec2Error>;
    /// Returns the attachment's id.
    async fn attach(&self, eni: &str, instance_id: &str, device_index: u32) -> Result<String, Ec2Error>;
    async fn delete_on_termination(&self, eni: &str, attachment_id: &str) -> Result<(), Ec2Error>;
    /// `count` secondary addresses, or /28 prefixes with `prefixes`.
    async fn assign(&self, eni: &str, count: u32, prefixes: bool) -> Result<Vec<Cidr>, Ec2Error>;
    async fn unassign(&self, eni: &str, cidrs: &[Cidr]) -> Result<(), Ec2Error>;
    /// One IPv6 /80 prefix on `eni` (AssignIpv6Addresses with `Ipv6PrefixCount=1`).
    async fn assign_ipv6_prefix(&self, eni: &str) -> Result<Cidr6, Ec2Error>;
    async fn create_tags(
        &self,
        eni: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Ec2Error>;
    async fn detach_and_delete(&self, eni: &str, attachment_id: Option<&str>) -> Result<(), Ec2Error>;
}

/// The cloud through the real SDK clients. The EC2 client is built when the identity is first
/// read (its region is the instance's unless `AWS_REGION` says otherwise).
pub struct Aws {
    imds: Imds,
    calls: calls::Calls,
    options: Ec2Options,
    ec2: tokio::sync::OnceCell<Ec2>,
}

impl Aws {
    pub fn new(calls: calls::Calls, options: Ec2Options) -> Self {
        Self { imds: Imds::new(calls.clone()), calls, options, ec2: tokio::sync::OnceCell::new() }
    }

    fn ec2(&self) -> Result<&Ec2, Ec2Error> {
        self.ec2.get().ok_or_else(|| Ec2Error {
            action: "(client)",
            code: None,
            message: "no region yet: the instance identity is read from IMDS before any EC2 call".into(),
        })
    }
}

#[async_trait::async_trait]
impl Cloud for Aws {
    async fn identity(&self) -> Result<Identity, ImdsFailure> {
        let id = self.imds.identity().await?;
        self.ec2.get_or_init(|| Ec2::new(&id.region, self.calls.clone(), &self.options)).await;
        Ok(id)
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
    async fn ipv6(&self, mac: &str) -> Result<Ipv6View, ImdsFailure> {
        self.imds.ipv6(mac).await
    }
    async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniInfo>, Ec2Error> {
        self.ec2()?.describe_enis(ids).await
    }
    async fn find_enis(&self, filters: &[(&str, &str)]) -> Result<Vec<EniInfo>, Ec2Error> {
        self.ec2()?.find_enis(filters).await
    }
    async fn describe_instance_type(&self, name: &str) -> Result<TypeInfo, Ec2Error> {
        self.ec2()?.describe_instance_type(name).await
    }
    async fn describe_subnets(&self, vpc_id: &str, az: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        self.ec2()?.describe_subnets(vpc_id, az).await
    }
    async fn used_device_indexes(&self, instance_id: &str) -> Result<Vec<u32>, Ec2Error> {
        self.ec2()?.used_device_indexes(instance_id).await
    }
    async fn create_eni(&self, new: &NewEni) -> Result<EniInfo, Ec2Error> {
        self.ec2()?.create_eni(new).await
    }
    async fn attach(&self, eni: &str, instance_id: &str, device_index: u32) -> Result<String, Ec2Error> {
        self.ec2()?.attach(eni, instance_id, device_index).await
    }
    async fn delete_on_termination(&self, eni: &str, attachment_id: &str) -> Result<(), Ec2Error> {
        self.ec2()?.delete_on_termination(eni, attachment_id).await
    }
    async fn assign(&self, eni: &str, count: u32, prefixes: bool) -> Result<Vec<Cidr>, Ec2Error> {
        self.ec2()?.assign(eni, count, prefixes).await
    }
    async fn unassign(&self, eni: &str, cidrs: &[Cidr]) -> Result<(), Ec2Error> {
        self.ec2()?.unassign(eni, cidrs).await
    }
    async fn assign_ipv6_prefix(&self, eni: &str) -> Result<Cidr6, Ec2Error> {
        self.ec2()?.assign_ipv6_prefix(eni).await
    }
    async fn create_tags(
        &self,
        eni: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        self.ec2()?.create_tags(eni, tags).await
    }
    async fn detach_and_delete(&self, eni: &str, attachment_id: Option<&str>) -> Result<(), Ec2Error> {
        self.ec2()?.detach_and_delete(eni, attachment_id).await
    }
}
