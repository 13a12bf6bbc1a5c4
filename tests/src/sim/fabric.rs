//! The fabric: every simulated instance is a network namespace, and every ENI attached to it is a
//! veth whose node end carries the ENI's MAC and is named like a NIC (`eth<device index>`). The far
//! ends sit in one "VPC" namespace, where each carries its subnet's gateway address (so the node
//! can resolve its gateway) and a route back to the ENI's primary address. A recorder there sees
//! every IPv4 frame the node sends: which ENI, source and destination MAC and address, VLAN tag.
//! Like EC2's source/destination check, a frame whose source address is not assigned to that ENI
//! — or, for a tagged frame on a trunk, to the branch ENI of that VLAN — is dropped and counted;
//! the others are delivered (recorded, and left to the VPC namespace's kernel). The drop is real:
//! an nftables netdev ingress chain per wire in the VPC namespace accepts only the ENI's (or
//! VLAN's branch ENI's) addresses and prefixes, so a dropped frame never reaches the VPC's kernel.
//! A change rewrites only the chains of the wires it touched (one `nft -f`), so a fleet of a
//! hundred nodes costs no more per change than one node. The recorder's packet socket sees frames before that
//! hook, so dropped frames are still recorded (with [`Verdict::SourceDestCheck`]).
//!
//! In a scenario with IPv6 the wires carry it too: the VPC side answers at each subnet's `::1`
//! and at `fe80:ec2::1` (EC2's router, the gateway upstream's plugin gives branch pods), routes
//! each ENI's IPv6 addresses to its wire and its /80 prefixes via its first IPv6 address, and the
//! same chains check IPv6 sources (link-local and unspecified sources pass: neighbour discovery).
//! The recorder keeps IPv6 frames from routable sources apart ([`Fabric::frames6`]).
//!
//! The fabric follows the EC2 model through [`Fabric::sync`], which the
//! [`follower`](super::follower) calls with a copy of the model after every change, outside the
//! simulator's lock. Needs root.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
};

use anyhow::{bail, Context as _, Result};

use super::ec2::{AttachState, Ec2, Eni, InterfaceType};
use crate::netns::{in_netns, sh, NetNs};

/// An address outside every VPC CIDR that the VPC namespace answers for: "the internet", where
/// traffic must arrive from an ENI's own address (SNAT) to be delivered.
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// IPv6's "internet" (a documentation address), answered by the VPC namespace when the VPC has
/// IPv6.
pub const INTERNET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Why the VPC did not deliver a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// The source address is not one of the sending ENI's (or the VLAN's branch ENI's).
    SourceDestCheck,
}

/// The VPC router's link-local address on every wire (EC2's `fe80:ec2::1`).
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0xec2, 0, 0, 0, 0, 0, 1);

/// One frame that left a node, IPv4 unless `A` says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<A = Ipv4Addr> {
    pub instance_id: String,
    /// The ENI whose wire it left on.
    pub eni_id: String,
    /// The branch ENI its VLAN tag selects, for tagged frames on a trunk.
    pub branch_eni_id: Option<String>,
    pub vlan: Option<u16>,
    pub src_mac: String,
    pub dst_mac: String,
    pub src: A,
    pub dst: A,
    pub verdict: Verdict,
}

impl Frame<IpAddr> {
    /// The frame with its addresses as one family, if both are of it.
    fn narrow<A>(&self, family: impl Fn(IpAddr) -> Option<A>) -> Option<Frame<A>> {
        Some(Frame {
            instance_id: self.instance_id.clone(),
            eni_id: self.eni_id.clone(),
            branch_eni_id: self.branch_eni_id.clone(),
            vlan: self.vlan,
            src_mac: self.src_mac.clone(),
            dst_mac: self.dst_mac.clone(),
            src: family(self.src)?,
            dst: family(self.dst)?,
            verdict: self.verdict,
        })
    }
}

/// A plugged ENI, as the recorder needs it.
#[derive(Clone, Debug)]
struct Wire {
    instance_id: String,
    eni_id: String,
    device_index: u32,
    vpc_if: String,
    /// Addresses the source/destination check accepts on untagged frames.
    owned: Owned,
    /// VLAN id → (branch ENI id, its addresses), for a trunk.
    branches: BTreeMap<u16, (String, Owned)>,
    /// The VPC namespace's routes to the ENI's secondary addresses and prefixes (via its
    /// primary address), so that answers to pods reach the node.
    routed: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Owned {
    addresses: Vec<Ipv4Addr>,
    prefixes: Vec<Ipv4Addr>,
    addresses6: Vec<Ipv6Addr>,
    /// /80s.
    prefixes6: Vec<Ipv6Addr>,
}

impl Owned {
    fn of(eni: &Eni) -> Self {
        let mut addresses = vec![eni.primary_ip];
        addresses.extend(&eni.secondary_ips);
        Self {
            addresses,
            prefixes: eni.prefixes.clone(),
            addresses6: eni.ipv6_addresses.clone(),
            prefixes6: eni.ipv6_prefixes.clone(),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => {
                self.addresses.contains(&ip)
                    || self.prefixes.iter().any(|p| u32::from(ip) & !0xf == u32::from(*p))
            }
            IpAddr::V6(ip) => {
                let prefix = u128::from(ip) & !((1u128 << 48) - 1);
                self.addresses6.contains(&ip) || self.prefixes6.iter().any(|p| u128::from(*p) == prefix)
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// VPC-side ifindex → wire.
    wires: HashMap<u32, Wire>,
    frames: Vec<Frame<IpAddr>>,
    counter: u64,
    /// VPC-side interface → the rules of its chain last applied (a sync that changes no
    /// address applies nothing).
    rules: BTreeMap<String, Vec<String>>,
}

pub struct Fabric {
    vpc: NetNs,
    /// Instance id → its namespace.
    nodes: BTreeMap<String, NetNs>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    recorder: Mutex<Option<JoinHandle<()>>>,
    /// The recorder's packet socket (to see whether frames still wait in it).
    socket: Arc<OwnedFd>,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric").field("vpc", &self.vpc.name()).finish_non_exhaustive()
    }
}

/// Deletes every namespace whose name starts with `prefix-` (what a killed run left behind).
pub fn remove_leftovers(prefix: &str) -> Result<usize> {
    let out = sh(Command::new("ip").args(["netns", "list"]))?;
    let mut removed = 0;
    for name in out.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(&format!("{prefix}-")) {
            sh(Command::new("ip").args(["netns", "del", name]))?;
            removed += 1;
        }
    }
    Ok(removed)
}

impl Fabric {
    /// Creates `<prefix>-vpc` and one `<prefix>-node<i>` per instance (replacing leftovers of a
    /// killed run) and starts the recorder. Without `ipv6` the wires carry no IPv6 at all.
    pub fn create(prefix: &str, instance_ids: &[String], ipv6: bool) -> Result<Self> {
        remove_leftovers(prefix)?;
        let vpc = NetNs::create(&format!("{prefix}-vpc"))?;
        // NICs plugged later inherit these: no IPv6 chatter on an IPv4 VPC's wires, and in an
        // IPv6 one addresses usable at once (no duplicate address detection on a private wire).
        let family = |ns: &NetNs| {
            if ipv6 {
                ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
            } else {
                ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            }
        };
        let mut nodes = BTreeMap::new();
        for (i, id) in instance_ids.iter().enumerate() {
            let ns = NetNs::create(&format!("{prefix}-node{i}"))?;
            family(&ns)?;
            nodes.insert(id.clone(), ns);
        }
        family(&vpc)?;
        vpc.ip(&["addr", "add", &format!("{INTERNET}/32"), "dev", "lo"])?;
        if ipv6 {
            vpc.ip(&["addr", "add", &format!("{INTERNET6}/128"), "dev", "lo"])?;
        }
        vpc.run("nft", &["add", "table", "netdev", "vpc"]).context("the VPC's nftables table")?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let socket = Arc::new(in_netns(&vpc, packet_socket)?);
        let recorder = {
            let (state, stop, socket) = (state.clone(), stop.clone(), socket.clone());
            std::thread::Builder::new()
                .name("vpc-recorder".into())
                .spawn(move || record(&socket, &state, &stop))?
        };
        Ok(Self { vpc, nodes, state, stop, recorder: Mutex::new(Some(recorder)), socket })
    }

    pub fn vpc(&self) -> &NetNs {
        &self.vpc
    }

    /// The namespace of `instance_id`.
    pub fn node(&self, instance_id: &str) -> Option<&NetNs> {
        self.nodes.get(instance_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Plugs and unplugs wires so that they match the attachments, and refreshes the addresses
    /// the source/destination check accepts.
    pub fn sync(&self, ec2: &Ec2) -> Result<()> {
        let mut desired: HashMap<String, (&str, &Eni, u32)> = HashMap::new();
        for instance in self.nodes.keys() {
            for eni in ec2.attached_to(instance) {
                // The NIC appears once EC2 finishes the attachment and goes when the detach does.
                if let Some(a) = eni.attachment.as_ref().filter(|a| a.state != AttachState::Attaching) {
                    desired.insert(eni.id.clone(), (instance.as_str(), eni, a.device_index));
                }
            }
        }
        let unplug: Vec<(u32, Wire)> = self
            .lock()
            .wires
            .iter()
            .filter(|(_, w)| desired.get(&w.eni_id).is_none_or(|(_, _, idx)| *idx != w.device_index))
            .map(|(k, w)| (*k, w.clone()))
            .collect();
        // Chains go before their devices (whether a netdev chain outlives its device depends on
        // the kernel).
        let chains: Vec<String> = {
            let mut state = self.lock();
            unplug
                .iter()
                .filter_map(|(_, w)| state.rules.remove(&w.vpc_if).map(|_| w.vpc_if.clone()))
                .collect()
        };
        let batch: String = chains.iter().map(|c| format!("delete chain netdev vpc {c}\n")).collect();
        self.apply_rules(&batch)?;
        for (ifindex, wire) in unplug {
            let _ = self.vpc.ip(&["link", "del", &wire.vpc_if]);
            self.lock().wires.remove(&ifindex);
        }
        let plugged: Vec<String> = self.lock().wires.values().map(|w| w.eni_id.clone()).collect();
        let wanted: Vec<(&str, &Eni, u32)> =
            desired.iter().filter(|(id, _)| !plugged.contains(id)).map(|(_, w)| *w).collect();
        let new_nics = self.plug(ec2, &wanted)?;
        let mut state = self.lock();
        let state = &mut *state;
        for wire in state.wires.values_mut() {
            if let Ok(eni) = ec2.eni(&wire.eni_id) {
                wire.owned = Owned::of(eni);
                wire.branches = if eni.interface_type == InterfaceType::Trunk {
                    ec2.branches_of(&eni.id)
                        .into_iter()
                        .filter_map(|(id, vlan)| ec2.eni(&id).ok().map(|b| (vlan, (id, Owned::of(b)))))
                        .collect()
                } else {
                    BTreeMap::new()
                };
            }
        }
        let mut batch = String::new();
        for wire in state.wires.values() {
            let rules = source_dest_rules(wire);
            let name = &wire.vpc_if;
            match state.rules.get(name) {
                Some(applied) if *applied == rules => continue,
                Some(_) => batch.push_str(&format!("flush chain netdev vpc {name}\n")),
                None => batch.push_str(&format!(
                    "add chain netdev vpc {name} {{ type filter hook ingress device \"{name}\" priority 0; policy accept; }}\n"
                )),
            }
            for rule in &rules {
                batch.push_str(&format!("add rule netdev vpc {name} {rule}\n"));
            }
            state.rules.insert(name.clone(), rules);
        }
        self.apply_rules(&batch)?;
        let mut batch = String::new();
        for (wire, eni) in state.wires.values_mut().filter_map(|w| {
            let eni = ec2.eni(&w.eni_id).ok()?;
            Some((w, eni))
        }) {
            let want = routes(eni);
            for gone in wire.routed.iter().filter(|r| !want.contains(r)) {
                let destination = gone.split_whitespace().next().unwrap_or_default();
                batch.push_str(&format!("route del {destination} dev {}\n", wire.vpc_if));
            }
            for new in want.iter().filter(|r| !wire.routed.contains(r)) {
                batch.push_str(&format!("route replace {new} dev {}\n", wire.vpc_if));
            }
            wire.routed = want;
        }
        self.vpc_batch(&batch, true).context("the VPC's routes to pod addresses")?;
        // Recorded and checked: now the NICs carry their ENIs' MACs.
        for (instance, node_if, mac) in new_nics {
            if let Some(node) = self.nodes.get(instance) {
                node.ip(&["link", "set", &node_if, "address", &mac])?;
            }
        }
        Ok(())
    }

    /// Runs `commands` (lines of `ip` commands) in the VPC namespace with one `ip -batch`
    /// (carrying on past failed lines with `force`); nothing when empty.
    fn vpc_batch(&self, commands: &str, force: bool) -> Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        let file = std::env::temp_dir().join(format!("{}.ip", self.vpc.name()));
        std::fs::write(&file, commands).context("writing the VPC's ip batch")?;
        let mut cmd = Command::new("ip");
        cmd.args(["-n", self.vpc.name()]);
        if force {
            cmd.arg("-force");
        }
        let applied = sh(cmd.arg("-batch").arg(&file));
        let _ = std::fs::remove_file(&file);
        applied.map(|_| ())
    }

    /// Applies `rules` (commands on the VPC namespace's `netdev vpc` table) atomically, in one
    /// `nft -f`; nothing when empty.
    fn apply_rules(&self, rules: &str) -> Result<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let file = std::env::temp_dir().join(format!("{}.nft", self.vpc.name()));
        std::fs::write(&file, rules).context("writing the VPC's nftables rules")?;
        let applied = self.vpc.run("nft", &["-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(&file);
        applied.context("the VPC's source/destination check (nft)").map(|_| ())
    }

    /// Creates the wires (one `ip -batch` in the VPC namespace for all of them); returns each
    /// node-side NIC with its ENI's MAC, which the NIC takes only once the wire is recorded and
    /// checked (see [`Fabric::sync`]): a NIC with the ENI's MAC is a NIC whose frames the VPC sees.
    fn plug<'a>(&self, ec2: &Ec2, wanted: &[(&'a str, &Eni, u32)]) -> Result<Vec<(&'a str, String, String)>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = String::new();
        let mut names = Vec::new();
        for &(instance, eni, index) in wanted {
            let node = self.nodes.get(instance).context("instance without a namespace")?;
            let subnet = ec2.subnet(&eni.subnet_id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let counter = {
                let mut s = self.lock();
                s.counter += 1;
                s.counter
            };
            let (vpc_if, node_if) = (format!("w{counter}"), format!("eth{index}"));
            let gateway = Ipv4Addr::from(u32::from(subnet.cidr.0) + 1);
            let len = subnet.cidr.1;
            // Answers (ping, TCP resets) reach the ENI's primary address by the last route.
            batch.push_str(&format!(
                "link add {vpc_if} type veth peer name {node_if} netns {}\n\
                 addr add {gateway}/{len} dev {vpc_if} noprefixroute\n\
                 link set {vpc_if} up\n\
                 route replace {}/32 dev {vpc_if}\n",
                node.name(),
                eni.primary_ip,
            ));
            if let Some(v6) = &subnet.ipv6 {
                let router = Ipv6Addr::from(u128::from(v6.cidr) + 1);
                batch.push_str(&format!(
                    "addr add {router}/64 dev {vpc_if} noprefixroute\naddr add {ROUTER6}/64 dev {vpc_if}\n"
                ));
            }
            if index == 0 {
                // The primary NIC comes up configured, as DHCP (and DHCPv6) leave it on an
                // instance (at the start only, so one command at a time).
                let primary = format!("{}/{len}", eni.primary_ip);
                let gateway = gateway.to_string();
                let ipv6 = eni.ipv6_addresses.first().copied();
                names.push((vpc_if, Some((node, primary, gateway, ipv6, node_if.clone()))));
            } else {
                names.push((vpc_if, None));
            }
        }
        self.vpc_batch(&batch, false).context("plugging wires")?;
        let links: serde_json::Value = serde_json::from_str(&self.vpc.ip(&["-j", "link", "show"])?)?;
        let mut nics = Vec::new();
        for (&(instance, eni, index), (vpc_if, primary)) in wanted.iter().zip(names) {
            if let Some((node, address, gateway, ipv6, nic)) = primary {
                node.ip(&["addr", "add", &address, "dev", &nic])?;
                node.ip(&["link", "set", &nic, "up"])?;
                node.ip(&["route", "replace", "default", "via", &gateway, "dev", &nic])?;
                if let Some(ipv6) = ipv6 {
                    node.ip(&["addr", "add", &format!("{ipv6}/128"), "dev", &nic])?;
                    node.ip(&[
                        "-6",
                        "route",
                        "replace",
                        "default",
                        "via",
                        &ROUTER6.to_string(),
                        "dev",
                        &nic,
                    ])?;
                }
            }
            let ifindex = links
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["ifname"] == vpc_if.as_str())
                .and_then(|l| l["ifindex"].as_u64())
                .context("a new wire missing from `ip -j link`")?;
            self.lock().wires.insert(
                u32::try_from(ifindex)?,
                Wire {
                    instance_id: instance.to_owned(),
                    eni_id: eni.id.clone(),
                    device_index: index,
                    vpc_if,
                    owned: Owned::of(eni),
                    branches: BTreeMap::new(),
                    routed: Vec::new(),
                },
            );
            nics.push((instance, format!("eth{index}"), eni.mac.clone()));
        }
        Ok(nics)
    }

    /// Every IPv4 frame recorded so far: what the node sent before this call is in (the
    /// recorder's socket is drained first; a reply can reach a pod before the recorder thread ran).
    pub fn frames(&self) -> Vec<Frame> {
        self.settle();
        self.lock()
            .frames
            .iter()
            .filter_map(|f| f.narrow(|a| if let IpAddr::V4(a) = a { Some(a) } else { None }))
            .collect()
    }

    /// Every IPv6 frame from a routable source recorded so far (as [`Fabric::frames`]).
    pub fn frames6(&self) -> Vec<Frame<Ipv6Addr>> {
        self.settle();
        self.lock()
            .frames
            .iter()
            .filter_map(|f| f.narrow(|a| if let IpAddr::V6(a) = a { Some(a) } else { None }))
            .collect()
    }

    /// Waits (at most 1 s) until the recorder's socket has been empty for 10 ms.
    fn settle(&self) {
        let pending = || {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one c_int; the socket stays open while `self` lives.
            let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::FIONREAD, &mut n) };
            rc == 0 && n > 0
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if !pending() {
                std::thread::sleep(std::time::Duration::from_millis(10));
                if !pending() {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Frames dropped by the source/destination check, per ENI.
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        self.settle();
        for f in self.lock().frames.iter().filter(|f| f.verdict == Verdict::SourceDestCheck) {
            *out.entry(f.eni_id.clone()).or_default() += 1;
        }
        out
    }

    pub fn clear(&self) {
        self.lock().frames.clear();
    }

    /// Stops the recorder and deletes the namespaces with every wire in them (also done on
    /// drop; the EC2 API's tasks may keep this value alive longer than the scenario).
    pub fn teardown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.recorder.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
        for ns in std::iter::once(&self.vpc).chain(self.nodes.values()) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns.name()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        self.lock().wires.clear();
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The VPC's routes to what an ENI owns beyond its primary address (relative to its wire): each
/// secondary address and /28 via the primary address, each IPv6 address on the wire, each /80
/// via the ENI's first IPv6 address.
fn routes(eni: &Eni) -> Vec<String> {
    let mut want: Vec<String> =
        eni.secondary_ips.iter().map(|ip| format!("{ip}/32 via {}", eni.primary_ip)).collect();
    want.extend(eni.prefixes.iter().map(|p| format!("{p}/28 via {}", eni.primary_ip)));
    want.extend(eni.ipv6_addresses.iter().map(|ip| format!("{ip}/128")));
    // After the /128s: a /80's next hop must already be routed when its route goes in.
    if let Some(first) = eni.ipv6_addresses.first() {
        want.extend(eni.ipv6_prefixes.iter().map(|p| format!("{p}/80 via {first}")));
    }
    want
}

/// The rules of one wire's ingress chain: every IPv4 or IPv6 frame (untagged, or tagged per
/// VLAN) whose source the wire's ENI (or the VLAN's branch ENI) does not own is dropped; IPv6
/// from link-local and unspecified sources (neighbour discovery) passes.
fn source_dest_rules(wire: &Wire) -> Vec<String> {
    let set = |o: &Owned| {
        let mut items: Vec<String> = o.addresses.iter().map(ToString::to_string).collect();
        items.extend(o.prefixes.iter().map(|p| format!("{p}/28")));
        format!("{{ {} }}", items.join(", "))
    };
    let set6 = |o: &Owned| {
        let mut items = vec!["fe80::/10".to_owned(), "::".to_owned()];
        items.extend(o.addresses6.iter().map(ToString::to_string));
        items.extend(o.prefixes6.iter().map(|p| format!("{p}/80")));
        format!("{{ {} }}", items.join(", "))
    };
    let (owned, owned6) = (set(&wire.owned), set6(&wire.owned));
    let mut rules = vec![
        format!("ether type ip ip saddr {owned} accept"),
        format!("vlan id 0 ip saddr {owned} accept"),
        format!("ether type ip6 ip6 saddr {owned6} accept"),
        format!("vlan id 0 ip6 saddr {owned6} accept"),
    ];
    for (vlan, (_, o)) in &wire.branches {
        rules.push(format!("vlan id {vlan} ip saddr {} accept", set(o)));
        rules.push(format!("vlan id {vlan} ip6 saddr {} accept", set6(o)));
    }
    rules.push("ether type { ip, ip6 } drop".into());
    rules.push("ether type { 8021q, 8021ad } drop".into());
    rules
}

/// An AF_PACKET socket for every frame in the calling thread's namespace, with VLAN metadata and
/// a 100 ms receive timeout (so the recorder can notice it should stop).
fn packet_socket() -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain syscalls; the fd is owned by the returned value.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        for (level, opt, ptr, len) in [
            (libc::SOL_PACKET, libc::PACKET_AUXDATA, (&one as *const libc::c_int).cast(), 4),
            (
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            ),
        ] {
            if libc::setsockopt(fd.as_raw_fd(), level, opt, ptr, len) != 0 {
                bail!("setsockopt: {}", std::io::Error::last_os_error());
            }
        }
        Ok(fd)
    }
}

fn record(socket: &OwnedFd, state: &Mutex<State>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Some((len, ifindex, pkttype, aux_vlan)) = receive(socket, &mut buf) else { continue };
        if pkttype == libc::PACKET_OUTGOING {
            continue; // sent by the VPC namespace itself (ARP replies)
        }
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(wire) = st.wires.get(&(ifindex as u32)) else { continue };
        if let Some(frame) = parse(&buf[..len], aux_vlan, wire) {
            st.frames.push(frame);
        }
    }
}

/// One frame: (length, ifindex, packet type, VLAN id the kernel took out of the frame).
fn receive(socket: &OwnedFd, buf: &mut [u8]) -> Option<(usize, i32, u8, Option<u16>)> {
    // SAFETY: recvmsg into buffers we own, with their sizes; cmsgs are read within `control`.
    unsafe {
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return None;
        }
        let mut vlan = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::tpacket_auxdata>());
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    vlan = Some(aux.tp_vlan_tci & 0x0fff);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Some((n as usize, addr.sll_ifindex, addr.sll_pkttype, vlan))
    }
}

fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// An IPv4 frame, or an IPv6 one from a routable source (tag from metadata or in-band
/// 802.1Q/802.1ad), judged against `wire`.
fn parse(f: &[u8], aux_vlan: Option<u16>, wire: &Wire) -> Option<Frame<IpAddr>> {
    let mut vlan = aux_vlan;
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        let tci = u16::from_be_bytes([*f.get(off + 2)?, *f.get(off + 3)?]);
        vlan = vlan.or(Some(tci & 0x0fff));
        off += 4;
        ethertype = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    let (src, dst) = match ethertype {
        0x0800 => {
            let ip = f.get(off + 2..off + 22)?;
            (IpAddr::from([ip[12], ip[13], ip[14], ip[15]]), IpAddr::from([ip[16], ip[17], ip[18], ip[19]]))
        }
        0x86dd => {
            let ip = f.get(off + 2..off + 42)?;
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            if src.is_unspecified() || src.is_unicast_link_local() {
                return None; // neighbour discovery and the like
            }
            (IpAddr::V6(src), IpAddr::V6(dst))
        }
        _ => return None,
    };
    let (branch_eni_id, ok) = match vlan.filter(|v| *v != 0) {
        Some(v) => match wire.branches.get(&v) {
            Some((id, owned)) => (Some(id.clone()), owned.contains(src)),
            None => (None, false),
        },
        None => (None, wire.owned.contains(src)),
    };
    Some(Frame {
        instance_id: wire.instance_id.clone(),
        eni_id: wire.eni_id.clone(),
        branch_eni_id,
        vlan,
        src_mac: mac(&f[6..12]),
        dst_mac: mac(&f[0..6]),
        src,
        dst,
        verdict: if ok { Verdict::Delivered } else { Verdict::SourceDestCheck },
    })
}
