//! The push pipeline: config, registry and mesh changes are debounced, turned into a new
//! generation, and pushed: a full push when config or services changed, an EDS push for the
//! changed hosts when only endpoints did.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_proto::Kind;
use mesh_runtime::config::Change;
use mesh_runtime::{Shutdown, Snapshot};
use tokio::sync::watch;

use super::cache::Generation;
use super::server::{PushRequest, XdsServer};
use crate::mesh::MeshConfig;
use crate::model::jwks::{JwksResolver, JwksSet};
use crate::model::service::Resolution;
use crate::model::{PushContext, Registry};

/// Debounce settings (Istio's `PILOT_DEBOUNCE_AFTER` and `PILOT_DEBOUNCE_MAX`).
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Quiet time after the last change before pushing.
    pub after: Duration,
    /// The longest a push waits while changes keep coming.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self {
            after: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// The inputs of a generation.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub config: Arc<Snapshot>,
    pub mesh: Arc<MeshConfig>,
    pub registry: Arc<Registry>,
}

static VERSION: AtomicU64 = AtomicU64::new(0);

/// A new version string: a timestamp and a counter, unique within the process.
fn next_version() -> String {
    let n = VERSION.fetch_add(1, Ordering::Relaxed) + 1;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{ts}/{n}")
}

/// Builds the registry of the file-mode embedded default: ServiceEntries and WorkloadEntries.
pub fn registry_from(config: &Snapshot) -> Arc<Registry> {
    merged_registry(config, None)
}

/// The platform's registry (Kubernetes services, when there is one) merged with the
/// ServiceEntries and WorkloadEntries of the config; a host the platform defines wins.
pub fn merged_registry(config: &Snapshot, platform: Option<&Registry>) -> Arc<Registry> {
    let (entries, warnings) = Registry::from_config(config);
    for w in warnings {
        tracing::warn!("{w}");
    }
    match platform {
        Some(p) => {
            let mut merged = p.clone();
            merged.merge(entries);
            Arc::new(merged)
        }
        None => Arc::new(entries),
    }
}

/// The platform registry's updates: Kubernetes, or nothing in file mode.
pub type PlatformRx = watch::Receiver<Option<Arc<Registry>>>;

/// Builds a generation from inputs.
pub fn build(inputs: &Inputs, server_metrics: Option<&super::XdsMetrics>) -> Generation {
    build_with_jwks(inputs, Arc::default(), server_metrics)
}

/// Builds a generation from inputs and the JWKS fetched for them.
pub fn build_with_jwks(
    inputs: &Inputs,
    jwks: Arc<JwksSet>,
    server_metrics: Option<&super::XdsMetrics>,
) -> Generation {
    let started = Instant::now();
    let ctx = PushContext::new(
        next_version(),
        &inputs.config,
        inputs.registry.clone(),
        inputs.mesh.clone(),
    )
    .with_jwks(jwks);
    if let Some(m) = server_metrics {
        m.context_built(started.elapsed());
    }
    Generation::new(Arc::new(ctx))
}

/// What kind of push a change needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    None,
    Full,
    Eds(BTreeSet<String>),
}

/// Decides the push from old and new inputs.
pub fn classify(old: &Inputs, new: &Inputs) -> PushKind {
    if old.mesh != new.mesh {
        return PushKind::Full;
    }
    let changes = new.config.diff(&old.config);
    let registry_kinds = [Kind::ServiceEntry, Kind::WorkloadEntry];
    let other_config = changes.iter().any(|c| {
        let key = match c {
            Change::Added(k) | Change::Updated(k) | Change::Removed(k) => k,
        };
        !registry_kinds.contains(&key.kind) && key.kind != Kind::ServiceAccount
    });
    if other_config {
        return PushKind::Full;
    }
    let diff = new.registry.diff(&old.registry);
    if diff.services_changed {
        return PushKind::Full;
    }
    if diff.endpoints_changed.is_empty() {
        return PushKind::None;
    }
    // Endpoints of DNS services live in CDS, not EDS.
    let in_cds = diff.endpoints_changed.iter().any(|h| {
        new.registry
            .service(h)
            .is_some_and(|s| s.resolution != Resolution::Static)
    });
    if in_cds {
        PushKind::Full
    } else {
        PushKind::Eds(diff.endpoints_changed)
    }
}

/// Runs the pipeline until `shutdown`: watches the config store and the mesh config, and
/// pushes what changed to `server`. With `jwks`, the `jwksUri`s of the config are fetched
/// before a push needs them, and a refresh that finds new keys is a full push.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    server: XdsServer,
    mut inputs: Inputs,
    mut config_rx: watch::Receiver<Arc<Snapshot>>,
    mut mesh_rx: watch::Receiver<Arc<MeshConfig>>,
    platform_rx: Option<PlatformRx>,
    jwks: Option<Arc<JwksResolver>>,
    debounce: Debounce,
    shutdown: Shutdown,
) {
    // In file mode a channel that never changes stands in for the platform.
    let (_keep, idle) = watch::channel(None);
    let mut platform_rx = platform_rx.unwrap_or(idle);
    let (_keep_jwks, idle_jwks) = watch::channel(Arc::default());
    let mut jwks_rx = jwks.as_ref().map_or(idle_jwks, |r| r.subscribe());
    let mut keys: Arc<JwksSet> = jwks_rx.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = config_rx.changed() => if r.is_err() { return },
            r = mesh_rx.changed() => if r.is_err() { return },
            r = platform_rx.changed() => if r.is_err() { return },
            r = jwks_rx.changed() => if r.is_err() { return },
        }
        let first_change = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(debounce.after) => break,
                r = config_rx.changed() => if r.is_err() { return },
                r = mesh_rx.changed() => if r.is_err() { return },
                r = platform_rx.changed() => if r.is_err() { return },
                r = jwks_rx.changed() => if r.is_err() { return },
            }
            if first_change.elapsed() >= debounce.max {
                break;
            }
        }
        let config = config_rx.borrow_and_update().clone();
        let mesh = mesh_rx.borrow_and_update().clone();
        let platform = platform_rx.borrow_and_update().clone();
        let next = Inputs {
            registry: merged_registry(&config, platform.as_deref()),
            config,
            mesh,
        };
        jwks_rx.borrow_and_update();
        let next_keys = match &jwks {
            Some(r) => {
                r.resolve(&crate::model::authn::jwks_uris(&next.config))
                    .await
            }
            None => Arc::default(),
        };
        let kind = if next_keys != keys {
            PushKind::Full
        } else {
            classify(&inputs, &next)
        };
        keys = next_keys;
        match kind {
            PushKind::None => {}
            PushKind::Full => {
                let generation = build_with_jwks(&next, keys.clone(), Some(server.metrics()));
                tracing::info!(version = generation.version(), "full push");
                server.push(
                    generation,
                    PushRequest {
                        full: true,
                        eds_hosts: BTreeSet::new(),
                        start: first_change,
                    },
                );
            }
            PushKind::Eds(hosts) => {
                let ctx = PushContext::new(
                    next_version(),
                    &next.config,
                    next.registry.clone(),
                    next.mesh.clone(),
                )
                .with_jwks(keys.clone());
                let generation = server.current().with_new_endpoints(Arc::new(ctx), &hosts);
                tracing::info!(version = generation.version(), hosts = ?hosts, "EDS push");
                server.push(
                    generation,
                    PushRequest {
                        full: false,
                        eds_hosts: hosts,
                        start: first_change,
                    },
                );
            }
        }
        inputs = next;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Endpoint, Port, Protocol, Service};

    fn inputs(ready: &[&str]) -> Inputs {
        let mut registry = Registry::default();
        let endpoints = ready
            .iter()
            .map(|ip| Endpoint {
                address: ip.to_string(),
                port: 9080,
                labels: BTreeMap::from([("app".into(), "ratings".into())]),
                service_account: None,
                locality: None,
                weight: None,
            })
            .collect();
        registry.add(
            Service {
                hostname: "ratings.default.svc.cluster.local".into(),
                namespace: "default".into(),
                addresses: vec!["10.96.0.10".into()],
                ports: vec![Port {
                    name: "http".into(),
                    number: 9080,
                    protocol: Protocol::Http,
                    target_port: None,
                }],
                resolution: Resolution::Static,
                mesh_external: false,
                export_to: Vec::new(),
            },
            BTreeMap::from([(9080, endpoints)]),
        );
        Inputs {
            config: Arc::new(Snapshot::default()),
            mesh: Arc::new(MeshConfig::default()),
            registry: Arc::new(registry),
        }
    }

    /// Istio's push-storm bug: an endpoint going not ready and back must never be a full push.
    #[test]
    fn readiness_flaps_are_eds_pushes() {
        let both = inputs(&["127.1.0.1", "127.1.0.2"]);
        let one = inputs(&["127.1.0.1"]);
        let host = BTreeSet::from(["ratings.default.svc.cluster.local".to_string()]);
        assert_eq!(classify(&both, &one), PushKind::Eds(host.clone()));
        assert_eq!(classify(&one, &both), PushKind::Eds(host));
        assert_eq!(classify(&both, &both), PushKind::None);
        let mut changed = inputs(&["127.1.0.1"]);
        changed.mesh = Arc::new(MeshConfig {
            proxy_http_port: 15080,
            ..Default::default()
        });
        assert_eq!(classify(&one, &changed), PushKind::Full);
    }
}
