//! IMDS for the simulated node, IMDSv2 only: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds` (1..=21600) returns a token, and every `GET` must carry
//! it in `X-aws-ec2-metadata-token` (401 otherwise). Answers are read from the EC2 state at request
//! time, so they always agree with what DescribeNetworkInterfaces says.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::StatusCode;

use super::{
    ec2::{AttachState, Ec2, Eni},
    ec2_api::Shared,
    http::{self, reply, Req, Resp},
};

struct Imds {
    sim: Shared,
    instance_id: String,
    propagation_delay: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
}

/// Serves IMDS for `instance_id` on 127.0.0.1; returns the endpoint URL
/// (for `AWS_EC2_METADATA_SERVICE_ENDPOINT`). An ENI attached after launch appears under
/// `network/interfaces/macs/` only `propagation_delay` after its attachment, as on EC2 where
/// IMDS lags the API.
pub async fn start(
    sim: Shared,
    instance_id: &str,
    propagation_delay: Duration,
) -> std::io::Result<(String, SocketAddr)> {
    let imds = Arc::new(Imds {
        sim,
        instance_id: instance_id.to_owned(),
        propagation_delay,
        tokens: Mutex::new(HashMap::new()),
    });
    let addr = http::start(move |req| {
        let imds = imds.clone();
        async move { imds.handle(req) }
    })
    .await?;
    Ok((format!("http://{addr}"), addr))
}

fn text(status: StatusCode, body: String) -> Resp {
    reply(status, "text/plain", body)
}

impl Imds {
    fn handle(&self, req: Req) -> Resp {
        if req.path == "/latest/api/token" {
            if req.method != "PUT" {
                return text(StatusCode::METHOD_NOT_ALLOWED, String::new());
            }
            let ttl =
                req.headers.get("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u64>().ok());
            let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
                return text(StatusCode::BAD_REQUEST, String::new());
            };
            let token = format!("sim-{:032x}", rand_u128());
            if let Ok(mut t) = self.tokens.lock() {
                t.insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
            }
            let mut r = text(StatusCode::OK, token);
            if let Ok(v) = ttl.to_string().parse() {
                r.headers_mut().insert("x-aws-ec2-metadata-token-ttl-seconds", v);
            }
            return r;
        }
        let valid = req
            .headers
            .get("x-aws-ec2-metadata-token")
            .and_then(|t| self.tokens.lock().ok().and_then(|m| m.get(t).copied()))
            .is_some_and(|expiry| expiry > Instant::now());
        if !valid {
            return text(StatusCode::UNAUTHORIZED, String::new());
        }
        let Some(rest) = req.path.strip_prefix("/latest/meta-data/") else {
            return text(StatusCode::NOT_FOUND, String::new());
        };
        let Ok(sim) = self.sim.lock() else { return text(StatusCode::INTERNAL_SERVER_ERROR, String::new()) };
        match lookup(&sim.ec2, &self.instance_id, self.propagation_delay, rest.trim_end_matches('/')) {
            Some(v) => text(StatusCode::OK, v),
            None => text(StatusCode::NOT_FOUND, String::new()),
        }
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (u128::from(h.finish()) << 64)
        | u128::from(std::collections::hash_map::RandomState::new().build_hasher().finish())
}

fn lookup(ec2: &Ec2, instance_id: &str, delay: Duration, path: &str) -> Option<String> {
    let instance = ec2.instances.get(instance_id).filter(|i| !i.terminated)?;
    let visible = |e: &&Eni| {
        e.attachment.as_ref().is_some_and(|a| {
            a.device_index == 0 || (a.state != AttachState::Attaching && a.attached_at.elapsed() >= delay)
        })
    };
    let enis: Vec<&Eni> = ec2.attached_to(instance_id).into_iter().filter(visible).collect();
    let primary = enis.first()?;
    match path {
        "instance-id" => Some(instance.id.clone()),
        "instance-type" => Some(instance.instance_type.name.to_owned()),
        "placement/availability-zone" => Some(instance.az.clone()),
        "placement/region" => {
            Some(instance.az.trim_end_matches(|c: char| c.is_ascii_alphabetic()).to_owned())
        }
        "local-ipv4" => Some(primary.primary_ip.to_string()),
        "ipv6" => primary.ipv6_addresses.first().map(ToString::to_string),
        "mac" => Some(primary.mac.clone()),
        "security-group-ids" => Some(primary.groups.join("\n")),
        "network/interfaces/macs" => {
            Some(enis.iter().map(|e| format!("{}/", e.mac)).collect::<Vec<_>>().join("\n"))
        }
        _ => {
            let rest = path.strip_prefix("network/interfaces/macs/")?;
            let (mac, field) = rest.split_once('/')?;
            let eni = enis.iter().find(|e| e.mac == mac)?;
            eni_field(ec2, eni, delay, field)
        }
    }
}

fn eni_field(ec2: &Ec2, eni: &Eni, delay: Duration, field: &str) -> Option<String> {
    // Addresses and prefixes assigned less than the propagation delay ago are not shown yet.
    let shown_at = |ip: IpAddr| eni.assigned_at.get(&ip).is_none_or(|at| at.elapsed() >= delay);
    let shown = |ip: &&std::net::Ipv4Addr| shown_at(IpAddr::V4(**ip));
    let shown6 = |ip: &&std::net::Ipv6Addr| shown_at(IpAddr::V6(**ip));
    let lines = |v: Vec<String>| (!v.is_empty()).then(|| v.join("\n"));
    let subnet = ec2.subnets.get(&eni.subnet_id)?;
    let subnet_cidr = format!("{}/{}", subnet.cidr.0, subnet.cidr.1);
    match field {
        "device-number" => eni.attachment.as_ref().map(|a| a.device_index.to_string()),
        "interface-id" => Some(eni.id.clone()),
        "subnet-id" => Some(eni.subnet_id.clone()),
        "vpc-id" => Some(eni.vpc_id.clone()),
        "subnet-ipv4-cidr-block" => Some(subnet_cidr),
        "vpc-ipv4-cidr-blocks" => Some(ec2.vpc_cidrs.get(&eni.vpc_id).cloned().unwrap_or(subnet_cidr)),
        "local-ipv4s" => Some(
            std::iter::once(eni.primary_ip)
                .chain(eni.secondary_ips.iter().filter(shown).copied())
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        "ipv4-prefix" => lines(eni.prefixes.iter().filter(shown).map(|p| format!("{p}/28")).collect()),
        "security-group-ids" => Some(eni.groups.join("\n")),
        "mac" => Some(eni.mac.clone()),
        "ipv6s" => lines(eni.ipv6_addresses.iter().filter(shown6).map(ToString::to_string).collect()),
        "ipv6-prefix" => lines(eni.ipv6_prefixes.iter().filter(shown6).map(|p| format!("{p}/80")).collect()),
        "subnet-ipv6-cidr-blocks" => subnet.ipv6.as_ref().map(|v6| format!("{}/64", v6.cidr)),
        "vpc-ipv6-cidr-blocks" => ec2.vpc_ipv6_cidrs.get(&eni.vpc_id).cloned(),
        _ => None,
    }
}
