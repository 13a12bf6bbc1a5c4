//! EC2 through aws-sdk-ec2: the calls upstream's ipamd makes (pkg/awsutils/awsutils.go upstream),
//! each counted, each error reduced to its action, EC2 error code and message. Throttling
//! (`RequestLimitExceeded`) and 5xx are retried by the SDK's retryer as ENIGUARD_EC2_PACING says
//! ([`retry_config`]); the waits upstream adds itself (detach before delete) are here too.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use aws_sdk_ec2::{
    config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region},
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{
        Filter, NetworkInterface, NetworkInterfaceAttachmentChanges, ResourceType, Tag, TagSpecification,
    },
    Client,
};

use super::calls::Calls;
use crate::{
    config::Ec2Pacing,
    ipam::model::{Cidr, Cidr6},
};

/// A failed EC2 call.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("EC2 {action}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct Ec2Error {
    pub action: &'static str,
    /// EC2's error code (`InsufficientFreeAddressesInSubnet`, ...), when EC2 answered.
    pub code: Option<String>,
    pub message: String,
}

impl Ec2Error {
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
    pub(crate) fn local(action: &'static str, message: impl Into<String>) -> Self {
        Self { action, code: None, message: message.into() }
    }
}

pub const SUBNET_FULL: &[&str] = &["InsufficientFreeAddressesInSubnet", "InsufficientCidrBlocks"];
const NOT_FOUND: &str = "InvalidNetworkInterfaceID.NotFound";

/// An ENI as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniInfo {
    pub id: String,
    pub mac: String,
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub interface_type: InterfaceType,
    pub description: String,
    /// `available`, `in-use`, `attaching`, ...
    pub status: String,
    pub tags: BTreeMap<String, String>,
    pub attachment: Option<Attachment>,
    pub primary_ip: Option<Ipv4Addr>,
    pub cidrs: Vec<Cidr>,
    /// Delegated IPv6 prefixes (IPv6 mode's /80 on the primary ENI).
    pub ipv6_prefixes: Vec<Cidr6>,
}

/// EC2's `InterfaceType` of an ENI, read once here; the rest of the agent matches on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterfaceType {
    /// An ordinary ENI (EC2 says `interface`, or nothing).
    Interface,
    /// The Resource Controller's trunk for branch ENIs (security groups for pods).
    Trunk,
    /// An EFA ENI (it has an IP stack; upstream never hands out its addresses).
    Efa,
    /// An EFA-only ENI (no IP stack).
    EfaOnly,
    /// A branch ENI, reached through a trunk's VLAN.
    Branch,
    /// Anything else EC2 may report (`nat_gateway`, `lambda`, ...), kept as it said.
    Other(String),
}

impl InterfaceType {
    pub fn parse(s: &str) -> Self {
        match s {
            "" | "interface" => Self::Interface,
            "trunk" => Self::Trunk,
            "efa" => Self::Efa,
            "efa-only" => Self::EfaOnly,
            "branch" => Self::Branch,
            other => Self::Other(other.to_owned()),
        }
    }
    /// EC2's name for it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Interface => "interface",
            Self::Trunk => "trunk",
            Self::Efa => "efa",
            Self::EfaOnly => "efa-only",
            Self::Branch => "branch",
            Self::Other(s) => s,
        }
    }
}

impl std::fmt::Display for InterfaceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    pub instance_id: String,
    pub device_index: u32,
    pub status: String,
}

/// A subnet as DescribeSubnets shows it (what subnet discovery looks at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetInfo {
    pub id: String,
    /// AvailableIpAddressCount.
    pub available: u32,
    pub tags: BTreeMap<String, String>,
}

/// What DescribeInstanceTypes says about a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub hypervisor: String,
    pub bare_metal: bool,
}

/// A new ENI's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEni {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// Secondary addresses, or /28 prefixes with prefix delegation.
    pub count: u32,
    pub prefixes: bool,
}

/// Upstream's AWS_EC2_ENDPOINT and HTTP_TIMEOUT.
#[derive(Clone, Debug)]
pub struct Ec2Options {
    /// The EC2 endpoint (None: the SDK's resolution, `AWS_ENDPOINT_URL_EC2` included).
    pub endpoint: Option<String>,
    /// Per request attempt.
    pub attempt_timeout: Duration,
    pub pacing: Ec2Pacing,
}

impl Ec2Options {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self { endpoint: cfg.ec2_endpoint.clone(), attempt_timeout: cfg.http_timeout, pacing: cfg.ec2_pacing }
    }
}

/// The SDK's retry settings for `pacing`. EC2's buckets are shared by the whole account and
/// refill at a few tokens a second, so a fleet that joins at once waits its turn: `Paced` retries
/// a throttled call soon and often (full jitter, at most 2 s apart), so each token the bucket
/// refills is taken within about a second by someone who needs it, and a node's call survives a
/// wait of about 30 s; the SDK's retry quota (500 tokens, 5 per throttled retry, 10 per 5xx or
/// timeout) still stops a process that keeps failing. `Standard` is upstream's client: 3
/// attempts, waits doubling from 1 s to 20 s, after which the caller's own loop starts over.
pub fn retry_config(pacing: Ec2Pacing) -> RetryConfig {
    match pacing {
        Ec2Pacing::Paced => RetryConfig::standard()
            .with_max_attempts(30)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(2)),
        Ec2Pacing::Adaptive => RetryConfig::adaptive().with_max_attempts(10),
        Ec2Pacing::Standard => RetryConfig::standard(),
    }
}

#[derive(Clone, Debug)]
pub struct Ec2 {
    client: Client,
    calls: Calls,
}

impl Ec2 {
    /// The client from the standard configuration chain (`AWS_ENDPOINT_URL_EC2`, credentials),
    /// in `region` (from IMDS unless `AWS_REGION` says otherwise, as upstream), with `options`.
    pub async fn new(region: &str, calls: Calls, options: &Ec2Options) -> Self {
        let region =
            std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()).unwrap_or_else(|| region.to_owned());
        let mut sdk = aws_config::defaults(BehaviorVersion::latest());
        if let Some(url) = &options.endpoint {
            sdk = sdk.endpoint_url(url);
        }
        let sdk = sdk
            .region(Region::new(region))
            .http_client(super::http_client())
            .retry_config(retry_config(options.pacing))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(options.attempt_timeout)
                    .connect_timeout(Duration::from_secs(3))
                    .build(),
            )
            .load()
            .await;
        Self { client: Client::new(&sdk), calls }
    }

    async fn call<T, E>(
        &self,
        action: &'static str,
        fut: impl std::future::Future<Output = Result<T, SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>>,
    ) -> Result<T, Ec2Error>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = std::time::Instant::now();
        let result = fut.await;
        let took = started.elapsed();
        match result {
            Ok(v) => {
                self.calls.record("ec2", action, "ok", took);
                Ok(v)
            }
            Err(e) => {
                let code = e.code().map(str::to_owned);
                self.calls.record("ec2", action, code.as_deref().unwrap_or("error"), took);
                let message = match e.message() {
                    Some(m) => m.to_owned(),
                    None => DisplayErrorContext(&e).to_string(),
                };
                Err(Ec2Error { action, code, message })
            }
        }
    }

    /// The ENIs with these ids that EC2 knows (IMDS lags behind a deletion), in one call. Asked
    /// by a `network-interface-id` filter rather than by `NetworkInterfaceIds` (upstream's way):
    /// an id EC2 no longer knows is left out instead of failing the call, and a filtered call
    /// draws on the larger non-mutating bucket (100 / 20 a second) rather than the unfiltered
    /// one (50 / 10) that every node of the account shares.
    pub async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniInfo>, Ec2Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filter = Filter::builder().name("network-interface-id").set_values(Some(ids.to_vec())).build();
        let req = self.client.describe_network_interfaces().filters(filter);
        let out = self.call("DescribeNetworkInterfaces", req.send()).await?;
        Ok(out.network_interfaces().iter().map(eni_info).collect())
    }

    /// ENIs matching `filters` (name → values), every page.
    pub async fn find_enis(&self, filters: &[(&str, &str)]) -> Result<Vec<EniInfo>, Ec2Error> {
        let filters: Vec<Filter> =
            filters.iter().map(|(n, v)| Filter::builder().name(*n).values(*v).build()).collect();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = self
                .client
                .describe_network_interfaces()
                .set_filters(Some(filters.clone()))
                .max_results(1000)
                .set_next_token(token.take());
            let page = self.call("DescribeNetworkInterfaces", req.send()).await?;
            out.extend(page.network_interfaces().iter().map(eni_info));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// The subnets of `vpc_id` in `az` (subnet discovery), every page.
    pub async fn describe_subnets(&self, vpc_id: &str, az: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        let filters = vec![
            Filter::builder().name("vpc-id").values(vpc_id).build(),
            Filter::builder().name("availability-zone").values(az).build(),
        ];
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = self
                .client
                .describe_subnets()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take());
            let page = self.call("DescribeSubnets", req.send()).await?;
            out.extend(page.subnets().iter().map(|s| {
                SubnetInfo {
                    id: s.subnet_id().unwrap_or_default().to_owned(),
                    available: s
                        .available_ip_address_count()
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    tags: s
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
                        .collect(),
                }
            }));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn describe_instance_type(&self, name: &str) -> Result<TypeInfo, Ec2Error> {
        let req = self.client.describe_instance_types().instance_types(name.into());
        let out = self.call("DescribeInstanceTypes", req.send()).await?;
        let t = out
            .instance_types()
            .first()
            .ok_or_else(|| Ec2Error::local("DescribeInstanceTypes", format!("no such type {name}")))?;
        let net = t.network_info();
        let num = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        Ok(TypeInfo {
            max_enis: num(net.and_then(|n| n.maximum_network_interfaces())),
            ipv4_per_eni: num(net.and_then(|n| n.ipv4_addresses_per_interface())),
            hypervisor: t.hypervisor().map(|h| h.as_str().to_owned()).unwrap_or_default(),
            bare_metal: t.bare_metal().unwrap_or(false),
        })
    }

    /// Device indexes in use on the instance (upstream asks DescribeInstances before attaching).
    pub async fn used_device_indexes(&self, instance_id: &str) -> Result<Vec<u32>, Ec2Error> {
        let req = self.client.describe_instances().instance_ids(instance_id);
        let out = self.call("DescribeInstances", req.send()).await?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.network_interfaces())
            .filter_map(|n| n.attachment().and_then(|a| a.device_index()))
            .filter_map(|d| u32::try_from(d).ok())
            .collect())
    }

    pub async fn create_eni(&self, new: &NewEni) -> Result<EniInfo, Ec2Error> {
        let count = i32::try_from(new.count).unwrap_or(i32::MAX);
        let mut req = self
            .client
            .create_network_interface()
            .subnet_id(&new.subnet_id)
            .set_groups(Some(new.security_groups.clone()))
            .description(&new.description)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .set_tags(Some(tags(&new.tags)))
                    .build(),
            );
        if new.count > 0 {
            req = if new.prefixes {
                req.ipv4_prefix_count(count)
            } else {
                req.secondary_private_ip_address_count(count)
            };
        }
        let out = self.call("CreateNetworkInterface", req.send()).await?;
        out.network_interface()
            .map(eni_info)
            .ok_or_else(|| Ec2Error::local("CreateNetworkInterface", "no interface in the answer"))
    }

    /// Attaches and returns the attachment id.
    pub async fn attach(&self, eni: &str, instance_id: &str, device_index: u32) -> Result<String, Ec2Error> {
        let req = self
            .client
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(instance_id)
            .device_index(i32::try_from(device_index).unwrap_or(i32::MAX));
        let out = self.call("AttachNetworkInterface", req.send()).await?;
        out.attachment_id()
            .map(str::to_owned)
            .ok_or_else(|| Ec2Error::local("AttachNetworkInterface", "no attachment id in the answer"))
    }

    pub async fn delete_on_termination(&self, eni: &str, attachment_id: &str) -> Result<(), Ec2Error> {
        let change = NetworkInterfaceAttachmentChanges::builder()
            .attachment_id(attachment_id)
            .delete_on_termination(true)
            .build();
        let req =
            self.client.modify_network_interface_attribute().network_interface_id(eni).attachment(change);
        self.call("ModifyNetworkInterfaceAttribute", req.send()).await.map(|_| ())
    }

    /// Assigns `count` secondary addresses or /28 prefixes; returns what EC2 assigned.
    pub async fn assign(&self, eni: &str, count: u32, prefixes: bool) -> Result<Vec<Cidr>, Ec2Error> {
        let n = i32::try_from(count).unwrap_or(i32::MAX);
        let req = self.client.assign_private_ip_addresses().network_interface_id(eni);
        let req = if prefixes { req.ipv4_prefix_count(n) } else { req.secondary_private_ip_address_count(n) };
        let out = self.call("AssignPrivateIpAddresses", req.send()).await?;
        let ips = out
            .assigned_private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address()?.parse().ok())
            .map(Cidr::host);
        let pfx =
            out.assigned_ipv4_prefixes().iter().filter_map(|p| super::imds::parse_cidr(p.ipv4_prefix()?));
        Ok(ips.chain(pfx).collect())
    }

    /// Assigns one IPv6 /80 prefix (`Ipv6PrefixCount=1`, upstream's IPv6 mode) and returns it.
    pub async fn assign_ipv6_prefix(&self, eni: &str) -> Result<Cidr6, Ec2Error> {
        let req = self.client.assign_ipv6_addresses().network_interface_id(eni).ipv6_prefix_count(1);
        let out = self.call("AssignIpv6Addresses", req.send()).await?;
        out.assigned_ipv6_prefixes().iter().find_map(|p| p.parse().ok()).ok_or_else(|| Ec2Error {
            action: "AssignIpv6Addresses",
            code: None,
            message: format!("no IPv6 prefix in the answer for {eni}: {:?}", out.assigned_ipv6_prefixes()),
        })
    }

    pub async fn unassign(&self, eni: &str, cidrs: &[Cidr]) -> Result<(), Ec2Error> {
        let (pfx, ips): (Vec<Cidr>, Vec<Cidr>) = cidrs.iter().partition(|c| c.is_prefix());
        let mut req = self.client.unassign_private_ip_addresses().network_interface_id(eni);
        if !ips.is_empty() {
            req = req.set_private_ip_addresses(Some(ips.iter().map(|c| c.addr.to_string()).collect()));
        }
        if !pfx.is_empty() {
            req = req.set_ipv4_prefixes(Some(pfx.iter().map(ToString::to_string).collect()));
        }
        self.call("UnassignPrivateIpAddresses", req.send()).await.map(|_| ())
    }

    pub async fn create_tags(
        &self,
        eni: &str,
        tags_to_set: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        let req = self.client.create_tags().resources(eni).set_tags(Some(tags(tags_to_set)));
        self.call("CreateTags", req.send()).await.map(|_| ())
    }

    /// Detaches (when attached) and deletes, waiting between as upstream: the delete is retried
    /// with backoff (500 ms doubling, up to 12 tries) while the detach completes; an ENI that is
    /// already gone counts as deleted.
    pub async fn detach_and_delete(&self, eni: &str, attachment_id: Option<&str>) -> Result<(), Ec2Error> {
        if let Some(att) = attachment_id {
            let req = self.client.detach_network_interface().attachment_id(att);
            match self.call("DetachNetworkInterface", req.send()).await {
                Ok(_) => {}
                Err(e) if e.is("InvalidAttachmentID.NotFound") => {}
                Err(e) => return Err(e),
            }
        }
        let mut waits = crate::sync::backoff(Duration::from_millis(500), Duration::from_secs(60), Some(11));
        loop {
            let req = self.client.delete_network_interface().network_interface_id(eni);
            match self.call("DeleteNetworkInterface", req.send()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is(NOT_FOUND) => return Ok(()),
                // Still attached while the detach finishes.
                Err(e) if e.is("InvalidNetworkInterface.InUse") || e.is("IncorrectState") => {
                    let Some(wait) = waits.next() else { return Err(e) };
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn tags(map: &BTreeMap<String, String>) -> Vec<Tag> {
    map.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn eni_info(n: &NetworkInterface) -> EniInfo {
    let s = |v: Option<&str>| v.unwrap_or_default().to_owned();
    let primary_ip = n.private_ip_address().and_then(|ip| ip.parse().ok());
    let secondaries = n
        .private_ip_addresses()
        .iter()
        .filter(|a| a.primary() != Some(true))
        .filter_map(|a| a.private_ip_address()?.parse().ok())
        .filter(|ip| Some(*ip) != primary_ip)
        .map(Cidr::host);
    let prefixes = n.ipv4_prefixes().iter().filter_map(|p| super::imds::parse_cidr(p.ipv4_prefix()?));
    EniInfo {
        id: s(n.network_interface_id()),
        mac: s(n.mac_address()),
        subnet_id: s(n.subnet_id()),
        security_groups: n.groups().iter().filter_map(|g| g.group_id().map(str::to_owned)).collect(),
        interface_type: n
            .interface_type()
            .map_or(InterfaceType::Interface, |t| InterfaceType::parse(t.as_str())),
        description: s(n.description()),
        status: n.status().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        tags: n
            .tag_set()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
            .collect(),
        attachment: n.attachment().map(|a| Attachment {
            id: s(a.attachment_id()),
            instance_id: s(a.instance_id()),
            device_index: a.device_index().and_then(|d| u32::try_from(d).ok()).unwrap_or(0),
            status: a.status().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        }),
        primary_ip,
        cidrs: secondaries.chain(prefixes).collect(),
        ipv6_prefixes: n.ipv6_prefixes().iter().filter_map(|p| p.ipv6_prefix()?.parse().ok()).collect(),
    }
}
