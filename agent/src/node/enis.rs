//! What the startup sequence and the loops share about ENIs: the attached ENIs as IMDS and EC2
//! describe them ([`known_enis`]), their import into the datastore through the exclusion rule
//! ([`adopt`]), their host side ([`setup_link`]), the addresses found where pods must never get
//! one ([`report_findings`]), and the tags and description an ENI this agent creates carries.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    cloud::{
        ec2::{EniInfo, InterfaceType},
        imds::{Identity, ImdsEni},
    },
    config::Config,
    ipam::{
        datastore::{Datastore, Finding},
        model::{Cidr, EniFlags, EniSpec},
    },
    kube::client::KubeError,
    net::{eni::EniLink, host::Host, netlink::NetError},
    observe::agent::{FindingLabels, Metrics},
    sync::backoff,
};

use super::{error::NodeError, owner::now, state::KnownEni, state::Shared};

/// The instance an ENI was created for (upstream's tag; the leaked-ENI sweep filters on it).
pub const TAG_INSTANCE: &str = "node.k8s.amazonaws.com/instance_id";
/// When it was created (the sweep deletes leaks older than 5 minutes).
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
/// `true`: the agent leaves the ENI alone.
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
/// The cluster (with CLUSTER_NAME).
pub const TAG_CLUSTER: &str = "cluster.k8s.amazonaws.com/name";

/// The description of an ENI this agent creates (upstream's `aws-K8S-<instance id>`).
pub fn description(instance_id: &str) -> String {
    format!("aws-K8S-{instance_id}")
}

/// EC2's timestamp format for [`TAG_CREATED_AT`].
pub fn timestamp(t: k8s_openapi::jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The tags of a new ENI: instance, creation time, cluster (with the owner tag upstream sets), and
/// ADDITIONAL_ENI_TAGS.
pub fn new_eni_tags(cfg: &Config, instance_id: &str) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::from([
        (TAG_INSTANCE.to_owned(), instance_id.to_owned()),
        (TAG_CREATED_AT.to_owned(), timestamp(k8s_openapi::jiff::Timestamp::now())),
    ]);
    if let Some(cluster) = &cfg.cluster_name {
        tags.insert(TAG_CLUSTER.into(), cluster.clone());
        tags.insert("eks:eni:owner".into(), "amazon-vpc-cni".into());
    }
    tags.extend(cfg.additional_eni_tags.clone());
    tags
}

/// The attached ENIs: IMDS's view (MAC, device, addresses) joined with EC2's (type, tags,
/// groups, attachment). An ENI EC2 did not describe is left out until the next reconcile.
pub fn known_enis(
    cfg: &Config,
    id: &Identity,
    seen: &[ImdsEni],
    described: &[EniInfo],
) -> BTreeMap<String, KnownEni> {
    seen.iter()
        .filter_map(|s| described.iter().find(|d| d.id == s.id).map(|d| (s, d)))
        .map(|(s, d)| (s.id.clone(), known_eni(cfg, id, s, d)))
        .collect()
}

pub fn known_eni(cfg: &Config, id: &Identity, s: &ImdsEni, d: &EniInfo) -> KnownEni {
    let primary = s.mac == id.mac;
    let tagged_no_manage = d.tags.get(TAG_NO_MANAGE).is_some_and(|v| v == "true");
    let untagged = !d.tags.contains_key(TAG_INSTANCE);
    KnownEni {
        id: s.id.clone(),
        mac: s.mac.clone(),
        device_number: s.device_number,
        primary_ip: s.primary_ip,
        subnet_id: s.subnet_id.clone(),
        subnet_cidr: s.subnet_cidr,
        attachment_id: d.attachment.as_ref().map(|a| a.id.clone()),
        security_groups: d.security_groups.clone(),
        interface_type: d.interface_type.clone(),
        primary,
        unmanaged: !primary && (tagged_no_manage || (untagged && !cfg.manage_untagged_eni)),
    }
}

/// What the exclusion rule looks at.
pub fn flags(eni: &KnownEni) -> EniFlags {
    EniFlags {
        primary: eni.primary,
        trunk: eni.trunk(),
        efa: eni.interface_type == InterfaceType::Efa,
        efa_only: eni.interface_type == InterfaceType::EfaOnly,
        no_manage: eni.unmanaged,
        excluded_subnet: false,
    }
}

/// Adds every ENI and its addresses (as EC2 reports them) to the datastore; addresses on
/// excluded ENIs come back as findings.
pub fn import(
    ds: &mut Datastore,
    enis: &BTreeMap<String, KnownEni>,
    described: &[EniInfo],
) -> Result<Vec<Finding>, NodeError> {
    let mut findings = Vec::new();
    for eni in enis.values() {
        let cidrs = described.iter().find(|d| d.id == eni.id).map(|d| d.cidrs.as_slice()).unwrap_or_default();
        findings.extend(add_eni(ds, eni, cidrs)?);
    }
    Ok(findings)
}

fn add_eni(ds: &mut Datastore, eni: &KnownEni, cidrs: &[Cidr]) -> Result<Vec<Finding>, NodeError> {
    let err = |source| NodeError::Datastore { eni: eni.id.clone(), source };
    let spec = EniSpec {
        id: eni.id.clone(),
        device_number: eni.device_number,
        subnet_id: eni.subnet_id.clone(),
        security_groups: eni.security_groups.clone(),
        flags: flags(eni),
    };
    ds.add_eni(spec, now()).map_err(err)?;
    let mut findings = Vec::new();
    for c in cidrs {
        if let Some(f) = ds.add_cidr(&eni.id, *c).map_err(err)? {
            findings.push(f);
        }
    }
    Ok(findings)
}

/// A new ENI into the datastore (through the exclusion rule) and the shared state.
pub async fn adopt(shared: &Shared, eni: KnownEni, cidrs: Vec<Cidr>) -> Result<(), NodeError> {
    let k = eni.clone();
    let findings = shared.owner.with(move |ipam| add_eni(&mut ipam.datastore, &k, &cidrs)).await?;
    report_findings(&shared.metrics, &findings);
    shared.put_eni(eni);
    Ok(())
}

pub fn report_findings(metrics: &Metrics, findings: &[Finding]) {
    for f in findings {
        log::warn!("{} on ENI {} ({}): never handed out", f.cidr, f.eni, f.why);
    }
    let mut per: BTreeMap<(String, String), i64> = BTreeMap::new();
    for f in findings {
        *per.entry((f.eni.clone(), f.why.to_string())).or_default() +=
            i64::from(f.cidr.size().min(i64::MAX as u32));
    }
    for ((eni, reason), n) in per {
        metrics.excluded_addresses.get_or_create(&FindingLabels { eni, reason }).set(n);
    }
}

/// Link, route table and (not for the trunk) rule of a secondary ENI, once its link exists.
pub async fn setup_link(net: &dyn Host, eni: &KnownEni, mtu: u32) -> Result<u32, NetError> {
    let link = EniLink {
        mac: eni.mac.clone(),
        device_number: eni.device_number,
        primary_ip: eni.primary_ip,
        subnet: eni.subnet_cidr,
        trunk: eni.trunk(),
    };
    // Upstream waits for the link up to six times, 10 s apart; a hot-plugged NIC shows up fast.
    let mut waits = backoff(Duration::from_millis(100), Duration::from_secs(10), Some(12));
    loop {
        if net.link_by_mac(&eni.mac).await?.is_some() {
            return net.setup_eni(&link, mtu).await;
        }
        let Some(wait) = waits.next() else { return Err(NetError::NoLink(eni.mac.clone())) };
        tokio::time::sleep(wait).await;
    }
}

/// Reads the node's ENIConfig again (its name may have moved with a label).
pub async fn refresh_eni_config(shared: &Shared) -> Result<(), KubeError> {
    let name = shared.eni_config_name();
    shared.set_eni_config(Some(shared.clients.kube.eni_config(&name.name).await?));
    Ok(())
}
