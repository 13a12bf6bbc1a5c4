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
    Api, Client,
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

    let deleted = pods.delete("p2", &DeleteParams::default()).await.unwrap();
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
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
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
