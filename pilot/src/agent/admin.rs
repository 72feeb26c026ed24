//! Requests to Envoy's admin interface on `127.0.0.1:ADMIN_PORT` (and to the app's own probe
//! paths), over hyper's HTTP/1.1 client: one connection per request, the whole body read,
//! bounded in size and time.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The most of a response read (Envoy's Prometheus page of a big mesh is a few MiB).
const MAX_RESPONSE: usize = 64 << 20;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing listens, or the connection broke.
    #[error("{method} http://{addr}{path}: {source}")]
    Io {
        method: &'static str,
        addr: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{method} http://{addr}{path}: no answer within {timeout:?}")]
    Timeout {
        method: &'static str,
        addr: String,
        path: String,
        timeout: Duration,
    },
    /// Not an HTTP response we can read.
    #[error("{method} http://{addr}{path}: bad response ({reason})")]
    Malformed {
        method: &'static str,
        addr: String,
        path: String,
        reason: String,
    },
}

/// A response: its status, `Content-Type` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

// === impl Response ===

impl Response {
    /// The body as text (lossily).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on `addr` (`HOST:PORT`).
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Result<Response, AdminError> {
    request("GET", addr, path, timeout).await
}

/// `POST path` (empty body) on `addr`.
pub async fn post(addr: &str, path: &str, timeout: Duration) -> Result<Response, AdminError> {
    request("POST", addr, path, timeout).await
}

async fn request(
    method: &'static str,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response, AdminError> {
    let malformed = |reason: String| AdminError::Malformed {
        method,
        addr: addr.to_string(),
        path: path.to_string(),
        reason,
    };
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| AdminError::Io {
                method,
                addr: addr.to_string(),
                path: path.to_string(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| malformed(e.to_string()))?;
        // The connection lives as long as this one exchange.
        let conn = tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::USER_AGENT, "pilot-agent")
            .body(Empty::<Bytes>::new())
            .map_err(|e| malformed(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| malformed(e.to_string()))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| malformed(format!("reading the body: {e}")))?
            .to_bytes()
            .to_vec();
        conn.abort();
        Ok(Response {
            status,
            content_type,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(AdminError::Timeout {
            method,
            addr: addr.to_string(),
            path: path.to_string(),
            timeout,
        }),
    }
}

/// Reads counters out of the text of Envoy's `/stats` (`name: value` lines).
pub fn counter(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one connection with `raw` as the whole response.
    async fn one_answer(raw: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(raw).await;
        });
        addr
    }

    #[tokio::test]
    async fn reads_plain_and_chunked_responses() {
        let plain = one_answer(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nLIVE\n",
        )
        .await;
        let r = get(&plain, "/ready", Duration::from_secs(5)).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "LIVE\n"));
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));

        let chunked = one_answer(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nPRE_\r\n9;x=y\r\nINITIALIZ\r\n3\r\nING\r\n0\r\n\r\n").await;
        let r = post(&chunked, "/x", Duration::from_secs(5)).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "PRE_INITIALIZING"));
    }

    #[tokio::test]
    async fn refuses_what_is_not_http() {
        for raw in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let addr = one_answer(raw).await;
            let err = get(&addr, "/ready", Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(
                matches!(err, AdminError::Malformed { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn reads_counters() {
        let stats =
            "cluster_manager.cds.update_success: 3\nlistener_manager.lds.update_success: 0\n";
        assert_eq!(
            counter(stats, "cluster_manager.cds.update_success"),
            Some(3)
        );
        assert_eq!(
            counter(stats, "listener_manager.lds.update_success"),
            Some(0)
        );
        assert_eq!(counter(stats, "nope"), None);
    }

    #[tokio::test]
    async fn an_unreachable_admin_is_an_error_naming_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let err = get(&addr, "/ready", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("GET http://{addr}/ready")),
            "{err}"
        );
    }
}
