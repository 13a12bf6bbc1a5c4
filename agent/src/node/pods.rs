//! The node's own pods, watched (see [`Kube::watch_pods`](crate::kube::client::Kube::watch_pods))
//! and kept in the shared state: the CNI path reads branch-ENI annotations from here, and the
//! introspection endpoint lists them.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use kube::runtime::watcher::Event;

use crate::kube::client::PodInfo;

use super::state::Shared;

/// Follows the pods on this node until the task is dropped.
pub async fn watch(shared: std::sync::Arc<Shared>) {
    let node = shared.node().name;
    let mut stream = std::pin::pin!(shared.clients.kube.watch_pods(&node));
    let mut fresh: BTreeMap<(String, String), PodInfo> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => fresh.clear(),
            Ok(Event::InitApply(p)) => {
                let info = PodInfo::from_pod(&p);
                fresh.insert((info.namespace.clone(), info.name.clone()), info);
            }
            Ok(Event::InitDone) => shared.set_pods(std::mem::take(&mut fresh)),
            Ok(Event::Apply(p)) => shared.put_pod(PodInfo::from_pod(&p)),
            Ok(Event::Delete(p)) => shared.forget_pod(&PodInfo::from_pod(&p)),
            Err(e) => log::warn!("pod watch on {node}: {e}"),
        }
    }
}
