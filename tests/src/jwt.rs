//! Signed JWTs for the authentication tests: an ES256 key, its JWK, and compact tokens of
//! any claims, so a test can hand Envoy valid, expired, mis-issued and forged tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey as _};
use serde_json::{Value, json};

/// An ES256 signing key and its JWK.
pub struct Signer {
    key: KeyPair,
    kid: String,
}

// === impl Signer ===

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new P-256 key named `kid`.
    pub fn new(kid: &str) -> Signer {
        Signer {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation"),
            kid: kid.to_string(),
        }
    }

    /// The public key as a JWK (the uncompressed point's coordinates).
    pub fn jwk(&self) -> Value {
        let point = self.key.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A compact JWS of `claims`.
    pub fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let der = self.key.sign(input.as_bytes()).expect("ES256 signature");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(fixed_signature(&der)))
    }
}

/// A key set (`{"keys": [...]}`) of `signers`, as a JWKS document.
pub fn jwks_of(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims from `issuer` for `sub` and audience `aud`, valid for an hour, overridden by the
/// members of `extra`.
pub fn claims(issuer: &str, sub: &str, aud: &str, extra: Value) -> Value {
    let mut c = json!({"iss": issuer, "sub": sub, "aud": aud, "iat": now(), "exp": now() + 3600});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// An ECDSA signature as DER (`SEQUENCE { INTEGER r, INTEGER s }`) to JWS's `r || s`, each
/// 32 bytes.
fn fixed_signature(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "a DER sequence");
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "a DER integer");
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}
