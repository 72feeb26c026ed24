//! Pilot's command line and settings file.

use std::net::SocketAddr;
use std::path::PathBuf;

use mesh_proto::Kind;
use mesh_runtime::cli::{BinaryCli, CommonArgs};
use serde::Deserialize;

/// Pilot: serves Envoy configuration (xDS v3) for an Istio service mesh.
///
/// Reads services and Istio traffic config from a directory of YAML (`--config-dir`) or from
/// Kubernetes, and serves them to Envoy proxies. Every flag can also be set by an environment
/// variable (shown below) or in the `--config` file.
#[derive(Debug, clap::Parser)]
#[command(name = "pilot", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Directory of Istio YAML to serve instead of Kubernetes (watched for changes).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Kubeconfig to use when no --config-dir is given (default: KUBECONFIG or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of the monitoring server (/ready, /metrics, /debug/*) [default: 0.0.0.0:15014].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
}

/// The settings file: the same settings as the flags, in camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSettings {
    config_dir: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
}

/// Pilot's settings, resolved from flags, environment, settings file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub http_addr: SocketAddr,
}

impl BinaryCli for Cli {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

// === impl Settings ===

impl Settings {
    /// Flags (and environment) win over the settings file, which wins over defaults.
    pub fn resolve(cli: Cli) -> Result<Self, mesh_runtime::settings::SettingsError> {
        let file: FileSettings = mesh_runtime::settings::load(cli.common.config.as_deref())?;
        Ok(Self {
            config_dir: cli.config_dir.or(file.config_dir),
            kubeconfig: cli.kubeconfig.or(file.kubeconfig),
            http_addr: cli
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 15014).into()),
        })
    }
}

/// The kinds Pilot watches on Kubernetes, with the version it reads them at.
pub fn watched_kinds() -> Vec<(Kind, String)> {
    [
        Kind::ServiceEntry,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::Sidecar,
        Kind::WorkloadEntry,
    ]
    .into_iter()
    .map(|k| (k, "v1alpha3".to_string()))
    .collect()
}
