//! `pilot-agent proxy sidecar|router`: the proxy container's main process (Istio's
//! `pilot-agent proxy`).
//!
//! 1. Builds the node id and metadata from the pod's Downward API environment ([`Node`]).
//! 2. The workload certificate, by `--cert-source` ([`CertMode`]):
//!    - `sds` (the default, Istio 1.1's node agent): the agent makes a key in memory, gets it
//!      signed by Citadel's CSR API (`--ca-address`, authenticated by the projected token
//!      `--token-path`, or by a Citadel-issued certificate in `--ca-client-cert-dir`) and
//!      serves it to Envoy over SDS on the Unix socket `--sds-socket` (default
//!      `/etc/istio/proxy/SDS`), see [`super::sds`]. The node metadata says `SDS: "true"`
//!      and the bootstrap has the static cluster `sds-grpc` on the socket, so Pilot's TLS
//!      contexts (`xds::generate::mtls`) name the agent's secrets `default` and `ROOTCA`.
//!      Citadel being unreachable is retried with backoff (each failure logged); Envoy runs
//!      meanwhile, and readiness stays what it is in Istio (clusters and listeners from
//!      Pilot): only mutual TLS waits for the certificate.
//!    - `files` (Istio 1.0): the mounted `istio.<sa>` secret in `--certs-dir`, whose paths go
//!      into the metadata (`TLS_CLIENT_*`/`TLS_SERVER_*`) for Envoy to read itself.
//! 3. Writes Envoy's bootstrap ([`crate::bootstrap`]) to `--config-path/envoy-rev0.json`.
//! 4. Serves the status port ([`super::status`], 15020).
//! 5. Runs Envoy with Istio's flags and supervises it ([`super::supervise`]): restarts with
//!    backoff, gives up after `--max-restarts` failures in a row (exit 1), drains on SIGTERM
//!    for `--drain-duration`, then exits 0. The status and SDS servers stop once Envoy is
//!    gone (readiness answers 503 and the certificate is still served while Envoy drains).
//!
//! Flags have Istio's names (and its 1.0 camelCase spellings as aliases, e.g.
//! `--discoveryAddress`), and each is also read from `PILOT_AGENT_FLAG_NAME`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::types::Duration as IstioDuration;
use mesh_runtime::Shutdown;
use serde_json::Value;
use tokio::sync::watch;

use super::node::{Node, NodeError, Role};
use super::sds::{self, SdsArgs, SdsError};
use super::status::{self, StatusError};
use super::supervise::{AgentState, SuperviseError, Supervisor};
use crate::bootstrap::{BootstrapError, BootstrapOptions};

/// The bootstrap's file name in `--config-path` (Istio's, for restart epoch 0: with hot
/// restart disabled every start is epoch 0).
pub const BOOTSTRAP_FILE: &str = "envoy-rev0.json";

/// The workload certificate files of Istio 1.0's mounted secret, in `--certs-dir`.
pub const CERT_FILES: [(&str, &str); 3] = [
    ("CERT_CHAIN", "cert-chain.pem"),
    ("KEY", "key.pem"),
    ("ROOT_CERT", "root-cert.pem"),
];

/// Flags of `pilot-agent proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// sidecar (next to an application) or router (a gateway).
    #[arg(value_enum)]
    pub role: Role,

    /// Pilot's xDS address (ADS over gRPC, plain text).
    #[arg(
        long,
        visible_alias = "discoveryAddress",
        value_name = "HOST:PORT",
        default_value = "istio-pilot.istio-system:15010"
    )]
    pub discovery_address: String,

    /// Envoy's admin port, on 127.0.0.1 only.
    #[arg(
        long,
        visible_alias = "proxyAdminPort",
        value_name = "PORT",
        default_value_t = 15000
    )]
    pub proxy_admin_port: u16,

    /// The agent's status port (/healthz/ready, /stats/prometheus, app probes), on all
    /// addresses; 0 for none.
    #[arg(
        long,
        visible_alias = "statusPort",
        value_name = "PORT",
        default_value_t = 15020
    )]
    pub status_port: u16,

    /// On shutdown, how long Envoy drains its listeners before it is stopped; also Envoy's
    /// --drain-time-s.
    #[arg(
        long,
        visible_alias = "drainDuration",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub drain_duration: IstioDuration,

    /// Envoy's --parent-shutdown-time-s.
    #[arg(
        long,
        visible_alias = "parentShutdownDuration",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub parent_shutdown_duration: IstioDuration,

    /// Envoy's --service-cluster [default: the bootstrap's, APP.NAMESPACE from the app label,
    /// else istio-proxy].
    #[arg(long, visible_alias = "serviceCluster", value_name = "NAME")]
    pub service_cluster: Option<String>,

    /// Envoy's worker threads (--concurrency); 0 for one per core.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub concurrency: u32,

    /// The Envoy binary.
    #[arg(
        long,
        visible_alias = "binaryPath",
        value_name = "PATH",
        default_value = "/usr/local/bin/envoy"
    )]
    pub binary_path: PathBuf,

    /// Where the bootstrap is written (envoy-rev0.json in it).
    #[arg(
        long,
        visible_alias = "configPath",
        value_name = "DIR",
        default_value = "/etc/istio/proxy"
    )]
    pub config_path: PathBuf,

    /// Envoy's log level (-l): trace, debug, info, warning, error, critical, off.
    #[arg(
        long,
        visible_alias = "proxyLogLevel",
        value_name = "LEVEL",
        default_value = "warning"
    )]
    pub proxy_log_level: String,

    /// The node id's DNS domain [default: POD_NAMESPACE.svc.cluster.local].
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// A Downward API labels file (`key="value"` lines) for the LABELS metadata, used when
    /// ISTIO_METAJSON_LABELS is not set.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,

    /// Where the workload certificate comes from. sds: a key made in memory, signed by
    /// Citadel's CSR API (--ca-address; the projected token --token-path, or
    /// --ca-client-cert-dir, proves who the pod is) and served to Envoy over SDS on the Unix
    /// socket --sds-socket (node metadata SDS=true). files: Istio 1.0's mounted istio.<sa>
    /// secret in --certs-dir, read by Envoy itself.
    #[arg(long, value_enum, value_name = "SOURCE", default_value_t = CertMode::Sds)]
    pub cert_source: CertMode,

    /// With --cert-source files: Istio 1.0's mounted workload certificate (cert-chain.pem,
    /// key.pem, root-cert.pem of the istio.<service account> secret); when the files are
    /// there, their paths go into the node metadata for Pilot's mutual TLS.
    #[arg(long, value_name = "DIR", default_value = "/etc/certs")]
    pub certs_dir: PathBuf,

    #[command(flatten)]
    pub sds: SdsArgs,

    /// App probes the status port forwards once the proxy is ready (Istio's
    /// ISTIO_KUBE_APP_PROBERS JSON: {"/app-health/NAME/readyz": {"httpGet": {"path": ...,
    /// "port": ...}}}).
    #[arg(
        long,
        value_name = "JSON",
        env = "ISTIO_KUBE_APP_PROBERS",
        default_value = ""
    )]
    pub app_probers: String,

    /// Envoy failures in a row before the agent gives up and exits 1.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_restarts: u32,

    /// The first wait before restarting Envoy; doubled after each failure in a row, up to
    /// 30s.
    #[arg(long, value_name = "DURATION", default_value = "200ms")]
    pub restart_backoff: IstioDuration,
}

/// Where the workload certificate comes from (`--cert-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertMode {
    /// Citadel's CSR API, served to Envoy over SDS on the agent's Unix socket (the default).
    Sds,
    /// Istio 1.0's mounted certificate files in --certs-dir.
    Files,
}

/// The service account of the pod (`SERVICE_ACCOUNT`, the Downward API's
/// `spec.serviceAccountName`), `default` when unset as in Kubernetes.
pub fn service_account(env: &BTreeMap<String, String>) -> String {
    env.get("SERVICE_ACCOUNT")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// What stopped the agent.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("--discovery-address / node: {0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("cannot write the bootstrap {path} (--config-path): {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("{0} (--sds-socket)")]
    Sds(#[from] SdsError),
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
}

/// The node metadata of the mounted certificate files, when all three are in `dir`.
pub fn cert_metadata(dir: &Path) -> Option<BTreeMap<String, Value>> {
    let files: Vec<(&str, PathBuf)> = CERT_FILES
        .iter()
        .map(|(key, file)| (*key, dir.join(file)))
        .collect();
    if !files.iter().all(|(_, p)| p.is_file()) {
        return None;
    }
    let mut meta = BTreeMap::new();
    for side in ["CLIENT", "SERVER"] {
        for (key, path) in &files {
            meta.insert(
                format!("TLS_{side}_{key}"),
                Value::String(path.display().to_string()),
            );
        }
    }
    Some(meta)
}

/// The node and bootstrap of these flags and environment.
pub fn build_bootstrap(
    args: &ProxyArgs,
    env: &BTreeMap<String, String>,
) -> Result<(Node, Value), ProxyError> {
    let mut node = Node::from_env(
        args.role,
        env,
        args.domain.as_deref(),
        args.labels_file.as_deref(),
    )?;
    if args.cert_source == CertMode::Files {
        match cert_metadata(&args.certs_dir) {
            Some(meta) => {
                tracing::info!(dir = %args.certs_dir.display(), "workload certificate files found");
                for (k, v) in meta {
                    node.metadata.entry(k).or_insert(v);
                }
            }
            None => tracing::warn!(
                dir = %args.certs_dir.display(),
                "no workload certificate in --certs-dir (cert-chain.pem, key.pem, root-cert.pem): mutual TLS will not work"
            ),
        }
    }
    let mut bootstrap = crate::bootstrap::bootstrap(&BootstrapOptions {
        node_id: node.id.clone(),
        xds_address: args.discovery_address.clone(),
        admin_port: args.proxy_admin_port,
        delta: false,
        metadata: node.metadata.clone(),
        status_port: None,
    })?;
    if args.cert_source == CertMode::Sds {
        // Metadata SDS: "true" and the static cluster sds-grpc on the socket.
        (args.sds.bootstrap_edit())(&mut bootstrap);
        let sds_meta = &bootstrap["node"]["metadata"][crate::xds::generate::mtls::META_SDS];
        node.metadata.insert(
            crate::xds::generate::mtls::META_SDS.into(),
            sds_meta.clone(),
        );
    }
    Ok((node, bootstrap))
}

/// Envoy's command line (Istio's flags).
pub fn envoy_args(args: &ProxyArgs, node: &Node, config: &Path) -> Vec<String> {
    let mut out = vec![
        "-c".to_string(),
        config.display().to_string(),
        "--disable-hot-restart".into(),
        "--drain-time-s".into(),
        secs(args.drain_duration.as_std()),
        "--parent-shutdown-time-s".into(),
        secs(args.parent_shutdown_duration.as_std()),
        "--service-node".into(),
        node.id.clone(),
        "-l".into(),
        args.proxy_log_level.clone(),
        "--concurrency".into(),
        args.concurrency.to_string(),
    ];
    if let Some(cluster) = &args.service_cluster {
        out.extend(["--service-cluster".into(), cluster.clone()]);
    }
    out
}

/// Whole seconds, at least 1.
fn secs(d: Duration) -> String {
    d.as_secs().max(1).to_string()
}

/// Writes `text` to `path` through a temp file and a rename.
fn write_atomic(path: &Path, text: &str) -> Result<(), ProxyError> {
    let err = |source| ProxyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The running SDS side of `--cert-source sds`: the certificate source and the server on
/// the socket, both stopped by `stop`.
struct SdsServer {
    socket: PathBuf,
    stop: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

// === impl SdsServer ===

impl SdsServer {
    /// Binds the socket (before Envoy starts, so its first connection finds it) and starts
    /// fetching the certificate for `namespace`/`service_account`.
    fn start(args: &SdsArgs, namespace: &str, service_account: &str) -> Result<Self, SdsError> {
        let listener = sds::bind(&args.sds_socket)?;
        let source = args.source(namespace, service_account);
        let identity = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            args.trust_domain
        );
        tracing::info!(
            %identity,
            ca = %args.ca_address,
            socket = %args.sds_socket.display(),
            "getting the workload certificate from the CA, for Envoy over SDS"
        );
        let stop = Shutdown::new();
        let (tx, rx) = watch::channel(None);
        let mut first = rx.clone();
        let tasks = vec![
            tokio::spawn(source.run(tx, stop.clone())),
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    if let Err(e) = sds::serve_on(listener, rx, stop).await {
                        tracing::error!(error = %e, "SDS server failed");
                    }
                }
            }),
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        got = async { first.wait_for(Option::is_some).await.is_ok() } => if got {
                            tracing::info!(%identity, "workload certificate ready; serving it over SDS");
                        }
                    }
                }
            }),
        ];
        Ok(SdsServer {
            socket: args.sds_socket.clone(),
            stop,
            tasks,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "SDS task failed");
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `pilot-agent proxy`: runs until `shutdown` (exit 0 after draining) or until Envoy cannot
/// be kept running.
pub async fn run(
    args: ProxyArgs,
    env: BTreeMap<String, String>,
    shutdown: Shutdown,
) -> Result<(), ProxyError> {
    let (node, bootstrap) = build_bootstrap(&args, &env)?;
    let probers = status::parse_probers(&args.app_probers)?;
    let config = args.config_path.join(BOOTSTRAP_FILE);
    let text = serde_json::to_string_pretty(&bootstrap).unwrap_or_default() + "\n";
    write_atomic(&config, &text)?;
    tracing::info!(node = %node.id, bootstrap = %config.display(), pilot = %args.discovery_address, "bootstrap written");

    let sds_server = match args.cert_source {
        CertMode::Sds => Some(SdsServer::start(
            &args.sds,
            &node.namespace,
            &service_account(&env),
        )?),
        CertMode::Files => None,
    };

    let state = Arc::new(AgentState::new(args.proxy_admin_port));
    // The status server outlives the shutdown signal: it answers 503 while Envoy drains and
    // stops once Envoy is gone.
    let status_stop = Shutdown::new();
    let status_task = if args.status_port != 0 {
        let listener = match status::bind(SocketAddr::from(([0, 0, 0, 0], args.status_port))).await
        {
            Ok(l) => l,
            Err(e) => {
                if let Some(s) = sds_server {
                    s.stop().await;
                }
                return Err(e.into());
            }
        };
        Some(tokio::spawn(status::serve(
            listener,
            state.clone(),
            probers,
            status_stop.clone(),
        )))
    } else {
        None
    };

    let restart_backoff = args.restart_backoff.as_std().max(Duration::from_millis(1));
    let supervisor = Supervisor {
        binary: args.binary_path.clone(),
        args: envoy_args(&args, &node, &config),
        max_restarts: args.max_restarts,
        initial_backoff: restart_backoff,
        max_backoff: Duration::from_secs(30).max(restart_backoff),
        stable_after: Duration::from_secs(60),
        drain_duration: args.drain_duration.as_std(),
        quit_timeout: Duration::from_secs(5),
    };
    let result = supervisor.run(state, shutdown).await;
    status_stop.cancel();
    if let Some(task) = status_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "status server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "status server task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(s) = sds_server {
        s.stop().await;
    }
    result?;
    tracing::info!("Envoy drained and stopped; exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    fn parse(flags: &[&str]) -> ProxyArgs {
        Cli::try_parse_from(std::iter::once("proxy").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    fn env() -> BTreeMap<String, String> {
        [
            ("POD_NAME", "productpage-v1-x"),
            ("POD_NAMESPACE", "default"),
            ("INSTANCE_IP", "10.0.0.7"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"productpage"}"#),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn istio_defaults_and_envoy_flags() {
        let a = parse(&["sidecar"]);
        assert_eq!(a.discovery_address, "istio-pilot.istio-system:15010");
        assert_eq!(a.proxy_admin_port, 15000);
        assert_eq!(a.status_port, 15020);
        assert_eq!(a.drain_duration.as_std(), Duration::from_secs(5));
        assert_eq!(a.cert_source, CertMode::Sds);
        let (node, bootstrap) = build_bootstrap(&a, &env()).unwrap();
        assert_eq!(
            node.id,
            "sidecar~10.0.0.7~productpage-v1-x.default~default.svc.cluster.local"
        );
        assert_eq!(bootstrap["node"]["cluster"], "productpage.default");
        assert_eq!(
            bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
                [0]["endpoint"]["address"]["socket_address"]["address"],
            "istio-pilot.istio-system"
        );
        let flags = envoy_args(&a, &node, Path::new("/etc/istio/proxy/envoy-rev0.json"));
        assert_eq!(
            flags.join(" "),
            "-c /etc/istio/proxy/envoy-rev0.json --disable-hot-restart --drain-time-s 5 \
             --parent-shutdown-time-s 60 --service-node \
             sidecar~10.0.0.7~productpage-v1-x.default~default.svc.cluster.local -l warning \
             --concurrency 2"
        );

        // Istio 1.0's spellings.
        let a = parse(&[
            "router",
            "--discoveryAddress",
            "pilot:15010",
            "--drainDuration",
            "45s",
            "--serviceCluster",
            "istio-ingressgateway",
        ]);
        let (node, _) = build_bootstrap(&a, &env()).unwrap();
        assert!(node.id.starts_with("router~"), "{}", node.id);
        let flags = envoy_args(&a, &node, Path::new("/x.json")).join(" ");
        assert!(flags.contains("--drain-time-s 45"), "{flags}");
        assert!(
            flags.ends_with("--service-cluster istio-ingressgateway"),
            "{flags}"
        );
    }

    #[test]
    fn mounted_certificates_go_into_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().display().to_string();
        let a = parse(&["sidecar", "--cert-source", "files", "--certs-dir", &certs]);
        let (node, _) = build_bootstrap(&a, &env()).unwrap();
        assert!(!node.metadata.contains_key("TLS_CLIENT_KEY"));
        for (_, f) in CERT_FILES {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let (node, bootstrap) = build_bootstrap(&a, &env()).unwrap();
        assert!(!node.metadata.contains_key("SDS"));
        let clusters = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap();
        assert!(clusters.iter().all(|c| c["name"] != "sds-grpc"));
        assert_eq!(
            node.metadata["TLS_CLIENT_KEY"],
            format!("{certs}/key.pem").as_str()
        );
        assert_eq!(
            bootstrap["node"]["metadata"]["TLS_SERVER_ROOT_CERT"],
            format!("{certs}/root-cert.pem").as_str()
        );
        // What Pilot's mtls reads back.
        let proxy = crate::model::Proxy::from_node(&node.id, node.metadata.clone()).unwrap();
        let files = crate::xds::generate::mtls::CertFiles::client(&proxy);
        assert_eq!(files.cert_chain, format!("{certs}/cert-chain.pem"));
    }

    #[test]
    fn sds_by_default_names_the_socket_and_not_the_files() {
        let dir = tempfile::tempdir().unwrap();
        for (_, f) in CERT_FILES {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let certs = dir.path().display().to_string();
        let a = parse(&[
            "sidecar",
            "--certs-dir",
            &certs,
            "--sds-socket",
            "/run/a/SDS",
        ]);
        let (node, bootstrap) = build_bootstrap(&a, &env()).unwrap();
        assert_eq!(node.metadata["SDS"], "true");
        assert_eq!(bootstrap["node"]["metadata"]["SDS"], "true");
        assert!(!node.metadata.contains_key("TLS_CLIENT_KEY"));
        let sds = &bootstrap["static_resources"]["clusters"][1];
        assert_eq!(sds["name"], "sds-grpc");
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
                ["path"],
            "/run/a/SDS"
        );
        // What Pilot reads back: the agent's secrets.
        let proxy = crate::model::Proxy::from_node(&node.id, node.metadata.clone()).unwrap();
        assert!(crate::xds::generate::mtls::agent_sds(&proxy));
        // The identity asked for comes from the pod's namespace and service account.
        let mut e = env();
        assert_eq!(service_account(&e), "default");
        e.insert("SERVICE_ACCOUNT".into(), "productpage".into());
        let sds::CertSource::Csr(o) = a.sds.source("default", &service_account(&e)) else {
            panic!("not a CSR source");
        };
        assert_eq!(
            o.identity,
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
        assert!(Cli::try_parse_from(["proxy", "sidecar", "--cert-source", "vault"]).is_err());
    }

    #[tokio::test]
    async fn the_sds_server_binds_its_socket_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy/SDS");
        let s = socket.display().to_string();
        // Nothing listens on the CA's address: the agent keeps trying, it does not fail.
        let a = parse(&["sidecar", "--sds-socket", &s, "--ca-address", "127.0.0.1:1"]);
        let server = SdsServer::start(&a.sds, "default", "reviews").unwrap();
        assert!(socket.exists());
        tokio::net::UnixStream::connect(&socket).await.unwrap();
        server.stop().await;
        assert!(!socket.exists());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let a = parse(&["sidecar", "--discovery-address", "no-port"]);
        let err = build_bootstrap(&a, &env()).unwrap_err();
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
        let mut e = env();
        e.remove("INSTANCE_IP");
        let err = build_bootstrap(&parse(&["sidecar"]), &e).unwrap_err();
        assert!(err.to_string().contains("INSTANCE_IP is not set"), "{err}");
        assert!(Cli::try_parse_from(["proxy", "gateway"]).is_err());
        assert!(Cli::try_parse_from(["proxy", "sidecar", "--drain-duration", "soon"]).is_err());
    }
}
