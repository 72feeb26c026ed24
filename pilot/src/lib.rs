//! Pilot: turns the mesh's services and Istio traffic config into Envoy configuration and
//! serves it to proxies over the xDS v3 API.
//!
//! The binary is a thin `main.rs` over [`run`]. Configuration comes from a watched directory of
//! Istio YAML (the embedded default) or from the Kubernetes API server.

pub mod settings;

use anyhow::Context as _;
use mesh_runtime::Shutdown;
use mesh_runtime::monitoring;
use mesh_runtime::service::{Base, ConfigSource};

pub use settings::{Cli, Settings};

/// Runs Pilot until `shutdown`.
pub async fn run(cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = Settings::resolve(cli)?;
    tracing::info!(?settings, "starting pilot");
    // Bind first, so a port conflict fails before anything else starts.
    let http = monitoring::bind(settings.http_addr).await?;

    let source = ConfigSource::from_flags(settings.config_dir.clone(), settings.kubeconfig.clone());
    let base = Base::start("pilot", &source, settings::watched_kinds(), shutdown.clone())
        .await
        .context("opening the config store")?;

    base.serve_monitoring(http, axum::Router::new(), shutdown)
        .await?;
    tracing::info!("pilot stopped");
    Ok(())
}
