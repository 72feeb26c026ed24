//! The agent's SDS server: Envoy's `envoy.service.secret.v3.SecretDiscoveryService` on a Unix
//! socket, serving the workload certificate the agent holds (Istio 1.1's node agent in
//! `pilot-agent`).
//!
//! - **Socket**: `--sds-socket`, default [`DEFAULT_SOCKET`] (Istio 1.1's
//!   `/etc/istio/proxy/SDS`, in the proxy's own writable volume; Istio later moved it to
//!   `./var/run/secrets/workload-spiffe-uds/socket`). A stale socket file is replaced; the new
//!   one is made mode 0600 (Envoy runs as the agent's user) and removed on shutdown.
//! - **Secrets**: `default` ([`SECRET_DEFAULT`]: `tls_certificate`, the chain and the private
//!   key inline) and `ROOTCA` ([`SECRET_ROOT`]: `validation_context.trusted_ca`, the mesh root
//!   inline). An empty request (wildcard) gets both; other names are not served. Pilot's TLS
//!   contexts name these secrets when the proxy's node metadata has `SDS: "true"` (see
//!   [`crate::xds::generate::mtls`]), through the bootstrap's static cluster `sds-grpc`.
//! - **Protocol**: `StreamSecrets`, state of the world. The first request on a stream, and one
//!   that changes the names asked for, are answered with what is held (once there is a
//!   certificate: until then the stream waits); an ACK (the last nonce) is not; a NACK is
//!   logged and not answered. Every new certificate (renewal, root change) is pushed to every
//!   open stream at once, as a new `version_info` (a hash of the secrets). `FetchSecrets`
//!   answers with what is held; `DeltaSecrets` is `UNIMPLEMENTED`.
//! - **Where the certificate comes from** ([`CertSource`]): Citadel's CSR API
//!   ([`super::ca_client`], the default), or files (Istio 1.0's mounted `istio.<sa>` secret),
//!   re-read every few seconds and pushed when they change.
//!
//! Entry point: [`serve`]; [`bind`] and [`serve_on`] split it for callers that already hold
//! the certificate channel (tests, a supervisor that waits for the first certificate).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_runtime::Shutdown;
use prost::Name;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::ca_client::{self, CaClientOptions, WorkloadCert};
use crate::xds::resource::any;

/// Istio 1.1's SDS socket of the node agent.
pub const DEFAULT_SOCKET: &str = "/etc/istio/proxy/SDS";
/// The certificate and key.
pub const SECRET_DEFAULT: &str = "default";
/// The mesh root.
pub const SECRET_ROOT: &str = "ROOTCA";
/// How often file sources are re-read.
const FILE_POLL: Duration = Duration::from_secs(2);
/// How long open streams may take to close after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the SDS server.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error("SDS socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SDS server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Where the workload certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// A CSR to Citadel, renewed before expiry (the default).
    Csr(CaClientOptions),
    /// Mounted files (Istio 1.0's `istio.<sa>` secret), re-read when they change.
    Files {
        cert_chain: PathBuf,
        key: PathBuf,
        root_cert: PathBuf,
    },
}

/// The agent's certificate flags, for `pilot-agent proxy` to flatten into its own
/// (`#[command(flatten)]`): where Citadel is, how to authenticate, where to serve SDS.
#[derive(Debug, Clone, clap::Args)]
pub struct SdsArgs {
    /// Citadel's gRPC address (CreateCertificate over TLS).
    #[arg(long, visible_alias = "caAddress", value_name = "HOST:PORT",
          default_value = ca_client::DEFAULT_CA_ADDRESS)]
    pub ca_address: String,

    /// The name Citadel's serving certificate must carry (one of its --grpc-host-identities).
    #[arg(long, value_name = "NAME", default_value = ca_client::DEFAULT_SERVER_NAME)]
    pub ca_server_name: String,

    /// The mesh root (PEM) Citadel's certificate is checked against; also served as ROOTCA.
    #[arg(long, value_name = "FILE", default_value = ca_client::DEFAULT_ROOT_CERT)]
    pub ca_root_cert: PathBuf,

    /// The projected ServiceAccount token (audience istio-ca), sent as a Bearer token.
    #[arg(long, value_name = "FILE", default_value = ca_client::DEFAULT_TOKEN_PATH)]
    pub token_path: PathBuf,

    /// Authenticate to Citadel with the certificate in this directory (cert-chain.pem,
    /// key.pem; a mounted istio.<sa> secret) instead of the token: for Citadel without
    /// Kubernetes, which has no TokenReview.
    #[arg(long, value_name = "DIR")]
    pub ca_client_cert_dir: Option<PathBuf>,

    /// Where the SDS server listens (a Unix socket; Envoy's sds-grpc cluster).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub sds_socket: PathBuf,

    /// The workload key's type.
    #[arg(long, value_enum, default_value_t = ca_client::KeyType::EcdsaP256)]
    pub key_type: ca_client::KeyType,

    /// The certificate lifetime asked for [default: Citadel's --workload-cert-ttl].
    #[arg(long, value_name = "DURATION")]
    pub workload_cert_ttl: Option<mesh_proto::types::Duration>,

    /// Renew once this fraction of the lifetime is left (Istio's SECRET_GRACE_PERIOD_RATIO).
    #[arg(long, value_name = "RATIO", default_value_t = ca_client::DEFAULT_GRACE_RATIO)]
    pub secret_grace_period_ratio: f64,

    /// The mesh's trust domain (the SPIFFE identity's authority).
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

// === impl SdsArgs ===

impl SdsArgs {
    /// The CSR source for the pod's identity.
    pub fn source(&self, namespace: &str, service_account: &str) -> CertSource {
        let credential = match &self.ca_client_cert_dir {
            Some(dir) => ca_client::Credential::ClientCert {
                chain: dir.join("cert-chain.pem"),
                key: dir.join("key.pem"),
            },
            None => ca_client::Credential::Token(self.token_path.clone()),
        };
        CertSource::Csr(CaClientOptions {
            address: self.ca_address.clone(),
            server_name: self.ca_server_name.clone(),
            root_cert: self.ca_root_cert.clone(),
            credential,
            identity: format!(
                "spiffe://{}/ns/{namespace}/sa/{service_account}",
                self.trust_domain
            ),
            key_type: self.key_type,
            ttl: self.workload_cert_ttl.map(|d| d.as_std()),
            grace_ratio: self.secret_grace_period_ratio,
        })
    }

    /// The bootstrap edit for this socket ([`crate::bootstrap::add_sds_cluster`]: cluster
    /// `sds-grpc`, metadata `SDS: "true"`).
    pub fn bootstrap_edit(&self) -> impl FnOnce(&mut serde_json::Value) + Send + 'static {
        let socket = self.sds_socket.clone();
        move |b| crate::bootstrap::add_sds_cluster(b, &socket)
    }
}

/// The certificates the server hands out: `None` until the first one.
pub type Certs = watch::Receiver<Option<Arc<WorkloadCert>>>;

// === impl CertSource ===

impl CertSource {
    /// Keeps `out` filled until `shutdown`.
    pub async fn run(self, out: watch::Sender<Option<Arc<WorkloadCert>>>, shutdown: Shutdown) {
        match self {
            CertSource::Csr(opts) => ca_client::run(opts, out, shutdown).await,
            CertSource::Files {
                cert_chain,
                key,
                root_cert,
            } => loop {
                match read_files(&cert_chain, &key, &root_cert) {
                    Ok(cert) => {
                        let changed = out.borrow().as_deref() != Some(&cert);
                        if changed {
                            tracing::info!(file = %cert_chain.display(), "workload certificate read");
                            out.send_replace(Some(Arc::new(cert)));
                        }
                    }
                    // Mid-swap reads fail; the next poll sees the new files.
                    Err(e) => tracing::debug!(error = %e, "cannot read the certificate files"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(FILE_POLL) => {}
                }
            },
        }
    }
}

fn read_files(chain: &Path, key: &Path, root: &Path) -> Result<WorkloadCert, String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let cert_chain = read(chain)?;
    let (not_before, not_after) = ca_client::validity(&cert_chain).map_err(|e| e.to_string())?;
    Ok(WorkloadCert {
        cert_chain,
        key: read(key)?,
        root_cert: read(root)?,
        not_before,
        not_after,
    })
}

/// Binds the SDS socket at `path` (its directory made if missing, a stale socket replaced),
/// mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, SdsError> {
    let err = |source| SdsError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Gets the certificate from `source` and serves it over SDS on `socket` until `shutdown`.
pub async fn serve(source: CertSource, socket: &Path, shutdown: Shutdown) -> Result<(), SdsError> {
    let listener = bind(socket)?;
    let (tx, rx) = watch::channel(None);
    let fetcher = tokio::spawn(source.run(tx, shutdown.clone()));
    let result = serve_on(listener, rx, shutdown).await;
    let _ = std::fs::remove_file(socket);
    let _ = fetcher.await;
    result
}

/// Serves `certs` over SDS on `listener` until `shutdown`.
pub async fn serve_on(
    listener: UnixListener,
    certs: Certs,
    shutdown: Shutdown,
) -> Result<(), SdsError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(socket = ?addr.as_pathname(), "SDS server listening");
    }
    let service = SdsService {
        certs,
        shutdown: shutdown.clone(),
    };
    let server = tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::new(service))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        r = server => r?,
        _ = drain_deadline => {}
    }
    tracing::info!("SDS server stopped");
    Ok(())
}

/// The SDS resources for `names` (both when empty) from `cert`, and their version.
pub fn response_for(cert: &WorkloadCert, names: &[String]) -> (String, Vec<Any>) {
    let mut h = DefaultHasher::new();
    cert.cert_chain.hash(&mut h);
    cert.key.hash(&mut h);
    cert.root_cert.hash(&mut h);
    let version = format!("{:016x}", h.finish());
    let wanted = |n: &str| names.is_empty() || names.iter().any(|x| x == n);
    let inline = |s: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(s.as_bytes().to_vec())),
        ..Default::default()
    };
    let mut resources = Vec::new();
    if wanted(SECRET_DEFAULT) {
        resources.push(any(&Secret {
            name: SECRET_DEFAULT.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&cert.cert_chain)),
                private_key: Some(inline(&cert.key)),
                ..Default::default()
            })),
        }));
    }
    if wanted(SECRET_ROOT) {
        resources.push(any(&Secret {
            name: SECRET_ROOT.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(&cert.root_cert)),
                    ..Default::default()
                },
            )),
        }));
    }
    (version, resources)
}

#[derive(Debug, Clone)]
struct SdsService {
    certs: Certs,
    shutdown: Shutdown,
}

/// One `StreamSecrets` stream.
struct SdsStream {
    requests: Streaming<DiscoveryRequest>,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    certs: Certs,
    shutdown: Shutdown,
    /// The names of the last request; `None` before the first.
    names: Option<Vec<String>>,
    sent_version: Option<String>,
    nonce: u64,
}

// === impl SdsStream ===

impl SdsStream {
    async fn run(mut self) {
        loop {
            let send;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                m = self.requests.message() => match m {
                    Ok(Some(req)) => send = self.on_request(req),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "SDS stream closed");
                        return;
                    }
                },
                r = self.certs.changed() => {
                    if r.is_err() {
                        return;
                    }
                    send = self.names.is_some();
                }
            }
            if send && !self.push().await {
                return;
            }
        }
    }

    /// Whether the request needs an answer.
    fn on_request(&mut self, req: DiscoveryRequest) -> bool {
        if let Some(e) = &req.error_detail {
            tracing::warn!(
                names = ?req.resource_names,
                nonce = %req.response_nonce,
                error = %e.message,
                "Envoy refused the secrets"
            );
            self.names = Some(req.resource_names);
            return false;
        }
        let changed = self.names.as_ref() != Some(&req.resource_names);
        let initial = req.response_nonce.is_empty();
        self.names = Some(req.resource_names);
        if initial {
            // A new stream, or Envoy's reconnect: it may hold an old version.
            self.sent_version = None;
        }
        changed || initial
    }

    /// Sends what is held for the names asked, when there is something new; false when the
    /// stream is gone.
    async fn push(&mut self) -> bool {
        let Some(cert) = self.certs.borrow_and_update().clone() else {
            return true;
        };
        let names = self.names.clone().unwrap_or_default();
        let (version, resources) = response_for(&cert, &names);
        if resources.is_empty() || self.sent_version.as_deref() == Some(version.as_str()) {
            return true;
        }
        self.nonce += 1;
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: Secret::type_url(),
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        tracing::debug!(?names, %version, "pushing secrets");
        self.sent_version = Some(version);
        self.responses.send(Ok(response)).await.is_ok()
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta SDS is not served; use StreamSecrets",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let stream = SdsStream {
            requests: request.into_inner(),
            responses: tx,
            certs: self.certs.clone(),
            shutdown: self.shutdown.clone(),
            names: None,
            sent_version: None,
            nonce: 0,
        };
        tokio::spawn(stream.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let cert = self
            .certs
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("no workload certificate yet"))?;
        let (version, resources) = response_for(&cert, &request.into_inner().resource_names);
        Ok(Response::new(DiscoveryResponse {
            version_info: version,
            resources,
            type_url: Secret::type_url(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use prost::Message;
    use tonic::transport::{Endpoint, Uri};

    use super::*;

    fn cert(n: u32) -> Arc<WorkloadCert> {
        Arc::new(WorkloadCert {
            cert_chain: format!("chain {n}"),
            key: format!("key {n}"),
            root_cert: "root".into(),
            not_before: SystemTime::now(),
            not_after: SystemTime::now(),
        })
    }

    fn decode(r: &DiscoveryResponse) -> Vec<Secret> {
        r.resources
            .iter()
            .map(|a| Secret::decode(a.value.as_slice()).unwrap())
            .collect()
    }

    fn chain_of(s: &Secret) -> Vec<u8> {
        let Some(secret::Type::TlsCertificate(t)) = &s.r#type else {
            panic!("not a certificate: {s:?}");
        };
        let Some(data_source::Specifier::InlineBytes(b)) =
            &t.certificate_chain.as_ref().unwrap().specifier
        else {
            panic!("not inline");
        };
        b.clone()
    }

    #[tokio::test]
    async fn streams_get_the_secrets_and_every_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/SDS");
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(&path, "stale").unwrap();
        let listener = bind(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (tx, rx) = watch::channel(None);
        let shutdown = Shutdown::new();
        let server = tokio::spawn(serve_on(listener, rx, shutdown.clone()));

        let p = path.clone();
        let channel = Endpoint::from_static("http://sds")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let e = client
            .fetch_secrets(DiscoveryRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);

        // Two streams, one per secret as Envoy opens them; nothing until there is a cert.
        let mut streams = Vec::new();
        for name in [SECRET_DEFAULT, SECRET_ROOT] {
            let (req_tx, req_rx) = mpsc::channel(4);
            req_tx
                .send(DiscoveryRequest {
                    resource_names: vec![name.into()],
                    type_url: Secret::type_url(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let resp = client
                .stream_secrets(ReceiverStream::new(req_rx))
                .await
                .unwrap()
                .into_inner();
            streams.push((req_tx, resp));
        }
        let quiet = tokio::time::timeout(Duration::from_millis(200), streams[0].1.message()).await;
        assert!(quiet.is_err(), "answered before a certificate: {quiet:?}");

        tx.send_replace(Some(cert(1)));
        let first = streams[0].1.message().await.unwrap().unwrap();
        let secrets = decode(&first);
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].name, "default");
        assert_eq!(chain_of(&secrets[0]), b"chain 1");
        let root = decode(&streams[1].1.message().await.unwrap().unwrap());
        assert_eq!(root[0].name, "ROOTCA");

        // ACK: no answer. Rotation: pushed to both, with a new version.
        streams[0]
            .0
            .send(DiscoveryRequest {
                version_info: first.version_info.clone(),
                resource_names: vec![SECRET_DEFAULT.into()],
                response_nonce: first.nonce.clone(),
                type_url: Secret::type_url(),
                ..Default::default()
            })
            .await
            .unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(200), streams[0].1.message()).await;
        assert!(quiet.is_err(), "answered an ACK: {quiet:?}");
        tx.send_replace(Some(cert(2)));
        let second = streams[0].1.message().await.unwrap().unwrap();
        assert_ne!(second.version_info, first.version_info);
        assert_ne!(second.nonce, first.nonce);
        assert_eq!(chain_of(&decode(&second)[0]), b"chain 2");
        assert!(streams[1].1.message().await.unwrap().is_some());

        // Wildcard fetch: both; delta: UNIMPLEMENTED.
        let all = client
            .fetch_secrets(DiscoveryRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(decode(&all).len(), 2);
        let (_dtx, drx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
        let e = client
            .delta_secrets(ReceiverStream::new(drx))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[test]
    fn flags_make_the_csr_source() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            sds: SdsArgs,
        }
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.sds.sds_socket, Path::new(DEFAULT_SOCKET));
        let CertSource::Csr(o) = cli.sds.source("default", "reviews") else {
            panic!("not a CSR source");
        };
        assert_eq!(o.address, "istio-citadel.istio-system.svc:8060");
        assert_eq!(o.identity, "spiffe://cluster.local/ns/default/sa/reviews");
        assert_eq!(
            o.credential,
            ca_client::Credential::Token("/var/run/secrets/tokens/istio-token".into())
        );
        assert_eq!(o.ttl, None);
        let cli = Cli::try_parse_from([
            "x",
            "--ca-client-cert-dir",
            "/etc/certs",
            "--key-type",
            "rsa2048",
            "--workload-cert-ttl",
            "1h",
        ])
        .unwrap();
        let CertSource::Csr(o) = cli.sds.source("a", "b") else {
            panic!("not a CSR source");
        };
        assert_eq!(o.key_type, ca_client::KeyType::Rsa2048);
        assert_eq!(o.ttl, Some(Duration::from_secs(3600)));
        assert!(matches!(
            o.credential,
            ca_client::Credential::ClientCert { .. }
        ));
        let mut b =
            serde_json::json!({"node": {"metadata": {}}, "static_resources": {"clusters": []}});
        (cli.sds.bootstrap_edit())(&mut b);
        assert_eq!(b["node"]["metadata"]["SDS"], "true");
        assert!(Cli::try_parse_from(["x", "--key-type", "dsa"]).is_err());
    }

    #[tokio::test]
    async fn file_source_pushes_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["a".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = ca.self_signed(&key).unwrap().pem();
        for f in ["chain.pem", "root.pem"] {
            std::fs::write(dir.path().join(f), &pem).unwrap();
        }
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let source = CertSource::Files {
            cert_chain: dir.path().join("chain.pem"),
            key: dir.path().join("key.pem"),
            root_cert: dir.path().join("root.pem"),
        };
        let (tx, mut rx) = watch::channel(None);
        let shutdown = Shutdown::new();
        let task = tokio::spawn(source.run(tx, shutdown.clone()));
        rx.changed().await.unwrap();
        let got = rx.borrow_and_update().clone().unwrap();
        assert_eq!(got.cert_chain, pem);
        assert!(got.not_after > got.not_before);
        shutdown.cancel();
        task.await.unwrap();
    }
}
