//! What every service does the same way at startup: open its config store, tie readiness to
//! the first full load, and serve the monitoring endpoints with the shared `/debug/configz`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::routing::get;
use mesh_proto::Kind;
use tokio::sync::watch;

use crate::config::status::Findings;
use crate::config::{
    ConfigStore, DirectoryOptions, DirectoryStore, KubeOptions, KubeStore, SharedValidator,
    Snapshot,
};
use crate::monitoring::Condition;
use crate::{Shutdown, kube_client};

/// Where a service's configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The embedded default: a directory of YAML, watched.
    Directory(PathBuf),
    /// The Kubernetes API server (a kubeconfig file, or `KUBECONFIG`/in-cluster when `None`).
    Kubernetes(Option<PathBuf>),
}

/// Errors opening a config store.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Directory(#[from] crate::config::directory::DirectoryError),
    #[error(transparent)]
    Kube(#[from] kube_client::KubeClientError),
}

// === impl ConfigSource ===

impl ConfigSource {
    /// `--config-dir` wins; without it the service talks to Kubernetes.
    pub fn from_flags(config_dir: Option<PathBuf>, kubeconfig: Option<PathBuf>) -> Self {
        match config_dir {
            Some(dir) => ConfigSource::Directory(dir),
            None => ConfigSource::Kubernetes(kubeconfig),
        }
    }

    /// Opens the store. `kinds` (with the API version to watch) only matter for Kubernetes;
    /// a directory yields every kind it holds.
    pub async fn open(
        &self,
        kinds: Vec<(Kind, String)>,
        validator: Option<SharedValidator>,
        shutdown: Shutdown,
    ) -> Result<Arc<dyn ConfigStore>, ServiceError> {
        self.open_with(kinds, validator, KubeOptions::default(), shutdown)
            .await
    }

    /// [`ConfigSource::open`], with the options of a Kubernetes store.
    pub async fn open_with(
        &self,
        kinds: Vec<(Kind, String)>,
        validator: Option<SharedValidator>,
        options: KubeOptions,
        shutdown: Shutdown,
    ) -> Result<Arc<dyn ConfigStore>, ServiceError> {
        Ok(match self {
            ConfigSource::Directory(dir) => Arc::new(DirectoryStore::start(
                dir.clone(),
                DirectoryOptions {
                    validator,
                    ..Default::default()
                },
                shutdown,
            )?),
            ConfigSource::Kubernetes(kubeconfig) => {
                let client = kube_client::connect(kubeconfig.as_deref()).await?;
                Arc::new(KubeStore::start_with(
                    client, kinds, validator, options, shutdown,
                ))
            }
        })
    }
}

/// Sets `condition` once the store has loaded everything at least once.
pub fn track_readiness(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    condition: Condition,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        loop {
            if rx.borrow_and_update().is_synced() {
                condition.set(true);
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    });
}

/// `/debug/configz`: what the store holds and what it refused, and, from `findings` (a
/// service's analysis), what is wrong with the objects it holds: `{"revision", "synced",
/// "objects": [{kind, group, apiVersion, namespace, name, origin, spec, analysis?}], "errors"}`,
/// `analysis` being the object's findings (`{level, code, name, field, message}`), left out
/// when there are none.
pub fn configz_routes(
    rx: watch::Receiver<Arc<Snapshot>>,
    findings: Option<watch::Receiver<Arc<Findings>>>,
) -> Router {
    Router::new().route(
        "/debug/configz",
        get(move || {
            let snap = rx.borrow().clone();
            let findings = findings.as_ref().map(|f| f.borrow().clone());
            async move { Json(configz(&snap, findings.as_deref())) }
        }),
    )
}

fn configz(snap: &Snapshot, findings: Option<&Findings>) -> serde_json::Value {
    let objects: Vec<_> = snap
        .objects()
        .values()
        .map(|o| {
            let mut obj = serde_json::json!({
                "kind": o.key.kind.name(),
                "group": o.key.kind.group(),
                "apiVersion": o.api_version,
                "namespace": o.key.namespace,
                "name": o.key.name,
                "origin": o.origin.to_string(),
                "spec": o.spec.to_json(),
            });
            if let Some(found) = findings.and_then(|f| f.get(&o.key)) {
                obj["analysis"] = serde_json::json!(found);
            }
            obj
        })
        .collect();
    let errors: Vec<_> = snap.errors().iter().map(|e| e.to_string()).collect();
    serde_json::json!({
        "revision": snap.revision(),
        "synced": snap.is_synced(),
        "objects": objects,
        "errors": errors,
    })
}

/// Where a service reports what its own analysis finds about the config objects in force
/// (a reference that does not resolve, a policy that makes workloads fail closed): shown on
/// `/debug/configz` and, on Kubernetes with status writes, written to each object's
/// `status.validationMessages` until it no longer holds.
#[derive(Debug, Clone)]
pub struct FindingsReporter {
    tx: Arc<watch::Sender<Arc<Findings>>>,
}

// === impl FindingsReporter ===

impl FindingsReporter {
    fn new() -> (FindingsReporter, watch::Receiver<Arc<Findings>>) {
        let (tx, rx) = watch::channel(Arc::new(Findings::new()));
        (FindingsReporter { tx: Arc::new(tx) }, rx)
    }

    /// Replaces what was reported before with `findings` (every object's; an object left out
    /// has none). Nothing is rewritten when they are unchanged.
    pub fn report(&self, findings: Findings) {
        self.tx.send_if_modified(|current| {
            if **current == findings {
                return false;
            }
            *current = Arc::new(findings);
            true
        });
    }
}

/// The parts every service starts with: readiness, metrics registry and config store.
#[derive(Debug)]
pub struct Base {
    pub readiness: crate::Readiness,
    pub registry: prometheus_client::registry::Registry,
    pub store: Arc<dyn ConfigStore>,
    /// The findings reported through [`Base::start_with_analysis`]'s reporter.
    findings: Option<watch::Receiver<Arc<Findings>>>,
}

impl std::fmt::Debug for dyn ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigStore")
    }
}

// === impl Base ===

impl Base {
    /// Opens the config store and registers the `config` readiness condition and the
    /// `istio_build` metric for `component`. `write_status`: on Kubernetes, say in each
    /// refused Istio object's status why it was refused (`--enable-status`).
    pub async fn start(
        component: &str,
        source: &ConfigSource,
        kinds: Vec<(Kind, String)>,
        validator: Option<SharedValidator>,
        write_status: bool,
        shutdown: Shutdown,
    ) -> Result<Self, ServiceError> {
        Self::open(
            component,
            source,
            kinds,
            validator,
            write_status,
            None,
            shutdown,
        )
        .await
    }

    /// [`Base::start`] for a service that analyses the config it serves: what it reports
    /// is on `/debug/configz` and, with `write_status` on Kubernetes, in each object's
    /// status (the store then owns the analysis messages of the objects it watches).
    pub async fn start_with_analysis(
        component: &str,
        source: &ConfigSource,
        kinds: Vec<(Kind, String)>,
        validator: Option<SharedValidator>,
        write_status: bool,
        shutdown: Shutdown,
    ) -> Result<(Self, FindingsReporter), ServiceError> {
        let (reporter, rx) = FindingsReporter::new();
        let base = Self::open(
            component,
            source,
            kinds,
            validator,
            write_status,
            Some(rx),
            shutdown,
        )
        .await?;
        Ok((base, reporter))
    }

    async fn open(
        component: &str,
        source: &ConfigSource,
        kinds: Vec<(Kind, String)>,
        validator: Option<SharedValidator>,
        write_status: bool,
        findings: Option<watch::Receiver<Arc<Findings>>>,
        shutdown: Shutdown,
    ) -> Result<Self, ServiceError> {
        let readiness = crate::Readiness::default();
        let config_ready = readiness.condition("config");
        let mut registry = prometheus_client::registry::Registry::default();
        crate::monitoring::register_build_info(&mut registry, component);
        let options = KubeOptions {
            write_status,
            findings: findings.clone(),
        };
        let store = source
            .open_with(kinds, validator, options, shutdown.clone())
            .await?;
        track_readiness(store.subscribe(), config_ready, shutdown);
        Ok(Self {
            readiness,
            registry,
            store,
            findings,
        })
    }

    /// Serves `/ready`, `/metrics`, `/debug/configz` and `routes` on `listener` until
    /// `shutdown`.
    pub async fn serve_monitoring(
        self,
        listener: tokio::net::TcpListener,
        routes: Router,
        shutdown: Shutdown,
    ) -> Result<(), crate::monitoring::MonitoringError> {
        let app = crate::monitoring::router(self.readiness, Arc::new(self.registry))
            .merge(configz_routes(self.store.subscribe(), self.findings))
            .merge(routes);
        crate::monitoring::serve(listener, app, shutdown).await
    }
}
