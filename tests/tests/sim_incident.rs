//! The control-plane half of the upstream incident (#2792), replayed against the simulated
//! Resource Controller through kube-rs and aws-sdk-ec2 only: when ipamd signals
//! SecurityGroupsForPods before CustomNetworking (v1.16.0–v1.16.3) the trunk ENI is built with the
//! node's primary subnet and security groups, and never fixed; in the corrected order (v1.16.4) it
//! gets the ENIConfig's. Also the Resource Controller's other duties: CNINode per node, legacy
//! labels, branch ENIs and the `vpc.amazonaws.com/pod-eni` annotation.

#[path = "common/clients.rs"]
mod clients;

use std::time::Duration;

use aws_sdk_ec2::{config::retry::RetryConfig, types::Filter, types::NetworkInterface, Client as Ec2};
use eniguard_tests::sim::scenario::{Scenario, Sim};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    config::Kubeconfig,
    Api, Client,
};
use serde_json::{json, Value};

async fn kube_client(sim: &Sim) -> Client {
    let kubeconfig: Kubeconfig = serde_yaml::from_str(&sim.kubeconfig()).unwrap();
    clients::kube_client(kubeconfig).await
}

fn cninodes(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("vpcresources.k8s.aws", "v1alpha1", "CNINode"),
        "cninodes",
    );
    Api::all_with(client.clone(), &ar)
}

/// Polls until `f` returns Some (the controller works asynchronously), for at most 5 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    for _ in 0..250 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn enis(ec2: &Ec2, instance: &str, interface_type: &str) -> Vec<NetworkInterface> {
    let filter = |n: &str, v: &str| Filter::builder().name(n).values(v).build();
    ec2.describe_network_interfaces()
        .filters(filter("attachment.instance-id", instance))
        .filters(filter("interface-type", interface_type))
        .send()
        .await
        .unwrap()
        .network_interfaces
        .unwrap_or_default()
}

async fn trunk(ec2: &Ec2, instance: &str) -> NetworkInterface {
    eventually("the trunk ENI", || async { enis(ec2, instance, "trunk").await.into_iter().next() }).await
}

fn groups(eni: &NetworkInterface) -> Vec<String> {
    eni.groups().iter().filter_map(|g| g.group_id().map(str::to_owned)).collect()
}

/// Adds one CNINode feature with a merge patch, as ipamd's AddFeatureToCNINode does.
async fn add_feature(client: &Client, node: &str, name: &str, value: Option<&str>) {
    let api = cninodes(client);
    let current = eventually("the CNINode", || async { api.get(node).await.ok() }).await;
    let mut features = current.data["spec"]["features"].as_array().cloned().unwrap_or_default();
    let mut feature = json!({"name": name});
    if let Some(v) = value {
        feature["value"] = json!(v);
    }
    features.push(feature);
    let patch = json!({"metadata": {"resourceVersion": current.metadata.resource_version},
                       "spec": {"features": features}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
}

struct Env {
    sim: Sim,
    kube: Client,
    ec2: Ec2,
    node: String,
    instance: String,
}

async fn env() -> Env {
    let sim = Sim::start(&Scenario::default_scenario()).await.unwrap();
    let kube = kube_client(&sim).await;
    let ec2 = clients::ec2_client(&sim.ec2_url, RetryConfig::disabled());
    let (node, instance) = (sim.nodes[0].name.clone(), sim.nodes[0].instance_id.clone());
    Env { sim, kube, ec2, node, instance }
}

#[tokio::test]
async fn sgp_before_custom_networking_builds_the_trunk_in_the_node_subnet() {
    let e = env().await;
    add_feature(&e.kube, &e.node, "SecurityGroupsForPods", None).await;
    add_feature(&e.kube, &e.node, "CustomNetworking", Some("us-west-2a")).await;
    let trunk = trunk(&e.ec2, &e.instance).await;
    assert_eq!(trunk.subnet_id(), Some(e.sim.subnets["node-a"].as_str()), "the bug: node subnet");
    assert_eq!(groups(&trunk), [e.sim.security_groups["eks-node"].clone()], "the bug: node SGs");

    // The controller never fixes it, whatever ipamd says later.
    add_feature(&e.kube, &e.node, "Unrelated", None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = enis(&e.ec2, &e.instance, "trunk").await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].subnet_id(), trunk.subnet_id());
    assert_eq!(again[0].network_interface_id(), trunk.network_interface_id());
}

#[tokio::test]
async fn custom_networking_first_builds_the_trunk_from_the_eniconfig() {
    let e = env().await;
    add_feature(&e.kube, &e.node, "CustomNetworking", Some("us-west-2a")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(enis(&e.ec2, &e.instance, "trunk").await.is_empty(), "no trunk before SecurityGroupsForPods");
    add_feature(&e.kube, &e.node, "SecurityGroupsForPods", None).await;
    let trunk = trunk(&e.ec2, &e.instance).await;
    assert_eq!(trunk.subnet_id(), Some(e.sim.subnets["pods-a"].as_str()));
    assert_eq!(groups(&trunk), [e.sim.security_groups["eks-pods"].clone()]);
    assert_eq!(trunk.description(), Some("aws-k8s-trunk-eni"));
    let attachment = trunk.attachment().unwrap();
    assert_eq!(attachment.device_index(), Some(2), "highest free index on an m5.large (3 ENIs)");
    assert_eq!(attachment.delete_on_termination(), Some(true));
    let tags: Vec<(String, String)> = trunk
        .tag_set()
        .iter()
        .map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned()))
        .collect();
    assert!(tags.contains(&("node.k8s.amazonaws.com/instance_id".into(), e.instance.clone())), "{tags:?}");
}

#[tokio::test]
async fn eniconfig_without_groups_gives_the_trunk_the_primary_enis_groups() {
    let e = env().await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("crd.k8s.amazonaws.com", "v1alpha1", "ENIConfig"),
        "eniconfigs",
    );
    let eniconfigs: Api<DynamicObject> = Api::all_with(e.kube.clone(), &ar);
    let mut ec = DynamicObject::new("bare", &ar);
    ec.data = json!({"spec": {"subnet": e.sim.subnets["pods-a"]}});
    eniconfigs.create(&PostParams::default(), &ec).await.unwrap();
    add_feature(&e.kube, &e.node, "CustomNetworking", Some("bare")).await;
    add_feature(&e.kube, &e.node, "SecurityGroupsForPods", None).await;
    let trunk = trunk(&e.ec2, &e.instance).await;
    assert_eq!(trunk.subnet_id(), Some(e.sim.subnets["pods-a"].as_str()));
    assert_eq!(groups(&trunk), [e.sim.security_groups["eks-node"].clone()]);
}

#[tokio::test]
async fn legacy_labels_in_the_right_order_and_the_trunk_label_flips_to_true() {
    let e = env().await;
    let nodes: Api<Node> = Api::all(e.kube.clone());
    let label = |k: &str, v: &str| Patch::Merge(json!({"metadata": {"labels": {k: v}}}));
    nodes
        .patch(&e.node, &PatchParams::default(), &label("vpc.amazonaws.com/eniConfig", "us-west-2a"))
        .await
        .unwrap();
    nodes
        .patch(&e.node, &PatchParams::default(), &label("vpc.amazonaws.com/has-trunk-attached", "false"))
        .await
        .unwrap();
    let trunk = trunk(&e.ec2, &e.instance).await;
    assert_eq!(trunk.subnet_id(), Some(e.sim.subnets["pods-a"].as_str()));
    eventually("has-trunk-attached=true", || async {
        let n = nodes.get(&e.node).await.unwrap();
        (n.metadata.labels?.get("vpc.amazonaws.com/has-trunk-attached")? == "true").then_some(())
    })
    .await;
}

fn pod(name: &str, node: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn pods_matching_a_policy_get_branch_enis_and_the_pod_eni_annotation() {
    let e = env().await;
    add_feature(&e.kube, &e.node, "CustomNetworking", Some("us-west-2a")).await;
    add_feature(&e.kube, &e.node, "SecurityGroupsForPods", None).await;
    let trunk = trunk(&e.ec2, &e.instance).await;
    let payments_sg = e.sim.with_ec2(|s| s.ec2.add_security_group("payments"));
    // The pod subnet is dual-stack: branches get an IPv6 address too, which the annotation names.
    let pods_v6: std::net::Ipv6Addr = "2600:1f14:abc:de10::".parse().unwrap();
    e.sim.with_ec2(|s| s.ec2.set_subnet_ipv6(&e.sim.subnets["pods-a"], pods_v6)).unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("vpcresources.k8s.aws", "v1beta1", "SecurityGroupPolicy"),
        "securitygrouppolicies",
    );
    let sgps: Api<DynamicObject> = Api::namespaced_with(e.kube.clone(), "shop", &ar);
    let mut policy = DynamicObject::new("payments", &ar);
    policy.data = json!({"spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["payments"]}]},
                                  "securityGroups": {"groupIds": [payments_sg]}}});
    sgps.create(&PostParams::default(), &policy).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(e.kube.clone(), "shop");
    let plain = pods.create(&PostParams::default(), &pod("web", &e.node, "web")).await.unwrap();
    assert!(plain.spec.unwrap().containers[0].resources.is_none(), "not selected: no pod-eni resource");
    let created = pods.create(&PostParams::default(), &pod("pay-1", &e.node, "payments")).await.unwrap();
    let limits = created.spec.unwrap().containers[0].resources.clone().unwrap().limits.unwrap();
    assert_eq!(limits["vpc.amazonaws.com/pod-eni"].0, "1", "the webhook asks for a branch ENI");
    pods.create(&PostParams::default(), &pod("pay-2", &e.node, "payments")).await.unwrap();

    let annotation = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.unwrap();
            let a = p.metadata.annotations?.get("vpc.amazonaws.com/pod-eni")?.clone();
            Some(serde_json::from_str::<Value>(&a).unwrap())
        }
    };
    let first = eventually("pay-1's annotation", || annotation("pay-1")).await;
    let second = eventually("pay-2's annotation", || annotation("pay-2")).await;
    let entry = first.as_array().expect("a JSON array")[0].clone();
    for key in ["eniId", "ifAddress", "privateIp", "vlanId", "subnetCidr"] {
        assert!(entry.get(key).is_some(), "{key} missing from {entry}");
    }
    assert_eq!((entry["vlanId"].as_u64(), second[0]["vlanId"].as_u64()), (Some(1), Some(2)));
    assert_eq!(entry["subnetCidr"], "100.64.0.0/19", "branches use the ENIConfig subnet");
    assert_eq!(entry["subnetV6Cidr"], "2600:1f14:abc:de10::/64");
    assert!(annotation("web").await.is_none());

    let eni_id = entry["eniId"].as_str().unwrap().to_owned();
    let branch = e.ec2.describe_network_interfaces().network_interface_ids(&eni_id).send().await.unwrap();
    let branch = &branch.network_interfaces()[0];
    assert_eq!(branch.interface_type().map(|t| t.as_str()), Some("branch"));
    assert_eq!(groups(branch), [payments_sg]);
    assert_eq!(branch.mac_address(), entry["ifAddress"].as_str());
    assert_eq!(branch.private_ip_address(), entry["privateIp"].as_str());
    let branch_v6: Vec<&str> = branch.ipv6_addresses().iter().filter_map(|a| a.ipv6_address()).collect();
    assert_eq!(branch_v6, [entry["ipv6Addr"].as_str().unwrap()], "{entry}");
    let trunk_tag = branch.tag_set().iter().find(|t| t.key() == Some("vpcresources.k8s.aws/trunk-eni-id"));
    assert_eq!(trunk_tag.and_then(|t| t.value()), trunk.network_interface_id());

    // Deleting the pod starts its grace period; the branch goes once the kubelet's final
    // delete (grace period 0) removes the pod.
    pods.delete("pay-1", &DeleteParams::default()).await.unwrap();
    pods.delete("pay-1", &DeleteParams::default().grace_period(0)).await.unwrap();
    eventually("the branch ENI deleted", || async {
        let r = e.ec2.describe_network_interfaces().network_interface_ids(&eni_id).send().await;
        r.is_err().then_some(())
    })
    .await;
}

/// eniguard's own decision (`node::signals::next`) and CNINode patch (`kube::cninode`), driven the
/// way the agent's startup will drive them — read the CNINode, take the step, patch, read back —
/// against the simulated Resource Controller: the trunk gets the ENIConfig's subnet and groups,
/// and the API server's write order shows CustomNetworking before SecurityGroupsForPods.
#[tokio::test]
async fn eniguards_signal_order_builds_the_trunk_from_the_eniconfig() {
    use eniguard::{
        kube::{cninode, eniconfig},
        node::signals::{next, NodeFacts, Step},
    };
    let e = env().await;
    let nodes: Api<Node> = Api::all(e.kube.clone());
    let me = nodes.get(&e.node).await.unwrap();
    let labels = me.metadata.labels.clone().unwrap_or_default().into_iter().collect();
    let annotations = me.metadata.annotations.clone().unwrap_or_default().into_iter().collect();
    let zone_key = "topology.kubernetes.io/zone";
    let name = eniconfig::resolve(&labels, &annotations, zone_key, eniguard::config::DEFAULT_ENI_CONFIG_KEY);
    assert_eq!(name.name, "us-west-2a");
    let facts = NodeFacts {
        custom_networking: true,
        pod_eni: true,
        eni_config: name.name,
        instance_type: "m5.large".into(),
        max_enis: 3,
        attached_enis: 1,
        trunking_compatible: true,
    };
    let api = cninodes(&e.kube);
    let mut order = Vec::new();
    for _ in 0..5 {
        let current = eventually("the CNINode", || async { api.get(&e.node).await.ok() }).await;
        let recorded = cninode::features_of(&serde_json::to_value(&current).unwrap());
        let feature = match next(&facts, &recorded) {
            Step::SignalCustomNetworking(n) => cninode::Feature::new(cninode::CUSTOM_NETWORKING, Some(&n)),
            Step::SignalSecurityGroupsForPods => {
                cninode::Feature::new(cninode::SECURITY_GROUPS_FOR_PODS, None)
            }
            Step::Done => break,
            other => panic!("unexpected step {other:?}"),
        };
        let features = cninode::with_feature(&recorded, &feature).unwrap();
        let rv = current.metadata.resource_version.clone().unwrap();
        let patched =
            api.patch(&e.node, &PatchParams::default(), &Patch::Merge(cninode::patch(&features, &rv))).await;
        patched.unwrap();
        order.push(feature.name);
    }
    assert_eq!(order, [cninode::CUSTOM_NETWORKING, cninode::SECURITY_GROUPS_FOR_PODS]);
    let trunk = trunk(&e.ec2, &e.instance).await;
    assert_eq!(trunk.subnet_id(), Some(e.sim.subnets["pods-a"].as_str()), "the ENIConfig's subnet");
    assert_eq!(groups(&trunk), [e.sim.security_groups["eks-pods"].clone()], "the ENIConfig's groups");
}
