//! Citadel's CSR signing API over gRPC in file mode, judged by the `openssl` CLI: a workload
//! authenticates with the client certificate Citadel wrote for it (`OUT/<ns>/istio.<sa>/`) and
//! gets a certificate for its own identity whatever its CSR asks for; no client certificate is
//! UNAUTHENTICATED; a malformed or oversized CSR is INVALID_ARGUMENT; the serving certificate
//! is Citadel's own, from its CA.

mod citadel_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use citadel_common::*;
use mesh_proto::grpc::istio::v1::auth::CsrRequest;
use mesh_proto::grpc::istio::v1::auth::istio_ca_service_client::IstioCaServiceClient;
use mesh_tests::{Service, free_port, http_get};
use tonic::Code;

struct Files {
    tmp: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("config")).unwrap();
        let yaml = ["reviews", "ratings"]
            .iter()
            .map(|sa| {
                format!(
                    "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: default\n"
                )
            })
            .collect::<Vec<_>>()
            .join("---\n");
        std::fs::write(tmp.path().join("config/accounts.yaml"), yaml).unwrap();
        Self { tmp }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn secret(&self, sa: &str, file: &str) -> PathBuf {
        self.path("out/default")
            .join(format!("istio.{sa}"))
            .join(file)
    }
    async fn start(&self, grpc_port: u16) -> Service {
        let args = [
            "--config-dir".to_string(),
            self.path("config").display().to_string(),
            "--secret-dir".into(),
            self.path("out").display().to_string(),
            "--ca-dir".into(),
            self.path("ca").display().to_string(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc_port}"),
            "--max-workload-cert-ttl".into(),
            "48h".into(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut svc = Service::start("citadel", &refs).await.unwrap();
        svc.wait_ready(Duration::from_secs(60)).await.unwrap();
        svc
    }
}

async fn wait_file(svc: &Service, path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} not written; log:\n{}",
            path.display(),
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn create_certificate_signs_for_the_client_certificates_identity() {
    let files = Files::new();
    let port = free_port();
    let svc = files.start(port).await;
    let key_path = files.secret("reviews", "key.pem");
    wait_file(&svc, &key_path).await;
    let chain = read(&files.secret("reviews", "cert-chain.pem"));
    let key = read(&key_path);
    let root = read(&files.secret("reviews", "root-cert.pem"));
    let work = tempfile::tempdir().unwrap();

    // The serving certificate, as openssl sees it: from our CA, named istio-citadel.
    let root_path = work.path().join("root.pem");
    std::fs::write(&root_path, &root).unwrap();
    let out = std::process::Command::new(OPENSSL)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", CITADEL_HOST, "-verify_return_error"])
        .args(["-verify_hostname", CITADEL_HOST, "-alpn", "h2", "-CAfile"])
        .arg(&root_path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ALPN protocol: h2"), "{text}");

    // The caller (reviews) asks for ratings: gets reviews, for its own key, with the TTL asked.
    let csr = openssl_csr(
        work.path(),
        "a",
        "ec",
        "spiffe://cluster.local/ns/default/sa/ratings",
    );
    let ch = channel(port, &root, Some((&chain, &key))).await.unwrap();
    let issued = create_certificate(ch.clone(), &csr, 3600, None)
        .await
        .unwrap();
    let text = check_issued(
        &issued,
        &root,
        "spiffe://cluster.local/ns/default/sa/reviews",
        &work.path().join("a.key"),
    );
    assert!(!text.contains("sa/ratings"), "{text}");
    assert!(valid_between(&issued[0], 3600 - 30, 3600 + 30));

    // RSA keys too; a TTL over the maximum (48h here) is capped at it; 0 is the default (24h).
    let csr = openssl_csr(
        work.path(),
        "b",
        "rsa",
        "spiffe://cluster.local/ns/default/sa/reviews",
    );
    let issued = create_certificate(ch.clone(), &csr, 365 * 86400, None)
        .await
        .unwrap();
    check_issued(
        &issued,
        &root,
        "spiffe://cluster.local/ns/default/sa/reviews",
        &work.path().join("b.key"),
    );
    assert!(valid_between(&issued[0], 48 * 3600 - 30, 48 * 3600 + 30));
    let issued = create_certificate(ch.clone(), &csr, 0, None).await.unwrap();
    assert!(valid_between(&issued[0], 24 * 3600 - 30, 24 * 3600 + 30));

    // The legacy HandleCSR: same rules, bytes fields, the chain above the leaf apart.
    let mut legacy = IstioCaServiceClient::new(ch.clone());
    let resp = legacy
        .handle_csr(CsrRequest {
            csr_pem: csr.clone().into_bytes(),
            node_agent_credential: Vec::new(),
            credential_type: "onprem".into(),
            requested_ttl_minutes: 90,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.is_approved);
    assert_eq!(resp.status.unwrap().code, 0);
    let leaf = String::from_utf8(resp.signed_cert).unwrap();
    let above = String::from_utf8(resp.cert_chain).unwrap();
    assert_eq!(
        above.trim(),
        root.trim(),
        "self-signed: the chain is the root"
    );
    check_issued(
        &[leaf.clone(), above],
        &root,
        "spiffe://cluster.local/ns/default/sa/reviews",
        &work.path().join("b.key"),
    );
    assert!(valid_between(&leaf, 90 * 60 - 30, 90 * 60 + 30));

    // Garbage, a certificate instead of a CSR, and an oversized CSR: INVALID_ARGUMENT.
    let e = create_certificate(ch.clone(), "hello", 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("CSR is not PEM"), "{e:?}");
    let e = create_certificate(ch.clone(), &chain, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("CERTIFICATE REQUEST"), "{e:?}");
    let big = format!("{csr}{}", "A".repeat(70 * 1024));
    let e = create_certificate(ch.clone(), &big, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("more than the 65536 allowed"), "{e:?}");

    // Counted.
    let metrics = http_get(&format!("http://{}/metrics", svc.http_addr()), &[])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("citadel_csr_successes_total 4"),
        "{metrics}"
    );
    for reason in ["csr_not_pem", "csr_too_large"] {
        assert!(
            metrics.contains(&format!(
                "citadel_csr_failures_total{{reason=\"{reason}\"}}"
            )),
            "{metrics}"
        );
    }
    svc.stop().await.unwrap();
}

#[tokio::test]
async fn create_certificate_without_a_client_certificate_is_unauthenticated() {
    let files = Files::new();
    let port = free_port();
    let svc = files.start(port).await;
    let key_path = files.secret("reviews", "key.pem");
    wait_file(&svc, &key_path).await;
    let root = read(&files.secret("reviews", "root-cert.pem"));
    let work = tempfile::tempdir().unwrap();
    let csr = openssl_csr(
        work.path(),
        "a",
        "ec",
        "spiffe://cluster.local/ns/default/sa/reviews",
    );

    // TLS without a client certificate: the handshake is fine, the call is not.
    let ch = channel(port, &root, None).await.unwrap();
    let e = create_certificate(ch.clone(), &csr, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // A Bearer token means nothing in file mode (no TokenReview to check it with).
    let e = create_certificate(ch, &csr, 0, Some("some.jwt.token"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // A client certificate from another CA: refused (at the TLS layer, or by the service).
    let other = Files::new();
    let other_svc = other.start(free_port()).await;
    let other_key = other.secret("reviews", "key.pem");
    wait_file(&other_svc, &other_key).await;
    let foreign = (
        read(&other.secret("reviews", "cert-chain.pem")),
        read(&other_key),
    );
    match channel(port, &root, Some((&foreign.0, &foreign.1))).await {
        Err(_) => {}
        Ok(ch) => {
            let r = create_certificate(ch, &csr, 0, None).await;
            assert!(r.is_err(), "a foreign CA's client certificate was accepted");
        }
    }
    let metrics = http_get(&format!("http://{}/metrics", svc.http_addr()), &[])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("citadel_csr_failures_total{reason=\"no_credential\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("citadel_csr_successes_total 0"),
        "{metrics}"
    );
    other_svc.stop().await.unwrap();
    svc.stop().await.unwrap();
}
