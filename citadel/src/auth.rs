//! Who is calling the CSR API: credentials as the transport found them, and authenticators
//! that turn them into a SPIFFE [`Identity`].
//!
//! This module knows neither gRPC nor Kubernetes. The gRPC layer ([`crate::grpc`]) collects
//! [`Credentials`] (the TLS client certificate chain, the `authorization: Bearer ...` token);
//! an [`Authenticator`] checks the kind of credential it understands:
//!
//! - [`ClientCertAuthenticator`]: a certificate issued by this CA (checked again here, beside
//!   the TLS layer's chain check), whose single SPIFFE URI SAN is the identity. It is how
//!   workloads authenticate in file mode, and how one renews with the certificate it holds.
//! - `crate::k8s::TokenReviewAuthenticator`: a service-account JWT, checked by the API server
//!   (TokenReview, audience `istio-ca`); the identity is `system:serviceaccount:NS:SA`.
//!
//! [`authenticate`] tries each in turn; the first that accepts wins, and when none does the
//! refusal lists every reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::future::BoxFuture;
use x509_parser::extensions::GeneralName;

use crate::ca::{CertificateAuthority, Identity, asn1_time, parse_cert, pem_certs};

/// Credentials of one call, as the transport found them.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The TLS client certificate chain, DER, leaf first; empty without mutual TLS.
    pub peer_chain: Vec<Vec<u8>>,
    /// The Bearer token of the `authorization` metadata, if any.
    pub bearer: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("peer_chain", &self.peer_chain.len())
            .field("bearer", &self.bearer.as_ref().map(|_| "[elided]"))
            .finish()
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No authenticator found a credential it understands.
    #[error("no credential: present a client certificate issued by this CA or a Bearer token")]
    NoCredential,
    /// A client certificate was presented but is not acceptable.
    #[error("client certificate: {0}")]
    Certificate(String),
    /// A token was presented but is not acceptable.
    #[error("token: {0}")]
    Token(String),
    /// The authenticator could not decide (e.g. the API server is unreachable).
    #[error("{what} unavailable: {message}")]
    Unavailable { what: String, message: String },
    /// Several authenticators refused; each reason in turn.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    All(Vec<AuthError>),
}

/// Turns credentials into an identity.
pub trait Authenticator: Send + Sync + 'static {
    /// For logs: `client certificate`, `Kubernetes TokenReview`.
    fn name(&self) -> &'static str;
    /// `Ok(None)` when the credential this authenticator understands is absent; an error when
    /// it is present and refused.
    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<Option<Identity>, AuthError>>;
}

/// Tries each authenticator in order: the first identity wins; without one, every refusal is
/// reported (or [`AuthError::NoCredential`] when nobody found anything to check).
pub async fn authenticate(
    authenticators: &[Arc<dyn Authenticator>],
    credentials: &Credentials,
) -> Result<Identity, AuthError> {
    let mut refusals = Vec::new();
    for a in authenticators {
        match a.authenticate(credentials).await {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => {}
            Err(e) => refusals.push(e),
        }
    }
    match refusals.len() {
        0 => Err(AuthError::NoCredential),
        1 => Err(refusals.remove(0)),
        _ => Err(AuthError::All(refusals)),
    }
}

// === impl AuthError ===

impl AuthError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoCredential => "no_credential",
            AuthError::Certificate(_) => "bad_client_cert",
            AuthError::Token(_) => "bad_token",
            AuthError::Unavailable { .. } => "authenticator_unavailable",
            AuthError::All(v) => v
                .first()
                .map(AuthError::reason)
                .unwrap_or("unauthenticated"),
        }
    }
}

/// Accepts a client certificate issued by this CA; the identity is its SPIFFE URI SAN, which
/// must be in this CA's trust domain.
///
/// A client keeps its connection, so the same certificate comes with call after call: the
/// outcome of a full check is remembered (by the certificate's DER) until the certificate
/// expires, and a repeated call costs a hash lookup. (A rotated self-signed root keeps its
/// key, so what was issued under the old one still verifies; a plugged-in CA changes only with
/// a restart.)
pub struct ClientCertAuthenticator {
    ca: Arc<CertificateAuthority>,
    trust_domain: String,
    checked: Mutex<HashMap<Vec<u8>, (Identity, SystemTime, SystemTime)>>,
}

/// At most this many certificates are remembered; the memory is cleared when full.
const CHECKED_CAPACITY: usize = 4096;

impl std::fmt::Debug for ClientCertAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertAuthenticator")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

// === impl ClientCertAuthenticator ===

impl ClientCertAuthenticator {
    pub fn new(ca: Arc<CertificateAuthority>, trust_domain: &str) -> Self {
        Self {
            ca,
            trust_domain: trust_domain.to_string(),
            checked: Mutex::default(),
        }
    }

    /// The identity of a leaf certificate (DER) issued by the CA, checked at `now`.
    pub fn identity_of(&self, leaf_der: &[u8], now: SystemTime) -> Result<Identity, AuthError> {
        {
            let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((id, not_before, not_after)) = checked.get(leaf_der)
                && now >= *not_before
                && now <= *not_after
            {
                return Ok(id.clone());
            }
        }
        let (id, not_before, not_after) = self.check(leaf_der, now)?;
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.len() >= CHECKED_CAPACITY {
            checked.clear();
        }
        checked.insert(leaf_der.to_vec(), (id.clone(), not_before, not_after));
        Ok(id)
    }

    /// The full check: identity, notBefore, notAfter.
    fn check(
        &self,
        leaf_der: &[u8],
        now: SystemTime,
    ) -> Result<(Identity, SystemTime, SystemTime), AuthError> {
        let bad = |m: String| AuthError::Certificate(m);
        let leaf = parse_cert(leaf_der).map_err(bad)?;
        let validity = leaf.validity();
        let (not_before, not_after) = (
            asn1_time(validity.not_before),
            asn1_time(validity.not_after),
        );
        if now < not_before || now > not_after {
            return Err(bad("expired or not yet valid".into()));
        }
        if leaf.is_ca() {
            return Err(bad("is a CA certificate, not a workload's".into()));
        }
        // Issued by our signing certificate (the TLS layer checked the chain to the root; this
        // also refuses certificates of another CA under the same root).
        let signing = pem_certs(&self.ca.bundle().signing_cert).map_err(bad)?;
        let signing =
            parse_cert(signing.first().map(Vec::as_slice).unwrap_or_default()).map_err(bad)?;
        leaf.verify_signature(Some(signing.public_key()))
            .map_err(|_| bad("not issued by this CA".into()))?;

        let san = leaf
            .subject_alternative_name()
            .map_err(|e| bad(format!("bad subjectAltName: {e}")))?
            .ok_or_else(|| bad("no subjectAltName".into()))?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(bad(format!(
                "expected one SPIFFE URI SAN, found {}",
                uris.len()
            )));
        };
        let id = Identity::parse(uri).map_err(|e| bad(e.to_string()))?;
        if id.trust_domain != self.trust_domain {
            return Err(bad(format!(
                "{uri} is outside trust domain {}",
                self.trust_domain
            )));
        }
        Ok((id, not_before, not_after))
    }
}

impl Authenticator for ClientCertAuthenticator {
    fn name(&self) -> &'static str {
        "client certificate"
    }

    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<Option<Identity>, AuthError>> {
        Box::pin(async move {
            match credentials.peer_chain.first() {
                None => Ok(None),
                Some(leaf) => self.identity_of(leaf, SystemTime::now()).map(Some),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::{CaOptions, KeyAlgorithm, LeafRequest, root};

    fn ca(td: &str) -> Arc<CertificateAuthority> {
        let bundle = root::self_signed(
            KeyAlgorithm::EcdsaP256,
            td,
            Duration::from_secs(86400),
            SystemTime::now(),
        )
        .unwrap();
        Arc::new(CertificateAuthority::new(bundle, "test", CaOptions::default()).unwrap())
    }

    fn leaf(ca: &CertificateAuthority, id: &Identity) -> Vec<u8> {
        let out = ca
            .issue(
                KeyAlgorithm::EcdsaP256,
                &LeafRequest {
                    identity: id,
                    dns_names: &[],
                    ttl: Duration::from_secs(3600),
                },
                SystemTime::now(),
            )
            .unwrap();
        pem_certs(&out.issued.cert).unwrap().remove(0)
    }

    #[tokio::test]
    async fn client_certificates_of_this_ca_only() {
        let ours = ca("cluster.local");
        let auth: Arc<dyn Authenticator> =
            Arc::new(ClientCertAuthenticator::new(ours.clone(), "cluster.local"));
        let id = Identity::new("cluster.local", "ns", "a").unwrap();
        let creds = Credentials {
            peer_chain: vec![leaf(&ours, &id)],
            bearer: None,
        };
        assert_eq!(
            authenticate(std::slice::from_ref(&auth), &creds)
                .await
                .unwrap(),
            id
        );

        let other = ca("cluster.local");
        let creds = Credentials {
            peer_chain: vec![leaf(&other, &id)],
            bearer: None,
        };
        let e = authenticate(std::slice::from_ref(&auth), &creds)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not issued by this CA"), "{e}");

        let foreign = Identity::new("example.org", "ns", "a").unwrap();
        let creds = Credentials {
            peer_chain: vec![leaf(&ours, &foreign)],
            bearer: None,
        };
        let e = authenticate(std::slice::from_ref(&auth), &creds)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("outside trust domain"), "{e}");

        // Remembered, but only while the certificate is valid.
        let direct = ClientCertAuthenticator::new(ours.clone(), "cluster.local");
        let der = leaf(&ours, &id);
        assert_eq!(direct.identity_of(&der, SystemTime::now()).unwrap(), id);
        assert_eq!(direct.identity_of(&der, SystemTime::now()).unwrap(), id);
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert!(direct.identity_of(&der, later).is_err());

        let e = authenticate(&[auth], &Credentials::default())
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::NoCredential);
    }
}
