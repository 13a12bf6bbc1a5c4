//! The real clients every simulator test and benchmark uses, pointed at the simulator: aws-sdk-ec2
//! (fixed test credentials, plain HTTP on loopback), aws-config's IMDS client, and kube-rs from a
//! kubeconfig. Included with `#[path]` (these crates are dev-dependencies, so this cannot live in
//! the library); not every includer uses every client.

#![allow(dead_code)]

use aws_config::{imds, provider_config::ProviderConfig};
use aws_sdk_ec2::{
    config::{retry::RetryConfig, BehaviorVersion, Credentials, Region},
    Client,
};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub fn ec2_client(endpoint: &str, retry: RetryConfig) -> Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .credentials_provider(Credentials::new("AKIDSIMULATOR", "secret", None, None, "simulator"))
        .endpoint_url(endpoint)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .retry_config(retry)
        .build();
    Client::from_conf(config)
}

pub fn imds_client(endpoint: &str) -> imds::Client {
    let provider = ProviderConfig::without_region()
        .with_http_client(aws_smithy_http_client::Builder::new().build_http());
    imds::Client::builder().configure(&provider).endpoint(endpoint).expect("IMDS endpoint URL").build()
}

/// A kube-rs client from a kubeconfig, as an operator's tools would build it.
pub async fn kube_client(kubeconfig: Kubeconfig) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig accepted");
    kube::Client::try_from(config).expect("kube client")
}
