//! In-memory stand-ins for the node layer's seams (the cloud, the cluster, the host network), so
//! that the startup order, the pool, reconcile and the socket server are tested as a normal user.
//! They keep one log of every call across the three, in order, and note any cloud or cluster call
//! made while the datastore is held. The privileged end-to-end tests run the real clients against
//! vpcsim; these fakes only answer what the node layer asks, the way EC2, IMDS and the API server
//! would.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

use crate::{
    cloud::{
        calls::Calls,
        ec2::{Attachment, Ec2Error, EniInfo, InterfaceType, NewEni, SubnetInfo, TypeInfo},
        imds::{Identity, ImdsEni, ImdsFailure, Ipv6View},
        Cloud,
    },
    config::Config,
    ipam::model::{Cidr, Cidr6},
    kube::{
        client::{EniConfig, KubeError, NodeInfo, PodInfo},
        cninode::Feature,
        sgp::SecurityGroupPolicy,
        Cluster,
    },
    net::{eni::EniLink, host::Host, netlink::NetError, snat},
    observe::agent::Metrics,
    sync::lock,
};

use super::{
    error::NodeError,
    owner::Owner,
    startup::{self, Inputs},
    state::{Board, Shared},
};

/// The calls of all three fakes, in order.
#[derive(Default)]
pub struct World {
    log: Mutex<Vec<String>>,
    owner: Mutex<Option<Owner>>,
    under_lock: Mutex<Vec<String>>,
}

impl World {
    fn note(&self, call: String) {
        if lock(&self.owner).as_ref().is_some_and(Owner::is_held) {
            lock(&self.under_lock).push(call.clone());
        }
        lock(&self.log).push(call);
    }
    /// Every call so far, oldest first (`ec2 CreateNetworkInterface`, `kube add_feature ...`).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.log).clone()
    }
    pub fn calls_to(&self, prefix: &str) -> Vec<String> {
        self.calls().into_iter().filter(|c| c.starts_with(prefix)).collect()
    }
    /// Cloud and cluster calls made while the datastore was held (must stay empty).
    pub fn under_lock(&self) -> Vec<String> {
        lock(&self.under_lock).clone()
    }
}

pub const INSTANCE: &str = "i-0000000000000001";
pub const PRIMARY_ENI: &str = "eni-primary";
pub const PRIMARY_MAC: &str = "02:00:00:00:00:00";
pub const NODE_SUBNET: &str = "subnet-node";
pub const POD_SUBNET: &str = "subnet-pods";
pub const NODE: &str = "node-1";

fn cidr(s: &str) -> Cidr {
    crate::cloud::imds::parse_cidr(s).unwrap_or(Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix_len: 0 })
}

/// One ENI in the fake EC2.
#[derive(Clone, Debug)]
pub struct FakeEni {
    pub info: EniInfo,
    pub subnet_cidr: Cidr,
}

#[derive(Default)]
struct Ec2State {
    enis: BTreeMap<String, FakeEni>,
    subnets: BTreeMap<String, Cidr>,
    subnet_tags: BTreeMap<String, BTreeMap<String, String>>,
    /// The next free host offset per subnet.
    next_host: BTreeMap<String, u32>,
    serial: u32,
    /// EC2 error codes to answer, by action, until cleared.
    failing: BTreeMap<String, String>,
    /// ENIs IMDS does not show yet (it lags behind EC2).
    imds_lags: std::collections::BTreeSet<String>,
    /// IMDS does not show IPv6 prefixes yet (it lags behind AssignIpv6Addresses).
    ipv6_imds_lags: bool,
}

/// EC2 and IMDS for one m5.large instance (3 ENIs, 10 addresses each, trunking) in a VPC with a
/// node subnet (10.0.0.0/24) and a pod subnet (100.64.0.0/24).
pub struct FakeCloud {
    world: Arc<World>,
    state: Mutex<Ec2State>,
}

impl FakeCloud {
    pub fn new(world: Arc<World>) -> Self {
        let cloud = Self { world, state: Mutex::default() };
        {
            let mut s = lock(&cloud.state);
            s.subnets.insert(NODE_SUBNET.into(), cidr("10.0.0.0/24"));
            s.subnets.insert(POD_SUBNET.into(), cidr("100.64.0.0/24"));
        }
        let primary = cloud.add_eni(NODE_SUBNET, vec!["sg-node".into()], InterfaceType::Interface, 0);
        let mut s = lock(&cloud.state);
        if let Some(mut e) = s.enis.remove(&primary) {
            e.info.id = PRIMARY_ENI.into();
            e.info.mac = PRIMARY_MAC.into();
            if let Some(a) = &mut e.info.attachment {
                a.device_index = 0;
            }
            s.enis.insert(PRIMARY_ENI.into(), e);
        }
        drop(s);
        cloud
    }

    /// Another subnet of the VPC in the node's AZ, with tags.
    pub fn add_subnet(&self, id: &str, cidr_text: &str, tags: &[(&str, &str)]) {
        let mut s = lock(&self.state);
        s.subnets.insert(id.into(), cidr(cidr_text));
        self.tag_subnet_locked(&mut s, id, tags);
    }
    pub fn tag_subnet(&self, id: &str, tags: &[(&str, &str)]) {
        let mut s = lock(&self.state);
        self.tag_subnet_locked(&mut s, id, tags);
    }
    fn tag_subnet_locked(&self, s: &mut Ec2State, id: &str, tags: &[(&str, &str)]) {
        let t = s.subnet_tags.entry(id.into()).or_default();
        t.extend(tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    }

    /// Answers `action` with EC2's error `code` until [`Self::heal`].
    pub fn fail(&self, action: &str, code: &str) {
        lock(&self.state).failing.insert(action.into(), code.into());
    }
    pub fn heal(&self, action: &str) {
        lock(&self.state).failing.remove(action);
    }
    /// IMDS does not show `eni` (attached): it lags behind EC2.
    /// IMDS shows no IPv6 prefix until told otherwise, as after an assignment moments ago.
    pub fn ipv6_imds_lags(&self) {
        lock(&self.state).ipv6_imds_lags = true;
    }

    pub fn imds_lags_behind(&self, eni: &str) {
        lock(&self.state).imds_lags.insert(eni.into());
    }

    /// An ENI someone else attached (the Resource Controller's trunk, an EFA ENI, an ENI another
    /// tool manages) at `device`, with `addresses` secondary addresses; returns its id.
    pub fn attach_foreign(
        &self,
        ty: InterfaceType,
        device: u32,
        addresses: u32,
        tags: &[(&str, &str)],
    ) -> String {
        let id = self.add_eni(NODE_SUBNET, vec!["sg-node".into()], ty, device);
        let mut s = lock(&self.state);
        let cidrs: Vec<Cidr> = (0..addresses).filter_map(|_| next_cidr(&mut s, NODE_SUBNET, 32)).collect();
        if let Some(e) = s.enis.get_mut(&id) {
            e.info.cidrs = cidrs;
            e.info.tags = tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        }
        id
    }

    /// Assigns `n` addresses to `eni` behind the agent's back (another tool, a console user).
    pub fn assign_behind(&self, eni: &str, n: u32) -> Vec<Cidr> {
        let mut s = lock(&self.state);
        let subnet = s.enis.get(eni).map(|e| e.info.subnet_id.clone()).unwrap_or_default();
        let new: Vec<Cidr> = (0..n).filter_map(|_| next_cidr(&mut s, &subnet, 32)).collect();
        if let Some(e) = s.enis.get_mut(eni) {
            e.info.cidrs.extend(&new);
        }
        new
    }
    /// Detaches `eni` behind the agent's back.
    pub fn detach_behind(&self, eni: &str) {
        if let Some(e) = lock(&self.state).enis.get_mut(eni) {
            e.info.attachment = None;
            e.info.status = "available".into();
        }
    }
    pub fn eni(&self, id: &str) -> Option<EniInfo> {
        lock(&self.state).enis.get(id).map(|e| e.info.clone())
    }
    /// The ENIs attached to the instance.
    pub fn attached(&self) -> Vec<EniInfo> {
        lock(&self.state)
            .enis
            .values()
            .filter(|e| e.info.attachment.is_some())
            .map(|e| e.info.clone())
            .collect()
    }

    fn add_eni(&self, subnet: &str, groups: Vec<String>, ty: InterfaceType, device: u32) -> String {
        let mut s = lock(&self.state);
        s.serial += 1;
        let n = s.serial;
        let primary_ip = next_cidr(&mut s, subnet, 32).map(|c| c.addr);
        let id = format!("eni-{n:04}");
        let info = EniInfo {
            id: id.clone(),
            mac: format!("02:00:00:00:01:{n:02x}"),
            subnet_id: subnet.into(),
            security_groups: groups,
            interface_type: ty,
            description: String::new(),
            status: "in-use".into(),
            tags: BTreeMap::new(),
            attachment: Some(Attachment {
                id: format!("attach-{n:04}"),
                instance_id: INSTANCE.into(),
                device_index: device,
                status: "attached".into(),
            }),
            primary_ip,
            cidrs: Vec::new(),
            ipv6_prefixes: Vec::new(),
        };
        let subnet_cidr = s.subnets.get(subnet).copied().unwrap_or(cidr("0.0.0.0/0"));
        s.enis.insert(id.clone(), FakeEni { info, subnet_cidr });
        id
    }

    fn call(&self, action: &'static str, what: String) -> Result<(), Ec2Error> {
        self.world.note(format!("ec2 {action} {what}").trim_end().to_owned());
        match lock(&self.state).failing.get(action) {
            Some(code) => {
                Err(Ec2Error { action, code: Some(code.clone()), message: "injected by the test".into() })
            }
            None => Ok(()),
        }
    }

    fn imds(&self) -> Result<(), ImdsFailure> {
        self.world.note("imds".into());
        Ok(())
    }
}

fn not_found(action: &'static str, id: &str) -> Ec2Error {
    Ec2Error {
        action,
        code: Some("InvalidNetworkInterfaceID.NotFound".into()),
        message: format!("{id} does not exist"),
    }
}

/// The next free /32 or 16-aligned /28 in `subnet`.
fn next_cidr(s: &mut Ec2State, subnet: &str, prefix_len: u8) -> Option<Cidr> {
    let subnet_cidr = *s.subnets.get(subnet)?;
    let base = subnet_cidr.addr;
    let next = s.next_host.entry(subnet.to_owned()).or_insert(10);
    let size = if prefix_len == 28 { 16 } else { 1 };
    let offset = next.div_ceil(size) * size;
    *next = offset + size;
    (offset + size < subnet_cidr.size())
        .then(|| Cidr { addr: Ipv4Addr::from(u32::from(base) + offset), prefix_len })
}

fn imds_view(e: &FakeEni) -> Option<ImdsEni> {
    let a = e.info.attachment.as_ref()?;
    Some(ImdsEni {
        mac: e.info.mac.clone(),
        id: e.info.id.clone(),
        device_number: a.device_index,
        subnet_id: e.info.subnet_id.clone(),
        subnet_cidr: e.subnet_cidr,
        vpc_id: "vpc-1".into(),
        vpc_cidrs: vec![cidr("10.0.0.0/16"), cidr("100.64.0.0/16")],
        primary_ip: e.info.primary_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        secondary_ips: e.info.cidrs.iter().filter(|c| c.prefix_len == 32).map(|c| c.addr).collect(),
        prefixes: e.info.cidrs.iter().filter(|c| c.prefix_len == 28).copied().collect(),
        security_groups: e.info.security_groups.clone(),
    })
}

#[async_trait::async_trait]
impl Cloud for FakeCloud {
    async fn identity(&self) -> Result<Identity, ImdsFailure> {
        self.imds()?;
        Ok(Identity {
            region: "us-west-2".into(),
            availability_zone: "us-west-2a".into(),
            instance_id: INSTANCE.into(),
            instance_type: "m5.large".into(),
            mac: PRIMARY_MAC.into(),
            local_ipv4: Ipv4Addr::new(10, 0, 0, 10),
        })
    }
    async fn attached_enis(&self) -> Result<Vec<ImdsEni>, ImdsFailure> {
        self.imds()?;
        let s = lock(&self.state);
        let mut seen: Vec<ImdsEni> =
            s.enis.values().filter(|e| !s.imds_lags.contains(&e.info.id)).filter_map(imds_view).collect();
        seen.sort_by_key(|e| e.device_number);
        Ok(seen)
    }
    async fn attached_eni(&self, mac: &str) -> Result<Option<ImdsEni>, ImdsFailure> {
        self.imds()?;
        Ok(lock(&self.state).enis.values().filter(|e| e.info.mac == mac).find_map(imds_view))
    }
    async fn primary_security_groups(&self, _mac: &str) -> Result<Vec<String>, ImdsFailure> {
        self.imds()?;
        Ok(vec!["sg-node".into()])
    }
    async fn ipv6(&self, mac: &str) -> Result<Ipv6View, ImdsFailure> {
        self.imds()?;
        let s = lock(&self.state);
        let prefixes = s
            .enis
            .values()
            .find(|e| e.info.mac == mac)
            .filter(|_| !s.ipv6_imds_lags)
            .map(|e| e.info.ipv6_prefixes.clone())
            .unwrap_or_default();
        Ok(Ipv6View { prefixes, ..Ipv6View::default() })
    }

    async fn describe_enis(&self, ids: &[String]) -> Result<Vec<EniInfo>, Ec2Error> {
        self.call("DescribeNetworkInterfaces", ids.join(","))?;
        let s = lock(&self.state);
        Ok(ids.iter().filter_map(|id| s.enis.get(id)).map(|e| e.info.clone()).collect())
    }
    async fn find_enis(&self, filters: &[(&str, &str)]) -> Result<Vec<EniInfo>, Ec2Error> {
        self.call("DescribeNetworkInterfaces", format!("{filters:?}"))?;
        let matches = |e: &EniInfo| {
            filters.iter().all(|(k, v)| match *k {
                "description" => e.description == *v,
                "status" => e.status == *v,
                "vpc-id" => true,
                k => k.strip_prefix("tag:").is_some_and(|t| e.tags.get(t).is_some_and(|x| x == v)),
            })
        };
        Ok(lock(&self.state).enis.values().map(|e| e.info.clone()).filter(matches).collect())
    }
    async fn describe_instance_type(&self, name: &str) -> Result<TypeInfo, Ec2Error> {
        self.call("DescribeInstanceTypes", name.into())?;
        Err(Ec2Error { action: "DescribeInstanceTypes", code: None, message: format!("{name}: unknown") })
    }
    async fn describe_subnets(&self, vpc_id: &str, az: &str) -> Result<Vec<SubnetInfo>, Ec2Error> {
        self.call("DescribeSubnets", format!("{vpc_id} {az}"))?;
        let s = lock(&self.state);
        Ok(s.subnets
            .iter()
            .map(|(id, c)| SubnetInfo {
                id: id.clone(),
                available: c.size().saturating_sub(s.next_host.get(id).copied().unwrap_or(10)),
                tags: s.subnet_tags.get(id).cloned().unwrap_or_default(),
            })
            .collect())
    }
    async fn used_device_indexes(&self, _instance_id: &str) -> Result<Vec<u32>, Ec2Error> {
        self.call("DescribeInstances", String::new())?;
        Ok(self.attached().iter().filter_map(|e| e.attachment.as_ref()).map(|a| a.device_index).collect())
    }
    async fn create_eni(&self, new: &NewEni) -> Result<EniInfo, Ec2Error> {
        self.call("CreateNetworkInterface", format!("{} {:?}", new.subnet_id, new.security_groups))?;
        if !lock(&self.state).subnets.contains_key(&new.subnet_id) {
            return Err(Ec2Error {
                action: "CreateNetworkInterface",
                code: Some("InvalidSubnetID.NotFound".into()),
                message: format!("{} does not exist", new.subnet_id),
            });
        }
        let id = self.add_eni(&new.subnet_id, new.security_groups.clone(), InterfaceType::Interface, 0);
        let mut s = lock(&self.state);
        let len = if new.prefixes { 28 } else { 32 };
        let cidrs: Vec<Cidr> =
            (0..new.count).filter_map(|_| next_cidr(&mut s, &new.subnet_id, len)).collect();
        let e = s.enis.get_mut(&id).ok_or_else(|| not_found("CreateNetworkInterface", &id))?;
        e.info.attachment = None;
        e.info.status = "available".into();
        e.info.description = new.description.clone();
        e.info.tags = new.tags.clone();
        e.info.cidrs = cidrs;
        Ok(e.info.clone())
    }
    async fn attach(&self, eni: &str, instance_id: &str, device_index: u32) -> Result<String, Ec2Error> {
        self.call("AttachNetworkInterface", format!("{eni} {device_index}"))?;
        let mut s = lock(&self.state);
        let taken = s
            .enis
            .values()
            .filter_map(|e| e.info.attachment.as_ref())
            .any(|a| a.device_index == device_index);
        if taken {
            return Err(Ec2Error {
                action: "AttachNetworkInterface",
                code: Some("InvalidParameterValue".into()),
                message: format!("Instance '{instance_id}' already has an interface attached at device index '{device_index}'."),
            });
        }
        let e = s.enis.get_mut(eni).ok_or_else(|| not_found("AttachNetworkInterface", eni))?;
        let id = format!("attach-{eni}");
        e.info.attachment = Some(Attachment {
            id: id.clone(),
            instance_id: instance_id.into(),
            device_index,
            status: "attached".into(),
        });
        e.info.status = "in-use".into();
        Ok(id)
    }
    async fn delete_on_termination(&self, eni: &str, _attachment_id: &str) -> Result<(), Ec2Error> {
        self.call("ModifyNetworkInterfaceAttribute", eni.into())
    }
    async fn assign_ipv6_prefix(&self, eni: &str) -> Result<Cidr6, Ec2Error> {
        self.call("AssignIpv6Addresses", format!("{eni} /80"))?;
        let mut s = lock(&self.state);
        s.serial += 1;
        let n = s.serial;
        let e = s.enis.get_mut(eni).ok_or_else(|| not_found("AssignIpv6Addresses", eni))?;
        let prefix = Cidr6 {
            addr: std::net::Ipv6Addr::new(0x2600, 0x1f14, 0xabc, 0xde01, n as u16, 0, 0, 0),
            prefix_len: 80,
        };
        e.info.ipv6_prefixes.push(prefix);
        Ok(prefix)
    }
    async fn assign(&self, eni: &str, count: u32, prefixes: bool) -> Result<Vec<Cidr>, Ec2Error> {
        self.call(
            "AssignPrivateIpAddresses",
            format!("{eni} {count}{}", if prefixes { " /28" } else { "" }),
        )?;
        let mut s = lock(&self.state);
        let subnet = s
            .enis
            .get(eni)
            .map(|e| e.info.subnet_id.clone())
            .ok_or_else(|| not_found("AssignPrivateIpAddresses", eni))?;
        let len = if prefixes { 28 } else { 32 };
        let new: Vec<Cidr> = (0..count).filter_map(|_| next_cidr(&mut s, &subnet, len)).collect();
        if new.len() < count as usize {
            return Err(Ec2Error {
                action: "AssignPrivateIpAddresses",
                code: Some("InsufficientFreeAddressesInSubnet".into()),
                message: format!("{subnet} is full"),
            });
        }
        if let Some(e) = s.enis.get_mut(eni) {
            e.info.cidrs.extend(&new);
        }
        Ok(new)
    }
    async fn unassign(&self, eni: &str, cidrs: &[Cidr]) -> Result<(), Ec2Error> {
        self.call("UnassignPrivateIpAddresses", format!("{eni} {}", cidrs.len()))?;
        if let Some(e) = lock(&self.state).enis.get_mut(eni) {
            e.info.cidrs.retain(|c| !cidrs.contains(c));
        }
        Ok(())
    }
    async fn create_tags(&self, eni: &str, tags: &BTreeMap<String, String>) -> Result<(), Ec2Error> {
        self.call("CreateTags", eni.into())?;
        if let Some(e) = lock(&self.state).enis.get_mut(eni) {
            e.info.tags.extend(tags.clone());
        }
        Ok(())
    }
    async fn detach_and_delete(&self, eni: &str, _attachment_id: Option<&str>) -> Result<(), Ec2Error> {
        self.call("DeleteNetworkInterface", eni.into())?;
        lock(&self.state).enis.remove(eni);
        Ok(())
    }
}

/// The API server as far as the node layer reads and writes it.
#[derive(Default)]
pub struct ClusterState {
    pub node: NodeInfo,
    pub eni_configs: BTreeMap<String, EniConfig>,
    /// The CNINode's features (None: the Resource Controller has not created it yet).
    pub cninode: Option<Vec<Feature>>,
    /// Events on the Node, as (reason, message).
    pub events: Vec<(String, String)>,
    pub pods: BTreeMap<(String, String), PodInfo>,
}

pub struct FakeCluster {
    world: Arc<World>,
    pub state: Mutex<ClusterState>,
}

impl FakeCluster {
    pub fn new(world: Arc<World>) -> Self {
        let node = NodeInfo { name: NODE.into(), uid: "uid-node-1".into(), ..Default::default() };
        Self {
            world,
            state: Mutex::new(ClusterState { node, cninode: Some(Vec::new()), ..Default::default() }),
        }
    }
    pub fn events(&self) -> Vec<(String, String)> {
        lock(&self.state).events.clone()
    }
}

fn missing(what: String) -> KubeError {
    KubeError::NotFound { what }
}

#[async_trait::async_trait]
impl Cluster for FakeCluster {
    async fn node(&self, name: &str) -> Result<NodeInfo, KubeError> {
        self.world.note(format!("kube node {name}"));
        let s = lock(&self.state);
        (s.node.name == name).then(|| s.node.clone()).ok_or_else(|| missing(format!("node {name}")))
    }
    async fn eni_config(&self, name: &str) -> Result<EniConfig, KubeError> {
        self.world.note(format!("kube eni_config {name}"));
        lock(&self.state).eni_configs.get(name).cloned().ok_or_else(|| missing(format!("ENIConfig `{name}`")))
    }
    async fn features(&self, node: &str) -> Result<(Vec<Feature>, String), KubeError> {
        let s = lock(&self.state);
        let features = s.cninode.clone().ok_or_else(|| missing(format!("CNINode `{node}`")))?;
        let shown: Vec<String> = features.iter().map(|f| f.name.clone()).collect();
        self.world.note(format!("kube features {node} -> [{}]", shown.join(",")));
        Ok((features, "1".into()))
    }
    async fn add_feature(&self, node: &str, feature: &Feature) -> Result<Vec<Feature>, KubeError> {
        self.world.note(format!("kube add_feature {node} {}", feature.name));
        let mut s = lock(&self.state);
        let features = s.cninode.as_mut().ok_or_else(|| missing(format!("CNINode `{node}`")))?;
        features.retain(|f| f.name != feature.name);
        features.push(feature.clone());
        Ok(features.clone())
    }
    async fn security_group_policies(&self, namespace: &str) -> Result<Vec<SecurityGroupPolicy>, KubeError> {
        self.world.note(format!("kube security_group_policies {namespace}"));
        Ok(Vec::new())
    }
    async fn pod(&self, namespace: &str, name: &str) -> Result<PodInfo, KubeError> {
        self.world.note(format!("kube pod {namespace}/{name}"));
        let key = (namespace.to_owned(), name.to_owned());
        lock(&self.state).pods.get(&key).cloned().ok_or_else(|| missing(format!("pod {namespace}/{name}")))
    }
    async fn annotate_pod_ip(&self, namespace: &str, name: &str, ip: &str) -> Result<(), KubeError> {
        self.world.note(format!("kube annotate_pod_ip {namespace}/{name} {ip}"));
        let key = (namespace.to_owned(), name.to_owned());
        let mut state = lock(&self.state);
        let pod = state.pods.get_mut(&key).ok_or_else(|| missing(format!("pod {namespace}/{name}")))?;
        pod.pod_ips = Some(ip.to_owned());
        Ok(())
    }
    async fn clear_pod_ip(&self, namespace: &str, name: &str, released: &str) -> Result<bool, KubeError> {
        self.world.note(format!("kube clear_pod_ip {namespace}/{name} {released}"));
        let key = (namespace.to_owned(), name.to_owned());
        let mut state = lock(&self.state);
        match state.pods.get_mut(&key) {
            Some(p) if p.pod_ips.as_deref() == Some(released) => {
                p.pod_ips = Some(String::new());
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn event(
        &self,
        _node: &NodeInfo,
        _warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        self.world.note(format!("kube event {reason}"));
        lock(&self.state).events.push((reason.into(), message.into()));
        Ok(())
    }
    fn watch_pods(&self, _node: &str) -> BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>> {
        Box::pin(futures::stream::pending())
    }
}

/// The host: every MAC has a link at once; what the node layer sets up is recorded.
pub struct FakeHost {
    world: Arc<World>,
    links: Mutex<BTreeMap<String, u32>>,
    /// The ENIs set up, by MAC, with their route table.
    pub enis: Mutex<BTreeMap<String, u32>>,
    pub snat: Mutex<Option<snat::Plan>>,
}

impl FakeHost {
    pub fn new(world: Arc<World>) -> Self {
        Self { world, links: Mutex::default(), enis: Mutex::default(), snat: Mutex::default() }
    }
    fn index(&self, mac: &str) -> u32 {
        let mut links = lock(&self.links);
        let next = u32::try_from(links.len()).unwrap_or(0) + 2;
        *links.entry(mac.to_owned()).or_insert(next)
    }
}

#[async_trait::async_trait]
impl Host for FakeHost {
    async fn set_mtu(&self, mac: &str, mtu: u32) -> Result<u32, NetError> {
        self.world.note(format!("host set_mtu {mac} {mtu}"));
        Ok(self.index(mac))
    }
    fn enable_ipv4_forwarding(&self) -> Result<bool, NetError> {
        Ok(false)
    }
    fn enable_ipv6(&self, primary_if: &str) -> Result<(), NetError> {
        self.world.note(format!("host enable_ipv6 {primary_if}"));
        Ok(())
    }
    fn disable_tcp_early_demux(&self) -> Result<bool, NetError> {
        self.world.note("host disable_tcp_early_demux".into());
        Ok(true)
    }
    async fn move_local_rule(&self, to: u32, ipv6: bool) -> Result<(), NetError> {
        self.world.note(format!("host move_local_rule {to}{}", if ipv6 { " ipv6" } else { "" }));
        Ok(())
    }
    async fn link_by_mac(&self, mac: &str) -> Result<Option<(u32, String)>, NetError> {
        let index = self.index(mac);
        Ok(Some((index, format!("eth{index}"))))
    }
    async fn links_by_mac(&self) -> Result<BTreeMap<String, String>, NetError> {
        Ok(lock(&self.links).iter().map(|(m, i)| (m.clone(), format!("eth{i}"))).collect())
    }
    async fn setup_eni(&self, eni: &EniLink, _mtu: u32) -> Result<u32, NetError> {
        self.world.note(format!("host setup_eni {} table {}", eni.mac, eni.table()));
        lock(&self.enis).insert(eni.mac.clone(), eni.table());
        Ok(self.index(&eni.mac))
    }
    async fn remove_rule(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        self.world.note(format!("host remove_rule {ip}"));
        Ok(())
    }
    async fn apply_snat(&self, plan: &snat::Plan) -> Result<(), snat::SnatError> {
        self.world.note("host apply_snat".into());
        *lock(&self.snat) = Some(plan.clone());
        Ok(())
    }
    async fn teardown_pod(&self, ip: std::net::IpAddr) -> Result<(), NetError> {
        self.world.note(format!("host teardown_pod {ip}"));
        Ok(())
    }
}

/// A node made of the three fakes, with its run directory and checkpoint in a fresh temporary
/// directory (removed on drop).
pub struct FakeNode {
    pub world: Arc<World>,
    pub cloud: Arc<FakeCloud>,
    pub kube: Arc<FakeCluster>,
    pub host: Arc<FakeHost>,
    pub dir: PathBuf,
}

impl Default for FakeNode {
    fn default() -> Self {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("eniguard-node-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        let world = Arc::new(World::default());
        Self {
            cloud: Arc::new(FakeCloud::new(world.clone())),
            kube: Arc::new(FakeCluster::new(world.clone())),
            host: Arc::new(FakeHost::new(world.clone())),
            world,
            dir,
        }
    }
}

impl FakeNode {
    /// The configuration from these variables, plus the node's name and the checkpoint's path.
    pub fn config(&self, vars: &[(&str, &str)]) -> Config {
        let store = self.dir.join("ipam.json").display().to_string();
        let mut all: BTreeMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        all.insert("MY_NODE_NAME".into(), NODE.into());
        all.insert("AWS_VPC_K8S_CNI_BACKING_STORE".into(), store);
        match Config::from_lookup(|k| all.get(k).cloned()) {
            Ok(c) => c,
            Err(e) => panic!("test configuration: {e}"),
        }
    }

    /// Runs the startup sequence with these variables; from then on the world watches the
    /// datastore's lock.
    pub async fn start(&self, vars: &[(&str, &str)]) -> Result<Arc<Shared>, NodeError> {
        let inputs = Inputs {
            cfg: self.config(vars),
            run_dir: self.dir.clone(),
            cloud: self.cloud.clone(),
            kube: self.kube.clone(),
            net: self.host.clone(),
            calls: Calls::default(),
            metrics: Metrics::default(),
            board: Arc::new(Board::default()),
            guard: None,
        };
        let shared = startup::start(inputs).await?;
        *lock(&self.world.owner) = Some(shared.owner.clone());
        Ok(shared)
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every address the datastore would hand out, taken by pods `pod-0`, `pod-1`, ...; returns them.
pub async fn take_all(shared: &Shared) -> BTreeSet<Ipv4Addr> {
    shared
        .owner
        .with(|ipam| {
            let mut got = BTreeSet::new();
            for n in 0.. {
                let key = crate::ipam::model::AllocKey {
                    network_name: "aws-cni".into(),
                    container_id: format!("c{n}"),
                    if_name: "eth0".into(),
                };
                let pod =
                    crate::ipam::model::PodRef { namespace: "default".into(), name: format!("pod-{n}") };
                match ipam.assign(&key, &pod, crate::ipam::model::now()) {
                    Ok(a) => got.insert(a.ip),
                    Err(_) => break,
                };
            }
            got
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check the other tests rely on: a call made while the datastore is held is noted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_under_the_datastore_lock_is_noted() {
        let node = FakeNode::default();
        let shared = node.start(&[]).await.unwrap();
        assert!(node.world.under_lock().is_empty());
        shared.owner.peek(|_| node.world.note("ec2 DescribeNetworkInterfaces".into()));
        assert_eq!(node.world.under_lock(), ["ec2 DescribeNetworkInterfaces"]);
    }
}
