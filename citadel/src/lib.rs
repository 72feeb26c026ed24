//! Citadel: the mesh's certificate authority. It gives every service account a SPIFFE
//! identity: a certificate issued, delivered as a secret (or files), and rotated before it
//! expires.
//!
//! The binary is a thin `main.rs` over [`run`]. Service accounts come from a watched directory
//! of YAML (the embedded default, secrets written as files under `--secret-dir`) or from the
//! Kubernetes API server (secrets `istio.<sa>`).
//!
//! - [`ca`]: the CA (self-signed root or plugged-in intermediate), leaf issuing, CSR checks,
//!   root persistence and rotation.
//! - [`secrets`]: the [`secrets::SecretSink`] trait and its file backend.
//! - [`controller`]: the secret controller (create, delete, rotate; rate-limited, jittered).
//! - [`rotation`]: the periodic root check.
//! - [`k8s`]: the Kubernetes backends (istio-ca-secret, cacerts, workload secrets, Lease).
//! - [`debug`]: `/debug/certz` and the signing liveness check `/live`.
//! - [`auth`]: who calls the CSR API (client certificate; service-account token, checked by
//!   [`k8s::TokenReviewAuthenticator`]).
//! - [`signing`]: CSR signing for authenticated callers, transport-independent.
//! - [`grpc`]: the TLS gRPC server (`IstioCertificateService`, legacy `IstioCAService`).

pub mod auth;
pub mod ca;
pub mod controller;
pub mod debug;
pub mod grpc;
pub mod k8s;
pub mod metrics;
pub mod rotation;
pub mod secrets;
pub mod settings;
pub mod signing;

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use mesh_runtime::Shutdown;
use mesh_runtime::monitoring;
use mesh_runtime::service::{Base, ConfigSource};
use tokio::sync::{mpsc, watch};

use crate::ca::store::{CaStore, DirCaStore, SelfSignedOptions};
use crate::ca::{CaOptions, CertificateAuthority};
use crate::controller::{Controller, ControllerOptions, Inputs, NamespaceFilter};
use crate::metrics::Metrics;
use crate::secrets::SecretSink;
use crate::secrets::file::FileSink;

/// In file mode without `--ca-dir`, the self-signed CA is kept in
/// `SECRET_DIR/<storage namespace>/istio-ca-secret/`, named after the Kubernetes secret
/// Istio keeps it in.
pub const DEFAULT_CA_DIR_NAME: &str = "istio-ca-secret";
pub use settings::{Cli, Settings};

/// Runs Citadel until `shutdown`.
pub async fn run(cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = Settings::resolve(cli)?;
    tracing::info!(?settings, "starting citadel");
    // Bind first, so a port conflict fails before anything else starts.
    let http = monitoring::bind(settings.http_addr).await?;
    let grpc_listener = grpc::bind(settings.grpc_addr).await?;

    let source = ConfigSource::from_flags(settings.config_dir.clone(), settings.kubeconfig.clone());
    let mut base = Base::start(
        "citadel",
        &source,
        settings::watched_kinds(),
        None,
        // Citadel reads ServiceAccounts only: no Istio objects to write a status on.
        false,
        shutdown.clone(),
    )
    .await
    .context("opening the config store")?;
    let metrics = Metrics::register(&mut base.registry);
    let ca_ready = base.readiness.condition("ca");

    let kube = match &source {
        ConfigSource::Kubernetes(kubeconfig) => Some(
            mesh_runtime::kube_client::connect(kubeconfig.as_deref())
                .await
                .context("connecting to Kubernetes")?,
        ),
        ConfigSource::Directory(_) => None,
    };

    // Leadership: always in file mode; a Lease on Kubernetes.
    let (leader_tx, leader_rx) = watch::channel(kube.is_none());
    if let Some(client) = &kube {
        let elector = k8s::LeaderElector::new(
            client.clone(),
            &settings.storage_namespace,
            &settings.leader_lease_name,
            settings.leader_lease_duration,
        );
        tokio::spawn(elector.run(leader_tx, shutdown.clone()));
    } else {
        drop(leader_tx);
    }

    // The CA.
    let ca_options = CaOptions {
        max_ttl: settings.max_workload_cert_ttl,
        ..CaOptions::default()
    };
    let self_signed = SelfSignedOptions {
        algorithm: settings.key_algorithm,
        trust_domain: settings.trust_domain.clone(),
        ttl: settings.self_signed_ca_cert_ttl,
    };
    let mut store: Option<Arc<dyn CaStore>> = None;
    let ca = if let Some(p) = &settings.plugged_ca {
        let bundle = ca::store::read_plugged(
            &p.signing_cert,
            &p.signing_key,
            &p.root_cert,
            p.cert_chain.as_deref(),
        )?;
        let source = format!("plugged-in CA ({})", p.signing_cert.display());
        CertificateAuthority::new(bundle, &source, ca_options)?
    } else if let Some(client) = &kube {
        match k8s::read_cacerts(client, &settings.storage_namespace).await? {
            Some(bundle) => {
                let source = format!("secret {}/cacerts", settings.storage_namespace);
                tracing::info!("using the plugged-in CA from {source}");
                CertificateAuthority::new(bundle, &source, ca_options)?
            }
            None => {
                let s: Arc<dyn CaStore> = Arc::new(k8s::KubeCaStore::new(
                    client.clone(),
                    &settings.storage_namespace,
                ));
                let (bundle, created) =
                    ca::store::load_or_create(s.as_ref(), &self_signed, SystemTime::now()).await?;
                tracing::info!(store = %s.describe(), created, "self-signed CA loaded");
                let ca = CertificateAuthority::new(bundle, &s.describe(), ca_options)?;
                store = Some(s);
                ca
            }
        }
    } else {
        // Like Istio's istio-ca-secret, the self-signed root is kept by default: beside the
        // secrets it signs (OUT/<storage namespace>/istio-ca-secret/), or in --ca-dir.
        let ca_dir = settings.ca_dir.clone().or_else(|| {
            settings.secret_dir.as_ref().map(|out| {
                out.join(&settings.storage_namespace)
                    .join(DEFAULT_CA_DIR_NAME)
            })
        });
        let (bundle, describe) = match &ca_dir {
            Some(dir) => {
                let s: Arc<dyn CaStore> = Arc::new(DirCaStore::new(dir));
                let (bundle, created) =
                    ca::store::load_or_create(s.as_ref(), &self_signed, SystemTime::now()).await?;
                tracing::info!(
                    store = %s.describe(),
                    created,
                    "self-signed CA {} (key file mode 0600)",
                    if created { "created and kept" } else { "loaded" }
                );
                let d = s.describe();
                store = Some(s);
                (bundle, d)
            }
            None => {
                tracing::warn!(
                    "neither --ca-dir nor --secret-dir: the self-signed root lives in memory \
                     and changes on restart"
                );
                let b = ca::root::self_signed(
                    self_signed.algorithm,
                    &self_signed.trust_domain,
                    self_signed.ttl,
                    SystemTime::now(),
                )?;
                (b, "in-memory self-signed CA".to_string())
            }
        };
        CertificateAuthority::new(bundle, &describe, ca_options)?
    };
    let ca = Arc::new(ca);
    metrics.root_expiry.set(unix(ca.info().root_not_after));
    ca_ready.set(true);

    // Root checks and rotation.
    let (root_tx, root_rx) = watch::channel(0u64);
    let checker = rotation::RootChecker {
        ca: ca.clone(),
        store: store.clone(),
        interval: settings.root_cert_check_interval,
        grace_percent: settings.root_cert_grace_period_percentile,
        ttl: settings.self_signed_ca_cert_ttl,
        metrics: metrics.clone(),
        leader: leader_rx.clone(),
    };
    tokio::spawn(checker.run(root_tx, shutdown.clone()));

    // Workload secrets.
    let (events_tx, events_rx) = mpsc::channel(1024);
    let sink: Option<Arc<dyn SecretSink>> = match (&kube, &settings.secret_dir) {
        (Some(client), _) => Some(Arc::new(
            k8s::KubeSecretSink::start(client.clone(), events_tx, shutdown.clone()).await,
        )),
        (None, Some(dir)) => {
            drop(events_tx);
            Some(Arc::new(FileSink::new(dir)))
        }
        (None, None) => {
            drop(events_tx);
            tracing::warn!("no --secret-dir: workload secrets are not written");
            None
        }
    };
    let mut status = controller::StatusMap::default();
    if let Some(sink) = sink {
        let options = ControllerOptions {
            trust_domain: settings.trust_domain.clone(),
            ttl: settings.workload_cert_ttl,
            grace_ratio: settings.grace_period_ratio,
            min_grace: settings.min_grace_period,
            key_algorithm: settings.key_algorithm,
            dns_names: settings.dns_names.clone(),
            namespaces: NamespaceFilter {
                include: settings.listened_namespaces.clone(),
                exclude: settings.excluded_namespaces.clone(),
            },
            write_qps: settings.secret_write_qps,
            write_burst: settings.secret_write_burst,
            resync: settings.secret_resync_period,
            root_change_spread: settings.root_change_spread,
            max_jitter: std::time::Duration::from_secs(600),
        };
        let controller = Controller::new(ca.clone(), sink, options, metrics.clone());
        status = controller.status();
        let inputs = Inputs {
            config: base.store.subscribe(),
            secret_events: events_rx,
            root_changed: root_rx.clone(),
            leader: leader_rx.clone(),
        };
        tokio::spawn(controller.run(inputs, shutdown.clone()));
    }

    // CSR signing over gRPC: client certificates of this CA always; service-account tokens
    // (TokenReview) on Kubernetes.
    let mut authenticators: Vec<Arc<dyn auth::Authenticator>> = vec![Arc::new(
        auth::ClientCertAuthenticator::new(ca.clone(), &settings.trust_domain),
    )];
    if let Some(client) = &kube {
        authenticators.push(Arc::new(k8s::TokenReviewAuthenticator::new(
            client.clone(),
            &settings.trust_domain,
        )));
    }
    let signer = Arc::new(signing::CsrSigner::new(
        ca.clone(),
        authenticators,
        settings.workload_cert_ttl,
        metrics.clone(),
    ));
    let serving = grpc::ServingOptions {
        identity: ca::Identity::new(
            &settings.trust_domain,
            &settings.storage_namespace,
            grpc::SERVING_SERVICE_ACCOUNT,
        )?,
        dns_names: settings.grpc_host_identities.clone(),
        ttl: settings.workload_cert_ttl,
    };
    let grpc_task = {
        let shutdown = shutdown.clone();
        let server = grpc::serve(
            grpc_listener,
            ca.clone(),
            signer,
            serving,
            root_rx,
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let result = server.await;
            if let Err(e) = &result {
                // Without its gRPC server Citadel is not doing its job: stop the process.
                tracing::error!(error = %e, "gRPC server failed; shutting down");
                shutdown.cancel();
            }
            result
        })
    };

    let routes = debug::routes(ca.clone(), status, settings.trust_domain.clone());
    base.serve_monitoring(http, routes, shutdown).await?;
    grpc_task.await.context("gRPC server task")??;
    tracing::info!("citadel stopped");
    Ok(())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
