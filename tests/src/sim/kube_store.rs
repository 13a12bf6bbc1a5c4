//! The object store behind the simulated Kubernetes API: objects by (resource, namespace, name),
//! a cluster-wide resourceVersion, an event log for watches, label and field selectors, merge,
//! strategic-merge and JSON patches, the status subresource's write scopes, graceful deletion
//! and finalizers, with the API server's 404/409/410/422 answers. Pure (serde_json values) but
//! for the clock; the HTTP layer that kube-rs talks to is built on it.
//!
//! Writes through [`Store::update`] and [`Store::delete_request`] follow the API server (what
//! clients get over HTTP); [`Store::replace`], [`Store::merge_patch`] and [`Store::delete`] are
//! the simulator's own writes (controllers, a kubelet's final delete) and change anything.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Map, Value};

/// How many events a watch can resume from; older resourceVersions get 410 Gone.
const EVENT_LOG: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Plural resource name with its group, e.g. `pods`, `cninodes.vpcresources.k8s.aws`.
    pub resource: String,
    /// None for cluster-scoped resources.
    pub namespace: Option<String>,
    pub name: String,
}

/// An API error as the API server reports it (a `Status` object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl StatusError {
    pub fn to_status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

fn not_found(key: &Key) -> StatusError {
    StatusError {
        code: 404,
        reason: "NotFound",
        message: format!("{} \"{}\" not found", key.resource, key.name),
    }
}

fn invalid(message: String) -> StatusError {
    StatusError { code: 422, reason: "Invalid", message }
}

/// Now, as the API server writes timestamps (RFC 3339, whole seconds, UTC).
pub fn timestamp(offset_secs: i64) -> String {
    let t = jiff::Timestamp::now().as_second().saturating_add(offset_secs);
    jiff::Timestamp::from_second(t)
        .map_or_else(|_| "1970-01-01T00:00:00Z".into(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Which part of an object a client's write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main endpoint of a resource without a status subresource: everything.
    All,
    /// The main endpoint of a resource with one: everything but `status`.
    MainOfStatusResource,
    /// The `/status` subresource: only `status`.
    Status,
}

/// A client's patch, by content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub resource_version: u64,
    pub kind: EventType,
    pub key: Key,
    pub object: Value,
}

#[derive(Debug, Default)]
pub struct Store {
    last_rv: u64,
    objects: BTreeMap<Key, Value>,
    events: VecDeque<Event>,
    uid: u64,
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.last_rv
    }

    fn record(&mut self, kind: EventType, key: &Key, object: &Value) {
        self.events.push_back(Event {
            resource_version: self.last_rv,
            kind,
            key: key.clone(),
            object: object.clone(),
        });
        if self.events.len() > EVENT_LOG {
            self.events.pop_front();
        }
    }

    fn stamp(&mut self, obj: &mut Value) {
        self.last_rv += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(self.last_rv.to_string()));
        }
    }

    pub fn create(&mut self, key: Key, mut obj: Value) -> Result<Value, StatusError> {
        if self.objects.contains_key(&key) {
            return Err(StatusError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{}\" already exists", key.resource, key.name),
            });
        }
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid("metadata: Required value".into()))?;
        meta.insert("name".into(), Value::String(key.name.clone()));
        if let Some(ns) = &key.namespace {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        self.uid += 1;
        meta.insert("uid".into(), Value::String(format!("00000000-0000-4000-8000-{:012x}", self.uid)));
        meta.insert("creationTimestamp".into(), Value::String(timestamp(0)));
        self.stamp(&mut obj);
        self.objects.insert(key.clone(), obj.clone());
        self.record(EventType::Added, &key, &obj);
        Ok(obj)
    }

    pub fn get(&self, key: &Key) -> Result<Value, StatusError> {
        self.objects.get(key).cloned().ok_or_else(|| not_found(key))
    }

    /// Objects of `resource` (in `namespace`, or all) matching the selectors, and the list's
    /// resourceVersion.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        labels: &Selector,
        fields: &Selector,
    ) -> (Vec<Value>, u64) {
        let items = self
            .objects
            .iter()
            .filter(|(k, _)| {
                k.resource == resource && namespace.is_none_or(|ns| k.namespace.as_deref() == Some(ns))
            })
            .filter(|(_, o)| labels.matches_labels(o) && fields.matches_fields(o))
            .map(|(_, o)| o.clone())
            .collect();
        (items, self.last_rv)
    }

    /// Replaces an object; a stale `metadata.resourceVersion` is a 409 Conflict.
    pub fn replace(&mut self, key: &Key, mut obj: Value) -> Result<Value, StatusError> {
        let current = self.get(key)?;
        let sent = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_owned);
        let have = current.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_owned);
        if sent.is_some() && sent != have {
            return Err(StatusError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    key.resource, key.name
                ),
            });
        }
        // Identity fields stay the server's.
        for field in ["uid", "creationTimestamp", "name", "namespace"] {
            if let (Some(v), Some(meta)) = (
                current["metadata"].get(field).cloned(),
                obj.get_mut("metadata").and_then(Value::as_object_mut),
            ) {
                meta.insert(field.into(), v);
            }
        }
        self.stamp(&mut obj);
        self.objects.insert(key.clone(), obj.clone());
        self.record(EventType::Modified, key, &obj);
        Ok(obj)
    }

    /// RFC 7386 merge patch (kube-rs `Patch::Merge`). A patch carrying
    /// `metadata.resourceVersion` is an optimistic lock: stale → 409.
    pub fn merge_patch(&mut self, key: &Key, patch: &Value) -> Result<Value, StatusError> {
        let obj = self.patched(key, PatchKind::Merge, patch)?;
        self.replace(key, obj)
    }

    /// RFC 6902 JSON patch (kube-rs `Patch::Json`); a failed `test` or a bad path is 422.
    pub fn json_patch(&mut self, key: &Key, ops: &Value) -> Result<Value, StatusError> {
        let obj = self.patched(key, PatchKind::Json, ops)?;
        self.replace(key, obj)
    }

    /// The object as `patch` would leave it (not stored). Only a patch that carries
    /// `metadata.resourceVersion` locks optimistically.
    pub fn patched(&self, key: &Key, kind: PatchKind, patch: &Value) -> Result<Value, StatusError> {
        let mut obj = self.get(key)?;
        let locks = kind != PatchKind::Json && patch.pointer("/metadata/resourceVersion").is_some();
        if !locks {
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
        }
        match kind {
            PatchKind::Merge => merge(&mut obj, patch),
            PatchKind::Strategic => strategic_merge(&mut obj, patch),
            PatchKind::Json => {
                let ops = patch
                    .as_array()
                    .ok_or_else(|| invalid("a JSON patch is an array of operations".into()))?;
                for (i, op) in ops.iter().enumerate() {
                    apply_op(&mut obj, op).map_err(|m| invalid(format!("patch operation {i}: {m}")))?;
                }
            }
        }
        Ok(obj)
    }

    /// A client's write (PUT or PATCH result) within `scope`: the main endpoint of a resource
    /// with a status subresource keeps the stored `status`, the `/status` endpoint changes only
    /// `status`. An object being deleted whose last finalizer this write removes is deleted.
    pub fn update(&mut self, key: &Key, mut obj: Value, scope: Scope) -> Result<Value, StatusError> {
        let current = self.get(key)?;
        match scope {
            Scope::All => {}
            Scope::MainOfStatusResource => set_status(&mut obj, current.get("status").cloned()),
            Scope::Status => {
                let status = obj.get("status").cloned();
                let rv = obj.pointer("/metadata/resourceVersion").cloned();
                obj = current.clone();
                set_status(&mut obj, status);
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    match rv {
                        Some(rv) => meta.insert("resourceVersion".into(), rv),
                        None => meta.remove("resourceVersion"),
                    };
                }
            }
        }
        if scope != Scope::Status {
            // deletionTimestamp is the server's: a client can neither set nor clear it.
            let deleting = current.pointer("/metadata/deletionTimestamp").cloned();
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                match deleting {
                    Some(t) => meta.insert("deletionTimestamp".into(), t),
                    None => meta.remove("deletionTimestamp"),
                };
            }
        }
        let stored = self.replace(key, obj)?;
        let deleting = stored.pointer("/metadata/deletionTimestamp").is_some();
        if deleting
            && finalizers(&stored) == 0
            && stored.pointer("/metadata/deletionGracePeriodSeconds").is_none()
        {
            return self.delete(key);
        }
        Ok(stored)
    }

    /// A client's DELETE. An object with finalizers only gets `deletionTimestamp` (MODIFIED) and
    /// goes when the last finalizer is removed. With `graceful` (a Pod bound to a node) and a grace
    /// period other than 0, it gets `deletionTimestamp` and `deletionGracePeriodSeconds` (default
    /// 30) and goes when the kubelet deletes it again with grace period 0. Otherwise it goes now.
    pub fn delete_request(
        &mut self,
        key: &Key,
        graceful: bool,
        grace: Option<i64>,
    ) -> Result<Value, StatusError> {
        let mut obj = self.get(key)?;
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let pending_grace = graceful && grace != Some(0);
        if finalizers(&obj) == 0 && !pending_grace {
            return self.delete(key);
        }
        if deleting {
            return Ok(obj);
        }
        let period = if pending_grace { grace.unwrap_or(30) } else { 0 };
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("deletionTimestamp".into(), Value::String(timestamp(period)));
            if pending_grace {
                meta.insert("deletionGracePeriodSeconds".into(), json!(period));
            }
            meta.remove("resourceVersion");
        }
        self.replace(key, obj)
    }

    pub fn delete(&mut self, key: &Key) -> Result<Value, StatusError> {
        let mut obj = self.objects.remove(key).ok_or_else(|| not_found(key))?;
        self.stamp(&mut obj);
        self.record(EventType::Deleted, key, &obj);
        Ok(obj)
    }

    /// Events for `resource` after `since`; 410 Gone when `since` is older than the log.
    pub fn events_since(
        &self,
        resource: &str,
        namespace: Option<&str>,
        since: u64,
    ) -> Result<Vec<Event>, StatusError> {
        Ok(self
            .after(since)?
            .filter(|e| e.key.resource == resource)
            .filter(|e| namespace.is_none_or(|ns| e.key.namespace.as_deref() == Some(ns)))
            .cloned()
            .collect())
    }

    /// Every event after `since`, of all resources, in order (for controllers).
    pub fn all_events_since(&self, since: u64) -> Result<Vec<Event>, StatusError> {
        Ok(self.after(since)?.cloned().collect())
    }

    /// The log from the first event after `since` (the log is in resourceVersion order, so
    /// watches do not rescan what they have seen).
    fn after(&self, since: u64) -> Result<impl Iterator<Item = &Event>, StatusError> {
        if let Some(oldest) = self.events.front() {
            if since + 1 < oldest.resource_version {
                return Err(StatusError {
                    code: 410,
                    reason: "Expired",
                    message: format!("too old resource version: {since} ({})", oldest.resource_version - 1),
                });
            }
        }
        let first = self.events.partition_point(|e| e.resource_version <= since);
        Ok(self.events.range(first..))
    }
}

fn set_status(obj: &mut Value, status: Option<Value>) {
    if let Some(m) = obj.as_object_mut() {
        match status {
            Some(st) => m.insert("status".into(), st),
            None => m.remove("status"),
        };
    }
}

fn finalizers(obj: &Value) -> usize {
    obj.pointer("/metadata/finalizers").and_then(Value::as_array).map_or(0, Vec::len)
}

/// Strategic merge patch, as the API server applies it to built-in types: objects merge as in
/// RFC 7386; lists of objects that all carry a merge key (`name` — containers, env, volumes — or
/// `type` — conditions, addresses, taints by `key`) merge element by element on that key, and an
/// element with `"$patch": "delete"` is removed; other lists (strings, numbers) are replaced,
/// except `metadata.finalizers`, which merges as a set. Per-field strategies beyond these keys
/// (from the OpenAPI `x-kubernetes-patch-merge-key` extensions) are not modelled.
fn strategic_merge(target: &mut Value, patch: &Value) {
    merge_at(target, patch, "", true);
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    merge_at(target, patch, "", false);
}

/// Objects merge key by key (null removes); lists are replaced, or with `strategic` merged as
/// [`strategic_merge`] describes. `path` is the JSON pointer of `target`.
fn merge_at(target: &mut Value, patch: &Value, path: &str, strategic: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_at(t.entry(k.clone()).or_insert(Value::Null), v, &format!("{path}/{k}"), strategic);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if strategic && path == "/metadata/finalizers" => {
            for v in p {
                if !t.contains(v) {
                    t.push(v.clone());
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if strategic => match merge_key(t, p) {
            Some(key) => {
                for item in p {
                    let id = &item[key];
                    let pos = t.iter().position(|e| &e[key] == id);
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            t.remove(i);
                        }
                        (Some(i), false) => merge_at(&mut t[i], item, path, true),
                        (None, false) => t.push(item.clone()),
                        (None, true) => {}
                    }
                }
            }
            None => *t = p.clone(),
        },
        (t, p) => *t = p.clone(),
    }
}

/// The key both lists' elements are identified by, if every element is an object carrying it.
fn merge_key(a: &[Value], b: &[Value]) -> Option<&'static str> {
    ["name", "type", "key"]
        .into_iter()
        .find(|k| !b.is_empty() && a.iter().chain(b).all(|e| e.get(*k).is_some_and(|v| !v.is_null())))
}

/// RFC 6901 pointer → (parent pointer, last token unescaped).
fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| format!("`{path}` is not a JSON pointer"))?;
    Ok((parent.to_owned(), last.replace("~1", "/").replace("~0", "~")))
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let name = op["op"].as_str().ok_or("missing `op`")?;
    let path = op["path"].as_str().ok_or("missing `path`")?;
    match name {
        "test" => {
            if doc.pointer(path) != Some(&op["value"]) {
                return Err(format!("test failed at {path}"));
            }
        }
        "remove" => {
            take(doc, path)?;
        }
        "add" | "replace" => {
            if name == "replace" && doc.pointer(path).is_none() {
                return Err(format!("no value at {path} to replace"));
            }
            put(doc, path, op["value"].clone(), name == "add")?;
        }
        "move" | "copy" => {
            let from = op["from"].as_str().ok_or("missing `from`")?;
            let v = if name == "move" {
                take(doc, from)?
            } else {
                doc.pointer(from).cloned().ok_or(format!("no value at {from}"))?
            };
            put(doc, path, v, true)?;
        }
        other => return Err(format!("unknown op `{other}`")),
    }
    Ok(())
}

fn take(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or(format!("no value at {path}")),
        Some(Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
            (i < a.len()).then(|| a.remove(i)).ok_or(format!("no value at {path}"))
        }
        _ => Err(format!("no parent for {path}")),
    }
}

fn put(doc: &mut Value, path: &str, value: Value, insert: bool) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("bad index in {path}"))?;
            match (insert, i <= a.len(), i < a.len()) {
                (true, true, _) => a.insert(i, value),
                (false, _, true) => a[i] = value,
                _ => return Err(format!("index out of range in {path}")),
            }
            Ok(())
        }
        _ => Err(format!("no parent for {path}")),
    }
}

/// A label or field selector: comma-separated `k=v`, `k==v`, `k!=v`, `k`, `!k`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self, StatusError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let r = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if part.contains([' ', '(']) {
                return Err(StatusError {
                    code: 400,
                    reason: "BadRequest",
                    message: format!("unsupported selector `{part}`"),
                });
            } else {
                Requirement::Exists(part.into())
            };
            reqs.push(r);
        }
        Ok(Self(reqs))
    }

    /// The keys the selector names (a field selector's field labels).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| match r {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k) => k.as_str(),
        })
    }

    fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels: Map<String, Value> =
            obj.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
        self.matches(|k| labels.get(k).and_then(Value::as_str).map(str::to_owned))
    }

    /// Field selectors over dotted paths such as `spec.nodeName` or `metadata.name`.
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches(|k| {
            let pointer = format!("/{}", k.replace('.', "/"));
            obj.pointer(&pointer).and_then(|v| v.as_str().map(str::to_owned).or_else(|| Some(v.to_string())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key { resource: "pods".into(), namespace: Some("default".into()), name: name.into() }
    }

    fn pod(name: &str, node: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}}, "spec": {"nodeName": node}})
    }

    #[test]
    fn create_get_conflict_and_not_found() {
        let mut s = Store::default();
        let p = s.create(key("a"), pod("a", "n1", "web")).unwrap();
        assert_eq!(p["metadata"]["resourceVersion"], "1");
        assert_eq!(s.create(key("a"), pod("a", "n1", "web")).unwrap_err().code, 409);
        assert_eq!(s.get(&key("b")).unwrap_err().code, 404);
        assert_eq!(s.delete(&key("b")).unwrap_err().reason, "NotFound");
    }

    #[test]
    fn selectors_filter_lists() {
        let mut s = Store::default();
        s.create(key("a"), pod("a", "n1", "web")).unwrap();
        s.create(key("b"), pod("b", "n2", "web")).unwrap();
        s.create(key("c"), pod("c", "n1", "db")).unwrap();
        let l = |labels: &str, fields: &str| {
            let (items, _) = s.list(
                "pods",
                Some("default"),
                &Selector::parse(labels).unwrap(),
                &Selector::parse(fields).unwrap(),
            );
            items.iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(l("app=web", ""), ["a", "b"]);
        assert_eq!(l("app!=web", "spec.nodeName=n1"), ["c"]);
        assert_eq!(l("", "spec.nodeName=n1"), ["a", "c"]);
        assert_eq!(l("!app", ""), Vec::<String>::new());
    }

    #[test]
    fn patches_and_optimistic_locking() {
        let mut s = Store::default();
        s.create(key("a"), pod("a", "n1", "web")).unwrap();
        let p = s
            .merge_patch(
                &key("a"),
                &json!({"metadata": {"annotations": {"x": "1"}, "labels": {"app": null}}}),
            )
            .unwrap();
        assert_eq!(p["metadata"]["annotations"]["x"], "1");
        assert!(p["metadata"]["labels"].get("app").is_none());
        let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"nodeName": "n9"}});
        assert_eq!(s.merge_patch(&key("a"), &stale).unwrap_err().code, 409);
        let p = s
            .json_patch(&key("a"), &json!([{"op": "add", "path": "/spec/features", "value": []},
                                           {"op": "add", "path": "/spec/features/-", "value": {"name": "SecurityGroupsForPods"}}]))
            .unwrap();
        assert_eq!(p["spec"]["features"][0]["name"], "SecurityGroupsForPods");
        let e = s
            .json_patch(&key("a"), &json!([{"op": "test", "path": "/spec/nodeName", "value": "nope"}]))
            .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn watch_events_resume_from_a_resource_version() {
        let mut s = Store::default();
        s.create(key("a"), pod("a", "n1", "web")).unwrap();
        let rv = s.resource_version();
        s.merge_patch(&key("a"), &json!({"metadata": {"labels": {"x": "y"}}})).unwrap();
        s.delete(&key("a")).unwrap();
        let kinds: Vec<_> = s.events_since("pods", None, rv).unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventType::Modified, EventType::Deleted]);
        assert!(s.events_since("nodes", None, 0).unwrap().is_empty());
    }
}
