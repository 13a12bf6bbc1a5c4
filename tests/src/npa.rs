//! A stand-in for EKS's network-policy agent (the `aws-eks-nodeagent` container): it serves
//! `NPBackend` on `<dir>/npa.sock` with the agent's generated types, records every call, and can be
//! told to refuse (`Success=false`). Also a client for what the agent serves on `ipamd.sock`.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use anyhow::{Context as _, Result};
use eniguard::netpol::{
    proto::{
        config_server_backend_client::ConfigServerBackendClient,
        np_backend_server::{NpBackend, NpBackendServer},
        DeleteNpReply, DeleteNpRequest, EnforceNpReply, EnforceNpRequest, NetworkPolicyAgentConfigReply,
    },
    IPAMD_SOCKET, NPA_SOCKET,
};
use tonic::transport::Server;

/// One call the plugin made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NpCall {
    Enforce { namespace: String, name: String, mode: String, interfaces: i32 },
    Delete { namespace: String, name: String },
}

#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<NpCall>>>,
    refuse: Arc<AtomicBool>,
}

impl Recorder {
    fn record(&self, call: NpCall) -> bool {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
        !self.refuse.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl NpBackend for Recorder {
    async fn enforce_np_to_pod(
        &self,
        r: tonic::Request<EnforceNpRequest>,
    ) -> Result<tonic::Response<EnforceNpReply>, tonic::Status> {
        let r = r.into_inner();
        let success = self.record(NpCall::Enforce {
            namespace: r.k8s_pod_namespace,
            name: r.k8s_pod_name,
            mode: r.network_policy_mode,
            interfaces: r.interface_count,
        });
        Ok(tonic::Response::new(EnforceNpReply { success }))
    }

    async fn delete_pod_np(
        &self,
        r: tonic::Request<DeleteNpRequest>,
    ) -> Result<tonic::Response<DeleteNpReply>, tonic::Status> {
        let r = r.into_inner();
        let success = self.record(NpCall::Delete { namespace: r.k8s_pod_namespace, name: r.k8s_pod_name });
        Ok(tonic::Response::new(DeleteNpReply { success }))
    }
}

/// The stand-in, serving until dropped.
pub struct StandIn {
    recorder: Recorder,
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl StandIn {
    /// Serves on `<dir>/npa.sock` on the current runtime.
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(NPA_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener =
            tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        let recorder = Recorder::default();
        let server = Server::builder().add_service(NpBackendServer::new(recorder.clone()));
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = server.serve_with_incoming(incoming).await;
        });
        Ok(Self { recorder, task, path })
    }

    pub fn calls(&self) -> Vec<NpCall> {
        self.recorder.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Answers `Success=false` from now on (or not).
    pub fn refuse(&self, refuse: bool) {
        self.recorder.refuse.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `GetNetworkPolicyConfigs` on `<dir>/ipamd.sock`, as the network-policy agent asks it.
pub async fn policy_configs(dir: &Path) -> Result<NetworkPolicyAgentConfigReply> {
    let channel = crate::grpc::unix_channel(&dir.join(IPAMD_SOCKET))?;
    Ok(ConfigServerBackendClient::new(channel).get_network_policy_configs(()).await?.into_inner())
}
