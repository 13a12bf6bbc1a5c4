//! The plugin's end of the local API (see [`super::api`]): one HTTP/1.1 request per call over the
//! agent's unix socket (hyper's connection-level client; hyper-util's pooled client has no
//! unix-socket connector).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{client::conn::http1, Method, Request};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use super::api::{ApiError, StatusReply, STATUS_PATH};

/// Why a call did not get an answer from the agent.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No agent on the socket (not running, or still starting).
    #[error("the eniguard agent is not answering on {}: {source}", path.display())]
    Unreachable { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    /// The agent answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the eniguard agent answered {status} with a body that is not JSON: {body}")]
    BadReply { status: u16, body: String },
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self { socket: socket.as_ref().to_owned() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn unreachable(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CallError {
        CallError::Unreachable { path: self.socket.clone(), source: e.into() }
    }

    /// One request; a JSON error body becomes [`CallError::Api`].
    pub async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, CallError> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| self.unreachable(e))?;
        let (mut sender, conn) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|e| self.unreachable(e))?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| self.unreachable(e))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "eniguard")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| self.unreachable(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| self.unreachable(e))?.to_bytes();
        let bad = || CallError::BadReply { status, body: String::from_utf8_lossy(&body).into_owned() };
        if status == 200 {
            serde_json::from_slice(&body).map_err(|_| bad())
        } else {
            Err(CallError::Api(serde_json::from_slice::<ApiError>(&body).map_err(|_| bad())?))
        }
    }

    pub async fn status(&self) -> Result<StatusReply, CallError> {
        self.call::<(), _>(Method::GET, STATUS_PATH, None).await
    }
}
