//! The node's own pods, watched (see [`Cluster::watch_pods`]) and handed to a [`PodSink`]: the
//! agent's shared state (the CNI path reads branch-ENI annotations from there, the guard derives
//! from it, the introspection endpoint lists it) or audit mode's view of aws-node's node.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use kube::runtime::watcher::Event;

use crate::kube::{client::PodInfo, Cluster};

use super::state::Shared;

/// Where the watched pods go.
pub trait PodSink {
    /// Every pod on the node (the watch listed them all).
    fn set_pods(&self, pods: BTreeMap<(String, String), PodInfo>);
    /// A pod created or changed.
    fn put_pod(&self, pod: PodInfo);
    /// A pod deleted.
    fn forget_pod(&self, pod: &PodInfo);
}

/// Follows the pods on `node` into `sink` until the task is dropped.
pub async fn follow(kube: &dyn Cluster, node: &str, sink: &impl PodSink) {
    let mut stream = std::pin::pin!(kube.watch_pods(node));
    let mut fresh: BTreeMap<(String, String), PodInfo> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => fresh.clear(),
            Ok(Event::InitApply(p)) => {
                let info = PodInfo::from_pod(&p);
                fresh.insert((info.namespace.clone(), info.name.clone()), info);
            }
            Ok(Event::InitDone) => sink.set_pods(std::mem::take(&mut fresh)),
            Ok(Event::Apply(p)) => sink.put_pod(PodInfo::from_pod(&p)),
            Ok(Event::Delete(p)) => sink.forget_pod(&PodInfo::from_pod(&p)),
            Err(e) => log::warn!("pod watch on {node}: {e}"),
        }
    }
}

/// Follows the agent's node's pods until the task is dropped.
pub async fn watch(shared: std::sync::Arc<Shared>) {
    let node = shared.node().name;
    follow(shared.clients.kube.as_ref(), &node, shared.as_ref()).await;
}

impl PodSink for Shared {
    fn set_pods(&self, pods: BTreeMap<(String, String), PodInfo>) {
        Shared::set_pods(self, pods);
    }
    fn put_pod(&self, pod: PodInfo) {
        Shared::put_pod(self, pod);
    }
    fn forget_pod(&self, pod: &PodInfo) {
        Shared::forget_pod(self, pod);
    }
}
