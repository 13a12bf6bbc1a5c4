//! The instance metadata service (IMDSv2, through aws-config's client): the instance's identity
//! and the ENIs attached to it as the instance sees them. IMDS is the agent's first source of
//! truth (upstream reads it every reconcile tick and asks EC2 only on a mismatch).

use std::{net::Ipv4Addr, time::Duration};

use aws_config::{
    imds::{self, client::error::ImdsError},
    provider_config::ProviderConfig,
};

use super::calls::Calls;
use crate::ipam::model::Cidr;

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

    pub async fn identity(&self) -> Result<Identity, ImdsFailure> {
        let local = self.required("local-ipv4").await?;
        Ok(Identity {
            region: self.required("placement/region").await?,
            availability_zone: self.required("placement/availability-zone").await?,
            instance_id: self.required("instance-id").await?,
            instance_type: self.required("instance-type").await?,
            mac: self.required("mac").await?,
            local_ipv4: parse("local-ipv4", &local, "an IPv4 address", |s| s.parse().ok())?,
        })
    }

    /// The MACs of the attached ENIs, in IMDS order.
    pub async fn macs(&self) -> Result<Vec<String>, ImdsFailure> {
        self.lines("network/interfaces/macs").await
    }

    /// Every attached ENI that IMDS shows.
    pub async fn enis(&self) -> Result<Vec<ImdsEni>, ImdsFailure> {
        let mut out = Vec::new();
        for mac in self.macs().await? {
            out.push(self.eni(&mac).await?);
        }
        Ok(out)
    }

    pub async fn eni(&self, mac: &str) -> Result<ImdsEni, ImdsFailure> {
        let p = |field: &str| format!("network/interfaces/macs/{mac}/{field}");
        let device = self.required(&p("device-number")).await?;
        let subnet_cidr = self.required(&p("subnet-ipv4-cidr-block")).await?;
        let mut ips = Vec::new();
        for (i, line) in self.lines(&p("local-ipv4s")).await?.iter().enumerate() {
            ips.push(parse(&format!("{}[{i}]", p("local-ipv4s")), line, "an IPv4 address", |s| {
                s.parse().ok()
            })?);
        }
        if ips.is_empty() {
            return Err(ImdsFailure::Missing(p("local-ipv4s")));
        }
        let primary_ip = ips.remove(0);
        let mut prefixes = Vec::new();
        for line in self.lines(&p("ipv4-prefix")).await? {
            prefixes.push(parse(&p("ipv4-prefix"), &line, "a /28 prefix", parse_prefix28)?);
        }
        let mut vpc_cidrs = Vec::new();
        for line in self.lines(&p("vpc-ipv4-cidr-blocks")).await? {
            vpc_cidrs.push(parse(&p("vpc-ipv4-cidr-blocks"), &line, "an IPv4 CIDR", parse_cidr)?);
        }
        Ok(ImdsEni {
            mac: mac.to_owned(),
            id: self.required(&p("interface-id")).await?,
            device_number: parse(&p("device-number"), &device, "a device number", |s| s.parse().ok())?,
            subnet_id: self.required(&p("subnet-id")).await?,
            subnet_cidr: parse(&p("subnet-ipv4-cidr-block"), &subnet_cidr, "an IPv4 CIDR", parse_cidr)?,
            vpc_id: self.required(&p("vpc-id")).await?,
            vpc_cidrs,
            primary_ip,
            secondary_ips: ips,
            prefixes,
            security_groups: self.lines(&p("security-group-ids")).await?,
        })
    }

    /// The primary ENI's security groups (upstream's `RefreshSGIDs`).
    /// The attached ENI with this MAC, once IMDS lists it (None before).
    pub async fn attached_eni(&self, mac: &str) -> Result<Option<ImdsEni>, ImdsFailure> {
        if !self.macs().await?.iter().any(|m| m == mac) {
            return Ok(None);
        }
        self.eni(mac).await.map(Some)
    }

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
