//! Sidecar injector benchmark, written to `target/bench/pilot_inject.json` (or `$BENCH_OUT`):
//!
//! - `inject_webhook_p50_ms`, `inject_webhook_p99_ms`: the admission latency of `POST /inject`
//!   over HTTPS (the webhook as Pilot serves it, a certificate made for the run), from sending
//!   a Pod CREATE review to having read the whole answer (a JSON patch), with 50 clients
//!   sending reviews at once, each on its own kept-alive connection, as the API server does
//!   when a Deployment scales up. Clients and server share the same runtime (two cores).
//! - `inject_webhook_reviews_per_s`: the reviews answered per second under that load.
//!
//! `PILOT_BENCH_INJECT_CLIENTS` and `PILOT_BENCH_INJECT_REVIEWS` (per client) change the load
//! (defaults 50 and 100).

use std::time::{Duration, Instant};

use pilot::inject::InjectConfig;
use pilot::validate::inject_webhook::Injector;
use pilot::validate::test_client::HttpsClient;
use pilot::validate::webhook::{Webhook, WebhookSettings};
use serde_json::{Value, json};

// Only some of the shared helpers are used here.
#[allow(dead_code)]
mod common;
use common::{percentile, round1, write_report};

const NAME: &str = "istio-pilot.istio-system.svc";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A review of a bookinfo reviews pod, as a ReplicaSet creates it.
fn review(i: usize) -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-5b9b8f7d6c-",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "5b9b8f7d6c"},
            "annotations": {"sidecar.istio.io/proxyCPU": "100m"},
        },
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "containers": [{
                "name": "reviews",
                "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    });
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{i}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "bookinfo",
            "operation": "CREATE",
            "object": pod,
        },
    }))
    .unwrap()
}

fn main() {
    let clients = env_or("PILOT_BENCH_INJECT_CLIENTS", 50);
    let reviews = env_or("PILOT_BENCH_INJECT_REVIEWS", 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(run(clients, reviews));
    write_report(&report, "pilot_inject.json");
}

async fn run(clients: usize, reviews: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![NAME.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let settings = WebhookSettings {
        addr: ([127, 0, 0, 1], 0).into(),
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        keeper: None,
        injection_config: None,
    };
    let webhook = Webhook::bind(&settings).await.unwrap();
    let addr = webhook.local_addr().unwrap();
    let shutdown = mesh_runtime::Shutdown::new();
    let served =
        tokio::spawn(webhook.serve(Injector::fixed(InjectConfig::builtin()), shutdown.clone()));

    // Connect every client first (handshakes are not admission latency), then warm up.
    let mut conns = Vec::new();
    for _ in 0..clients {
        let der = cert.der().clone();
        conns.push(HttpsClient::connect(addr, der, NAME).await.unwrap());
    }
    for c in conns.iter_mut().take(5) {
        let (status, _) = c.post("/inject", review(0)).await.unwrap();
        assert!(status.is_success());
    }

    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(n, mut c)| {
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(reviews);
                for i in 0..reviews {
                    let body = review(n * reviews + i);
                    let sent = Instant::now();
                    let (status, answer) = c.post("/inject", body).await.unwrap();
                    let took = sent.elapsed();
                    assert!(status.is_success(), "{status}");
                    let answer: Value = serde_json::from_slice(&answer).unwrap();
                    assert_eq!(answer["response"]["patchType"], "JSONPatch");
                    times.push(took.as_secs_f64() * 1000.0);
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await.unwrap());
    }
    let wall = start.elapsed().max(Duration::from_millis(1));
    shutdown.cancel();
    let _ = served.await;

    let total = times.len();
    let p50 = percentile(&mut times, 0.50);
    let p99 = percentile(&mut times, 0.99);
    json!({
        "inject_webhook_p50_ms": round1(p50),
        "inject_webhook_p99_ms": round1(p99),
        "inject_webhook_reviews_per_s": (total as f64 / wall.as_secs_f64()).round(),
        "inject_webhook_concurrency": clients,
    })
}
