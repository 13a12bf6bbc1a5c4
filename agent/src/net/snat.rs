//! SNAT of pod traffic that leaves the VPC, as upstream does it (pkg/networkutils/network.go),
//! in an nftables table of eniguard's own (`ip eniguard`), replaced in one transaction:
//!
//! - `prerouting` (mangle priority): a new connection from a pod (`<veth prefix>*`) to outside
//!   the VPC CIDRs and AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS gets connmark 0x80, and every packet of
//!   such a connection carries it as its mark;
//! - rule 1024 `fwmark 0x80/0x80 lookup main`: those packets leave through the primary ENI
//!   (whatever ENI the pod's address is on), so that
//! - `postrouting` (srcnat priority): SNAT to the primary ENI's address (`fully-random` for
//!   RANDOMIZESNAT=prng, `random` for hashrandom) for everything not to the VPC, not out of a
//!   branch-ENI VLAN link and not to a local address — EC2 accepts it there.
//!
//! With AWS_VPC_K8S_CNI_EXTERNALSNAT the table and the rule are removed: a NAT gateway does it.
//!
//! The ruleset is built with the `nftables` crate's typed JSON schema and applied by `nft -j -f`
//! (its helper); the table is added, deleted and re-created in the same batch, so the kernel
//! sees the old rules or the new ones, never none.

use std::{borrow::Cow, collections::HashSet, net::Ipv4Addr};

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

use super::netlink::{call, delete_rules, is_exists, NetError};
use crate::config::RandomizeSnat;

pub const TABLE: &str = "eniguard";
/// Upstream's AWS_VPC_K8S_CNI_CONNMARK default.
pub const MARK: u32 = 0x80;
/// `fwmark 0x80/0x80 lookup main` (upstream's priority).
pub const MARK_RULE_PRIORITY: u32 = 1024;

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

/// What the ruleset says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub primary_ip: Ipv4Addr,
    /// The VPC CIDRs and the exclusions, as (address, prefix length).
    pub not_nated: Vec<(Ipv4Addr, u8)>,
    pub random: RandomizeSnat,
    pub veth_prefix: String,
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

fn or_mark(e: Expression<'static>) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![e, Expression::Number(MARK)])))
}

impl Plan {
    fn not_nated_set(&self) -> Expression<'static> {
        Expression::Named(NamedExpression::Set(
            self.not_nated
                .iter()
                .map(|(addr, len)| {
                    SetItem::Element(Expression::Named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(Expression::String(addr.to_string().into())),
                        len: u32::from(*len),
                    })))
                })
                .collect(),
        ))
    }

    /// The batch that replaces the table (pure).
    pub fn ruleset(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        let table = || Table { family: NfFamily::IP, name: TABLE.into(), handle: None };
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        batch.add(NfListObject::Table(table()));
        let chain = |name: &'static str, kind, hook, prio| Chain {
            family: NfFamily::IP,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        };
        batch.add(NfListObject::Chain(chain("prerouting", NfChainType::Filter, NfHook::Prerouting, -150)));
        batch.add(NfListObject::Chain(chain("postrouting", NfChainType::NAT, NfHook::Postrouting, 100)));
        let rule = |chain: &'static str, expr: Vec<Statement<'static>>| {
            NfListObject::Rule(Rule {
                family: NfFamily::IP,
                table: TABLE.into(),
                chain: chain.into(),
                expr: Cow::Owned(expr),
                ..Rule::default()
            })
        };
        let from_pod = || {
            matches(
                meta(MetaKey::Iifname),
                Operator::EQ,
                Expression::String(format!("{}*", self.veth_prefix).into()),
            )
        };
        batch.add(rule(
            "prerouting",
            vec![
                from_pod(),
                matches(ct("state"), Operator::IN, Expression::String("new".into())),
                matches(payload("ip", "daddr"), Operator::NEQ, self.not_nated_set()),
                Statement::Mangle(Mangle { key: ct("mark"), value: or_mark(ct("mark")) }),
            ],
        ));
        batch.add(rule(
            "prerouting",
            vec![
                from_pod(),
                matches(
                    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                        ct("mark"),
                        Expression::Number(MARK),
                    ))),
                    Operator::EQ,
                    Expression::Number(MARK),
                ),
                Statement::Mangle(Mangle { key: meta(MetaKey::Mark), value: or_mark(meta(MetaKey::Mark)) }),
            ],
        ));
        batch.add(rule(
            "postrouting",
            vec![
                matches(payload("ip", "daddr"), Operator::EQ, self.not_nated_set()),
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
        let fib = Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        }));
        batch.add(rule(
            "postrouting",
            vec![matches(fib, Operator::EQ, Expression::String("local".into())), Statement::Return(None)],
        ));
        let flags = match self.random {
            RandomizeSnat::Prng => Some(HashSet::from([NATFlag::FullyRandom])),
            RandomizeSnat::HashRandom => Some(HashSet::from([NATFlag::Random])),
            RandomizeSnat::None => None,
        };
        batch.add(rule(
            "postrouting",
            vec![Statement::SNAT(Some(NAT {
                addr: Some(Expression::String(self.primary_ip.to_string().into())),
                family: None,
                port: None,
                flags,
            }))],
        ));
        batch.to_nftables()
    }
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

/// Installs the plan (table and rule 1024), or removes both for external SNAT (`None`).
pub async fn apply(host: &Handle, plan: Option<&Plan>) -> Result<(), SnatError> {
    let mark_rule = |r: &super::netlink::Rule| r.priority == Some(MARK_RULE_PRIORITY);
    let Some(plan) = plan else {
        let mut batch = Batch::new();
        let table = || Table { family: NfFamily::IP, name: TABLE.into(), handle: None };
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        nft(batch.to_nftables()).await?;
        delete_rules(host, mark_rule).await?;
        return Ok(());
    };
    nft(plan.ruleset()).await?;
    let mut add = host
        .rule()
        .add()
        .v4()
        .table_id(254)
        .priority(MARK_RULE_PRIORITY)
        .action(RuleAction::ToTable)
        .fw_mark(MARK);
    add.message_mut().attributes.push(RuleAttribute::FwMask(MARK));
    match add.execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(call(format!("rule fwmark {MARK:#x}/{MARK:#x} lookup main"))(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_the_table_and_snats_what_leaves_the_vpc() {
        let plan = Plan {
            primary_ip: "10.0.0.4".parse().unwrap(),
            not_nated: vec![("10.0.0.0".parse().unwrap(), 16), ("100.64.0.0".parse().unwrap(), 16)],
            random: RandomizeSnat::Prng,
            veth_prefix: "eni".into(),
        };
        let json = serde_json::to_value(plan.ruleset()).unwrap();
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
    }
}
