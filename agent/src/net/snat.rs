//! The node's nftables table (`ip eniguard`, replaced in one transaction) and the policy rules
//! that go with it: SNAT of pod traffic that leaves the VPC and NodePort support, as upstream does
//! them (pkg/networkutils/network.go):
//!
//! - `prerouting` (mangle priority):
//!   - SNAT: a new connection from a pod (`<veth prefix>*`) to outside the VPC CIDRs and
//!     AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS gets the connection mark (AWS_VPC_K8S_CNI_CONNMARK,
//!     0x80);
//!   - NodePort (AWS_VPC_CNI_NODE_PORT_SUPPORT): a connection that arrives on the primary ENI for
//!     an address local to it gets the mark too (before kube-proxy's DNAT);
//!   - every packet from a pod (and, with NodePort, from a branch pod's `vlan*` link) of a marked
//!     connection carries the mark;
//! - rule 1024 `fwmark <mark>/<mark> lookup main`: those packets leave through the primary ENI,
//!   whatever ENI the pod's address is on (a NodePort reply leaves where its request came in, with
//!   the node's address once the DNAT is reversed, which EC2's source check accepts);
//! - `postrouting` (srcnat priority, SNAT only): SNAT to the primary ENI's address (`fully-random`
//!   for RANDOMIZESNAT=prng, `random` for hashrandom) for everything not to the VPC, not out of a
//!   branch-ENI VLAN link and not to a local address — EC2 accepts it there;
//! - rules 1535 `to <cidr> lookup main` for AWS_EXTERNAL_SERVICE_CIDRS;
//! - IPv6 mode with ENABLE_V4_EGRESS (upstream's egress-cni, [`crate::cni::egress`]): in
//!   `postrouting`, SNAT of the pods' 169.254.172.0/22 to the node's IPv4 (not multicast), and a
//!   `forward` chain that rejects new connections into that range, as upstream's FORWARD rule;
//! - IPv4 mode with ENABLE_V6_EGRESS (the other direction of egress-cni): the same two rules in
//!   an `ip6 eniguard` table, for the pods' fd00::ac:0/118 and the node's IPv6 address (not
//!   ff00::/8); without it that table goes;
//! - with NodePort, the primary interface's rp_filter is loose (2), as upstream's init sets it.
//!
//! With AWS_VPC_K8S_CNI_EXTERNALSNAT and without NodePort support, the table and rule 1024 are
//! removed.
//!
//! The ruleset is built with the `nftables` crate's typed JSON schema and applied by `nft -j -f`
//! (its helper); the table is added, deleted and re-created in the same batch, so the kernel
//! sees the old rules or the new ones, never none.

use std::{
    borrow::Cow,
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use nftables::{
    batch::Batch,
    expr::{
        BinaryOperation, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload,
        PayloadField, Prefix, SetItem, CT,
    },
    helper::{apply_ruleset, NftablesError},
    schema::{Chain, NfListObject, Nftables, Rule, Table},
    stmt::{Mangle, Match, NATFlag, Operator, Statement, NAT},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};
use rtnetlink::{
    packet_route::rule::{RuleAction, RuleAttribute},
    Handle,
};

use super::netlink::{call, delete_rules, is_exists, rules, NetError, Rule as IpRule};
use crate::{
    config::RandomizeSnat,
    ipam::model::{Cidr, Cidr6},
};

pub const TABLE: &str = "eniguard";
/// `fwmark <mark>/<mark> lookup main` (upstream's priority).
pub const MARK_RULE_PRIORITY: u32 = 1024;
/// `to <cidr> lookup main` for AWS_EXTERNAL_SERVICE_CIDRS (upstream's priority).
pub const EXTERNAL_SERVICE_PRIORITY: u32 = 1535;
const MAIN_TABLE: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum SnatError {
    #[error(
        "SNAT rules (nft -j -f): {hint}: {stderr}; install nftables or set AWS_VPC_K8S_CNI_EXTERNALSNAT=true"
    )]
    NftFailed { hint: String, stderr: String },
    #[error("SNAT rules (nft -j -f): {0}; install nftables or set AWS_VPC_K8S_CNI_EXTERNALSNAT=true")]
    Nft(#[source] NftablesError),
    #[error("SNAT rules: the nft task: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Net(#[from] NetError),
}

/// What the table and the rules say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// SNAT to the primary ENI's address (None: AWS_VPC_K8S_CNI_EXTERNALSNAT).
    pub snat: Option<Snat>,
    /// NodePort support: the primary ENI's interface (None: AWS_VPC_CNI_NODE_PORT_SUPPORT=false).
    pub node_port: Option<String>,
    /// AWS_VPC_K8S_CNI_CONNMARK.
    pub mark: u32,
    pub veth_prefix: String,
    /// AWS_EXTERNAL_SERVICE_CIDRS.
    pub external_service_cidrs: Vec<Cidr>,
    /// IPv6 mode's IPv4 egress (None: IPv4 mode, or ENABLE_V4_EGRESS=false).
    pub v4_egress: Option<Egress<Ipv4Addr>>,
    /// IPv4 mode's IPv6 egress (None: IPv6 mode, ENABLE_V6_EGRESS=false, or no node IPv6).
    pub v6_egress: Option<Egress<Ipv6Addr>>,
}

/// Egress of the other family for pods (upstream's egress-cni): their range SNATed to the
/// node's address of that family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress<A> {
    pub node_ip: A,
    pub random: RandomizeSnat,
}

/// The range IPv6 pods' IPv4 egress addresses come from (upstream's).
pub const V4_EGRESS_RANGE: Cidr = Cidr { addr: Ipv4Addr::new(169, 254, 172, 0), prefix_len: 22 };
/// The range IPv4 pods' IPv6 egress addresses come from (upstream's `fd00::ac:00/118`).
pub const V6_EGRESS_RANGE: Cidr6 =
    Cidr6 { addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0xac, 0), prefix_len: 118 };
const MULTICAST: Cidr = Cidr { addr: Ipv4Addr::new(224, 0, 0, 0), prefix_len: 4 };
const MULTICAST6: Cidr6 = Cidr6 { addr: Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), prefix_len: 8 };

fn prefix(c: Cidr) -> Expression<'static> {
    prefix_of(IpAddr::V4(c.addr), c.prefix_len)
}

fn prefix6(c: Cidr6) -> Expression<'static> {
    prefix_of(IpAddr::V6(c.addr), c.prefix_len)
}

fn prefix_of(addr: IpAddr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(addr.to_string().into())),
        len: u32::from(len),
    }))
}

fn snat_to(ip: IpAddr, random: RandomizeSnat) -> Statement<'static> {
    let flags = match random {
        RandomizeSnat::Prng => Some(HashSet::from([NATFlag::FullyRandom])),
        RandomizeSnat::HashRandom => Some(HashSet::from([NATFlag::Random])),
        RandomizeSnat::None => None,
    };
    Statement::SNAT(Some(NAT {
        addr: Some(Expression::String(ip.to_string().into())),
        family: None,
        port: None,
        flags,
    }))
}

/// SNAT of what leaves the VPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snat {
    pub primary_ip: Ipv4Addr,
    /// The VPC CIDRs and the exclusions: not translated.
    pub not_nated: Vec<Cidr>,
    pub random: RandomizeSnat,
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT { key: key.into(), family: None, dir: None }))
}

fn matches(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn or_mark(e: Expression<'static>, mark: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![e, Expression::Number(mark)])))
}

fn fib_type(flags: &[FibFlag]) -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: flags.iter().cloned().collect(),
    }))
}

impl Snat {
    fn not_nated_set(&self) -> Expression<'static> {
        Expression::Named(NamedExpression::Set(
            self.not_nated.iter().map(|c| SetItem::Element(prefix(*c))).collect(),
        ))
    }
}

impl Plan {
    /// Whether rule 1024 exists (and marks are set in the table).
    pub fn marks(&self) -> bool {
        self.snat.is_some() || self.node_port.is_some()
    }

    /// Whether the `ip` table exists at all.
    pub fn table(&self) -> bool {
        self.marks() || self.v4_egress.is_some()
    }

    /// The batch that replaces both tables, each only if it has rules (pure).
    pub fn ruleset(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        remove_table(&mut batch, NfFamily::IP);
        if self.table() {
            self.ip_table(&mut batch);
        }
        remove_table(&mut batch, NfFamily::IP6);
        if let Some(egress) = &self.v6_egress {
            let family = NfFamily::IP6;
            add_table(&mut batch, family);
            batch.add(postrouting(family));
            let (range, multicast) = (prefix6(V6_EGRESS_RANGE), prefix6(MULTICAST6));
            egress_rules(&mut batch, family, range, multicast, IpAddr::V6(egress.node_ip), egress.random);
        }
        batch.to_nftables()
    }

    /// The `ip eniguard` table's contents, after [`remove_table`] in the same batch.
    fn ip_table(&self, batch: &mut Batch<'static>) {
        let mark = self.mark;
        let family = NfFamily::IP;
        add_table(batch, family);
        batch.add(chain(family, "prerouting", NfChainType::Filter, NfHook::Prerouting, -150));
        let rule = |chain: &'static str, expr: Vec<Statement<'static>>| rule(family, chain, expr);
        let from = |prefix: &str| {
            matches(meta(MetaKey::Iifname), Operator::EQ, Expression::String(format!("{prefix}*").into()))
        };
        let set_ct_mark = || Statement::Mangle(Mangle { key: ct("mark"), value: or_mark(ct("mark"), mark) });
        if let Some(primary) = &self.node_port {
            batch.add(rule(
                "prerouting",
                vec![
                    matches(meta(MetaKey::Iifname), Operator::EQ, Expression::String(primary.clone().into())),
                    matches(
                        fib_type(&[FibFlag::Daddr, FibFlag::Iif]),
                        Operator::EQ,
                        Expression::String("local".into()),
                    ),
                    set_ct_mark(),
                ],
            ));
        }
        if let Some(snat) = &self.snat {
            batch.add(rule(
                "prerouting",
                vec![
                    from(&self.veth_prefix),
                    matches(ct("state"), Operator::IN, Expression::String("new".into())),
                    matches(payload("ip", "daddr"), Operator::NEQ, snat.not_nated_set()),
                    set_ct_mark(),
                ],
            ));
        }
        let mut restore_from = vec![self.veth_prefix.as_str()];
        if self.node_port.is_some() {
            restore_from.push(super::names::STRICT_VETH_PREFIX);
        }
        for prefix in restore_from {
            batch.add(rule(
                "prerouting",
                vec![
                    from(prefix),
                    matches(
                        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                            ct("mark"),
                            Expression::Number(mark),
                        ))),
                        Operator::EQ,
                        Expression::Number(mark),
                    ),
                    Statement::Mangle(Mangle {
                        key: meta(MetaKey::Mark),
                        value: or_mark(meta(MetaKey::Mark), mark),
                    }),
                ],
            ));
        }
        if self.snat.is_some() || self.v4_egress.is_some() {
            batch.add(postrouting(family));
        }
        if let Some(egress) = &self.v4_egress {
            let (range, multicast) = (prefix(V4_EGRESS_RANGE), prefix(MULTICAST));
            egress_rules(batch, family, range, multicast, IpAddr::V4(egress.node_ip), egress.random);
        }
        let Some(snat) = &self.snat else { return };
        batch.add(rule(
            "postrouting",
            vec![
                matches(payload("ip", "daddr"), Operator::EQ, snat.not_nated_set()),
                Statement::Return(None),
            ],
        ));
        batch.add(rule(
            "postrouting",
            vec![
                matches(meta(MetaKey::Oifname), Operator::EQ, Expression::String("vlan*".into())),
                Statement::Return(None),
            ],
        ));
        batch.add(rule(
            "postrouting",
            vec![
                matches(fib_type(&[FibFlag::Daddr]), Operator::EQ, Expression::String("local".into())),
                Statement::Return(None),
            ],
        ));
        batch.add(rule("postrouting", vec![snat_to(IpAddr::V4(snat.primary_ip), snat.random)]));
    }
}

fn chain(
    family: NfFamily,
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn postrouting(family: NfFamily) -> NfListObject<'static> {
    chain(family, "postrouting", NfChainType::NAT, NfHook::Postrouting, 100)
}

fn rule(family: NfFamily, chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(expr),
        ..Rule::default()
    })
}

fn add_table(batch: &mut Batch<'static>, family: NfFamily) {
    batch.add(NfListObject::Table(Table { family, name: TABLE.into(), handle: None }));
}

/// Removes a family's table if it is there (adding an existing table is no error; deleting a
/// missing one is). A table added after it in the same batch replaces it atomically.
fn remove_table(batch: &mut Batch<'static>, family: NfFamily) {
    add_table(batch, family);
    batch.delete(NfListObject::Table(Table { family, name: TABLE.into(), handle: None }));
}

/// Egress of the other family (upstream's egress-cni): in `postrouting` (which must exist), the
/// pods' `range` SNATed to `node_ip` unless to `multicast`; a `forward` chain rejecting new
/// connections into the range (upstream's FORWARD rule).
fn egress_rules(
    batch: &mut Batch<'static>,
    family: NfFamily,
    range: Expression<'static>,
    multicast: Expression<'static>,
    node_ip: IpAddr,
    random: RandomizeSnat,
) {
    let protocol = if node_ip.is_ipv4() { "ip" } else { "ip6" };
    batch.add(rule(
        family,
        "postrouting",
        vec![
            matches(payload(protocol, "saddr"), Operator::EQ, range.clone()),
            matches(payload(protocol, "daddr"), Operator::NEQ, multicast),
            snat_to(node_ip, random),
        ],
    ));
    batch.add(chain(family, "forward", NfChainType::Filter, NfHook::Forward, 0));
    batch.add(rule(
        family,
        "forward",
        vec![
            matches(payload(protocol, "daddr"), Operator::EQ, range),
            matches(ct("state"), Operator::IN, Expression::String("new".into())),
            Statement::Reject(None),
        ],
    ));
}

/// Runs `nft -j -f` off the async workers; nft's own complaint is kept in the error.
async fn nft(ruleset: Nftables<'static>) -> Result<(), SnatError> {
    match tokio::task::spawn_blocking(move || apply_ruleset(&ruleset)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(NftablesError::NftFailed { stderr, hint, .. })) => {
            Err(SnatError::NftFailed { hint, stderr: stderr.trim().to_owned() })
        }
        Ok(Err(e)) => Err(SnatError::Nft(e)),
        Err(e) => Err(SnatError::Task(e)),
    }
}

/// Installs the plan: the tables, rule 1024, the external-service rules and the primary
/// interface's rp_filter; a table without rules goes, and rule 1024 without SNAT and NodePort.
pub async fn apply(host: &Handle, plan: &Plan) -> Result<(), SnatError> {
    let mark = plan.mark;
    let mark_rule = |r: &IpRule| r.priority == Some(MARK_RULE_PRIORITY);
    nft(plan.ruleset()).await?;
    if plan.marks() {
        let mut add = host
            .rule()
            .add()
            .v4()
            .table_id(MAIN_TABLE)
            .priority(MARK_RULE_PRIORITY)
            .action(RuleAction::ToTable)
            .fw_mark(mark);
        add.message_mut().attributes.push(RuleAttribute::FwMask(mark));
        match add.execute().await {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(call(format!("rule fwmark {mark:#x}/{mark:#x} lookup main"))(e).into()),
        }
        // A mark an earlier run used, now changed: its rule goes once the new one is in.
        delete_rules(host, |r| mark_rule(r) && r.fwmark != Some(mark)).await?;
    } else {
        delete_rules(host, mark_rule).await?;
    }
    external_service_rules(host, &plan.external_service_cidrs).await?;
    if let Some(primary) = &plan.node_port {
        let path = format!("/proc/sys/net/ipv4/conf/{primary}/rp_filter");
        std::fs::write(&path, "2").map_err(|source| NetError::Sysctl { path, source })?;
    }
    Ok(())
}

/// Rules 1535 `to <cidr> lookup main`, exactly one per CIDR.
async fn external_service_rules(host: &Handle, cidrs: &[Cidr]) -> Result<(), SnatError> {
    let ours = |r: &IpRule| r.priority == Some(EXTERNAL_SERVICE_PRIORITY) && r.table == MAIN_TABLE;
    let present: Vec<Cidr> =
        rules(host).await?.iter().filter(|r| ours(r)).filter_map(|r| r.dst_cidr).collect();
    delete_rules(host, |r| ours(r) && r.dst_cidr.is_none_or(|c| !cidrs.contains(&c))).await?;
    for c in cidrs.iter().filter(|c| !present.contains(c)) {
        host.rule()
            .add()
            .v4()
            .destination_prefix(c.addr, c.prefix_len)
            .table_id(MAIN_TABLE)
            .priority(EXTERNAL_SERVICE_PRIORITY)
            .action(RuleAction::ToTable)
            .execute()
            .await
            .map_err(call(format!("rule to {c} lookup main")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(snat: bool, node_port: bool) -> Plan {
        Plan {
            snat: snat.then(|| Snat {
                primary_ip: "10.0.0.4".parse().unwrap(),
                not_nated: vec!["10.0.0.0/16".parse().unwrap(), "100.64.0.0/16".parse().unwrap()],
                random: RandomizeSnat::Prng,
            }),
            node_port: node_port.then(|| "eth0".to_owned()),
            mark: 0x4000,
            veth_prefix: "eni".into(),
            external_service_cidrs: Vec::new(),
            v4_egress: None,
            v6_egress: None,
        }
    }

    /// IPv6 mode's IPv4 egress: the pods' range SNATed to the node's IPv4 (not multicast), new
    /// connections into it rejected; no marks.
    #[test]
    fn v4_egress_snats_the_pods_range_and_rejects_connections_into_it() {
        let egress = Plan {
            v4_egress: Some(Egress { node_ip: "10.0.0.4".parse().unwrap(), random: RandomizeSnat::Prng }),
            ..plan(false, false)
        };
        assert!(egress.table() && !egress.marks());
        let text = serde_json::to_value(egress.ruleset()).unwrap().to_string();
        assert!(text.contains(r#""prefix":{"addr":"169.254.172.0","len":22}"#), "{text}");
        assert!(text.contains(r#""op":"!=","right":{"prefix":{"addr":"224.0.0.0","len":4}}"#), "{text}");
        assert!(text.contains(r#""snat":{"addr":"10.0.0.4","flags":["fully-random"]}"#), "{text}");
        assert!(text.contains(r#""hook":"forward""#) && text.contains(r#""reject":null"#), "{text}");
        assert!(!plan(true, true).ruleset().objects.iter().any(|o| format!("{o:?}").contains("forward")));
    }

    /// IPv4 mode's IPv6 egress: an `ip6` table with the pods' fd00::ac:0/118 SNATed to the node's
    /// IPv6 (not multicast) and new connections into it rejected, beside the `ip` table; without
    /// it, the `ip6` table is removed.
    #[test]
    fn v6_egress_snats_the_pods_ula_range_in_an_ip6_table() {
        let egress = Plan {
            v6_egress: Some(Egress {
                node_ip: "2600:1f14::10".parse().unwrap(),
                random: RandomizeSnat::None,
            }),
            ..plan(true, false)
        };
        let json = serde_json::to_value(egress.ruleset()).unwrap();
        let objects = json["nftables"].as_array().unwrap();
        let ip6: Vec<String> = objects
            .iter()
            .filter(|o| o.to_string().contains(r#""family":"ip6""#))
            .map(|o| o.to_string())
            .collect();
        let text = ip6.join(" ");
        assert!(ip6[0].contains("add") && ip6[1].contains("delete") && ip6[2].contains("add"), "{text}");
        assert!(text.contains(r#""prefix":{"addr":"fd00::ac:0","len":118}"#), "{text}");
        assert!(text.contains(r#""op":"!=","right":{"prefix":{"addr":"ff00::","len":8}}"#), "{text}");
        assert!(text.contains(r#""snat":{"addr":"2600:1f14::10"}"#), "{text}");
        assert!(
            text.contains(r#""field":"saddr","protocol":"ip6""#) && text.contains(r#""reject":null"#),
            "{text}"
        );
        assert!(!text.contains("10.0.0.4"), "the IPv4 SNAT stays in the ip table: {text}");
        let without = serde_json::to_value(plan(true, false).ruleset()).unwrap().to_string();
        assert!(
            without.contains(r#"{"delete":{"table":{"family":"ip6""#) && !without.contains("fd00"),
            "{without}"
        );
    }

    #[test]
    fn the_ruleset_replaces_the_table_and_snats_what_leaves_the_vpc() {
        let json = serde_json::to_value(plan(true, false).ruleset()).unwrap();
        let objects = json["nftables"].as_array().unwrap();
        // add, delete, add the table first: one transaction that never leaves no table.
        assert!(
            objects[0]["add"]["table"]["name"] == "eniguard"
                && objects[1]["delete"]["table"]["name"] == "eniguard"
        );
        let text = json.to_string();
        assert!(text.contains(r#""snat":{"addr":"10.0.0.4","flags":["fully-random"]}"#), "{text}");
        assert!(text.contains(r#""right":"eni*""#), "{text}");
        assert!(text.contains(r#""prefix":{"addr":"100.64.0.0","len":16}"#), "{text}");
        assert!(
            text.contains("16384") && !text.contains(r#""right":"eth0""#),
            "the configured mark, no NodePort: {text}"
        );
        assert!(!text.contains(r#""right":"vlan*"}},{"match""#), "{text}");
    }

    /// NodePort support marks what arrives on the primary interface for a local address and
    /// restores the mark from pods and branch pods; without SNAT there is no NAT chain.
    #[test]
    fn node_port_marks_the_primary_interfaces_connections() {
        let text = serde_json::to_value(plan(false, true).ruleset()).unwrap().to_string();
        assert!(text.contains(r#""right":"eth0""#), "{text}");
        assert!(text.contains(r#""fib":{"flags":["#) && text.contains(r#""iif""#), "{text}");
        assert!(text.contains(r#""right":"eni*""#) && text.contains(r#""right":"vlan*""#), "{text}");
        assert!(!text.contains("postrouting") && !text.contains("snat"), "{text}");
        assert!(plan(false, true).marks() && plan(true, false).marks() && !plan(false, false).marks());
    }
}
