//! A minimal HTTP/1.1 endpoint for metrics and introspection: GET only, one request per
//! connection, bounded request size. Enough for Prometheus and curl; nothing else is served.

use std::future::Future;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("listening on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// A response: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn ok(content_type: &'static str, body: String) -> Self {
        Self { status: 200, content_type, body }
    }
    pub fn not_found() -> Self {
        Self { status: 404, content_type: "text/plain", body: "not found\n".into() }
    }
}

pub async fn bind(addr: &str) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr: addr.to_owned(), source })
}

/// Serves `handler(path)` forever on `listener`.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response> + Send,
{
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            while len < buf.len() {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let mut parts = request.lines().next().unwrap_or_default().split_whitespace();
            let response = match (parts.next(), parts.next()) {
                (Some("GET"), Some(path)) => handler(path.to_owned()).await,
                _ => Response { status: 405, content_type: "text/plain", body: "only GET\n".into() },
            };
            let reason = match response.status {
                200 => "OK",
                404 => "Not Found",
                _ => "Method Not Allowed",
            };
            let head = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                response.status,
                response.content_type,
                response.body.len()
            );
            if stream.write_all(head.as_bytes()).await.is_ok() {
                let _ = stream.write_all(response.body.as_bytes()).await;
            }
            let _ = stream.shutdown().await;
            log::debug!("http {peer}: {}", response.status);
        });
    }
}
