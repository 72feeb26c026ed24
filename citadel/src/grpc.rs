//! Citadel's gRPC server (`--grpc-addr`, Istio's port 8060): `istio.v1.auth.IstioCertificateService`
//! (`CreateCertificate`) and the legacy `istio.v1.auth.IstioCAService` (`HandleCSR`), over TLS.
//!
//! TLS uses Citadel's own serving certificate, issued by its CA for
//! `spiffe://TD/ns/STORAGE_NS/sa/istio-citadel-service-account` with the DNS names of
//! `--grpc-host-identities` (Istio's `istio-ca`, `istio-citadel` by default). It is reissued at
//! half its lifetime and whenever the root changes; a new connection always gets the current
//! one. Client certificates are optional at the TLS layer (verified against the CA's root when
//! sent) and required by the service only when no other credential is accepted (see
//! [`crate::auth`]).
//!
//! Status codes: a caller that cannot be authenticated gets `UNAUTHENTICATED`; a malformed,
//! oversized or badly signed CSR `INVALID_ARGUMENT` with the reason; a CA failure `INTERNAL`.
//! `HandleCSR` answers the same way (a refusal is a gRPC error, not `is_approved: false`); it
//! authenticates the caller like `CreateCertificate` does (TLS client certificate or Bearer
//! token), so its `node_agent_credential` and `credential_type` are not consulted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_proto::grpc::google::rpc;
use mesh_proto::grpc::istio::v1::auth::istio_ca_service_server::{
    IstioCaService, IstioCaServiceServer,
};
use mesh_proto::grpc::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_proto::grpc::istio::v1::auth::{
    CsrRequest, CsrResponse, IstioCertificateRequest, IstioCertificateResponse,
};
use mesh_runtime::Shutdown;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::ca::{CaError, CertificateAuthority, Identity, KeyAlgorithm, LeafRequest, pem_certs};
use crate::signing::{CsrSigner, SignError};

/// The service account of Citadel's serving certificate (Istio's name).
pub const SERVING_SERVICE_ACCOUNT: &str = "istio-citadel-service-account";
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long calls in flight may take to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("binding the gRPC address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("issuing the serving certificate: {0}")]
    ServingCert(#[from] CaError),
    #[error("building the TLS configuration: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How the server presents itself.
#[derive(Debug, Clone)]
pub struct ServingOptions {
    /// The serving certificate's SPIFFE identity.
    pub identity: Identity,
    /// Its DNS SANs (`--grpc-host-identities`).
    pub dns_names: Vec<String>,
    /// Its validity; reissued at half of it.
    pub ttl: Duration,
}

/// Binds the gRPC address (early, so a port conflict fails at start-up).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, GrpcError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GrpcError::Bind { addr, source })
}

/// Serves both CSR services on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ca: Arc<CertificateAuthority>,
    signer: Arc<CsrSigner>,
    serving: ServingOptions,
    root_changed: watch::Receiver<u64>,
    shutdown: Shutdown,
) -> Result<(), GrpcError> {
    let (config, refresh_at) = tls_config(&ca, &serving)?;
    let (config_tx, config_rx) = watch::channel(config);
    tokio::spawn(refresh_serving_cert(
        ca,
        serving,
        refresh_at,
        config_tx,
        root_changed,
        shutdown.clone(),
    ));

    let (conn_tx, conn_rx) = mpsc::channel::<TlsStream<TcpStream>>(256);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "gRPC server (TLS) listening");
    }
    tokio::spawn(accept(listener, config_rx, conn_tx, shutdown.clone()));
    let incoming = ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>);

    let service = CaServices { signer };
    let server = tonic::transport::Server::builder()
        .add_service(IstioCertificateServiceServer::new(service.clone()))
        .add_service(IstioCaServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    // On shutdown, calls in flight may finish, but idle client connections must not keep the
    // process alive: past the drain time the server is dropped with them.
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        r = server => r?,
        _ = drain_deadline => tracing::info!("gRPC connections still open after {DRAIN_TIMEOUT:?}; closing them"),
    }
    tracing::info!("gRPC server stopped");
    Ok(())
}

/// Accepts TCP connections and completes their TLS handshakes (each in its own task, with a
/// time limit) before handing them to the gRPC server.
async fn accept(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    conns: mpsc::Sender<TlsStream<TcpStream>>,
    shutdown: Shutdown,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.borrow().clone());
        let conns = conns.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let tls = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let _ = conns.send(tls).await;
        });
    }
}

/// Reissues the serving certificate at `refresh_at`, and at once when the root changes.
async fn refresh_serving_cert(
    ca: Arc<CertificateAuthority>,
    serving: ServingOptions,
    mut refresh_at: SystemTime,
    config: watch::Sender<Arc<ServerConfig>>,
    mut root_changed: watch::Receiver<u64>,
    shutdown: Shutdown,
) {
    let mut root_open = true;
    loop {
        let wait = refresh_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            r = root_changed.changed(), if root_open => {
                if r.is_err() {
                    root_open = false;
                    continue;
                }
            }
        }
        match tls_config(&ca, &serving) {
            Ok((next, at)) => {
                config.send_replace(next);
                refresh_at = at;
                tracing::info!("gRPC serving certificate reissued");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reissue the gRPC serving certificate; retrying");
                refresh_at = SystemTime::now() + Duration::from_secs(10);
            }
        }
    }
}

/// A fresh serving certificate and the TLS configuration around it; also when to renew it.
fn tls_config(
    ca: &CertificateAuthority,
    serving: &ServingOptions,
) -> Result<(Arc<ServerConfig>, SystemTime), GrpcError> {
    let now = SystemTime::now();
    let out = ca.issue(
        KeyAlgorithm::EcdsaP256,
        &LeafRequest {
            identity: &serving.identity,
            dns_names: &serving.dns_names,
            ttl: serving.ttl,
        },
        now,
    )?;
    let tls = |e: &dyn std::fmt::Display| GrpcError::Tls(e.to_string());
    let chain: Vec<CertificateDer<'static>> = pem_certs(&out.issued.cert_chain)
        .map_err(|e| tls(&e))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = pem::parse(&out.key).map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.into_contents()));
    let mut roots = RootCertStore::empty();
    for der in pem_certs(&out.issued.root_cert).map_err(|e| tls(&e))? {
        roots.add(CertificateDer::from(der)).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let life = out
        .issued
        .not_after
        .duration_since(now)
        .unwrap_or(Duration::ZERO);
    Ok((Arc::new(config), now + life / 2))
}

/// The credentials of a call: the TLS client chain and the Bearer token.
fn credentials<T>(request: &Request<T>) -> Credentials {
    let peer_chain = request
        .peer_certs()
        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    let bearer = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        })
        .filter(|t| !t.is_empty());
    Credentials { peer_chain, bearer }
}

fn status_of(e: &SignError) -> Status {
    match e {
        SignError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
        SignError::InvalidCsr(_) => Status::invalid_argument(e.to_string()),
        SignError::Internal(_) => Status::internal(e.to_string()),
    }
}

/// Both CSR services over one [`CsrSigner`].
#[derive(Debug, Clone)]
struct CaServices {
    signer: Arc<CsrSigner>,
}

// === impl CaServices ===

#[tonic::async_trait]
impl IstioCertificateService for CaServices {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let creds = credentials(&request);
        let req = request.into_inner();
        let ttl = u64::try_from(req.validity_duration)
            .ok()
            .map(Duration::from_secs);
        let (_, issued) = self
            .signer
            .sign(&creds, req.csr.as_bytes(), ttl)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.chain,
        }))
    }
}

#[tonic::async_trait]
impl IstioCaService for CaServices {
    async fn handle_csr(
        &self,
        request: Request<CsrRequest>,
    ) -> Result<Response<CsrResponse>, Status> {
        let creds = credentials(&request);
        let req = request.into_inner();
        let ttl = u64::try_from(req.requested_ttl_minutes)
            .ok()
            .map(|m| Duration::from_secs(m * 60));
        let (_, issued) = self
            .signer
            .sign(&creds, &req.csr_pem, ttl)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(CsrResponse {
            is_approved: true,
            status: Some(rpc::Status {
                code: 0,
                message: String::new(),
                details: Vec::new(),
            }),
            signed_cert: issued.cert.into_bytes(),
            cert_chain: issued.chain[1..].concat().into_bytes(),
        }))
    }
}
