//! The certificate authority: a signing key and certificate (a self-signed root, or an
//! intermediate plugged in by the operator), and the workload certificates it issues.
//!
//! - [`CaBundle`]: the CA's material as PEM, as it is stored (`istio-ca-secret`, `cacerts`, or
//!   files). [`root`] makes and rotates self-signed bundles; [`store`] persists them.
//! - [`CertificateAuthority`]: the loaded, checked bundle, and [`CertificateAuthority::sign`].
//!   Swapping in a rotated root ([`CertificateAuthority::replace`]) is atomic for signers.
//! - [`csr`]: parsing and checking certificate signing requests.
//!
//! Leaf certificates carry one URI SAN, the SPIFFE identity, plus DNS SANs only when asked
//! (control-plane accounts); their subject is empty, so the SAN extension is critical (RFC 5280
//! 4.2.1.6). Key usage is digitalSignature and keyEncipherment, extended key usage serverAuth
//! and clientAuth; basicConstraints says CA:FALSE. `notBefore` is backdated by
//! [`CaOptions::backdate`] (a minute by default) so a peer whose clock runs a little behind
//! accepts a fresh certificate; `notAfter` is `now + ttl`, with `ttl` capped at
//! [`CaOptions::max_ttl`] and `notAfter` never past the signing certificate's own expiry.
//! Serial numbers are 128 random bits.

pub mod csr;
mod identity;
mod keys;
pub mod root;
pub mod store;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

pub use identity::Identity;
pub use keys::KeyAlgorithm;

/// Errors of the CA: bad CA material (named by where it came from), or a failed signature.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A SPIFFE identity (or one of its parts) is malformed.
    #[error("invalid identity {value:?}: {message}")]
    Identity { value: String, message: String },
    /// Key or certificate generation failed.
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// CA material (PEM certificates or key) is unusable; `what` names the source and field,
    /// e.g. `cacerts ca-key.pem` or `--signing-cert /etc/cacerts/ca-cert.pem`.
    #[error("{what}: {message}")]
    Material { what: String, message: String },
    /// Signing a certificate failed.
    #[error("signing certificate for {identity}: {source}")]
    Sign {
        identity: String,
        #[source]
        source: rcgen::Error,
    },
}

/// CA material as PEM text, as it is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// The certificate that signs workload certificates (`ca-cert.pem`).
    pub signing_cert: String,
    /// Its private key (`ca-key.pem`), PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub signing_key: String,
    /// The certificates between the signing certificate and the root, in order, optionally
    /// followed by the root (`cert-chain.pem`); empty for a self-signed root.
    pub cert_chain: String,
    /// The root of trust (`root-cert.pem`); the signing certificate itself when self-signed.
    pub root_cert: String,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("signing_cert", &self.signing_cert)
            .field("signing_key", &"[elided]")
            .field("cert_chain", &self.cert_chain)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

/// How leaf certificates are issued.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// The longest validity of any issued certificate (`--max-workload-cert-ttl`).
    pub max_ttl: Duration,
    /// How far `notBefore` lies in the past, for clock skew between peers.
    pub backdate: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            backdate: Duration::from_secs(60),
        }
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafRequest<'a> {
    pub identity: &'a Identity,
    /// DNS SANs, for control-plane accounts that serve by name; usually empty.
    pub dns_names: &'a [String],
    /// The requested validity; capped at [`CaOptions::max_ttl`].
    pub ttl: Duration,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf alone, PEM.
    pub cert: String,
    /// The leaf followed by the signing certificate and any intermediates up to and including
    /// the root, PEM (what goes in `cert-chain.pem`).
    pub cert_chain: String,
    /// Every certificate of `cert_chain`, one PEM each, leaf first.
    pub chain: Vec<String>,
    /// The root of trust, PEM.
    pub root_cert: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The serial number, lower-case hex.
    pub serial: String,
}

/// An issued certificate and the private key Citadel generated for it.
#[derive(Debug, Clone)]
pub struct IssuedWithKey {
    pub issued: Issued,
    /// PKCS#8 PEM.
    pub key: String,
}

/// The CA's view of one loaded bundle; replaced whole on root rotation.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// Signing certificate, intermediates, root: one PEM each.
    chain: Vec<String>,
    root_pem: String,
    signing_not_after: SystemTime,
    root_not_before: SystemTime,
    root_not_after: SystemTime,
    self_signed: bool,
    bundle: CaBundle,
}

/// The certificate authority. Cheap to share (`Arc`); signing takes a read lock only long
/// enough to clone an `Arc`.
pub struct CertificateAuthority {
    signer: RwLock<Arc<Signer>>,
    options: CaOptions,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.current();
        f.debug_struct("CertificateAuthority")
            .field("self_signed", &s.self_signed)
            .field("root_not_after", &s.root_not_after)
            .field("options", &self.options)
            .finish()
    }
}

/// A read-only summary of the CA, for status pages and metrics.
#[derive(Debug, Clone)]
pub struct CaInfo {
    pub self_signed: bool,
    pub root_cert: String,
    pub root_not_before: SystemTime,
    pub root_not_after: SystemTime,
    pub signing_not_after: SystemTime,
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Loads and checks `bundle`; `source` names where it came from in error messages.
    pub fn new(bundle: CaBundle, source: &str, options: CaOptions) -> Result<Self, CaError> {
        let signer = Signer::load(bundle, source)?;
        Ok(Self {
            signer: RwLock::new(Arc::new(signer)),
            options,
        })
    }

    /// Swaps in a new bundle (a rotated root) after checking it; certificates signed from now
    /// on use it.
    pub fn replace(&self, bundle: CaBundle, source: &str) -> Result<(), CaError> {
        let signer = Signer::load(bundle, source)?;
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
        Ok(())
    }

    /// The bundle in use.
    pub fn bundle(&self) -> CaBundle {
        self.current().bundle.clone()
    }

    /// The root of trust in use, PEM.
    pub fn root_cert(&self) -> String {
        self.current().root_pem.clone()
    }

    /// A summary of the CA in use.
    pub fn info(&self) -> CaInfo {
        let s = self.current();
        CaInfo {
            self_signed: s.self_signed,
            root_cert: s.root_pem.clone(),
            root_not_before: s.root_not_before,
            root_not_after: s.root_not_after,
            signing_not_after: s.signing_not_after,
        }
    }

    /// The issuing options.
    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    /// Signs a certificate for `public_key` with the identity (and DNS names) of `request`,
    /// never anything else: whatever a CSR asked for is not consulted here.
    pub fn sign(
        &self,
        public_key: &impl PublicKeyData,
        request: &LeafRequest<'_>,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let signer = self.current();
        let identity = request.identity.uri();
        let sign_err = |source| CaError::Sign {
            identity: identity.clone(),
            source,
        };
        let ttl = request.ttl.min(self.options.max_ttl);
        let not_before = now.checked_sub(self.options.backdate).unwrap_or(now);
        let not_after = (now + ttl).min(signer.signing_not_after);

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let uri = identity.clone().try_into().map_err(sign_err)?;
        params.subject_alt_names.push(SanType::URI(uri));
        for name in request.dns_names {
            let dns = name.clone().try_into().map_err(sign_err)?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &signer.issuer)
            .map_err(sign_err)?;

        let leaf = cert.pem();
        let mut chain = Vec::with_capacity(signer.chain.len() + 1);
        chain.push(leaf.clone());
        chain.extend(signer.chain.iter().cloned());
        Ok(Issued {
            cert: leaf,
            cert_chain: chain.concat(),
            chain,
            root_cert: signer.root_pem.clone(),
            not_before: truncate_to_seconds(not_before),
            not_after: truncate_to_seconds(not_after),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// Generates a key of `algorithm` and signs a certificate for it.
    pub fn issue(
        &self,
        algorithm: KeyAlgorithm,
        request: &LeafRequest<'_>,
        now: SystemTime,
    ) -> Result<IssuedWithKey, CaError> {
        let key = algorithm.generate()?;
        let issued = self.sign(&key, request, now)?;
        Ok(IssuedWithKey {
            issued,
            key: key.serialize_pem(),
        })
    }

    fn current(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

// === impl Signer ===

impl Signer {
    fn load(bundle: CaBundle, source: &str) -> Result<Self, CaError> {
        let err = |field: &str, message: String| CaError::Material {
            what: format!("{source} {field}"),
            message,
        };
        let signing = pem_certs(&bundle.signing_cert).map_err(|m| err("ca-cert.pem", m))?;
        let [signing_der] = signing.as_slice() else {
            return Err(err(
                "ca-cert.pem",
                format!("expected one certificate, found {}", signing.len()),
            ));
        };
        let roots = pem_certs(&bundle.root_cert).map_err(|m| err("root-cert.pem", m))?;
        let [root_der] = roots.as_slice() else {
            return Err(err(
                "root-cert.pem",
                format!("expected one certificate, found {}", roots.len()),
            ));
        };
        let intermediates = if bundle.cert_chain.trim().is_empty() {
            Vec::new()
        } else {
            pem_certs(&bundle.cert_chain).map_err(|m| err("cert-chain.pem", m))?
        };
        let key = KeyPair::from_pem(&bundle.signing_key)
            .map_err(|e| err("ca-key.pem", format!("not a usable private key: {e}")))?;

        // The signing certificate: a CA whose public key is the key's.
        let signing_cert = parse_cert(signing_der).map_err(|m| err("ca-cert.pem", m))?;
        if !signing_cert.is_ca() {
            return Err(err(
                "ca-cert.pem",
                "is not a CA certificate (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        if signing_cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(err(
                "ca-key.pem",
                "does not match the public key of ca-cert.pem".into(),
            ));
        }

        // The chain above it: signing cert, intermediates (in order), root; each issued by the
        // next, ending at the self-signed root.
        let mut ders: Vec<Vec<u8>> = vec![signing_der.clone()];
        for der in &intermediates {
            if der != signing_der {
                ders.push(der.clone());
            }
        }
        if ders.last() != Some(root_der) {
            ders.push(root_der.clone());
        }
        let certs = ders
            .iter()
            .map(|d| parse_cert(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err("cert-chain.pem", m))?;
        for pair in certs.windows(2) {
            let (child, parent) = (&pair[0], &pair[1]);
            if child.issuer() != parent.subject() {
                return Err(err(
                    "cert-chain.pem",
                    format!(
                        "{} is issued by {}, not by the next certificate {}",
                        child.subject(),
                        child.issuer(),
                        parent.subject()
                    ),
                ));
            }
            child
                .verify_signature(Some(parent.public_key()))
                .map_err(|e| {
                    err(
                        "cert-chain.pem",
                        format!(
                            "the signature of {} does not verify with the key of {}: {e}",
                            child.subject(),
                            parent.subject()
                        ),
                    )
                })?;
        }
        let root = certs.last().expect("chain holds at least the root");
        if root.subject() != root.issuer() {
            return Err(err(
                "root-cert.pem",
                format!("{} is not self-signed", root.subject()),
            ));
        }

        let self_signed = ders.len() == 1;
        let issuer = Issuer::from_ca_cert_der(&signing_der.clone().into(), key)
            .map_err(|e| err("ca-cert.pem", e.to_string()))?;
        let chain = ders.iter().map(|d| der_to_pem(d)).collect();
        Ok(Signer {
            issuer,
            chain,
            root_pem: der_to_pem(root_der),
            signing_not_after: asn1_time(signing_cert.validity().not_after),
            root_not_before: asn1_time(root.validity().not_before),
            root_not_after: asn1_time(root.validity().not_after),
            self_signed,
            bundle,
        })
    }
}

// === PEM and X.509 helpers ===

/// The DER of every `CERTIFICATE` block in `text`; an error for anything else or for none.
pub fn pem_certs(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    if blocks.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(b.into_contents())
            } else {
                Err(format!(
                    "unexpected PEM block {:?} (want CERTIFICATE)",
                    b.tag()
                ))
            }
        })
        .collect()
}

/// PEM text of one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Parses one DER certificate, refusing trailing bytes.
pub fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(format!("not an X.509 certificate: {e}")),
    }
}

/// Converts an X.509 time to `SystemTime` (clamped at the epoch).
pub fn asn1_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// 128 random bits, positive and never zero (the top bit cleared, one low bit forced).
pub(crate) fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    // The OS random source failing is not recoverable; fall back to the clock so a serial is
    // still unique in practice rather than panicking.
    if getrandom::fill(&mut serial).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        serial = nanos.to_be_bytes();
    }
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        let bundle = root::self_signed(
            KeyAlgorithm::EcdsaP256,
            "cluster.local",
            Duration::from_secs(3650 * 86400),
            SystemTime::now(),
        )
        .unwrap();
        CertificateAuthority::new(bundle, "test", CaOptions::default()).unwrap()
    }

    #[test]
    fn issues_spiffe_leaf_with_capped_ttl() {
        let ca = ca();
        let id = Identity::new("cluster.local", "default", "reviews").unwrap();
        let now = SystemTime::now();
        let out = ca
            .issue(
                KeyAlgorithm::EcdsaP256,
                &LeafRequest {
                    identity: &id,
                    dns_names: &[],
                    ttl: Duration::from_secs(1000 * 86400),
                },
                now,
            )
            .unwrap();
        let ders = pem_certs(&out.issued.cert_chain).unwrap();
        assert_eq!(ders.len(), 2, "leaf + root");
        let leaf = parse_cert(&ders[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => format!("URI:{u}"),
                other => format!("other:{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            vec!["URI:spiffe://cluster.local/ns/default/sa/reviews"]
        );
        assert!(san.critical, "empty subject: SAN must be critical");
        let life = asn1_time(leaf.validity().not_after)
            .duration_since(now)
            .unwrap();
        assert!(life <= Duration::from_secs(90 * 86400), "{life:?}");
        assert!(life > Duration::from_secs(90 * 86400 - 5), "{life:?}");
        assert!(!leaf.is_ca());
        assert_ne!(out.issued.serial, "");
    }

    #[test]
    fn refuses_mismatched_material_naming_the_field() {
        let a = root::self_signed(
            KeyAlgorithm::EcdsaP256,
            "td",
            Duration::from_secs(86400),
            SystemTime::now(),
        )
        .unwrap();
        let b = root::self_signed(
            KeyAlgorithm::EcdsaP256,
            "td",
            Duration::from_secs(86400),
            SystemTime::now(),
        )
        .unwrap();
        let mixed = CaBundle {
            signing_key: b.signing_key.clone(),
            ..a.clone()
        };
        let e = CertificateAuthority::new(mixed, "cacerts", CaOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cacerts ca-key.pem: does not match"),
            "{e}"
        );
        let garbage = CaBundle {
            root_cert: "hello".into(),
            ..a
        };
        let e = CertificateAuthority::new(garbage, "cacerts", CaOptions::default()).unwrap_err();
        assert!(e.to_string().contains("root-cert.pem"), "{e}");
    }

    #[test]
    fn serials_are_random_and_positive() {
        let a = random_serial();
        let b = random_serial();
        assert_ne!(a, b);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
    }
}
