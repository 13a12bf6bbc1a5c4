//! The node layer's one error type: what can stop the startup sequence or fail a step of a loop.
//! As everywhere in the agent, a variant keeps its cause as its typed `source` and shows it at the
//! end of its message, so that a logged error reads as the whole chain.

use std::path::PathBuf;

use crate::{
    cloud::{ec2::Ec2Error, imds::ImdsFailure},
    ipam::{checkpoint::CheckpointError, datastore::DatastoreError, IpamError},
    kube::client::KubeError,
    net::{netlink::NetError, snat::SnatError},
};

use super::journal::JournalError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("MY_NODE_NAME is not set: expected the node's name (the DaemonSet sets it from spec.nodeName)")]
    NoNodeName,
    #[error(transparent)]
    Imds(#[from] ImdsFailure),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Snat(#[from] SnatError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("ENI {eni}: {source}")]
    Datastore {
        eni: String,
        #[source]
        source: DatastoreError,
    },
    #[error("IMDS shows no primary ENI with MAC {0}")]
    NoPrimary(String),
    #[error("instance type {0}: EC2 reports no ENI or address limits")]
    NoLimits(String),
    #[error("custom networking without an ENIConfig: no ENI is created")]
    NoPlacement,
    #[error(
        "subnet discovery: no subnet of {vpc} in {az} may take an ENI (kubernetes.io/role/cni, cluster tags)"
    )]
    NoValidSubnet { vpc: String, az: String },
    #[error(
        "IPv6 mode: the primary ENI {0} has no /80 prefix and DISABLE_NETWORK_RESOURCE_PROVISIONING forbids assigning one"
    )]
    NoIpv6Prefix(String),
    #[error("IMDS never showed the new ENI with MAC {0}")]
    NotInImds(String),
    /// Audit mode: aws-node's checkpoint is unreadable or invalid.
    #[error("aws-node's checkpoint {}: {source}", path.display())]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
}
