//! Distributed tracing through real Envoy sidecars into a real Zipkin server (Maven Central's
//! `io.zipkin:zipkin-server`, in-memory storage; `tests/scripts/install-zipkin.sh`).
//!
//! Four workloads of the test application (`mesh-app`: productpage, details, reviews v2,
//! ratings), each behind its own sidecar: inbound through a Sidecar ingress listener on the
//! workload's own IP, outbound through the sidecar's HTTP proxy port (`UPSTREAM_PROXY`), the
//! app passing the trace headers on. With MeshConfig `enableTracing` and
//! `defaultConfig.tracing` (sampling 100, the collector's address), every request to
//! productpage must give one trace of seven spans: productpage's server span, its client
//! spans to details and reviews, their server spans, reviews' client span to ratings and
//! ratings' server span, each the child of the one before, named by the workloads'
//! services, one `x-request-id` throughout. Then `sampling: 0` (a MeshConfig edit,
//! pushed to the running sidecars) must give no span at all.
//!
//! Skipped, saying why, only when Zipkin cannot be installed (no Java 17 or Maven Central).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_tests::mesh::{Pilot, eventually};
use mesh_tests::{Envoy, free_port, http_get, repo_root, workspace_binary};
use serde_json::Value;
use tokio::process::{Child, Command};

/// How long Envoy may hold spans before it sends them (its flush interval is 5 s).
const SPANS_WAIT: Duration = Duration::from_secs(30);

/// One workload: the app, its sidecar and where they listen.
struct Workload {
    name: &'static str,
    version: &'static str,
    ip: &'static str,
    /// The sidecar's inbound port on `ip`.
    inbound: u16,
    /// The app's port on 127.0.0.1.
    app_port: u16,
    /// The sidecar's HTTP proxy port on 127.0.0.1.
    proxy_port: u16,
}

const WORKLOADS: [(&str, &str, &str); 4] = [
    ("productpage", "v1", "127.0.0.70"),
    ("details", "v1", "127.0.0.71"),
    ("reviews", "v2", "127.0.0.72"),
    ("ratings", "v1", "127.0.0.73"),
];

// === impl Workload ===

impl Workload {
    fn node(&self) -> String {
        format!(
            "sidecar~{}~{}-1.default~default.svc.cluster.local",
            self.ip, self.name
        )
    }

    /// Its ServiceEntry and the Sidecar that binds its inbound port.
    fn config(&self) -> String {
        let Workload {
            name,
            version,
            ip,
            inbound,
            app_port,
            ..
        } = self;
        format!(
            r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {ip}, ports: {{http: {inbound}}}, labels: {{app: {name}, version: {version}}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: {name}}}
spec:
  workloadSelector:
    labels: {{app: {name}}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    bind: {ip}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{app_port}
"#
        )
    }

    async fn start_app(&self, binary: &PathBuf) -> Child {
        Command::new(binary)
            .env_clear()
            .env("SERVICE_NAME", self.name)
            .env("SERVICE_VERSION", self.version)
            .env("PORT", self.app_port.to_string())
            .env("POD_NAME", format!("{}-1", self.name))
            .env("UPSTREAM_PROXY", format!("127.0.0.1:{}", self.proxy_port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start mesh-app")
    }
}

/// Zipkin's server on a free port, in-memory storage. Dropping it kills it.
struct Zipkin {
    child: Child,
    base: String,
}

// === impl Zipkin ===

impl Zipkin {
    /// Installs (once) and starts Zipkin; `Err(why)` when it cannot be installed.
    async fn start() -> Result<Zipkin, String> {
        let script = repo_root().join("tests/scripts/install-zipkin.sh");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("run install-zipkin.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!("install-zipkin.sh failed: {}", out.status));
        }
        let jar = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = free_port();
        let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let child = Command::new("java")
            .args([
                "-Xms64m",
                "-Xmx512m",
                "-XX:TieredStopAtLevel=1",
                "-jar",
                &jar,
            ])
            .env("QUERY_PORT", port.to_string())
            .env("STORAGE_TYPE", "mem")
            .env("SELF_TRACING_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.reopen().map_err(|e| e.to_string())?)
            .stderr(log.reopen().map_err(|e| e.to_string())?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start java: {e}"))?;
        let mut zipkin = Zipkin {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http_get(&format!("{}/health", zipkin.base), &[]).await
                && r.status.is_success()
            {
                return Ok(zipkin);
            }
            if let Ok(Some(status)) = zipkin.child.try_wait() {
                panic!(
                    "zipkin exited with {status}:\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "zipkin not up after 120 s:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The traces that have a span of `service` (`/api/v2/traces`), each its spans.
    async fn traces(&self, service: &str) -> Vec<Vec<Value>> {
        let url = format!(
            "{}/api/v2/traces?serviceName={service}&limit=1000",
            self.base
        );
        let r = http_get(&url, &[]).await.unwrap();
        assert!(r.status.is_success(), "{url}: {} {}", r.status, r.body);
        let v: Value = r.json().unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_array().unwrap().clone())
            .collect()
    }

    /// Every span the collector holds (of the four services).
    async fn span_count(&self) -> usize {
        let mut ids = std::collections::BTreeSet::new();
        for (name, _, _) in WORKLOADS {
            for trace in self.traces(&format!("{name}.default")).await {
                for span in trace {
                    ids.insert(format!(
                        "{}/{}/{}",
                        span["traceId"], span["id"], span["kind"]
                    ));
                }
            }
        }
        ids.len()
    }
}

fn mesh_config(zipkin_port: u16, sampling: &str) -> String {
    format!(
        "enableTracing: true\ndefaultConfig:\n  tracing:\n    sampling: {sampling}\n    zipkin:\n      address: 127.0.0.1:{zipkin_port}\n"
    )
}

fn tag<'a>(span: &'a Value, name: &str) -> &'a str {
    span["tags"][name].as_str().unwrap_or("")
}

fn service(span: &Value) -> &str {
    span["localEndpoint"]["serviceName"].as_str().unwrap_or("")
}

/// The one span of `trace` that `pick` takes.
fn one<'a>(trace: &'a [Value], what: &str, pick: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = trace.iter().filter(|s| pick(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: expected one span, found {}:\n{}",
        found.len(),
        serde_json::to_string_pretty(trace).unwrap()
    );
    found[0]
}

/// The `random_sampling` values of every HTTP connection manager in a config dump (an
/// absent value is 0).
fn samplings(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(t)) = m.get("tracing")
                && let Some(rs) = t.get("random_sampling")
            {
                out.push(rs["value"].as_f64().unwrap_or(0.0));
            }
            for x in m.values() {
                samplings(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| samplings(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_zipkin_with_the_call_chain_and_sampling_zero_stops_them() {
    let zipkin = match Zipkin::start().await {
        Ok(z) => z,
        Err(why) => {
            eprintln!("SKIP pilot_traffic_tracing: Zipkin cannot be installed here: {why}");
            return;
        }
    };
    let zipkin_port: u16 = zipkin.base.rsplit(':').next().unwrap().parse().unwrap();
    let workloads: Vec<Workload> = WORKLOADS
        .iter()
        .map(|(name, version, ip)| Workload {
            name,
            version,
            ip,
            inbound: free_port(),
            app_port: free_port(),
            proxy_port: free_port(),
        })
        .collect();
    let files: Vec<(String, String)> = workloads
        .iter()
        .map(|w| (format!("{}.yaml", w.name), w.config()))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let pilot = Pilot::start(&refs, &mesh_config(zipkin_port, "100"), &[])
        .await
        .unwrap();
    let app = tokio::task::spawn_blocking(|| workspace_binary("mesh-app"))
        .await
        .unwrap()
        .unwrap();
    let mut apps = Vec::new();
    let mut envoys: Vec<Envoy> = Vec::new();
    for w in &workloads {
        apps.push(w.start_app(&app).await);
        let proxy_port = format!("PROXY_HTTP_PORT={}", w.proxy_port);
        let (app_label, version_label) =
            (format!("app={}", w.name), format!("version={}", w.version));
        let envoy = pilot
            .sidecar(
                &w.node(),
                &[
                    "--meta",
                    "INTERCEPTION_MODE=NONE",
                    "--meta",
                    &proxy_port,
                    "--label",
                    &app_label,
                    "--label",
                    &version_label,
                ],
            )
            .await
            .unwrap();
        envoys.push(envoy);
    }
    let page = &workloads[0];
    let url = format!("http://{}:{}/productpage", page.ip, page.inbound);
    let host = [("host", "productpage.default.svc.cluster.local:9080")];

    // The whole chain answers: reviews v2 shows ratings' stars, through every sidecar.
    eventually(
        "productpage shows ratings through the sidecars",
        Duration::from_secs(30),
        || async {
            let r = http_get(&url, &host).await?;
            let v: Value = r.json().unwrap_or_default();
            Ok(r.status.as_u16() == 200
                && v["details"]["service"] == "details"
                && v["reviews"]["reviews"][0]["rating"]["stars"] == 5)
        },
    )
    .await
    .unwrap();
    // Those warm-up requests were traced too: the ones counted start from what is there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: usize = wait_settled(&zipkin).await;

    const REQUESTS: usize = 3;
    let mut request_ids = Vec::new();
    for _ in 0..REQUESTS {
        let r = http_get(&url, &host).await.unwrap();
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        let v: Value = r.json().unwrap();
        // productpage's sidecar gave the request its x-request-id (the caller is outside the
        // mesh); the app passed it on, two hops down.
        let id = v["propagated"]["x-request-id"]
            .as_str()
            .unwrap_or_else(|| panic!("no x-request-id reached productpage: {v}"))
            .to_string();
        for hop in [&v["details"], &v["reviews"], &v["reviews"]["ratings"]] {
            assert_eq!(hop["propagated"]["x-request-id"], id.as_str(), "{hop}");
        }
        request_ids.push(id);
    }

    // One trace per request, each of seven spans.
    let deadline = Instant::now() + SPANS_WAIT;
    let traces = loop {
        let mut traces: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for trace in zipkin.traces("productpage.default").await {
            if let Some(id) = trace
                .iter()
                .map(|s| tag(s, "guid:x-request-id"))
                .find(|id| request_ids.iter().any(|r| r == id))
            {
                traces.insert(id.to_string(), trace);
            }
        }
        if traces.len() == REQUESTS && traces.values().all(|t| t.len() == 7) {
            break traces;
        }
        if Instant::now() > deadline {
            let mut stats = String::new();
            for (envoy, w) in envoys.iter().zip(&workloads) {
                let all = envoy.stats().await.unwrap_or_default();
                let zipkin_stats: Vec<&str> =
                    all.lines().filter(|l| l.contains("zipkin")).collect();
                stats.push_str(&format!("{}: {zipkin_stats:?}\n", w.name));
            }
            panic!(
                "no trace of seven spans per request in Zipkin after {SPANS_WAIT:?}: ours {}\nall {}\nEnvoy stats:\n{stats}",
                serde_json::to_string_pretty(&traces).unwrap(),
                serde_json::to_string_pretty(&zipkin.traces("productpage.default").await).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut trace_ids = std::collections::BTreeSet::new();
    for (request_id, trace) in &traces {
        let trace_id = trace[0]["traceId"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32, "128-bit trace ids: {trace_id}");
        assert!(
            trace_ids.insert(trace_id.to_string()),
            "one trace per request"
        );
        for span in trace {
            assert_eq!(span["traceId"], trace_id);
            // The app passed x-request-id on: every hop's span carries the request's.
            assert_eq!(tag(span, "guid:x-request-id"), request_id, "{span}");
            assert_eq!(tag(span, "istio.namespace"), "default", "{span}");
            assert_eq!(tag(span, "istio.mesh_id"), "cluster.local", "{span}");
        }
        let server = |name: &str| {
            let svc = format!("{name}.default");
            one(trace, &format!("{name} server"), move |s| {
                s["kind"] == "SERVER" && service(s) == svc
            })
        };
        let client = |from: &str, to: &str| {
            let (svc, cluster) = (
                format!("{from}.default"),
                format!("outbound|9080||{to}.default.svc.cluster.local"),
            );
            one(trace, &format!("{from} -> {to} client"), move |s| {
                s["kind"] == "CLIENT" && service(s) == svc && tag(s, "upstream_cluster") == cluster
            })
        };
        let root = server("productpage");
        assert!(
            root.get("parentId").is_none(),
            "the root has no parent: {root}"
        );
        let pp_details = client("productpage", "details");
        let pp_reviews = client("productpage", "reviews");
        let details = server("details");
        let reviews = server("reviews");
        let reviews_ratings = client("reviews", "ratings");
        let ratings = server("ratings");
        for (child, parent, what) in [
            (pp_details, root, "productpage's call to details"),
            (pp_reviews, root, "productpage's call to reviews"),
            (details, pp_details, "details' server span"),
            (reviews, pp_reviews, "reviews' server span"),
            (reviews_ratings, reviews, "reviews' call to ratings"),
            (ratings, reviews_ratings, "ratings' server span"),
        ] {
            assert_eq!(
                child["parentId"], parent["id"],
                "{what}: parent\n{parent}\nchild\n{child}"
            );
        }
        // Server spans name their workload and sidecar.
        for (span, w) in [root, details, reviews, ratings]
            .into_iter()
            .zip(&workloads)
        {
            assert_eq!(tag(span, "istio.canonical_service"), w.name, "{span}");
            assert_eq!(tag(span, "istio.canonical_revision"), w.version, "{span}");
            assert_eq!(tag(span, "node_id"), w.node(), "{span}");
        }
    }
    let traced = wait_settled(&zipkin).await;
    assert_eq!(
        traced,
        before + REQUESTS * 7,
        "only the counted requests' spans came"
    );

    // Sampling 0, pushed to the running sidecars: requests give no span.
    std::fs::write(
        pilot.config_dir().parent().unwrap().join("mesh.yaml"),
        mesh_config(zipkin_port, "0"),
    )
    .unwrap();
    for (envoy, w) in envoys.iter().zip(&workloads) {
        eventually(
            &format!("{}'s sidecar samples 0%", w.name),
            Duration::from_secs(20),
            || async {
                let mut found = Vec::new();
                samplings(&envoy.config_dump(false).await?, &mut found);
                Ok(!found.is_empty() && found.iter().all(|s| *s == 0.0))
            },
        )
        .await
        .unwrap();
    }
    // Connections opened before the change stay on the old listeners until they drain;
    // new ones (every request here opens its own) get the new ones.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..REQUESTS {
        let r = http_get(&url, &host).await.unwrap();
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    // Longer than Envoy's flush interval: whatever was sampled has been sent.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        zipkin.span_count().await,
        traced,
        "sampling 0 must give no spans"
    );

    for (envoy, w) in envoys.into_iter().zip(&workloads) {
        for stat in [
            "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_rejected",
        ] {
            let n = envoy.stat(stat).await.unwrap().unwrap_or(0);
            assert_eq!(
                n,
                0,
                "{}'s Envoy rejected config ({stat}):\n{}",
                w.name,
                envoy.logs()
            );
        }
        envoy.stop().await.unwrap();
    }
    drop(apps);
    drop(zipkin);
}

/// The number of spans in Zipkin once it stops growing (Envoy sends them in batches).
async fn wait_settled(zipkin: &Zipkin) -> usize {
    let mut last = zipkin.span_count().await;
    let deadline = Instant::now() + SPANS_WAIT;
    loop {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let now = zipkin.span_count().await;
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
