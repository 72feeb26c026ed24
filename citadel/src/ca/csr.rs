//! Certificate signing requests: size limit, PEM, PKCS#10 structure, self-signature, and a
//! public key type the CA can put in a certificate.
//!
//! Only the public key of a CSR is used. The identity of the certificate comes from the
//! authenticated caller, never from the CSR's subject or SANs (they are only reported).

use rcgen::SubjectPublicKeyInfo;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The largest CSR accepted, in bytes of PEM. An RSA-4096 CSR with a few SANs is about 2 KiB.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Why a CSR was refused; [`CsrError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    /// No `CERTIFICATE REQUEST` PEM block.
    #[error("CSR is not PEM: {0}")]
    NotPem(String),
    /// Not a well-formed PKCS#10 request.
    #[error("CSR is malformed: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify: the caller does not hold the key.
    #[error("CSR signature does not verify")]
    BadSignature,
    /// The public key is of a type the CA does not issue for.
    #[error("CSR public key is not supported: {0}")]
    UnsupportedKey(String),
}

/// A checked CSR.
#[derive(Debug, Clone)]
pub struct ParsedCsr {
    /// The public key to certify.
    pub public_key: SubjectPublicKeyInfo,
    /// The URI SANs the request asked for (informational only).
    pub requested_uris: Vec<String>,
}

// === impl CsrError ===

impl CsrError {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::TooLarge { .. } => "csr_too_large",
            CsrError::NotPem(_) => "csr_not_pem",
            CsrError::Malformed(_) => "csr_malformed",
            CsrError::BadSignature => "csr_bad_signature",
            CsrError::UnsupportedKey(_) => "csr_unsupported_key",
        }
    }
}

/// Parses and checks a PEM CSR.
pub fn parse_pem(text: &[u8]) -> Result<ParsedCsr, CsrError> {
    if text.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge {
            len: text.len(),
            max: MAX_CSR_BYTES,
        });
    }
    let block = pem::parse(text).map_err(|e| CsrError::NotPem(e.to_string()))?;
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::NotPem(format!(
            "PEM block is {:?}, want CERTIFICATE REQUEST",
            block.tag()
        )));
    }
    parse_der(block.contents())
}

/// Parses and checks a DER CSR.
pub fn parse_der(der: &[u8]) -> Result<ParsedCsr, CsrError> {
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge {
            len: der.len(),
            max: MAX_CSR_BYTES,
        });
    }
    let csr = match X509CertificationRequest::from_der(der) {
        Ok(([], csr)) => csr,
        Ok(_) => return Err(CsrError::Malformed("trailing bytes".into())),
        Err(e) => return Err(CsrError::Malformed(e.to_string())),
    };
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let spki = csr.certification_request_info.subject_pki.raw;
    let public_key = SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
    let mut requested_uris = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        requested_uris.push(uri.to_string());
                    }
                }
            }
        }
    }
    Ok(ParsedCsr {
        public_key,
        requested_uris,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

    fn csr_pem(uri: &str) -> String {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn accepts_a_good_csr_and_reports_its_sans() {
        let pem = csr_pem("spiffe://cluster.local/ns/a/sa/b");
        let csr = parse_pem(pem.as_bytes()).unwrap();
        assert_eq!(csr.requested_uris, ["spiffe://cluster.local/ns/a/sa/b"]);
    }

    #[test]
    fn refuses_bad_input_with_reasons() {
        let big = vec![b'a'; MAX_CSR_BYTES + 1];
        assert_eq!(parse_pem(&big).unwrap_err().reason(), "csr_too_large");
        assert_eq!(parse_pem(b"hello").unwrap_err().reason(), "csr_not_pem");
        let not_csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", vec![1, 2, 3]));
        assert_eq!(
            parse_pem(not_csr.as_bytes()).unwrap_err().reason(),
            "csr_malformed"
        );
        // Flip a byte of the signature: the self-signature no longer verifies.
        let good = pem::parse(csr_pem("spiffe://x/ns/a/sa/b")).unwrap();
        let mut der = good.contents().to_vec();
        let last = der.len() - 3;
        der[last] ^= 0xff;
        let e = parse_der(&der).unwrap_err();
        assert!(
            matches!(e, CsrError::BadSignature | CsrError::Malformed(_)),
            "{e:?}"
        );
    }
}
