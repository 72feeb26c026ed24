//! Pilot on the local Kubernetes cluster (`tests/cluster/cluster.sh up`), written to
//! `target/bench/pilot_k8s.json` (or `$BENCH_OUT`):
//!
//! - `pilot_k8s_endpoint_to_eds_ms` (median) and `pilot_k8s_endpoint_to_eds_p99_ms`: from an
//!   EndpointSlice change on the API server to the EDS update ACKed by 100 connected proxies.
//!   A Deployment behind the Service `bench` is scaled up by one, ten times. t0 is when this
//!   benchmark's own watch on the namespace's EndpointSlices sees the new ready endpoint
//!   count; t1 is when the last of the 100 simulated proxies (real gRPC ADS streams subscribed
//!   to the service's EDS cluster, ACKing every response) receives the assignment with that
//!   count. Pilot runs with `--debounce-after 10ms`.
//!
//! Without a reachable cluster (no `target/cluster/kubeconfig`, or the API not answering) it
//! says so and exits 0 without writing anything.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use pilot::xds::resource::ENDPOINT;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

mod common;
use common::{KillOnDrop, free_port, percentile, round1, wait_ready, write_report};

const PROXIES: usize = 100;
const ROUNDS: usize = 10;
const WAIT: Duration = Duration::from_secs(60);

const MANIFEST: &str = "apiVersion: v1
kind: Service
metadata:
  name: bench
spec:
  selector: {app: bench}
  ports:
  - {name: http, port: 9080}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench
spec:
  replicas: 1
  selector:
    matchLabels: {app: bench}
  template:
    metadata:
      labels: {app: bench}
    spec:
      containers:
      - {name: bench, image: bench.invalid/bench:1}
";

/// `(endpoint count, when it first had that count)`.
type Seen = (usize, Instant);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `kubectl --kubeconfig <kubeconfig> <args>` (on a blocking thread, so the clients'
/// tasks keep running), feeding `stdin`; returns stdout, or stderr as the error.
async fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || run(cmd, stdin.as_deref()))
        .await
        .unwrap()
}

fn run(mut cmd: Command, stdin: Option<&str>) -> Result<String, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("running kubectl: {e}"))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Deletes the benchmark's namespace however the benchmark ends.
struct NamespaceGuard {
    kubeconfig: PathBuf,
    name: String,
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args([
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
        ]);
        if let Err(e) = run(cmd, None) {
            eprintln!("deleting namespace {}: {e}", self.name);
        }
    }
}

/// Ready endpoint addresses in a slice, as Pilot counts them (ready unless marked not ready).
fn ready_endpoints(slice: &EndpointSlice) -> usize {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .map(|e| e.addresses.len())
        .sum()
}

/// Watches the namespace's EndpointSlices of the Service `bench`, publishing the total ready
/// endpoint count and when this watch first saw it.
async fn watch_slices(client: kube::Client, ns: String, tx: watch::Sender<Seen>) {
    let api = kube::Api::<EndpointSlice>::namespaced(client, &ns);
    let config = watcher::Config::default().labels("kubernetes.io/service-name=bench");
    let mut stream = watcher(api, config).boxed();
    let mut slices: BTreeMap<String, usize> = BTreeMap::new();
    let mut listing: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let now = Instant::now();
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(s)) => {
                listing.insert(name(&s), ready_endpoints(&s));
                continue;
            }
            Ok(watcher::Event::InitDone) => slices = std::mem::take(&mut listing),
            Ok(watcher::Event::Apply(s)) => {
                slices.insert(name(&s), ready_endpoints(&s));
            }
            Ok(watcher::Event::Delete(s)) => {
                slices.remove(&name(&s));
            }
            Err(e) => {
                eprintln!("endpointslice watch: {e}");
                continue;
            }
        }
        let count: usize = slices.values().sum();
        tx.send_if_modified(|seen| {
            let changed = seen.0 != count;
            if changed {
                *seen = (count, now);
            }
            changed
        });
    }
}

/// One simulated proxy subscribed to one EDS cluster, ACKing every response; publishes the
/// cluster's endpoint count and when it first received it. Reconnects when the stream breaks.
async fn client(url: String, node: String, cluster: String, tx: watch::Sender<Seen>) {
    loop {
        client_stream(&url, &node, &cluster, &tx).await;
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn client_stream(url: &str, node: &str, cluster: &str, seen: &watch::Sender<Seen>) {
    let mut ads = loop {
        match AggregatedDiscoveryServiceClient::connect(url.to_string()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let req = |version: String, nonce: String| DiscoveryRequest {
        type_url: ENDPOINT.to_string(),
        resource_names: vec![cluster.to_string()],
        version_info: version,
        response_nonce: nonce,
        ..Default::default()
    };
    let mut first = req(String::new(), String::new());
    first.node = Some(Node {
        id: node.to_string(),
        ..Default::default()
    });
    tx.send(first).await.unwrap();
    let Ok(stream) = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(resp)) = stream.message().await {
        let now = Instant::now();
        if resp.type_url != ENDPOINT {
            continue;
        }
        let count: usize = resp
            .resources
            .iter()
            .filter_map(|a| ClusterLoadAssignment::decode(&a.value[..]).ok())
            .filter(|cla| cla.cluster_name == cluster)
            .flat_map(|cla| cla.endpoints)
            .map(|l| l.lb_endpoints.len())
            .sum();
        // ACK first, as Envoy does on applying the update.
        if tx
            .send(req(resp.version_info.clone(), resp.nonce.clone()))
            .await
            .is_err()
        {
            return;
        }
        seen.send_if_modified(|s| {
            let changed = s.0 != count;
            if changed {
                *s = (count, now);
            }
            changed
        });
    }
}

/// Waits until `rx` holds `count`; returns when it first did.
async fn wait_for(rx: &mut watch::Receiver<Seen>, count: usize, what: &str) -> Instant {
    let r = tokio::time::timeout(WAIT, rx.wait_for(|s| s.0 == count)).await;
    match r {
        Ok(Ok(seen)) => seen.1,
        _ => panic!("{what} did not reach {count} endpoints within {WAIT:?}"),
    }
}

#[tokio::main]
async fn main() {
    let kubeconfig = root().join("target/cluster/kubeconfig");
    if !kubeconfig.exists() {
        eprintln!(
            "pilot k8s benchmark skipped: {} missing (start the cluster with \
             `bash tests/cluster/cluster.sh up`)",
            kubeconfig.display()
        );
        return;
    }
    if let Err(e) = kubectl(
        &kubeconfig,
        &["get", "--raw", "/readyz", "--request-timeout=5s"],
        None,
    )
    .await
    {
        eprintln!(
            "pilot k8s benchmark skipped: the cluster's API is not reachable ({e}); start it \
             with `bash tests/cluster/cluster.sh up`"
        );
        return;
    }

    // Pilot reads Istio config from the cluster too: its CRDs must exist.
    let crds = root().join("manifests/crds.yaml");
    let crds = crds.to_str().unwrap();
    kubectl(&kubeconfig, &["apply", "--server-side", "-f", crds], None)
        .await
        .expect("installing CRDs");
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            crds,
        ],
        None,
    )
    .await
    .expect("CRDs established");

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    let ns = format!("bench-k8s-{}-{stamp}", std::process::id());
    kubectl(&kubeconfig, &["create", "namespace", &ns], None)
        .await
        .expect("creating namespace");
    let _namespace = NamespaceGuard {
        kubeconfig: kubeconfig.clone(),
        name: ns.clone(),
    };
    kubectl(
        &kubeconfig,
        &["apply", "-n", &ns, "-f", "-"],
        Some(MANIFEST),
    )
    .await
    .expect("applying the Service and Deployment");

    let client_k8s = mesh_runtime::kube_client::connect(Some(&kubeconfig))
        .await
        .expect("kube client");
    let (slices_tx, mut slices_rx) = watch::channel((0, Instant::now()));
    tokio::spawn(watch_slices(client_k8s, ns.clone(), slices_tx));
    wait_for(&mut slices_rx, 1, "the EndpointSlice").await;

    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let pilot = Command::new(env!("CARGO_BIN_EXE_pilot"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--grpc-addr", &grpc, "--http-addr", &http])
        .args(["--debounce-after", "10ms"])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start pilot");
    // Killed however the benchmark ends (before the namespace guard deletes the namespace).
    let pilot = KillOnDrop(pilot);
    wait_ready(&http, WAIT).await;

    let cluster = format!("outbound|9080||bench.{ns}.svc.cluster.local");
    let url = format!("http://{grpc}");
    let mut receivers = Vec::new();
    for n in 1..=PROXIES {
        let (tx, rx) = watch::channel((0, Instant::now()));
        receivers.push(rx);
        let node = format!("sidecar~127.2.0.{n}~client-{n}.{ns}~{ns}.svc.cluster.local");
        tokio::spawn(client(url.clone(), node, cluster.clone(), tx));
    }
    for rx in &mut receivers {
        wait_for(rx, 1, "a client").await;
    }
    eprintln!("{PROXIES} clients connected with 1 endpoint for {cluster}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let replicas = round + 2;
        kubectl(
            &kubeconfig,
            &[
                "-n",
                &ns,
                "scale",
                "deployment/bench",
                &format!("--replicas={replicas}"),
            ],
            None,
        )
        .await
        .expect("scaling the deployment");
        let t0 = wait_for(&mut slices_rx, replicas, "the EndpointSlice").await;
        let mut t1 = t0;
        for rx in &mut receivers {
            t1 = t1.max(wait_for(rx, replicas, "a client").await);
        }
        let ms = t1.duration_since(t0).as_secs_f64() * 1000.0;
        eprintln!("round {round}: {replicas} endpoints, {ms:.1} ms");
        latencies.push(ms);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(pilot);

    let p50 = percentile(&mut latencies.clone(), 0.5);
    let p99 = percentile(&mut latencies.clone(), 0.99);
    let max = latencies.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "EndpointSlice change to EDS at {PROXIES} proxies: p50 {p50:.1} ms, p99 {p99:.1} ms, \
         max {max:.1} ms"
    );
    let report = serde_json::json!({
        "pilot_k8s_endpoint_to_eds_ms": round1(p50),
        "pilot_k8s_endpoint_to_eds_p99_ms": round1(p99),
    });
    write_report(&report, "pilot_k8s.json");
}
