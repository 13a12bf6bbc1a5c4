//! The VPC Resource Controller, as much of it as a node agent sees (upstream's
//! aws/amazon-vpc-resource-controller-k8s and the CNINode features ipamd writes):
//!
//! - a `CNINode` named after every Node, created when the Node appears;
//! - a node becomes *managed* when its CNINode gains the `SecurityGroupsForPods` feature or the
//!   Node carries the legacy label `vpc.amazonaws.com/has-trunk-attached` (any value). At that
//!   moment the controller creates a trunk ENI (InterfaceType trunk, description
//!   `aws-k8s-trunk-eni`, the highest free device index, DeleteOnTermination) with the
//!   custom-networking spec it knows *then*: the ENIConfig named by the legacy label
//!   `vpc.amazonaws.com/eniConfig` or the `CustomNetworking` feature (its subnet, and its security
//!   groups or the primary ENI's when it lists none), else the instance's subnet and primary-ENI
//!   groups. An existing trunk is adopted; a trunk is never changed afterwards. The legacy label is
//!   then set to `true`;
//! - the pod webhook adds `vpc.amazonaws.com/pod-eni: 1` to containers[0] limits and requests of a
//!   non-hostNetwork pod that a SecurityGroupPolicy's podSelector matches;
//! - such a pod, once scheduled on a managed node, gets a branch ENI (description
//!   `aws-k8s-branch-eni`, the policy's groups, the current custom-networking subnet or the
//!   instance's) associated with the trunk at the lowest free VLAN id in 1..=120, and the
//!   annotation `vpc.amazonaws.com/pod-eni` (a JSON array of `eniId`, `ifAddress`, `privateIp`,
//!   `vlanId`, `subnetCidr`, `associationID`, and in a subnet with an IPv6 /64 the branch's one
//!   IPv6 address as `ipv6Addr` with `subnetV6Cidr`); its branch is deleted when the pod is.
//!
//! Events are handled one at a time in resourceVersion order, each with the objects as they were
//! at that event, so that the order in which ipamd signals decides the outcome as it does upstream.
//! Simplifications: no branch-ENI cooldown (deleted at once); `serviceAccountSelector` is not
//! modelled (a policy matches through its podSelector only); a pod bound to a node before its
//! trunk exists is not revisited (the real scheduler does not place it there: the node advertises
//! `vpc.amazonaws.com/pod-eni` capacity only once the trunk exists). Errors go to stderr.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde_json::{json, Value};

use super::{
    ec2::{CreateEni, Ec2, InterfaceType},
    ec2_api::{self, Shared},
    kube_api::{Kube, CNINODES, ENICONFIGS, NODES, PODS, SECURITY_GROUP_POLICIES},
    kube_store::{Event, EventType, Key, Store},
};

pub const TRUNK_DESCRIPTION: &str = "aws-k8s-trunk-eni";
pub const BRANCH_DESCRIPTION: &str = "aws-k8s-branch-eni";
pub const POD_ENI_ANNOTATION: &str = "vpc.amazonaws.com/pod-eni";
pub const POD_ENI_RESOURCE: &str = "vpc.amazonaws.com/pod-eni";
pub const TRUNK_LABEL: &str = "vpc.amazonaws.com/has-trunk-attached";
pub const ENICONFIG_LABEL: &str = "vpc.amazonaws.com/eniConfig";
pub const MAX_VLAN_ID: u16 = 120;

#[derive(Debug, Default)]
struct NodeState {
    node: Option<Value>,
    cninode: Option<Value>,
    managed: bool,
}

/// The controller's memory; [`ResourceController::step`] feeds it the store's events.
pub struct ResourceController {
    kube: Arc<Kube>,
    ec2: Shared,
    nodes: HashMap<String, NodeState>,
    last_rv: u64,
}

/// Installs the pod webhook and runs the controller until the runtime stops.
pub fn spawn(kube: Arc<Kube>, ec2: Shared) -> tokio::task::JoinHandle<()> {
    kube.set_pod_webhook(Box::new(inject_pod_eni_resource));
    let mut rc = ResourceController { kube, ec2, nodes: HashMap::new(), last_rv: 0 };
    tokio::spawn(async move {
        let mut changed = rc.kube.subscribe();
        loop {
            changed.borrow_and_update();
            rc.step();
            if changed.changed().await.is_err() {
                return;
            }
        }
    })
}

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str)
}

fn feature<'a>(cninode: &'a Value, name: &str) -> Option<&'a str> {
    cninode.pointer("/spec/features").and_then(Value::as_array).and_then(|fs| {
        fs.iter()
            .find(|f| f["name"].as_str() == Some(name))
            .map(|f| f.get("value").and_then(Value::as_str).unwrap_or(""))
    })
}

fn instance_id(node: &Value) -> Option<String> {
    node.pointer("/spec/providerID").and_then(Value::as_str)?.rsplit('/').next().map(str::to_owned)
}

impl ResourceController {
    /// Handles every event since the last step.
    pub fn step(&mut self) {
        let events = match self.kube.read(|s| s.all_events_since(self.last_rv)) {
            Ok(e) => e,
            Err(gone) => {
                // Resync from the current state, as an informer does after 410.
                eprintln!("simulated resource controller: {}", gone.message);
                self.last_rv = self.kube.read(Store::resource_version);
                return;
            }
        };
        for e in events {
            self.last_rv = e.resource_version;
            if let Err(msg) = self.handle(&e) {
                eprintln!("simulated resource controller: {msg}");
            }
        }
    }

    fn handle(&mut self, e: &Event) -> Result<(), String> {
        let name = e.key.name.clone();
        if e.key.resource == NODES.store_name() {
            if e.kind == EventType::Deleted {
                self.nodes.remove(&name);
                return Ok(());
            }
            self.nodes.entry(name.clone()).or_default().node = Some(e.object.clone());
            let cninode = CNINODES.key(None, &name);
            if self.kube.read(|s| s.get(&cninode).is_err()) {
                let obj = json!({"metadata": {"name": name}, "spec": {"features": []}});
                self.kube.create(CNINODES, None, obj).map_err(|e| e.message)?;
            }
            self.evaluate(&name)
        } else if e.key.resource == CNINODES.store_name() && e.kind != EventType::Deleted {
            self.nodes.entry(name.clone()).or_default().cninode = Some(e.object.clone());
            self.evaluate(&name)
        } else if e.key.resource == PODS.store_name() {
            match e.kind {
                EventType::Deleted => self.release_branch(&e.object),
                _ => self.maybe_attach_branch(&e.key, &e.object),
            }
        } else {
            Ok(())
        }
    }

    /// The custom-networking spec known now: the ENIConfig name from the legacy label or the
    /// `CustomNetworking` feature.
    fn eniconfig_name(state: &NodeState) -> Option<String> {
        let from_label = state.node.as_ref().and_then(|n| label(n, ENICONFIG_LABEL));
        let from_feature = state.cninode.as_ref().and_then(|c| feature(c, "CustomNetworking"));
        from_label.or(from_feature).filter(|n| !n.is_empty()).map(str::to_owned)
    }

    fn evaluate(&mut self, name: &str) -> Result<(), String> {
        let Some(state) = self.nodes.get_mut(name) else { return Ok(()) };
        let Some(node) = state.node.clone() else { return Ok(()) };
        let wants_trunk = label(&node, TRUNK_LABEL).is_some()
            || state.cninode.as_ref().and_then(|c| feature(c, "SecurityGroupsForPods")).is_some();
        if !wants_trunk || state.managed {
            return Ok(());
        }
        state.managed = true;
        let eniconfig = Self::eniconfig_name(state);
        let instance = instance_id(&node).ok_or(format!("node {name} has no spec.providerID"))?;
        self.ensure_trunk(&instance, eniconfig.as_deref())?;
        if label(&node, TRUNK_LABEL).is_some_and(|v| v != "true") {
            let patch = json!({"metadata": {"labels": {TRUNK_LABEL: "true"}}});
            self.kube.write(|s| s.merge_patch(&NODES.key(None, name), &patch)).map_err(|e| e.message)?;
        }
        Ok(())
    }

    /// Subnet and groups for ENIs the controller creates on `instance`.
    fn network_spec(
        &self,
        ec2: &Ec2,
        instance: &str,
        eniconfig: Option<&str>,
    ) -> Result<(String, Vec<String>), String> {
        let primary = ec2.attached_to(instance).first().map(|e| (e.subnet_id.clone(), e.groups.clone()));
        let (subnet, groups) = primary.ok_or(format!("instance {instance} has no primary ENI"))?;
        let Some(name) = eniconfig else { return Ok((subnet, groups)) };
        let ec = self.kube.read(|s| s.get(&ENICONFIGS.key(None, name))).map_err(|e| e.message)?;
        let ec_subnet = ec.pointer("/spec/subnet").and_then(Value::as_str).unwrap_or(&subnet).to_owned();
        let ec_groups: Vec<String> = ec
            .pointer("/spec/securityGroups")
            .and_then(Value::as_array)
            .map(|gs| gs.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok((ec_subnet, if ec_groups.is_empty() { groups } else { ec_groups }))
    }

    fn ensure_trunk(&self, instance: &str, eniconfig: Option<&str>) -> Result<(), String> {
        let mut sim = ec2_api::lock(&self.ec2);
        let ec2 = &mut sim.ec2;
        if trunk_of(ec2, instance).is_some() {
            return Ok(());
        }
        let itype =
            ec2.instances.get(instance).map(|i| i.instance_type).ok_or(format!("no instance {instance}"))?;
        if !itype.trunking {
            return Err(format!("{} does not support trunking", itype.name));
        }
        let used: Vec<u32> = ec2
            .attached_to(instance)
            .iter()
            .filter_map(|e| e.attachment.as_ref().map(|a| a.device_index))
            .collect();
        let index = (0..itype.max_enis)
            .rev()
            .find(|i| !used.contains(i))
            .ok_or(format!("no free ENI slot on {instance}"))?;
        let (subnet_id, groups) = self.network_spec(ec2, instance, eniconfig)?;
        let tags = BTreeMap::from([
            ("node.k8s.amazonaws.com/instance_id".to_owned(), instance.to_owned()),
            ("eks:eni:owner".to_owned(), "eks-vpc-resource-controller".to_owned()),
        ]);
        let req = CreateEni {
            subnet_id,
            groups,
            interface_type: Some("trunk".into()),
            description: TRUNK_DESCRIPTION.into(),
            tags,
            ..Default::default()
        };
        let eni = ec2.create_network_interface(req).map_err(|e| e.to_string())?;
        ec2.attach(&eni, instance, index).map_err(|e| e.to_string())?;
        ec2.set_delete_on_termination(&eni, true).map_err(|e| e.to_string())?;
        // The agent waits for the trunk's NIC itself.
        let _ = sim.changed();
        Ok(())
    }

    fn maybe_attach_branch(&mut self, key: &Key, pod: &Value) -> Result<(), String> {
        if pod_eni_annotation(pod).is_some() || !wants_branch(pod) {
            return Ok(());
        }
        let Some(node_name) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else { return Ok(()) };
        let Some(state) = self.nodes.get(node_name).filter(|s| s.managed) else { return Ok(()) };
        let eniconfig = Self::eniconfig_name(state);
        let instance =
            state.node.as_ref().and_then(instance_id).ok_or(format!("node {node_name} has no providerID"))?;
        let groups = self.kube.read(|s| policy_groups(s, pod));
        let (details, change) = {
            let mut sim = ec2_api::lock(&self.ec2);
            let ec2 = &mut sim.ec2;
            let trunk = trunk_of(ec2, &instance).ok_or(format!("no trunk on {instance} yet"))?;
            let used: Vec<u16> = ec2.branches_of(&trunk).iter().map(|(_, v)| *v).collect();
            let vlan =
                (1..=MAX_VLAN_ID).find(|v| !used.contains(v)).ok_or(format!("no free VLAN id on {trunk}"))?;
            let (subnet_id, _) = self.network_spec(ec2, &instance, eniconfig.as_deref())?;
            let tags = BTreeMap::from([
                ("vpcresources.k8s.aws/vlan-id".to_owned(), vlan.to_string()),
                ("vpcresources.k8s.aws/trunk-eni-id".to_owned(), trunk.clone()),
                ("node.k8s.amazonaws.com/instance_id".to_owned(), instance.clone()),
            ]);
            let ipv6 = ec2.subnet(&subnet_id).map_err(|e| e.to_string())?.ipv6.is_some();
            let req = CreateEni {
                subnet_id: subnet_id.clone(),
                groups,
                interface_type: Some("branch".into()),
                description: BRANCH_DESCRIPTION.into(),
                tags,
                ipv6_count: u32::from(ipv6),
                ..Default::default()
            };
            let branch = ec2.create_network_interface(req).map_err(|e| e.to_string())?;
            let association = match ec2.associate_trunk(&branch, &trunk, vlan) {
                Ok(a) => a,
                Err(e) => {
                    let _ = ec2.delete_network_interface(&branch);
                    return Err(e.to_string());
                }
            };
            let eni = ec2.eni(&branch).map_err(|e| e.to_string())?;
            let subnet = ec2.subnet(&subnet_id).map_err(|e| e.to_string())?;
            let mut details = json!([{
                "eniId": eni.id, "ifAddress": eni.mac, "privateIp": eni.primary_ip.to_string(),
                "vlanId": vlan, "subnetCidr": format!("{}/{}", subnet.cidr.0, subnet.cidr.1),
                "associationID": association,
            }]);
            if let (Some(ip), Some(v6)) = (eni.ipv6_addresses.first(), &subnet.ipv6) {
                details[0]["ipv6Addr"] = json!(ip.to_string());
                details[0]["subnetV6Cidr"] = json!(format!("{}/64", v6.cidr));
            }
            (details, sim.changed())
        };
        // The branch's VLAN passes the VPC's source check before the pod can know its ENI.
        if let Some(change) = change {
            change.wait();
        }
        let patch = json!({"metadata": {"annotations": {POD_ENI_ANNOTATION: details.to_string()}}});
        self.kube.write(|s| s.merge_patch(key, &patch)).map(drop).map_err(|e| e.message)
    }

    fn release_branch(&mut self, pod: &Value) -> Result<(), String> {
        let Some(annotation) = pod_eni_annotation(pod) else { return Ok(()) };
        let details: Vec<Value> =
            serde_json::from_str(annotation).map_err(|e| format!("bad {POD_ENI_ANNOTATION}: {e}"))?;
        let mut sim = ec2_api::lock(&self.ec2);
        for d in details {
            if let Some(id) = d["eniId"].as_str() {
                sim.ec2.disassociate_trunk(id).map_err(|e| e.to_string())?;
                sim.ec2.delete_network_interface(id).map_err(|e| e.to_string())?;
            }
        }
        let _ = sim.changed();
        Ok(())
    }
}

/// The trunk ENI attached to `instance`, if any.
pub fn trunk_of(ec2: &Ec2, instance: &str) -> Option<String> {
    ec2.attached_to(instance).iter().find(|e| e.interface_type == InterfaceType::Trunk).map(|e| e.id.clone())
}

fn pod_eni_annotation(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/annotations").and_then(|a| a.get(POD_ENI_ANNOTATION)).and_then(Value::as_str)
}

fn wants_branch(pod: &Value) -> bool {
    pod.pointer("/spec/containers/0/resources/limits")
        .and_then(Value::as_object)
        .is_some_and(|l| l.contains_key(POD_ENI_RESOURCE))
}

/// A Kubernetes LabelSelector (matchLabels, matchExpressions) against a label map.
pub fn selector_matches(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let labels_ok = match_labels.is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let exprs = selector.get("matchExpressions").and_then(Value::as_array);
    let exprs_ok = exprs.is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => get(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// The security groups of every SecurityGroupPolicy in the pod's namespace whose podSelector
/// matches it (empty when none does).
pub fn policy_groups(store: &Store, pod: &Value) -> Vec<String> {
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
    let none = super::kube_store::Selector::default();
    let (policies, _) = store.list(&SECURITY_GROUP_POLICIES.store_name(), Some(ns), &none, &none);
    let mut groups = Vec::new();
    for p in policies {
        let Some(selector) = p.pointer("/spec/podSelector") else { continue };
        if selector_matches(selector, &labels) {
            for g in
                p.pointer("/spec/securityGroups/groupIds").and_then(Value::as_array).into_iter().flatten()
            {
                if let Some(g) = g.as_str().filter(|g| !groups.iter().any(|have| have == g)) {
                    groups.push(g.to_owned());
                }
            }
        }
    }
    groups
}

/// The mutating webhook: a pod some policy selects asks for one `vpc.amazonaws.com/pod-eni`.
pub fn inject_pod_eni_resource(store: &Store, pod: &mut Value) {
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true)
        || policy_groups(store, pod).is_empty()
    {
        return;
    }
    if let Some(resources) = pod
        .pointer_mut("/spec/containers/0")
        .and_then(Value::as_object_mut)
        .map(|c| c.entry("resources").or_insert_with(|| json!({})))
    {
        for field in ["limits", "requests"] {
            if let Some(map) = resources.as_object_mut().map(|r| r.entry(field).or_insert_with(|| json!({})))
            {
                if let Some(map) = map.as_object_mut() {
                    map.insert(POD_ENI_RESOURCE.into(), json!("1"));
                }
            }
        }
    }
}
