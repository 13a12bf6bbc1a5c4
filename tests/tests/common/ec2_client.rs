//! The aws-sdk-ec2 client every simulator test and benchmark uses: the simulator's endpoint, fixed
//! test credentials, plain HTTP on loopback. Included with `#[path]` (aws-sdk-ec2 is a
//! dev-dependency, so this cannot live in the library).

use aws_sdk_ec2::{
    config::{retry::RetryConfig, BehaviorVersion, Credentials, Region},
    Client,
};

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
