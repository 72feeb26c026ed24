//! Mixer's command line and settings file.

use std::net::SocketAddr;
use std::path::PathBuf;

use mesh_proto::Kind;
use mesh_proto::types::Duration as IstioDuration;
use mesh_runtime::cli::{BinaryCli, CommonArgs};
use serde::Deserialize;

use crate::graph::{GraphError, GraphSettings};

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    File(#[from] mesh_runtime::settings::SettingsError),
    #[error("mixer settings: {0}")]
    Graph(#[from] GraphError),
}

/// Mixer: policy checks, quotas and telemetry for an Istio service mesh.
///
/// Reads Istio's Mixer config (rules, handlers, instances, attribute manifests) from a directory
/// of YAML (`--config-dir`) or from Kubernetes. Every flag can also be set by an environment
/// variable (shown below) or in the `--config` file.
#[derive(Debug, clap::Parser)]
#[command(name = "mixer", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Directory of YAML to read Istio's Mixer config from instead of Kubernetes (watched for changes).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Kubeconfig to use when no --config-dir is given (default: KUBECONFIG or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of the monitoring server (/ready, /metrics, /debug/*) [default: 0.0.0.0:15014].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Address of the gRPC server (ext_authz v3, access-log service v3) [default: 0.0.0.0:9091].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Address the prometheus adapter serves /metrics on [default: 0.0.0.0:42422].
    #[arg(long, value_name = "ADDR")]
    pub prometheus_addr: Option<SocketAddr>,

    /// Namespace whose rules apply to every request [default: istio-system].
    #[arg(long, value_name = "NAMESPACE")]
    pub config_default_namespace: Option<String>,

    /// On Kubernetes, write why an Istio object is refused into its status
    /// (`validationMessages` and a `Reconciled` condition), only when that changes
    /// [default: true]. Istio leaves this off because its webhook refuses such objects first;
    /// without a webhook, the status is where a `kubectl` user sees why an object is ignored.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub enable_status: Option<bool>,

    /// Keep the mesh's topology from the reports Mixer receives and serve it on the
    /// monitoring address (`/graph`, `/graph.json`) [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub graph: Option<bool>,

    /// How far back the topology graph keeps its 10s buckets: the longest window it can show,
    /// from 10s to 24h [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub graph_retention: Option<IstioDuration>,

    /// Most edges the topology graph keeps; reports of new edges beyond it are counted in
    /// `mixer_graph_dropped_entries_total` [default: 10000].
    #[arg(long, value_name = "N")]
    pub graph_max_edges: Option<usize>,

    /// Most nodes (workloads and services) the topology graph keeps [default: 5000].
    #[arg(long, value_name = "N")]
    pub graph_max_nodes: Option<usize>,

    /// Pilot's monitoring address (`host:port`), whose `/debug/configz` gives the routing
    /// config the topology page shows for an edge [default: istio-pilot.istio-system:15014].
    #[arg(long, value_name = "HOST:PORT")]
    pub pilot_debug_addr: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validates Mixer config files (like `istioctl validate`): exits 0 when every object is
    /// valid, otherwise prints one line per problem and exits 1. Unknown kinds of Istio's API
    /// groups are problems (the nearest known kind is named); documents of other groups
    /// (Deployments, Services, ...) are skipped.
    Validate {
        /// Files to validate.
        #[arg(short = 'f', long = "filename", value_name = "FILE", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
}

/// The settings file: the same settings as the flags, in camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSettings {
    config_dir: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    prometheus_addr: Option<SocketAddr>,
    config_default_namespace: Option<String>,
    enable_status: Option<bool>,
    graph: Option<bool>,
    graph_retention: Option<IstioDuration>,
    graph_max_edges: Option<usize>,
    graph_max_nodes: Option<usize>,
    pilot_debug_addr: Option<String>,
}

/// Mixer's settings, resolved from flags, environment, settings file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub prometheus_addr: SocketAddr,
    pub config_default_namespace: String,
    /// Write refusals into Istio objects' status on Kubernetes.
    pub enable_status: bool,
    /// The topology graph's store.
    pub graph: GraphSettings,
    /// Pilot's monitoring address, for the routing config of the graph's edges.
    pub pilot_debug_addr: String,
}

impl BinaryCli for Cli {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

// === impl Settings ===

impl Settings {
    /// Flags (and environment) win over the settings file, which wins over defaults.
    pub fn resolve(cli: Cli) -> Result<Self, SettingsError> {
        let file: FileSettings = mesh_runtime::settings::load(cli.common.config.as_deref())?;
        let defaults = GraphSettings::default();
        let graph = GraphSettings {
            enabled: cli.graph.or(file.graph).unwrap_or(defaults.enabled),
            retention: cli
                .graph_retention
                .or(file.graph_retention)
                .map(|d| d.as_std())
                .unwrap_or(defaults.retention),
            max_edges: cli
                .graph_max_edges
                .or(file.graph_max_edges)
                .unwrap_or(defaults.max_edges),
            max_nodes: cli
                .graph_max_nodes
                .or(file.graph_max_nodes)
                .unwrap_or(defaults.max_nodes),
            ..defaults
        };
        graph.validate()?;
        let pilot_debug_addr = cli
            .pilot_debug_addr
            .or(file.pilot_debug_addr)
            .unwrap_or_else(|| "istio-pilot.istio-system:15014".to_string());
        if pilot_debug_addr.is_empty() || pilot_debug_addr.contains('/') {
            return Err(SettingsError::Graph(GraphError::Settings {
                field: "pilotDebugAddr",
                message: format!("{pilot_debug_addr:?} is not host:port"),
            }));
        }
        Ok(Self {
            config_dir: cli.config_dir.or(file.config_dir),
            kubeconfig: cli.kubeconfig.or(file.kubeconfig),
            http_addr: cli
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 15014).into()),
            grpc_addr: cli
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 9091).into()),
            prometheus_addr: cli
                .prometheus_addr
                .or(file.prometheus_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 42422).into()),
            config_default_namespace: cli
                .config_default_namespace
                .or(file.config_default_namespace)
                .unwrap_or_else(|| crate::config::DEFAULT_CONFIG_NAMESPACE.to_string()),
            enable_status: cli.enable_status.or(file.enable_status).unwrap_or(true),
            graph,
            pilot_debug_addr,
        })
    }
}

/// The kinds Mixer watches on Kubernetes, with the version it reads them at.
pub fn watched_kinds() -> Vec<(Kind, String)> {
    let mut kinds = vec![
        "rule",
        "handler",
        "instance",
        "attributemanifest",
        "QuotaSpec",
        "QuotaSpecBinding",
    ];
    for (adapter, _) in crate::adapter::ADAPTERS {
        kinds.push(adapter);
    }
    for (template, _, _) in crate::config::templates::TEMPLATES {
        kinds.push(template);
    }
    kinds
        .into_iter()
        .filter_map(|k| Kind::from_api_version("config.istio.io/v1alpha2", k).ok())
        .map(|kind| (kind, "v1alpha2".to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_settings_file_is_one_mixer_reads() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/install/mixer.yaml"
        );
        let cli: Cli =
            mesh_runtime::cli::try_parse_from("MIXER_TEST", ["mixer", "--config", file]).unwrap();
        let s = Settings::resolve(cli).unwrap();
        assert_eq!(s.grpc_addr.port(), 9091);
        assert_eq!(s.http_addr.port(), 15014);
        assert_eq!(s.prometheus_addr.port(), 42422);
        assert_eq!(s.config_default_namespace, "istio-system");
        assert!(s.graph.enabled);
    }

    fn resolve(args: &[&str], file: Option<&str>) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["mixer".to_string()];
        if let Some(text) = file {
            let path = dir.path().join("mixer.yaml");
            std::fs::write(&path, text).unwrap();
            all.push("--config".into());
            all.push(path.to_str().unwrap().into());
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let cli: Cli = mesh_runtime::cli::try_parse_from("MIXER_GRAPH_TEST", all).unwrap();
        Settings::resolve(cli)
    }

    #[test]
    fn graph_settings_come_from_flags_over_the_file() {
        let s = resolve(
            &[],
            Some("graph: false\ngraphRetention: 30m\ngraphMaxEdges: 7\n"),
        )
        .unwrap();
        assert!(!s.graph.enabled);
        assert_eq!(s.graph.retention, std::time::Duration::from_secs(1800));
        assert_eq!(s.graph.max_edges, 7);
        let s = resolve(
            &["--graph", "true", "--pilot-debug-addr", "127.0.0.1:9"],
            Some("graph: false\n"),
        )
        .unwrap();
        assert!(s.graph.enabled);
        assert_eq!(s.pilot_debug_addr, "127.0.0.1:9");
        assert_eq!(s.graph.retention, std::time::Duration::from_secs(600));
    }

    #[test]
    fn bad_graph_settings_name_the_field() {
        let e = resolve(&["--graph-retention", "1s"], None).unwrap_err();
        assert!(e.to_string().contains("graphRetention"), "{e}");
        let e = resolve(&["--graph-max-edges", "0"], None).unwrap_err();
        assert!(e.to_string().contains("graphMaxEdges"), "{e}");
        let e = resolve(&[], Some("pilotDebugAddr: http://x/\n")).unwrap_err();
        assert!(e.to_string().contains("pilotDebugAddr"), "{e}");
    }
}
