//! The agent's end of the CNI plugin's local API (see [`crate::cni::api`]): hyper on a unix socket in the run
//! directory, mode 0600. It answers from the first moment: "not ready" until the node is ready.

use std::{
    convert::Infallible,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use crate::cni::api::{
    self, AddReply, AddRequest, ApiError, Branch, CheckRequest, DelReply, DelRequest, ErrorKind, GcReply,
    GcRequest, StatusReply, ADD_PATH, CHECK_PATH, DEL_PATH, GC_PATH, STATUS_PATH,
};
use crate::ipam::{
    datastore::DatastoreError,
    model::{now, AllocKey, PodRef},
    pool6::Pool6Error,
    IpamError,
};
use std::net::IpAddr;

use super::state::Shared;

/// Requests are small; anything bigger is refused.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("local API socket {path}: {source}")]
pub struct SocketError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Binds `<run dir>/eniguard.sock` (a stale socket from a previous run is replaced), mode 0600.
pub fn bind(run_dir: &Path) -> Result<UnixListener, SocketError> {
    let path = run_dir.join(api::SOCKET_NAME);
    let err = |source| SocketError { path: path.clone(), source };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(&path).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// The node, once it is ready (set by the agent when it prints `ready:`).
pub type ReadyNode = Arc<OnceLock<Arc<Shared>>>;

/// Serves the API until the task is dropped.
pub async fn serve(listener: UnixListener, node: ReadyNode) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(handle(req, node).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn reply<T: serde::Serialize>(status: u16, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn error(e: &ApiError) -> Response<Full<Bytes>> {
    reply(e.kind.http_status(), e)
}

async fn handle(req: Request<hyper::body::Incoming>, node: ReadyNode) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(&ApiError::new(
                ErrorKind::BadRequest,
                format!("request body over {MAX_BODY} bytes"),
            ))
        }
    };
    let ready = node.get().cloned();
    let result = match (method, path.as_str()) {
        (Method::GET, STATUS_PATH) => return status(ready.as_deref()).await,
        (Method::POST, ADD_PATH) => match (api::parse::<AddRequest>("add request", &body), ready) {
            (Err(e), _) => Err(e),
            (Ok(r), Some(n)) => add(&n, r).await.map(|a| reply(200, &a)),
            (Ok(_), None) => Err(not_ready()),
        },
        (Method::POST, DEL_PATH) => match (api::parse::<DelRequest>("del request", &body), ready) {
            (Err(e), _) => Err(e),
            (Ok(r), Some(n)) => del(&n, r).await.map(|d| reply(200, &d)),
            (Ok(_), None) => Err(not_ready()),
        },
        (Method::POST, CHECK_PATH) => match (api::parse::<CheckRequest>("check request", &body), ready) {
            (Err(e), _) => Err(e),
            (Ok(r), Some(n)) => check(&n, r).await.map(|a| reply(200, &a)),
            (Ok(_), None) => Err(not_ready()),
        },
        (Method::POST, GC_PATH) => match (api::parse::<GcRequest>("gc request", &body), ready) {
            (Err(e), _) => Err(e),
            (Ok(r), Some(n)) => gc(&n, r).await.map(|g| reply(200, &g)),
            (Ok(_), None) => Err(not_ready()),
        },
        (_, p) => Err(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "no such endpoint: {p} (use {ADD_PATH}, {DEL_PATH}, {CHECK_PATH}, {GC_PATH}, {STATUS_PATH})"
            ),
        )),
    };
    result.unwrap_or_else(|e| error(&e))
}

/// A failure of the agent's own: the plugin gets its message, the log the whole of it.
fn internal(what: &str, e: &dyn std::error::Error) -> ApiError {
    log::error!("CNI {what}: {e}");
    ApiError::new(ErrorKind::Internal, e.to_string())
}

fn not_ready() -> ApiError {
    ApiError::new(ErrorKind::NotReady, "network is not ready: the eniguard agent is still starting")
}

async fn status(node: Option<&Shared>) -> Response<Full<Bytes>> {
    let Some(node) = node else { return error(&not_ready()) };
    let available = node.owner.with(|ipam| ipam.available(now())).await;
    reply(200, &StatusReply { ready: true, available })
}

fn key(network_name: &str, container_id: &str, if_name: &str) -> Result<AllocKey, ApiError> {
    for (field, v) in [("networkName", network_name), ("containerId", container_id), ("ifName", if_name)] {
        if v.is_empty() {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("{field}: expected a non-empty string"),
            ));
        }
    }
    Ok(AllocKey {
        network_name: network_name.into(),
        container_id: container_id.into(),
        if_name: if_name.into(),
    })
}

/// ADD: the pod's address (see [`allocate`]), annotated on the pod before the reply with
/// ANNOTATE_POD_IP (a failure fails the ADD, as upstream; the runtime's DEL releases it).
async fn add(node: &Shared, r: AddRequest) -> Result<AddReply, ApiError> {
    node.metrics.upstream.add_requests.inc();
    let (namespace, name) = (r.pod_namespace.clone(), r.pod_name.clone());
    let reply = allocate(node, r).await?;
    if node.cfg.annotate_pod_ip {
        node.clients.kube.annotate_pod_ip(&namespace, &name, &reply.ip).await.map_err(|e| {
            log::error!("CNI add: ANNOTATE_POD_IP: {e}");
            ApiError::new(ErrorKind::Internal, format!("ANNOTATE_POD_IP is set and {e}"))
        })?;
    }
    Ok(reply)
}

/// Assigns (or returns the existing) address; the reply goes out only after the checkpoint write.
async fn allocate(node: &Shared, r: AddRequest) -> Result<AddReply, ApiError> {
    api::check_version(&r.client_version)?;
    let key = key(&r.network_name, &r.container_id, &r.if_name)?;
    if node.cfg.pod_eni {
        if let Some(reply) = branch_pod(node, &r).await? {
            return Ok(reply);
        }
    }
    let pod = PodRef { namespace: r.pod_namespace.clone(), name: r.pod_name.clone() };
    if let Some(v6) = &node.ipv6 {
        let allocation =
            node.owner.with(move |ipam| ipam.assign6(&key, &pod, now())).await.map_err(|e| match e {
                IpamError::Pool6(e @ Pool6Error::Full(_)) => {
                    node.metrics.upstream.no_address.inc();
                    ApiError::new(ErrorKind::NoAddress, e.to_string())
                }
                e => internal("add", &e),
            })?;
        node.guard_sync().await.map_err(|e| internal("add: guard", &e))?;
        return Ok(add_reply(node, allocation.ip.into(), v6.primary_eni.clone(), 0));
    }
    let (allocation, home) = node
        .owner
        .with(move |ipam| {
            let a = ipam.assign(&key, &pod, now())?;
            let home = ipam.datastore.eni_of(a.ip);
            Ok::<_, IpamError>((a, home))
        })
        .await
        .map_err(|e| match e {
            IpamError::Datastore(DatastoreError::NoAvailableAddress) => {
                node.metrics.upstream.no_address.inc();
                ApiError::new(
                    ErrorKind::NoAddress,
                    "no free address on this node right now; the pool is growing, retry",
                )
            }
            IpamError::Datastore(e @ DatastoreError::HeldOnExcludedEni { .. }) => {
                ApiError::new(ErrorKind::Refused, e.to_string())
            }
            e => internal("add", &e),
        })?;
    super::pool::update_gauges(node).await;
    let (eni, device_number) =
        home.ok_or_else(|| ApiError::new(ErrorKind::Internal, format!("{} has no ENI", allocation.ip)))?;
    // The pod's first packet is judged: its intent is in the kernel before the reply.
    node.guard_sync().await.map_err(|e| internal("add: guard", &e))?;
    Ok(add_reply(node, allocation.ip.into(), eni, device_number))
}

/// With security groups for pods on: a pod that asks for `vpc.amazonaws.com/pod-eni` (read from
/// the API server, as upstream does) gets its branch ENI through the trunk, or a retry while the
/// Resource Controller has not annotated it yet. Other pods get None (a pool address).
async fn branch_pod(node: &Shared, r: &AddRequest) -> Result<Option<AddReply>, ApiError> {
    let pending = |why: String| ApiError::new(ErrorKind::BranchPending, why);
    let pod = match node.clients.kube.pod(&r.pod_namespace, &r.pod_name).await {
        Ok(p) => p,
        // Deleted already (or never a Kubernetes pod): an ordinary address; the pod GC returns it.
        Err(crate::kube::client::KubeError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(ApiError::new(ErrorKind::NotReady, format!("network is not ready: {e}"))),
    };
    if !pod.wants_branch {
        return Ok(None);
    }
    let who = format!("{}/{}", r.pod_namespace, r.pod_name);
    let annotation = pod.pod_eni.clone().ok_or_else(|| {
        pending(format!("{who} asks for a branch ENI and the Resource Controller has not annotated it (vpc.amazonaws.com/pod-eni) yet"))
    })?;
    let eni = crate::kube::pod_eni::parse(&annotation)
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("{who}: {e}")))?;
    let (ip, gateway) = eni
        .address(node.ipv6.is_some())
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("{who}: {e}")))?;
    let trunk = node
        .trunk()
        .ok_or_else(|| pending(format!("{who} asks for a branch ENI and this node has no trunk ENI yet")))?;
    let (parent_if_index, _) = node
        .clients
        .net
        .link_by_mac(&trunk.mac)
        .await
        .map_err(|e| internal("add: the trunk's link", &e))?
        .ok_or_else(|| {
            pending(format!("the trunk {} ({}) has no link on this node yet", trunk.id, trunk.mac))
        })?;
    guard_branch(node, pod, &eni.eni_id).await?;
    let mut reply = add_reply(node, ip, eni.eni_id.clone(), 0);
    reply.route_table = Some(u32::from(eni.vlan_id) + 100);
    reply.branch = Some(Branch {
        eni: eni.eni_id,
        vlan_id: eni.vlan_id,
        gateway: gateway.to_string(),
        mac: eni.mac,
        parent_if_index,
        enforcing_mode: node.cfg.pod_sg_enforcing_mode,
    });
    Ok(Some(reply))
}

/// The branch pod's intent into the guard before the reply: the pod as just read (its
/// annotation), its namespace's SecurityGroupPolicies (intent) and its branch ENI's groups from
/// EC2 (truth, described once per branch ENI). With the guard off, nothing.
async fn guard_branch(node: &Shared, pod: crate::kube::client::PodInfo, eni: &str) -> Result<(), ApiError> {
    if node.guard.is_none() {
        return Ok(());
    }
    let ns = pod.namespace.clone();
    match node.clients.kube.security_group_policies(&ns).await {
        Ok(list) => node.set_policies(&ns, list),
        // The policies last read still hold; the next ADD in this namespace reads them again.
        Err(e) => log::warn!("guard: {e}"),
    }
    if !node.branch_groups().contains_key(eni) {
        match node.clients.cloud.describe_enis(&[eni.to_owned()]).await {
            Ok(described) => {
                for d in described {
                    node.set_branch_groups(&d.id, d.security_groups);
                }
            }
            // Judged as `unknown_interface` until the security-group audit describes it.
            Err(e) => log::warn!("guard: describing branch ENI {eni}: {e}"),
        }
    }
    node.put_pod(pod);
    node.guard_sync().await.map_err(|e| internal("add: guard", &e))
}

fn policy_mode(node: &Shared) -> Option<String> {
    node.cfg.network_policy_mode.map(|m| m.as_str().to_owned())
}

/// What the plugin needs to plumb `ip` of `eni`.
fn add_reply(node: &Shared, ip: IpAddr, eni: String, device_number: u32) -> AddReply {
    let cfg = &node.cfg;
    let mut vpc_cidrs = node.vpc_cidrs.clone();
    vpc_cidrs.extend(cfg.exclude_snat_cidrs.iter().map(ToString::to_string));
    AddReply {
        ip: ip.to_string(),
        eni,
        device_number,
        route_table: (device_number > 0).then_some(device_number + 1),
        vpc_cidrs,
        external_snat: cfg.external_snat,
        mtu: cfg.pod_mtu,
        veth_prefix: cfg.veth_prefix.clone(),
        network_policy_mode: policy_mode(node),
        v4_egress: node.ipv6.is_some() && cfg.v4_egress,
        v6_egress: node.v6_egress,
        branch: None,
    }
}

/// The allocation ADD made for the key, as ADD replied it.
async fn check(node: &Shared, r: CheckRequest) -> Result<AddReply, ApiError> {
    api::check_version(&r.client_version)?;
    let key = key(&r.network_name, &r.container_id, &r.if_name)?;
    let found = node
        .owner
        .with(move |ipam| {
            if let Some(a) = ipam.pool6.as_ref().and_then(|p| p.allocation(&key)) {
                return Some((IpAddr::V6(a.ip), None));
            }
            let ip = ipam.datastore.allocation(&key).map(|a| a.ip)?;
            ipam.datastore.eni_of(ip).map(|home| (IpAddr::V4(ip), Some(home)))
        })
        .await;
    let (ip, home) = found.ok_or_else(|| {
        ApiError::new(
            ErrorKind::UnknownContainer,
            format!(
                "no address is allocated to container {} interface {} of network {}",
                r.container_id, r.if_name, r.network_name
            ),
        )
    })?;
    let (eni, device_number) = match (home, &node.ipv6) {
        (Some(home), _) => home,
        (None, Some(v6)) => (v6.primary_eni.clone(), 0),
        (None, None) => return Err(ApiError::new(ErrorKind::Internal, format!("{ip} has no ENI"))),
    };
    Ok(add_reply(node, ip, eni, device_number))
}

/// Releases the network's allocations whose attachment the runtime no longer lists.
async fn gc(node: &Shared, r: GcRequest) -> Result<GcReply, ApiError> {
    api::check_version(&r.client_version)?;
    let valid: std::collections::BTreeSet<(String, String)> =
        r.valid_attachments.into_iter().map(|a| (a.container_id, a.if_name)).collect();
    let network = r.network_name;
    let released = node
        .owner
        .with(move |ipam| {
            let stale: Vec<AllocKey> = ipam
                .allocations()
                .into_iter()
                .map(|a| a.key)
                .filter(|k| {
                    k.network_name == network && !valid.contains(&(k.container_id.clone(), k.if_name.clone()))
                })
                .collect();
            let mut released = Vec::new();
            for k in stale {
                if let Some(a) = ipam.release(&k, now())? {
                    released.push(a.ip.to_string());
                }
            }
            Ok::<_, IpamError>(released)
        })
        .await
        .map_err(|e| internal("gc", &e))?;
    super::pool::update_gauges(node).await;
    if let Err(e) = node.guard_sync().await {
        log::warn!("gc: {e}");
    }
    Ok(GcReply { released })
}

async fn del(node: &Shared, r: DelRequest) -> Result<DelReply, ApiError> {
    api::check_version(&r.client_version)?;
    let reason = crate::observe::awscni::ReasonLabel { reason: crate::observe::awscni::DEL_REASON.into() };
    node.metrics.upstream.del_requests.get_or_create(&reason).inc();
    let key = key(&r.network_name, &r.container_id, &r.if_name)?;
    let released =
        node.owner.with(move |ipam| ipam.release(&key, now())).await.map_err(|e| internal("del", &e))?;
    if let (true, Some(a)) = (node.cfg.annotate_pod_ip, &released) {
        // Logged, not failed: the address is released already and a retried DEL finds nothing.
        let ip = a.ip.to_string();
        if let Err(e) = node.clients.kube.clear_pod_ip(&a.pod.namespace, &a.pod.name, &ip).await {
            log::warn!("del: ANNOTATE_POD_IP: {e}");
        }
    }
    super::pool::update_gauges(node).await;
    // A released address is judged for its old pod no longer (the DEL's outcome does not wait
    // on the guard: a failure is logged and the next sync catches up).
    if let Err(e) = node.guard_sync().await {
        log::warn!("del: {e}");
    }
    Ok(DelReply { released: released.map(|a| a.ip.to_string()), network_policy_mode: policy_mode(node) })
}

#[cfg(test)]
mod tests {
    use super::{super::fakes::*, *};
    use crate::cni::{
        api::{Attachment, VERSION},
        client::{CallError, Client},
    };
    use crate::sync::lock;

    fn add_request(container: &str) -> AddRequest {
        AddRequest {
            client_version: VERSION.into(),
            network_name: "aws-cni".into(),
            container_id: container.into(),
            if_name: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            pod_namespace: "default".into(),
            pod_name: format!("pod-{container}"),
            pod_uid: None,
        }
    }

    fn del_request(container: &str) -> DelRequest {
        DelRequest {
            client_version: VERSION.into(),
            network_name: "aws-cni".into(),
            container_id: container.into(),
            if_name: "eth0".into(),
            pod_namespace: None,
            pod_name: None,
        }
    }

    fn kind(r: Result<impl std::fmt::Debug, CallError>) -> (ErrorKind, String) {
        match r {
            Err(CallError::Api(e)) => (e.kind, e.message),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    /// The socket, served as the agent serves it: "not ready" until the node is; then ADD
    /// (written to the checkpoint before the reply), CHECK, GC and DEL; bad requests are
    /// refused naming the field, and nothing is allocated for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_socket_serves_add_check_gc_and_del() {
        let node = FakeNode::default();
        let listener = bind(&node.dir).unwrap();
        let ready: ReadyNode = Arc::default();
        let server = tokio::spawn(serve(listener, ready.clone()));
        let client = Client::new(node.dir.join(api::SOCKET_NAME));
        use hyper::Method;
        let add = |c: &str| {
            let r = add_request(c);
            let client = &client;
            async move { client.call::<_, AddReply>(Method::POST, ADD_PATH, Some(&r)).await }
        };

        assert_eq!(kind(add("c1").await).0, ErrorKind::NotReady);
        let shared = node.start(&[]).await.unwrap();
        let _ = ready.set(shared.clone());
        let status = client.status().await.unwrap();
        assert!(status.ready && status.available > 0);

        let a = add("c1").await.unwrap();
        assert_eq!((a.eni.as_str(), a.device_number, a.route_table), (PRIMARY_ENI, 0, None));
        let checkpoint = std::fs::read_to_string(&shared.cfg.backing_store).unwrap();
        assert!(checkpoint.contains(&a.ip) && checkpoint.contains("c1"), "{checkpoint}");
        assert_eq!(add("c1").await.unwrap().ip, a.ip, "a retried ADD gets the same address");

        let check = CheckRequest {
            client_version: VERSION.into(),
            network_name: "aws-cni".into(),
            container_id: "c1".into(),
            if_name: "eth0".into(),
        };
        assert_eq!(client.call::<_, AddReply>(Method::POST, CHECK_PATH, Some(&check)).await.unwrap(), a);

        let b = add("c2").await.unwrap();
        let gc = GcRequest {
            client_version: VERSION.into(),
            network_name: "aws-cni".into(),
            valid_attachments: vec![Attachment { container_id: "c1".into(), if_name: "eth0".into() }],
        };
        let collected: GcReply = client.call(Method::POST, GC_PATH, Some(&gc)).await.unwrap();
        assert_eq!(collected.released, [b.ip]);

        let del = del_request("c1");
        let released: DelReply = client.call(Method::POST, DEL_PATH, Some(&del)).await.unwrap();
        assert_eq!(released.released, Some(a.ip.clone()));
        let again: DelReply = client.call(Method::POST, DEL_PATH, Some(&del)).await.unwrap();
        assert_eq!(again.released, None, "DEL is idempotent");
        let (k, _) = kind(client.call::<_, AddReply>(Method::POST, CHECK_PATH, Some(&check)).await);
        assert_eq!(k, ErrorKind::UnknownContainer);

        let (k, message) = kind(add("").await);
        assert_eq!(k, ErrorKind::BadRequest);
        assert!(message.contains("containerId"), "{message}");
        let old = AddRequest { client_version: "0.0.1".into(), ..add_request("c3") };
        let (k, _) = kind(client.call::<_, AddReply>(Method::POST, ADD_PATH, Some(&old)).await);
        assert_eq!(k, ErrorKind::VersionMismatch);
        let (k, message) = kind(client.call::<_, AddReply>(Method::POST, "/v1/nope", Some(&old)).await);
        assert_eq!(k, ErrorKind::BadRequest);
        assert!(message.contains("/v1/nope"));
        let allocated = shared.owner.with(|ipam| ipam.datastore.allocations().len()).await;
        assert_eq!(allocated, 0, "nothing is held for refused requests");
        server.abort();
    }

    /// ANNOTATE_POD_IP: the pod's address in `vpc.amazonaws.com/pod-ips` before ADD's reply, and
    /// blanked on DEL; a pod the API server does not know fails the ADD.
    #[tokio::test]
    async fn annotate_pod_ip_on_add_and_del() {
        let node = FakeNode::default();
        let pod = crate::kube::client::PodInfo {
            namespace: "default".into(),
            name: "pod-c1".into(),
            ..Default::default()
        };
        lock(&node.kube.state).pods.insert(("default".into(), "pod-c1".into()), pod);
        let shared = node.start(&[("ANNOTATE_POD_IP", "true")]).await.unwrap();
        let a = add(&shared, add_request("c1")).await.unwrap();
        let key = ("default".to_owned(), "pod-c1".to_owned());
        let annotation = || lock(&node.kube.state).pods[&key].pod_ips.clone();
        assert_eq!(annotation(), Some(a.ip.clone()));
        let e = add(&shared, add_request("c2")).await.unwrap_err();
        assert!(e.message.contains("ANNOTATE_POD_IP") && e.message.contains("pod-c2"), "{}", e.message);
        del(&shared, del_request("c1")).await.unwrap();
        assert_eq!(annotation(), Some(String::new()));
    }
}
