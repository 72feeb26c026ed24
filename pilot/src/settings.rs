//! Pilot's command line and settings file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::Kind;
use mesh_proto::types::Duration as IstioDuration;
use mesh_runtime::cli::{BinaryCli, CommonArgs};
use serde::Deserialize;

use crate::validate::webhook::{CaBundleKeeper, WebhookSettings};

/// Pilot: serves Envoy configuration (xDS v3) for an Istio service mesh.
///
/// Reads services and Istio traffic config from a directory of YAML (`--config-dir`) or from
/// Kubernetes, and serves them to Envoy proxies over ADS (state-of-the-world and delta). Every
/// flag can also be set by an environment variable (shown below) or in the `--config` file.
#[derive(Debug, clap::Parser)]
#[command(name = "pilot", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

/// What else pilot can do besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the Envoy bootstrap (JSON) a proxy needs to join the mesh.
    Bootstrap(BootstrapArgs),
    /// Print the Kubernetes install (manifests/install.yaml): the control plane in
    /// istio-system. Apply it after manifests/crds.yaml; `pilot check` then says whether it
    /// works.
    Manifest(ManifestArgs),
    /// Check Istio config files like `istioctl validate`: one line per problem (file, object,
    /// field); exits non-zero when there is any. A kind that is not one of the Istio API
    /// groups' (networking, config, rbac, security, authentication), or not in a version it
    /// is served in, is a problem (the nearest known kind is named); documents of other
    /// groups (Deployments, Services, ...) are skipped.
    Validate(ValidateArgs),
    /// Check the cluster like `linkerd check`: with --pre, that it is ready for
    /// manifests/install.yaml (version, permissions); without, that the installed control
    /// plane works (CRDs, Deployments, the webhook's caBundle, Citadel's root, Pilot's and
    /// Mixer's readiness, proxies' sync status). Exits non-zero when a check fails.
    Check(crate::check::CheckArgs),
    /// Inject the sidecar into the workloads of a YAML stream like `istioctl kube-inject`:
    /// the pod templates of Pods, Deployments, StatefulSets, DaemonSets, Jobs, CronJobs,
    /// ReplicaSets and ReplicationControllers get istio-init and istio-proxy; other documents
    /// pass unchanged. Says on stderr what was injected, and what was skipped and why.
    KubeInject(crate::inject::KubeInjectArgs),
}

/// Flags of `pilot manifest`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManifestArgs {
    /// Registry and repository of the images (Istio's `hub`).
    #[arg(long, value_name = "HUB", default_value = "docker.io/mesh")]
    pub hub: String,

    /// Tag of the images [default: this build's version].
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// imagePullPolicy of every container.
    #[arg(long, value_name = "POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Print manifests/telemetry.yaml (Mixer's default config, applied after the install)
    /// instead of install.yaml.
    #[arg(long)]
    pub telemetry: bool,
}

impl ManifestArgs {
    /// The generator's options.
    pub fn options(&self) -> crate::install::InstallOptions {
        let mut opts = crate::install::InstallOptions {
            hub: self.hub.clone(),
            pull_policy: self.image_pull_policy.clone(),
            ..Default::default()
        };
        if let Some(tag) = &self.tag {
            opts.tag = tag.clone();
        }
        opts
    }
}

/// Flags of `pilot validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// A YAML file to check (repeatable; `-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// Flags of `pilot` (serving).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory of Istio YAML to serve instead of Kubernetes (watched for changes).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Kubeconfig to use when no --config-dir is given (default: KUBECONFIG or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Istio MeshConfig YAML (the `mesh` key of the `istio` ConfigMap); reloaded on change.
    #[arg(long, value_name = "FILE")]
    pub mesh: Option<PathBuf>,

    /// Address of the xDS gRPC server [default: 0.0.0.0:15010].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Address of the monitoring server (/ready, /metrics, /debug/*) [default: 0.0.0.0:15014].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Quiet time after a change before pushing, e.g. 100ms [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    pub debounce_after: Option<IstioDuration>,

    /// The longest a push waits while changes keep coming [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub debounce_max: Option<IstioDuration>,

    /// How many proxies may be generating and receiving a push at once [default: 100].
    #[arg(long, value_name = "N")]
    pub push_concurrency: Option<usize>,

    /// Address of the admission webhooks (HTTPS: `/validate`, and `/inject`, the sidecar
    /// injector) [default: 0.0.0.0:15017]. Serves only when --webhook-cert and --webhook-key
    /// are given.
    #[arg(long, value_name = "ADDR")]
    pub webhook_addr: Option<SocketAddr>,

    /// PEM certificate chain the admission webhook serves (its CA goes in the
    /// ValidatingWebhookConfiguration's caBundle). Without it the webhook is off.
    #[arg(long, value_name = "FILE", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,

    /// PEM private key of --webhook-cert.
    #[arg(long, value_name = "FILE", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,

    /// On Kubernetes, the ValidatingWebhookConfiguration whose caBundle Pilot keeps equal to
    /// --webhook-ca-bundle (restored within seconds when someone changes or wipes it).
    #[arg(long, value_name = "NAME", requires = "webhook_ca_bundle")]
    pub webhook_config: Option<String>,

    /// PEM root(s) of --webhook-cert, for --webhook-config's and --injector-webhook-config's
    /// caBundle (e.g. Citadel's root-cert.pem beside the certificate). Re-read when it
    /// changes.
    #[arg(long, value_name = "FILE")]
    pub webhook_ca_bundle: Option<PathBuf>,

    /// On Kubernetes, the MutatingWebhookConfiguration of `/inject` whose caBundle Pilot keeps
    /// equal to --webhook-ca-bundle, as --webhook-config's (e.g. istio-sidecar-injector).
    #[arg(long, value_name = "NAME", requires = "webhook_ca_bundle")]
    pub injector_webhook_config: Option<String>,

    /// The injection config of the `/inject` webhook: the `config` key of ConfigMap
    /// istio-sidecar-injector as mounted (e.g. /etc/istio/inject/config), or that whole
    /// ConfigMap [default: the built-in one]. Read at start (invalid: Pilot does not start)
    /// and every 5s: an invalid new version is refused (/debug/injectz says why) and the last
    /// good one keeps serving.
    #[arg(long, value_name = "FILE")]
    pub injection_config: Option<PathBuf>,

    /// On Kubernetes, write why an Istio object is refused into its status
    /// (`validationMessages` and a `Reconciled` condition), only when that changes
    /// [default: true]. Istio leaves this off because its webhook refuses such objects first;
    /// without a webhook, the status is where a `kubectl` user sees why an object is ignored.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub enable_status: Option<bool>,

    /// How often the JWKS of RequestAuthentication and Policy `jwksUri`s are fetched again
    /// (Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL) [default: 20m]. New keys are pushed to the
    /// proxies inline; a failed fetch keeps the last good keys.
    #[arg(long, value_name = "DURATION")]
    pub jwt_pub_key_refresh_interval: Option<IstioDuration>,

    /// Load config without Pilot's semantic validation (tests only: lets config that Envoy
    /// refuses reach Envoy).
    #[arg(long, hide = true)]
    pub skip_validation: bool,
}

/// Flags of `pilot bootstrap`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// Istio node id, e.g. sidecar~10.0.0.1~reviews-v1-x.default~default.svc.cluster.local.
    #[arg(long, value_name = "ID")]
    pub node: String,

    /// Pilot's xDS address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:15010")]
    pub xds_address: String,

    /// Envoy's admin port (on 127.0.0.1).
    #[arg(long, value_name = "N", default_value_t = 15000)]
    pub admin_port: u16,

    /// Use the delta (incremental) xDS protocol.
    #[arg(long)]
    pub delta: bool,

    /// A workload label (repeatable), sent as node metadata LABELS.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub labels: Vec<(String, String)>,

    /// Node metadata (repeatable), e.g. INTERCEPTION_MODE=NONE or PROXY_HTTP_PORT=15080.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = key_value)]
    pub meta: Vec<(String, String)>,

    /// Also listen on this port (all addresses) for `/healthz/ready` (200 once Envoy is
    /// initialized) and `/stats/prometheus`, as Istio's proxies do on 15021.
    #[arg(long, value_name = "PORT")]
    pub status_port: Option<u16>,

    /// Write the bootstrap to FILE instead of stdout (e.g. an init container filling a
    /// volume Envoy reads).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// The agent serves the workload certificate over SDS on this Unix socket
    /// (`pilot-agent`'s, e.g. /etc/istio/proxy/SDS): adds the static cluster sds-grpc on it
    /// and node metadata SDS=true, so TLS contexts fetch `default` and `ROOTCA` from there.
    #[arg(long, value_name = "PATH")]
    pub sds_socket: Option<PathBuf>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// The settings file: the same settings as the flags, in camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSettings {
    config_dir: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    mesh: Option<PathBuf>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    debounce_after: Option<IstioDuration>,
    debounce_max: Option<IstioDuration>,
    push_concurrency: Option<usize>,
    webhook_addr: Option<SocketAddr>,
    webhook_cert: Option<PathBuf>,
    webhook_key: Option<PathBuf>,
    webhook_config: Option<String>,
    webhook_ca_bundle: Option<PathBuf>,
    injector_webhook_config: Option<String>,
    injection_config: Option<PathBuf>,
    enable_status: Option<bool>,
    jwt_pub_key_refresh_interval: Option<IstioDuration>,
}

/// Pilot's settings, resolved from flags, environment, settings file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub mesh: Option<PathBuf>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub debounce_after: Duration,
    pub debounce_max: Duration,
    pub push_concurrency: usize,
    pub skip_validation: bool,
    /// Write refusals into Istio objects' status on Kubernetes.
    pub enable_status: bool,
    /// The admission webhook, when a certificate and key are given.
    pub webhook: Option<WebhookSettings>,
    /// How often `jwksUri`s are fetched again.
    pub jwt_pub_key_refresh_interval: Duration,
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Load(#[from] mesh_runtime::settings::SettingsError),
    #[error(
        "webhookCert and webhookKey go together, and webhookConfig and injectorWebhookConfig need webhookCaBundle: {0} is missing"
    )]
    WebhookHalf(&'static str),
}

impl BinaryCli for Cli {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

// === impl Settings ===

impl Settings {
    /// Flags (and environment) win over the settings file, which wins over defaults.
    pub fn resolve(common: &CommonArgs, cli: ServeArgs) -> Result<Self, SettingsError> {
        let file: FileSettings = mesh_runtime::settings::load(common.config.as_deref())?;
        let webhook = match (
            cli.webhook_cert.or(file.webhook_cert),
            cli.webhook_key.or(file.webhook_key),
        ) {
            (Some(cert), Some(key)) => Some(WebhookSettings {
                addr: cli
                    .webhook_addr
                    .or(file.webhook_addr)
                    .unwrap_or_else(|| ([0, 0, 0, 0], 15017).into()),
                cert,
                key,
                keeper: match (
                    cli.webhook_config.or(file.webhook_config),
                    cli.injector_webhook_config.or(file.injector_webhook_config),
                    cli.webhook_ca_bundle.or(file.webhook_ca_bundle),
                ) {
                    (None, None, _) => None,
                    (config, injector_config, Some(ca_bundle)) => Some(CaBundleKeeper {
                        config,
                        injector_config,
                        ca_bundle,
                    }),
                    (_, _, None) => {
                        return Err(SettingsError::WebhookHalf("webhookCaBundle"));
                    }
                },
                injection_config: cli.injection_config.or(file.injection_config),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(SettingsError::WebhookHalf("webhookKey")),
            (None, Some(_)) => return Err(SettingsError::WebhookHalf("webhookCert")),
        };
        Ok(Self {
            config_dir: cli.config_dir.or(file.config_dir),
            kubeconfig: cli.kubeconfig.or(file.kubeconfig),
            mesh: cli.mesh.or(file.mesh),
            grpc_addr: cli
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 15010).into()),
            http_addr: cli
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 15014).into()),
            debounce_after: cli
                .debounce_after
                .or(file.debounce_after)
                .map(|d| d.as_std())
                .unwrap_or(Duration::from_millis(100)),
            debounce_max: cli
                .debounce_max
                .or(file.debounce_max)
                .map(|d| d.as_std())
                .unwrap_or(Duration::from_secs(10)),
            push_concurrency: cli
                .push_concurrency
                .or(file.push_concurrency)
                .unwrap_or(100),
            skip_validation: cli.skip_validation,
            enable_status: cli.enable_status.or(file.enable_status).unwrap_or(true),
            webhook,
            jwt_pub_key_refresh_interval: cli
                .jwt_pub_key_refresh_interval
                .or(file.jwt_pub_key_refresh_interval)
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero())
                .unwrap_or(crate::model::jwks::DEFAULT_REFRESH),
        })
    }
}

// === impl BootstrapArgs ===

impl BootstrapArgs {
    /// The bootstrap options these flags describe.
    pub fn options(&self) -> crate::bootstrap::BootstrapOptions {
        let mut metadata: BTreeMap<String, serde_json::Value> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, serde_json::Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            metadata.insert("LABELS".into(), serde_json::Value::Object(labels));
        }
        crate::bootstrap::BootstrapOptions {
            node_id: self.node.clone(),
            xds_address: self.xds_address.clone(),
            admin_port: self.admin_port,
            delta: self.delta,
            metadata,
            status_port: self.status_port,
        }
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
    // Mutual TLS between sidecars (security.istio.io).
    .chain([(Kind::PeerAuthentication, "v1beta1".to_string())])
    // Request authentication (JWT), and Istio 1.0's authentication policies.
    .chain([
        (Kind::RequestAuthentication, "v1beta1".to_string()),
        (Kind::AuthenticationPolicy, "v1alpha1".to_string()),
        (Kind::MeshPolicy, "v1alpha1".to_string()),
    ])
    // Authorization: AuthorizationPolicy, and Istio 1.0's RBAC (rbac.istio.io).
    .chain([(Kind::AuthorizationPolicy, "v1beta1".to_string())])
    .chain(
        [
            Kind::ServiceRole,
            Kind::ServiceRoleBinding,
            Kind::RbacConfig,
            Kind::ClusterRbacConfig,
        ]
        .into_iter()
        .map(|k| (k, "v1alpha1".to_string())),
    )
    // The routing API of Istio 0.5-0.7, converted into the same model.
    .chain(
        [Kind::RouteRule, Kind::DestinationPolicy, Kind::EgressRule]
            .into_iter()
            .map(|k| (k, "v1alpha2".to_string())),
    )
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str], file: Option<&str>) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["pilot".to_string()];
        if let Some(text) = file {
            let path = dir.path().join("settings.yaml");
            std::fs::write(&path, text).unwrap();
            argv.extend(["--config".to_string(), path.display().to_string()]);
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let cli: Cli = mesh_runtime::cli::try_parse_from("PILOT_SETTINGS_TEST", argv)
            .map_err(|e| e.to_string())?;
        Settings::resolve(&cli.common, cli.serve).map_err(|e| e.to_string())
    }

    #[test]
    fn the_injector_flags_and_settings() {
        let s = settings(
            &[
                "--webhook-cert=c",
                "--webhook-key=k",
                "--webhook-ca-bundle=r",
                "--injector-webhook-config=istio-sidecar-injector",
                "--injection-config=/etc/istio/inject/config",
            ],
            None,
        )
        .unwrap();
        let w = s.webhook.unwrap();
        assert_eq!(
            w.injection_config.as_deref(),
            Some(std::path::Path::new("/etc/istio/inject/config"))
        );
        let keeper = w.keeper.unwrap();
        assert_eq!(keeper.config, None);
        assert_eq!(
            keeper.injector_config.as_deref(),
            Some("istio-sidecar-injector")
        );

        let file = "webhookCert: c\nwebhookKey: k\nwebhookCaBundle: r\nwebhookConfig: istio-pilot\n\
                    injectorWebhookConfig: istio-sidecar-injector\ninjectionConfig: /etc/istio/inject/config\n";
        let w = settings(&[], Some(file)).unwrap().webhook.unwrap();
        assert!(w.injection_config.is_some());
        let keeper = w.keeper.unwrap();
        assert_eq!(keeper.config.as_deref(), Some("istio-pilot"));
        assert_eq!(
            keeper.injector_config.as_deref(),
            Some("istio-sidecar-injector")
        );

        // Off by default; a caBundle keeper needs the roots.
        let w = settings(&["--webhook-cert=c", "--webhook-key=k"], None)
            .unwrap()
            .webhook
            .unwrap();
        assert!(w.keeper.is_none() && w.injection_config.is_none());
        let e = settings(
            &[],
            Some("webhookCert: c\nwebhookKey: k\ninjectorWebhookConfig: x\n"),
        )
        .unwrap_err();
        assert!(e.contains("webhookCaBundle"), "{e}");
        let e = settings(&["--injector-webhook-config=x"], None).unwrap_err();
        assert!(e.contains("--webhook-ca-bundle"), "{e}");
    }

    #[test]
    fn the_jwks_refresh_interval() {
        let every =
            |args: &[&str], file| settings(args, file).unwrap().jwt_pub_key_refresh_interval;
        assert_eq!(every(&[], None), Duration::from_secs(20 * 60));
        assert_eq!(
            every(&["--jwt-pub-key-refresh-interval=2s"], None),
            Duration::from_secs(2)
        );
        assert_eq!(
            every(&[], Some("jwtPubKeyRefreshInterval: 1m\n")),
            Duration::from_secs(60)
        );
    }
}
