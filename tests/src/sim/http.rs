//! The simulator's HTTP/1.1 plumbing (hyper, keep-alive): every endpoint is a plain function
//! from a collected request to a response.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::{
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::mpsc};

/// A request with its body read.
#[derive(Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

pub type Body = BoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

pub fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    with_body(status, content_type, Full::new(body.into()).boxed())
}

/// A response whose body is every chunk sent on the returned channel, until it is dropped
/// (Kubernetes watches).
pub fn streaming(status: StatusCode, content_type: &str) -> (mpsc::Sender<Bytes>, Resp) {
    let (tx, rx) = mpsc::channel(64);
    (tx, with_body(status, content_type, ChannelBody(rx).boxed()))
}

fn with_body(status: StatusCode, content_type: &str, body: Body) -> Resp {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Binds 127.0.0.1 on a free port and serves `handler` there until the runtime stops.
pub async fn start<F, Fut>(handler: F) -> std::io::Result<SocketAddr>
where
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, handler));
    Ok(addr)
}

pub async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(collect(req).await).await) }
            });
            let _ =
                http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn collect(req: Request<Incoming>) -> Req {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_owned())))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Req { method, path, query, headers, body }
}
