//! What `eniguard-cni` does for each command, between the runtime (environment and stdin, see
//! [`super::spec`]), the agent (its local API, [`super::client`]) and the kernel
//! ([`crate::net::pod`]):
//!
//! - ADD: the netns must exist before anything is allocated; the agent allocates (idempotent per
//!   key, answered after the checkpoint); the pod is plumbed; a failed plumbing releases the
//!   address again and tears down what was made.
//! - DEL: the agent releases; the host side is torn down from its answer or, when it cannot
//!   answer, from `prevResult` (eniguard's or upstream aws-cni's); success in every case where
//!   nothing is left to do (upstream #2350: kubelet may never retry a DEL).
//! - CHECK: the agent still holds the address and everything ADD made is in place.
//! - GC: the agent releases what the runtime no longer lists; their host rules go too.
//!
//! Codes: "try again later" (11) while the agent is unreachable or starting, with "network is
//! not ready" in the message, which the kubelet retries after about a second instead of its
//! usual backoff, and also 11 while the pool is empty.

use std::path::PathBuf;

use hyper::Method;
use rtnetlink::Handle;
use serde_json::Value;

use super::{
    api::{
        AddReply, AddRequest, ApiError, Attachment, CheckRequest, DelReply, DelRequest, ErrorKind, GcReply,
        GcRequest, ADD_PATH, CHECK_PATH, DEL_PATH, GC_PATH, VERSION,
    },
    client::{CallError, Client},
    egress::{self, Egress},
    queue,
    result::{add_result, previous, Added},
    spec::{code, CniError, Command, Env, NetConf},
};
use crate::net::{
    names::{host_veth_name, host_veth_prefix},
    netlink::{self, NetError},
    pod::{self, BranchLink, PodNetError, PodNetwork},
};
use crate::netpol;

/// One invocation: the runtime's parameters, the configuration, the agent, the host netlink.
pub struct Plugin {
    pub env: Env,
    pub conf: NetConf,
    pub client: Client,
    pub host: Handle,
}

fn internal(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::INTERNAL, format!("{what}: {e}"))
}

fn net_error(what: &str, e: NetError) -> CniError {
    internal(what, e)
}

/// An agent failure as the runtime should see it.
fn agent_error(e: CallError) -> CniError {
    match e {
        CallError::Unreachable { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, format!("network is not ready: {e}"))
        }
        CallError::Api(a) => match a.kind {
            ErrorKind::NotReady => CniError::new(code::TRY_AGAIN_LATER, a.message),
            ErrorKind::NoAddress | ErrorKind::BranchPending => {
                CniError::new(code::TRY_AGAIN_LATER, a.message)
            }
            ErrorKind::UnknownContainer => CniError::new(code::UNKNOWN_CONTAINER, a.message),
            ErrorKind::BadRequest => CniError::new(code::INVALID_CONFIG, a.message),
            ErrorKind::VersionMismatch | ErrorKind::Refused | ErrorKind::Internal => {
                CniError::new(code::INTERNAL, a.message)
            }
        },
        CallError::BadReply { .. } => CniError::new(code::INTERNAL, e.to_string()),
    }
}

impl Plugin {
    /// The command's output (None: success without output).
    pub async fn run(&self) -> Result<Option<Value>, CniError> {
        match self.env.command {
            Command::Add => self.add().await.map(Some),
            Command::Del => self.del().await.map(|()| None),
            Command::Check => self.check().await.map(|()| None),
            Command::Gc => self.gc().await.map(|()| None),
            Command::Version | Command::Status => {
                Err(internal("eniguard-cni", "handled before the plugin runs"))
            }
        }
    }

    /// The pod's namespace and name; a Kubernetes runtime always passes both.
    fn pod(&self) -> Result<(String, String), CniError> {
        match self.env.pod() {
            (ns, name) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
            _ => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "CNI_ARGS: expected K8S_POD_NAMESPACE and K8S_POD_NAME (as containerd and CRI-O pass them)",
            )),
        }
    }

    fn network(&self, reply: &AddReply, pod_ns: &str, pod_name: &str) -> Result<PodNetwork, CniError> {
        let ip: std::net::IpAddr = reply
            .ip
            .parse()
            .map_err(|_| internal("the agent's reply", format!("ip `{}` is not an address", reply.ip)))?;
        let node_prefix = self.conf.veth_prefix.as_deref().unwrap_or(&reply.veth_prefix);
        let prefix = host_veth_prefix(reply.branch.as_ref().map(|b| b.enforcing_mode), node_prefix);
        Ok(PodNetwork {
            netns: PathBuf::from(&self.env.netns),
            if_name: self.env.if_name.clone(),
            host_veth: host_veth_name(prefix, pod_ns, pod_name),
            ip,
            table: reply.route_table,
            mtu: self.conf.mtu.unwrap_or(reply.mtu),
        })
    }

    async fn add(&self) -> Result<Value, CniError> {
        let (pod_ns, pod_name) = self.pod()?;
        // Nothing is allocated for a namespace that cannot be entered.
        if let Err(e) = std::fs::File::open(&self.env.netns) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_NETNS=`{}`: cannot open the network namespace: {e}", self.env.netns),
            ));
        }
        let request = AddRequest {
            client_version: VERSION.into(),
            network_name: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            if_name: self.env.if_name.clone(),
            netns: self.env.netns.clone(),
            pod_namespace: pod_ns.clone(),
            pod_name: pod_name.clone(),
            pod_uid: self.env.args.get("K8S_POD_UID").cloned(),
        };
        let started = std::time::Instant::now();
        let reply: AddReply =
            self.client.call(Method::POST, ADD_PATH, Some(&request)).await.map_err(agent_error)?;
        let agent_took = started.elapsed();
        let net = self.network(&reply, &pod_ns, &pod_name)?;
        log::info!(
            "ADD {}/{} {}: {} from {} (table {:?})",
            pod_ns,
            pod_name,
            self.env.container_id,
            net.ip,
            reply.eni,
            net.table
        );
        let branch = match &reply.branch {
            Some(b) => Some(BranchLink {
                vlan_id: b.vlan_id,
                mac: b.mac.clone(),
                gateway: b
                    .gateway
                    .parse()
                    .map_err(|_| internal("the agent's reply", format!("gateway `{}`", b.gateway)))?,
                parent_if_index: b.parent_if_index,
                strict: b.enforcing_mode == crate::config::EnforcingMode::Strict,
            }),
            None => None,
        };
        let plumbed = match &branch {
            Some(b) => pod::setup_branch(&self.host, &net, b).await,
            None => pod::setup(&self.host, &net).await,
        };
        match plumbed {
            Ok(plumbed) => {
                let egress = match (reply.v4_egress, reply.v6_egress) {
                    (true, _) => Some(Egress::V4),
                    (_, true) => Some(Egress::V6),
                    _ => None,
                };
                if let Some(egress) = egress {
                    let veth = egress.host_veth(&pod_ns, &pod_name);
                    if let Err(e) =
                        egress::add(&self.host, &self.env, &self.conf.name, egress, veth, net.mtu).await
                    {
                        log::warn!("ADD {pod_ns}/{pod_name}: egress failed, releasing {}: {e}", net.ip);
                        self.undo_add(&net, branch.as_ref(), &pod_ns, &pod_name).await;
                        return Err(e);
                    }
                }
                log::debug!(
                    "ADD {}: agent {:.1} ms, plumbing {:.1} ms",
                    self.env.container_id,
                    agent_took.as_secs_f64() * 1000.0,
                    (started.elapsed() - agent_took).as_secs_f64() * 1000.0
                );
                // Upstream's order: the network-policy agent hears of the pod once it is
                // plumbed; a failure fails the ADD, and the runtime's DEL cleans up.
                if let Some(mode) = &reply.network_policy_mode {
                    netpol::enforce(&self.aws_node_run_dir(), &pod_ns, &pod_name, mode, 1).await.map_err(
                        |e| {
                            log::warn!("ADD {pod_ns}/{pod_name}: {e}");
                            CniError::new(
                                code::INTERNAL,
                                format!("add: failed to set up network policy: {e}"),
                            )
                        },
                    )?;
                }
                Ok(add_result(
                    &self.conf.cni_version,
                    &Added {
                        host_veth: net.host_veth,
                        host_mac: plumbed.host_mac,
                        if_name: net.if_name,
                        pod_mac: plumbed.pod_mac,
                        netns: self.env.netns.clone(),
                        ip: net.ip,
                        mtu: net.mtu,
                        vlan: branch.as_ref().map(|b| b.vlan_id),
                    },
                ))
            }
            Err(e) => {
                log::warn!("ADD {pod_ns}/{pod_name}: plumbing failed, releasing {}: {e}", net.ip);
                self.undo_add(&net, branch.as_ref(), &pod_ns, &pod_name).await;
                let code = match e {
                    PodNetError::Netns { .. } => code::INVALID_ENVIRONMENT,
                    _ => code::INTERNAL,
                };
                Err(CniError::new(code, format!("add: failed to set up the pod network: {e}")))
            }
        }
    }

    /// A failed ADD's cleanup: the branch's VLAN, the host side, the veth, the egress and the
    /// agent's allocation (each failure logged; the runtime's DEL comes after it).
    async fn undo_add(&self, net: &PodNetwork, branch: Option<&BranchLink>, pod_ns: &str, pod_name: &str) {
        if let Some(b) = branch {
            if let Err(t) = pod::teardown_branch(&self.host, b.vlan_id, Some(&net.host_veth)).await {
                log::warn!("ADD {pod_ns}/{pod_name}: branch teardown: {t}");
            }
        }
        let undone = match pod::teardown(&self.host, net.ip, None).await {
            Ok(()) => netlink::delete_link(&self.host, &net.host_veth).await.map(|_| ()),
            Err(t) => Err(t),
        };
        if let Err(t) = undone {
            log::warn!("ADD {pod_ns}/{pod_name}: teardown: {t}");
        }
        for egress in Egress::BOTH {
            let veth = egress.host_veth(pod_ns, pod_name);
            if let Err(t) = egress::del(&self.host, &self.env, &self.conf.name, egress, Some(&veth)).await {
                log::warn!("ADD {pod_ns}/{pod_name}: egress teardown: {t}");
            }
        }
        if let Err(r) = self.release().await {
            log::warn!("ADD {pod_ns}/{pod_name}: release: {r}");
        }
    }

    fn aws_node_run_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(self.conf.aws_node_run_dir.as_deref().unwrap_or(netpol::DEFAULT_RUN_DIR))
    }

    /// Tells the network-policy agent the pod is gone, as upstream: a failed dial fails the DEL
    /// (the runtime retries it), an error or a refusal of the agent's is only logged.
    async fn delete_policy(&self) -> Result<(), CniError> {
        let (pod_ns, pod_name) = self.env.pod();
        match netpol::delete(&self.aws_node_run_dir(), &pod_ns, &pod_name).await {
            Ok(()) => Ok(()),
            Err(e @ netpol::NetpolError::Dial { .. }) => Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("del: failed to reach the network-policy agent: {e}"),
            )),
            Err(e) => {
                log::warn!("DEL {pod_ns}/{pod_name}: {e}");
                Ok(())
            }
        }
    }

    fn del_request(&self) -> DelRequest {
        let (pod_ns, pod_name) = self.env.pod();
        DelRequest {
            client_version: VERSION.into(),
            network_name: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            if_name: self.env.if_name.clone(),
            pod_namespace: Some(pod_ns).filter(|s| !s.is_empty()),
            pod_name: Some(pod_name).filter(|s| !s.is_empty()),
        }
    }

    async fn release(&self) -> Result<DelReply, CallError> {
        self.client.call(Method::POST, DEL_PATH, Some(&self.del_request())).await
    }

    /// The host end's name: prevResult's, else derived from the pod's name.
    fn host_veth(&self, prev: Option<&str>) -> Option<String> {
        prev.map(str::to_owned).or_else(|| match self.env.pod() {
            (ns, name) if !ns.is_empty() && !name.is_empty() => {
                Some(host_veth_name(self.conf.veth_prefix.as_deref().unwrap_or("eni"), &ns, &name))
            }
            _ => None,
        })
    }

    async fn del(&self) -> Result<(), CniError> {
        let prev = self.conf.prev_result.as_ref().map(previous).unwrap_or_default();
        let host_veth = self.host_veth(prev.host_veth.as_deref());
        if let Some(vlan) = prev.vlan {
            // A branch-ENI pod of upstream's: nothing of it is in the agent's pool.
            pod::teardown_branch(&self.host, vlan, host_veth.as_deref())
                .await
                .map_err(|e| net_error("del: branch-ENI teardown", e))?;
        }
        // The veth goes with the pod's network namespace, which the runtime removes right after
        // DEL, as upstream's plugin relies on: deleting it here, with the guard's TCX program on
        // it, took 32 ms p50 of every pod's stop (14.5 ms without the guard), while the
        // namespace's teardown deletes its devices in the background and in batches. When the
        // namespace is already gone or unknown, a host end still there is deleted here.
        let netns_alive = !self.env.netns.is_empty() && std::path::Path::new(&self.env.netns).exists();
        let host_veth = if netns_alive { None } else { host_veth };
        // The agent's release and the teardown of what prevResult names run side by side: the
        // first waits for the checkpoint's fsync and the guard, the second for netlink, and
        // neither needs the other (a released address cools down before reuse).
        let mut known = prev.ips.clone();
        known.sort();
        known.dedup();
        let started = std::time::Instant::now();
        let teardown_known = async {
            for ip in &known {
                pod::teardown(&self.host, *ip, host_veth.as_deref()).await?;
            }
            Ok::<_, NetError>(started.elapsed())
        };
        let release = async {
            let r = self.release().await;
            (r, started.elapsed())
        };
        let ((released, agent_took), torn) = tokio::join!(release, teardown_known);
        let mut late = None;
        let mut policy_mode = None;
        match released {
            Ok(DelReply { released: Some(ip), network_policy_mode }) => {
                log::info!("DEL {}: released {ip}", self.env.container_id);
                late = ip.parse::<std::net::IpAddr>().ok().filter(|ip| !known.contains(ip));
                policy_mode = network_policy_mode;
            }
            Ok(DelReply { released: None, network_policy_mode }) => {
                log::info!("DEL {}: the agent held nothing", self.env.container_id);
                policy_mode = network_policy_mode;
            }
            // The agent will release it when it is back (the queue).
            Err(
                e @ (CallError::Unreachable { .. }
                | CallError::Api(ApiError { kind: ErrorKind::NotReady, .. })),
            ) => {
                let dir = queue::dir_of(self.client.socket());
                let queued = queue::enqueue(&dir, &self.del_request(), crate::ipam::model::now())
                    .map_err(|q| CniError::new(code::TRY_AGAIN_LATER, format!("del: {e}; {q}")))?;
                log::warn!(
                    "DEL {}: {e}; tearing down from prevResult, release queued in {}",
                    self.env.container_id,
                    queued.display()
                );
            }
            // Another version or an internal error: the pod GC gives the address back later.
            Err(e) => log::warn!("DEL {}: {e}; tearing down from prevResult", self.env.container_id),
        }
        let torn = torn.map_err(|e| net_error("del: teardown", e))?;
        // Egress of the other family: host-local's address back (its veth goes with the namespace).
        let (pod_ns, pod_name) = self.env.pod();
        for egress in Egress::BOTH {
            let veth = (!netns_alive && !pod_name.is_empty()).then(|| egress.host_veth(&pod_ns, &pod_name));
            egress::del(&self.host, &self.env, &self.conf.name, egress, veth.as_deref()).await?;
        }
        // An address that prevResult did not name (no prevResult: the runtime's later DELs).
        if let Some(ip) = late {
            pod::teardown(&self.host, ip, host_veth.as_deref())
                .await
                .map_err(|e| net_error("del: teardown", e))?;
        }
        if policy_mode.is_some() {
            self.delete_policy().await?;
        }
        log::debug!(
            "DEL {}: agent {:.1} ms, teardown of {:?} {:.1} ms, total {:.1} ms",
            self.env.container_id,
            agent_took.as_secs_f64() * 1000.0,
            known,
            torn.as_secs_f64() * 1000.0,
            started.elapsed().as_secs_f64() * 1000.0
        );
        Ok(())
    }

    async fn check(&self) -> Result<(), CniError> {
        let (pod_ns, pod_name) = self.pod()?;
        let request = CheckRequest {
            client_version: VERSION.into(),
            network_name: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            if_name: self.env.if_name.clone(),
        };
        let reply: AddReply =
            self.client.call(Method::POST, CHECK_PATH, Some(&request)).await.map_err(agent_error)?;
        let net = self.network(&reply, &pod_ns, &pod_name)?;
        if let Some(prev) = self.conf.prev_result.as_ref().map(previous) {
            if !prev.ips.is_empty() && !prev.ips.contains(&net.ip) {
                return Err(internal(
                    "check",
                    format!(
                        "prevResult says {:?} but the agent holds {} for this container",
                        prev.ips, net.ip
                    ),
                ));
            }
        }
        pod::check(&self.host, &net).await.map_err(|e| match e {
            PodNetError::Netns { .. } => CniError::new(code::UNKNOWN_CONTAINER, format!("check: {e}")),
            e => internal("check", e),
        })
    }

    async fn gc(&self) -> Result<(), CniError> {
        let valid: Vec<Attachment> = ["cni.dev/valid-attachments", "cni.dev/attachments"]
            .iter()
            .find_map(|k| self.conf.other.get(*k))
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|e| {
                    CniError::new(
                        code::DECODE_FAILURE,
                        format!("cni.dev/valid-attachments: expected [{{containerID, ifname}}]: {e}"),
                    )
                })
            })
            .transpose()?
            .unwrap_or_default();
        let request = GcRequest {
            client_version: VERSION.into(),
            network_name: self.conf.name.clone(),
            valid_attachments: valid,
        };
        let reply: GcReply =
            self.client.call(Method::POST, GC_PATH, Some(&request)).await.map_err(agent_error)?;
        let mut failed = Vec::new();
        for ip in &reply.released {
            let Ok(ip) = ip.parse::<std::net::IpAddr>() else { continue };
            if let Err(e) = pod::teardown(&self.host, ip, None).await {
                failed.push(format!("{ip}: {e}"));
            }
        }
        log::info!("GC {}: released {:?}", self.conf.name, reply.released);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(internal("gc: host rules", failed.join("; ")))
        }
    }
}
