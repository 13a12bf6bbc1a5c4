//! Conformance of the simulated EC2 API, driven only through the real aws-sdk-ec2 client over
//! HTTP on loopback (no root needed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its location

#[path = "common/clients.rs"]
mod clients;

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_ec2::{
    config::retry::RetryConfig,
    error::ProvideErrorMetadata as _,
    types::{Filter, NetworkInterfaceCreationType, NetworkInterfaceType},
    Client,
};
use clients::ec2_client;
use eniguard_tests::sim::{
    ec2::Ec2,
    ec2_api::{self, Ec2Sim},
};

struct World {
    client: Client,
    endpoint: String,
    sim: ec2_api::Shared,
    subnet: String,
    tiny_subnet: String,
    node_sg: String,
    pod_sg: String,
    instance: String,
}

async fn world() -> World {
    let mut ec2 = Ec2::default();
    let subnet = ec2.add_subnet("vpc-1", "us-west-2a", (Ipv4Addr::new(10, 0, 0, 0), 20));
    let tiny_subnet = ec2.add_subnet("vpc-1", "us-west-2a", (Ipv4Addr::new(10, 0, 16, 0), 28));
    let node_sg = ec2.add_security_group("node");
    let pod_sg = ec2.add_security_group("pods");
    let instance = ec2.run_instance("m5.large", &subnet, std::slice::from_ref(&node_sg)).unwrap();
    let sim = Arc::new(Mutex::new(Ec2Sim { ec2, ..Default::default() }));
    let (endpoint, _) = ec2_api::start(sim.clone()).await.unwrap();
    let retry = RetryConfig::standard().with_max_attempts(4).with_initial_backoff(Duration::from_millis(5));
    let client = ec2_client(&endpoint, retry);
    World { client, endpoint, sim, subnet, tiny_subnet, node_sg, pod_sg, instance }
}

impl World {
    async fn create(&self, kind: Option<NetworkInterfaceCreationType>, sg: &str) -> String {
        self.client
            .create_network_interface()
            .subnet_id(&self.subnet)
            .groups(sg)
            .set_interface_type(kind)
            .description("test")
            .send()
            .await
            .unwrap()
            .network_interface
            .unwrap()
            .network_interface_id
            .unwrap()
    }

    async fn post(&self, path: &str) -> String {
        // A raw HTTP/1.0 request keeps the test free of another HTTP client.
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let method = if path.contains("calls") || path.contains("throttled") { "GET" } else { "POST" };
        s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: sim\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or(out)
    }
}

#[tokio::test]
async fn enis_keep_their_type_and_groups_and_attachments_follow_ec2_rules() {
    let w = world().await;
    let trunk = w.create(Some(NetworkInterfaceCreationType::Trunk), &w.pod_sg).await;
    let plain = w.create(None, &w.node_sg).await;
    let extra = w.create(None, &w.node_sg).await;

    let found = w
        .client
        .describe_network_interfaces()
        .filters(Filter::builder().name("interface-type").values("trunk").build())
        .send()
        .await
        .unwrap()
        .network_interfaces
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].network_interface_id.as_deref(), Some(trunk.as_str()));
    assert_eq!(found[0].interface_type, Some(NetworkInterfaceType::Trunk));
    assert_eq!(
        found[0].groups()[0].group_id.as_deref(),
        Some(w.pod_sg.as_str()),
        "a trunk reports its own groups"
    );

    let attach = |eni: String, index: i32| {
        w.client
            .attach_network_interface()
            .network_interface_id(eni)
            .instance_id(&w.instance)
            .device_index(index)
            .send()
    };
    attach(trunk.clone(), 2).await.unwrap();
    let e = attach(plain.clone(), 2).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "{e:?}");
    let e = attach(trunk.clone(), 1).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidNetworkInterface.InUse"));
    attach(plain.clone(), 1).await.unwrap();
    let e = attach(extra.clone(), 3).await.unwrap_err();
    assert_eq!(e.code(), Some("AttachmentLimitExceeded"), "m5.large has 3 ENIs");

    let e = w.client.delete_network_interface().network_interface_id(&plain).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidNetworkInterface.InUse"));
    let e = w
        .client
        .delete_network_interface()
        .network_interface_id("eni-0000000000000dead")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidNetworkInterfaceID.NotFound"));
    let attached = w
        .client
        .describe_network_interfaces()
        .filters(Filter::builder().name("attachment.instance-id").values(&w.instance).build())
        .send()
        .await
        .unwrap()
        .network_interfaces
        .unwrap();
    let mut indexes: Vec<i32> = attached.iter().filter_map(|e| e.attachment.as_ref()?.device_index).collect();
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2]);
}

#[tokio::test]
async fn addresses_prefixes_limits_and_exhaustion() {
    let w = world().await;
    let eni = w.create(None, &w.node_sg).await;
    w.client
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&w.instance)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let out = w
        .client
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(3)
        .send()
        .await
        .unwrap();
    assert_eq!(out.assigned_private_ip_addresses().len(), 3, "only the new addresses");
    let out = w
        .client
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(2)
        .send()
        .await
        .unwrap();
    let prefixes: Vec<String> =
        out.assigned_ipv4_prefixes().iter().filter_map(|p| p.ipv4_prefix.clone()).collect();
    assert_eq!(prefixes.len(), 2);
    assert!(prefixes.iter().all(|p| p.ends_with("/28")));
    // 1 + 3 + 2 = 6 of 10 on m5.large.
    let e = w
        .client
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(5)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("PrivateIpAddressLimitExceeded"));
    let described = w.client.describe_network_interfaces().network_interface_ids(&eni).send().await.unwrap();
    let d = &described.network_interfaces()[0];
    assert_eq!(d.private_ip_addresses().len(), 4);
    assert_eq!(d.ipv4_prefixes().len(), 2);
    let primary = d.private_ip_address.clone().unwrap();
    let e = w
        .client
        .unassign_private_ip_addresses()
        .network_interface_id(&eni)
        .private_ip_addresses(primary)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "the primary address cannot go");
    w.client
        .unassign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefixes(&prefixes[0])
        .send()
        .await
        .unwrap();

    let e = w
        .client
        .create_network_interface()
        .subnet_id(&w.tiny_subnet)
        .secondary_private_ip_address_count(20)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InsufficientFreeAddressesInSubnet"));
}

#[tokio::test]
async fn pagination_and_throttling_retried_by_the_sdk_and_counted() {
    let w = world().await;
    for _ in 0..7 {
        w.create(None, &w.node_sg).await;
    }
    let pages = w
        .client
        .describe_network_interfaces()
        .max_results(5)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let sizes: Vec<usize> = pages.into_iter().map(|p| p.unwrap().network_interfaces().len()).collect();
    assert_eq!(sizes, [5, 3], "8 ENIs (7 and the primary) in pages of 5");

    assert_eq!(w.post("/_sim/throttle?action=CreateNetworkInterface&count=2").await.trim(), "ok");
    w.create(None, &w.node_sg).await; // succeeds on the third attempt
    let calls = w.post("/_sim/calls").await;
    assert!(calls.contains("\"CreateNetworkInterface\":10"), "7 + 3 attempts expected: {calls}");
    let throttled_left = w.sim.lock().unwrap().faults.throttle.get("CreateNetworkInterface").copied();
    assert_eq!(throttled_left, Some(0));
}

/// The account's buckets at scale 0.1 (EC2's documented sizes and refill rates, each ×0.1),
/// through aws-sdk-ec2 without retries: CreateTags (100 / 10 → 10 / 1 per s) answers 10 calls,
/// then RequestLimitExceeded with HTTP 503, then one more per second; DescribeNetworkInterfaces
/// without a filter draws on its own smaller bucket (50 / 10 → 5 / 1 per s), with a filter on
/// the non-mutating one (100 / 20 → 10); the simulator counts calls and throttled calls.
#[tokio::test]
async fn account_buckets_drain_and_refill_at_ec2s_rates() {
    let w = world().await;
    w.sim.lock().unwrap().buckets = Some(eniguard_tests::sim::buckets::Buckets::new(0.1));
    let client = ec2_client(&w.endpoint, RetryConfig::disabled());
    let eni = w.create(None, &w.node_sg).await;
    let tag = || {
        client
            .create_tags()
            .resources(&eni)
            .tags(aws_sdk_ec2::types::Tag::builder().key("k").value("v").build())
            .send()
    };
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(tag().await.err().map(|e| {
            (e.code().unwrap_or_default().to_owned(), e.raw_response().map(|r| r.status().as_u16()))
        }));
    }
    assert!(codes[..10].iter().all(Option::is_none), "{codes:?}");
    assert_eq!(codes[10], Some(("RequestLimitExceeded".to_owned(), Some(503))), "{codes:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(tag().await.is_ok(), "refilled one token in a second");
    assert!(tag().await.is_err(), "and only one");

    let unfiltered = || client.describe_network_interfaces().send();
    let ok =
        futures::future::join_all((0..7).map(|_| unfiltered())).await.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "unfiltered DescribeNetworkInterfaces: 5 tokens");
    let filtered = || {
        client
            .describe_network_interfaces()
            .filters(Filter::builder().name("subnet-id").values(&w.subnet).build())
            .send()
    };
    let ok =
        futures::future::join_all((0..12).map(|_| filtered())).await.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "filtered: the non-mutating bucket's 10");

    let throttled: serde_json::Value = serde_json::from_str(&w.post("/_sim/throttled").await).unwrap();
    assert_eq!(throttled["CreateTags"], 3);
    assert_eq!(throttled["DescribeNetworkInterfaces"], 4);
    let calls: serde_json::Value = serde_json::from_str(&w.post("/_sim/calls").await).unwrap();
    assert_eq!(calls["CreateTags"], 14);
}

/// describeLagMs: a new ENI is not in DescribeNetworkInterfaces (by id: NotFound, as EC2 under
/// eventual consistency; by filter: absent) until the lag has passed; a new attachment shows
/// only after it too.
#[tokio::test]
async fn describe_lags_behind_create_and_attach() {
    let w = world().await;
    w.sim.lock().unwrap().ec2.timing.describe_lag = Duration::from_millis(400);
    let client = ec2_client(&w.endpoint, RetryConfig::disabled());
    let eni = w.create(None, &w.node_sg).await;
    let by_id = || client.describe_network_interfaces().network_interface_ids(&eni).send();
    let e = by_id().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidNetworkInterfaceID.NotFound"));
    let all = client.describe_network_interfaces().send().await.unwrap();
    assert!(all.network_interfaces().iter().all(|n| n.network_interface_id() != Some(eni.as_str())));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let seen = by_id().await.unwrap();
    assert_eq!(seen.network_interfaces()[0].status().map(|s| s.as_str()), Some("available"));
    client
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&w.instance)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let now = by_id().await.unwrap();
    assert!(now.network_interfaces()[0].attachment().is_none(), "the attachment lags too");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let later = by_id().await.unwrap();
    assert_eq!(later.network_interfaces()[0].attachment().and_then(|a| a.device_index()), Some(1));
}

#[tokio::test]
async fn instances_types_subnets_groups_tags_and_termination() {
    let w = world().await;
    let inst = w.client.describe_instances().instance_ids(&w.instance).send().await.unwrap();
    let i = &inst.reservations()[0].instances()[0];
    assert_eq!(i.instance_type.as_ref().map(|t| t.as_str()), Some("m5.large"));
    assert_eq!(i.network_interfaces().len(), 1);
    assert_eq!(i.network_interfaces()[0].attachment.as_ref().and_then(|a| a.device_index), Some(0));

    let types = w.client.describe_instance_types().instance_types("r7a.medium".into()).send().await.unwrap();
    let net = types.instance_types()[0].network_info.as_ref().unwrap();
    assert_eq!((net.maximum_network_interfaces, net.ipv4_addresses_per_interface), (Some(2), Some(4)));
    let e = w.client.describe_instance_types().instance_types("x9.huge".into()).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidInstanceType"));

    let free = |w: &World| {
        let c = w.client.describe_subnets().subnet_ids(&w.subnet).send();
        async move { c.await.unwrap().subnets()[0].available_ip_address_count.unwrap() }
    };
    let before = free(&w).await;
    let eni = w.create(None, &w.node_sg).await;
    w.client
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .unwrap();
    assert_eq!(free(&w).await, before - 17, "one primary address and one /28");

    let e = w
        .client
        .modify_network_interface_attribute()
        .network_interface_id(&eni)
        .groups("sg-0000000000000dead")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidGroup.NotFound"));
    w.client
        .modify_network_interface_attribute()
        .network_interface_id(&eni)
        .groups(&w.pod_sg)
        .send()
        .await
        .unwrap();

    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    w.client
        .create_tags()
        .resources(&eni)
        .tags(tag("node.k8s.amazonaws.com/instance_id", &w.instance))
        .send()
        .await
        .unwrap();
    let tagged = w
        .client
        .describe_network_interfaces()
        .filters(Filter::builder().name("tag:node.k8s.amazonaws.com/instance_id").values(&w.instance).build())
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.network_interfaces().len(), 1);
    assert_eq!(tagged.network_interfaces()[0].groups()[0].group_id.as_deref(), Some(w.pod_sg.as_str()));

    // DeleteOnTermination: the attached ENI with it set goes away with the instance, the other stays.
    let keep = w.create(None, &w.node_sg).await;
    let attach = |id: &str, index| {
        w.client
            .attach_network_interface()
            .network_interface_id(id)
            .instance_id(&w.instance)
            .device_index(index)
            .send()
    };
    let a1 = attach(&eni, 1).await.unwrap().attachment_id.unwrap();
    attach(&keep, 2).await.unwrap();
    let change = aws_sdk_ec2::types::NetworkInterfaceAttachmentChanges::builder()
        .attachment_id(a1)
        .delete_on_termination(true)
        .build();
    w.client
        .modify_network_interface_attribute()
        .network_interface_id(&eni)
        .attachment(change)
        .send()
        .await
        .unwrap();
    w.client.terminate_instances().instance_ids(&w.instance).send().await.unwrap();
    let e = w.client.describe_network_interfaces().network_interface_ids(&eni).send().await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidNetworkInterfaceID.NotFound"));
    let left = w.client.describe_network_interfaces().network_interface_ids(&keep).send().await.unwrap();
    assert_eq!(left.network_interfaces()[0].status.as_ref().map(|s| s.as_str()), Some("available"));
}

/// The agent's built-in limits table knows every type the simulator runs but one (m8g.large, left
/// out on purpose), with the same numbers (the simulator's are the Resource Controller's
/// limits.go values).
#[test]
fn the_agents_limits_table_matches_the_simulator() {
    for t in eniguard_tests::sim::ec2::INSTANCE_TYPES {
        let Some(row) = eniguard::cloud::limits::lookup(t.name) else {
            // The simulator's one type the table lacks, on purpose: the agent's
            // DescribeInstanceTypes path (agent_unknown_type_and_shrink).
            assert_eq!(t.name, "m8g.large", "{} not in the table", t.name);
            continue;
        };
        assert_eq!(
            (row.max_enis, row.ipv4_per_eni, row.trunking),
            (t.max_enis, t.ipv4_per_eni, t.trunking),
            "{}",
            t.name
        );
    }
}

/// An IPv6 VPC: the node's primary ENI has an IPv6 address from its subnet's /64 at launch, takes
/// one /80 with `Ipv6PrefixCount=1` as ipamd asks for it, and shows both in
/// DescribeNetworkInterfaces (and its `ipv6-addresses.ipv6-address` filter), DescribeSubnets and
/// IMDS; limits, unassignment and a subnet without IPv6 answer as EC2 does.
#[tokio::test]
async fn ipv6_prefixes_and_addresses_through_the_sdk_and_imds() {
    use eniguard_tests::sim::scenario::{Scenario, Sim};
    let scenario = Scenario::parse(
        r#"
vpc: {cidrs: [10.0.0.0/16], ipv6Cidrs: ["2600:1f14:abc:de00::/56"]}
subnets:
  - {name: dual, az: us-west-2a, cidr: 10.0.0.0/20, ipv6Cidr: "2600:1f14:abc:de01::/64"}
  - {name: v4only, az: us-west-2a, cidr: 10.0.16.0/20}
securityGroups: [node]
nodes:
  - {name: six, instanceType: m5.large, subnet: dual, securityGroups: [node]}
"#,
    )
    .unwrap();
    let sim = Sim::start(&scenario).await.unwrap();
    let client = ec2_client(&sim.ec2_url, RetryConfig::disabled());
    let instance = sim.nodes[0].instance_id.clone();
    let by_instance = Filter::builder().name("attachment.instance-id").values(&instance).build();
    let described = client.describe_network_interfaces().filters(by_instance.clone()).send().await.unwrap();
    let primary = &described.network_interfaces()[0];
    let eni = primary.network_interface_id.clone().unwrap();
    let node_ipv6: Vec<String> =
        primary.ipv6_addresses().iter().filter_map(|a| a.ipv6_address.clone()).collect();
    assert_eq!(node_ipv6.len(), 1, "the primary ENI's IPv6 address from launch");
    assert!(node_ipv6[0].starts_with("2600:1f14:abc:de01:"), "{node_ipv6:?}");
    assert!(primary.ipv6_prefixes().is_empty());

    let out =
        client.assign_ipv6_addresses().network_interface_id(&eni).ipv6_prefix_count(1).send().await.unwrap();
    let prefix = out.assigned_ipv6_prefixes()[0].clone();
    assert!(prefix.starts_with("2600:1f14:abc:de01:") && prefix.ends_with("/80"), "{prefix}");
    assert!(out.assigned_ipv6_addresses().is_empty(), "only what was added");
    let described = client.describe_network_interfaces().filters(by_instance).send().await.unwrap();
    let shown: Vec<String> = described.network_interfaces()[0]
        .ipv6_prefixes()
        .iter()
        .filter_map(|p| p.ipv6_prefix.clone())
        .collect();
    assert_eq!(shown, std::slice::from_ref(&prefix));
    let by_address = Filter::builder().name("ipv6-addresses.ipv6-address").values(&node_ipv6[0]).build();
    let found = client.describe_network_interfaces().filters(by_address).send().await.unwrap();
    assert_eq!(found.network_interfaces().len(), 1);
    assert_eq!(found.network_interfaces()[0].network_interface_id(), Some(eni.as_str()));

    // IMDS, as ipamd reads it in IPv6 mode.
    let imds = clients::imds_client(&sim.nodes[0].imds_url);
    let get = |path: String| {
        let imds = imds.clone();
        async move { imds.get(path).await.map(|v| v.as_ref().to_owned()) }
    };
    assert_eq!(get("/latest/meta-data/ipv6".into()).await.unwrap(), node_ipv6[0]);
    let mac = get("/latest/meta-data/mac".into()).await.unwrap();
    let field = |f: &str| get(format!("/latest/meta-data/network/interfaces/macs/{mac}/{f}"));
    assert_eq!(field("ipv6s").await.unwrap(), node_ipv6[0]);
    assert_eq!(field("ipv6-prefix").await.unwrap(), prefix);
    assert_eq!(field("subnet-ipv6-cidr-blocks").await.unwrap(), "2600:1f14:abc:de01::/64");
    assert_eq!(field("vpc-ipv6-cidr-blocks").await.unwrap(), "2600:1f14:abc:de00::/56");

    // 1 address + 1 prefix + 2 addresses of 10; 7 more would be 11.
    let out =
        client.assign_ipv6_addresses().network_interface_id(&eni).ipv6_address_count(2).send().await.unwrap();
    assert_eq!(out.assigned_ipv6_addresses().len(), 2);
    let e = client
        .assign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_address_count(7)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("PrivateIpAddressLimitExceeded"));
    let out = client
        .unassign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_prefixes(&prefix)
        .send()
        .await
        .unwrap();
    assert_eq!(out.unassigned_ipv6_prefixes(), std::slice::from_ref(&prefix));
    let e = client
        .unassign_ipv6_addresses()
        .network_interface_id(&eni)
        .ipv6_prefixes(&prefix)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"), "no longer on the ENI");

    let subnets = client.describe_subnets().subnet_ids(&sim.subnets["dual"]).send().await.unwrap();
    let blocks: Vec<String> = subnets.subnets()[0]
        .ipv6_cidr_block_association_set()
        .iter()
        .filter_map(|a| a.ipv6_cidr_block.clone())
        .collect();
    assert_eq!(blocks, ["2600:1f14:abc:de01::/64"]);
    let v4only = client
        .create_network_interface()
        .subnet_id(&sim.subnets["v4only"])
        .send()
        .await
        .unwrap()
        .network_interface
        .unwrap()
        .network_interface_id
        .unwrap();
    let e = client
        .assign_ipv6_addresses()
        .network_interface_id(&v4only)
        .ipv6_prefix_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    assert!(e.message().unwrap_or_default().contains("no IPv6 CIDR"), "{e:?}");
}
