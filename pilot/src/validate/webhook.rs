//! The admission webhooks (Istio's `istiod` port 15017): `POST /inject` is the sidecar
//! injector ([`super::inject_webhook`]); `POST /validate`, the validating webhook: the API
//! server sends every Istio config object being created or updated as an `admission.k8s.io/v1`
//! `AdmissionReview`, and the answer allows it or denies it with the problems `pilot validate`
//! reports (the same checks, [`super::validate_spec`], on the spec as
//! [`mesh_proto::parse_spec`] reads it). So `kubectl apply` of an invalid VirtualService fails
//! at once with the reason, instead of being refused later by Pilot's config store.
//!
//! Served over HTTPS only (the API server requires it) with the certificate and key of
//! `--webhook-cert` and `--webhook-key`; without them the webhook is off. A
//! `ValidatingWebhookConfiguration` points the API server here (the README says what it
//! holds; `tests/tests/cluster_webhook.rs` registers one). The certificate files are looked at
//! every few seconds and a new pair is served from the next handshake on (Citadel rotates
//! the certificate in the secret Pilot mounts); with `--webhook-config` (and
//! `--injector-webhook-config`), [`super::cabundle`] keeps that configuration's caBundle equal
//! to the certificate's roots.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mesh_proto::{Kind, SpecError, parse_spec};
use mesh_runtime::Shutdown;
use mesh_runtime::config::ConfigKey;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::inject_webhook::{self, Injector};

/// The longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest review accepted (the API server's own limit on objects is 3 MiB).
pub(super) const MAX_REVIEW: usize = 8 << 20;

/// Why the webhook cannot start, or a review cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it ({message})")]
    Certificate { path: PathBuf, message: String },
    #[error("{path}: no PEM private key in it ({message})")]
    Key { path: PathBuf, message: String },
    #[error("the webhook certificate and key do not make a TLS server: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr} (--webhook-addr): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("not an AdmissionReview: {0}")]
    Review(String),
}

/// Where and how the webhook serves.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    /// PEM certificate chain, serving certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// On Kubernetes: keep the webhook configurations' caBundle (see [`super::cabundle`]).
    pub keeper: Option<CaBundleKeeper>,
    /// The injection config of `/inject` (the `config` key of ConfigMap
    /// `istio-sidecar-injector`, as mounted); `None`: the built-in one.
    pub injection_config: Option<PathBuf>,
}

/// Which webhook configurations' caBundle to keep, and from which file.
#[derive(Debug, Clone)]
pub struct CaBundleKeeper {
    /// The ValidatingWebhookConfiguration (of `/validate`).
    pub config: Option<String>,
    /// The MutatingWebhookConfiguration (of `/inject`).
    pub injector_config: Option<String>,
    /// PEM roots of the serving certificate.
    pub ca_bundle: PathBuf,
}

/// How often the certificate files are looked at for a new version (the kubelet replaces a
/// mounted secret's files within about a minute of the secret changing).
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The webhook, bound and ready to serve.
pub struct Webhook {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    certs: Arc<ReloadingCert>,
}

/// The serving certificate, replaced when its files change: Citadel rotates the certificate
/// in the secret the pod mounts, and a handshake after that gets the new one.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: std::sync::RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

// === impl Webhook ===

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Reads the certificate and key and binds the address: a bad certificate or a taken
    /// port fails here, before Pilot serves anything.
    pub async fn bind(settings: &WebhookSettings) -> Result<Webhook, WebhookError> {
        let (files, key) = load_certified_key(&settings.cert, &settings.key)?;
        let certs = Arc::new(ReloadingCert {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            current: std::sync::RwLock::new((files, key)),
        });
        let config = tls_config(certs.clone())?;
        let listener =
            TcpListener::bind(settings.addr)
                .await
                .map_err(|source| WebhookError::Bind {
                    addr: settings.addr,
                    source,
                })?;
        Ok(Webhook {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves HTTPS until `shutdown`: each connection in a task of its own. `/inject` injects
    /// with the config `injector` holds at the time of each review.
    pub async fn serve(self, injector: Injector, shutdown: Shutdown) {
        tokio::spawn(self.certs.clone().reload_until(shutdown.clone()));
        let service = TowerToHyperService::new(routes(injector));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let service = service.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "webhook: TLS handshake timed out");
                        return;
                    }
                };
                let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .into_owned();
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "webhook: connection ended");
                    },
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    }
}

// === impl ReloadingCert ===

impl ReloadingCert {
    /// Looks at the files every [`RELOAD_EVERY`] until `shutdown`; a new, valid pair replaces
    /// the served one, a broken one is logged and the last good one keeps serving.
    async fn reload_until(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.reload();
        }
    }

    /// Serves the files' certificate if they changed and make a valid pair; true if it did.
    fn reload(&self) -> bool {
        let (Ok(cert), Ok(key)) = (std::fs::read(&self.cert), std::fs::read(&self.key)) else {
            return false;
        };
        if self.read().0 == [cert, key].concat() {
            return false;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(loaded) => {
                tracing::info!(cert = %self.cert.display(), "webhook: serving a new certificate");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook: new certificate files refused; the last good one keeps serving");
                false
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Vec<u8>, Arc<CertifiedKey>)> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().1.clone())
    }
}

/// The certificate chain and key from PEM files, with the files' bytes (to notice a change).
fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<u8>, Arc<CertifiedKey>), WebhookError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| WebhookError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Certificate {
            path: cert.to_path_buf(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(WebhookError::Certificate {
            path: cert.to_path_buf(),
            message: "the file holds no CERTIFICATE block".into(),
        });
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| WebhookError::Key {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key_der, &provider)?;
    Ok(([cert_pem, key_pem].concat(), Arc::new(certified)))
}

/// The TLS server configuration, offering HTTP/2 and HTTP/1.1.
fn tls_config(certs: Arc<ReloadingCert>) -> Result<ServerConfig, WebhookError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The webhook's routes: `POST /validate` and `POST /inject`.
pub fn routes(injector: Injector) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route(
            "/inject",
            post(move |body: Bytes| {
                let injector = injector.clone();
                async move { inject_webhook::handle(&injector, &body) }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_REVIEW))
}

async fn validate(body: Bytes) -> Response {
    if body.len() > MAX_REVIEW {
        return (StatusCode::PAYLOAD_TOO_LARGE, "AdmissionReview too large\n").into_response();
    }
    match review(&body) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// An `AdmissionReview` as the API server sends it (the fields the answer needs).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AdmissionReview {
    pub(super) api_version: Option<String>,
    pub(super) request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AdmissionRequest {
    pub(super) uid: String,
    pub(super) kind: GroupVersionKind,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: String,
    #[serde(default)]
    pub(super) operation: String,
    #[serde(default)]
    pub(super) object: Value,
}

#[derive(Debug, Deserialize)]
pub(super) struct GroupVersionKind {
    #[serde(default)]
    pub(super) group: String,
    pub(super) version: String,
    pub(super) kind: String,
}

// === impl AdmissionReview ===

impl AdmissionReview {
    /// Parses a review; it must have a request.
    pub(super) fn parse(body: &[u8]) -> Result<(Option<String>, AdmissionRequest), WebhookError> {
        let review: AdmissionReview =
            serde_json::from_slice(body).map_err(|e| WebhookError::Review(e.to_string()))?;
        let request = review
            .request
            .ok_or_else(|| WebhookError::Review("it has no request".into()))?;
        Ok((review.api_version, request))
    }

    /// The answer carrying `response`, in the review's apiVersion.
    pub(super) fn answer(api_version: Option<String>, response: Value) -> Value {
        json!({
            "apiVersion": api_version.unwrap_or_else(|| "admission.k8s.io/v1".into()),
            "kind": "AdmissionReview",
            "response": response,
        })
    }
}

/// The answer to an `AdmissionReview` (JSON bytes): allowed, or denied with every problem
/// found, one per line as `pilot validate` prints them (without the file).
pub fn review(body: &[u8]) -> Result<Value, WebhookError> {
    let (api_version, request) = AdmissionReview::parse(body)?;
    let problems = problems(&request);
    let mut response = json!({"uid": request.uid, "allowed": problems.is_empty()});
    if !problems.is_empty() {
        tracing::info!(kind = %request.kind.kind, namespace = %request.namespace, name = %request.name, problems = ?problems, "webhook: denied");
        response["status"] = json!({
            "code": 400,
            "reason": "Invalid",
            "message": problems.join("\n"),
        });
    }
    Ok(AdmissionReview::answer(api_version, response))
}

/// The problems of the object under review; none for deletions and for kinds Pilot does not
/// check.
fn problems(request: &AdmissionRequest) -> Vec<String> {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE" | "") {
        return Vec::new();
    }
    let gvk = &request.kind;
    let api_version = if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    };
    let Ok(kind) = Kind::from_api_version(&api_version, &gvk.kind) else {
        // Not an Istio kind: nothing of Pilot's to check.
        return Vec::new();
    };
    let meta = &request.object["metadata"];
    let name = meta["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(&request.name);
    let namespace = meta["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(&request.namespace);
    let key = ConfigKey {
        namespace: if kind.namespaced() {
            namespace.to_string()
        } else {
            String::new()
        },
        name: name.to_string(),
        kind: kind.clone(),
    };
    let spec = request.object.get("spec").cloned().unwrap_or(Value::Null);
    let errors: Vec<SpecError> = match parse_spec(&kind, spec) {
        Ok(spec) => super::validate_spec(&spec),
        Err(e) => vec![e],
    };
    errors.into_iter().map(|e| format!("{key}: {e}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs_review(weights: (u32, u32), operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": "VirtualService"},
                "name": "reviews",
                "namespace": "shop",
                "operation": operation,
                "object": {
                    "apiVersion": "networking.istio.io/v1alpha3",
                    "kind": "VirtualService",
                    "metadata": {"name": "reviews", "namespace": "shop"},
                    "spec": {
                        "hosts": ["reviews"],
                        "http": [{"route": [
                            {"destination": {"host": "reviews", "subset": "v1"}, "weight": weights.0},
                            {"destination": {"host": "reviews", "subset": "v2"}, "weight": weights.1},
                        ]}],
                    },
                },
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_object_is_allowed_with_its_uid() {
        let answer = review(&vs_review((50, 50), "CREATE")).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(answer["response"]["allowed"], true);
    }

    #[test]
    fn an_invalid_object_is_denied_with_pilot_validates_message() {
        let answer = review(&vs_review((50, 40), "UPDATE")).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        // The same words `pilot validate` prints for the same object in a file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vs.yaml");
        let yaml = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v2}\n      weight: 40\n";
        std::fs::write(&file, yaml).unwrap();
        let offline = super::super::validate_files(&[file]);
        assert_eq!(offline.len(), 1, "{offline:?}");
        assert!(
            offline[0].ends_with(message),
            "{message:?} vs {:?}",
            offline[0]
        );
        assert!(
            message.starts_with("VirtualService.networking.istio.io shop/reviews: spec.http[0]"),
            "{message}"
        );
    }

    #[test]
    fn deletions_and_other_kinds_are_allowed_and_garbage_is_refused() {
        let answer = review(&vs_review((50, 40), "DELETE")).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        let pod = json!({"request": {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "object": {"spec": {"containers": []}}}});
        let answer = review(&serde_json::to_vec(&pod).unwrap()).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(matches!(review(b"not json"), Err(WebhookError::Review(_))));
        assert!(matches!(
            review(br#"{"kind": "AdmissionReview"}"#),
            Err(WebhookError::Review(m)) if m.contains("no request")
        ));
    }

    #[test]
    fn a_spec_that_does_not_parse_is_denied_with_the_field() {
        let body = json!({"request": {"uid": "2",
            "kind": {"group": "networking.istio.io", "version": "v1beta1", "kind": "DestinationRule"},
            "operation": "CREATE",
            "object": {"metadata": {"name": "r", "namespace": "ns"}, "spec": {"host": "r", "bogus": 1}}}});
        let answer = review(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("bogus"), "{message}");
    }

    #[test]
    fn bad_certificate_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        assert!(matches!(
            load_certified_key(&cert, &key),
            Err(WebhookError::Read { .. })
        ));
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        assert!(matches!(
            load_certified_key(&cert, &key),
            Err(WebhookError::Certificate { .. })
        ));
    }

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    #[test]
    fn a_rotated_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "one.example");
        let (files, key) =
            load_certified_key(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        let certs = ReloadingCert {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            current: std::sync::RwLock::new((files, key)),
        };
        let served = |c: &ReloadingCert| c.read().1.cert[0].to_vec();
        assert!(!certs.reload(), "unchanged files are not reloaded");
        assert_eq!(served(&certs), first);
        let second = write_pair(dir.path(), "two.example");
        assert!(certs.reload());
        assert_eq!(served(&certs), second);
        // A half-written pair (the key of another certificate) keeps the last good one.
        let _ = write_pair(dir.path(), "three.example");
        std::fs::write(
            dir.path().join("key.pem"),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert!(!certs.reload());
        assert_eq!(served(&certs), second);
    }
}
