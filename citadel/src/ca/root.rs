//! Self-signed roots: creation, and rotation with the same key.
//!
//! A rotated root keeps the old root's key and subject and only gets a new validity period and
//! serial number. A leaf's issuer name and authority key identifier therefore match both the
//! old and the new root, and its signature verifies with either (same key): peers that still
//! trust the old root accept leaves issued after the rotation, and peers that already got the
//! new root accept leaves issued before it. No handshake breaks while workloads pick up the new
//! root one by one. (Istio issue #19644 was the opposite: a rotation that made a new key left
//! peers with different roots unable to talk until every workload had new certificates.)

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber,
};

use super::{CaBundle, CaError, KeyAlgorithm, asn1_time, parse_cert, pem_certs, random_serial};

/// How far a new root's `notBefore` lies in the past, for clock skew.
const ROOT_BACKDATE: Duration = Duration::from_secs(3600);

/// Makes a new self-signed root for `trust_domain` (its organisation), valid for `ttl`.
pub fn self_signed(
    algorithm: KeyAlgorithm,
    trust_domain: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<CaBundle, CaError> {
    let key = algorithm.generate()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    sign_root(dn, key, ttl, now)
}

/// Re-signs the self-signed root of `bundle` with its own key and subject for a new period of
/// `ttl` from `now` (see the module docs for why the key stays).
pub fn rotate(bundle: &CaBundle, ttl: Duration, now: SystemTime) -> Result<CaBundle, CaError> {
    let err = |message: String| CaError::Material {
        what: "self-signed root".into(),
        message,
    };
    let ders = pem_certs(&bundle.signing_cert).map_err(err)?;
    let der = ders.first().ok_or_else(|| err("no certificate".into()))?;
    let key = KeyPair::from_pem(&bundle.signing_key).map_err(|e| err(e.to_string()))?;
    let cert = parse_cert(der).map_err(err)?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(err("the key does not match the root certificate".into()));
    }
    let dn = distinguished_name(cert.subject()).map_err(err)?;
    sign_root(dn, key, ttl, now)
}

/// The same name, attribute by attribute and with the same string types, so the new root's
/// subject is byte-for-byte the old one's (some verifiers compare names as bytes).
fn distinguished_name(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for attr in name.iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("subject attribute type is not a valid OID")?
            .collect();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data)
            .map_err(|_| "subject attribute is not text".to_string())?;
        let value = match value.header.tag() {
            Tag::PrintableString => {
                DnValue::PrintableString(text.try_into().map_err(|e| format!("{e}"))?)
            }
            Tag::Ia5String => DnValue::Ia5String(text.try_into().map_err(|e| format!("{e}"))?),
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            other => {
                return Err(format!(
                    "unsupported string type {other} in the root's subject"
                ));
            }
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// Whether a root valid from `not_before` to `not_after` is inside its grace window at `now`:
/// less than `grace_percent` percent of its lifetime left.
pub fn in_grace_window(
    not_before: SystemTime,
    not_after: SystemTime,
    grace_percent: u32,
    now: SystemTime,
) -> bool {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let grace = lifetime.mul_f64(f64::from(grace_percent.min(100)) / 100.0);
    match not_after.duration_since(now) {
        Ok(left) => left < grace,
        Err(_) => true,
    }
}

/// The validity of the first certificate of a PEM bundle.
pub fn validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), String> {
    let ders = pem_certs(cert_pem)?;
    let der = ders.first().ok_or("no certificate")?;
    let cert = parse_cert(der)?;
    Ok((
        asn1_time(cert.validity().not_before),
        asn1_time(cert.validity().not_after),
    ))
}

fn sign_root(
    dn: DistinguishedName,
    key: KeyPair,
    ttl: Duration,
    now: SystemTime,
) -> Result<CaBundle, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.not_before = now.checked_sub(ROOT_BACKDATE).unwrap_or(now).into();
    params.not_after = (now + ttl).into();
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|source| CaError::Generate {
            what: "self-signed root certificate".into(),
            source,
        })?;
    let pem = cert.pem();
    Ok(CaBundle {
        signing_cert: pem.clone(),
        signing_key: key.serialize_pem(),
        cert_chain: String::new(),
        root_cert: pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaOptions, CertificateAuthority, Identity, LeafRequest};

    #[test]
    fn rotation_keeps_key_and_subject() {
        let now = SystemTime::now();
        let old = self_signed(
            KeyAlgorithm::EcdsaP256,
            "cluster.local",
            Duration::from_secs(1000),
            now,
        )
        .unwrap();
        let later = now + Duration::from_secs(900);
        let new = rotate(&old, Duration::from_secs(100_000), later).unwrap();
        assert_eq!(new.signing_key, old.signing_key);
        assert_ne!(new.root_cert, old.root_cert);
        let (_, old_end) = validity(&old.root_cert).unwrap();
        let (_, new_end) = validity(&new.root_cert).unwrap();
        assert!(new_end > old_end);
        let old_der = &pem_certs(&old.root_cert).unwrap()[0];
        let new_der = &pem_certs(&new.root_cert).unwrap()[0];
        let (o, n) = (parse_cert(old_der).unwrap(), parse_cert(new_der).unwrap());
        assert_eq!(o.subject(), n.subject());
        assert_eq!(o.public_key().raw, n.public_key().raw);
        // The new bundle loads as a CA and signs.
        let ca = CertificateAuthority::new(new, "rotated", CaOptions::default()).unwrap();
        let id = Identity::new("cluster.local", "a", "b").unwrap();
        let req = LeafRequest {
            identity: &id,
            dns_names: &[],
            ttl: Duration::from_secs(60),
        };
        ca.issue(KeyAlgorithm::EcdsaP256, &req, later).unwrap();
    }

    #[test]
    fn grace_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t1 = t0 + Duration::from_secs(1000);
        assert!(!in_grace_window(t0, t1, 20, t0 + Duration::from_secs(799)));
        assert!(in_grace_window(t0, t1, 20, t0 + Duration::from_secs(801)));
        assert!(in_grace_window(t0, t1, 20, t1 + Duration::from_secs(1)));
    }
}
