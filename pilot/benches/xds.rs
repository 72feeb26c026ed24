//! Pilot benchmarks, written to `target/bench/pilot.json` (or `$BENCH_OUT`):
//!
//! - `pilot_gen_us_per_proxy_bookinfo`: generating CDS, LDS, RDS and EDS for one proxy of a
//!   bookinfo-sized mesh, in process, with nothing cached but EDS (which proxies share).
//! - `pilot_rss_kb_per_proxy`: RSS growth of a real `pilot` process per connected client.
//! - `pilot_push_p50_ms_1000_proxies`, `pilot_push_p99_ms_1000_proxies`: from a config edit
//!   to the last of 1,000 clients ACKing the new routes, over repeated edits. The clients are
//!   real gRPC ADS streams (one connection each) that ACK every response, run on the same
//!   two cores as Pilot. Pilot runs with `--debounce-after 10ms`, so the figure is Pilot's
//!   work rather than its configurable quiet period.
//!
//! `PILOT_BENCH_PROXIES` changes the number of clients (default 1000).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_runtime::Snapshot;
use pilot::mesh::MeshConfig;
use pilot::model::Proxy;
use pilot::xds::push::{Inputs, build, registry_from};
use pilot::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

mod common;
use common::{KillOnDrop, free_port, percentile, round1, rss_kb, wait_ready, write_report};
use pilot::testutil::meshgen::write_atomic;

const BOOKINFO: &str = include_str!("bookinfo.yaml");
const ROUTING: &str = include_str!("routing.yaml.tmpl");
const APPS: [&str; 4] = ["productpage", "details", "reviews", "ratings"];

fn routing(a: u32) -> String {
    ROUTING
        .replace("WEIGHT_A", &a.to_string())
        .replace("WEIGHT_B", &(100 - a).to_string())
}

fn snapshot(text: &str) -> Arc<Snapshot> {
    let objects: BTreeMap<_, _> = mesh_runtime::config::parse_file(Path::new("b.yaml"), text)
        .into_iter()
        .map(|r| {
            let o = r.expect("bookinfo parses");
            (o.key.clone(), Arc::new(o))
        })
        .collect();
    Arc::new(Snapshot::new(1, true, objects, Vec::new()))
}

fn node_id(i: usize) -> String {
    format!(
        "sidecar~127.2.{}.{}~{}-{i}.default~default.svc.cluster.local",
        i / 250,
        i % 250 + 1,
        APPS[i % APPS.len()]
    )
}

/// Per-proxy generation time, microseconds.
fn generation_us() -> f64 {
    let text = format!("{BOOKINFO}---\n{}", routing(80));
    let config = snapshot(&text);
    let inputs = Inputs {
        registry: registry_from(&config),
        config,
        mesh: Arc::new(MeshConfig {
            proxy_http_port: 15080,
            ..Default::default()
        }),
    };
    let n = 2000;
    let proxies: Vec<Proxy> = (0..n)
        .map(|i| {
            // A distinct label per proxy defeats the per-scope cache: every proxy generates.
            let meta = BTreeMap::from([(
                "LABELS".to_string(),
                serde_json::json!({"app": APPS[i % 4], "pod": i.to_string()}),
            )]);
            Proxy::from_node(&node_id(i), meta).expect("node id")
        })
        .collect();
    let generation = build(&inputs, None);
    let none = BTreeSet::new();
    let routes = BTreeSet::from(["9080".to_string(), "http_proxy".to_string()]);
    let start = Instant::now();
    for p in &proxies {
        let clusters = generation.resources(p, CLUSTER, &none).unwrap();
        let eds: BTreeSet<String> = clusters
            .iter()
            .filter(|c| c.name.starts_with("outbound|"))
            .map(|c| c.name.clone())
            .collect();
        generation.resources(p, LISTENER, &none).unwrap();
        generation.resources(p, ROUTE, &routes).unwrap();
        generation.resources(p, ENDPOINT, &eds).unwrap();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// One simulated proxy: subscribes to everything a sidecar does and ACKs every response.
/// Publishes the time it received each route version. Reconnects, as Envoy does, when the
/// stream breaks.
async fn client(url: String, i: usize, routes_tx: watch::Sender<(String, Instant)>) {
    loop {
        client_stream(&url, i, &routes_tx).await;
        if routes_tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn client_stream(url: &str, i: usize, routes_tx: &watch::Sender<(String, Instant)>) {
    let url = url.to_string();
    let mut ads = loop {
        match AggregatedDiscoveryServiceClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let node = Node {
        id: node_id(i),
        ..Default::default()
    };
    let req = |ty: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
        type_url: ty.to_string(),
        resource_names: names,
        version_info: version,
        response_nonce: nonce,
        ..Default::default()
    };
    let mut first = req(CLUSTER, vec![], String::new(), String::new());
    first.node = Some(node);
    tx.send(first).await.unwrap();
    tx.send(req(LISTENER, vec![], String::new(), String::new()))
        .await
        .unwrap();
    let Ok(stream) = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    let mut eds_names: Vec<String> = Vec::new();
    let route_names = vec!["9080".to_string()];
    let mut asked_eds = false;
    let mut asked_rds = false;
    while let Ok(Some(resp)) = stream.message().await {
        let now = Instant::now();
        let ty = resp.type_url.as_str();
        let names = match ty {
            CLUSTER => {
                eds_names = resp
                    .resources
                    .iter()
                    .filter_map(|a| {
                        use prost::Message;
                        envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&a.value[..])
                            .ok()
                            .map(|c| c.name)
                    })
                    .filter(|n| n.starts_with("outbound|"))
                    .collect();
                vec![]
            }
            ENDPOINT => eds_names.clone(),
            LISTENER => vec![],
            ROUTE => {
                let _ = routes_tx.send((resp.version_info.clone(), now));
                route_names.clone()
            }
            _ => vec![],
        };
        if tx
            .send(req(
                ty,
                names,
                resp.version_info.clone(),
                resp.nonce.clone(),
            ))
            .await
            .is_err()
        {
            return;
        }
        if ty == CLUSTER && !asked_eds {
            asked_eds = true;
            tx.send(req(
                ENDPOINT,
                eds_names.clone(),
                String::new(),
                String::new(),
            ))
            .await
            .ok();
        }
        if ty == LISTENER && !asked_rds {
            asked_rds = true;
            tx.send(req(
                ROUTE,
                route_names.clone(),
                String::new(),
                String::new(),
            ))
            .await
            .ok();
        }
    }
}

#[tokio::main]
async fn main() {
    let proxies: usize = std::env::var("PILOT_BENCH_PROXIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let gen_us = generation_us();
    eprintln!("generation: {gen_us:.1} us per proxy");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("bookinfo.yaml"), BOOKINFO).unwrap();
    write_atomic(&config, "routing.yaml", &routing(80)).unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pilot"))
        .args(["--config-dir", config.to_str().unwrap()])
        .args(["--grpc-addr", &grpc, "--http-addr", &http])
        .args(["--debounce-after", "10ms", "--debounce-max", "1s"])
        .args(["--log-level", "warn"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start pilot");
    let pid = child.id();
    // Stopped however the benchmark ends.
    let child = KillOnDrop(child);
    wait_ready(&http, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kb(pid);

    let url = format!("http://{grpc}");
    let mut receivers = Vec::new();
    for i in 0..proxies {
        let (tx, rx) = watch::channel((String::new(), Instant::now()));
        receivers.push(rx);
        tokio::spawn(client(url.clone(), i, tx));
    }
    // Wait until every client has its routes.
    let deadline = Instant::now() + Duration::from_secs(120);
    while receivers.iter().any(|r| r.borrow().0.is_empty()) {
        assert!(Instant::now() < deadline, "clients did not all sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{proxies} clients connected and synced");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kb(pid);
    let rss_per_proxy = rss_after.saturating_sub(rss_before) as f64 / proxies as f64;
    eprintln!("rss: {rss_before} kB -> {rss_after} kB ({rss_per_proxy:.1} kB per proxy)");

    let mut pushes = Vec::new();
    for round in 0..20 {
        let versions: Vec<String> = receivers.iter().map(|r| r.borrow().0.clone()).collect();
        let weight = if round % 2 == 0 { 70 } else { 80 };
        let start = Instant::now();
        write_atomic(&config, "routing.yaml", &routing(weight)).unwrap();
        let deadline = start + Duration::from_secs(30);
        loop {
            let done = receivers
                .iter()
                .zip(&versions)
                .all(|(r, old)| r.borrow().0 != *old);
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "push did not reach every client");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = receivers.iter().map(|r| r.borrow().1).max().unwrap();
        pushes.push((last - start).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p50 = percentile(&mut pushes.clone(), 0.5);
    let p99 = percentile(&mut pushes, 0.99);
    eprintln!("push to {proxies} proxies: p50 {p50:.1} ms, p99 {p99:.1} ms");
    drop(child);

    let suffix = if proxies == 1000 {
        "1000_proxies".to_string()
    } else {
        format!("{proxies}_proxies")
    };
    let report = serde_json::json!({
        "pilot_gen_us_per_proxy_bookinfo": round1(gen_us),
        "pilot_rss_kb_per_proxy": round1(rss_per_proxy),
        format!("pilot_push_p50_ms_{suffix}"): round1(p50),
        format!("pilot_push_p99_ms_{suffix}"): round1(p99),
    });
    write_report(&report, "pilot.json");
}
