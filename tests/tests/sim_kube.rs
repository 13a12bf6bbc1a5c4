//! Conformance of the simulated Kubernetes API, driven only through kube-rs (kube 5) with a
//! client built from the simulator's kubeconfig file.

#[path = "common/clients.rs"]
mod clients;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use eniguard_tests::sim::{kube_api, kube_store::Store};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::{
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, WatchEvent, WatchParams,
    },
    config::Kubeconfig,
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, ResourceExt as _,
};
use serde_json::json;

async fn server() -> (Arc<kube_api::Kube>, Client, tempdir::Dir) {
    let kube = kube_api::Kube::new();
    let (url, _) = kube_api::start(kube.clone()).await.unwrap();
    let dir = tempdir::Dir::new("sim-kube");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kube_api::kubeconfig(&url)).unwrap();
    let client = clients::kube_client(Kubeconfig::read_from(&path).unwrap()).await;
    (kube, client, dir)
}

mod tempdir {
    use super::{AtomicUsize, Ordering};

    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            // Tests run in parallel threads of one process: one directory each.
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("eniguard-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn node(name: &str, zone: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "spec": {"providerID": format!("aws:///{zone}/i-{name}")}
    }))
    .unwrap()
}

fn pod(name: &str, node: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn crd(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

#[tokio::test]
async fn get_list_create_conflict_and_not_found() {
    let (_kube, client, _dir) = server().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PostParams::default();
    let created = nodes.create(&pp, &node("a", "us-west-2a")).await.unwrap();
    assert!(created.metadata.resource_version.is_some() && created.metadata.uid.is_some());
    nodes.create(&pp, &node("b", "us-west-2b")).await.unwrap();
    assert_eq!(api_code(nodes.create(&pp, &node("a", "us-west-2a")).await.unwrap_err()), 409);
    assert_eq!(api_code(nodes.get("missing").await.unwrap_err()), 404);
    assert_eq!(
        nodes.get("b").await.unwrap().spec.unwrap().provider_id.as_deref(),
        Some("aws:///us-west-2b/i-b")
    );

    let zone_a =
        nodes.list(&ListParams::default().labels("topology.kubernetes.io/zone=us-west-2a")).await.unwrap();
    assert_eq!(zone_a.items.iter().map(|n| n.metadata.name.clone().unwrap()).collect::<Vec<_>>(), ["a"]);
    assert!(zone_a.metadata.resource_version.is_some());

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("p1", "a"), ("p2", "b"), ("p3", "a")] {
        pods.create(&pp, &pod(name, node, "web")).await.unwrap();
    }
    let other_ns: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    other_ns.create(&pp, &pod("p4", "a", "dns")).await.unwrap();
    let on_a =
        Api::<Pod>::all(client.clone()).list(&ListParams::default().fields("spec.nodeName=a")).await.unwrap();
    let mut names: Vec<_> = on_a.items.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["p1", "p3", "p4"]);
    assert_eq!(pods.list(&ListParams::default().fields("spec.nodeName=a")).await.unwrap().items.len(), 2);
    assert_eq!(pods.list(&ListParams::default().labels("app!=web")).await.unwrap().items.len(), 0);

    // The kubelet's final delete (grace period 0) removes the pod at once.
    let deleted = pods.delete("p2", &DeleteParams::default().grace_period(0)).await.unwrap();
    assert!(deleted.is_left());
    assert_eq!(api_code(pods.get("p2").await.unwrap_err()), 404);
    assert_eq!(api_code(pods.delete("p2", &DeleteParams::default()).await.unwrap_err()), 404);

    // generateName, and an Event in the core group.
    let events: Api<Event> = Api::namespaced(client, "default");
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "p1."},
        "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "default"},
        "reason": "SecurityGroupMismatch", "message": "egress through the trunk", "type": "Warning"
    }))
    .unwrap();
    let ev = events.create(&pp, &ev).await.unwrap();
    assert!(ev.metadata.name.unwrap().starts_with("p1."));
    assert_eq!(
        events.list(&ListParams::default()).await.unwrap().items[0].reason.as_deref(),
        Some("SecurityGroupMismatch")
    );
}

#[tokio::test]
async fn merge_and_json_patches_with_optimistic_locking() {
    let (_kube, client, _dir) = server().await;
    let nodes: Api<Node> = Api::all(client);
    let n = nodes.create(&PostParams::default(), &node("a", "us-west-2a")).await.unwrap();
    let pp = PatchParams::default();

    let patched = nodes
        .patch(
            "a",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"vpc.amazonaws.com/has-trunk-attached": "false"}}})),
        )
        .await
        .unwrap();
    let labels = patched.metadata.labels.unwrap();
    assert_eq!(labels["vpc.amazonaws.com/has-trunk-attached"], "false");
    assert_eq!(labels["topology.kubernetes.io/zone"], "us-west-2a", "merge keeps other labels");

    // A merge patch carrying a stale resourceVersion is a conflict.
    let stale =
        json!({"metadata": {"resourceVersion": n.metadata.resource_version.unwrap(), "labels": {"x": "y"}}});
    assert_eq!(api_code(nodes.patch("a", &pp, &Patch::Merge(stale)).await.unwrap_err()), 409);

    let ops: json_patch_ops::Ops = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations", "value": {"k8s.amazonaws.com/eniConfig": "us-west-2a"}},
        {"op": "remove", "path": "/metadata/labels/vpc.amazonaws.com~1has-trunk-attached"}
    ]))
    .unwrap();
    let patched = nodes.patch("a", &pp, &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["k8s.amazonaws.com/eniConfig"], "us-west-2a");
    assert!(!patched.metadata.labels.unwrap().contains_key("vpc.amazonaws.com/has-trunk-attached"));

    let failing: json_patch_ops::Ops =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "b"}])).unwrap();
    assert_eq!(api_code(nodes.patch("a", &pp, &Patch::Json::<()>(failing)).await.unwrap_err()), 422);
    assert_eq!(api_code(nodes.patch("zz", &pp, &Patch::Merge(json!({}))).await.unwrap_err()), 404);

    // Replace with a stale resourceVersion is a conflict; with the current one it succeeds.
    let mut current = nodes.get("a").await.unwrap();
    let mut old = current.clone();
    old.metadata.resource_version = Some("1".into());
    assert_eq!(api_code(nodes.replace("a", &PostParams::default(), &old).await.unwrap_err()), 409);
    current.metadata.labels.get_or_insert_default().insert("replaced".into(), "yes".into());
    let replaced = nodes.replace("a", &PostParams::default(), &current).await.unwrap();
    assert_eq!(replaced.metadata.labels.unwrap()["replaced"], "yes");
}

/// kube's JSON patch type is re-exported from json-patch; build it from JSON.
mod json_patch_ops {
    pub type Ops = json_patch::Patch;
}

#[tokio::test]
async fn custom_resources_of_the_vpc_cni_and_resource_controller() {
    let (_kube, client, _dir) = server().await;
    let eniconfig = crd("crd.k8s.amazonaws.com", "v1alpha1", "ENIConfig", "eniconfigs");
    let eniconfigs: Api<DynamicObject> = Api::all_with(client.clone(), &eniconfig);
    let mut ec = DynamicObject::new("us-west-2a", &eniconfig);
    ec.data = json!({"spec": {"subnet": "subnet-0aaa", "securityGroups": ["sg-0pod"]}});
    eniconfigs.create(&PostParams::default(), &ec).await.unwrap();
    let got = eniconfigs.get("us-west-2a").await.unwrap();
    assert_eq!(got.data["spec"]["subnet"], "subnet-0aaa");
    assert_eq!(got.types.unwrap().api_version, "crd.k8s.amazonaws.com/v1alpha1");

    let cninode = crd("vpcresources.k8s.aws", "v1alpha1", "CNINode", "cninodes");
    let cninodes: Api<DynamicObject> = Api::all_with(client.clone(), &cninode);
    let mut cn = DynamicObject::new("ip-10-0-1-10.us-west-2.compute.internal", &cninode);
    cn.data = json!({"spec": {"features": []}});
    cninodes.create(&PostParams::default(), &cn).await.unwrap();
    let patched = cninodes
        .patch(
            "ip-10-0-1-10.us-west-2.compute.internal",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"features": [{"name": "CustomNetworking", "value": "us-west-2a"}]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["features"][0]["value"], "us-west-2a");

    let sgp = crd("vpcresources.k8s.aws", "v1beta1", "SecurityGroupPolicy", "securitygrouppolicies");
    let sgps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &sgp);
    let mut policy = DynamicObject::new("payments", &sgp);
    policy.data = json!({"spec": {"podSelector": {"matchLabels": {"app": "payments"}}, "securityGroups": {"groupIds": ["sg-0pay"]}}});
    sgps.create(&PostParams::default(), &policy).await.unwrap();
    assert_eq!(sgps.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let elsewhere: Api<DynamicObject> = Api::namespaced_with(client, "default", &sgp);
    assert!(elsewhere.list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn watch_streams_changes_in_order_and_expires_old_versions() {
    let (kube, client, _dir) = server().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    pods.create(&pp, &pod("before", "a", "web")).await.unwrap();
    let rv = pods.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

    let wp = WatchParams::default().fields("spec.nodeName=a").timeout(5);
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    pods.create(&pp, &pod("p1", "a", "web")).await.unwrap();
    pods.create(&pp, &pod("elsewhere", "b", "web")).await.unwrap();
    pods.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"k": "v"}}})),
    )
    .await
    .unwrap();
    pods.delete("p1", &DeleteParams::default().grace_period(0)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.try_next().await.unwrap().expect("stream ended early") {
            WatchEvent::Added(p) => seen.push(format!("ADDED {}", p.metadata.name.unwrap())),
            WatchEvent::Modified(p) => seen.push(format!("MODIFIED {}", p.metadata.name.unwrap())),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", p.metadata.name.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED p1", "MODIFIED p1", "DELETED p1"]);

    // Without a resourceVersion the watch starts with the current objects.
    let mut from_zero = pods.watch(&WatchParams::default().timeout(5), "0").await.unwrap().boxed();
    let mut initial = Vec::new();
    for _ in 0..2 {
        if let WatchEvent::Added(p) = from_zero.try_next().await.unwrap().unwrap() {
            initial.push(p.metadata.name.unwrap());
        }
    }
    initial.sort();
    assert_eq!(initial, ["before", "elsewhere"]);

    // A version older than the event log is answered with 410 Gone.
    let key = kube_api::PODS.key(Some("default"), "before");
    kube.write(|s: &mut Store| {
        for i in 0..10_001 {
            s.merge_patch(&key, &json!({"metadata": {"annotations": {"n": i.to_string()}}})).unwrap();
        }
    });
    let mut expired = pods.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    match expired.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }

    // Bookmarks when asked for, at the end of the timeout.
    let now = pods.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut wp = WatchParams::default().timeout(1);
    wp.bookmarks = true;
    let mut marks = pods.watch(&wp, &now).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(5), marks.try_next()).await.unwrap().unwrap().unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, now),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_runtime_watcher_follows_one_nodes_pods() {
    let (_kube, client, _dir) = server().await;
    let pods: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields("spec.nodeName=a");
    let mut stream = watcher(pods, cfg).applied_objects().boxed();
    let ns: Api<Pod> = Api::namespaced(client, "default");
    ns.create(&PostParams::default(), &pod("elsewhere", "b", "web")).await.unwrap();
    ns.create(&PostParams::default(), &pod("mine", "a", "web")).await.unwrap();
    let first =
        tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("mine"));
}

/// What the real API server does and a naive store would not: the status subresource's write
/// scopes, graceful deletion, finalizers, per-resource field labels, strategic merge for built-in
/// types only, paged lists, streaming lists and real creation timestamps.
#[tokio::test]
async fn api_server_semantics_clients_rely_on() {
    let (_kube, client, _dir) = server().await;
    let pp = PostParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods.create(&pp, &pod("p", "a", "web")).await.unwrap();

    // Creation timestamps are the server's clock.
    let age = jiff::Timestamp::now().as_second() - created.metadata.creation_timestamp.unwrap().0.as_second();
    assert!((0..10).contains(&age), "creationTimestamp is {age} s old");

    // Status subresource: the main endpoint ignores `status`, `/status` changes only `status`.
    let main = json!({"metadata": {"labels": {"tier": "1"}}, "status": {"phase": "Running"}});
    let p = pods.patch("p", &PatchParams::default(), &Patch::Merge(&main)).await.unwrap();
    assert_eq!(p.labels().get("tier").map(String::as_str), Some("1"));
    assert!(
        p.status.as_ref().and_then(|s| s.phase.as_ref()).is_none(),
        "status written via the main endpoint"
    );
    let st = json!({"metadata": {"labels": {"tier": "2"}}, "status": {"phase": "Running"}});
    let p = pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&st)).await.unwrap();
    assert_eq!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    assert_eq!(p.labels().get("tier").map(String::as_str), Some("1"), "labels written via /status");
    let mut replaced = pods.get("p").await.unwrap();
    replaced.status = None;
    let replaced = pods.replace("p", &pp, &replaced).await.unwrap();
    assert_eq!(replaced.status.unwrap().phase.as_deref(), Some("Running"), "a PUT keeps the status");

    // Strategic merge on a built-in type merges lists by key; a custom resource refuses it (415).
    let sm = json!({"spec": {"containers": [{"name": "sidecar", "image": "envoy"}]}});
    let p = pods.patch("p", &PatchParams::default(), &Patch::Strategic(&sm)).await.unwrap();
    let names: Vec<_> = p.spec.unwrap().containers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["c", "sidecar"]);
    let cninode = crd("vpcresources.k8s.aws", "v1alpha1", "CNINode", "cninodes");
    let cninodes: Api<DynamicObject> = Api::all_with(client.clone(), &cninode);
    let mut n = DynamicObject::new("a", &cninode);
    n.metadata.finalizers = Some(vec!["networking.k8s.aws/resource-cleanup".into()]);
    n.data = json!({"spec": {"features": []}});
    cninodes.create(&pp, &n).await.unwrap();
    let features = json!({"spec": {"features": [{"name": "SecurityGroupsForPods"}]}});
    let e = cninodes.patch("a", &PatchParams::default(), &Patch::Strategic(&features)).await.unwrap_err();
    assert_eq!(api_code(e), 415);

    // Field selectors: only the fields the real server indexes.
    for (bad, api) in [("spec.containers", &pods), ("metadata.labels", &pods)] {
        let e = api.list(&ListParams::default().fields(&format!("{bad}=x"))).await.unwrap_err();
        assert_eq!(api_code(e), 400, "{bad}");
    }
    let e = cninodes.list(&ListParams::default().fields("spec.features=x")).await.unwrap_err();
    assert_eq!(api_code(e), 400);
    assert_eq!(cninodes.list(&ListParams::default().fields("metadata.name=a")).await.unwrap().items.len(), 1);
    assert_eq!(
        pods.list(&ListParams::default().fields("status.phase=Running")).await.unwrap().items.len(),
        1
    );

    // Graceful deletion: a bound pod gets deletionTimestamp (MODIFIED) and stays until the
    // kubelet deletes it with grace period 0 (DELETED).
    let rv = pods.get("p").await.unwrap().metadata.resource_version.unwrap();
    let mut events = pods.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    let first = pods.delete("p", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert!(first.metadata.deletion_timestamp.is_some());
    assert_eq!(first.metadata.deletion_grace_period_seconds, Some(30));
    assert!(pods.get("p").await.is_ok(), "still there during its grace period");
    pods.delete("p", &DeleteParams::default().grace_period(0)).await.unwrap();
    assert_eq!(api_code(pods.get("p").await.unwrap_err()), 404);
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match events.try_next().await.unwrap().unwrap() {
            WatchEvent::Modified(p) if p.metadata.deletion_timestamp.is_some() => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["MODIFIED", "DELETED"]);

    // Finalizers: deletion waits until the last one is removed.
    cninodes.delete("a", &DeleteParams::default()).await.unwrap();
    let pending = cninodes.get("a").await.unwrap();
    assert!(pending.metadata.deletion_timestamp.is_some());
    let clear = json!({"metadata": {"finalizers": null}});
    cninodes.patch("a", &PatchParams::default(), &Patch::Merge(&clear)).await.unwrap();
    assert_eq!(api_code(cninodes.get("a").await.unwrap_err()), 404);

    // Paged lists: limit and continue visit every object once.
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..5 {
        nodes.create(&pp, &node(&format!("n{i}"), "us-west-2a")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = nodes.list(&lp).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|n| n.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["n0", "n1", "n2", "n3", "n4"]);

    // kube-rs' streaming lists (sendInitialEvents): the current objects, then the end marker.
    let mut stream = watcher(nodes, watcher::Config::default().streaming_lists()).boxed();
    let mut initial = 0;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.unwrap().unwrap();
        match event.unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(_) => initial += 1,
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, 5);
}
