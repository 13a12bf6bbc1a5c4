//! The Kubernetes API through kube-rs, built once (in-cluster config or KUBECONFIG) and shared:
//! the node itself, its ENIConfig, its CNINode features (merged under optimistic locking and read
//! back), and Events on the Node.

use std::collections::BTreeMap;

use futures::Stream;
use k8s_openapi::api::core::v1::{Event, Node, ObjectReference, Pod};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::Value;

use super::cninode::{self, Feature};
use crate::cloud::imds::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes client configuration (in-cluster or KUBECONFIG): {}", error_chain(.0))]
    Config(#[source] kube::Error),
    #[error("CLUSTER_ENDPOINT=`{0}`: expected a URL such as https://ABC.gr7.us-west-2.eks.amazonaws.com")]
    Endpoint(String),
    #[error("Kubernetes {what}: {}", error_chain(source))]
    Api { what: String, source: kube::Error },
    #[error("ENIConfig `{name}`: {field}: expected {expected}")]
    BadEniConfig { name: String, field: &'static str, expected: &'static str },
    #[error("Kubernetes {what}: not found")]
    NotFound { what: String },
    #[error("CNINode `{0}`: the feature did not stick after repeated conflicts")]
    Conflicts(String),
}

/// What the agent needs from its Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// status.capacity.pods (kubelet's max-pods).
    pub max_pods: Option<u32>,
    /// Carries `node.kubernetes.io/unschedulable:NoSchedule` (cordoned, draining).
    pub unschedulable: bool,
}

/// What the agent keeps of each pod on its node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub host_network: bool,
    /// containers[0] asks for `vpc.amazonaws.com/pod-eni` (a branch-ENI pod).
    pub wants_branch: bool,
    /// The Resource Controller's `vpc.amazonaws.com/pod-eni` annotation, as written.
    pub pod_eni: Option<String>,
    /// `eniguard.io/guard-mode` (off, monitor, enforce), as written.
    pub guard_mode: Option<String>,
    /// Upstream's `vpc.amazonaws.com/pod-ips` (ANNOTATE_POD_IP), as written.
    pub pod_ips: Option<String>,
    /// The pod's labels (SecurityGroupPolicy pod selectors match them).
    pub labels: BTreeMap<String, String>,
}

impl PodInfo {
    pub fn from_pod(p: &Pod) -> Self {
        let spec = p.spec.as_ref();
        let wants_branch = spec
            .and_then(|s| s.containers.first())
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|l| l.keys().any(|k| k.starts_with("vpc.amazonaws.com/pod-eni")));
        let annotation = |key: &str| p.metadata.annotations.as_ref().and_then(|a| a.get(key).cloned());
        Self {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            wants_branch,
            pod_eni: annotation("vpc.amazonaws.com/pod-eni"),
            guard_mode: annotation(crate::guard::derive::POD_MODE_ANNOTATION),
            pod_ips: annotation(POD_IPS_ANNOTATION),
            labels: p.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// Upstream's annotation with the pod's address (ANNOTATE_POD_IP).
pub const POD_IPS_ANNOTATION: &str = "vpc.amazonaws.com/pod-ips";

/// An ENIConfig's spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniConfig {
    pub name: String,
    pub subnet: String,
    /// Empty: ENIs get the primary ENI's groups.
    pub security_groups: Vec<String>,
}

#[derive(Clone)]
pub struct Kube {
    client: Client,
}

fn gvk(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn api_err(what: impl Into<String>, e: kube::Error) -> KubeError {
    let what = what.into();
    match &e {
        kube::Error::Api(s) if s.code == 404 => KubeError::NotFound { what },
        _ => KubeError::Api { what, source: e },
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Kube {
    /// In-cluster configuration or KUBECONFIG (kube-rs's inference), with the API server at
    /// `endpoint` when given (upstream's CLUSTER_ENDPOINT: no detour through kube-proxy).
    pub async fn new(endpoint: Option<&str>) -> Result<Self, KubeError> {
        let mut config =
            kube::Config::infer().await.map_err(|e| KubeError::Config(kube::Error::InferConfig(e)))?;
        if let Some(url) = endpoint {
            config.cluster_url = url.parse().map_err(|_| KubeError::Endpoint(url.to_owned()))?;
        }
        let client = Client::try_from(config).map_err(KubeError::Config)?;
        Ok(Self { client })
    }

    pub async fn node(&self, name: &str) -> Result<NodeInfo, KubeError> {
        let node = Api::<Node>::all(self.client.clone())
            .get(name)
            .await
            .map_err(|e| api_err(format!("node {name}"), e))?;
        let meta = node.metadata;
        let unschedulable = node.spec.as_ref().is_some_and(|s| {
            s.unschedulable == Some(true)
                || s.taints
                    .iter()
                    .flatten()
                    .any(|t| t.key == "node.kubernetes.io/unschedulable" && t.effect == "NoSchedule")
        });
        let max_pods = node
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("pods"))
            .and_then(|q| q.0.parse().ok());
        Ok(NodeInfo {
            name: name.to_owned(),
            uid: meta.uid.unwrap_or_default(),
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            max_pods,
            unschedulable,
        })
    }

    /// The ENIConfig named `name`, validated: a subnet id, and security group ids (or none).
    pub async fn eni_config(&self, name: &str) -> Result<EniConfig, KubeError> {
        let ar = gvk("crd.k8s.amazonaws.com", "v1alpha1", "ENIConfig", "eniconfigs");
        let obj = Api::<DynamicObject>::all_with(self.client.clone(), &ar)
            .get(name)
            .await
            .map_err(|e| api_err(format!("ENIConfig `{name}`"), e))?;
        parse_eni_config(name, &obj.data)
    }

    fn cninodes(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &gvk("vpcresources.k8s.aws", "v1alpha1", "CNINode", "cninodes"))
    }

    /// The features the API server holds for this node's CNINode, and its resourceVersion. The
    /// Resource Controller creates the CNINode; until it has, NotFound.
    pub async fn features(&self, node: &str) -> Result<(Vec<Feature>, String), KubeError> {
        let obj = self.cninodes().get(node).await.map_err(|e| api_err(format!("CNINode `{node}`"), e))?;
        let rv = obj.metadata.resource_version.clone().unwrap_or_default();
        Ok((cninode::features_of(&obj.data), rv))
    }

    /// Merges `feature` into the CNINode (a merge patch locked to the resourceVersion it was
    /// computed from; on 409 it reads again), then returns the features the API server returns.
    pub async fn add_feature(&self, node: &str, feature: &Feature) -> Result<Vec<Feature>, KubeError> {
        for _ in 0..5 {
            let (current, rv) = self.features(node).await?;
            let Some(merged) = cninode::with_feature(&current, feature) else { return Ok(current) };
            let patch = Patch::Merge(cninode::patch(&merged, &rv));
            match self.cninodes().patch(node, &PatchParams::default(), &patch).await {
                Ok(_) => return self.features(node).await.map(|(f, _)| f),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_err(format!("CNINode `{node}` patch"), e)),
            }
        }
        Err(KubeError::Conflicts(node.to_owned()))
    }

    /// The SecurityGroupPolicies of `namespace`; one that does not parse is logged and skipped.
    pub async fn security_group_policies(
        &self,
        namespace: &str,
    ) -> Result<Vec<crate::kube::sgp::SecurityGroupPolicy>, KubeError> {
        let ar = gvk("vpcresources.k8s.aws", "v1beta1", "SecurityGroupPolicy", "securitygrouppolicies");
        let list = Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, &ar)
            .list(&Default::default())
            .await
            .map_err(|e| api_err(format!("SecurityGroupPolicies in {namespace}"), e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| {
                let name = o.metadata.name.clone().unwrap_or_default();
                crate::kube::sgp::parse(&name, &o.data).inspect_err(|e| log::warn!("{e}")).ok()
            })
            .collect())
    }

    /// One pod, read from the API server (the CNI ADD of a possible branch-ENI pod: the watch
    /// may not have its annotation yet).
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<PodInfo, KubeError> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| api_err(format!("pod {namespace}/{name}"), e))?;
        Ok(PodInfo::from_pod(&pod))
    }

    /// Sets upstream's `vpc.amazonaws.com/pod-ips` annotation (ANNOTATE_POD_IP) to `ip` (one merge
    /// patch).
    pub async fn annotate_pod_ip(&self, namespace: &str, name: &str, ip: &str) -> Result<(), KubeError> {
        let patch = serde_json::json!({"metadata": {"annotations": {POD_IPS_ANNOTATION: ip}}});
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(format!("pod {namespace}/{name}: annotating {POD_IPS_ANNOTATION}"), e))?;
        Ok(())
    }

    /// Blanks the annotation if it still says `released` (as upstream on DEL); a pod gone or
    /// annotated otherwise is left alone. Returns whether it was blanked.
    pub async fn clear_pod_ip(&self, namespace: &str, name: &str, released: &str) -> Result<bool, KubeError> {
        let pod = self.pod(namespace, name).await;
        match pod {
            Err(KubeError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
            Ok(p) if p.pod_ips.as_deref() != Some(released) => Ok(false),
            Ok(_) => self.annotate_pod_ip(namespace, name, "").await.map(|()| true),
        }
    }

    /// The pods on `node` only (a `spec.nodeName` field selector, never a cluster-wide list):
    /// a list, then a watch that resumes from its resourceVersion and re-lists on 410, with
    /// backoff between failures.
    pub fn watch_pods(
        &self,
        node: &str,
    ) -> impl Stream<Item = Result<kube::runtime::watcher::Event<Pod>, kube::runtime::watcher::Error>> + Send + use<>
    {
        use kube::runtime::{watcher, WatchStreamExt as _};
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        watcher(Api::<Pod>::all(self.client.clone()), config).default_backoff()
    }

    /// A core/v1 Event on the Node (what `kubectl describe node` shows).
    pub async fn event(
        &self,
        node: &NodeInfo,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff_now());
        let ev = Event {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}.", node.name)),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Node".into()),
                api_version: Some("v1".into()),
                name: Some(node.name.clone()),
                uid: Some(node.uid.clone()).filter(|u| !u.is_empty()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("eniguard".into()),
                host: Some(node.name.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("eniguard".into()),
            reporting_instance: Some(node.name.clone()),
            ..Default::default()
        };
        Api::<Event>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &ev)
            .await
            .map(|_| ())
            .map_err(|e| api_err(format!("event {reason}"), e))
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn parse_eni_config(name: &str, data: &Value) -> Result<EniConfig, KubeError> {
    let bad = |field, expected| KubeError::BadEniConfig { name: name.to_owned(), field, expected };
    let subnet = data
        .pointer("/spec/subnet")
        .and_then(Value::as_str)
        .filter(|s| s.starts_with("subnet-"))
        .ok_or_else(|| bad("spec.subnet", "a subnet id (subnet-...)"))?;
    let security_groups = match data.pointer("/spec/securityGroups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().filter(|s| s.starts_with("sg-")).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("spec.securityGroups", "security group ids (sg-...)"))?,
        Some(_) => return Err(bad("spec.securityGroups", "a list of security group ids")),
    };
    Ok(EniConfig { name: name.to_owned(), subnet: subnet.to_owned(), security_groups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eni_configs_are_validated_with_the_field_named() {
        let ok = parse_eni_config("a", &json!({"spec": {"subnet": "subnet-1", "securityGroups": ["sg-1"]}}))
            .unwrap();
        assert_eq!(ok.security_groups, ["sg-1"]);
        assert!(parse_eni_config("a", &json!({"spec": {"subnet": "subnet-1"}}))
            .unwrap()
            .security_groups
            .is_empty());
        let e = parse_eni_config("a", &json!({"spec": {"subnet": ""}})).unwrap_err().to_string();
        assert_eq!(e, "ENIConfig `a`: spec.subnet: expected a subnet id (subnet-...)");
        let e = parse_eni_config("a", &json!({"spec": {"subnet": "subnet-1", "securityGroups": ["x"]}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.securityGroups"), "{e}");
    }
}
