//! aws-node's contract with EKS's network-policy agent (aws-network-policy-agent, the
//! `aws-eks-nodeagent` container), as upstream's ipamd and CNI plugin keep it: gRPC over unix
//! sockets in a directory both containers mount (upstream's `/var/run/aws-node`).
//!
//! - The agent serves `ConfigServerBackend.GetNetworkPolicyConfigs` on `ipamd.sock`: the mode
//!   (NETWORK_POLICY_ENFORCING_MODE), the multi-NIC flag, the node's IPv4 and IPv6, the instance
//!   and the region ([`serve_config`]).
//! - With a mode set, the CNI plugin calls the network-policy agent on `npa.sock` after plumbing a
//!   pod (`EnforceNpToPod`: the pod's name, namespace, the mode, its interface count; a dial error
//!   within 2 s, an RPC error or `Success=false` fails the ADD) and when it is deleted
//!   (`DeletePodNp`) ([`enforce`], [`delete`]).
//!
//! The messages are generated from `proto/rpc.proto` by tonic-prost-build ([`proto`]).

/// The generated messages, clients and servers (package `rpc`).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod proto {
    tonic::include_proto!("rpc");
}

/// Upstream's directory for both sockets.
pub const DEFAULT_RUN_DIR: &str = "/var/run/aws-node";
/// The network-policy agent's socket.
pub const NPA_SOCKET: &str = "npa.sock";
/// ipamd's socket, which this agent serves.
pub const IPAMD_SOCKET: &str = "ipamd.sock";

#[cfg(feature = "control-plane")]
pub use wire::*;

#[cfg(feature = "control-plane")]
mod wire {
    use std::{
        path::{Path, PathBuf},
        time::Duration,
    };

    use tonic::transport::{Endpoint, Server, Uri};

    use super::{
        proto::{
            config_server_backend_server::{ConfigServerBackend, ConfigServerBackendServer},
            np_backend_client::NpBackendClient,
            DeleteNpRequest, EnforceNpRequest, NetworkPolicyAgentConfigReply,
        },
        IPAMD_SOCKET, NPA_SOCKET,
    };

    /// Upstream's dial timeout for npa.sock.
    pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

    #[derive(Debug, thiserror::Error)]
    pub enum NetpolError {
        #[error("the network-policy agent does not answer on {}: {source}", path.display())]
        Dial { path: PathBuf, source: tonic::transport::Error },
        #[error("the network-policy agent on {}: {call}: {source}", path.display())]
        Call { path: PathBuf, call: &'static str, source: tonic::Status },
        #[error("the network-policy agent on {}: {call} answered Success=false", path.display())]
        Refused { path: PathBuf, call: &'static str },
        #[error("{}: {source}", path.display())]
        Socket { path: PathBuf, source: std::io::Error },
    }

    /// What GetNetworkPolicyConfigs answers.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct NodeFacts {
        /// NETWORK_POLICY_ENFORCING_MODE, or empty when unset.
        pub mode: String,
        pub node_ipv4: String,
        /// IPv6 mode: the instance's IPv6 address; empty otherwise.
        pub node_ipv6: String,
        pub instance_id: String,
        pub region: String,
    }

    struct ConfigServer(NodeFacts);

    #[tonic::async_trait]
    impl ConfigServerBackend for ConfigServer {
        async fn get_network_policy_configs(
            &self,
            _: tonic::Request<()>,
        ) -> Result<tonic::Response<NetworkPolicyAgentConfigReply>, tonic::Status> {
            let f = &self.0;
            Ok(tonic::Response::new(NetworkPolicyAgentConfigReply {
                network_policy_mode: f.mode.clone(),
                multi_nic_enabled: false,
                node_i_pv4: f.node_ipv4.clone(),
                node_i_pv6: f.node_ipv6.clone(),
                instance_id: f.instance_id.clone(),
                region: f.region.clone(),
            }))
        }
    }

    /// Binds `<dir>/ipamd.sock` (a stale one replaced) and serves the node's facts on it until the
    /// task is dropped.
    pub fn serve_config(
        dir: &Path,
        facts: NodeFacts,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static, NetpolError> {
        let path = dir.join(IPAMD_SOCKET);
        let err = |source| NetpolError::Socket { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(err)?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = Server::builder().add_service(ConfigServerBackendServer::new(ConfigServer(facts)));
        Ok(async move {
            if let Err(e) = server.serve_with_incoming(incoming).await {
                log::error!("serving {IPAMD_SOCKET}: {e}");
            }
        })
    }

    /// A client on `<dir>/npa.sock`, connected within [`DIAL_TIMEOUT`].
    async fn dial(dir: &Path) -> Result<(NpBackendClient<tonic::transport::Channel>, PathBuf), NetpolError> {
        let path = dir.join(NPA_SOCKET);
        let socket = path.clone();
        // The URI is not used: every connection is the unix socket.
        let endpoint = Endpoint::from_static("http://npa.invalid").connect_timeout(DIAL_TIMEOUT);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| NetpolError::Dial { path: path.clone(), source })?;
        Ok((NpBackendClient::new(channel), path))
    }

    /// `EnforceNpToPod` for a pod just plumbed.
    pub async fn enforce(
        dir: &Path,
        namespace: &str,
        name: &str,
        mode: &str,
        interfaces: i32,
    ) -> Result<(), NetpolError> {
        let (mut client, path) = dial(dir).await?;
        let call = "EnforceNpToPod";
        let request = EnforceNpRequest {
            k8s_pod_name: name.to_owned(),
            k8s_pod_namespace: namespace.to_owned(),
            network_policy_mode: mode.to_owned(),
            interface_count: interfaces,
        };
        let reply = client.enforce_np_to_pod(request).await.map(|r| r.into_inner().success);
        settled(path, call, reply)
    }

    /// `DeletePodNp` for a pod going away.
    pub async fn delete(dir: &Path, namespace: &str, name: &str) -> Result<(), NetpolError> {
        let (mut client, path) = dial(dir).await?;
        let call = "DeletePodNp";
        let request =
            DeleteNpRequest { k8s_pod_name: name.to_owned(), k8s_pod_namespace: namespace.to_owned() };
        let reply = client.delete_pod_np(request).await.map(|r| r.into_inner().success);
        settled(path, call, reply)
    }

    /// A call's outcome: an RPC error, or the agent's `Success`.
    fn settled(
        path: PathBuf,
        call: &'static str,
        reply: Result<bool, tonic::Status>,
    ) -> Result<(), NetpolError> {
        match reply {
            Ok(true) => Ok(()),
            Ok(false) => Err(NetpolError::Refused { path, call }),
            Err(source) => Err(NetpolError::Call { path, call, source }),
        }
    }
}
