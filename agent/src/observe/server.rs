//! The HTTP endpoints (hyper): the agent's health and introspection on INTROSPECTION_BIND_ADDRESS
//! and metrics on METRICS_BIND_ADDRESS, the standalone guard's `--metrics-addr`; an address is
//! `host:port`, `:port` (all interfaces) or, as upstream allows, `unix:PATH`. GET only; every
//! handler is a plain function of the path.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
};

#[derive(Debug, thiserror::Error)]
#[error("listening on {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    pub source: std::io::Error,
}

/// A reply: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn ok(content_type: &'static str, body: String) -> Self {
        Self { status: 200, content_type, body }
    }
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
    pub fn json(body: &impl serde::Serialize) -> Self {
        match serde_json::to_string_pretty(body) {
            Ok(text) => Self { status: 200, content_type: "application/json", body: text + "\n" },
            Err(e) => Self::text(500, format!("encoding the answer: {e}\n")),
        }
    }
}

/// `:61678` (upstream's form, all interfaces) → `0.0.0.0:61678`.
pub fn normalize(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    }
}

/// A bound endpoint.
pub enum Listener {
    Tcp(TcpListener),
    /// `unix:PATH`.
    Unix(UnixListener, std::path::PathBuf),
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(l) => match l.local_addr() {
                Ok(a) => write!(f, "{a}"),
                Err(_) => f.write_str("a TCP socket"),
            },
            Self::Unix(_, path) => write!(f, "unix:{}", path.display()),
        }
    }
}

pub async fn bind(addr: &str) -> Result<Listener, BindError> {
    if let Some(path) = addr.strip_prefix("unix:") {
        // A socket left by a previous run would refuse the bind.
        let _ = std::fs::remove_file(path);
        return UnixListener::bind(path)
            .map(|l| Listener::Unix(l, path.into()))
            .map_err(|source| BindError { addr: addr.to_owned(), source });
    }
    let addr = normalize(addr);
    TcpListener::bind(&addr).await.map(Listener::Tcp).map_err(|source| BindError { addr, source })
}

/// Serves `handler(path)` on `listener` until the task is dropped.
pub async fn serve<F>(listener: Listener, handler: F)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    serve_requests(listener, move |path, _accept| handler(path)).await
}

/// Serves `registry` on `/metrics` and `handler(path)` on every other path. The format is
/// negotiated as Prometheus does it: OpenMetrics when the scraper's Accept header asks for it
/// (Prometheus does), the classic text format 0.0.4 otherwise (curl, `promtool check metrics`).
pub async fn serve_metrics<F>(listener: Listener, registry: prometheus_client::registry::Registry, handler: F)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    serve_requests(listener, move |path, accept| match path {
        "/metrics" if accept.contains("application/openmetrics-text") => Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: super::agent::render(&registry),
        },
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: super::agent::render_classic(&registry),
        },
        other => handler(other),
    })
    .await
}

/// Serves `handler(path, accept header)` until the task is dropped.
async fn serve_requests<F>(listener: Listener, handler: F)
where
    F: Fn(&str, &str) -> Reply + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    loop {
        match &listener {
            Listener::Tcp(l) => {
                if let Ok((stream, _)) = l.accept().await {
                    tokio::spawn(connection(stream, handler.clone()));
                }
            }
            Listener::Unix(l, _) => {
                if let Ok((stream, _)) = l.accept().await {
                    tokio::spawn(connection(stream, handler.clone()));
                }
            }
        }
    }
}

/// One connection's requests.
async fn connection<S, F>(stream: S, handler: Arc<F>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&str, &str) -> Reply + Send + Sync + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let reply = if req.method() == Method::GET {
            let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
            handler(req.uri().path(), accept)
        } else {
            Reply::text(405, "GET only\n")
        };
        let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
        *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Ok(v) = reply.content_type.parse() {
            resp.headers_mut().insert("content-type", v);
        }
        async move { Ok::<_, Infallible>(resp) }
    });
    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}
