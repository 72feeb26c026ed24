//! Helpers shared by the Citadel tests that call its gRPC API: CSRs made by the `openssl` CLI,
//! TLS channels to Citadel, and openssl checks of what came back.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use mesh_proto::grpc::istio::v1::auth::IstioCertificateRequest;
use mesh_proto::grpc::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub const OPENSSL: &str = "/usr/bin/openssl";
/// The DNS name Citadel's serving certificate carries by default (`--grpc-host-identities`).
pub const CITADEL_HOST: &str = "istio-citadel";

pub fn openssl(args: &[&str]) -> Output {
    Command::new(OPENSSL)
        .args(args)
        .output()
        .expect("run openssl")
}

pub fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CSR made by openssl (`kind`: `ec` for P-256, `rsa` for RSA-2048) asking for `uri`; returns
/// the CSR PEM, and writes the key to `dir/<name>.key`.
pub fn openssl_csr(dir: &Path, name: &str, kind: &str, uri: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let key_s = key.display().to_string();
    let csr_s = csr.display().to_string();
    let mut args = vec!["req", "-new", "-nodes", "-subj", "/O=test"];
    match kind {
        "ec" => args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
        _ => args.extend(["-newkey", "rsa:2048"]),
    }
    let san = format!("subjectAltName=URI:{uri}");
    args.extend(["-addext", &san, "-keyout", &key_s, "-out", &csr_s]);
    openssl_ok(&args);
    std::fs::read_to_string(csr).unwrap()
}

/// A TLS channel to Citadel's gRPC port, trusting `root_pem`, with an optional client
/// certificate (chain PEM, key PEM).
pub async fn channel(
    port: u16,
    root_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(CITADEL_HOST);
    if let Some((chain, key)) = client {
        tls = tls.identity(Identity::from_pem(chain, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// CreateCertificate with an optional Bearer token.
pub async fn create_certificate(
    channel: Channel,
    csr: &str,
    validity_secs: i64,
    bearer: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = IstioCertificateServiceClient::new(channel);
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration: validity_secs,
        metadata: None,
    });
    if let Some(token) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

/// Checks an issued chain (leaf first, one PEM per entry) with openssl: it verifies to
/// `root_pem` as a TLS client and server certificate, its only URI SAN is `uri`, and its public
/// key is the one of `key_path`. Returns the leaf's text dump.
pub fn check_issued(chain: &[String], root_pem: &str, uri: &str, key_path: &Path) -> String {
    assert!(chain.len() >= 2, "leaf and root at least: {chain:?}");
    let work = tempfile::tempdir().unwrap();
    let w = |f: &str| work.path().join(f).display().to_string();
    std::fs::write(w("leaf.pem"), &chain[0]).unwrap();
    std::fs::write(w("rest.pem"), chain[1..].concat()).unwrap();
    std::fs::write(w("root.pem"), root_pem).unwrap();
    assert_eq!(
        chain.last().unwrap().trim(),
        root_pem.trim(),
        "the chain ends at the root"
    );
    for purpose in ["sslclient", "sslserver"] {
        let out = openssl_ok(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            &w("root.pem"),
            "-untrusted",
            &w("rest.pem"),
            &w("leaf.pem"),
        ]);
        assert!(out.contains(": OK"), "{out}");
    }
    let text = openssl_ok(&["x509", "-in", &w("leaf.pem"), "-noout", "-text"]);
    assert!(text.contains(&format!("URI:{uri}")), "{text}");
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    let from_key = openssl_ok(&["pkey", "-in", &key_path.display().to_string(), "-pubout"]);
    let from_cert = openssl_ok(&["x509", "-in", &w("leaf.pem"), "-noout", "-pubkey"]);
    assert_eq!(from_key, from_cert, "the certificate is for the CSR's key");
    text
}

/// Seconds the leaf (PEM) is still valid, per openssl `-checkend`, searched to ±30 s: true when
/// it is valid in `lo` seconds and expired in `hi`.
pub fn valid_between(leaf_pem: &str, lo: u64, hi: u64) -> bool {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), leaf_pem).unwrap();
    let p = f.path().display().to_string();
    let ok = |s: u64| {
        openssl(&["x509", "-in", &p, "-noout", "-checkend", &s.to_string()])
            .status
            .success()
    };
    ok(lo) && !ok(hi)
}
