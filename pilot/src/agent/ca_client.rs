//! The workload certificate from Citadel's CSR API, as Istio 1.1's node agent in
//! `pilot-agent` got it: a key pair made in memory, a CSR for the pod's SPIFFE identity, and
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS, renewed before expiry.
//!
//! - **Key**: ECDSA P-256 by default ([`KeyType::EcdsaP256`]: small, fast to make and to
//!   handshake with); RSA 2048 ([`KeyType::Rsa2048`]) is Istio 1.1's choice and is offered
//!   too. A fresh key is made for every certificate. It lives only in this process (and in
//!   Envoy, which gets it over SDS, see [`super::sds`]): nothing here writes it anywhere.
//! - **CSR**: one URI SAN, `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` (Citadel signs for the
//!   authenticated caller's identity whatever the CSR asks; asking for the right one keeps its
//!   log quiet).
//! - **Caller credential** ([`Credential`]): by default the pod's projected ServiceAccount
//!   token (`--token-path`, default [`DEFAULT_TOKEN_PATH`], audience `istio-ca`), sent as
//!   `authorization: Bearer TOKEN` and re-read for every call (the kubelet rotates it); Citadel
//!   checks it with a TokenReview. Without Kubernetes (Citadel on files), Citadel accepts a
//!   client certificate it issued instead: [`Credential::ClientCert`] presents the mounted
//!   `istio.<sa>` certificate on the TLS connection (Istio's node agent did so on VMs).
//! - **Trust**: the connection is verified against the mesh root in `--ca-root-cert`, default
//!   [`DEFAULT_ROOT_CERT`] (the `root-cert.pem` of the mounted `istio.<sa>` secret, Istio 1.0's
//!   place; Citadel writes the root into every such secret and publishes no ConfigMap of it),
//!   re-read for every call, so a rotated root is picked up. The server name checked is
//!   `--ca-server-name`, default [`DEFAULT_SERVER_NAME`] (a DNS SAN of Citadel's serving
//!   certificate, `--grpc-host-identities`). The root served to Envoy (`ROOTCA`) is that file.
//! - **Renewal**: at [`DEFAULT_GRACE_RATIO`] (Istio's `SECRET_GRACE_PERIOD_RATIO`, 0.5) of
//!   the certificate's lifetime, counted from its receipt (Citadel backdates `notBefore` by
//!   a minute); a failed call is retried with exponential backoff (1 s doubling to 60 s,
//!   jittered), and the current certificate keeps being served until a new one arrives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_proto::grpc::istio::v1::auth::IstioCertificateRequest;
use mesh_proto::grpc::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_runtime::Shutdown;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, SanType};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Citadel's gRPC address in Istio's install.
pub const DEFAULT_CA_ADDRESS: &str = "istio-citadel.istio-system.svc:8060";
/// Where Kubernetes mounts the projected token with audience `istio-ca` (Istio's path).
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// The mesh root of the mounted `istio.<sa>` secret (Istio 1.0's mount point).
pub const DEFAULT_ROOT_CERT: &str = "/etc/certs/root-cert.pem";
/// The name Citadel's serving certificate carries by default.
pub const DEFAULT_SERVER_NAME: &str = "istio-citadel";
/// Istio's `SECRET_GRACE_PERIOD_RATIO`: renew once this fraction of the lifetime is left.
pub const DEFAULT_GRACE_RATIO: f64 = 0.5;
/// How long one CreateCertificate call (connection included) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Errors getting a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("the token is not a valid header value")]
    BadToken,
    #[error("making the key pair or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("--ca-address {0:?}: expected HOST:PORT")]
    Address(String),
    #[error("connecting to the CA at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CreateCertificate: {0}")]
    Call(#[from] tonic::Status),
    #[error("CreateCertificate timed out after {0:?}")]
    Timeout(Duration),
    #[error("the CA's answer is unusable: {0}")]
    BadResponse(String),
}

/// The key type of the workload certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256 (Istio 1.1's default).
    Rsa2048,
}

/// How the agent proves who it is to Citadel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A ServiceAccount token (JWT) in this file, sent as `authorization: Bearer`.
    Token(PathBuf),
    /// A TLS client certificate issued by Citadel (the mounted `istio.<sa>` files).
    ClientCert { chain: PathBuf, key: PathBuf },
}

/// Where and how to ask for the certificate.
#[derive(Debug, Clone)]
pub struct CaClientOptions {
    /// Citadel's gRPC address, `HOST:PORT`.
    pub address: String,
    /// The name Citadel's serving certificate is checked against.
    pub server_name: String,
    /// The mesh root (PEM file) the connection is verified against; also `ROOTCA`.
    pub root_cert: PathBuf,
    pub credential: Credential,
    /// The identity asked for in the CSR (`spiffe://TD/ns/NS/sa/SA`).
    pub identity: String,
    pub key_type: KeyType,
    /// The validity asked for; `None`: Citadel's default (`--workload-cert-ttl`).
    pub ttl: Option<Duration>,
    /// Renew once this fraction of the lifetime is left (clamped to 0.01..=0.99).
    pub grace_ratio: f64,
}

/// A certificate with its key and the root, as served to Envoy.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCert {
    /// The leaf then its issuers (PEM), as the CA sent them.
    pub cert_chain: String,
    /// The private key, PKCS#8 PEM; never written anywhere.
    pub key: String,
    /// The mesh root, PEM.
    pub root_cert: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"[elided]")
            .finish_non_exhaustive()
    }
}

// === impl WorkloadCert ===

impl WorkloadCert {
    /// When to renew it, received at `received`: once `grace_ratio` of its lifetime is left.
    /// The lifetime counts from `received` when the CA backdated `notBefore` (Citadel does, by
    /// a minute, for clock skew), so a short-lived certificate is not renewed at once.
    pub fn renew_at(&self, received: SystemTime, grace_ratio: f64) -> SystemTime {
        renew_at(self.not_before.max(received), self.not_after, grace_ratio)
    }
}

/// The moment `grace_ratio` of the lifetime `not_before..not_after` is left.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, grace_ratio: f64) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let ratio = grace_ratio.clamp(0.01, 0.99);
    not_before + life.mul_f64(1.0 - ratio)
}

/// The retry delay after `failures` consecutive failures (1 s doubling, at most 60 s), with
/// `jitter` in 0..1 taking up to a fifth off.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

/// A key pair of `key_type` and a CSR (PEM) for `identity` signed with it.
pub fn make_csr(identity: &str, key_type: KeyType) -> Result<(KeyPair, String), CaClientError> {
    let key = match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        KeyType::Rsa2048 => KeyPair::generate_for(&PKCS_RSA_SHA256)?,
    };
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
    // Citadel names the subject itself; an empty one is what Istio's agent sent too.
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

fn read(what: &'static str, path: &Path) -> Result<String, CaClientError> {
    std::fs::read_to_string(path).map_err(|source| CaClientError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// One CreateCertificate round: a new key, a CSR, the call; the certificate and its key.
pub async fn fetch(opts: &CaClientOptions) -> Result<WorkloadCert, CaClientError> {
    if opts.address.rsplit_once(':').is_none() {
        return Err(CaClientError::Address(opts.address.clone()));
    }
    let root = read("the CA root", &opts.root_cert)?;
    let bearer = match &opts.credential {
        Credential::Token(path) => {
            let token = read("the token", path)?;
            let token = token.trim();
            if token.is_empty() {
                return Err(CaClientError::EmptyToken(path.clone()));
            }
            Some(
                format!("Bearer {token}")
                    .parse::<tonic::metadata::MetadataValue<_>>()
                    .map_err(|_| CaClientError::BadToken)?,
            )
        }
        Credential::ClientCert { .. } => None,
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root))
        .domain_name(opts.server_name.clone());
    if let Credential::ClientCert { chain, key } = &opts.credential {
        tls = tls.identity(Identity::from_pem(
            read("the client certificate", chain)?,
            read("the client key", key)?,
        ));
    }
    let connect = |source| CaClientError::Connect {
        address: opts.address.clone(),
        source,
    };
    let endpoint = Channel::from_shared(format!("https://{}", opts.address))
        .map_err(|_| CaClientError::Address(opts.address.clone()))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tls_config(tls)
        .map_err(connect)?;

    let (key, csr) = make_csr(&opts.identity, opts.key_type)?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: opts
            .ttl
            .map(|t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        metadata: None,
    });
    if let Some(b) = bearer {
        request.metadata_mut().insert("authorization", b);
    }
    let call = async {
        let channel = endpoint.connect().await.map_err(connect)?;
        let response = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await?;
        Ok::<_, CaClientError>(response.into_inner())
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| CaClientError::Timeout(CALL_TIMEOUT))??;
    let leaf = response
        .cert_chain
        .first()
        .ok_or_else(|| CaClientError::BadResponse("no certificate".into()))?;
    let (not_before, not_after) = validity(leaf)?;
    // Envoy presents the leaf and its intermediates; the root is the trust anchor, not sent.
    let n = response.cert_chain.len();
    let presented = if n > 1 {
        &response.cert_chain[..n - 1]
    } else {
        &response.cert_chain[..]
    };
    let mut cert_chain = String::new();
    for pem in presented {
        cert_chain.push_str(pem.trim_end());
        cert_chain.push('\n');
    }
    Ok(WorkloadCert {
        cert_chain,
        key: key.serialize_pem(),
        root_cert: root,
        not_before,
        not_after,
    })
}

/// The validity of a PEM certificate.
pub(crate) fn validity(pem: &str) -> Result<(SystemTime, SystemTime), CaClientError> {
    let bad = |m: String| CaClientError::BadResponse(m);
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("leaf is not PEM: {e}")))?;
    let cert = p
        .parse_x509()
        .map_err(|e| bad(format!("leaf is not a certificate: {e}")))?;
    let v = cert.validity();
    let t = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((t(v.not_before), t(v.not_after)))
}

/// Keeps a certificate in `out` until `shutdown`: fetches one, renews it at the grace ratio,
/// retries failures with backoff. `out` holds `None` until the first certificate.
pub async fn run(
    opts: CaClientOptions,
    out: watch::Sender<Option<Arc<WorkloadCert>>>,
    shutdown: Shutdown,
) {
    let mut failures = 0u32;
    loop {
        let received = SystemTime::now();
        let wait = match fetch(&opts).await {
            Ok(cert) => {
                failures = 0;
                let at = cert.renew_at(received, opts.grace_ratio);
                tracing::info!(
                    identity = %opts.identity,
                    not_after = ?cert.not_after,
                    renew_in = ?at.duration_since(SystemTime::now()).unwrap_or_default(),
                    "workload certificate issued by the CA"
                );
                out.send_replace(Some(Arc::new(cert)));
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_millis(100))
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, jitter());
                tracing::warn!(error = %e, retry_in = ?wait, failures, "cannot get the workload certificate");
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A number in 0..1 that differs between agents (no RNG dependency needed for this).
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::*;
    use x509_parser::public_key::PublicKey;

    use super::*;

    fn csr_of(key_type: KeyType) -> (KeyPair, Vec<u8>) {
        let (key, pem) =
            make_csr("spiffe://cluster.local/ns/default/sa/reviews", key_type).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(p.label, "CERTIFICATE REQUEST");
        (key, p.contents)
    }

    #[test]
    fn csr_asks_for_the_spiffe_identity_with_the_key_type() {
        for (key_type, oid) in [
            (
                KeyType::EcdsaP256,
                x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY,
            ),
            (
                KeyType::Rsa2048,
                x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION,
            ),
        ] {
            let (key, der) = csr_of(key_type);
            let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
            csr.verify_signature().unwrap();
            let info = &csr.certification_request_info;
            assert_eq!(info.subject_pki.algorithm.algorithm, oid, "{key_type:?}");
            assert_eq!(
                info.subject_pki.raw,
                key.subject_public_key_info().as_slice()
            );
            let mut uris = Vec::new();
            for ext in csr.requested_extensions().into_iter().flatten() {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for n in &san.general_names {
                        if let GeneralName::URI(u) = n {
                            uris.push(u.to_string());
                        }
                    }
                }
            }
            assert_eq!(uris, ["spiffe://cluster.local/ns/default/sa/reviews"]);
            if key_type == KeyType::Rsa2048 {
                let Ok(PublicKey::RSA(rsa)) = info.subject_pki.parsed() else {
                    panic!("not RSA");
                };
                assert_eq!(rsa.key_size(), 2048);
            }
            // The private key is PKCS#8 PEM, for Envoy.
            assert!(
                key.serialize_pem()
                    .starts_with("-----BEGIN PRIVATE KEY-----")
            );
        }
    }

    #[test]
    fn renews_at_the_grace_ratio_and_backs_off() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86400);
        assert_eq!(renew_at(t0, t0 + day, 0.5), t0 + day / 2);
        assert_eq!(
            renew_at(t0, t0 + day, 0.25),
            t0 + Duration::from_secs(64800)
        );
        // Out-of-range ratios are clamped; a backwards validity renews at once.
        assert!(renew_at(t0, t0 + day, 5.0) < t0 + day / 50);
        assert_eq!(renew_at(t0 + day, t0, 0.5), t0 + day);
        // A notBefore backdated by a minute: the lifetime counts from receipt.
        let cert = WorkloadCert {
            cert_chain: String::new(),
            key: String::new(),
            root_cert: String::new(),
            not_before: t0 - Duration::from_secs(60),
            not_after: t0 + Duration::from_secs(30),
        };
        assert_eq!(cert.renew_at(t0, 0.5), t0 + Duration::from_secs(15));
        assert_eq!(
            cert.renew_at(t0 - Duration::from_secs(120), 0.5),
            t0 - Duration::from_secs(15)
        );
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX, 1.0), Duration::from_secs(48));
    }

    #[tokio::test]
    async fn unreachable_ca_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = CaClientOptions {
            address: "127.0.0.1:1".into(),
            server_name: DEFAULT_SERVER_NAME.into(),
            root_cert: dir.path().join("root.pem"),
            credential: Credential::Token(dir.path().join("token")),
            identity: "spiffe://cluster.local/ns/default/sa/a".into(),
            key_type: KeyType::EcdsaP256,
            ttl: None,
            grace_ratio: DEFAULT_GRACE_RATIO,
        };
        let e = fetch(&opts).await.unwrap_err();
        assert!(e.to_string().contains("reading the CA root"), "{e}");
        std::fs::write(&opts.root_cert, "junk").unwrap();
        std::fs::write(dir.path().join("token"), "  \n").unwrap();
        let e = fetch(&opts).await.unwrap_err();
        assert!(matches!(e, CaClientError::EmptyToken(_)), "{e}");
        opts.address = "nocolon".into();
        let e = fetch(&opts).await.unwrap_err();
        assert!(matches!(e, CaClientError::Address(_)), "{e}");
    }

    /// A stand-in for Citadel: TLS as `istio-citadel` under its own root, signing a CSR for
    /// whoever sends `authorization: Bearer good-token`.
    struct FakeCa {
        issuer: rcgen::Issuer<'static, KeyPair>,
        root: String,
        ttl: std::sync::Mutex<Option<i64>>,
    }

    #[tonic::async_trait]
    impl
        mesh_proto::grpc::istio::v1::auth::istio_certificate_service_server::IstioCertificateService
        for FakeCa
    {
        async fn create_certificate(
            &self,
            request: tonic::Request<IstioCertificateRequest>,
        ) -> Result<
            tonic::Response<mesh_proto::grpc::istio::v1::auth::IstioCertificateResponse>,
            tonic::Status,
        > {
            let auth = request.metadata().get("authorization").cloned();
            if auth.as_ref().and_then(|v| v.to_str().ok()) != Some("Bearer good-token") {
                return Err(tonic::Status::unauthenticated(format!("{auth:?}")));
            }
            let req = request.into_inner();
            *self.ttl.lock().unwrap() = Some(req.validity_duration);
            let csr = rcgen::CertificateSigningRequestParams::from_pem(&req.csr)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let leaf = csr
                .signed_by(&self.issuer)
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            Ok(tonic::Response::new(
                mesh_proto::grpc::istio::v1::auth::IstioCertificateResponse {
                    cert_chain: vec![leaf.pem(), self.root.clone()],
                },
            ))
        }
    }

    #[tokio::test]
    async fn fetches_with_the_bearer_token_over_tls() {
        use mesh_proto::grpc::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
        use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};

        let ca_key = KeyPair::generate().unwrap();
        let ca_key_pem = ca_key.serialize_pem();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let root = ca.pem();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["istio-citadel".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let fake = std::sync::Arc::new(FakeCa {
            issuer: rcgen::Issuer::from_ca_cert_pem(&root, KeyPair::from_pem(&ca_key_pem).unwrap())
                .unwrap(),
            root: root.clone(),
            ttl: std::sync::Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(TlsIdentity::from_pem(
                server_cert.pem(),
                server_key.serialize_pem(),
            )))
            .unwrap()
            .add_service(IstioCertificateServiceServer::from_arc(fake.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        let server = tokio::spawn(server);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), &root).unwrap();
        std::fs::write(dir.path().join("token"), "good-token\n").unwrap();
        let mut opts = CaClientOptions {
            address: addr.to_string(),
            server_name: DEFAULT_SERVER_NAME.into(),
            root_cert: dir.path().join("root.pem"),
            credential: Credential::Token(dir.path().join("token")),
            identity: "spiffe://cluster.local/ns/default/sa/reviews".into(),
            key_type: KeyType::EcdsaP256,
            ttl: Some(Duration::from_secs(3600)),
            grace_ratio: DEFAULT_GRACE_RATIO,
        };
        let cert = fetch(&opts).await.unwrap();
        assert_eq!(*fake.ttl.lock().unwrap(), Some(3600));
        // The leaf only (the root is the trust anchor), for the key made here; ROOTCA is the
        // root file.
        assert_eq!(cert.cert_chain.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(cert.root_cert, root);
        let (_, leaf) = x509_parser::pem::parse_x509_pem(cert.cert_chain.as_bytes()).unwrap();
        let leaf = leaf.parse_x509().unwrap();
        let key = KeyPair::from_pem(&cert.key).unwrap();
        assert_eq!(
            leaf.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        assert!(cert.not_after > cert.not_before);

        // A refused token, and a server name the certificate does not carry: errors.
        std::fs::write(dir.path().join("token"), "bad-token").unwrap();
        let e = fetch(&opts).await.unwrap_err();
        assert!(
            matches!(&e, CaClientError::Call(s) if s.code() == tonic::Code::Unauthenticated),
            "{e}"
        );
        std::fs::write(dir.path().join("token"), "good-token").unwrap();
        opts.server_name = "someone-else".into();
        assert!(fetch(&opts).await.is_err());

        // The renewal loop fills the channel and stops on shutdown.
        opts.server_name = DEFAULT_SERVER_NAME.into();
        let (tx, mut rx) = watch::channel(None);
        let task = tokio::spawn(run(opts, tx, shutdown.clone()));
        rx.changed().await.unwrap();
        assert!(rx.borrow().is_some());
        shutdown.cancel();
        task.await.unwrap();
        server.await.unwrap().unwrap();
    }
}
