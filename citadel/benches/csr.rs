//! Citadel CSR signing benchmarks, written to `target/bench/citadel.json` (or `$BENCH_OUT`):
//!
//! - `citadel_csr_signs_per_s_ecdsa`: `CreateCertificate` calls answered per second, end to
//!   end over gRPC with TLS: ECDSA P-256 CA, ECDSA P-256 CSRs.
//! - `citadel_csr_signs_per_s_rsa`: the same with an RSA-2048 CA and RSA-2048 CSRs (every
//!   signature is an RSA-2048 private-key operation).
//!
//! The server is Citadel's own gRPC server (TLS, client-certificate authentication, CSR parse
//! and self-signature check, signing, metrics) running in this process on a 2-worker runtime,
//! and the clients share those two workers: `CITADEL_BENCH_CONCURRENCY` calls in flight
//! (default 64) over `CITADEL_BENCH_CHANNELS` HTTP/2 connections (default 4), for
//! `CITADEL_BENCH_SECS` seconds each (default 5) after a one-second warm-up. CSRs come from a
//! pool made beforehand; making them is not measured.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use citadel::auth::{Authenticator, ClientCertAuthenticator};
use citadel::ca::{CaOptions, CertificateAuthority, Identity, KeyAlgorithm, LeafRequest, root};
use citadel::grpc::{self, ServingOptions};
use citadel::metrics::Metrics;
use citadel::signing::CsrSigner;
use mesh_proto::grpc::istio::v1::auth::IstioCertificateRequest;
use mesh_proto::grpc::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const TRUST_DOMAIN: &str = "cluster.local";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn csr_pool(alg: KeyAlgorithm, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let key = match alg {
                KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
                _ => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
            }
            .unwrap();
            let mut params = CertificateParams::default();
            let uri = format!("spiffe://{TRUST_DOMAIN}/ns/bench/sa/client-{i}");
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
            params.serialize_request(&key).unwrap().pem().unwrap()
        })
        .collect()
}

/// Runs one measurement: returns signs per second.
async fn measure(alg: KeyAlgorithm) -> f64 {
    let concurrency = env_or("CITADEL_BENCH_CONCURRENCY", 64) as usize;
    let channels = env_or("CITADEL_BENCH_CHANNELS", 4) as usize;
    let secs = env_or("CITADEL_BENCH_SECS", 5);

    let bundle = root::self_signed(
        alg,
        TRUST_DOMAIN,
        Duration::from_secs(365 * 86400),
        SystemTime::now(),
    )
    .unwrap();
    let ca = Arc::new(CertificateAuthority::new(bundle, "bench", CaOptions::default()).unwrap());
    let auth: Arc<dyn Authenticator> =
        Arc::new(ClientCertAuthenticator::new(ca.clone(), TRUST_DOMAIN));
    let signer = Arc::new(CsrSigner::new(
        ca.clone(),
        vec![auth],
        Duration::from_secs(3600),
        Metrics::default(),
    ));
    let listener = grpc::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_root_tx, root_rx) = watch::channel(0u64);
    let serving = ServingOptions {
        identity: Identity::new(TRUST_DOMAIN, "istio-system", grpc::SERVING_SERVICE_ACCOUNT)
            .unwrap(),
        dns_names: vec!["istio-citadel".into()],
        ttl: Duration::from_secs(3600),
    };
    let server = tokio::spawn(grpc::serve(
        listener,
        ca.clone(),
        signer,
        serving,
        root_rx,
        shutdown.clone(),
    ));

    // The clients' own certificate (ECDSA: the client side is not what is measured).
    let client_id = Identity::new(TRUST_DOMAIN, "bench", "client").unwrap();
    let client = ca
        .issue(
            KeyAlgorithm::EcdsaP256,
            &LeafRequest {
                identity: &client_id,
                dns_names: &[],
                ttl: Duration::from_secs(3600),
            },
            SystemTime::now(),
        )
        .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.root_cert()))
        .domain_name("istio-citadel")
        .identity(tonic::transport::Identity::from_pem(
            &client.issued.cert_chain,
            &client.key,
        ));
    let mut chans = Vec::new();
    for _ in 0..channels {
        let ch = Channel::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        chans.push(ch);
    }
    let csrs = Arc::new(csr_pool(alg, 16));

    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut client = IstioCertificateServiceClient::new(chans[w % channels].clone());
        let (csrs, counting, stop, done, failed) = (
            csrs.clone(),
            counting.clone(),
            stop.clone(),
            done.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let req = IstioCertificateRequest {
                    csr: csrs[i % csrs.len()].clone(),
                    validity_duration: 3600,
                    metadata: None,
                };
                i += 1;
                let ok = client
                    .create_certificate(req)
                    .await
                    .is_ok_and(|r| r.get_ref().cert_chain.len() == 2);
                if counting.load(Ordering::Relaxed) {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    drop(chans);
    shutdown.cancel();
    let _ = server.await;

    let (ok, bad) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(bad, 0, "{bad} CreateCertificate calls failed");
    let rate = ok as f64 / elapsed;
    eprintln!("{alg}: {ok} certificates in {elapsed:.2} s: {rate:.0}/s");
    rate
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ecdsa = rt.block_on(measure(KeyAlgorithm::EcdsaP256));
    let rsa = rt.block_on(measure(KeyAlgorithm::Rsa2048));
    let report = serde_json::json!({
        "citadel_csr_signs_per_s_ecdsa": ecdsa.round(),
        "citadel_csr_signs_per_s_rsa": rsa.round(),
    });
    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../target/bench/citadel.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
