//! The Kubernetes API server's HTTP surface over [`kube_store`], enough for kube-rs unchanged:
//! core/v1 Node, Pod, Event; events.k8s.io/v1 Event; crd.k8s.amazonaws.com/v1alpha1 ENIConfig;
//! vpcresources.k8s.aws/v1alpha1 CNINode; vpcresources.k8s.aws/v1beta1 SecurityGroupPolicy.
//!
//! Verbs: get, list (limit and continue) and watch (labelSelector, fieldSelector, resourceVersion,
//! timeoutSeconds, allowWatchBookmarks, sendInitialEvents for kube-rs' streaming lists), create
//! (also with generateName), replace, merge / JSON patch (strategic merge for built-in types only;
//! custom resources answer 415 as the real server does), delete (graceful for bound Pods,
//! finalizers honoured). Node, Pod and CNINode have a `status` subresource: the main endpoint
//! ignores `status`, `/status` changes nothing else. Field selectors are limited to the fields the
//! real server indexes for each resource (others: 400). Errors are `Status` objects with the API
//! server's codes (400, 404, 409, 410 as a watch ERROR event, 415, 422).
//!
//! Simplification: a watch with a selector filters events by the object's new state; an object
//! that stops matching is not turned into a DELETED event as the real API server does.
//!
//! [`kube_store`]: super::kube_store

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    http::{self, reply, Req, Resp},
    kube_store::{Event, Key, PatchKind, Scope, Selector, StatusError, Store},
};

/// A resource the simulated API server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Served with a `status` subresource.
    pub status: bool,
    /// Field labels a field selector may use (beyond `metadata.name` and `metadata.namespace`).
    pub fields: &'static [&'static str],
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store's resource name: the plural, qualified by the group for non-core resources.
    pub fn store_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Custom resources (served from CRDs) take no strategic merge patch.
    pub fn is_custom(&self) -> bool {
        !self.group.is_empty() && self.group != "events.k8s.io"
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> Key {
        Key {
            resource: self.store_name(),
            namespace: namespace.filter(|_| self.namespaced).map(str::to_owned),
            name: name.to_owned(),
        }
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource { group, version, plural, kind, namespaced, status: false, fields: &[] }
}

const fn with_status(r: Resource) -> Resource {
    Resource { status: true, ..r }
}

const fn with_fields(r: Resource, fields: &'static [&'static str]) -> Resource {
    Resource { fields, ..r }
}

/// The real API server's field labels (pkg/registry/core/*/strategy.go).
const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];
const NODE_FIELDS: &[&str] = &["spec.unschedulable"];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

pub const NODES: Resource = with_fields(with_status(res("", "v1", "nodes", "Node", false)), NODE_FIELDS);
pub const PODS: Resource = with_fields(with_status(res("", "v1", "pods", "Pod", true)), POD_FIELDS);
pub const EVENTS: Resource = with_fields(res("", "v1", "events", "Event", true), EVENT_FIELDS);
pub const EVENTS_V1: Resource = res("events.k8s.io", "v1", "events", "Event", true);
pub const ENICONFIGS: Resource = res("crd.k8s.amazonaws.com", "v1alpha1", "eniconfigs", "ENIConfig", false);
pub const CNINODES: Resource =
    with_status(res("vpcresources.k8s.aws", "v1alpha1", "cninodes", "CNINode", false));
pub const SECURITY_GROUP_POLICIES: Resource =
    res("vpcresources.k8s.aws", "v1beta1", "securitygrouppolicies", "SecurityGroupPolicy", true);

pub const RESOURCES: [Resource; 7] =
    [NODES, PODS, EVENTS, EVENTS_V1, ENICONFIGS, CNINODES, SECURITY_GROUP_POLICIES];

/// Called on every Pod create before it is stored (the Resource Controller's mutating webhook).
pub type PodWebhook = Box<dyn Fn(&Store, &mut Value) + Send + Sync>;

/// (API group, resource, RBAC verb) triples a client asked for.
pub type Requests = BTreeSet<(String, String, String)>;

/// The API server's state: the store, and a channel that carries the newest resourceVersion to
/// watches and controllers after every write.
pub struct Kube {
    store: Mutex<Store>,
    /// Bearer token → the (API group, resource, verb) triples it asked for: what RBAC must grant.
    requests: Mutex<BTreeMap<String, Requests>>,
    changed: watch::Sender<u64>,
    pod_webhook: Mutex<Option<PodWebhook>>,
}

impl Default for Kube {
    fn default() -> Self {
        Self {
            store: Mutex::default(),
            requests: Mutex::default(),
            changed: watch::channel(0).0,
            pod_webhook: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").field("resource_version", &*self.changed.borrow()).finish()
    }
}

impl Kube {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.lock())
    }

    /// Changes the store and wakes every watch.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.lock();
        let out = f(&mut store);
        self.changed.send_replace(store.resource_version());
        out
    }

    /// Wakes on every write (the value is the newest resourceVersion).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// What the client with bearer `token` asked for: (API group, resource, RBAC verb).
    pub fn requests(&self, token: &str) -> Requests {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned().unwrap_or_default()
    }

    /// Every client's requests, by bearer token.
    pub fn all_requests(&self) -> BTreeMap<String, Requests> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record(&self, req: &Req, t: &Target) {
        let token = req
            .headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let verb = match (req.method.as_str(), t.name.is_some()) {
            ("GET", false) if req.query.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            (other, _) => other,
        };
        let resource =
            if t.status { format!("{}/status", t.resource.plural) } else { t.resource.plural.to_owned() };
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).entry(token).or_default().insert((
            t.resource.group.to_owned(),
            resource,
            verb.to_owned(),
        ));
    }

    pub fn set_pod_webhook(&self, hook: PodWebhook) {
        *self.pod_webhook.lock().unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// Creates an object of `resource` (its apiVersion and kind filled in).
    pub fn create(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, StatusError> {
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(resource.api_version()));
            m.insert("kind".into(), Value::String(resource.kind.into()));
        }
        let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match obj.pointer("/metadata/generateName").and_then(Value::as_str) {
                Some(prefix) => format!("{prefix}{:05x}", self.read(Store::resource_version) + 1),
                None => return Err(bad_request("metadata.name or metadata.generateName is required".into())),
            },
        };
        if let (Some(ns), Some(meta)) = (namespace, obj.get_mut("metadata").and_then(Value::as_object_mut)) {
            meta.insert("namespace".into(), Value::String(ns.to_owned()));
        }
        let hook = self.pod_webhook.lock().unwrap_or_else(PoisonError::into_inner);
        self.write(|store| {
            if let (Some(hook), true) = (hook.as_ref(), resource == PODS) {
                hook(store, &mut obj);
            }
            store.create(resource.key(namespace, &name), obj)
        })
    }
}

fn bad_request(message: String) -> StatusError {
    StatusError { code: 400, reason: "BadRequest", message }
}

fn status_reply(e: &StatusError) -> Resp {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(code, "application/json", e.to_status().to_string())
}

fn json_reply(status: StatusCode, v: &Value) -> Resp {
    reply(status, "application/json", v.to_string())
}

/// Serves the API on 127.0.0.1; returns the server URL (for the kubeconfig).
pub async fn start(kube: Arc<Kube>) -> std::io::Result<(String, SocketAddr)> {
    let addr = http::start(move |req| handle(req, kube.clone())).await?;
    Ok((format!("http://{addr}"), addr))
}

/// The cluster's CA, as every real kubeconfig and the in-cluster config carry one (base64 of a
/// self-signed P-256 certificate, `CN=vpcsim cluster CA`, made once with `openssl req -x509`).
/// The API server speaks plain HTTP, so no connection checks it; it is there because a client
/// given no CA trusts the platform's roots instead, and reads all of /etc/ssl/certs at start,
/// which no agent on a real node does.
const CLUSTER_CA: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJqekNDQVRXZ0F3SUJBZ0lVRGw5eDVnSmtHNnRITUlseGJtSlQ3aWVRRW9jd0NnWUlLb1pJemowRUF3SXcKSERFYU1CZ0dBMVVFQXd3UmRuQmpjMmx0SUdOc2RYTjBaWElnUTBFd0lCY05Nall4TWpBMk1UYzBNVEF5V2hnUApNakV5TmpFeE1USXhOelF4TURKYU1Cd3hHakFZQmdOVkJBTU1FWFp3WTNOcGJTQmpiSFZ6ZEdWeUlFTkJNRmt3CkV3WUhLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFRzkrVkFZSmlTMlBBUlMrRXY2NVg1M01FQmN3dXhoaUwKL1ZkWkNVM3UySkVSTFRscjVzQy9FSUF0MkQ2bTljK00zUXM4NDVUd0lRVGxiUE1FYmd5aDNxTlRNRkV3SFFZRApWUjBPQkJZRUZFTWFXVTREK2VRSmUyVDQ1cTdaWEhSMmZSWElNQjhHQTFVZEl3UVlNQmFBRkVNYVdVNEQrZVFKCmUyVDQ1cTdaWEhSMmZSWElNQThHQTFVZEV3RUIvd1FGTUFNQkFmOHdDZ1lJS29aSXpqMEVBd0lEU0FBd1JRSWgKQUoxZ3BBQ292RmdJZG4zaFQvcTVNNWVBMXFzTEJVVXRsRlJlTzdXQWpYWjJBaUIyWk1aMU1KT1JLL2hmbEFrcgppTHZTbGVFSi85Y0VmTE9SekZpSHlCc2x4UT09Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";

/// A kubeconfig that points kubectl or kube-rs at `server` (no authentication on loopback).
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: vpcsim\n  cluster:\n    server: {server}\n    certificate-authority-data: {CLUSTER_CA}\ncontexts:\n- name: vpcsim\n  context:\n    cluster: vpcsim\n    user: vpcsim\ncurrent-context: vpcsim\nusers:\n- name: vpcsim\n  user: {{}}\n"
    )
}

/// Like [`kubeconfig`], for a client known by bearer `token` (its requests are recorded apart,
/// see [`Kube::requests`]).
pub fn kubeconfig_with_token(server: &str, token: &str) -> String {
    kubeconfig(server).replace("  user: {}\n", &format!("  user:\n    token: {token}\n"))
}

/// A request path taken apart.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    /// The request is for the `status` subresource.
    status: bool,
}

impl Target {
    fn scope(&self) -> Scope {
        match (self.status, self.resource.status) {
            (true, _) => Scope::Status,
            (false, true) => Scope::MainOfStatusResource,
            (false, false) => Scope::All,
        }
    }
}

fn route(path: &str) -> Result<Target, StatusError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found_path(path)),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return Err(not_found_path(path)),
    };
    let resource = RESOURCES
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .ok_or_else(|| not_found_path(path))?;
    if (namespace.is_some() && !resource.namespaced) || (status && !resource.status) {
        return Err(not_found_path(path));
    }
    Ok(Target { resource, namespace, name, status })
}

fn not_found_path(path: &str) -> StatusError {
    StatusError { code: 404, reason: "NotFound", message: format!("the server could not find {path}") }
}

async fn handle(req: Req, kube: Arc<Kube>) -> Resp {
    let t = match route(&req.path) {
        Ok(t) => t,
        Err(e) => return status_reply(&e),
    };
    kube.record(&req, &t);
    let ns = t.namespace.as_deref();
    let result = match (req.method.as_str(), &t.name) {
        ("GET", None) if matches!(req.query.get("watch").map(String::as_str), Some("true" | "1")) => {
            return watch(&kube, &t, &req.query);
        }
        ("GET", None) => list(&kube, &t, &req.query),
        ("GET", Some(name)) => kube.read(|s| s.get(&t.resource.key(ns, name))),
        ("POST", None) => body(&req).and_then(|obj| kube.create(t.resource, ns, obj)),
        ("PUT", Some(name)) => body(&req).and_then(|obj| {
            if obj.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
                return Err(bad_request("metadata.name does not match the name in the URL".into()));
            }
            kube.write(|s| s.update(&t.resource.key(ns, name), obj, t.scope()))
        }),
        ("PATCH", Some(name)) => patch(&kube, &t, name, &req),
        ("DELETE", Some(name)) if !t.status => delete(&kube, &t, name, &req),
        _ => Err(StatusError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{} is not supported on {}", req.method, req.path),
        }),
    };
    match result {
        Ok(v) if req.method == "POST" => json_reply(StatusCode::CREATED, &v),
        Ok(v) => json_reply(StatusCode::OK, &v),
        Err(e) => status_reply(&e),
    }
}

fn body(req: &Req) -> Result<Value, StatusError> {
    serde_json::from_slice(&req.body).map_err(|e| bad_request(format!("request body is not JSON: {e}")))
}

fn patch(kube: &Kube, t: &Target, name: &str, req: &Req) -> Result<Value, StatusError> {
    let content_type = req.headers.get("content-type").map(String::as_str).unwrap_or("");
    let kind = match content_type.split(';').next().unwrap_or("").trim() {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" if !t.resource.is_custom() => PatchKind::Strategic,
        "application/json-patch+json" => PatchKind::Json,
        other => {
            return Err(StatusError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json{}",
                    if t.resource.is_custom() { "" } else { ", application/strategic-merge-patch+json" }
                ),
            })
        }
    };
    let patch = body(req)?;
    let key = t.resource.key(t.namespace.as_deref(), name);
    kube.write(|s| {
        let obj = s.patched(&key, kind, &patch)?;
        s.update(&key, obj, t.scope())
    })
}

/// DELETE with the grace period from the query or the DeleteOptions body.
fn delete(kube: &Kube, t: &Target, name: &str, req: &Req) -> Result<Value, StatusError> {
    let from_body =
        serde_json::from_slice::<Value>(&req.body).ok().and_then(|b| b["gracePeriodSeconds"].as_i64());
    let grace = req.query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()).or(from_body);
    let key = t.resource.key(t.namespace.as_deref(), name);
    kube.write(|s| {
        let bound =
            s.get(&key)?.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        s.delete_request(&key, t.resource == PODS && bound, grace)
    })
}

fn selectors(resource: &Resource, q: &HashMap<String, String>) -> Result<(Selector, Selector), StatusError> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let fields = Selector::parse(get("fieldSelector"))?;
    let allowed = |f: &str| f == "metadata.name" || f == "metadata.namespace" || resource.fields.contains(&f);
    if let Some(f) = fields.keys().find(|f| !allowed(f)) {
        return Err(bad_request(format!("field label not supported: {f}")));
    }
    Ok((Selector::parse(get("labelSelector"))?, fields))
}

/// A list, in pages when `limit` is given: `metadata.continue` names where the next page starts
/// (namespace/name of the last item sent) and `remainingItemCount` how many are left.
fn list(kube: &Kube, t: &Target, q: &HashMap<String, String>) -> Result<Value, StatusError> {
    let (labels, fields) = selectors(&t.resource, q)?;
    let (mut items, rv) =
        kube.read(|s| s.list(&t.resource.store_name(), t.namespace.as_deref(), &labels, &fields));
    let position = |o: &Value| {
        let m = &o["metadata"];
        format!("{}/{}", m["namespace"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or(""))
    };
    if let Some(token) = q.get("continue").filter(|c| !c.is_empty()) {
        items.retain(|o| position(o).as_str() > token.as_str());
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        let remaining = items.len() - limit;
        items.truncate(limit);
        metadata["continue"] = json!(items.last().map(position).unwrap_or_default());
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "apiVersion": t.resource.api_version(),
        "kind": format!("{}List", t.resource.kind),
        "metadata": metadata,
        "items": items,
    }))
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Starts a watch stream: the initial objects when no resourceVersion (or "0") is given, then
/// every event after it, until timeoutSeconds (a BOOKMARK first when asked for) or the client
/// goes away. A resourceVersion older than the event log gets an ERROR event with 410 Expired.
fn watch(kube: &Arc<Kube>, t: &Target, q: &HashMap<String, String>) -> Resp {
    let (labels, fields) = match selectors(&t.resource, q) {
        Ok(s) => s,
        Err(e) => return status_reply(&e),
    };
    let since = match q.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return status_reply(&bad_request(format!("invalid resourceVersion `{rv}`"))),
        },
    };
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(1800));
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    // kube-rs' streaming list: every current object, then a bookmark marking the end of them.
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let since = if initial_events { None } else { since };
    let (tx, resp) = http::streaming(StatusCode::OK, "application/json");
    let (kube, resource, namespace) = (kube.clone(), t.resource, t.namespace.clone());
    tokio::spawn(async move {
        let mut changed = kube.subscribe();
        changed.borrow_and_update();
        let store_name = resource.store_name();
        let ns = namespace.as_deref();
        let matches = |o: &Value| labels.matches_labels(o) && fields.matches_fields(o);
        let mut last = match since {
            Some(rv) => rv,
            None => {
                let (items, rv) = kube.read(|s| s.list(&store_name, ns, &labels, &fields));
                for item in items {
                    if tx.send(watch_line("ADDED", &item)).await.is_err() {
                        return;
                    }
                }
                if initial_events {
                    let mark = json!({"apiVersion": resource.api_version(), "kind": resource.kind,
                                      "metadata": {"resourceVersion": rv.to_string(),
                                                   "annotations": {"k8s.io/initial-events-end": "true"}}});
                    if tx.send(watch_line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                rv
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (events, now) = kube.read(|s| (s.events_since(&store_name, ns, last), s.resource_version()));
            let events: Vec<Event> = match events {
                Ok(e) => e,
                Err(gone) => {
                    let _ = tx.send(watch_line("ERROR", &gone.to_status())).await;
                    return;
                }
            };
            for e in events {
                if matches(&e.object) && tx.send(watch_line(e.kind.as_str(), &e.object)).await.is_err() {
                    return;
                }
            }
            last = now;
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(deadline) => break,
                () = tx.closed() => return,
            }
        }
        if bookmarks {
            let mark = json!({"apiVersion": resource.api_version(), "kind": resource.kind,
                              "metadata": {"resourceVersion": last.to_string()}});
            let _ = tx.send(watch_line("BOOKMARK", &mark)).await;
        }
    });
    resp
}
