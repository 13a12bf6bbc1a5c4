//! The agent's introspection endpoint (INTROSPECTION_BIND_ADDRESS): health, upstream's answers in
//! upstream's shape (`/`, `/v1/enis`, `/v1/eni-configs`, `/v1/networkutils-env-settings`,
//! `/v1/ipamd-env-settings`) and eniguard's own under `/v1/eniguard/`.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
};

use eniguard::{
    config::{Config, RandomizeSnat},
    guard::live::LiveGuard,
    ipam::{datastore::CidrView, model::exclusion},
    node::{
        enis,
        owner::now,
        state::{Board, Shared},
    },
    observe::{
        guard::guard_state,
        server::Reply,
        upstream_views::{
            AddressInfoView, CidrInfoView, EniInfosView, IpNetView, IpamKeyView, IpamMetadataView, RootView,
            UpstreamEniView, UpstreamEnisView, GO_ZERO_TIME, UPSTREAM_PATHS,
        },
        views::{
            path, EniConfigView, EniConfigsView, EniView, EnisView, PodAddressView, PodView, PodsView,
            StatusView,
        },
    },
};
use serde_json::json;

/// Upstream's main routing table id.
const MAIN_TABLE: u32 = 254;

pub fn handler(
    board: Arc<Board>,
    shared: Arc<OnceLock<Arc<Shared>>>,
    guard: Option<Arc<LiveGuard>>,
    cfg: Config,
) -> impl Fn(&str) -> Reply + Send + Sync + 'static {
    move |p| {
        let status = board.get();
        let starting = || Reply::text(503, format!("starting: {}\n", status.step));
        match p {
            "/healthz" => Reply::text(200, "ok\n"),
            "/readyz" if status.ready => Reply::text(200, "ready\n"),
            "/readyz" => Reply::text(
                503,
                format!(
                    "not ready: {}{}\n",
                    status.step,
                    status.problem.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
                ),
            ),
            // Upstream's, in its shape.
            "/v1/enis" => Reply::json(&shared.get().map(|s| upstream_enis(s)).unwrap_or_default()),
            // The name of the node's ENIConfig, as upstream's GetNodeSpecificENIConfigName.
            "/v1/eni-configs" => match shared.get() {
                Some(s) => Reply::json(&s.eni_config_name().name),
                None => Reply::text(404, "Not Found\n"),
            },
            "/v1/networkutils-env-settings" => Reply::json(&networkutils_env(&cfg)),
            "/v1/ipamd-env-settings" => Reply::json(&ipamd_env(&cfg)),
            // eniguard's.
            path::STATUS => Reply::json(&StatusView {
                mode: None,
                step: status.step.clone(),
                ready: status.ready,
                refused: status.refused.clone(),
                problem: status.problem.clone(),
            }),
            path::ENIS => shared.get().map_or_else(starting, |s| Reply::json(&enis(s))),
            path::PODS => shared.get().map_or_else(starting, |s| Reply::json(&pods(s, guard.as_deref()))),
            path::ENI_CONFIGS => shared.get().map_or_else(starting, |s| Reply::json(&eni_configs(s))),
            path::ENV_SETTINGS => Reply::json(&cfg.entries().into_iter().collect::<BTreeMap<&str, String>>()),
            path::EVENTS => Reply::json(&json!(guard.as_ref().map(|g| g.recent()).unwrap_or_default())),
            path::GUARD => Reply::json(&guard_state(guard.as_deref())),
            // Upstream's default handler answers every other path with the list.
            _ => Reply::json(&RootView {
                available_commands: UPSTREAM_PATHS
                    .iter()
                    .chain(&path::AGENT)
                    .map(|p| (*p).to_owned())
                    .collect(),
            }),
        }
    }
}

/// Upstream's `/v1/networkutils-env-settings` (networkutils.GetConfigForDebug), typed as there.
fn networkutils_env(cfg: &Config) -> serde_json::Value {
    let cidrs = |c: &[eniguard::ipam::model::Cidr]| c.iter().map(ToString::to_string).collect::<Vec<_>>();
    json!({
        "AWS_VPC_K8S_CNI_CONNMARK": cfg.connmark,
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": cidrs(&cfg.exclude_snat_cidrs),
        "AWS_VPC_K8S_CNI_EXTERNALSNAT": cfg.external_snat,
        "AWS_EXTERNAL_SERVICE_CIDRS": cidrs(&cfg.external_service_cidrs),
        "AWS_VPC_ENI_MTU": cfg.eni_mtu,
        "AWS_VPC_K8S_CNI_VETHPREFIX": cfg.veth_prefix,
        "AWS_VPC_CNI_NODE_PORT_SUPPORT": cfg.node_port_support,
        "AWS_VPC_K8S_CNI_RANDOMIZESNAT": match cfg.randomize_snat {
            RandomizeSnat::Prng => "prng",
            RandomizeSnat::HashRandom => "hashrandom",
            RandomizeSnat::None => "none",
        },
    })
}

/// Upstream's `/v1/ipamd-env-settings` (ipamd.GetConfigForDebug), typed as there.
fn ipamd_env(cfg: &Config) -> serde_json::Value {
    json!({
        "WARM_IP_TARGET": cfg.warm_ip_target,
        "WARM_ENI_TARGET": cfg.warm_eni_target,
        "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": cfg.custom_networking,
        "AWS_MANAGE_ENIS_NON_SCHEDULABLE": cfg.manage_enis_non_schedulable,
        "ENABLE_SUBNET_DISCOVERY": cfg.subnet_discovery,
    })
}

/// Nanoseconds since the epoch as RFC 3339.
fn rfc3339(nanos: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map_or_else(|_| GO_ZERO_TIME.to_owned(), |t| t.to_string())
}

/// Upstream's `/v1/enis`: network card 0, its ENIs (excluded ones flagged) with their CIDRs and
/// the addresses assigned or cooling in each; container ids and interface names blanked.
fn upstream_enis(shared: &Shared) -> UpstreamEnisView {
    let (stats, cidrs) = shared.owner.peek(|ipam| {
        let at = now();
        (ipam.datastore.stats(at), ipam.datastore.cidr_views(at))
    });
    let known = shared.enis();
    let mut infos =
        EniInfosView { total_ips: stats.total, assigned_ips: stats.assigned, enis: BTreeMap::new() };
    for e in known.values() {
        let flags = enis::flags(e);
        infos.enis.insert(
            e.id.clone(),
            UpstreamEniView {
                id: e.id.clone(),
                is_primary: e.primary,
                is_trunk: flags.trunk,
                is_efa: flags.efa || flags.efa_only,
                device_number: e.device_number,
                is_excluded_for_pod_ips: exclusion(&flags, shared.cfg.custom_networking).is_some(),
                route_table_id: if e.primary { MAIN_TABLE } else { e.device_number + 1 },
                ..Default::default()
            },
        );
    }
    for c in cidrs {
        let Some(eni) = infos.enis.get_mut(&c.eni) else { continue };
        eni.available_ipv4_cidrs.insert(c.cidr.to_string(), cidr_info(&c));
    }
    BTreeMap::from([("0".to_owned(), infos)])
}

fn cidr_info(c: &CidrView) -> CidrInfoView {
    let mut addresses = BTreeMap::new();
    for a in &c.assigned {
        addresses.insert(
            a.ip.to_string(),
            AddressInfoView {
                address: a.ip.to_string(),
                ipam_key: IpamKeyView { network_name: a.key.network_name.clone(), ..Default::default() },
                ipam_metadata: IpamMetadataView {
                    k8s_pod_namespace: a.pod.namespace.clone(),
                    k8s_pod_name: a.pod.name.clone(),
                },
                assigned_time: rfc3339(a.allocated_at),
                unassigned_time: GO_ZERO_TIME.to_owned(),
            },
        );
    }
    for (ip, at) in &c.cooling {
        addresses.entry(ip.to_string()).or_insert_with(|| AddressInfoView {
            address: ip.to_string(),
            assigned_time: GO_ZERO_TIME.to_owned(),
            unassigned_time: rfc3339(*at),
            ..Default::default()
        });
    }
    CidrInfoView {
        cidr: IpNetView::v4(c.cidr.addr, c.cidr.prefix_len),
        ip_addresses: addresses,
        is_prefix: c.cidr.is_prefix(),
        address_family: "4".into(),
    }
}
fn enis(shared: &Shared) -> EnisView {
    let enis = shared
        .enis()
        .values()
        .map(|e| EniView {
            id: e.id.clone(),
            mac: e.mac.clone(),
            device_number: e.device_number,
            primary_ip: e.primary_ip.to_string(),
            subnet_id: e.subnet_id.clone(),
            security_groups: e.security_groups.clone(),
            interface_type: e.interface_type.to_string(),
            primary: e.primary,
            unmanaged: e.unmanaged,
            cidrs: shared
                .owner
                .peek(|ipam| ipam.datastore.cidrs_of(&e.id))
                .iter()
                .map(ToString::to_string)
                .collect(),
            excluded: exclusion(&enis::flags(e), shared.cfg.custom_networking).map(|x| x.to_string()),
        })
        .collect();
    EnisView {
        instance_id: shared.id.instance_id.clone(),
        instance_type: shared.id.instance_type.clone(),
        enis,
    }
}

/// The node's pods, each with what the guard holds for it: address, ENI, VLAN, expected and
/// actual groups, verdict counts.
fn pods(shared: &Shared, guard: Option<&LiveGuard>) -> PodsView {
    let judged = guard_state(guard);
    let actual: BTreeMap<&str, &Vec<String>> =
        judged.interfaces.iter().map(|i| (i.eni.as_str(), &i.security_groups)).collect();
    let pods = shared
        .pods()
        .into_values()
        .map(|p| {
            let guard = judged
                .pods
                .iter()
                .filter(|g| g.namespace == p.namespace && g.name == p.name)
                .map(|g| PodAddressView {
                    ip: g.ip.clone(),
                    eni: g.expect_eni.clone(),
                    vlan: g.expect_vlan,
                    expected_security_groups: g.expect_security_groups.clone(),
                    actual_security_groups: actual.get(g.expect_eni.as_str()).map(|v| (*v).clone()),
                    mode: g.mode.clone(),
                    verdicts: g.verdicts.clone(),
                })
                .collect();
            PodView {
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                ip: p.ip,
                host_network: p.host_network,
                wants_branch_eni: p.wants_branch,
                pod_eni: p.pod_eni,
                guard_mode_annotation: p.guard_mode,
                guard,
            }
        })
        .collect();
    PodsView { node: shared.node().name, pods }
}

/// Upstream's `/v1/eni-configs`: the node's ENIConfig as the agent uses it.
fn eni_configs(shared: &Shared) -> EniConfigsView {
    let name = shared.eni_config_name();
    EniConfigsView {
        custom_networking: shared.cfg.custom_networking,
        name: name.name,
        source: format!("{:?}", name.source),
        eni_config: shared.eni_config().map(|c| EniConfigView {
            name: c.name,
            subnet: c.subnet,
            security_groups: c.security_groups,
        }),
    }
}
