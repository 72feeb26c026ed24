//! Mixer: the mesh's policy and telemetry hub. Proxies ask it before a request (Check, Quota)
//! and report to it after (Report); operators wire request attributes to in-process adapters
//! with Istio's `rule`, `handler` and `instance` resources.
//!
//! - [`attribute`]: value types, bags and the vocabulary from attribute manifests.
//! - [`expr`]: CEXL, compiled and type-checked when config loads.
//! - [`config`]: the config store's Mixer objects compiled into a [`config::Resolved`].
//! - [`dispatch`]: rules to handlers for checks, quotas and reports.
//! - [`adapter`]: the in-process adapters.
//! - [`graph`]: the mesh's topology from the reports, served on the monitoring port
//!   (`/graph`, `/graph.json`).
//! - [`server`]: the gRPC front doors (Envoy's ext_authz v3, access-log service v3 and rate
//!   limit service v3; Mixer's own `istio.mixer.v1`).
//!
//! The binary is a thin `main.rs` over [`run`]. Configuration comes from a watched directory of
//! Istio YAML (the embedded default) or from the Kubernetes API server.

pub mod adapter;
pub mod attribute;
pub mod config;
pub mod dispatch;
pub mod expr;
pub mod graph;
pub mod server;
pub mod settings;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::routing::get;
use mesh_runtime::monitoring;
use mesh_runtime::service::{Base, ConfigSource};
use mesh_runtime::{Shutdown, Snapshot};

use crate::adapter::AdapterEnv;
use crate::adapter::prometheus::PrometheusEnv;
use crate::config::{CompileOptions, Compiler};
use crate::dispatch::{Dispatcher, Metrics};
pub use settings::{Cli, Command, Settings};

/// Runs Mixer (or its `validate` subcommand) until `shutdown`.
pub async fn run(mut cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    if let Some(Command::Validate { files }) = cli.command.take() {
        let ns = cli
            .config_default_namespace
            .clone()
            .unwrap_or_else(|| config::DEFAULT_CONFIG_NAMESPACE.to_string());
        let problems = validate(&files, &ns);
        for p in &problems {
            println!("{p}");
        }
        if problems.is_empty() {
            return Ok(());
        }
        std::process::exit(1);
    }
    let settings = Settings::resolve(cli)?;
    tracing::info!(?settings, "starting mixer");
    // Bind first, so a port conflict fails before anything else starts.
    let http = monitoring::bind(settings.http_addr).await?;
    let grpc = server::bind(settings.grpc_addr).await?;
    let prom = monitoring::bind(settings.prometheus_addr)
        .await
        .context("binding the prometheus adapter's address")?;

    let source = ConfigSource::from_flags(settings.config_dir.clone(), settings.kubeconfig.clone());
    let mut base = Base::start(
        "mixer",
        &source,
        settings::watched_kinds(),
        None,
        settings.enable_status,
        shutdown.clone(),
    )
    .await
    .context("opening the config store")?;
    let metrics = Arc::new(Metrics::new(&mut base.registry));
    let graph = Arc::new(graph::Graph::new(settings.graph.clone()));
    graph.register(&mut base.registry);
    let prometheus = Arc::new(PrometheusEnv::default());
    let env = AdapterEnv {
        prometheus: prometheus.clone(),
        start_tasks: true,
        shutdown: shutdown.clone(),
    };
    let mut compiler = Compiler::new(
        CompileOptions {
            default_namespace: settings.config_default_namespace.clone(),
            lenient_references: false,
        },
        env,
        metrics.clone(),
    );
    // On Kubernetes the rbac adapter's kinds (rbac.istio.io) are watched by a store of their
    // own, so that Mixer's readiness never waits on them (a cluster whose ClusterRole does
    // not let Mixer read them only leaves rbac handlers without policy).
    let rbac_store = match &source {
        ConfigSource::Kubernetes(_) => {
            let store = source
                .open(adapter::rbac::watched_kinds(), None, shutdown.clone())
                .await
                .context("opening the config store of the rbac adapter")?;
            compiler.set_rbac_store(store.subscribe());
            Some(store)
        }
        ConfigSource::Directory(_) => None,
    };
    let mut rbac_rx = rbac_store.as_ref().map(|s| s.subscribe());
    let mut rx = base.store.subscribe();
    let first = rx.borrow_and_update().clone();
    let dispatcher = Arc::new(Dispatcher::new(compiler.compile(&first), metrics));
    // On Kubernetes, `kubernetesenv` handlers generate workload attributes from the pods.
    if let ConfigSource::Kubernetes(kubeconfig) = &source {
        let client = mesh_runtime::kube_client::connect(kubeconfig.as_deref())
            .await
            .context("connecting to Kubernetes for the kubernetesenv pod cache")?;
        let listed = base.readiness.condition("pods");
        dispatcher.set_pod_cache(adapter::kubernetesenv::pods::KubePodCache::start(
            client,
            Some(listed),
            shutdown.clone(),
        ));
    }
    log_refusals(&dispatcher);
    {
        let dispatcher = dispatcher.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _rbac_store = rbac_store;
            loop {
                let rbac_changed = async {
                    match rbac_rx.as_mut() {
                        Some(r) => r.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                    ok = rbac_changed => if !ok { return },
                }
                let snap = rx.borrow_and_update().clone();
                dispatcher.update(compiler.compile(&snap));
                log_refusals(&dispatcher);
            }
        });
    }

    let prom_registry = Arc::new(prometheus.registry());
    let prom_app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = prom_registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response_ok(),
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        .into_response_err(),
                }
            }
        }),
    );
    let prom_server = monitoring::serve(prom, prom_app, shutdown.clone());
    let grpc_bound = grpc
        .local_addr()
        .context("reading the gRPC server's address")?;
    let grpc_server = server::serve_with_graph(
        grpc,
        dispatcher.clone(),
        settings.graph.enabled.then(|| graph.clone()),
        shutdown.clone(),
    );

    let store_rx = base.store.subscribe();
    let configz_dispatcher = dispatcher.clone();
    let routes = axum::Router::new()
        .route(
            "/debug/configz",
            get(move || {
                let snap = store_rx.borrow().clone();
                let resolved = configz_dispatcher.config();
                async move { Json(configz(&snap, &resolved.to_json())) }
            }),
        )
        .route(
            "/live",
            get(move || async move {
                use axum::response::IntoResponse as _;
                match server::live::check(grpc_bound).await {
                    Ok(report) => Json(report).into_response(),
                    Err(e) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("{e}\n"),
                    )
                        .into_response(),
                }
            }),
        );
    let graph_routes = graph::http::routes(
        graph,
        graph::http::PilotDebug {
            addr: settings.pilot_debug_addr.clone(),
            timeout: std::time::Duration::from_secs(2),
        },
    );
    let app = monitoring::router(base.readiness, Arc::new(base.registry))
        .merge(routes)
        .merge(graph_routes);
    let monitoring_server = monitoring::serve(http, app, shutdown);
    tokio::try_join!(
        async { monitoring_server.await.map_err(anyhow::Error::from) },
        async { prom_server.await.context("prometheus adapter server") },
        async { grpc_server.await.map_err(anyhow::Error::from) },
    )?;
    tracing::info!("mixer stopped");
    Ok(())
}

trait IntoResponseExt {
    fn into_response_ok(self) -> axum::response::Response;
    fn into_response_err(self) -> axum::response::Response;
}

impl<T: axum::response::IntoResponse> IntoResponseExt for T {
    fn into_response_ok(self) -> axum::response::Response {
        self.into_response()
    }
    fn into_response_err(self) -> axum::response::Response {
        self.into_response()
    }
}

fn log_refusals(dispatcher: &Dispatcher) {
    let cfg = dispatcher.config();
    tracing::info!(
        revision = cfg.revision,
        rules = cfg.rules.len(),
        handlers = cfg.handlers.len(),
        instances = cfg.instances.len(),
        refused = cfg.refused.len(),
        "mixer config compiled"
    );
    for r in &cfg.refused {
        tracing::warn!(object = %r.object, error = %r.error, "mixer config refused");
    }
}

/// `/debug/configz`: the store's objects and errors, and Mixer's resolved config.
fn configz(snap: &Snapshot, resolved: &serde_json::Value) -> serde_json::Value {
    let objects: Vec<_> = snap
        .objects()
        .values()
        .map(|o| {
            serde_json::json!({
                "kind": o.key.kind.name(),
                "group": o.key.kind.group(),
                "apiVersion": o.api_version,
                "namespace": o.key.namespace,
                "name": o.key.name,
                "origin": o.origin.to_string(),
            })
        })
        .collect();
    let errors: Vec<_> = snap.errors().iter().map(|e| e.to_string()).collect();
    serde_json::json!({
        "revision": snap.revision(),
        "synced": snap.is_synced(),
        "objects": objects,
        "errors": errors,
        "mixer": resolved,
    })
}

/// Validates config files: one line per problem (none when all is valid).
///
/// Like `istioctl validate`, each object is checked on its own terms (schema, parameters,
/// expressions against the vocabulary, templates a handler supports); references to objects
/// not in these files are assumed to exist elsewhere.
pub fn validate(files: &[PathBuf], default_namespace: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut objects = BTreeMap::new();
    let mut errors = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        for r in mesh_runtime::config::parse_file(f, &text) {
            match r {
                Ok(obj) => {
                    if let Some(first) = objects.get(&obj.key) {
                        let first: &Arc<mesh_runtime::ConfigObject> = first;
                        problems.push(format!(
                            "{}: {} is already defined by {}",
                            obj.origin, obj.key, first.origin
                        ));
                    } else {
                        objects.insert(obj.key.clone(), Arc::new(obj));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
    }
    let snap = Snapshot::new(1, true, objects, errors);
    let env = AdapterEnv {
        prometheus: Arc::new(PrometheusEnv::default()),
        start_tasks: false,
        shutdown: Shutdown::new(),
    };
    let mut compiler = Compiler::new(
        CompileOptions {
            default_namespace: default_namespace.to_string(),
            lenient_references: true,
        },
        env,
        Arc::new(Metrics::default()),
    );
    let resolved = compiler.compile(&snap);
    for r in resolved.refused {
        problems.push(format!("{}: {}", r.object, r.error));
    }
    problems
}
