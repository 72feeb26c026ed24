//! [`HttpFetcher`]: the [`JwksFetcher`] Pilot runs with, a GET over HTTP or HTTPS (hyper with
//! rustls, the client kube already brings; the system's root certificates).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::jwks::{JwksError, JwksFetcher};

/// The largest JWKS body read; an issuer's key set is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// Redirects followed before giving up (Go's client, which Istio fetches with, follows 10).
const MAX_REDIRECTS: usize = 10;

/// Fetches JWKS URIs over HTTP(S), verifying servers against the system's roots.
#[derive(Clone)]
pub struct HttpFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher").finish_non_exhaustive()
    }
}

// === impl HttpFetcher ===

impl HttpFetcher {
    /// A fetcher with the system's root certificates (none found: `https` URIs fail, and
    /// that is logged once here).
    pub fn new() -> Result<Arc<Self>, JwksError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no root certificates: https JWKS URIs cannot be fetched");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| JwksError::Client(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Arc::new(Self { client }))
    }

    /// GETs `uri`, following up to [`MAX_REDIRECTS`] redirects (as Go's client does for
    /// Istio).
    async fn get(&self, uri: &str) -> Result<String, JwksError> {
        let mut current = parse(uri)?;
        for _ in 0..=MAX_REDIRECTS {
            let shown = current.to_string();
            let fail = |reason: String| JwksError::Fetch {
                uri: shown.clone(),
                reason,
            };
            let resp = self
                .client
                .get(current.clone())
                .await
                .map_err(|e| fail(error_chain(&e)))?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| fail(format!("status {status} without a location")))?;
                current = redirect_target(&current, location)?;
                continue;
            }
            if !status.is_success() {
                return Err(JwksError::Status {
                    uri: shown,
                    status: status.as_u16(),
                });
            }
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the body: {e}")))?
                .to_bytes();
            return String::from_utf8(body.to_vec())
                .map_err(|_| fail("the body is not UTF-8".into()));
        }
        Err(JwksError::Fetch {
            uri: uri.to_string(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }
}

/// An `http(s)` URI.
fn parse(uri: &str) -> Result<hyper::Uri, JwksError> {
    let parsed: hyper::Uri = uri.parse().map_err(|e| JwksError::InvalidUri {
        uri: uri.to_string(),
        reason: format!("{e}"),
    })?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
        return Err(JwksError::InvalidUri {
            uri: uri.to_string(),
            reason: "not an http or https URL".into(),
        });
    }
    Ok(parsed)
}

/// Where a redirect's `location` (absolute, or a path on the same server) leads from `from`.
fn redirect_target(from: &hyper::Uri, location: &str) -> Result<hyper::Uri, JwksError> {
    if location.starts_with('/') && !location.starts_with("//") {
        let scheme = from.scheme_str().unwrap_or("http");
        let authority = from.authority().map(|a| a.as_str()).unwrap_or("");
        return parse(&format!("{scheme}://{authority}{location}"));
    }
    parse(location)
}

impl JwksFetcher for HttpFetcher {
    fn fetch<'a>(
        &'a self,
        uri: &'a str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<String, JwksError>> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::timeout(timeout, self.get(uri))
                .await
                .map_err(|_| JwksError::Timeout {
                    uri: uri.to_string(),
                    timeout,
                })?
        })
    }
}

/// An error with its sources, `a: b: c` (hyper's own message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 answer per connection (`status` may carry more header lines).
    async fn serve(status: &'static str, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        format!("http://{addr}/jwks")
    }

    #[tokio::test]
    async fn fetches_over_http() {
        let uri = serve("200 OK", r#"{"keys":[]}"#).await;
        let got = HttpFetcher::new()
            .unwrap()
            .fetch(&uri, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, r#"{"keys":[]}"#);
    }

    #[tokio::test]
    async fn redirects_are_followed() {
        let target = serve("200 OK", r#"{"keys":[]}"#).await;
        let redirect: &'static str =
            Box::leak(format!("302 Found\r\nlocation: {target}").into_boxed_str());
        let first = serve(redirect, "").await;
        let f = HttpFetcher::new().unwrap();
        assert_eq!(
            f.fetch(&first, Duration::from_secs(5)).await.unwrap(),
            r#"{"keys":[]}"#
        );
        assert_eq!(
            redirect_target(&"http://a:1/x".parse().unwrap(), "/keys")
                .unwrap()
                .to_string(),
            "http://a:1/keys"
        );
        assert!(redirect_target(&"http://a/x".parse().unwrap(), "ftp://b/").is_err());
    }

    #[tokio::test]
    async fn failures_say_what_failed() {
        let f = HttpFetcher::new().unwrap();
        let uri = serve("404 Not Found", "no").await;
        assert!(matches!(
            f.fetch(&uri, Duration::from_secs(5)).await,
            Err(JwksError::Status { status: 404, .. })
        ));
        assert!(matches!(
            f.fetch("ftp://x/jwks", Duration::from_secs(5)).await,
            Err(JwksError::InvalidUri { .. })
        ));
        // Nothing listens on port 9 of loopback here.
        let e = f
            .fetch("http://127.0.0.1:9/jwks", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, JwksError::Fetch { .. }), "{e}");
    }
}
