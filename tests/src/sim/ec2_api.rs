//! The EC2 Query API over HTTP: form-encoded POST in, XML out, shaped as the EC2 API reference so
//! that aws-sdk-ec2 (and other SDKs) parse it. SigV4 headers are accepted and not checked.
//!
//! A control endpoint under `/_sim/` sets faults and reads the per-action call counter:
//! - `POST /_sim/throttle?action=ActionName&count=N` — the next N calls of that action (or of any
//!   action with `action=*`) fail with `RequestLimitExceeded` (HTTP 503, as EC2 answers);
//! - `POST /_sim/fail?action=ActionName&count=N&status=500|503` — the next N calls fail with a
//!   server error;
//! - `POST /_sim/throttle?rate=0.5&seconds=30` — for that long, each call (of `action`, or any)
//!   is throttled with that probability, as a shared account's bucket runs dry;
//! - `POST /_sim/latency?ms=N` — every call is delayed by N ms;
//! - `GET /_sim/calls` — `{"ActionName": count, ...}` of every call received (faulted ones too);
//! - `GET /_sim/throttled` — `{"ActionName": count, ...}` of the calls answered
//!   `RequestLimitExceeded` (by the account's buckets, see [`super::buckets`], or a fault).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::StatusCode;

use super::ec2::{invalid, ApiError, Assign6Request, AssignRequest, CreateEni, Ec2, Eni};
use super::follower::{Change, Follower};
use super::http::{self, reply, Req, Resp};

/// Faults and accounting, shared by every request.
#[derive(Debug, Default)]
pub struct Faults {
    /// Action (or "*") → calls still to throttle.
    pub throttle: HashMap<String, u32>,
    /// Action (or "*") → (status, calls still to fail).
    pub fail: HashMap<String, (u16, u32)>,
    pub latency: Duration,
    pub calls: BTreeMap<String, u64>,
    /// Access key id (from the SigV4 credential scope) → action → calls: the agents' key
    /// (`AKIDVPCSIM`) apart from the tests' own clients (the IAM policy check).
    pub calls_by_key: BTreeMap<String, BTreeMap<String, u64>>,
    /// Action (or "*") → (probability, until): throttling at a rate for a while.
    pub throttle_rate: HashMap<String, (f64, std::time::Instant)>,
    /// xorshift state for the rate.
    pub rng: u64,
    /// Action → calls answered `RequestLimitExceeded`.
    pub throttled: BTreeMap<String, u64>,
}

/// The simulator's EC2 side: the model, the faults, and who follows its changes.
#[derive(Default)]
pub struct Ec2Sim {
    pub ec2: Ec2,
    pub faults: Faults,
    /// The account's request-token buckets, when the scenario turns them on.
    pub buckets: Option<super::buckets::Buckets>,
    /// The fabric's follower, with a fabric (see [`follower`](super::follower)).
    pub follower: Option<Arc<Follower>>,
    /// Changes to ENIs or attachments so far: the generation the follower is asked for.
    pub changes: u64,
}

impl std::fmt::Debug for Ec2Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Sim").field("ec2", &self.ec2).field("faults", &self.faults).finish_non_exhaustive()
    }
}

impl Ec2Sim {
    /// Tells the follower (if any) that ENIs or attachments may have changed; the answer waits
    /// until the fabric shows it.
    pub fn changed(&mut self) -> Option<Change> {
        self.changes += 1;
        Some(self.follower.as_ref()?.request(self.changes))
    }
}

pub type Shared = Arc<Mutex<Ec2Sim>>;

/// The EC2 side for a caller outside a request (the Resource Controller, tests). A panic while
/// it was held leaves the model as the panicking call left it; the simulator carries on.
pub fn lock(sim: &Shared) -> std::sync::MutexGuard<'_, Ec2Sim> {
    sim.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds 127.0.0.1 on a free port and serves the Query API there; returns the endpoint URL.
pub async fn start(sim: Shared) -> std::io::Result<(String, SocketAddr)> {
    let addr = http::start(move |req| handle(req, sim.clone())).await?;
    Ok((format!("http://{addr}"), addr))
}

async fn handle(req: Req, sim: Shared) -> Resp {
    if let Some(control) = req.path.strip_prefix("/_sim/") {
        return control_request(control, &req.query, &sim);
    }
    let params: HashMap<String, String> = form_urlencoded::parse(&req.body).into_owned().collect();
    let action = params.get("Action").cloned().unwrap_or_default();
    let latency = {
        let mut s = lock(&sim);
        *s.faults.calls.entry(action.clone()).or_default() += 1;
        *s.faults.calls_by_key.entry(access_key(&req)).or_default().entry(action.clone()).or_default() += 1;
        s.faults.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (result, change) = match model_call(&sim, &action, &params) {
        Outcome::Dispatched(result, change) => (result, change),
        Outcome::Refused(answer) => return answer,
    };
    if let Some(change) = change {
        change.applied().await;
    }
    match result {
        Ok(xml) => reply(StatusCode::OK, "text/xml;charset=UTF-8", xml),
        Err(e) if e.code == "InternalError" => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => error_response(StatusCode::BAD_REQUEST, &e),
    }
}

/// What the model made of a call.
enum Outcome {
    /// Refused before the model saw it: an empty bucket, an injected fault.
    Refused(Resp),
    /// Dispatched, with the change the fabric must show before the answer goes out.
    Dispatched(Result<String, ApiError>, Option<Change>),
}

/// The call against the model, under the lock.
fn model_call(sim: &Shared, action: &str, params: &HashMap<String, String>) -> Outcome {
    let mut s = lock(sim);
    let unfiltered =
        !params.keys().any(|k| k.starts_with("Filter.") || k == "MaxResults" || k == "NextToken");
    let emptied = s.buckets.as_mut().is_some_and(|b| !b.take(action, unfiltered, std::time::Instant::now()));
    if emptied || throttled(&mut s.faults, action) {
        *s.faults.throttled.entry(action.to_owned()).or_default() += 1;
        let e = ApiError { code: "RequestLimitExceeded", message: "Request limit exceeded.".into() };
        return Outcome::Refused(error_response(StatusCode::SERVICE_UNAVAILABLE, &e));
    }
    if let Some(r) = injected_fault(&mut s.faults, action) {
        return Outcome::Refused(r);
    }
    let changed_before = s.ec2.settle(std::time::Instant::now());
    // A bug in the model answers 500 for this request only; it never takes the simulator down.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(&mut s.ec2, action, params)))
            .unwrap_or_else(|_| {
                Err(ApiError { code: "InternalError", message: format!("the simulator failed on {action}") })
            });
    let change = (changed_before || (result.is_ok() && !action.starts_with("Describe")))
        .then(|| s.changed())
        .flatten();
    Outcome::Dispatched(result, change)
}

fn error_response(status: StatusCode, e: &ApiError) -> Resp {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        e.code,
        esc(&e.message),
        request_id()
    );
    reply(status, "text/xml;charset=UTF-8", body)
}

fn take(map: &mut HashMap<String, u32>, action: &str) -> bool {
    for k in [action, "*"] {
        if let Some(n) = map.get_mut(k) {
            if *n > 0 {
                *n -= 1;
                return true;
            }
        }
    }
    false
}

/// True with probability `rate` while a rate throttle for `action` (or any) is on.
fn rate_throttled(f: &mut Faults, action: &str) -> bool {
    let now = std::time::Instant::now();
    let Some(rate) = [action, "*"]
        .iter()
        .find_map(|k| f.throttle_rate.get(*k).filter(|(_, until)| now < *until).map(|(r, _)| *r))
    else {
        return false;
    };
    if f.rng == 0 {
        f.rng = 0x9e37_79b9_7f4a_7c15;
    }
    f.rng ^= f.rng << 13;
    f.rng ^= f.rng >> 7;
    f.rng ^= f.rng << 17;
    ((f.rng >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// Whether a throttling fault answers this call.
fn throttled(f: &mut Faults, action: &str) -> bool {
    take(&mut f.throttle, action) || rate_throttled(f, action)
}

/// A server-error fault for this call, if one is set.
fn injected_fault(f: &mut Faults, action: &str) -> Option<Resp> {
    for k in [action, "*"] {
        if let Some((status, n)) = f.fail.get_mut(k) {
            if *n > 0 {
                *n -= 1;
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let e = ApiError { code: "InternalError", message: "An internal error has occurred".into() };
                return Some(error_response(status, &e));
            }
        }
    }
    None
}

fn control_request(path: &str, q: &HashMap<String, String>, sim: &Shared) -> Resp {
    let mut s = lock(sim);
    let action = q.get("action").cloned().unwrap_or_else(|| "*".into());
    let count = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1u32);
    match path {
        "throttle" => match q.get("rate").and_then(|r| r.parse::<f64>().ok()) {
            Some(rate) => {
                let secs = q.get("seconds").and_then(|v| v.parse().ok()).unwrap_or(30);
                let until = std::time::Instant::now() + Duration::from_secs(secs);
                s.faults.throttle_rate.insert(action, (rate.clamp(0.0, 1.0), until));
            }
            None => {
                s.faults.throttle.insert(action, count);
            }
        },
        "fail" => {
            let status = q.get("status").and_then(|c| c.parse().ok()).unwrap_or(500u16);
            s.faults.fail.insert(action, (status, count));
        }
        "latency" => {
            s.faults.latency = Duration::from_millis(q.get("ms").and_then(|m| m.parse().ok()).unwrap_or(0))
        }
        "calls" => return counts(&s.faults.calls),
        "throttled" => return counts(&s.faults.throttled),
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", "unknown control\n"),
    }
    reply(StatusCode::OK, "text/plain", "ok\n")
}

/// `{"ActionName": count, ...}`.
fn counts(map: &BTreeMap<String, u64>) -> Resp {
    let body = serde_json::to_string(map).unwrap_or_else(|_| "{}".into());
    reply(StatusCode::OK, "application/json", body)
}

/// The access key id a SigV4-signed request names (`Credential=AKID/date/...`), or "".
fn access_key(req: &Req) -> String {
    req.headers
        .get("authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("00000000-0000-4000-8000-{:012x}", N.fetch_add(1, Ordering::Relaxed))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `Prefix.1`, `Prefix.2`, … in order.
fn list(p: &HashMap<String, String>, prefix: &str) -> Vec<String> {
    (1..).map_while(|i| p.get(&format!("{prefix}.{i}")).cloned()).collect()
}

fn required<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    p.get(name).map(String::as_str).ok_or_else(|| ApiError {
        code: "MissingParameter",
        message: format!("The request must contain the parameter {name}"),
    })
}

fn bad_value(v: &str, name: &str) -> ApiError {
    invalid(format!("Value ({v}) for parameter {name} is invalid."))
}

fn number(p: &HashMap<String, String>, name: &str) -> Result<Option<u32>, ApiError> {
    match p.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| bad_value(v, name)),
    }
}

/// Addresses (or prefixes: the part before `/`) of either family.
fn addresses<T: std::str::FromStr>(values: Vec<String>, name: &str) -> Result<Vec<T>, ApiError> {
    values.iter().map(|v| v.split('/').next().unwrap_or("").parse().map_err(|_| bad_value(v, name))).collect()
}

fn envelope(action: &str, inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>{}</requestId>{inner}</{action}Response>",
        request_id()
    )
}

fn ok_return(action: &str) -> String {
    envelope(action, "<return>true</return>")
}

fn dispatch(ec2: &mut Ec2, action: &str, p: &HashMap<String, String>) -> Result<String, ApiError> {
    match action {
        "CreateNetworkInterface" => {
            let mut tags = BTreeMap::new();
            for i in 1.. {
                let Some(key) = p.get(&format!("TagSpecification.1.Tag.{i}.Key")) else { break };
                let value = p.get(&format!("TagSpecification.1.Tag.{i}.Value")).cloned().unwrap_or_default();
                tags.insert(key.clone(), value);
            }
            let id = ec2.create_network_interface(CreateEni {
                subnet_id: required(p, "SubnetId")?.to_owned(),
                groups: list(p, "SecurityGroupId"),
                interface_type: p.get("InterfaceType").cloned(),
                description: p.get("Description").cloned().unwrap_or_default(),
                secondary_count: number(p, "SecondaryPrivateIpAddressCount")?.unwrap_or(0),
                prefix_count: number(p, "Ipv4PrefixCount")?.unwrap_or(0),
                ipv6_count: number(p, "Ipv6AddressCount")?.unwrap_or(0),
                tags,
            })?;
            let eni = ec2.eni(&id)?;
            Ok(envelope(action, &format!("<networkInterface>{}</networkInterface>", eni_xml(ec2, eni))))
        }
        "AttachNetworkInterface" => {
            let index = number(p, "DeviceIndex")?.ok_or_else(|| ApiError {
                code: "MissingParameter",
                message: "The request must contain the parameter DeviceIndex".into(),
            })?;
            let id = ec2.attach(required(p, "NetworkInterfaceId")?, required(p, "InstanceId")?, index)?;
            Ok(envelope(
                action,
                &format!("<attachmentId>{id}</attachmentId><networkCardIndex>0</networkCardIndex>"),
            ))
        }
        "DetachNetworkInterface" => {
            ec2.detach(required(p, "AttachmentId")?)?;
            Ok(ok_return(action))
        }
        "DeleteNetworkInterface" => {
            ec2.delete_network_interface(required(p, "NetworkInterfaceId")?)?;
            Ok(ok_return(action))
        }
        "AssignPrivateIpAddresses" => {
            let eni = required(p, "NetworkInterfaceId")?;
            let ips = list(p, "PrivateIpAddress");
            let prefixes = list(p, "Ipv4Prefix");
            let req = if !ips.is_empty() {
                AssignRequest::Addresses(addresses(ips, "PrivateIpAddress")?)
            } else if !prefixes.is_empty() {
                AssignRequest::Prefixes(addresses(prefixes, "Ipv4Prefix")?)
            } else if let Some(n) = number(p, "Ipv4PrefixCount")? {
                AssignRequest::PrefixCount(n)
            } else {
                AssignRequest::Count(number(p, "SecondaryPrivateIpAddressCount")?.unwrap_or(1))
            };
            let is_prefix = matches!(req, AssignRequest::PrefixCount(_) | AssignRequest::Prefixes(_));
            let added = ec2.assign_private_ips(eni, req)?;
            let mut inner = format!("<networkInterfaceId>{eni}</networkInterfaceId>");
            if is_prefix {
                inner.push_str("<assignedIpv4PrefixSet>");
                for a in added {
                    let _ = write!(inner, "<item><ipv4Prefix>{a}/28</ipv4Prefix></item>");
                }
                inner.push_str("</assignedIpv4PrefixSet>");
            } else {
                inner.push_str("<assignedPrivateIpAddressesSet>");
                for a in added {
                    let _ = write!(inner, "<item><privateIpAddress>{a}</privateIpAddress></item>");
                }
                inner.push_str("</assignedPrivateIpAddressesSet>");
            }
            Ok(envelope(action, &format!("{inner}<return>true</return>")))
        }
        "AssignIpv6Addresses" => assign_ipv6(ec2, p),
        "UnassignIpv6Addresses" => {
            let eni = required(p, "NetworkInterfaceId")?;
            let ips: Vec<std::net::Ipv6Addr> = addresses(list(p, "Ipv6Addresses"), "Ipv6Addresses")?;
            let prefixes: Vec<std::net::Ipv6Addr> = addresses(list(p, "Ipv6Prefix"), "Ipv6Prefix")?;
            ec2.unassign_ipv6(eni, &ips, &prefixes)?;
            let mut inner =
                format!("<networkInterfaceId>{eni}</networkInterfaceId><unassignedIpv6Addresses>");
            for a in ips {
                let _ = write!(inner, "<item>{a}</item>");
            }
            inner.push_str("</unassignedIpv6Addresses><unassignedIpv6PrefixSet>");
            for a in prefixes {
                let _ = write!(inner, "<item>{a}/80</item>");
            }
            inner.push_str("</unassignedIpv6PrefixSet>");
            Ok(envelope(action, &inner))
        }
        "UnassignPrivateIpAddresses" => {
            let ips = addresses(list(p, "PrivateIpAddress"), "PrivateIpAddress")?;
            let prefixes = addresses(list(p, "Ipv4Prefix"), "Ipv4Prefix")?;
            ec2.unassign_private_ips(required(p, "NetworkInterfaceId")?, &ips, &prefixes)?;
            Ok(ok_return(action))
        }
        "DescribeNetworkInterfaces" => describe_network_interfaces(ec2, p),
        "ModifyNetworkInterfaceAttribute" => {
            let eni = required(p, "NetworkInterfaceId")?;
            let groups = list(p, "SecurityGroupId");
            if !groups.is_empty() {
                ec2.modify_groups(eni, groups)?;
            }
            if let Some(v) = p.get("Attachment.DeleteOnTermination") {
                ec2.set_delete_on_termination(eni, v == "true")?;
            }
            Ok(ok_return(action))
        }
        "CreateTags" => {
            let tags = tag_list(p).into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
            for r in list(p, "ResourceId") {
                ec2.create_tags(&r, &tags)?;
            }
            Ok(ok_return(action))
        }
        "DeleteTags" => {
            let tags = tag_list(p);
            for r in list(p, "ResourceId") {
                ec2.delete_tags(&r, &tags)?;
            }
            Ok(ok_return(action))
        }
        "TerminateInstances" => {
            let mut inner = String::from("<instancesSet>");
            for id in list(p, "InstanceId") {
                ec2.terminate(&id)?;
                let _ = write!(
                    inner,
                    "<item><instanceId>{id}</instanceId><currentState><code>32</code><name>shutting-down</name></currentState><previousState><code>16</code><name>running</name></previousState></item>"
                );
            }
            inner.push_str("</instancesSet>");
            Ok(envelope(action, &inner))
        }
        "DescribeInstances" => describe_instances(ec2, p),
        "DescribeInstanceTypes" => describe_instance_types(p),
        "DescribeSubnets" => describe_subnets(ec2, p),
        "DescribeSecurityGroups" => {
            let ids = list(p, "GroupId");
            ec2.check_groups(&ids)?;
            let mut inner = String::from("<securityGroupInfo>");
            for (id, name) in &ec2.security_groups {
                if !ids.is_empty() && !ids.contains(id) {
                    continue;
                }
                let _ = write!(
                    inner,
                    "<item><ownerId>123456789012</ownerId><groupId>{id}</groupId><groupName>{}</groupName><groupDescription>{}</groupDescription><vpcId>{}</vpcId></item>",
                    esc(name),
                    esc(name),
                    // The simulator's groups belong to its one VPC.
                    ec2.subnets.values().next().map_or("vpc-1", |s| s.vpc_id.as_str()),
                );
            }
            inner.push_str("</securityGroupInfo>");
            Ok(envelope(action, &inner))
        }
        other => Err(ApiError {
            code: "InvalidAction",
            message: format!("The action {other} is not valid for this web service."),
        }),
    }
}

/// AssignIpv6Addresses: `Ipv6Addresses.N`, `Ipv6Prefix.N`, `Ipv6PrefixCount` or
/// `Ipv6AddressCount`; the answer lists only what it added.
fn assign_ipv6(ec2: &mut Ec2, p: &HashMap<String, String>) -> Result<String, ApiError> {
    let eni = required(p, "NetworkInterfaceId")?;
    let ips = list(p, "Ipv6Addresses");
    let prefixes = list(p, "Ipv6Prefix");
    let req = if !ips.is_empty() {
        Assign6Request::Addresses(addresses(ips, "Ipv6Addresses")?)
    } else if !prefixes.is_empty() {
        Assign6Request::Prefixes(addresses(prefixes, "Ipv6Prefix")?)
    } else if let Some(n) = number(p, "Ipv6PrefixCount")? {
        Assign6Request::PrefixCount(n)
    } else if let Some(n) = number(p, "Ipv6AddressCount")? {
        Assign6Request::Count(n)
    } else {
        return Err(ApiError {
            code: "MissingParameter",
            message:
                "The request must contain Ipv6AddressCount, Ipv6Addresses, Ipv6PrefixCount or Ipv6Prefixes"
                    .into(),
        });
    };
    let is_prefix = req.is_prefix();
    let added = ec2.assign_ipv6(eni, req)?;
    let mut inner = format!("<networkInterfaceId>{eni}</networkInterfaceId><assignedIpv6Addresses>");
    for a in added.iter().filter(|_| !is_prefix) {
        let _ = write!(inner, "<item>{a}</item>");
    }
    inner.push_str("</assignedIpv6Addresses><assignedIpv6PrefixSet>");
    for a in added.iter().filter(|_| is_prefix) {
        let _ = write!(inner, "<item>{a}/80</item>");
    }
    inner.push_str("</assignedIpv6PrefixSet>");
    Ok(envelope("AssignIpv6Addresses", &inner))
}

/// `Filter.N.Name` with its `Filter.N.Value.M` values.
fn filters(p: &HashMap<String, String>) -> Vec<(String, Vec<String>)> {
    (1..)
        .map_while(|i| {
            p.get(&format!("Filter.{i}.Name")).map(|n| (n.clone(), list(p, &format!("Filter.{i}.Value"))))
        })
        .collect()
}

/// `Tag.N.Key` / `Tag.N.Value` pairs.
fn tag_list(p: &HashMap<String, String>) -> Vec<(String, Option<String>)> {
    (1..)
        .map_while(|i| {
            p.get(&format!("Tag.{i}.Key")).map(|k| (k.clone(), p.get(&format!("Tag.{i}.Value")).cloned()))
        })
        .collect()
}

fn describe_instances(ec2: &Ec2, p: &HashMap<String, String>) -> Result<String, ApiError> {
    let ids = list(p, "InstanceId");
    let mut inner = String::from("<reservationSet>");
    for i in ec2.instances.values().filter(|i| !i.terminated && (ids.is_empty() || ids.contains(&i.id))) {
        let primary = ec2.attached_to(&i.id).first().map(|e| e.primary_ip.to_string()).unwrap_or_default();
        let _ = write!(
            inner,
            "<item><reservationId>r-{}</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet><item><instanceId>{}</instanceId><instanceType>{}</instanceType><placement><availabilityZone>{}</availabilityZone></placement><subnetId>{}</subnetId><vpcId>{}</vpcId><privateIpAddress>{primary}</privateIpAddress><instanceState><code>16</code><name>running</name></instanceState><hypervisor>{}</hypervisor><networkInterfaceSet>",
            i.id.trim_start_matches("i-"),
            i.id,
            i.instance_type.name,
            i.az,
            i.subnet_id,
            ec2.subnets.get(&i.subnet_id).map_or("", |s| s.vpc_id.as_str()),
            i.instance_type.hypervisor
        );
        for e in ec2.attached_to(&i.id) {
            let _ = write!(inner, "<item>{}</item>", eni_xml(ec2, e));
        }
        inner.push_str("</networkInterfaceSet></item></instancesSet></item>");
    }
    for id in &ids {
        if ec2.instances.get(id).is_none_or(|i| i.terminated) {
            return Err(ApiError {
                code: "InvalidInstanceID.NotFound",
                message: format!("The instance ID '{id}' does not exist"),
            });
        }
    }
    inner.push_str("</reservationSet>");
    Ok(envelope("DescribeInstances", &inner))
}

fn describe_instance_types(p: &HashMap<String, String>) -> Result<String, ApiError> {
    let names = list(p, "InstanceType");
    let mut inner = String::from("<instanceTypeSet>");
    for t in
        super::ec2::INSTANCE_TYPES.iter().filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
    {
        let _ = write!(
            inner,
            "<item><instanceType>{}</instanceType><hypervisor>{}</hypervisor><networkInfo><maximumNetworkInterfaces>{}</maximumNetworkInterfaces><ipv4AddressesPerInterface>{}</ipv4AddressesPerInterface><efaSupported>{}</efaSupported><defaultNetworkCardIndex>0</defaultNetworkCardIndex><networkCards><item><networkCardIndex>0</networkCardIndex><maximumNetworkInterfaces>{}</maximumNetworkInterfaces></item></networkCards></networkInfo></item>",
            t.name, t.hypervisor, t.max_enis, t.ipv4_per_eni, t.efa, t.max_enis
        );
    }
    for n in &names {
        if super::ec2::instance_type(n).is_none() {
            return Err(ApiError {
                code: "InvalidInstanceType",
                message: format!("The following supplied instance types do not exist: [{n}]"),
            });
        }
    }
    inner.push_str("</instanceTypeSet>");
    Ok(envelope("DescribeInstanceTypes", &inner))
}

fn describe_subnets(ec2: &Ec2, p: &HashMap<String, String>) -> Result<String, ApiError> {
    let ids = list(p, "SubnetId");
    for id in &ids {
        ec2.subnet(id)?;
    }
    let filters = filters(p);
    let mut inner = String::from("<subnetSet>");
    for s in ec2.subnets.values() {
        if !ids.is_empty() && !ids.contains(&s.id) {
            continue;
        }
        let keep = filters.iter().all(|(name, values)| {
            let any = |v: &str| values.iter().any(|x| x == v);
            match name.as_str() {
                "vpc-id" => any(&s.vpc_id),
                "availability-zone" => any(&s.az),
                "subnet-id" => any(&s.id),
                n if n.starts_with("tag:") => s.tags.get(&n[4..]).is_some_and(|v| any(v)),
                _ => false,
            }
        });
        if !keep {
            continue;
        }
        let _ = write!(
            inner,
            "<item><subnetId>{}</subnetId><state>available</state><vpcId>{}</vpcId><cidrBlock>{}/{}</cidrBlock><availableIpAddressCount>{}</availableIpAddressCount><availabilityZone>{}</availabilityZone>",
            s.id, s.vpc_id, s.cidr.0, s.cidr.1, s.available_addresses(), s.az
        );
        if let Some(v6) = &s.ipv6 {
            let _ = write!(
                inner,
                "<ipv6CidrBlockAssociationSet><item><associationId>subnet-cidr-assoc-{}</associationId><ipv6CidrBlock>{}/64</ipv6CidrBlock><ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState></item></ipv6CidrBlockAssociationSet><assignIpv6AddressOnCreation>true</assignIpv6AddressOnCreation>",
                s.id.trim_start_matches("subnet-"), v6.cidr
            );
        }
        inner.push_str("<tagSet>");
        for (k, v) in &s.tags {
            let _ = write!(inner, "<item><key>{}</key><value>{}</value></item>", esc(k), esc(v));
        }
        inner.push_str("</tagSet></item>");
    }
    inner.push_str("</subnetSet>");
    Ok(envelope("DescribeSubnets", &inner))
}

/// Filters the simulator supports, as EC2 names them.
fn matches_filter(e: &Eni, name: &str, values: &[String]) -> Result<bool, ApiError> {
    let any = |v: &str| values.iter().any(|x| x == v);
    Ok(match name {
        "attachment.instance-id" => e.attachment.as_ref().is_some_and(|a| any(&a.instance_id)),
        "attachment.status" => any(e.attachment.as_ref().map_or("detached", |a| a.state.as_str())),
        "status" => any(e.status()),
        "interface-type" => any(e.interface_type.as_str()),
        "vpc-id" => any(&e.vpc_id),
        "subnet-id" => any(&e.subnet_id),
        "network-interface-id" => any(&e.id),
        "description" => any(&e.description),
        "ipv6-addresses.ipv6-address" => e.ipv6_addresses.iter().any(|a| any(&a.to_string())),
        "tag-key" => e.tags.keys().any(|k| any(k)),
        n if n.starts_with("tag:") => e.tags.get(&n[4..]).is_some_and(|v| any(v)),
        other => return Err(invalid(format!("The filter '{other}' is invalid"))),
    })
}

fn describe_network_interfaces(ec2: &Ec2, p: &HashMap<String, String>) -> Result<String, ApiError> {
    let ids = list(p, "NetworkInterfaceId");
    let max = number(p, "MaxResults")?;
    if let Some(m) = max {
        if !ids.is_empty() {
            return Err(ApiError {
                code: "InvalidParameterCombination",
                message: "The parameter NetworkInterfaceIds cannot be used with the parameter MaxResults"
                    .into(),
            });
        }
        if !(5..=1000).contains(&m) {
            return Err(invalid(format!(
                "Value ( {m} ) for parameter maxResults is invalid. Expecting a value between 5 and 1000."
            )));
        }
    }
    // EC2's eventual consistency: what was just created or attached is not described yet.
    let now = std::time::Instant::now();
    let described: Vec<Eni> =
        ec2.enis.values().filter_map(|e| e.as_described(now, ec2.timing.describe_lag)).collect();
    for id in &ids {
        if !described.iter().any(|e| &e.id == id) {
            ec2.eni(id)?;
            return Err(ApiError {
                code: "InvalidNetworkInterfaceID.NotFound",
                message: format!("The networkInterface ID '{id}' does not exist"),
            });
        }
    }
    let filters = filters(p);
    let mut selected = Vec::new();
    for e in &described {
        if !ids.is_empty() && !ids.contains(&e.id) {
            continue;
        }
        let mut keep = true;
        for (name, values) in &filters {
            keep &= matches_filter(e, name, values)?;
        }
        if keep {
            selected.push(e);
        }
    }
    // Pagination: NextToken is the id to resume after.
    if let Some(token) = p.get("NextToken") {
        selected.retain(|e| e.id.as_str() > token.as_str());
    }
    let max = max.map_or(usize::MAX, |m| m as usize);
    let next = (selected.len() > max).then(|| selected[max - 1].id.clone());
    selected.truncate(max);
    let mut inner = String::from("<networkInterfaceSet>");
    for e in selected {
        let _ = write!(inner, "<item>{}</item>", eni_xml(ec2, e));
    }
    inner.push_str("</networkInterfaceSet>");
    if let Some(n) = next {
        let _ = write!(inner, "<nextToken>{n}</nextToken>");
    }
    Ok(envelope("DescribeNetworkInterfaces", &inner))
}

fn eni_xml(ec2: &Ec2, e: &Eni) -> String {
    let mut x = format!(
        "<networkInterfaceId>{}</networkInterfaceId><subnetId>{}</subnetId><vpcId>{}</vpcId><availabilityZone>{}</availabilityZone><description>{}</description><ownerId>123456789012</ownerId><requesterManaged>false</requesterManaged><status>{}</status><macAddress>{}</macAddress><privateIpAddress>{}</privateIpAddress><sourceDestCheck>true</sourceDestCheck><interfaceType>{}</interfaceType>",
        e.id,
        e.subnet_id,
        e.vpc_id,
        e.az,
        esc(&e.description),
        e.status(),
        e.mac,
        e.primary_ip,
        e.interface_type.as_str()
    );
    x.push_str("<groupSet>");
    for g in &e.groups {
        let name = ec2.security_groups.get(g).cloned().unwrap_or_default();
        let _ = write!(x, "<item><groupId>{g}</groupId><groupName>{}</groupName></item>", esc(&name));
    }
    x.push_str("</groupSet>");
    if let Some(a) = &e.attachment {
        let _ = write!(
            x,
            "<attachment><attachmentId>{}</attachmentId><instanceId>{}</instanceId><instanceOwnerId>123456789012</instanceOwnerId><deviceIndex>{}</deviceIndex><networkCardIndex>0</networkCardIndex><status>{}</status><attachTime>2026-11-26T00:00:00.000Z</attachTime><deleteOnTermination>{}</deleteOnTermination></attachment>",
            a.id, a.instance_id, a.device_index, a.state.as_str(), a.delete_on_termination
        );
    }
    x.push_str("<tagSet>");
    for (k, v) in &e.tags {
        let _ = write!(x, "<item><key>{}</key><value>{}</value></item>", esc(k), esc(v));
    }
    x.push_str("</tagSet><privateIpAddressesSet>");
    let _ = write!(
        x,
        "<item><privateIpAddress>{}</privateIpAddress><primary>true</primary></item>",
        e.primary_ip
    );
    for ip in &e.secondary_ips {
        let _ = write!(x, "<item><privateIpAddress>{ip}</privateIpAddress><primary>false</primary></item>");
    }
    x.push_str("</privateIpAddressesSet><ipv4PrefixSet>");
    for p in &e.prefixes {
        let _ = write!(x, "<item><ipv4Prefix>{p}/28</ipv4Prefix></item>");
    }
    x.push_str("</ipv4PrefixSet><ipv6AddressesSet>");
    for a in &e.ipv6_addresses {
        let _ = write!(x, "<item><ipv6Address>{a}</ipv6Address><isPrimaryIpv6>false</isPrimaryIpv6></item>");
    }
    x.push_str("</ipv6AddressesSet><ipv6PrefixSet>");
    for p in &e.ipv6_prefixes {
        let _ = write!(x, "<item><ipv6Prefix>{p}/80</ipv6Prefix></item>");
    }
    x.push_str("</ipv6PrefixSet>");
    x
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    /// Every action the simulator serves, and one it does not.
    const ACTIONS: &[&str] = &[
        "CreateNetworkInterface",
        "AttachNetworkInterface",
        "DetachNetworkInterface",
        "DeleteNetworkInterface",
        "AssignPrivateIpAddresses",
        "UnassignPrivateIpAddresses",
        "AssignIpv6Addresses",
        "UnassignIpv6Addresses",
        "DescribeNetworkInterfaces",
        "ModifyNetworkInterfaceAttribute",
        "CreateTags",
        "DeleteTags",
        "TerminateInstances",
        "DescribeInstances",
        "DescribeInstanceTypes",
        "DescribeSubnets",
        "DescribeSecurityGroups",
        "NoSuchAction",
    ];

    const NAMES: &[&str] = &[
        "SubnetId",
        "SecurityGroupId.1",
        "InterfaceType",
        "SecondaryPrivateIpAddressCount",
        "Ipv4PrefixCount",
        "NetworkInterfaceId",
        "NetworkInterfaceId.1",
        "InstanceId",
        "InstanceId.1",
        "DeviceIndex",
        "AttachmentId",
        "PrivateIpAddress.1",
        "Ipv4Prefix.1",
        "Ipv6AddressCount",
        "Ipv6PrefixCount",
        "Ipv6Addresses.1",
        "Ipv6Prefix.1",
        "MaxResults",
        "NextToken",
        "Filter.1.Name",
        "Filter.1.Value.1",
        "Attachment.DeleteOnTermination",
        "ResourceId.1",
        "Tag.1.Key",
        "Tag.1.Value",
        "TagSpecification.1.Tag.1.Key",
        "InstanceType.1",
        "GroupId.1",
    ];

    /// Values that hit edges: ids that exist, numbers at and past every limit, bad syntax.
    fn values(ec2: &Ec2) -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            "0",
            "1",
            "4",
            "5",
            "16",
            "1000",
            "1001",
            "-1",
            "4294967295",
            "4294967296",
            "x",
            "true",
            "10.0.0.0",
            "10.0.0.16/28",
            "255.255.255.240",
            "255.255.255.255/28",
            "0.0.0.0",
            "trunk",
            "branch",
            "efa",
            "attachment.status",
            "status",
            "tag:x",
            "interface-type",
            "m5.large",
            "2600:1f14:abc:de01::",
            "2600:1f14:abc:de01::4",
            "2600:1f14:abc:de01:1::/80",
            "2600:1f14:abc:de01:ffff:ffff:ffff:ffff",
            "2600:1f14:abc:de02::/80",
            "::",
            "ipv6-addresses.ipv6-address",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.extend(ec2.subnets.keys().cloned());
        v.extend(ec2.instances.keys().cloned());
        v.extend(ec2.security_groups.keys().cloned());
        for e in ec2.enis.values() {
            v.push(e.id.clone());
            v.push(e.primary_ip.to_string());
            v.extend(e.ipv6_addresses.iter().chain(&e.ipv6_prefixes).map(ToString::to_string));
            v.extend(e.attachment.as_ref().map(|a| a.id.clone()));
        }
        v
    }

    fn world() -> Ec2 {
        let mut ec2 = Ec2::default();
        let subnet = ec2.add_subnet("vpc-1", "us-west-2a", (Ipv4Addr::new(10, 0, 0, 0), 26));
        ec2.set_subnet_ipv6(&subnet, "2600:1f14:abc:de01::".parse().unwrap()).unwrap();
        let v4_only = ec2.add_subnet("vpc-1", "us-west-2a", (Ipv4Addr::new(10, 0, 1, 0), 26));
        ec2.create_network_interface(CreateEni { subnet_id: v4_only, ..Default::default() }).unwrap();
        let sg = ec2.add_security_group("node");
        ec2.run_instance("m5.large", &subnet, &[sg]).unwrap();
        ec2.timing = super::super::ec2::Timing {
            attach: Duration::from_millis(1),
            detach: Duration::from_millis(1),
            ..Default::default()
        };
        ec2
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// No request, however odd, panics the model: each answers a result or an EC2 error,
        /// and a well-formed request still works afterwards.
        #[test]
        fn no_request_panics_the_simulator(
            calls in prop::collection::vec(
                (0..ACTIONS.len(), prop::collection::vec((0..NAMES.len(), any::<prop::sample::Index>()), 0..6)),
                1..12,
            )
        ) {
            let mut ec2 = world();
            for (action, params) in calls {
                let vals = values(&ec2);
                let p: HashMap<String, String> = params
                    .into_iter()
                    .map(|(n, v)| (NAMES[n].to_owned(), v.get(&vals).clone()))
                    .collect();
                let _ = dispatch(&mut ec2, ACTIONS[action], &p);
                ec2.settle(std::time::Instant::now());
            }
            let ok = dispatch(&mut ec2, "DescribeNetworkInterfaces", &HashMap::new());
            prop_assert!(ok.is_ok(), "{:?}", ok.err());
        }
    }

    #[test]
    fn max_results_outside_5_to_1000_or_with_ids_is_refused() {
        let mut ec2 = world();
        let p = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        for bad in ["0", "4", "1001"] {
            let e = dispatch(&mut ec2, "DescribeNetworkInterfaces", &p(&[("MaxResults", bad)])).unwrap_err();
            assert_eq!(e.code, "InvalidParameterValue", "MaxResults={bad}");
            assert!(e.message.contains("between 5 and 1000"), "{}", e.message);
        }
        let id = ec2.enis.keys().next().unwrap().clone();
        let e = dispatch(
            &mut ec2,
            "DescribeNetworkInterfaces",
            &p(&[("MaxResults", "5"), ("NetworkInterfaceId.1", &id)]),
        )
        .unwrap_err();
        assert_eq!(e.code, "InvalidParameterCombination");
        assert!(dispatch(&mut ec2, "DescribeNetworkInterfaces", &p(&[("MaxResults", "5")])).is_ok());
    }
}
