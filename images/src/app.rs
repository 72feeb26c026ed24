//! `mesh-app`, the test workload: one binary that plays any service of a bookinfo-like
//! application, chosen by its environment, and an HTTP client for `kubectl exec`.
//!
//! - `SERVICE_NAME`: `productpage`, `details`, `reviews` or `ratings`; `SERVICE_VERSION`:
//!   `v1`, `v2`, `v3` (default v1); `PORT` (9080); `POD_NAME` (else the hostname).
//! - productpage answers `GET /productpage` (and `/`) with the answers of
//!   `${DETAILS_URL}/details/0` and `${REVIEWS_URL}/reviews/0` (`http://details:9080`,
//!   `http://reviews:9080` by default) inside its own; reviews v2 and v3 call
//!   `${RATINGS_URL}/ratings/0` (`http://ratings:9080`) and show stars (v2 black, v3 red),
//!   v1 calls nobody. An upstream that fails shows as `{"error": ..., "status": N}` in
//!   its place (503 unreachable, 504 after `UPSTREAM_TIMEOUT_MS`, default 3000, or the
//!   status it answered) while the caller still answers 200, as bookinfo shows "reviews
//!   unavailable".
//! - Every answer is JSON with `service`, `version`, `pod`, `hostname` and `propagated`,
//!   the trace and user headers it received ([`PROPAGATED`]), which it passes on to every
//!   call it makes.
//! - `/health` answers 200; `/echo` (any method) describes the request as received.
//!
//! Calls are plain HTTP/1.1 to the host by its DNS name, so a sidecar's iptables rules can
//! capture them; with `UPSTREAM_PROXY=HOST:PORT` they go to that HTTP proxy instead, in
//! absolute form (`GET http://reviews:9080/reviews/0`), as to a sidecar's HTTP proxy port
//! when nothing captures traffic. SIGTERM or SIGINT stops it: no new connections, idle
//! keep-alive ones closed at once, requests in flight finished (within two seconds).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::Error;

/// The headers passed on from a request to the calls made for it, as bookinfo does.
pub const PROPAGATED: [&str; 12] = [
    "end-user",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-ot-span-context",
    "traceparent",
    "tracestate",
    "cookie",
];

/// The most of a body read (a request's for `/echo`, an upstream's answer).
const MAX_BODY: usize = 4 << 20;
/// How long a stop waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Which service this instance plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Productpage,
    Details,
    Reviews,
    Ratings,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Productpage => "productpage",
            Service::Details => "details",
            Service::Reviews => "reviews",
            Service::Ratings => "ratings",
        }
    }

    fn parse(text: &str) -> Option<Service> {
        match text {
            "productpage" => Some(Service::Productpage),
            "details" => Some(Service::Details),
            "reviews" => Some(Service::Reviews),
            "ratings" => Some(Service::Ratings),
            _ => None,
        }
    }
}

/// An instance's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: Service,
    pub version: String,
    pub pod: String,
    pub hostname: String,
    pub port: u16,
    /// Base URLs (`http://HOST:PORT`) of the services it calls.
    pub details_url: String,
    pub reviews_url: String,
    pub ratings_url: String,
    /// The limit of each call to another service.
    pub timeout: Duration,
    /// `HOST:PORT` of an HTTP proxy every call goes through (`UPSTREAM_PROXY`).
    pub upstream_proxy: Option<String>,
}

impl Config {
    /// From the process environment.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// From a lookup of environment variables (unset or empty ones take their default).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let service_name = get("SERVICE_NAME").ok_or_else(|| {
            Error::Config(
                "SERVICE_NAME is not set (productpage, details, reviews or ratings)".into(),
            )
        })?;
        let service = Service::parse(service_name.trim()).ok_or_else(|| {
            Error::Config(format!(
                "SERVICE_NAME={service_name:?} is not productpage, details, reviews or ratings"
            ))
        })?;
        let version = get("SERVICE_VERSION").unwrap_or_else(|| "v1".into());
        if !matches!(version.as_str(), "v1" | "v2" | "v3") {
            return Err(Error::Config(format!(
                "SERVICE_VERSION={version:?} is not v1, v2 or v3"
            )));
        }
        let port = match get("PORT") {
            None => 9080,
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| Error::Config(format!("PORT={text:?} is not a port number")))?,
        };
        let timeout = match get("UPSTREAM_TIMEOUT_MS") {
            None => Duration::from_millis(3000),
            Some(text) => Duration::from_millis(text.trim().parse().map_err(|_| {
                Error::Config(format!("UPSTREAM_TIMEOUT_MS={text:?} is not milliseconds"))
            })?),
        };
        let base = |name: &str, default: &str| -> Result<String, Error> {
            let url = get(name).unwrap_or_else(|| default.into());
            let url = url.trim().trim_end_matches('/').to_string();
            parse_url(&url).map_err(|e| Error::Config(format!("{name}: {e}")))?;
            Ok(url)
        };
        let hostname = hostname(&lookup);
        let upstream_proxy = match get("UPSTREAM_PROXY") {
            None => None,
            Some(text) => {
                let text = text.trim().to_string();
                let ok = text
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(Error::Config(format!(
                        "UPSTREAM_PROXY={text:?} is not HOST:PORT"
                    )));
                }
                Some(text)
            }
        };
        Ok(Config {
            service,
            version,
            pod: get("POD_NAME").unwrap_or_else(|| hostname.clone()),
            hostname,
            port,
            details_url: base("DETAILS_URL", "http://details:9080")?,
            reviews_url: base("REVIEWS_URL", "http://reviews:9080")?,
            ratings_url: base("RATINGS_URL", "http://ratings:9080")?,
            timeout,
            upstream_proxy,
        })
    }
}

/// `$HOSTNAME` (container runtimes set it), else the kernel's host name.
fn hostname(lookup: &impl Fn(&str) -> Option<String>) -> String {
    lookup("HOSTNAME")
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// Serves `listener` until `stop` completes, then stops as described in the module docs.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (stopping, stopped) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: wait, do not spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let config = config.clone();
                let mut stopped = stopped.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        let config = config.clone();
                        async move { Ok::<_, Infallible>(handle(&config, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        // Sent once, to stop (or the sender is gone: stop too).
                        _ = stopped.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
        conns.shutdown().await;
    }
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
pub async fn stop_signal() -> Result<impl Future<Output = ()>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::io("listen for SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("listen for SIGINT", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

type Answer = Response<Full<Bytes>>;

async fn handle(config: &Config, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let answer = route(config, req).await;
    eprintln!("{method} {path} {}", answer.status().as_u16());
    answer
}

async fn route(config: &Config, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    let received = propagated(req.headers());
    let me = identity(config, &received);
    if path == "/echo" || path.starts_with("/echo/") {
        return echo(me, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            with(
                me,
                json!({"error": format!("{} is not allowed", req.method())}),
            ),
        );
    }
    if path == "/health" {
        return json_answer(StatusCode::OK, with(me, json!({"status": "ok"})));
    }
    let id_of = |prefix: &str| -> Option<Result<u32, ()>> {
        path.strip_prefix(prefix)
            .map(|id| id.trim_end_matches('/').parse::<u32>().map_err(|_| ()))
    };
    let routed = match config.service {
        Service::Productpage if path == "/" || path == "/productpage" => {
            Some(Ok(productpage(config, me.clone(), &received).await))
        }
        Service::Details => id_of("/details/").map(|id| id.map(|id| details(me.clone(), id))),
        Service::Reviews => match id_of("/reviews/") {
            Some(Ok(id)) => Some(Ok(reviews(config, me.clone(), &received, id).await)),
            Some(Err(())) => Some(Err(())),
            None => None,
        },
        Service::Ratings => id_of("/ratings/").map(|id| id.map(|id| ratings(me.clone(), id))),
        Service::Productpage => None,
    };
    match routed {
        Some(Ok(body)) => json_answer(StatusCode::OK, body),
        Some(Err(())) => json_answer(
            StatusCode::BAD_REQUEST,
            with(
                me,
                json!({"error": format!("{path}: the id is not a number")}),
            ),
        ),
        None => json_answer(
            StatusCode::NOT_FOUND,
            with(
                me,
                json!({"error": format!("{path} is not a path of {}", config.service.name())}),
            ),
        ),
    }
}

/// The fields every answer has.
fn identity(config: &Config, received: &[(String, String)]) -> Value {
    let mut headers = BTreeMap::<&str, String>::new();
    for (name, value) in received {
        headers
            .entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    json!({
        "service": config.service.name(),
        "version": config.version,
        "pod": config.pod,
        "hostname": config.hostname,
        "propagated": headers,
    })
}

/// `base`'s fields, then `extra`'s.
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

fn json_answer(status: StatusCode, body: Value) -> Answer {
    let mut text = body.to_string();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The [`PROPAGATED`] headers of a request, each value in order.
pub fn propagated(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in PROPAGATED {
        for value in headers.get_all(name) {
            if let Ok(value) = value.to_str() {
                out.push((name.to_string(), value.to_string()));
            }
        }
    }
    out
}

async fn echo(me: Value, req: Request<Incoming>) -> Answer {
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
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(e) => {
            return json_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                with(me, json!({"error": format!("reading the body: {e}")})),
            );
        }
    };
    json_answer(
        StatusCode::OK,
        with(
            me,
            json!({"method": method, "path": path, "query": query, "headers": headers, "body": body}),
        ),
    )
}

async fn productpage(config: &Config, me: Value, received: &[(String, String)]) -> Value {
    let details_url = format!("{}/details/0", config.details_url);
    let reviews_url = format!("{}/reviews/0", config.reviews_url);
    let (details, reviews) = tokio::join!(
        part(config, "details", &details_url, received),
        part(config, "reviews", &reviews_url, received),
    );
    with(
        me,
        json!({
            "product": {"id": 0, "title": "The Comedy of Errors"},
            "details": details,
            "reviews": reviews,
        }),
    )
}

fn details(me: Value, id: u32) -> Value {
    with(
        me,
        json!({
            "id": id,
            "author": "William Shakespeare",
            "year": 1595,
            "type": "paperback",
            "pages": 200,
            "publisher": "PublisherA",
            "language": "English",
            "ISBN-10": "1234567890",
            "ISBN-13": "123-1234567890",
        }),
    )
}

/// The two reviews, with stars from ratings on v2 (black) and v3 (red).
async fn reviews(config: &Config, me: Value, received: &[(String, String)], id: u32) -> Value {
    let texts = [
        (
            "Reviewer1",
            "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
        ),
        (
            "Reviewer2",
            "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
        ),
    ];
    let color = match config.version.as_str() {
        "v2" => Some("black"),
        "v3" => Some("red"),
        _ => None,
    };
    let mut out = json!({"id": id});
    let ratings = match color {
        None => None,
        Some(_) => {
            let url = format!("{}/ratings/{id}", config.ratings_url);
            Some(part(config, "ratings", &url, received).await)
        }
    };
    let list: Vec<Value> = texts
        .iter()
        .map(|(reviewer, text)| {
            let mut review = json!({"reviewer": reviewer, "text": text});
            if let (Some(color), Some(ratings)) = (color, &ratings) {
                review["rating"] = match ratings["ratings"][reviewer].as_u64() {
                    Some(stars) => json!({"stars": stars, "color": color}),
                    None => json!({"error": "Ratings service is currently unavailable"}),
                };
            }
            review
        })
        .collect();
    out["reviews"] = Value::Array(list);
    if let Some(ratings) = ratings {
        out["ratings"] = ratings;
    }
    with(me, out)
}

fn ratings(me: Value, id: u32) -> Value {
    with(
        me,
        json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}),
    )
}

/// One upstream's part of an answer: its JSON when it answered 2xx, else the error and the
/// status it shows as.
async fn part(config: &Config, name: &str, url: &str, headers: &[(String, String)]) -> Value {
    let proxy = config.upstream_proxy.as_deref();
    match get_via(url, proxy, headers, config.timeout).await {
        Ok(reply) => {
            let body = serde_json::from_slice::<Value>(&reply.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply.body).into()));
            if (200..300).contains(&reply.status) && body.is_object() {
                body
            } else {
                json!({
                    "error": format!("{name} answered {}", reply.status),
                    "status": reply.status,
                    "body": body,
                })
            }
        }
        Err(Error::Call {
            message, status, ..
        }) => json!({"error": format!("{name} unavailable: {message}"), "status": status}),
        Err(e) => json!({"error": format!("{name} unavailable: {e}"), "status": 503}),
    }
}

/// An upstream's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// Where a URL points: host (as DNS or an IP), port, and the request target.
fn parse_url(url: &str) -> Result<(String, u16, String, String), Error> {
    let bad = |message: &str| Error::Url {
        url: url.into(),
        message: message.into(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// URLs are supported")),
        None => return Err(bad("needs http://")),
    }
    let host = uri.host().ok_or_else(|| bad("has no host"))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.to_string());
    let port = uri.port_u16().unwrap_or(80);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok((host, port, authority, target))
}

/// `GET url` with `headers`, over a new HTTP/1.1 connection, all within `timeout`.
/// A JSON line of `count` calls of which `took` (sorted here) answered 2xx: how many, and
/// the nearest-rank percentiles 50, 90 and 99 and the maximum, in microseconds.
pub fn latency_summary(count: u32, took: &mut [Duration]) -> Value {
    took.sort();
    let at = |q: f64| -> Option<u128> {
        if took.is_empty() {
            return None;
        }
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let rank = ((q * took.len() as f64).ceil() as usize).clamp(1, took.len());
        Some(took[rank - 1].as_micros())
    };
    json!({
        "count": count,
        "ok": took.len(),
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "max_us": took.last().map(Duration::as_micros),
    })
}

pub async fn get(
    url: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Reply, Error> {
    get_via(url, None, headers, timeout).await
}

/// [`get`] through the HTTP proxy `proxy` (`HOST:PORT`) when given: the connection goes
/// there and the request names the whole URL.
pub async fn get_via(
    url: &str,
    proxy: Option<&str>,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Reply, Error> {
    let (mut host, mut port, authority, mut target) = parse_url(url)?;
    if let Some((proxy_host, proxy_port)) = proxy.and_then(|p| p.rsplit_once(':')) {
        target = format!("http://{authority}{target}");
        host = proxy_host.trim_matches(['[', ']']).to_string();
        port = proxy_port.parse().map_err(|_| Error::Url {
            url: url.into(),
            message: format!("proxy {proxy_host}:{proxy_port}: bad port"),
        })?;
    }
    let call = async {
        let fail = |message: String, status: u16| Error::Call {
            url: url.into(),
            message,
            status,
        };
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(format!("connect {host}:{port}: {e}"), 503))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(format!("handshake: {e}"), 503))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::get(target)
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(format!("request: {e}"), 400))?;
        let out = req.headers_mut();
        out.insert(
            HOST,
            HeaderValue::from_str(&authority).map_err(|e| fail(format!("host: {e}"), 400))?,
        );
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| fail(format!("header {name:?}: {e}"), 400))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| fail(format!("header {name} value: {e}"), 400))?;
            out.append(name, value);
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("request: {e}"), 503))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the answer: {e}"), 502))?
            .to_bytes();
        Ok(Reply { status, body })
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::Call {
            url: url.into(),
            message: format!("timed out after {} ms", timeout.as_millis()),
            status: 504,
        }),
    }
}

/// A `-H 'name: value'` argument.
pub fn parse_header(text: &str) -> Result<(String, String), Error> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        }
        _ => Err(Error::Config(format!(
            "header {text:?} is not 'name: value'"
        ))),
    }
}

/// Binds `0.0.0.0:PORT` and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("bind {addr}"), e))?;
    eprintln!(
        "mesh-app: {} {} (pod {}) listening on {addr}",
        config.service.name(),
        config.version,
        config.pod
    );
    let stop = stop_signal().await?;
    serve(listener, Arc::new(config), stop).await?;
    eprintln!("mesh-app: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        let mut took: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = latency_summary(101, &mut took);
        assert_eq!(s["count"], 101);
        assert_eq!(s["ok"], 100);
        assert_eq!(s["p50_us"], 50);
        assert_eq!(s["p90_us"], 90);
        assert_eq!(s["p99_us"], 99);
        assert_eq!(s["max_us"], 100);
        let none = latency_summary(3, &mut []);
        assert!(none["p50_us"].is_null(), "{none}");
    }

    fn config(service: Service, version: &str) -> Config {
        Config {
            service,
            version: version.into(),
            pod: format!("{}-{version}-pod", service.name()),
            hostname: "host".into(),
            port: 0,
            details_url: "http://127.0.0.1:1".into(),
            reviews_url: "http://127.0.0.1:1".into(),
            ratings_url: "http://127.0.0.1:1".into(),
            timeout: Duration::from_secs(3),
            upstream_proxy: None,
        }
    }

    #[tokio::test]
    async fn calls_go_through_the_upstream_proxy_in_absolute_form_with_b3() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The "proxy" records the request head and answers as ratings would.
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let head = tokio::spawn(async move {
            let (mut stream, _) = proxy.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed early");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = r#"{"ratings": {"Reviewer1": 3, "Reviewer2": 2}}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8(buf).unwrap()
        });
        let mut reviews = config(Service::Reviews, "v2");
        reviews.ratings_url = "http://ratings.invalid:9080".into();
        reviews.upstream_proxy = Some(proxy_addr.to_string());
        let reviews = start(reviews).await;
        let b3 = (
            "b3".to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".to_string(),
        );
        let v = json(
            &get(&format!("{reviews}/reviews/0"), &[b3], SECOND)
                .await
                .unwrap(),
        );
        assert_eq!(v["reviews"][0]["rating"]["stars"], 3, "{v}");
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get http://ratings.invalid:9080/ratings/0 http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nhost: ratings.invalid:9080\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n"),
            "{head}"
        );
        let bad = Config::from_lookup(|k| {
            (k == "SERVICE_NAME")
                .then(|| "ratings".to_string())
                .or_else(|| (k == "UPSTREAM_PROXY").then(|| "no-port".to_string()))
        })
        .unwrap_err();
        assert!(bad.to_string().contains("UPSTREAM_PROXY"), "{bad}");
    }

    /// Serves `config` on a loopback port; the task stops when the test's runtime ends.
    async fn start(config: Config) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(config), std::future::pending()));
        format!("http://{addr}")
    }

    fn json(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn productpage_shows_reviews_v2_with_ratings_and_propagates_headers() {
        let ratings = start(config(Service::Ratings, "v1")).await;
        let details = start(config(Service::Details, "v1")).await;
        let mut reviews = config(Service::Reviews, "v2");
        reviews.ratings_url = ratings;
        let reviews = start(reviews).await;
        let mut page = config(Service::Productpage, "v1");
        page.details_url = details;
        page.reviews_url = reviews;
        let page = start(page).await;

        let headers = [
            ("end-user".to_string(), "jason".to_string()),
            ("x-request-id".to_string(), "r-1".to_string()),
            ("user-agent".to_string(), "not-passed-on".to_string()),
        ];
        let reply = get(&format!("{page}/productpage"), &headers, SECOND)
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        let v = json(&reply);
        assert_eq!(v["service"], "productpage");
        assert_eq!(v["pod"], "productpage-v1-pod");
        assert_eq!(v["details"]["service"], "details");
        assert_eq!(v["details"]["author"], "William Shakespeare");
        let reviews = &v["reviews"];
        assert_eq!(reviews["service"], "reviews");
        assert_eq!(reviews["version"], "v2");
        assert_eq!(
            reviews["reviews"][0]["rating"],
            json!({"stars": 5, "color": "black"})
        );
        assert_eq!(reviews["reviews"][1]["rating"]["stars"], 4);
        assert_eq!(reviews["ratings"]["service"], "ratings");
        // Two hops down, ratings got what productpage got, and only the listed headers.
        for hop in [&v, &v["details"], reviews, &reviews["ratings"]] {
            assert_eq!(hop["propagated"]["end-user"], "jason", "{hop}");
            assert_eq!(hop["propagated"]["x-request-id"], "r-1", "{hop}");
            assert!(hop["propagated"].get("user-agent").is_none(), "{hop}");
        }
        // `/` is the product page too.
        let root = get(&format!("{page}/"), &[], SECOND).await.unwrap();
        assert_eq!(json(&root)["reviews"]["version"], "v2");
    }

    #[tokio::test]
    async fn reviews_v1_calls_nobody_and_v3_shows_red_stars() {
        // ratings_url points at a closed port: v1 must not notice.
        let v1 = start(config(Service::Reviews, "v1")).await;
        let v = json(&get(&format!("{v1}/reviews/0"), &[], SECOND).await.unwrap());
        assert!(v["reviews"][0].get("rating").is_none(), "{v}");
        assert!(v.get("ratings").is_none(), "{v}");

        let ratings = start(config(Service::Ratings, "v1")).await;
        let mut v3 = config(Service::Reviews, "v3");
        v3.ratings_url = ratings;
        let v3 = start(v3).await;
        let v = json(&get(&format!("{v3}/reviews/7"), &[], SECOND).await.unwrap());
        assert_eq!(v["id"], 7);
        assert_eq!(v["reviews"][1]["rating"]["color"], "red");
    }

    #[tokio::test]
    async fn upstream_failures_show_as_the_status_of_their_part() {
        // A listener that accepts and never answers: the call times out (504).
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("http://{}", silent.local_addr().unwrap());
        let mut page = config(Service::Productpage, "v1");
        page.details_url = silent_url;
        // A closed port: unreachable (503).
        page.reviews_url = "http://127.0.0.1:1".into();
        page.timeout = Duration::from_millis(200);
        let page = start(page).await;
        let started = std::time::Instant::now();
        let reply = get(&format!("{page}/productpage"), &[], Duration::from_secs(5))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(reply.status, 200);
        let v = json(&reply);
        assert_eq!(v["details"]["status"], 504, "{v}");
        assert!(
            v["details"]["error"]
                .as_str()
                .unwrap()
                .contains("timed out")
        );
        assert_eq!(v["reviews"]["status"], 503, "{v}");
        assert!(
            v["reviews"]["error"]
                .as_str()
                .unwrap()
                .contains("reviews unavailable")
        );

        // An upstream answering 404 shows that status.
        let ratings = start(config(Service::Ratings, "v1")).await;
        let mut page = config(Service::Productpage, "v1");
        page.details_url = ratings.clone();
        page.reviews_url = ratings;
        let page = start(page).await;
        let v = json(
            &get(&format!("{page}/productpage"), &[], SECOND)
                .await
                .unwrap(),
        );
        assert_eq!(v["details"]["status"], 404, "{v}");
        assert_eq!(v["details"]["body"]["service"], "ratings", "{v}");
        drop(silent);
    }

    #[tokio::test]
    async fn health_echo_and_unknown_paths() {
        let details = start(config(Service::Details, "v1")).await;
        let health = get(&format!("{details}/health"), &[], SECOND)
            .await
            .unwrap();
        assert_eq!(health.status, 200);
        assert_eq!(json(&health)["status"], "ok");
        let echo = get(
            &format!("{details}/echo/x?a=1"),
            &[("x-test".into(), "1".into())],
            SECOND,
        )
        .await
        .unwrap();
        let v = json(&echo);
        assert_eq!(v["path"], "/echo/x");
        assert_eq!(v["query"], "a=1");
        assert_eq!(v["headers"]["x-test"], "1");
        assert_eq!(v["service"], "details");
        let missing = get(&format!("{details}/reviews/0"), &[], SECOND)
            .await
            .unwrap();
        assert_eq!(missing.status, 404);
        let bad = get(&format!("{details}/details/x"), &[], SECOND)
            .await
            .unwrap();
        assert_eq!(bad.status, 400);
    }

    #[tokio::test]
    async fn stops_quickly_with_idle_keep_alive_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(config(Service::Ratings, "v1")),
            async {
                let _ = rx.await;
            },
        ));
        // An idle keep-alive connection that stays open.
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(Request::get("/health").body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let started = std::time::Instant::now();
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        // Well under STOP_GRACE: the idle connection did not hold the stop up.
        assert!(started.elapsed() < Duration::from_millis(1500));
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn config_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = Config::from_lookup(env(&[
            ("SERVICE_NAME", "reviews"),
            ("SERVICE_VERSION", "v3"),
            ("POD_NAME", "reviews-v3-abc"),
            ("HOSTNAME", "h"),
            ("RATINGS_URL", "http://ratings.default:9080/"),
            ("UPSTREAM_TIMEOUT_MS", "250"),
        ]))
        .unwrap();
        assert_eq!(c.service, Service::Reviews);
        assert_eq!(c.pod, "reviews-v3-abc");
        assert_eq!(c.port, 9080);
        assert_eq!(c.ratings_url, "http://ratings.default:9080");
        assert_eq!(c.details_url, "http://details:9080");
        assert_eq!(c.timeout, Duration::from_millis(250));
        let c =
            Config::from_lookup(env(&[("SERVICE_NAME", "ratings"), ("HOSTNAME", "h")])).unwrap();
        assert_eq!((c.version.as_str(), c.pod.as_str()), ("v1", "h"));
        for bad in [
            &[][..],
            &[("SERVICE_NAME", "web")][..],
            &[("SERVICE_NAME", "ratings"), ("SERVICE_VERSION", "v9")][..],
            &[("SERVICE_NAME", "ratings"), ("PORT", "x")][..],
            &[("SERVICE_NAME", "ratings"), ("RATINGS_URL", "https://r")][..],
        ] {
            assert!(Config::from_lookup(env(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_header("End-User: jason").unwrap(),
            ("end-user".into(), "jason".into())
        );
        assert!(parse_header("nocolon").is_err());
    }
}
