//! The certificate logic of `pilot check`, without a cluster: reading PEM bundles, verifying
//! that a serving chain ends at a certificate of a CA bundle (signatures, issuer names,
//! validity), the serving certificate's DNS names, and how long a root has left.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use super::CheckError;

/// The longest chain followed from a leaf to the bundle (a loop guard).
const MAX_DEPTH: usize = 8;

/// The DER of every `CERTIFICATE` block of a PEM text; `what` names the text in errors.
pub fn pem_certificates(text: &[u8], what: &str) -> Result<Vec<Vec<u8>>, CheckError> {
    let pem_err = |reason: String| CheckError::Pem {
        what: what.to_string(),
        reason,
    };
    let mut ders = Vec::new();
    for block in Pem::iter_from_buffer(text) {
        let block = block.map_err(|e| pem_err(format!("not PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(pem_err(format!(
                "holds a {:?} block, expected only CERTIFICATE blocks",
                block.label
            )));
        }
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err(pem_err("no PEM CERTIFICATE block".into()));
    }
    Ok(ders)
}

/// Parses DER certificates; `what` names them in errors.
pub fn parse_all<'a>(
    ders: &'a [Vec<u8>],
    what: &str,
) -> Result<Vec<X509Certificate<'a>>, CheckError> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| match X509Certificate::from_der(der) {
            Ok((_, cert)) => Ok(cert),
            Err(e) => Err(CheckError::Pem {
                what: what.to_string(),
                reason: format!("certificate #{} does not parse: {e}", i + 1),
            }),
        })
        .collect()
}

/// Verifies that the first certificate of `chain_pem` (the serving certificate, followed by
/// any intermediates) chains to a certificate of `bundle_pem`, each signature checked with the
/// issuer's key and each certificate valid at `now` (Unix seconds), and that it carries the
/// DNS name `dns_name`. Returns the serving certificate's subject and its days left.
pub fn verify_serving_chain(
    chain_pem: &[u8],
    bundle_pem: &[u8],
    dns_name: &str,
    now: i64,
) -> Result<(String, i64), CheckError> {
    let chain_der = pem_certificates(chain_pem, "the serving certificate chain")?;
    let bundle_der = pem_certificates(bundle_pem, "the caBundle")?;
    let chain = parse_all(&chain_der, "the serving certificate chain")?;
    let bundle = parse_all(&bundle_der, "the caBundle")?;
    let Some(leaf) = chain.first() else {
        return Err(CheckError::Chain("no serving certificate".into()));
    };

    let names = dns_names(leaf)?;
    if !names.iter().any(|n| n.eq_ignore_ascii_case(dns_name)) {
        return Err(CheckError::MissingSan {
            want: dns_name.to_string(),
            have: names,
        });
    }

    let mut current = leaf;
    for _ in 0..MAX_DEPTH {
        check_valid_at(current, now)?;
        if let Some(anchor) = bundle.iter().find(|ca| signed_by(current, ca)) {
            check_valid_at(anchor, now)?;
            return Ok((leaf.subject().to_string(), days_left(leaf, now)));
        }
        match chain
            .iter()
            .skip(1)
            .find(|ca| !std::ptr::eq(*ca, current) && signed_by(current, ca))
        {
            Some(next) => current = next,
            None => {
                let subjects: Vec<String> =
                    bundle.iter().map(|c| c.subject().to_string()).collect();
                return Err(CheckError::Chain(format!(
                    "{} is issued by {}, and no certificate of the caBundle ({}) signed it",
                    current.subject(),
                    current.issuer(),
                    subjects.join("; ")
                )));
            }
        }
    }
    Err(CheckError::Chain(format!(
        "no caBundle certificate within {MAX_DEPTH} links of {}",
        leaf.subject()
    )))
}

/// Whether `issuer` issued `cert`: names match and the signature verifies with its key.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// The DNS names of a certificate's subjectAltName extension.
pub fn dns_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, CheckError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CheckError::Pem {
            what: cert.subject().to_string(),
            reason: format!("bad subjectAltName: {e}"),
        })?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn check_valid_at(cert: &X509Certificate<'_>, now: i64) -> Result<(), CheckError> {
    match expiry(cert, now) {
        Expiry::Valid { .. } => Ok(()),
        Expiry::Expired { days_ago } => Err(CheckError::Chain(format!(
            "{} expired {days_ago} day(s) ago",
            cert.subject()
        ))),
        Expiry::NotYetValid => Err(CheckError::Chain(format!(
            "{} is not valid yet (notBefore {})",
            cert.subject(),
            cert.validity().not_before
        ))),
    }
}

/// Where `now` (Unix seconds) falls in a certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Valid, with this many whole days left.
    Valid { days_left: i64 },
    /// Past notAfter, by this many whole days.
    Expired { days_ago: i64 },
    /// Before notBefore.
    NotYetValid,
}

/// The validity of `cert` at `now`.
pub fn expiry(cert: &X509Certificate<'_>, now: i64) -> Expiry {
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < not_before {
        Expiry::NotYetValid
    } else if now > not_after {
        Expiry::Expired {
            days_ago: (now - not_after) / 86_400,
        }
    } else {
        Expiry::Valid {
            days_left: (not_after - now) / 86_400,
        }
    }
}

fn days_left(cert: &X509Certificate<'_>, now: i64) -> i64 {
    (cert.validity().not_after.timestamp() - now) / 86_400
}

/// The validity of the first certificate of a PEM text (Citadel's root).
pub fn root_expiry(pem: &[u8], what: &str, now: i64) -> Result<(String, Expiry), CheckError> {
    let ders = pem_certificates(pem, what)?;
    let certs = parse_all(&ders, what)?;
    let Some(root) = certs.first() else {
        return Err(CheckError::Chain(format!("{what}: no certificate")));
    };
    Ok((root.subject().to_string(), expiry(root, now)))
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn params(cn: &str, days: (i64, i64)) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        let t = time::OffsetDateTime::now_utc();
        p.not_before = t + time::Duration::days(days.0);
        p.not_after = t + time::Duration::days(days.1);
        p
    }

    fn root(cn: &str, days: (i64, i64)) -> Ca {
        let mut p = params(cn, days);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn intermediate(cn: &str, parent: &Ca) -> Ca {
        let mut p = params(cn, (-1, 100));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &parent.issuer).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(dns: &[&str], parent: &Ca, days: (i64, i64)) -> String {
        let mut p = params("istio-pilot", days);
        p.subject_alt_names = dns
            .iter()
            .map(|d| rcgen::SanType::DnsName((*d).try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        p.signed_by(&key, &parent.issuer).unwrap().pem()
    }

    const SAN: &str = "istio-pilot.istio-system.svc";

    #[test]
    fn a_leaf_signed_by_the_bundle_verifies() {
        let ca = root("root", (-1, 365));
        let leaf = leaf(&["istio-pilot", SAN], &ca, (-1, 90));
        let (subject, days) =
            verify_serving_chain(leaf.as_bytes(), ca.pem.as_bytes(), SAN, now()).unwrap();
        assert_eq!(subject, "CN=istio-pilot");
        assert!((88..=90).contains(&days), "{days}");
    }

    #[test]
    fn an_intermediate_in_the_chain_is_followed() {
        let ca = root("root", (-1, 365));
        let mid = intermediate("mid", &ca);
        let leaf = leaf(&[SAN], &mid, (-1, 90));
        let chain = format!("{leaf}{}", mid.pem);
        verify_serving_chain(chain.as_bytes(), ca.pem.as_bytes(), SAN, now()).unwrap();
        // Without the intermediate, there is no path.
        let err = verify_serving_chain(leaf.as_bytes(), ca.pem.as_bytes(), SAN, now());
        assert!(matches!(err, Err(CheckError::Chain(_))), "{err:?}");
    }

    #[test]
    fn a_bundle_with_several_roots_finds_the_right_one() {
        let other = root("other", (-1, 365));
        let ca = root("root", (-1, 365));
        let leaf = leaf(&[SAN], &ca, (-1, 90));
        let bundle = format!("{}{}", other.pem, ca.pem);
        verify_serving_chain(leaf.as_bytes(), bundle.as_bytes(), SAN, now()).unwrap();
    }

    #[test]
    fn another_ca_with_the_same_name_does_not_verify() {
        let ca = root("root", (-1, 365));
        let impostor = root("root", (-1, 365));
        let leaf = leaf(&[SAN], &ca, (-1, 90));
        let err = verify_serving_chain(leaf.as_bytes(), impostor.pem.as_bytes(), SAN, now())
            .unwrap_err()
            .to_string();
        assert!(err.contains("CN=istio-pilot is issued by CN=root"), "{err}");
    }

    #[test]
    fn a_missing_dns_name_is_named() {
        let ca = root("root", (-1, 365));
        let leaf = leaf(&["istio-pilot.default.svc"], &ca, (-1, 90));
        let err = verify_serving_chain(leaf.as_bytes(), ca.pem.as_bytes(), SAN, now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(SAN) && err.contains("istio-pilot.default.svc"),
            "{err}"
        );
    }

    #[test]
    fn an_expired_leaf_fails() {
        let ca = root("root", (-10, 365));
        let leaf = leaf(&[SAN], &ca, (-10, -3));
        let err = verify_serving_chain(leaf.as_bytes(), ca.pem.as_bytes(), SAN, now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expired 3 day(s) ago") || err.contains("expired 2 day(s) ago"),
            "{err}"
        );
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        for text in [
            "",
            "garbage",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ] {
            assert!(pem_certificates(text.as_bytes(), "x").is_err(), "{text:?}");
        }
        let key = KeyPair::generate().unwrap().serialize_pem();
        let err = pem_certificates(key.as_bytes(), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PRIVATE KEY"), "{err}");
        // PEM that is not DER of a certificate.
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let ders = pem_certificates(junk.as_bytes(), "x").unwrap();
        assert!(parse_all(&ders, "x").is_err());
    }

    #[test]
    fn root_expiry_counts_days() {
        let ca = root("root", (-1, 20));
        let (subject, e) = root_expiry(ca.pem.as_bytes(), "ca-cert.pem", now()).unwrap();
        assert_eq!(subject, "CN=root");
        assert!(matches!(e, Expiry::Valid { days_left: 19 | 20 }), "{e:?}");
        let old = root("root", (-30, -5));
        let (_, e) = root_expiry(old.pem.as_bytes(), "ca-cert.pem", now()).unwrap();
        assert!(matches!(e, Expiry::Expired { days_ago: 4 | 5 }), "{e:?}");
        let future = root("root", (5, 30));
        let (_, e) = root_expiry(future.pem.as_bytes(), "ca-cert.pem", now()).unwrap();
        assert_eq!(e, Expiry::NotYetValid);
    }
}
