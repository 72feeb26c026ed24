//! Citadel: the mesh's certificate authority. It gives every service account a SPIFFE
//! identity: a certificate issued, delivered as a secret (or files), and rotated before it
//! expires.
//!
//! The binary is a thin `main.rs` over [`run`]. Service accounts come from a watched directory
//! of YAML (the embedded default) or from the Kubernetes API server.

pub mod settings;

use anyhow::Context as _;
use mesh_runtime::Shutdown;
use mesh_runtime::monitoring;
use mesh_runtime::service::{Base, ConfigSource};

pub use settings::{Cli, Settings};

/// Runs Citadel until `shutdown`.
pub async fn run(cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = Settings::resolve(cli)?;
    tracing::info!(?settings, "starting citadel");
    // Bind first, so a port conflict fails before anything else starts.
    let http = monitoring::bind(settings.http_addr).await?;

    let source = ConfigSource::from_flags(settings.config_dir.clone(), settings.kubeconfig.clone());
    let base = Base::start("citadel", &source, settings::watched_kinds(), shutdown.clone())
        .await
        .context("opening the config store")?;

    base.serve_monitoring(http, axum::Router::new(), shutdown)
        .await?;
    tracing::info!("citadel stopped");
    Ok(())
}
