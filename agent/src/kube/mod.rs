//! Kubernetes: what the agent reads from and writes to the API server — the client ([`client`],
//! kube-rs), ENIConfig name resolution, CNINode features, branch-ENI pod annotations and
//! SecurityGroupPolicies. [`Cluster`] is the node layer's seam: [`client::Kube`] implements it.

#[cfg(feature = "control-plane")]
pub mod client;
pub mod cninode;
pub mod eniconfig;
#[cfg(feature = "control-plane")]
pub mod pod_eni;
pub mod sgp;

#[cfg(feature = "control-plane")]
pub use seam::Cluster;

#[cfg(feature = "control-plane")]
mod seam {
    use super::{
        client::{EniConfig, Kube, KubeError, NodeInfo, PodInfo},
        cninode::Feature,
        sgp::SecurityGroupPolicy,
    };
    use futures::stream::BoxStream;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::watcher;

    /// The Kubernetes calls the node layer makes. [`Kube`] makes them against the API server; the
    /// node layer's unit tests answer them from memory.
    #[async_trait::async_trait]
    pub trait Cluster: Send + Sync {
        async fn node(&self, name: &str) -> Result<NodeInfo, KubeError>;
        async fn eni_config(&self, name: &str) -> Result<EniConfig, KubeError>;
        /// The CNINode's features and resourceVersion (NotFound until the Resource Controller
        /// creates it).
        async fn features(&self, node: &str) -> Result<(Vec<Feature>, String), KubeError>;
        async fn add_feature(&self, node: &str, feature: &Feature) -> Result<Vec<Feature>, KubeError>;
        async fn security_group_policies(
            &self,
            namespace: &str,
        ) -> Result<Vec<SecurityGroupPolicy>, KubeError>;
        async fn pod(&self, namespace: &str, name: &str) -> Result<PodInfo, KubeError>;
        /// `vpc.amazonaws.com/pod-ips` = `ip` (ANNOTATE_POD_IP, on ADD).
        async fn annotate_pod_ip(&self, namespace: &str, name: &str, ip: &str) -> Result<(), KubeError>;
        /// The annotation blanked if it still says `released` (on DEL); whether it was.
        async fn clear_pod_ip(&self, namespace: &str, name: &str, released: &str) -> Result<bool, KubeError>;
        /// A core/v1 Event on the Node.
        async fn event(
            &self,
            node: &NodeInfo,
            warning: bool,
            reason: &str,
            message: &str,
        ) -> Result<(), KubeError>;
        /// The pods on `node`: a list, then a watch.
        fn watch_pods(&self, node: &str) -> BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>;
    }

    #[async_trait::async_trait]
    impl Cluster for Kube {
        async fn node(&self, name: &str) -> Result<NodeInfo, KubeError> {
            Kube::node(self, name).await
        }
        async fn eni_config(&self, name: &str) -> Result<EniConfig, KubeError> {
            Kube::eni_config(self, name).await
        }
        async fn features(&self, node: &str) -> Result<(Vec<Feature>, String), KubeError> {
            Kube::features(self, node).await
        }
        async fn add_feature(&self, node: &str, feature: &Feature) -> Result<Vec<Feature>, KubeError> {
            Kube::add_feature(self, node, feature).await
        }
        async fn security_group_policies(
            &self,
            namespace: &str,
        ) -> Result<Vec<SecurityGroupPolicy>, KubeError> {
            Kube::security_group_policies(self, namespace).await
        }
        async fn pod(&self, namespace: &str, name: &str) -> Result<PodInfo, KubeError> {
            Kube::pod(self, namespace, name).await
        }
        async fn annotate_pod_ip(&self, namespace: &str, name: &str, ip: &str) -> Result<(), KubeError> {
            Kube::annotate_pod_ip(self, namespace, name, ip).await
        }
        async fn clear_pod_ip(&self, namespace: &str, name: &str, released: &str) -> Result<bool, KubeError> {
            Kube::clear_pod_ip(self, namespace, name, released).await
        }
        async fn event(
            &self,
            node: &NodeInfo,
            warning: bool,
            reason: &str,
            message: &str,
        ) -> Result<(), KubeError> {
            Kube::event(self, node, warning, reason, message).await
        }
        fn watch_pods(&self, node: &str) -> BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>> {
            Box::pin(Kube::watch_pods(self, node))
        }
    }
}
