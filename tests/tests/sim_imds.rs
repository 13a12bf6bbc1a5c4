//! The simulated IMDS: IMDSv2 tokens enforced, answers consistent with the EC2 state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its location

#[path = "common/clients.rs"]
mod clients;

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use eniguard_tests::sim::{
    ec2::{AssignRequest, CreateEni, Ec2},
    ec2_api::Ec2Sim,
    imds as sim_imds,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// (status code, body) of one raw HTTP/1.0 request.
async fn call(endpoint: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(endpoint.trim_start_matches("http://")).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: imds\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test]
async fn tokens_are_required_and_answers_follow_ec2() {
    let mut ec2 = Ec2::default();
    let subnet = ec2.add_subnet("vpc-1", "us-west-2b", (Ipv4Addr::new(10, 0, 0, 0), 20));
    ec2.vpc_cidrs.insert("vpc-1".into(), "10.0.0.0/16".into());
    let sg = ec2.add_security_group("node");
    let instance = ec2.run_instance("m5.large", &subnet, std::slice::from_ref(&sg)).unwrap();
    let sim = Arc::new(Mutex::new(Ec2Sim { ec2, ..Default::default() }));
    let (endpoint, _) = sim_imds::start(sim.clone(), &instance, Duration::ZERO).await.unwrap();

    assert_eq!(call(&endpoint, "GET", "/latest/meta-data/instance-id", &[]).await.0, 401, "IMDSv1 refused");
    assert_eq!(call(&endpoint, "PUT", "/latest/api/token", &[]).await.0, 400, "a TTL is required");
    let (status, token) =
        call(&endpoint, "PUT", "/latest/api/token", &[("X-aws-ec2-metadata-token-ttl-seconds", "60")]).await;
    assert_eq!(status, 200);
    let auth = [("X-aws-ec2-metadata-token", token.as_str())];
    let get = |path: &'static str| {
        let endpoint = endpoint.clone();
        let auth = auth.map(|(k, v)| (k, v.to_owned()));
        async move {
            let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(&endpoint, "GET", path, &headers).await
        }
    };
    assert_eq!(get("/latest/meta-data/instance-id").await, (200, instance.clone()));
    assert_eq!(get("/latest/meta-data/placement/region").await.1, "us-west-2");
    assert_eq!(get("/latest/meta-data/security-group-ids").await.1, sg);
    let mac = get("/latest/meta-data/mac").await.1;
    assert_eq!(get("/latest/meta-data/network/interfaces/macs/").await.1, format!("{mac}/"));

    // Attach a second ENI with addresses and a prefix: IMDS shows it at once.
    let (eni, eni_mac) = {
        let mut s = sim.lock().unwrap();
        let eni = s
            .ec2
            .create_network_interface(CreateEni {
                subnet_id: subnet.clone(),
                groups: vec![sg.clone()],
                ..Default::default()
            })
            .unwrap();
        s.ec2.attach(&eni, &instance, 1).unwrap();
        s.ec2.assign_private_ips(&eni, AssignRequest::Count(2)).unwrap();
        s.ec2.assign_private_ips(&eni, AssignRequest::PrefixCount(1)).unwrap();
        let e = s.ec2.eni(&eni).unwrap().clone();
        (eni, e.mac)
    };
    let macs = get("/latest/meta-data/network/interfaces/macs").await.1;
    assert_eq!(macs.lines().count(), 2);
    let field = |f: &str| format!("/latest/meta-data/network/interfaces/macs/{eni_mac}/{f}");
    let call_field = |f: &str| {
        let path = field(f);
        let endpoint = endpoint.clone();
        let token = token.clone();
        async move { call(&endpoint, "GET", &path, &[("X-aws-ec2-metadata-token", &token)]).await.1 }
    };
    assert_eq!(call_field("interface-id").await, eni);
    assert_eq!(call_field("device-number").await, "1");
    assert_eq!(call_field("local-ipv4s").await.lines().count(), 3, "primary and two secondaries");
    assert!(call_field("ipv4-prefix").await.ends_with("/28"));
    assert_eq!(call_field("vpc-ipv4-cidr-blocks").await, "10.0.0.0/16");
    assert_eq!(call_field("subnet-ipv4-cidr-block").await, "10.0.0.0/20");
}

fn node(instance_type: &str) -> (Arc<Mutex<Ec2Sim>>, String, String, String) {
    let mut ec2 = Ec2::default();
    let subnet = ec2.add_subnet("vpc-1", "us-west-2a", (Ipv4Addr::new(10, 0, 0, 0), 24));
    ec2.vpc_cidrs.insert("vpc-1".into(), "10.0.0.0/16\n100.64.0.0/16".into());
    let sg = ec2.add_security_group("node");
    let instance = ec2.run_instance(instance_type, &subnet, std::slice::from_ref(&sg)).unwrap();
    (Arc::new(Mutex::new(Ec2Sim { ec2, ..Default::default() })), instance, subnet, sg)
}

/// aws-config's own IMDS client (token handling, paths) against the simulator.
#[tokio::test]
async fn aws_config_imds_client_reads_the_node_and_sees_attachments_after_the_delay() {
    let (sim, instance, subnet, sg) = node("m5.large");
    let delay = Duration::from_millis(600);
    let (endpoint, _) = sim_imds::start(sim.clone(), &instance, delay).await.unwrap();
    let client = clients::imds_client(&endpoint);
    let get = |path: &'static str| {
        let client = client.clone();
        async move { client.get(path).await.map(|v| v.as_ref().to_owned()) }
    };
    assert_eq!(get("/latest/meta-data/instance-id").await.unwrap(), instance);
    assert_eq!(get("/latest/meta-data/instance-type").await.unwrap(), "m5.large");
    assert_eq!(get("/latest/meta-data/placement/availability-zone").await.unwrap(), "us-west-2a");
    let local = get("/latest/meta-data/local-ipv4").await.unwrap();
    let mac = get("/latest/meta-data/mac").await.unwrap();
    let primary = format!("/latest/meta-data/network/interfaces/macs/{mac}/");
    let field = |f: &str| {
        let client = client.clone();
        let path = format!("{primary}{f}");
        async move { client.get(path).await.map(|v| v.as_ref().to_owned()) }
    };
    assert_eq!(field("device-number").await.unwrap(), "0");
    assert_eq!(field("subnet-id").await.unwrap(), subnet);
    assert_eq!(field("vpc-id").await.unwrap(), "vpc-1");
    assert_eq!(field("interface-id").await.unwrap(), sim.lock().unwrap().ec2.attached_to(&instance)[0].id);
    assert_eq!(field("security-group-ids").await.unwrap(), sg);
    assert_eq!(field("local-ipv4s").await.unwrap(), local);
    assert_eq!(field("vpc-ipv4-cidr-blocks").await.unwrap(), "10.0.0.0/16\n100.64.0.0/16");
    assert!(field("ipv4-prefix").await.is_err(), "no prefixes yet: 404");
    assert!(get("/latest/meta-data/no-such-thing").await.is_err());

    let (eni_mac, attached_at) = {
        let mut s = sim.lock().unwrap();
        let req = CreateEni { subnet_id: subnet.clone(), groups: vec![sg.clone()], ..Default::default() };
        let eni = s.ec2.create_network_interface(req).unwrap();
        s.ec2.attach(&eni, &instance, 1).unwrap();
        (s.ec2.eni(&eni).unwrap().mac.clone(), std::time::Instant::now())
    };
    let macs = get("/latest/meta-data/network/interfaces/macs").await.unwrap();
    assert!(!macs.contains(&eni_mac), "IMDS lags the attachment: {macs}");
    let path = format!("/latest/meta-data/network/interfaces/macs/{eni_mac}/device-number");
    assert!(client.get(path.clone()).await.is_err(), "the new ENI's tree is absent during the delay");
    tokio::time::sleep(delay.saturating_sub(attached_at.elapsed()) + Duration::from_millis(50)).await;
    assert!(get("/latest/meta-data/network/interfaces/macs").await.unwrap().contains(&eni_mac));
    assert_eq!(client.get(path).await.unwrap().as_ref(), "1");

    // Addresses and prefixes assigned later lag too (the "assigned but not yet in IMDS" race).
    let (ip, prefix, assigned_at) = {
        let mut s = sim.lock().unwrap();
        let primary_eni = s.ec2.attached_to(&instance)[0].id.clone();
        let ip = s.ec2.assign_private_ips(&primary_eni, AssignRequest::Count(1)).unwrap()[0];
        let prefix = s.ec2.assign_private_ips(&primary_eni, AssignRequest::PrefixCount(1)).unwrap()[0];
        (ip, prefix, std::time::Instant::now())
    };
    let ips = field("local-ipv4s").await.unwrap();
    assert!(!ips.contains(&ip.to_string()), "a new address is absent during the delay: {ips}");
    assert!(field("ipv4-prefix").await.is_err(), "a new prefix is absent during the delay");
    tokio::time::sleep(delay.saturating_sub(assigned_at.elapsed()) + Duration::from_millis(50)).await;
    assert_eq!(field("local-ipv4s").await.unwrap(), format!("{local}\n{ip}"));
    assert_eq!(field("ipv4-prefix").await.unwrap(), format!("{prefix}/28"));
}
