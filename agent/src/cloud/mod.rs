//! The cloud: IMDS (aws-config's IMDSv2 client) and EC2 (aws-sdk-ec2), and the instance limits.
//! Endpoints, region and credentials come from the SDKs' standard sources
//! (`AWS_ENDPOINT_URL_EC2`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_REGION`, the default
//! credential chain), so the same code runs against AWS and against vpcsim. Every call is counted
//! by service, action and result ([`calls`]).

pub mod calls;
pub mod ec2;
pub mod imds;
pub mod limits;

use aws_sdk_ec2::config::SharedHttpClient;
use aws_smithy_http_client::{
    tls::{self, rustls_provider::CryptoMode},
    Builder,
};

/// The HTTP client both SDK clients use: rustls with ring for AWS, plain HTTP where the endpoint
/// says `http://` (a simulator on loopback).
pub fn http_client() -> SharedHttpClient {
    Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https()
}
