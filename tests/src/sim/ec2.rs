//! The simulated EC2 control plane's state and rules: instance types with their real limits,
//! subnets that run out, ENIs of every type with their own security groups, secondary addresses
//! and /28 prefixes, attachments and device indexes, tags. Every operation either applies whole
//! or fails with the error code EC2 returns; nothing here blocks or sleeps. Attachments take
//! [`Timing`]'s time (`attaching` → `attached`, `detaching` → gone), completed by
//! [`Ec2::settle`], which the API calls before every request and the scenario on a timer.
//!
//! The wire protocol (Query API, XML: [`super::ec2_api`]), IMDS and the fabric sit on top of this.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

pub use super::ec2_v6::{Assign6Request, Subnet6};

/// Limits of an instance type (VPC Resource Controller's pkg/aws/vpc/limits.go values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceType {
    pub name: &'static str,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub trunking: bool,
    pub branch_enis: u32,
    pub efa: bool,
    pub hypervisor: &'static str,
}

pub const INSTANCE_TYPES: &[InstanceType] = &[
    // Not in the agent's built-in table: its limits come from DescribeInstanceTypes.
    InstanceType {
        name: "m8g.large",
        max_enis: 3,
        ipv4_per_eni: 10,
        trunking: true,
        branch_enis: 9,
        efa: false,
        hypervisor: "nitro",
    },
    InstanceType {
        name: "t3.medium",
        max_enis: 3,
        ipv4_per_eni: 6,
        trunking: false,
        branch_enis: 0,
        efa: false,
        hypervisor: "nitro",
    },
    InstanceType {
        name: "m5.large",
        max_enis: 3,
        ipv4_per_eni: 10,
        trunking: true,
        branch_enis: 9,
        efa: false,
        hypervisor: "nitro",
    },
    InstanceType {
        name: "c5.large",
        max_enis: 3,
        ipv4_per_eni: 10,
        trunking: true,
        branch_enis: 9,
        efa: false,
        hypervisor: "nitro",
    },
    InstanceType {
        name: "r7a.medium",
        max_enis: 2,
        ipv4_per_eni: 4,
        trunking: true,
        branch_enis: 4,
        efa: false,
        hypervisor: "nitro",
    },
    InstanceType {
        name: "m6i.xlarge",
        max_enis: 4,
        ipv4_per_eni: 15,
        trunking: true,
        branch_enis: 18,
        efa: false,
        hypervisor: "nitro",
    },
    InstanceType {
        name: "c5n.18xlarge",
        max_enis: 15,
        ipv4_per_eni: 50,
        trunking: true,
        branch_enis: 107,
        efa: true,
        hypervisor: "nitro",
    },
];

pub fn instance_type(name: &str) -> Option<&'static InstanceType> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

/// An EC2 API error: the code clients match on, and a message in EC2's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

fn err(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { code, message: message.into() }
}

/// EC2's general refusal of a parameter value.
pub fn invalid(message: impl Into<String>) -> ApiError {
    err("InvalidParameterValue", message)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceType {
    Interface,
    Trunk,
    Efa,
    Branch,
}

impl InterfaceType {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "interface" => Ok(Self::Interface),
            "trunk" => Ok(Self::Trunk),
            "efa" => Ok(Self::Efa),
            "branch" => Ok(Self::Branch),
            other => Err(invalid(format!("Value ({other}) for parameter interfaceType is invalid."))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interface => "interface",
            Self::Trunk => "trunk",
            Self::Efa => "efa",
            Self::Branch => "branch",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub az: String,
    pub cidr: (Ipv4Addr, u8),
    pub tags: BTreeMap<String, String>,
    /// Addresses in use (primary, secondary, and every address of a delegated prefix).
    used: BTreeSet<Ipv4Addr>,
    /// The subnet's IPv6 /64, when it has one.
    pub ipv6: Option<Subnet6>,
}

impl Subnet {
    fn range(&self) -> (u32, u32) {
        let base = u32::from(self.cidr.0);
        let size = 1u32 << (32 - u32::from(self.cidr.1));
        (base, base + size - 1)
    }

    /// Addresses AWS never hands out: the first four and the last of every subnet.
    fn reserved(&self, a: u32) -> bool {
        let (lo, hi) = self.range();
        a < lo + 4 || a == hi
    }

    pub fn available_addresses(&self) -> u32 {
        let (lo, hi) = self.range();
        (hi - lo + 1) - 5 - self.used.len() as u32
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.range();
        (lo..=hi).contains(&u32::from(ip))
    }

    fn take_address(&mut self) -> Option<Ipv4Addr> {
        let (lo, hi) = self.range();
        let a = (lo..=hi).find(|a| !self.reserved(*a) && !self.used.contains(&Ipv4Addr::from(*a)))?;
        self.used.insert(Ipv4Addr::from(a));
        Some(Ipv4Addr::from(a))
    }

    /// The lowest aligned /28 with no address in use (prefixes and secondaries stay disjoint).
    fn take_prefix(&mut self) -> Option<Ipv4Addr> {
        let (lo, hi) = self.range();
        let mut p = lo.div_ceil(16) * 16;
        while p + 15 <= hi {
            let free = (p..p + 16).all(|a| !self.reserved(a) && !self.used.contains(&Ipv4Addr::from(a)));
            if free {
                self.used.extend((p..p + 16).map(Ipv4Addr::from));
                return Some(Ipv4Addr::from(p));
            }
            p += 16;
        }
        None
    }

    fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    fn release_prefix(&mut self, prefix: Ipv4Addr) {
        for ip in prefix_addresses(prefix) {
            self.used.remove(&ip);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    pub instance_id: String,
    pub device_index: u32,
    pub delete_on_termination: bool,
    /// When the attachment was requested (IMDS hides it for the propagation delay).
    pub attached_at: Instant,
    pub state: AttachState,
    /// When `state` was entered (attaching and detaching take [`Timing`]'s time).
    pub since: Instant,
}

/// An attachment's `status`, as EC2 reports it: attach and detach take time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachState {
    Attaching,
    Attached,
    Detaching,
}

impl AttachState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attaching => "attaching",
            Self::Attached => "attached",
            Self::Detaching => "detaching",
        }
    }
}

/// How long EC2 takes to finish an attachment or a detachment (zero: at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub attach: Duration,
    pub detach: Duration,
    /// EC2's eventual consistency: a new ENI, and a new attachment, stay out of
    /// DescribeNetworkInterfaces for this long after the call that made them returned.
    pub describe_lag: Duration,
}

/// A branch ENI's association with a trunk ENI (AssociateTrunkInterface).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkAssociation {
    pub id: String,
    pub trunk_id: String,
    pub vlan_id: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    pub interface_type: InterfaceType,
    pub subnet_id: String,
    pub vpc_id: String,
    pub az: String,
    pub mac: String,
    pub description: String,
    pub groups: Vec<String>,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Network addresses of delegated /28 prefixes.
    pub prefixes: Vec<Ipv4Addr>,
    pub ipv6_addresses: Vec<Ipv6Addr>,
    /// Network addresses of delegated IPv6 /80 prefixes.
    pub ipv6_prefixes: Vec<Ipv6Addr>,
    pub attachment: Option<Attachment>,
    pub trunk_association: Option<TrunkAssociation>,
    pub tags: BTreeMap<String, String>,
    /// When each secondary address and prefix, of either family, was assigned (IMDS shows them
    /// only after the propagation delay, as on EC2).
    pub assigned_at: BTreeMap<IpAddr, Instant>,
    /// When CreateNetworkInterface made it (DescribeNetworkInterfaces lags behind it).
    pub created_at: Instant,
    /// An instance's primary ENI: it exists, attached, before anyone can call EC2 about it.
    pub launched_with_instance: bool,
}

impl Eni {
    /// The ENI as DescribeNetworkInterfaces shows it at `now` under a describe lag of `lag`:
    /// None while it is newer than that, without its attachment while the attachment is.
    pub fn as_described(&self, now: Instant, lag: Duration) -> Option<Eni> {
        if self.launched_with_instance || lag.is_zero() {
            return Some(self.clone());
        }
        if now.saturating_duration_since(self.created_at) < lag {
            return None;
        }
        let mut e = self.clone();
        if e.attachment.as_ref().is_some_and(|a| now.saturating_duration_since(a.attached_at) < lag) {
            e.attachment = None;
        }
        Some(e)
    }

    pub fn status(&self) -> &'static str {
        if self.attachment.is_some() {
            "in-use"
        } else {
            "available"
        }
    }

    /// Addresses plus prefixes, the primary included: what PrivateIpAddressLimitExceeded counts.
    fn slots_used(&self) -> u32 {
        1 + self.secondary_ips.len() as u32 + self.prefixes.len() as u32
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub instance_type: &'static InstanceType,
    pub az: String,
    pub subnet_id: String,
    pub terminated: bool,
}

/// Parameters of CreateNetworkInterface.
#[derive(Clone, Debug, Default)]
pub struct CreateEni {
    pub subnet_id: String,
    pub groups: Vec<String>,
    pub interface_type: Option<String>,
    pub description: String,
    pub secondary_count: u32,
    pub prefix_count: u32,
    /// `Ipv6AddressCount`: IPv6 addresses from the subnet's /64.
    pub ipv6_count: u32,
    pub tags: BTreeMap<String, String>,
}

/// What AssignPrivateIpAddresses asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignRequest {
    Count(u32),
    Addresses(Vec<Ipv4Addr>),
    PrefixCount(u32),
    Prefixes(Vec<Ipv4Addr>),
}

/// The simulated region: VPCs, subnets, security groups, instances, ENIs.
#[derive(Clone, Debug, Default)]
pub struct Ec2 {
    pub subnets: BTreeMap<String, Subnet>,
    pub security_groups: BTreeMap<String, String>,
    pub instances: BTreeMap<String, Instance>,
    pub enis: BTreeMap<String, Eni>,
    /// VPC id → its IPv4 CIDR blocks, newline-separated as IMDS prints them.
    pub vpc_cidrs: BTreeMap<String, String>,
    /// VPC id → its IPv6 CIDR blocks, the same way.
    pub vpc_ipv6_cidrs: BTreeMap<String, String>,
    pub timing: Timing,
    counter: u64,
}

impl Ec2 {
    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{:017x}", self.counter)
    }

    /// Finishes the attachments and detachments whose time has come; true if any did.
    pub fn settle(&mut self, now: Instant) -> bool {
        let timing = self.timing;
        let mut changed = false;
        for e in self.enis.values_mut() {
            let Some(a) = e.attachment.as_mut() else { continue };
            match a.state {
                AttachState::Attaching if now.duration_since(a.since) >= timing.attach => {
                    a.state = AttachState::Attached;
                    a.since = now;
                    changed = true;
                }
                AttachState::Detaching if now.duration_since(a.since) >= timing.detach => {
                    e.attachment = None;
                    changed = true;
                }
                _ => {}
            }
        }
        changed
    }

    pub fn add_subnet(&mut self, vpc_id: &str, az: &str, cidr: (Ipv4Addr, u8)) -> String {
        let id = self.next_id("subnet");
        let subnet = Subnet {
            id: id.clone(),
            vpc_id: vpc_id.into(),
            az: az.into(),
            cidr,
            tags: BTreeMap::new(),
            used: BTreeSet::new(),
            ipv6: None,
        };
        self.subnets.insert(id.clone(), subnet);
        id
    }

    pub fn add_security_group(&mut self, name: &str) -> String {
        let id = self.next_id("sg");
        self.security_groups.insert(id.clone(), name.into());
        id
    }

    /// Launches an instance with its primary ENI at device index 0 (DeleteOnTermination true). In
    /// a subnet with an IPv6 /64 the primary ENI gets one IPv6 address too, as the subnets of an
    /// EKS IPv6 cluster must auto-assign one.
    pub fn run_instance(
        &mut self,
        type_name: &str,
        subnet_id: &str,
        groups: &[String],
    ) -> Result<String, ApiError> {
        let t = instance_type(type_name)
            .ok_or_else(|| invalid(format!("Invalid value '{type_name}' for InstanceType.")))?;
        let subnet = self.subnet(subnet_id)?.clone();
        let id = self.next_id("i");
        self.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                instance_type: t,
                az: subnet.az.clone(),
                subnet_id: subnet_id.into(),
                terminated: false,
            },
        );
        let eni = self.create_network_interface(CreateEni {
            subnet_id: subnet_id.into(),
            groups: groups.to_vec(),
            description: "Primary network interface".into(),
            ipv6_count: u32::from(subnet.ipv6.is_some()),
            ..Default::default()
        })?;
        self.attach(&eni, &id, 0)?;
        if let Some(e) = self.enis.get_mut(&eni) {
            // An instance starts with its primary ENI in place, described from the start.
            e.launched_with_instance = true;
            if let Some(a) = e.attachment.as_mut() {
                a.delete_on_termination = true;
                a.state = AttachState::Attached;
            }
        }
        Ok(id)
    }

    pub fn subnet(&self, id: &str) -> Result<&Subnet, ApiError> {
        self.subnets
            .get(id)
            .ok_or_else(|| err("InvalidSubnetID.NotFound", format!("The subnet ID '{id}' does not exist")))
    }

    pub fn eni(&self, id: &str) -> Result<&Eni, ApiError> {
        self.enis.get(id).ok_or_else(|| {
            err(
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{id}' does not exist"),
            )
        })
    }

    fn instance(&self, id: &str) -> Result<&Instance, ApiError> {
        self.instances.get(id).filter(|i| !i.terminated).ok_or_else(|| {
            err("InvalidInstanceID.NotFound", format!("The instance ID '{id}' does not exist"))
        })
    }

    pub fn check_groups(&self, groups: &[String]) -> Result<(), ApiError> {
        for g in groups {
            if !self.security_groups.contains_key(g) {
                return Err(err("InvalidGroup.NotFound", format!("The security group '{g}' does not exist")));
            }
        }
        Ok(())
    }

    pub fn create_network_interface(&mut self, req: CreateEni) -> Result<String, ApiError> {
        let interface_type = match req.interface_type.as_deref() {
            None => InterfaceType::Interface,
            Some(t) => InterfaceType::parse(t)?,
        };
        self.check_groups(&req.groups)?;
        let subnet = self.subnet(&req.subnet_id)?.clone();
        let groups = if req.groups.is_empty() {
            // EC2 falls back to the VPC's default group; the simulator's first group plays it.
            self.security_groups.keys().next().cloned().into_iter().collect()
        } else {
            req.groups.clone()
        };
        let needed = 1u64 + u64::from(req.secondary_count) + 16 * u64::from(req.prefix_count);
        if u64::from(subnet.available_addresses()) < needed {
            return Err(insufficient(&req.subnet_id));
        }
        if req.ipv6_count > 0 && subnet.ipv6.is_none() {
            return Err(super::ec2_v6::no_ipv6(&req.subnet_id));
        }
        let largest = INSTANCE_TYPES.iter().map(|t| t.ipv4_per_eni).max().unwrap_or(50);
        if req.ipv6_count > largest {
            return Err(err(
                "PrivateIpAddressLimitExceeded",
                format!("Number of IPv6 addresses will exceed limit. (limit: {largest})"),
            ));
        }
        let id = self.next_id("eni");
        let subnet = self.subnets.get_mut(&req.subnet_id).ok_or_else(|| insufficient(&req.subnet_id))?;
        let primary_ip = subnet.take_address().ok_or_else(|| insufficient(&req.subnet_id))?;
        let mut secondary_ips = Vec::new();
        for _ in 0..req.secondary_count {
            secondary_ips.push(subnet.take_address().ok_or_else(|| insufficient(&req.subnet_id))?);
        }
        let mut prefixes = Vec::new();
        for _ in 0..req.prefix_count {
            match subnet.take_prefix() {
                Some(p) => prefixes.push(p),
                None => {
                    // All or nothing: the addresses this call took go back.
                    for ip in std::iter::once(primary_ip).chain(secondary_ips.iter().copied()) {
                        subnet.release(ip);
                    }
                    for p in &prefixes {
                        subnet.release_prefix(*p);
                    }
                    return Err(no_cidr_block(&req.subnet_id));
                }
            }
        }
        let ipv6_addresses =
            subnet.ipv6.as_mut().map(|v6| v6.take_addresses(req.ipv6_count)).unwrap_or_default();
        let now = Instant::now();
        let assigned_at = secondary_ips
            .iter()
            .chain(&prefixes)
            .map(|ip| IpAddr::from(*ip))
            .chain(ipv6_addresses.iter().map(|ip| IpAddr::from(*ip)))
            .map(|ip| (ip, now))
            .collect();
        let n = self.counter;
        let mac = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            (n >> 32) & 0xff,
            (n >> 24) & 0xff,
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        );
        let eni = Eni {
            id: id.clone(),
            interface_type,
            subnet_id: subnet.id.clone(),
            vpc_id: subnet.vpc_id.clone(),
            az: subnet.az.clone(),
            mac,
            description: req.description,
            groups,
            primary_ip,
            secondary_ips,
            prefixes,
            ipv6_addresses,
            ipv6_prefixes: Vec::new(),
            attachment: None,
            trunk_association: None,
            tags: req.tags,
            assigned_at,
            created_at: Instant::now(),
            launched_with_instance: false,
        };
        self.enis.insert(id.clone(), eni);
        Ok(id)
    }

    pub fn attach(&mut self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<String, ApiError> {
        let instance = self.instance(instance_id)?.clone();
        let eni = self.eni(eni_id)?;
        if eni.attachment.is_some() {
            return Err(err("InvalidNetworkInterface.InUse", format!("Interface: [{eni_id}] in use.")));
        }
        if eni.az != instance.az {
            // EC2's exact code for this case is not confirmed; InvalidParameterValue is its
            // usual answer to an attachment it refuses.
            return Err(invalid(format!("Network interface '{eni_id}' and instance '{instance_id}' are in different Availability Zones."),
            ));
        }
        let attached: Vec<&Eni> = self.attached_to(instance_id);
        if attached.iter().any(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == device_index)) {
            return Err(invalid(format!("Instance '{instance_id}' already has an interface attached at device index '{device_index}'."),
            ));
        }
        if attached.len() as u32 >= instance.instance_type.max_enis {
            return Err(err(
                "AttachmentLimitExceeded",
                format!(
                    "Interface count {} exceeds the limit for {}",
                    attached.len() + 1,
                    instance.instance_type.name
                ),
            ));
        }
        let attachment_id = self.next_id("eni-attach");
        let now = Instant::now();
        let state = if self.timing.attach.is_zero() { AttachState::Attached } else { AttachState::Attaching };
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.attachment = Some(Attachment {
                id: attachment_id.clone(),
                instance_id: instance_id.into(),
                device_index,
                delete_on_termination: false,
                attached_at: now,
                state,
                since: now,
            });
        }
        Ok(attachment_id)
    }

    pub fn attached_to(&self, instance_id: &str) -> Vec<&Eni> {
        let mut v: Vec<&Eni> = self
            .enis
            .values()
            .filter(|e| e.attachment.as_ref().is_some_and(|a| a.instance_id == instance_id))
            .collect();
        v.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
        v
    }

    pub fn detach(&mut self, attachment_id: &str) -> Result<(), ApiError> {
        let eni = self
            .enis
            .values_mut()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.id == attachment_id))
            .ok_or_else(|| {
                err(
                    "InvalidAttachmentID.NotFound",
                    format!("The attachment ID '{attachment_id}' does not exist"),
                )
            })?;
        if eni.attachment.as_ref().is_some_and(|a| a.device_index == 0) {
            return Err(err(
                "OperationNotPermitted",
                "The network interface at device index 0 cannot be detached.",
            ));
        }
        if self.timing.detach.is_zero() {
            eni.attachment = None;
        } else if let Some(a) = eni.attachment.as_mut().filter(|a| a.state != AttachState::Detaching) {
            // The ENI stays in use (not deletable, its device index taken) until EC2 is done.
            a.state = AttachState::Detaching;
            a.since = Instant::now();
        }
        Ok(())
    }

    /// AssociateTrunkInterface: a branch ENI gets a VLAN id on an attached trunk ENI of the
    /// same AZ, within the instance type's branch limit.
    pub fn associate_trunk(
        &mut self,
        branch_id: &str,
        trunk_id: &str,
        vlan_id: u16,
    ) -> Result<String, ApiError> {
        let branch = self.eni(branch_id)?;
        let trunk = self.eni(trunk_id)?;
        if branch.interface_type != InterfaceType::Branch || branch.trunk_association.is_some() {
            return Err(invalid(format!("'{branch_id}' is not an unassociated branch interface.")));
        }
        let instance = match (&trunk.interface_type, &trunk.attachment) {
            (InterfaceType::Trunk, Some(a)) => self.instance(&a.instance_id)?.clone(),
            _ => return Err(invalid(format!("'{trunk_id}' is not an attached trunk interface."))),
        };
        if branch.az != trunk.az {
            return Err(invalid("The branch and trunk interfaces are in different Availability Zones."));
        }
        if !(1..=4094).contains(&vlan_id) {
            return Err(invalid(format!("Invalid VLAN id {vlan_id}.")));
        }
        let branches: Vec<u16> = self.branches_of(trunk_id).iter().map(|(_, vlan)| *vlan).collect();
        if branches.contains(&vlan_id) {
            return Err(invalid(format!("VLAN id {vlan_id} is already in use on '{trunk_id}'.")));
        }
        if branches.len() as u32 >= instance.instance_type.branch_enis {
            return Err(invalid(format!(
                "{} supports at most {} branch interfaces.",
                instance.instance_type.name, instance.instance_type.branch_enis
            )));
        }
        let id = self.next_id("trunk-assoc");
        if let Some(b) = self.enis.get_mut(branch_id) {
            b.trunk_association =
                Some(TrunkAssociation { id: id.clone(), trunk_id: trunk_id.into(), vlan_id });
        }
        Ok(id)
    }

    /// DisassociateTrunkInterface, by the branch ENI's id.
    pub fn disassociate_trunk(&mut self, branch_id: &str) -> Result<(), ApiError> {
        self.eni(branch_id)?;
        if let Some(b) = self.enis.get_mut(branch_id) {
            b.trunk_association = None;
        }
        Ok(())
    }

    /// Branch ENI ids and VLAN ids associated with `trunk_id`.
    pub fn branches_of(&self, trunk_id: &str) -> Vec<(String, u16)> {
        self.enis
            .values()
            .filter_map(|e| {
                e.trunk_association
                    .as_ref()
                    .filter(|a| a.trunk_id == trunk_id)
                    .map(|a| (e.id.clone(), a.vlan_id))
            })
            .collect()
    }

    pub fn delete_network_interface(&mut self, eni_id: &str) -> Result<(), ApiError> {
        let eni = self.eni(eni_id)?;
        if eni.attachment.is_some() || eni.trunk_association.is_some() {
            return Err(err(
                "InvalidNetworkInterface.InUse",
                format!("The network interface '{eni_id}' is currently in use."),
            ));
        }
        self.remove_eni(eni_id);
        Ok(())
    }

    fn remove_eni(&mut self, eni_id: &str) {
        if let Some(e) = self.enis.remove(eni_id) {
            if let Some(s) = self.subnets.get_mut(&e.subnet_id) {
                s.release(e.primary_ip);
                for ip in e.secondary_ips {
                    s.release(ip);
                }
                for p in e.prefixes {
                    s.release_prefix(p);
                }
                if let Some(v6) = s.ipv6.as_mut() {
                    v6.release(&e.ipv6_addresses, &e.ipv6_prefixes);
                }
            }
        }
    }

    /// Addresses (and prefixes, each one) `eni` may hold per family: its instance type's limit.
    /// EC2's IPv6 limit per interface equals the IPv4 one for the types the simulator knows.
    pub(super) fn address_limit(&self, eni: &Eni) -> Result<u32, ApiError> {
        Ok(match &eni.attachment {
            Some(a) => self.instance(&a.instance_id)?.instance_type.ipv4_per_eni,
            // An unattached ENI is limited by the largest type the simulator knows.
            None => INSTANCE_TYPES.iter().map(|t| t.ipv4_per_eni).max().unwrap_or(50),
        })
    }

    /// AssignPrivateIpAddresses: returns only the addresses (or prefixes) it added.
    pub fn assign_private_ips(
        &mut self,
        eni_id: &str,
        req: AssignRequest,
    ) -> Result<Vec<Ipv4Addr>, ApiError> {
        let eni = self.eni(eni_id)?.clone();
        let limit = self.address_limit(&eni)?;
        let adding = match &req {
            AssignRequest::Count(n) | AssignRequest::PrefixCount(n) => *n,
            AssignRequest::Addresses(v) | AssignRequest::Prefixes(v) => v.len() as u32,
        };
        if u64::from(eni.slots_used()) + u64::from(adding) > u64::from(limit) {
            return Err(err(
                "PrivateIpAddressLimitExceeded",
                format!(
                    "Number of private addresses will exceed limit. (limit: {limit}, in use: {})",
                    eni.slots_used()
                ),
            ));
        }
        let subnet = self.subnets.get_mut(&eni.subnet_id).ok_or_else(|| insufficient(&eni.subnet_id))?;
        let mut added = Vec::new();
        let result = (|| -> Result<(), ApiError> {
            match &req {
                AssignRequest::Count(n) => {
                    if subnet.available_addresses() < *n {
                        return Err(insufficient(&eni.subnet_id));
                    }
                    for _ in 0..*n {
                        added.push(subnet.take_address().ok_or_else(|| insufficient(&eni.subnet_id))?);
                    }
                }
                AssignRequest::PrefixCount(n) => {
                    for _ in 0..*n {
                        added.push(subnet.take_prefix().ok_or_else(|| {
                            if subnet.available_addresses() >= 16 {
                                no_cidr_block(&eni.subnet_id)
                            } else {
                                insufficient(&eni.subnet_id)
                            }
                        })?);
                    }
                }
                AssignRequest::Addresses(ips) => {
                    for ip in ips {
                        if !subnet.contains(*ip)
                            || subnet.reserved(u32::from(*ip))
                            || subnet.used.contains(ip)
                        {
                            return Err(invalid(format!(
                                "Address {ip} is not available in subnet {}",
                                eni.subnet_id
                            )));
                        }
                        subnet.used.insert(*ip);
                        added.push(*ip);
                    }
                }
                AssignRequest::Prefixes(ps) => {
                    for p in ps {
                        let a = u32::from(*p);
                        let free = a % 16 == 0
                            && subnet.contains(*p)
                            && a.checked_add(16).is_some()
                            && (a..a + 16)
                                .all(|x| !subnet.reserved(x) && !subnet.used.contains(&Ipv4Addr::from(x)));
                        if !free {
                            return Err(invalid(format!("Prefix {p}/28 is not available")));
                        }
                        subnet.used.extend((a..a + 16).map(Ipv4Addr::from));
                        added.push(*p);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            // All or nothing: give back what this call took.
            for ip in &added {
                let n = if matches!(req, AssignRequest::PrefixCount(_) | AssignRequest::Prefixes(_)) {
                    16
                } else {
                    1
                };
                for a in u32::from(*ip)..u32::from(*ip) + n {
                    subnet.release(Ipv4Addr::from(a));
                }
            }
            return Err(e);
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            let now = Instant::now();
            e.assigned_at.extend(added.iter().map(|ip| (IpAddr::from(*ip), now)));
            match req {
                AssignRequest::Count(_) | AssignRequest::Addresses(_) => e.secondary_ips.extend(&added),
                AssignRequest::PrefixCount(_) | AssignRequest::Prefixes(_) => e.prefixes.extend(&added),
            }
        }
        Ok(added)
    }

    /// UnassignPrivateIpAddresses (addresses and /28 prefixes); the primary cannot go.
    pub fn unassign_private_ips(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Addr],
    ) -> Result<(), ApiError> {
        let eni = self.eni(eni_id)?.clone();
        for ip in ips {
            if *ip == eni.primary_ip {
                return Err(invalid(format!("The primary private IP address {ip} cannot be unassigned.")));
            }
            if !eni.secondary_ips.contains(ip) {
                return Err(invalid(format!(
                    "Some of the specified addresses are not assigned to interface {eni_id}"
                )));
            }
        }
        for p in prefixes {
            if !eni.prefixes.contains(p) {
                return Err(invalid(format!("Prefix {p}/28 is not assigned to interface {eni_id}")));
            }
        }
        if let Some(s) = self.subnets.get_mut(&eni.subnet_id) {
            for ip in ips {
                s.release(*ip);
            }
            for p in prefixes {
                s.release_prefix(*p);
            }
        }
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.secondary_ips.retain(|ip| !ips.contains(ip));
            e.prefixes.retain(|p| !prefixes.contains(p));
            e.assigned_at.retain(|ip, _| match ip {
                IpAddr::V4(ip) => !ips.contains(ip) && !prefixes.contains(ip),
                IpAddr::V6(_) => true,
            });
        }
        Ok(())
    }

    pub fn modify_groups(&mut self, eni_id: &str, groups: Vec<String>) -> Result<(), ApiError> {
        self.eni(eni_id)?;
        self.check_groups(&groups)?;
        if let Some(e) = self.enis.get_mut(eni_id) {
            e.groups = groups;
        }
        Ok(())
    }

    pub fn set_delete_on_termination(&mut self, eni_id: &str, value: bool) -> Result<(), ApiError> {
        let e = self.enis.get_mut(eni_id).ok_or_else(|| {
            err(
                "InvalidNetworkInterfaceID.NotFound",
                format!("The networkInterface ID '{eni_id}' does not exist"),
            )
        })?;
        let a = e
            .attachment
            .as_mut()
            .ok_or_else(|| invalid(format!("The network interface '{eni_id}' is not attached")))?;
        a.delete_on_termination = value;
        Ok(())
    }

    /// TerminateInstances: ENIs with DeleteOnTermination go, the others are left `available`.
    pub fn terminate(&mut self, instance_id: &str) -> Result<(), ApiError> {
        self.instance(instance_id)?;
        let attached: Vec<(String, bool)> = self
            .attached_to(instance_id)
            .iter()
            .map(|e| (e.id.clone(), e.attachment.as_ref().is_some_and(|a| a.delete_on_termination)))
            .collect();
        for (id, delete) in attached {
            if delete {
                self.remove_eni(&id);
            } else if let Some(e) = self.enis.get_mut(&id) {
                e.attachment = None;
            }
        }
        if let Some(i) = self.instances.get_mut(instance_id) {
            i.terminated = true;
        }
        Ok(())
    }
}

impl Ec2 {
    /// CreateTags on ENIs and subnets (the resources the agent tags or reads tags of).
    pub fn create_tags(&mut self, resource: &str, tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
        if let Some(e) = self.enis.get_mut(resource) {
            e.tags.extend(tags.clone());
            return Ok(());
        }
        if let Some(s) = self.subnets.get_mut(resource) {
            s.tags.extend(tags.clone());
            return Ok(());
        }
        Err(not_found_resource(resource))
    }

    /// DeleteTags: a key with a value removes the tag only if the value matches.
    pub fn delete_tags(&mut self, resource: &str, tags: &[(String, Option<String>)]) -> Result<(), ApiError> {
        let map = if let Some(e) = self.enis.get_mut(resource) {
            &mut e.tags
        } else if let Some(s) = self.subnets.get_mut(resource) {
            &mut s.tags
        } else {
            return Err(not_found_resource(resource));
        };
        for (k, v) in tags {
            if v.as_ref().is_none_or(|v| map.get(k) == Some(v)) {
                map.remove(k);
            }
        }
        Ok(())
    }
}

fn not_found_resource(resource: &str) -> ApiError {
    match resource.split('-').next() {
        Some("eni") => err(
            "InvalidNetworkInterfaceID.NotFound",
            format!("The networkInterface ID '{resource}' does not exist"),
        ),
        Some("subnet") => {
            err("InvalidSubnetID.NotFound", format!("The subnet ID '{resource}' does not exist"))
        }
        _ => err("InvalidID", format!("The ID '{resource}' is not valid")),
    }
}

/// The 16 addresses of the /28 starting at `prefix` (fewer at the top of the address space).
fn prefix_addresses(prefix: Ipv4Addr) -> impl Iterator<Item = Ipv4Addr> {
    let base = u32::from(prefix);
    (0..16u32).filter_map(move |i| base.checked_add(i)).map(Ipv4Addr::from)
}

/// What EC2 answers when a subnet has free addresses but no free aligned /28.
fn no_cidr_block(subnet: &str) -> ApiError {
    err(
        "InsufficientCidrBlocks",
        format!(
            "The specified subnet {subnet} does not have enough free cidr blocks to satisfy the request."
        ),
    )
}

fn insufficient(subnet: &str) -> ApiError {
    err(
        "InsufficientFreeAddressesInSubnet",
        format!("The specified subnet {subnet} does not have enough free addresses to satisfy the request."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(cidr_len: u8) -> (Ec2, String, String, String) {
        let mut ec2 = Ec2::default();
        let subnet = ec2.add_subnet("vpc-1", "us-west-2a", (Ipv4Addr::new(10, 0, 0, 0), cidr_len));
        let sg = ec2.add_security_group("node");
        let i = ec2.run_instance("m5.large", &subnet, std::slice::from_ref(&sg)).unwrap();
        (ec2, subnet, sg, i)
    }

    fn new_eni(ec2: &mut Ec2, subnet: &str, sg: &str) -> String {
        ec2.create_network_interface(CreateEni {
            subnet_id: subnet.into(),
            groups: vec![sg.into()],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn eni_limit_device_index_and_in_use_are_enforced() {
        let (mut ec2, subnet, sg, i) = region(24);
        let a = new_eni(&mut ec2, &subnet, &sg);
        let b = new_eni(&mut ec2, &subnet, &sg);
        let c = new_eni(&mut ec2, &subnet, &sg);
        ec2.attach(&a, &i, 1).unwrap();
        assert_eq!(ec2.attach(&b, &i, 1).unwrap_err().code, "InvalidParameterValue");
        assert_eq!(ec2.attach(&a, &i, 2).unwrap_err().code, "InvalidNetworkInterface.InUse");
        ec2.attach(&b, &i, 2).unwrap();
        assert_eq!(ec2.attach(&c, &i, 3).unwrap_err().code, "AttachmentLimitExceeded");
        assert_eq!(ec2.delete_network_interface(&a).unwrap_err().code, "InvalidNetworkInterface.InUse");
        assert_eq!(ec2.eni("eni-nope").unwrap_err().code, "InvalidNetworkInterfaceID.NotFound");
    }

    #[test]
    fn attach_and_detach_take_time() {
        let (mut ec2, subnet, sg, i) = region(24);
        ec2.timing = Timing {
            attach: Duration::from_millis(100),
            detach: Duration::from_millis(200),
            ..Default::default()
        };
        let a = new_eni(&mut ec2, &subnet, &sg);
        let t0 = Instant::now();
        let attachment = ec2.attach(&a, &i, 1).unwrap();
        let state = |ec2: &Ec2| ec2.eni(&a).unwrap().attachment.as_ref().map(|x| x.state);
        assert_eq!(state(&ec2), Some(AttachState::Attaching));
        assert!(!ec2.settle(t0 + Duration::from_millis(50)));
        assert!(ec2.settle(Instant::now() + Duration::from_millis(100)));
        assert_eq!(state(&ec2), Some(AttachState::Attached));
        ec2.detach(&attachment).unwrap();
        assert_eq!(state(&ec2), Some(AttachState::Detaching));
        // Delete right after Detach: still in use, as on EC2; the device index stays taken.
        assert_eq!(ec2.delete_network_interface(&a).unwrap_err().code, "InvalidNetworkInterface.InUse");
        let b = new_eni(&mut ec2, &subnet, &sg);
        assert_eq!(ec2.attach(&b, &i, 1).unwrap_err().code, "InvalidParameterValue");
        assert!(ec2.settle(Instant::now() + Duration::from_millis(200)));
        assert_eq!(state(&ec2), None);
        ec2.delete_network_interface(&a).unwrap();
    }

    #[test]
    fn a_fragmented_subnet_has_addresses_but_no_cidr_block() {
        // A /26: 64 addresses, 5 reserved. Take one address in every aligned /28.
        let (mut ec2, subnet, sg, i) = region(26);
        let a = new_eni(&mut ec2, &subnet, &sg);
        ec2.attach(&a, &i, 1).unwrap();
        let taken: Vec<Ipv4Addr> = (0..4).map(|k| Ipv4Addr::new(10, 0, 0, 16 * k + 8)).collect();
        let free_before = ec2.subnet(&subnet).unwrap().available_addresses();
        let b = new_eni(&mut ec2, &subnet, &sg);
        ec2.attach(&b, &i, 2).unwrap();
        ec2.assign_private_ips(&b, AssignRequest::Addresses(taken)).unwrap();
        assert!(ec2.subnet(&subnet).unwrap().available_addresses() >= 16, "{free_before}");
        assert_eq!(
            ec2.assign_private_ips(&a, AssignRequest::PrefixCount(1)).unwrap_err().code,
            "InsufficientCidrBlocks"
        );
        let create = CreateEni { subnet_id: subnet.clone(), prefix_count: 1, ..Default::default() };
        let free = ec2.subnet(&subnet).unwrap().available_addresses();
        assert_eq!(ec2.create_network_interface(create).unwrap_err().code, "InsufficientCidrBlocks");
        assert_eq!(
            ec2.subnet(&subnet).unwrap().available_addresses(),
            free,
            "a refused create takes nothing"
        );
    }

    #[test]
    fn address_limits_prefixes_and_subnet_exhaustion() {
        let (mut ec2, subnet, sg, i) = region(24);
        let a = new_eni(&mut ec2, &subnet, &sg);
        ec2.attach(&a, &i, 1).unwrap();
        let added = ec2.assign_private_ips(&a, AssignRequest::Count(5)).unwrap();
        assert_eq!(added.len(), 5, "only the new addresses are returned");
        let prefixes = ec2.assign_private_ips(&a, AssignRequest::PrefixCount(2)).unwrap();
        assert!(prefixes.iter().all(|p| u32::from(*p) % 16 == 0));
        assert!(prefixes.iter().all(|p| !added.iter().any(|ip| u32::from(*ip) / 16 == u32::from(*p) / 16)));
        // 1 primary + 5 + 2 prefixes = 8 of m5.large's 10.
        assert_eq!(
            ec2.assign_private_ips(&a, AssignRequest::Count(3)).unwrap_err().code,
            "PrivateIpAddressLimitExceeded"
        );
        let primary = ec2.eni(&a).unwrap().primary_ip;
        assert_eq!(ec2.unassign_private_ips(&a, &[primary], &[]).unwrap_err().code, "InvalidParameterValue");
        // A /28 subnet: 16 - 5 reserved = 11 usable; the instance's primary took one.
        let (mut ec2, small, sg, _) = region(28);
        let e = new_eni(&mut ec2, &small, &sg);
        assert_eq!(ec2.subnets[&small].available_addresses(), 9);
        assert_eq!(
            ec2.assign_private_ips(&e, AssignRequest::Count(10)).unwrap_err().code,
            "InsufficientFreeAddressesInSubnet"
        );
        assert_eq!(ec2.subnets[&small].available_addresses(), 9, "a failed call took nothing");
    }

    #[test]
    fn each_eni_keeps_its_own_groups_and_termination_honours_delete_on_termination() {
        let (mut ec2, subnet, sg, i) = region(24);
        let pods = ec2.add_security_group("pods");
        let a = ec2
            .create_network_interface(CreateEni {
                subnet_id: subnet.clone(),
                groups: vec![pods.clone()],
                interface_type: Some("trunk".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ec2.eni(&a).unwrap().groups, vec![pods.clone()]);
        assert_eq!(ec2.eni(&a).unwrap().interface_type, InterfaceType::Trunk);
        let b = new_eni(&mut ec2, &subnet, &sg);
        ec2.attach(&a, &i, 2).unwrap();
        ec2.attach(&b, &i, 1).unwrap();
        ec2.set_delete_on_termination(&a, true).unwrap();
        assert_eq!(
            ec2.modify_groups(&b, vec!["sg-missing".into()]).unwrap_err().code,
            "InvalidGroup.NotFound"
        );
        ec2.terminate(&i).unwrap();
        assert!(ec2.eni(&a).is_err(), "DeleteOnTermination ENI survived");
        assert_eq!(ec2.eni(&b).unwrap().status(), "available");
        assert_eq!(ec2.eni(&b).unwrap().groups, vec![sg]);
    }
}
