//! The agent's status server (Istio's 15020), for the kubelet and Prometheus.
//!
//! - `GET /healthz/ready`: 200 once the proxy can carry the pod's traffic, else 503 with the
//!   reason in the body. Ready means all of:
//!   1. the agent is not shutting down (draining answers 503);
//!   2. Envoy runs (none between a crash and its restart);
//!   3. Envoy's admin `GET /ready` answers 200 (`LIVE`: initialized);
//!   4. Envoy's `cluster_manager.cds.update_success` and `listener_manager.lds.update_success`
//!      counters (admin `/stats?filter=update_success`) are above 0: it has accepted clusters
//!      and listeners from Pilot at least once. (`/ready` alone is not enough: Envoy turns
//!      `LIVE` after its initial fetch timeout even when Pilot never answered.)
//! - `GET /stats/prometheus`: Envoy's own, proxied from its admin interface.
//! - App probes (Istio's `ISTIO_KUBE_APP_PROBERS`): each configured path, e.g.
//!   `/app-health/reviews/readyz`, answers 503 while the proxy is not ready, else forwards to
//!   the application's own HTTP probe on `127.0.0.1:PORT` and answers with its status. The
//!   injector rewrites an app's probes to these, so the kubelet's probes still work when
//!   inbound traffic requires mutual TLS, and the app is not marked ready before its proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mesh_runtime::Shutdown;
use serde::Deserialize;

use super::admin;
use super::supervise::AgentState;

/// How long a request to Envoy's admin or an app's probe may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The status server's failures.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The port is taken or not ours to bind.
    #[error("cannot listen on {addr} (--status-port): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("status server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `ISTIO_KUBE_APP_PROBERS` is not the JSON the injector writes.
    #[error("--app-probers (ISTIO_KUBE_APP_PROBERS): {0}")]
    Probers(String),
}

/// One app probe (a Kubernetes `httpGet` probe, as Istio's injector records it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    pub http_get: HttpGet,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// A probe's `httpGet`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    #[serde(default)]
    pub path: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub scheme: Option<String>,
}

/// Parses Istio's `ISTIO_KUBE_APP_PROBERS`: `{"/app-health/NAME/readyz": {"httpGet": {...},
/// "timeoutSeconds": 1}, ...}`. Paths must start with `/`; only HTTP probes are taken.
pub fn parse_probers(text: &str) -> Result<BTreeMap<String, AppProbe>, StatusError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let probers: BTreeMap<String, AppProbe> =
        serde_json::from_str(text).map_err(|e| StatusError::Probers(e.to_string()))?;
    for (path, probe) in &probers {
        if !path.starts_with('/') || matches!(path.as_str(), "/healthz/ready" | "/stats/prometheus")
        {
            return Err(StatusError::Probers(format!(
                "path {path:?} must start with / and not be one of the agent's own"
            )));
        }
        if let Some(s) = &probe.http_get.scheme
            && !s.eq_ignore_ascii_case("http")
        {
            return Err(StatusError::Probers(format!(
                "{path}: scheme {s:?} is not supported (HTTP only)"
            )));
        }
    }
    Ok(probers)
}

#[derive(Debug, Clone)]
struct Ctx {
    state: Arc<AgentState>,
    probers: Arc<BTreeMap<String, AppProbe>>,
}

/// Binds the status server on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StatusError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StatusError::Bind { addr, source })
}

/// Serves until `stop` (the agent stops it after Envoy, so readiness says 503 while it
/// drains).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AgentState>,
    probers: BTreeMap<String, AppProbe>,
    stop: Shutdown,
) -> Result<(), StatusError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let app = Router::new()
        .route("/healthz/ready", get(ready))
        .route("/stats/prometheus", get(prometheus))
        .fallback(app_probe)
        .with_state(Ctx {
            state,
            probers: Arc::new(probers),
        });
    tracing::info!(%addr, "status server listening (/healthz/ready, /stats/prometheus)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(|source| StatusError::Serve { addr, source })
}

/// Why the proxy is not ready, or `Ok`.
pub async fn check(state: &AgentState) -> Result<(), String> {
    if state.draining.load(Ordering::SeqCst) {
        return Err("the agent is shutting down: Envoy is draining".into());
    }
    if state.envoy_pid.load(Ordering::SeqCst) == 0 {
        return Err(format!(
            "Envoy is not running (restarted {} times)",
            state.restarts.load(Ordering::SeqCst)
        ));
    }
    let live = admin::get(&state.admin, "/ready", ADMIN_TIMEOUT)
        .await
        .map_err(|e| format!("Envoy's admin does not answer: {e}"))?;
    if live.status != 200 {
        return Err(format!(
            "Envoy is not ready: /ready answers {} {}",
            live.status,
            live.text().trim()
        ));
    }
    let stats = admin::get(&state.admin, "/stats?filter=update_success", ADMIN_TIMEOUT)
        .await
        .map_err(|e| format!("Envoy's admin does not answer: {e}"))?;
    let stats = stats.text();
    for (stat, what) in [
        ("cluster_manager.cds.update_success", "clusters (CDS)"),
        ("listener_manager.lds.update_success", "listeners (LDS)"),
    ] {
        let n = admin::counter(&stats, stat).unwrap_or(0);
        if n == 0 {
            return Err(format!(
                "Envoy has not received {what} from Pilot yet ({stat} = 0)"
            ));
        }
    }
    Ok(())
}

async fn ready(State(ctx): State<Ctx>) -> Response {
    match check(&ctx.state).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => {
            tracing::debug!(%reason, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
        }
    }
}

async fn prometheus(State(ctx): State<Ctx>) -> Response {
    match admin::get(&ctx.state.admin, "/stats/prometheus", ADMIN_TIMEOUT).await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = r
                .content_type
                .unwrap_or_else(|| "text/plain; version=0.0.4".into());
            (status, [(header::CONTENT_TYPE, content_type)], r.body).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Envoy's stats are not available: {e}\n"),
        )
            .into_response(),
    }
}

async fn app_probe(State(ctx): State<Ctx>, uri: Uri) -> Response {
    let Some(probe) = ctx.probers.get(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    if let Err(reason) = check(&ctx.state).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("proxy not ready: {reason}\n"),
        )
            .into_response();
    }
    let path = probe.http_get.path.as_deref().unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).clamp(1, 60));
    let addr = format!("127.0.0.1:{}", probe.http_get.port);
    match admin::get(&addr, &path, timeout).await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, r.body).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe failed: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_app_probers() {
        let p = parse_probers(
            r#"{"/app-health/reviews/readyz":{"httpGet":{"path":"/health","port":9080,"scheme":"HTTP"},"timeoutSeconds":2},
                "/app-health/reviews/livez":{"httpGet":{"port":9080}}}"#,
        )
        .unwrap();
        assert_eq!(p["/app-health/reviews/readyz"].http_get.port, 9080);
        assert_eq!(p["/app-health/reviews/readyz"].timeout_seconds, Some(2));
        assert_eq!(p["/app-health/reviews/livez"].http_get.path, None);
        assert!(parse_probers("").unwrap().is_empty());
        for bad in [
            "{",
            r#"{"x":{"httpGet":{"port":1}}}"#,
            r#"{"/healthz/ready":{"httpGet":{"port":1}}}"#,
            r#"{"/a":{"httpGet":{"port":1,"scheme":"HTTPS"}}}"#,
            r#"{"/a":{"httpGet":{"port":70000}}}"#,
        ] {
            assert!(parse_probers(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn not_ready_without_envoy_or_while_draining() {
        let state = AgentState::new(1);
        let reason = check(&state).await.unwrap_err();
        assert!(reason.contains("Envoy is not running"), "{reason}");
        state.envoy_pid.store(42, Ordering::SeqCst);
        let reason = check(&state).await.unwrap_err();
        assert!(reason.contains("Envoy's admin does not answer"), "{reason}");
        state.draining.store(true, Ordering::SeqCst);
        let reason = check(&state).await.unwrap_err();
        assert!(reason.contains("shutting down"), "{reason}");
    }

    /// A fake Envoy admin answering `/ready` and `/stats` from fixed text.
    async fn fake_admin(ready: &'static str, stats: &'static str) -> u16 {
        let app = Router::new()
            .route("/ready", get(move || async move { ready }))
            .route("/stats", get(move || async move { stats }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(l, app).await });
        port
    }

    #[tokio::test]
    async fn ready_needs_cds_and_lds_from_pilot() {
        let port = fake_admin(
            "LIVE\n",
            "cluster_manager.cds.update_success: 0\nlistener_manager.lds.update_success: 0\n",
        )
        .await;
        let state = AgentState::new(port);
        state.envoy_pid.store(42, Ordering::SeqCst);
        let reason = check(&state).await.unwrap_err();
        assert_eq!(
            reason,
            "Envoy has not received clusters (CDS) from Pilot yet (cluster_manager.cds.update_success = 0)"
        );

        let port = fake_admin(
            "LIVE\n",
            "cluster_manager.cds.update_success: 2\nlistener_manager.lds.update_success: 0\n",
        )
        .await;
        let state = AgentState::new(port);
        state.envoy_pid.store(42, Ordering::SeqCst);
        assert!(check(&state).await.unwrap_err().contains("listeners (LDS)"));

        let port = fake_admin(
            "LIVE\n",
            "cluster_manager.cds.update_success: 2\nlistener_manager.lds.update_success: 1\n",
        )
        .await;
        let state = AgentState::new(port);
        state.envoy_pid.store(42, Ordering::SeqCst);
        assert_eq!(check(&state).await, Ok(()));
    }
}
