//! A sample upstream HTTP/1.1 server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A sample upstream: every request answers 200 with body `<name>\n` and header
/// `x-upstream: <name>`, except
/// - `/echo` and `/echo/...` (any method): a JSON object
///   `{"upstream", "method", "path", "query", "headers": {name: value}, "body"}` describing
///   the request as received (repeated headers joined with `", "`);
/// - `/status/<code>`: answers `<code>` (body `<name>\n`), for retry and fault tests.
///
/// Every request is counted ([`Upstream::requests`]). The server (its listener and all its
/// connections, keep-alive ones included) stops on [`Upstream::stop`] or drop.
#[derive(Debug)]
pub struct Upstream {
    name: Arc<str>,
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Binds `addr` (any `127.0.0.x`; port 0 picks a free port, see [`Upstream::addr`]) and
    /// serves on the current tokio runtime.
    pub async fn start(name: &str, addr: SocketAddr) -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("upstream {name}: bind {addr}"))?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = name.into();
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, name.clone(), requests.clone()));
        tracing::debug!(%name, %addr, "upstream started");
        Ok(Upstream {
            name,
            addr,
            requests,
            task,
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on (with the actual port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops serving and waits until the listener and all connections are closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections; they live in a `JoinSet` owned by this task, so aborting the task
/// closes them all.
async fn serve(listener: TcpListener, name: Arc<str>, requests: Arc<AtomicU64>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (name, requests) = (name.clone(), requests.clone());
                let service = service_fn(move |req| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    handle(name.clone(), req)
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let mut status = StatusCode::OK;
    let (content_type, body) = if path == "/echo" || path.starts_with("/echo/") {
        let mut headers = BTreeMap::<String, String>::new();
        for (key, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(key.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let mut echo = serde_json::json!({
            "upstream": &*name,
            "method": req.method().as_str(),
            "path": path,
            "query": req.uri().query(),
            "headers": headers,
        });
        let body = match req.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        echo["body"] = body.into();
        ("application/json", format!("{echo}\n"))
    } else {
        if let Some(code) = path.strip_prefix("/status/") {
            status = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
        }
        ("text/plain", format!("{name}\n"))
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream", value);
    }
    Ok(resp)
}
