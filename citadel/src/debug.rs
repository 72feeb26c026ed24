//! Citadel's own monitoring routes: `/debug/certz` (the root and every managed identity with
//! its expiry) and `/live`, a liveness check that signs a real CSR end to end.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, response::IntoResponse};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::ca::{CertificateAuthority, Identity, LeafRequest, csr, parse_cert, pem_certs};
use crate::controller::StatusMap;

/// The routes to merge into the monitoring server.
pub fn routes(ca: Arc<CertificateAuthority>, status: StatusMap, trust_domain: String) -> Router {
    let certz_ca = ca.clone();
    Router::new()
        .route(
            "/debug/certz",
            get(move || {
                let ca = certz_ca.clone();
                let status = status.clone();
                async move { Json(certz(&ca, &status)) }
            }),
        )
        .route(
            "/live",
            get(move || {
                let ca = ca.clone();
                let td = trust_domain.clone();
                async move {
                    let result = tokio::task::spawn_blocking(move || liveness(&ca, &td)).await;
                    match result {
                        Ok(Ok(())) => (StatusCode::OK, "ok: signed a test CSR\n".to_string()),
                        Ok(Err(e)) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("cannot sign: {e}\n"),
                        ),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                    .into_response()
                }
            }),
        )
}

fn certz(ca: &CertificateAuthority, status: &StatusMap) -> serde_json::Value {
    let info = ca.info();
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let identities: Vec<_> = status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    serde_json::json!({
        "root": {
            "selfSigned": info.self_signed,
            "notBefore": secs(info.root_not_before),
            "notAfter": secs(info.root_not_after),
            "pem": info.root_cert,
        },
        "signingCertNotAfter": secs(info.signing_not_after),
        "identities": identities,
    })
}

/// Generates a key and a CSR, runs the CSR through the same checks as the gRPC API, signs it,
/// and checks the result names the identity and chains to the root.
pub fn liveness(ca: &CertificateAuthority, trust_domain: &str) -> Result<(), String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let csr_pem = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| e.to_string())?;
    let parsed = csr::parse_pem(csr_pem.as_bytes()).map_err(|e| e.to_string())?;
    let id = Identity::new(trust_domain, "istio-system", "citadel-liveness-probe")
        .map_err(|e| e.to_string())?;
    let issued = ca
        .sign(
            &parsed.public_key,
            &LeafRequest {
                identity: &id,
                dns_names: &[],
                ttl: Duration::from_secs(60),
            },
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())?;
    let ders = pem_certs(&issued.cert_chain)?;
    let leaf = parse_cert(&ders[0])?;
    let parent = parse_cert(&ders[1.min(ders.len() - 1)])?;
    leaf.verify_signature(Some(parent.public_key()))
        .map_err(|e| format!("issued certificate does not verify: {e}"))?;
    if ders.last().map(|d| crate::ca::der_to_pem(d)) != Some(issued.root_cert.clone()) {
        return Err("the chain does not end at the root".into());
    }
    Ok(())
}
