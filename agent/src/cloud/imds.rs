//! The instance metadata service (IMDSv2, through aws-config's client): the instance's identity
//! and the ENIs attached to it as the instance sees them. IMDS is the agent's first source of
//! truth (upstream reads it every reconcile tick and asks EC2 only on a mismatch).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aws_config::{
    imds::{self, client::error::ImdsError},
    provider_config::ProviderConfig,
};

use super::calls::Calls;
use crate::ipam::model::{Cidr, Cidr6};

#[derive(Debug, thiserror::Error)]
pub enum ImdsFailure {
    #[error("IMDS {path}: {}", error_chain(source))]
    Call { path: String, source: Box<ImdsError> },
    #[error("IMDS {path}: `{value}` is not {expected}")]
    Parse { path: String, value: String, expected: &'static str },
    #[error("IMDS {0}: missing")]
    Missing(String),
}

/// Who this instance is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub region: String,
    pub availability_zone: String,
    pub instance_id: String,
    pub instance_type: String,
    /// The primary ENI's MAC.
    pub mac: String,
    pub local_ipv4: Ipv4Addr,
}

/// One attached ENI as IMDS shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsEni {
    pub mac: String,
    pub id: String,
    pub device_number: u32,
    pub subnet_id: String,
    pub subnet_cidr: Cidr,
    pub vpc_id: String,
    pub vpc_cidrs: Vec<Cidr>,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Cidr>,
    pub security_groups: Vec<String>,
}

/// What IMDS says about IPv6 for the instance and one ENI (IPv6 mode reads it for the primary).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ipv6View {
    /// The instance's IPv6 address (`ipv6`), if it has one.
    pub node_ip: Option<Ipv6Addr>,
    /// The ENI's delegated prefixes (`ipv6-prefix`).
    pub prefixes: Vec<Cidr6>,
    /// The ENI's subnet's IPv6 block (`subnet-ipv6-cidr-blocks`), if any.
    pub subnet: Option<Cidr6>,
    /// The VPC's IPv6 blocks (`vpc-ipv6-cidr-blocks`).
    pub vpc: Vec<Cidr6>,
}

impl ImdsEni {
    /// The pod address ranges: secondary addresses as /32s and the /28 prefixes.
    pub fn cidrs(&self) -> Vec<Cidr> {
        self.secondary_ips.iter().map(|ip| Cidr::host(*ip)).chain(self.prefixes.iter().copied()).collect()
    }
}

#[derive(Clone, Debug)]
pub struct Imds {
    client: imds::Client,
    calls: Calls,
}

const BASE: &str = "/latest/meta-data/";

impl Imds {
    /// The client; its endpoint comes from `AWS_EC2_METADATA_SERVICE_ENDPOINT` (and the other
    /// standard IMDS settings) or the instance default. Upstream: 10 attempts, 10 s timeout.
    pub fn new(calls: Calls) -> Self {
        let provider = ProviderConfig::without_region().with_http_client(super::http_client());
        let client = imds::Client::builder()
            .configure(&provider)
            .max_attempts(10)
            .operation_timeout(Duration::from_secs(10))
            .build();
        Self { client, calls }
    }

    /// The value at `path` under meta-data, or None for a 404 (e.g. `ipv4-prefix` of an ENI
    /// without prefixes).
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsFailure> {
        let started = std::time::Instant::now();
        let result = self.client.get(format!("{BASE}{path}")).await;
        let took = started.elapsed();
        let action = metric_action(path);
        match result {
            Ok(v) => {
                self.calls.record("imds", action, "ok", took);
                Ok(Some(String::from(v)))
            }
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => {
                self.calls.record("imds", action, "404", took);
                Ok(None)
            }
            Err(e) => {
                self.calls.record("imds", action, "error", took);
                Err(ImdsFailure::Call { path: path.to_owned(), source: Box::new(e) })
            }
        }
    }

    async fn required(&self, path: &str) -> Result<String, ImdsFailure> {
        self.get(path).await?.map(|v| v.trim().to_owned()).ok_or_else(|| ImdsFailure::Missing(path.into()))
    }

    async fn lines(&self, path: &str) -> Result<Vec<String>, ImdsFailure> {
        Ok(self
            .get(path)
            .await?
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().trim_end_matches('/').to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The instance's identity. The fields are asked for at once, as are an ENI's below: each
    /// is a round trip, and IMDS under load (or a node's start) makes them add up.
    pub async fn identity(&self) -> Result<Identity, ImdsFailure> {
        let (local, region, availability_zone, instance_id, instance_type, mac) = tokio::try_join!(
            self.required("local-ipv4"),
            self.required("placement/region"),
            self.required("placement/availability-zone"),
            self.required("instance-id"),
            self.required("instance-type"),
            self.required("mac"),
        )?;
        Ok(Identity {
            region,
            availability_zone,
            instance_id,
            instance_type,
            mac,
            local_ipv4: parse("local-ipv4", &local, "an IPv4 address", |s| s.parse().ok())?,
        })
    }

    /// The MACs of the attached ENIs, in IMDS order.
    pub async fn macs(&self) -> Result<Vec<String>, ImdsFailure> {
        self.lines("network/interfaces/macs").await
    }

    /// Every attached ENI that IMDS shows (in IMDS order).
    pub async fn enis(&self) -> Result<Vec<ImdsEni>, ImdsFailure> {
        let macs = self.macs().await?;
        futures::future::try_join_all(macs.iter().map(|mac| self.eni(mac))).await
    }

    pub async fn eni(&self, mac: &str) -> Result<ImdsEni, ImdsFailure> {
        let p = |field: &str| format!("network/interfaces/macs/{mac}/{field}");
        let paths = [
            "device-number",
            "subnet-ipv4-cidr-block",
            "local-ipv4s",
            "ipv4-prefix",
            "vpc-ipv4-cidr-blocks",
            "interface-id",
            "subnet-id",
            "vpc-id",
            "security-group-ids",
        ]
        .map(p);
        let (device, subnet_cidr, ips, prefixes, vpc_cidrs, id, subnet_id, vpc_id, security_groups) = tokio::try_join!(
            self.required(&paths[0]),
            self.required(&paths[1]),
            self.lines(&paths[2]),
            self.lines(&paths[3]),
            self.lines(&paths[4]),
            self.required(&paths[5]),
            self.required(&paths[6]),
            self.required(&paths[7]),
            self.lines(&paths[8]),
        )?;
        let mut ips = ips
            .iter()
            .enumerate()
            .map(|(i, line)| {
                parse(&format!("{}[{i}]", paths[2]), line, "an IPv4 address", |s| s.parse().ok())
            })
            .collect::<Result<Vec<std::net::Ipv4Addr>, _>>()?;
        if ips.is_empty() {
            return Err(ImdsFailure::Missing(paths[2].clone()));
        }
        let primary_ip = ips.remove(0);
        Ok(ImdsEni {
            mac: mac.to_owned(),
            id,
            device_number: parse(&paths[0], &device, "a device number", |s| s.parse().ok())?,
            subnet_id,
            subnet_cidr: parse(&paths[1], &subnet_cidr, "an IPv4 CIDR", parse_cidr)?,
            vpc_id,
            vpc_cidrs: vpc_cidrs
                .iter()
                .map(|l| parse(&paths[4], l, "an IPv4 CIDR", parse_cidr))
                .collect::<Result<_, _>>()?,
            primary_ip,
            secondary_ips: ips,
            prefixes: prefixes
                .iter()
                .map(|l| parse(&paths[3], l, "a /28 prefix", parse_prefix28))
                .collect::<Result<_, _>>()?,
            security_groups,
        })
    }

    /// The attached ENI with this MAC, once IMDS lists it (None before).
    pub async fn attached_eni(&self, mac: &str) -> Result<Option<ImdsEni>, ImdsFailure> {
        if !self.macs().await?.iter().any(|m| m == mac) {
            return Ok(None);
        }
        self.eni(mac).await.map(Some)
    }

    /// IPv6 as IMDS shows it for the instance and the ENI `mac` (each path asked at once; a
    /// 404 is "none").
    pub async fn ipv6(&self, mac: &str) -> Result<Ipv6View, ImdsFailure> {
        let p = |field: &str| format!("network/interfaces/macs/{mac}/{field}");
        let paths = [p("ipv6-prefix"), p("subnet-ipv6-cidr-blocks"), p("vpc-ipv6-cidr-blocks")];
        let (node_ip, prefixes, subnet, vpc) = tokio::try_join!(
            self.lines("ipv6"),
            self.lines(&paths[0]),
            self.lines(&paths[1]),
            self.lines(&paths[2])
        )?;
        let cidrs = |path: &str, lines: &[String]| {
            lines
                .iter()
                .map(|l| parse(path, l, "an IPv6 CIDR", |s| s.parse::<Cidr6>().ok()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Ipv6View {
            node_ip: node_ip
                .first()
                .map(|l| parse("ipv6", l, "an IPv6 address", |s| s.parse().ok()))
                .transpose()?,
            prefixes: cidrs(&paths[0], &prefixes)?,
            subnet: cidrs(&paths[1], &subnet)?.into_iter().next(),
            vpc: cidrs(&paths[2], &vpc)?,
        })
    }

    /// The primary ENI's security groups (upstream's `RefreshSGIDs`).
    pub async fn primary_security_groups(&self, mac: &str) -> Result<Vec<String>, ImdsFailure> {
        self.lines(&format!("network/interfaces/macs/{mac}/security-group-ids")).await
    }
}

/// The metric label for a path: the per-MAC part replaced, so labels stay few.
fn metric_action(path: &str) -> &str {
    match path.strip_prefix("network/interfaces/macs/") {
        Some(rest) => rest.split_once('/').map_or("network/interfaces/macs", |(_, f)| f),
        None => path,
    }
}

fn parse<T>(
    path: &str,
    value: &str,
    expected: &'static str,
    f: impl Fn(&str) -> Option<T>,
) -> Result<T, ImdsFailure> {
    f(value.trim()).ok_or_else(|| ImdsFailure::Parse { path: path.to_owned(), value: value.into(), expected })
}

pub fn parse_cidr(s: &str) -> Option<Cidr> {
    s.contains('/').then(|| s.parse().ok()).flatten()
}

fn parse_prefix28(s: &str) -> Option<Cidr> {
    parse_cidr(s).filter(|c| c.prefix_len == 28).and_then(|c| Cidr::prefix28(c.addr))
}

/// The error and its sources, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_few_labels() {
        assert_eq!(metric_action("network/interfaces/macs/02:00:00:00:00:01/local-ipv4s"), "local-ipv4s");
        assert_eq!(metric_action("network/interfaces/macs"), "network/interfaces/macs");
        assert_eq!(metric_action("instance-id"), "instance-id");
    }

    #[test]
    fn prefixes_must_be_28s() {
        assert!(parse_prefix28("10.0.0.16/28").is_some());
        assert!(parse_prefix28("10.0.0.16/27").is_none());
        assert!(parse_prefix28("10.0.0.17/28").is_none(), "host bits set");
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
