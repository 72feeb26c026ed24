//! Mixer: the mesh's policy and telemetry hub. Proxies ask it before a request (Check, Quota)
//! and report to it after (Report); operators wire request attributes to in-process adapters
//! with Istio's `rule`, `handler` and `instance` resources.
//!
//! The binary is a thin `main.rs` over [`run`]. Configuration comes from a watched directory of
//! Istio YAML (the embedded default) or from the Kubernetes API server.

pub mod settings;

use anyhow::Context as _;
use mesh_runtime::Shutdown;
use mesh_runtime::monitoring;
use mesh_runtime::service::{Base, ConfigSource};

pub use settings::{Cli, Settings};

/// Runs Mixer until `shutdown`.
pub async fn run(cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = Settings::resolve(cli)?;
    tracing::info!(?settings, "starting mixer");
    // Bind first, so a port conflict fails before anything else starts.
    let http = monitoring::bind(settings.http_addr).await?;

    let source = ConfigSource::from_flags(settings.config_dir.clone(), settings.kubeconfig.clone());
    let base = Base::start("mixer", &source, settings::watched_kinds(), shutdown.clone())
        .await
        .context("opening the config store")?;

    base.serve_monitoring(http, axum::Router::new(), shutdown)
        .await?;
    tracing::info!("mixer stopped");
    Ok(())
}
