//! The kubelet's side of CRI: containerd's RuntimeService over its unix socket, with the
//! `k8s-cri` crate's types and tonic. Each call is what the kubelet sends for a pod: a sandbox
//! with Kubernetes' metadata (containerd turns it into CNI_ARGS), a container in it, an exec.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::Channel;

/// A pod as the kubelet describes it to the runtime.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// cgroupfs parent of the pod's cgroups (the harness removes it when containerd stops).
    pub cgroup_parent: String,
    /// The pod's annotations, as the kubelet passes them (e.g. `kubernetes.io/ingress-bandwidth`).
    pub annotations: HashMap<String, String>,
}

impl PodSpec {
    fn config(&self) -> PodSandboxConfig {
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), self.name.clone()),
            ("io.kubernetes.pod.namespace".to_owned(), self.namespace.clone()),
            ("io.kubernetes.pod.uid".to_owned(), self.uid.clone()),
        ]);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            labels,
            annotations: self.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// What PodSandboxStatus says of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxStatus {
    pub ready: bool,
    /// The pod's address as the runtime read it from the CNI result.
    pub ip: String,
}

/// What ExecSync returned.
#[derive(Clone, Debug)]
pub struct Exec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Clone)]
pub struct Cri {
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to `socket` (lazily: the first call dials).
    pub fn connect(socket: &Path) -> Result<Self> {
        Ok(Self { client: RuntimeServiceClient::new(crate::grpc::unix_channel(socket)?) })
    }

    /// The runtime's name and version (a readiness probe).
    pub async fn version(&self) -> Result<String> {
        let r = self.client.clone().version(VersionRequest { version: "v1".into() }).await?.into_inner();
        Ok(format!("{} {}", r.runtime_name, r.runtime_version))
    }

    /// RunPodSandbox: the runtime creates the netns and calls the CNI plugin's ADD.
    pub async fn run_pod(&self, pod: &PodSpec) -> Result<String> {
        let req = RunPodSandboxRequest { config: Some(pod.config()), runtime_handler: String::new() };
        let r = self.client.clone().run_pod_sandbox(req).await.map_err(status)?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    pub async fn status(&self, sandbox: &str) -> Result<SandboxStatus> {
        let req = PodSandboxStatusRequest { pod_sandbox_id: sandbox.into(), verbose: false };
        let r = self.client.clone().pod_sandbox_status(req).await.map_err(status)?.into_inner();
        let s = r.status.context("PodSandboxStatus without a status")?;
        Ok(SandboxStatus {
            ready: s.state == PodSandboxState::SandboxReady as i32,
            ip: s.network.map(|n| n.ip).unwrap_or_default(),
        })
    }

    /// ListPodSandbox: every sandbox's id and whether it is ready (the kubelet's view).
    pub async fn list_pods(&self) -> Result<Vec<(String, bool)>> {
        let r = self
            .client
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(status)?;
        Ok(r.into_inner()
            .items
            .into_iter()
            .map(|p| (p.id, p.state == PodSandboxState::SandboxReady as i32))
            .collect())
    }

    /// StopPodSandbox: containers killed, then the plugin's DEL (with the netns the first time).
    pub async fn stop_pod(&self, sandbox: &str) -> Result<()> {
        let req = StopPodSandboxRequest { pod_sandbox_id: sandbox.into() };
        self.client.clone().stop_pod_sandbox(req).await.map_err(status)?;
        Ok(())
    }

    /// RemovePodSandbox (the runtime calls DEL once more, without a netns).
    pub async fn remove_pod(&self, sandbox: &str) -> Result<()> {
        let req = RemovePodSandboxRequest { pod_sandbox_id: sandbox.into() };
        self.client.clone().remove_pod_sandbox(req).await.map_err(status)?;
        Ok(())
    }

    /// The kubelet's teardown: stop, then remove.
    pub async fn stop_and_remove(&self, sandbox: &str) -> Result<()> {
        self.stop_pod(sandbox).await?;
        self.remove_pod(sandbox).await
    }

    /// CreateContainer + StartContainer of `image` running `command` in the sandbox.
    pub async fn start_container(
        &self,
        sandbox: &str,
        pod: &PodSpec,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config),
            sandbox_config: Some(pod.config()),
        };
        let id = self.client.clone().create_container(req).await.map_err(status)?.into_inner().container_id;
        let start = StartContainerRequest { container_id: id.clone() };
        self.client.clone().start_container(start).await.map_err(status)?;
        Ok(id)
    }

    /// ExecSync: `cmd` in the container, waited for up to `timeout`.
    pub async fn exec(&self, container: &str, cmd: &[&str], timeout: Duration) -> Result<Exec> {
        let req = ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        };
        let r = self.client.clone().exec_sync(req).await.map_err(status)?.into_inner();
        Ok(Exec {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }
}

/// A gRPC status as an error whose text is the runtime's message (what the kubelet logs).
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
