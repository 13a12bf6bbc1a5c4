//! The `vpcsim` binary: the default scenario and an example file, used only through the
//! environment it prints (aws-sdk-ec2, aws-config's IMDS client, kube-rs), a clean stop on
//! SIGTERM, and a clear error for a bad scenario file. Without the fabric (the privileged harness
//! covers namespaces and SIGKILL recovery).

#[path = "common/clients.rs"]
mod clients;

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use aws_sdk_ec2::config::retry::RetryConfig;
use eniguard_tests::process::Daemon;
use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    config::Kubeconfig,
    Api, Client,
};

struct Running {
    daemon: Daemon,
    env: HashMap<String, String>,
    state_dir: PathBuf,
}

fn start(tag: &str, scenario: Option<&str>) -> Running {
    let state_dir = std::env::temp_dir().join(format!("vpcsim-test-{tag}-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vpcsim"));
    cmd.arg("--no-fabric").arg("--state-dir").arg(&state_dir);
    if let Some(s) = scenario {
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/").to_owned() + s);
    }
    let mut daemon = Daemon::spawn(&mut cmd).unwrap();
    daemon.wait_for_line("# vpcsim ready", Duration::from_secs(20)).unwrap();
    let text = std::fs::read_to_string(state_dir.join("env")).unwrap();
    let env = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Running { daemon, env, state_dir }
}

async fn kube(env: &HashMap<String, String>) -> Client {
    clients::kube_client(Kubeconfig::read_from(&env["KUBECONFIG"]).unwrap()).await
}

fn stop(r: Running) {
    let state_dir = r.state_dir.clone();
    let status = r.daemon.terminate().unwrap();
    assert!(status.success(), "vpcsim exit: {status}");
    assert!(
        !state_dir.join("kubeconfig").exists() && !state_dir.join("env").exists(),
        "files removed on stop"
    );
    let _ = std::fs::remove_dir(state_dir);
}

#[tokio::test]
async fn default_scenario_through_the_printed_environment() {
    let r = start("default", None);
    for var in ["AWS_ENDPOINT_URL_EC2", "AWS_EC2_METADATA_SERVICE_ENDPOINT", "KUBECONFIG", "AWS_REGION"] {
        assert!(r.env.contains_key(var), "{var} not printed: {:?}", r.env);
    }
    let ec2 = clients::ec2_client(&r.env["AWS_ENDPOINT_URL_EC2"], RetryConfig::disabled());
    let reservations = ec2.describe_instances().send().await.unwrap().reservations.unwrap_or_default();
    let instances: Vec<_> = reservations.iter().flat_map(|r| r.instances()).collect();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].instance_type().map(|t| t.as_str()), Some("m5.large"));
    let subnets = ec2.describe_subnets().send().await.unwrap().subnets.unwrap_or_default();
    let mut azs: Vec<_> = subnets.iter().filter_map(|s| s.availability_zone()).collect();
    azs.sort();
    azs.dedup();
    assert_eq!(azs, ["us-west-2a", "us-west-2b"]);
    assert_eq!(instances[0].vpc_id(), subnets[0].vpc_id(), "the instance reports its subnet's VPC");
    let groups = ec2.describe_security_groups().send().await.unwrap().security_groups.unwrap_or_default();
    assert!(groups.iter().all(|g| g.vpc_id() == subnets[0].vpc_id()), "{groups:?}");

    let id = clients::imds_client(&r.env["AWS_EC2_METADATA_SERVICE_ENDPOINT"])
        .get("/latest/meta-data/instance-id")
        .await
        .unwrap();
    assert_eq!(Some(id.as_ref()), instances[0].instance_id());

    let client = kube(&r.env).await;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(nodes.items.len(), 1);
    let provider = nodes.items[0].spec.as_ref().and_then(|s| s.provider_id.clone()).unwrap();
    assert!(provider.ends_with(instances[0].instance_id().unwrap()), "{provider}");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("crd.k8s.amazonaws.com", "v1alpha1", "ENIConfig"),
        "eniconfigs",
    );
    let eniconfigs = Api::<DynamicObject>::all_with(client, &ar).list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = eniconfigs.items.iter().filter_map(|e| e.metadata.name.clone()).collect();
    assert_eq!(names, ["us-west-2a", "us-west-2b"]);
    stop(r);
}

#[tokio::test]
async fn example_scenario_file() {
    let r = start("sgp", Some("sgp-two-nodes.yaml"));
    let client = kube(&r.env).await;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let mut names: Vec<_> = nodes.items.iter().filter_map(|n| n.metadata.name.clone()).collect();
    names.sort();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"small-a".to_owned()), "{names:?}");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("vpcresources.k8s.aws", "v1beta1", "SecurityGroupPolicy"),
        "securitygrouppolicies",
    );
    let policies = Api::<DynamicObject>::namespaced_with(client, "shop", &ar)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(policies.items.len(), 1);
    let ec2 = clients::ec2_client(&r.env["AWS_ENDPOINT_URL_EC2"], RetryConfig::disabled());
    let types: Vec<String> = ec2
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_type().map(|t| t.as_str().to_owned()))
        .collect();
    assert_eq!(types.len(), 2);
    assert!(types.contains(&"r7a.medium".to_owned()) && types.contains(&"c5.large".to_owned()), "{types:?}");
    stop(r);
}

#[test]
fn a_bad_scenario_names_the_field_and_starts_nothing() {
    let dir = std::env::temp_dir().join(format!("vpcsim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    let text = include_str!("../scenarios/default.yaml").replace("subnet: node-a\n", "subnet: node-z\n");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vpcsim"))
        .arg("--no-fabric")
        .arg("--state-dir")
        .arg(&dir)
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nodes[0].subnet: no subnet named `node-z`"), "{stderr}");
    assert!(!dir.join("env").exists(), "nothing written");
    let _ = std::fs::remove_dir_all(dir);
}
