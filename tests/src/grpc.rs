//! gRPC over a unix socket (containerd's CRI, aws-node's sockets), with tonic.

use std::path::Path;

use anyhow::Result;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel whose every connection is the unix socket at `path` (connected on first use).
pub fn unix_channel(path: &Path) -> Result<Channel> {
    let path = path.to_owned();
    // The URI is not used: every connection is the unix socket.
    Ok(Endpoint::try_from("http://unix.invalid")?.connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        },
    )))
}
