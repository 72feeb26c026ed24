//! A small HTTP/1.1 client for Envoy's admin interface on `127.0.0.1:ADMIN_PORT` (and the
//! app's own probe paths): one connection per request, `Connection: close`, the whole response
//! read (plain or chunked), bounded in size and time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let io = |source| AdminError::Io {
        method,
        addr: addr.to_string(),
        path: path.to_string(),
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pilot-agent\r\nAccept: */*\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        if raw.len() > MAX_RESPONSE {
            return Err(AdminError::Malformed {
                method,
                addr: addr.to_string(),
                path: path.to_string(),
                reason: format!("longer than {MAX_RESPONSE} bytes"),
            });
        }
        parse(&raw).map_err(|reason| AdminError::Malformed {
            method,
            addr: addr.to_string(),
            path: path.to_string(),
            reason,
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

/// Parses a whole HTTP/1.1 response read until the server closed the connection.
fn parse(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_type = None;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_string()),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-length" => length = value.parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => return Err(format!("body shorter than its length {n}")),
            None => rest.to_vec(),
        }
    };
    Ok(Response {
        status,
        content_type,
        body,
    })
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without end")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
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

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nLIVE\n";
        let r = parse(plain).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "LIVE\n");
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));

        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nPRE_\r\n9;x=y\r\nINITIALIZ\r\n3\r\nING\r\n0\r\n\r\n";
        let r = parse(chunked).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.text(), "PRE_INITIALIZING");

        let to_eof = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert_eq!(parse(to_eof).unwrap().text(), "abc");
    }

    #[test]
    fn refuses_what_is_not_http() {
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nab").is_err());
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
