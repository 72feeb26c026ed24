//! Citadel's secret controller against the local Kubernetes cluster (`tests/cluster/`),
//! written to `target/bench/citadel_secrets.json` (or `$BENCH_OUT`):
//!
//! - `citadel_secrets_per_s`: secrets `istio.<sa>` issued (ECDSA P-256 keys) and written to the
//!   API server per second, for `CITADEL_BENCH_ACCOUNTS` service accounts (default 1,000) in a
//!   fresh namespace, from Citadel's start to the last secret seen by a list. Write rate
//!   limiting is lifted (`--secret-write-qps 100000`) so the figure is Citadel's and the API
//!   server's, not the limiter's (50/s by default, on purpose).
//!
//! Citadel runs in this process (its library's `run`), the API server on the same two cores.
//! The cluster must be up (`tests/cluster/cluster.sh up`); without it the bench says so and
//! writes nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let accounts: usize = std::env::var("CITADEL_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let kubeconfig = PathBuf::from("../target/cluster/kubeconfig");
    let client = match mesh_runtime::kube_client::connect(Some(&kubeconfig)).await {
        Ok(c) if kubeconfig.is_file() => c,
        _ => {
            eprintln!(
                "citadel_secrets_per_s: no cluster at {} (tests/cluster/cluster.sh up); skipped",
                kubeconfig.display()
            );
            return;
        }
    };
    if let Err(e) = client.apiserver_version().await {
        eprintln!("citadel_secrets_per_s: the cluster does not answer ({e}); skipped");
        return;
    }

    // A fresh namespace with the accounts (created before Citadel starts; not measured).
    let ns = format!("bench-citadel-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    futures::stream::iter(0..accounts)
        .for_each_concurrent(32, |i| {
            let sas = sas.clone();
            async move {
                let sa = ServiceAccount {
                    metadata: ObjectMeta {
                        name: Some(format!("sa-{i}")),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                sas.create(&PostParams::default(), &sa).await.unwrap();
            }
        })
        .await;
    // Plus the namespace's `default` account, once the controller-manager made it.
    let want = accounts + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sas
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len()
        < want
    {
        assert!(Instant::now() < deadline, "accounts not all there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let args = [
        "citadel",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--citadel-storage-namespace",
        &ns,
        "--listened-namespaces",
        &ns,
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--secret-write-qps",
        "100000",
        "--secret-write-burst",
        "100000",
    ];
    let cli: citadel::Cli = mesh_runtime::cli::try_parse_from("CITADEL_BENCH", args).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let t0 = Instant::now();
    let citadel = tokio::spawn(citadel::run(cli, shutdown.clone()));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().fields("type=istio.io/key-and-cert");
    let deadline = Instant::now() + Duration::from_secs(300);
    let elapsed = loop {
        let n = secrets.list_metadata(&lp).await.unwrap().items.len();
        if n >= want {
            break t0.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {want} secrets after 300 s"
        );
        assert!(!citadel.is_finished(), "citadel stopped early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    let _ = citadel.await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;

    let rate = want as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{want} secrets in {:.2} s: {rate:.0}/s",
        elapsed.as_secs_f64()
    );
    let report = serde_json::json!({ "citadel_secrets_per_s": rate.round() });
    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../target/bench/citadel_secrets.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
