//! The monitoring HTTP server every binary runs: `/ready`, `/metrics` and the service's own
//! `/debug/*` pages.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::Shutdown;

/// Errors of the monitoring server.
#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    /// The address cannot be bound (in use, or not local).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("monitoring server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Readiness as a set of named conditions; the process is ready once all of them are met.
///
/// Conditions are registered up front (so `/ready` is 503 until every one has been met) and set
/// by the task that owns them, e.g. `config` once the first full config is loaded.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

// === impl Readiness ===

impl Readiness {
    /// Registers a condition, initially unmet, and returns its handle.
    pub fn condition(&self, name: &str) -> Condition {
        self.lock().insert(name.to_string(), false);
        Condition {
            readiness: self.clone(),
            name: name.to_string(),
        }
    }

    /// True when every registered condition is met (and at least one exists).
    pub fn is_ready(&self) -> bool {
        let conditions = self.lock();
        !conditions.is_empty() && conditions.values().all(|v| *v)
    }

    /// The names of the conditions not met yet.
    pub fn pending(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, v)| !**v)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        // A poisoned lock only means a panic elsewhere; the map itself is always consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One readiness condition.
#[derive(Clone, Debug)]
pub struct Condition {
    readiness: Readiness,
    name: String,
}

// === impl Condition ===

impl Condition {
    /// Marks the condition met (or no longer met).
    pub fn set(&self, met: bool) {
        self.readiness.lock().insert(self.name.clone(), met);
    }
}

/// Registers the `istio_build` gauge that Istio components export, for this component.
pub fn register_build_info(registry: &mut Registry, component: &str) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let family = Family::<Vec<(String, String)>, Gauge>::default();
    family
        .get_or_create(&vec![
            ("component".to_string(), component.to_string()),
            ("tag".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ])
        .set(1);
    registry.register(
        "istio_build",
        "Istio component build info, for this implementation",
        family,
    );
}

/// The router with `/ready`, `/healthz` and `/metrics`; merge the service's `/debug/*`
/// routes into it. `/healthz` answers while the process serves at all (a liveness probe:
/// not being ready yet, e.g. waiting for the API server, is no reason to be restarted).
pub fn router(readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    if readiness.is_ready() {
                        (StatusCode::OK, "ready\n".to_string())
                    } else {
                        let pending = readiness.pending().join(", ");
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: waiting for {pending}\n"),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { encode_metrics(&registry) }
            }),
        )
}

fn encode_metrics(registry: &Registry) -> axum::response::Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Binds the monitoring address, so a port conflict fails at startup with a clear message.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MonitoringError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MonitoringError::Bind { addr, source })
}

/// Serves `app` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: Shutdown,
) -> Result<(), MonitoringError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "monitoring server listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(MonitoringError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_condition() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        let a = r.condition("config");
        let b = r.condition("grpc");
        a.set(true);
        assert!(!r.is_ready());
        assert_eq!(r.pending(), vec!["grpc".to_string()]);
        b.set(true);
        assert!(r.is_ready());
    }
}
