//! CSR signing for callers: authenticate, check the CSR, sign for the caller's own identity.
//!
//! The transport-independent core of the gRPC API ([`crate::grpc`]). The identity of the
//! certificate is always the authenticated caller's: the CSR contributes its public key only
//! (a CSR asking for another identity is signed for the caller, and the mismatch logged). The
//! TTL is the requested one, or the default when none is asked, capped at the CA's maximum.
//! Every outcome is counted: `citadel_csr_successes_total`, `citadel_csr_failures_total{reason}`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::{self, AuthError, Authenticator, Credentials};
use crate::ca::csr::{self, CsrError};
use crate::ca::{CaError, CertificateAuthority, Identity, Issued, LeafRequest};
use crate::metrics::Metrics;

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The caller is not authenticated.
    #[error("authentication failed: {0}")]
    Unauthenticated(#[from] AuthError),
    /// The CSR is refused.
    #[error("{0}")]
    InvalidCsr(#[from] CsrError),
    /// The CA failed to sign.
    #[error("{0}")]
    Internal(#[from] CaError),
}

/// Signs CSRs of authenticated callers.
pub struct CsrSigner {
    ca: Arc<CertificateAuthority>,
    authenticators: Vec<Arc<dyn Authenticator>>,
    default_ttl: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for CsrSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrSigner")
            .field(
                "authenticators",
                &self
                    .authenticators
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>(),
            )
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

// === impl SignError ===

impl SignError {
    /// A short, stable label for `citadel_csr_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignError::Unauthenticated(e) => e.reason(),
            SignError::InvalidCsr(e) => e.reason(),
            SignError::Internal(_) => "sign_failed",
        }
    }
}

// === impl CsrSigner ===

impl CsrSigner {
    /// `default_ttl` is used when a request asks for none (`--workload-cert-ttl`).
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticators: Vec<Arc<dyn Authenticator>>,
        default_ttl: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            ca,
            authenticators,
            default_ttl,
            metrics,
        }
    }

    /// Authenticates the caller and signs `csr_pem` for the caller's identity; `ttl` of `None`
    /// (or zero) means the default.
    pub async fn sign(
        &self,
        credentials: &Credentials,
        csr_pem: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(Identity, Issued), SignError> {
        let result = self.sign_inner(credentials, csr_pem, ttl).await;
        match &result {
            Ok((id, issued)) => {
                self.metrics.csr_successes.inc();
                self.metrics.issued("csr");
                tracing::debug!(identity = %id, serial = %issued.serial, "CSR signed");
            }
            Err(e) => {
                self.metrics.csr_failed(e.reason());
                tracing::info!(reason = e.reason(), error = %e, "CSR refused");
            }
        }
        result
    }

    async fn sign_inner(
        &self,
        credentials: &Credentials,
        csr_pem: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(Identity, Issued), SignError> {
        let identity = auth::authenticate(&self.authenticators, credentials).await?;
        let parsed = csr::parse_pem(csr_pem)?;
        let own = identity.uri();
        if parsed.requested_uris.iter().any(|u| *u != own) {
            tracing::info!(
                caller = %own,
                requested = ?parsed.requested_uris,
                "CSR asks for another identity; signing for the caller's own"
            );
        }
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.default_ttl)
            .min(self.ca.options().max_ttl);
        let issued = self.ca.sign(
            &parsed.public_key,
            &LeafRequest {
                identity: &identity,
                dns_names: &[],
                ttl,
            },
            SystemTime::now(),
        )?;
        Ok((identity, issued))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

    use super::*;
    use crate::auth::ClientCertAuthenticator;
    use crate::ca::{CaOptions, KeyAlgorithm, parse_cert, pem_certs, root};

    #[tokio::test]
    async fn signs_for_the_caller_never_for_the_csr() {
        let bundle = root::self_signed(
            KeyAlgorithm::EcdsaP256,
            "cluster.local",
            Duration::from_secs(86400 * 365),
            SystemTime::now(),
        )
        .unwrap();
        let options = CaOptions {
            max_ttl: Duration::from_secs(7200),
            ..CaOptions::default()
        };
        let ca = Arc::new(CertificateAuthority::new(bundle, "test", options).unwrap());
        let caller = Identity::new("cluster.local", "ns", "a").unwrap();
        let client = ca
            .issue(
                KeyAlgorithm::EcdsaP256,
                &LeafRequest {
                    identity: &caller,
                    dns_names: &[],
                    ttl: Duration::from_secs(3600),
                },
                SystemTime::now(),
            )
            .unwrap();
        let metrics = Metrics::default();
        let signer = CsrSigner::new(
            ca.clone(),
            vec![Arc::new(ClientCertAuthenticator::new(ca, "cluster.local"))],
            Duration::from_secs(3600),
            metrics.clone(),
        );
        let creds = Credentials {
            peer_chain: pem_certs(&client.issued.cert).unwrap(),
            bearer: None,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://cluster.local/ns/ns/sa/admin".try_into().unwrap(),
        ));
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let (id, issued) = signer
            .sign(
                &creds,
                csr.as_bytes(),
                Some(Duration::from_secs(86400 * 365)),
            )
            .await
            .unwrap();
        assert_eq!(id, caller);
        let der = pem_certs(&issued.cert).unwrap().remove(0);
        let leaf = parse_cert(&der).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            r#"[URI("spiffe://cluster.local/ns/ns/sa/a")]"#
        );
        let life = issued.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(life <= Duration::from_secs(7200), "capped: {life:?}");

        let e = signer.sign(&creds, b"garbage", None).await.unwrap_err();
        assert_eq!(e.reason(), "csr_not_pem");
        let e = signer
            .sign(&Credentials::default(), csr.as_bytes(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, SignError::Unauthenticated(_)), "{e}");
        assert_eq!(metrics.csr_successes.get(), 1);
    }
}
