//! A minimal HTTP/1.1 client: one fresh connection per request, headers sent as given.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long [`http_request`] waits for a whole exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A fully read HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code; compares with `u16` (`resp.status == 200`).
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body, decoded as UTF-8 (lossily).
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.body))
    }
}

/// `GET url` with extra `headers` (a `host` header here overrides the URL's authority).
pub async fn http_get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    http_request(Method::GET, url, headers, Bytes::new()).await
}

/// Sends one request over a new connection to the URL's `host:port` (`http://` only) and
/// reads the whole response. The `Host` header defaults to the URL's authority; give a
/// `host` entry in `headers` to send another one (e.g. `reviews:9080` to an Envoy listener).
pub async fn http_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<HttpResponse> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported: {url:?}");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("URL has no host: {url:?}"))?;
    let target = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );

    let mut req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |pq| pq.as_str()))
        .body(Full::new(body.into()))?;
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        req.headers_mut()
            .insert(HOST, HeaderValue::from_str(authority.as_str())?);
    }
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }

    let exchange = async {
        let stream = TcpStream::connect(&target)
            .await
            .with_context(|| format!("connect to {target}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        drop(sender);
        conn.abort();
        anyhow::Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{url}: no response within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("request to {url} failed"))
}
