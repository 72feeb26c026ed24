//! `/live`: Mixer answers a real Check. The monitoring server sends an Envoy ext_authz v3
//! `Check` to Mixer's own gRPC port, over TCP, and reports what came back: the same door,
//! config and dispatcher a sidecar's check goes through (Citadel's `/live` signs a CSR the
//! same way). Any answer counts, a denial too: the question is whether Mixer answers, not
//! what its rules say about a request from nobody. `pilot check` reads it through the API
//! server, which cannot carry gRPC itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use serde::Serialize;

/// How long the check may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong: Mixer did not answer.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot reach Mixer's gRPC port {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("Check to {addr} failed: {status}")]
    Check {
        addr: SocketAddr,
        status: tonic::Status,
    },
}

/// Mixer's answer to the check.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    /// The gRPC address asked.
    pub addr: String,
    /// The `google.rpc.Code` of the answer (0: allowed).
    pub code: i32,
    /// How long the round trip took, connection included.
    pub millis: u64,
}

/// Where to reach a server bound to `bound`: the loopback address for a wildcard bind.
fn reachable(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// Sends one Check to the gRPC server bound to `bound`.
pub async fn check(bound: SocketAddr) -> Result<LiveReport, LiveError> {
    let addr = reachable(bound);
    let start = Instant::now();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| LiveError::Connect { addr, source })?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| LiveError::Connect { addr, source })?;
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "mixer-live".into(),
                    method: "GET".into(),
                    path: "/live".into(),
                    host: "mixer-live".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let answer = AuthorizationClient::new(channel)
        .check(request)
        .await
        .map_err(|status| LiveError::Check { addr, status })?
        .into_inner();
    Ok(LiveReport {
        addr: addr.to_string(),
        code: answer.status.map(|s| s.code).unwrap_or(0),
        millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_asked_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9091".parse().unwrap()),
            "127.0.0.1:9091".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:9091".parse().unwrap()),
            "[::1]:9091".parse().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.2:9091".parse().unwrap()),
            "10.0.0.2:9091".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn mixer_answers_its_own_check() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = mesh_runtime::Shutdown::new();
        let dispatcher = super::super::test_dispatcher("");
        tokio::spawn(super::super::serve(listener, dispatcher, shutdown.clone()));
        let report = check(addr).await.unwrap();
        assert_eq!(report.code, 0, "{report:?}");
        shutdown.cancel();
        let closed = "127.0.0.1:1".parse().unwrap();
        let err = check(closed).await.unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }
}
