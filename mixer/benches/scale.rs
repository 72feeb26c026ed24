//! Mixer at scale: ext_authz Check throughput and latency as the config grows (10, 100 and
//! 1,000 rules) and as requests carry more attributes (10, 50 and 200).
//!
//! Each config is generated here: a denier, a listchecker (a path blacklist) and a memquota
//! handler (a limit no request reaches, bound to every service by a QuotaSpecBinding), and
//! `rules` rules in `istio-system`, cycling over the three: rule `k` is for destination
//! service `svc<k % services>` (a tenth as many services as rules, at least 10) and adds a
//! condition on the request (a path prefix, a user header, the method), so a request's
//! destination picks out about ten rules and most of those do not match either. Requests go
//! to the services in turn, as `jane` (1 in 100 as `blocked-<k>`, which one rule denies),
//! with 1 in 10 paths under a prefix some rule lists.
//!
//! Attributes: the 10 of a plain request (method, path, url_path, host, id, headers,
//! protocol, useragent, destination service name and namespace); more are
//! `context_extensions` entries naming attributes an `attributemanifest` declares
//! (`bench.attr<j>`), which no rule reads.
//!
//! Two measures for each point: `rps` and `p99` of Checks over gRPC (closed loop,
//! `MIXER_SCALE_CONCURRENCY` in flight, default 16, over 4 connections, for
//! `MIXER_SCALE_SECS` each, default 3), and the mean time of one in-process decision
//! (`ExtAuthz::decide`, attributes to answer, one thread). Writes the curves and figures to
//! `$BENCH_OUT` (default `target/bench/mixer_scale.json`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use mesh_runtime::Snapshot;
use mixer::adapter::AdapterEnv;
use mixer::config::{CompileOptions, Compiler};
use mixer::dispatch::{Dispatcher, Metrics};
use mixer::server::ext_authz::ExtAuthz;

mod common;

use common::{Load, closed_loop, warm_up};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Attributes every request has (see the module docs).
const BASE_ATTRIBUTES: usize = 10;
/// How many extra attributes the vocabulary declares.
const DECLARED_EXTRA: usize = 200;

fn services_for(rules: usize) -> usize {
    (rules / 10).max(10)
}

/// The generated config, as YAML.
fn config_yaml(rules: usize) -> String {
    let services = services_for(rules);
    let mut y = String::new();
    y.push_str(
        r#"apiVersion: config.istio.io/v1alpha2
kind: attributemanifest
metadata:
  name: bench
  namespace: istio-system
spec:
  attributes:
"#,
    );
    for j in 0..DECLARED_EXTRA {
        writeln!(y, "    bench.attr{j}:\n      valueType: STRING").unwrap();
    }
    y.push_str(
        r#"---
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata:
  name: deny
  namespace: istio-system
spec:
  status:
    code: 7
    message: Not allowed
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata:
  name: nothing
  namespace: istio-system
spec: {}
---
apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata:
  name: paths
  namespace: istio-system
spec:
  overrides: ["/admin", "/secret"]
  blacklist: true
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata:
  name: path
  namespace: istio-system
spec:
  value: request.url_path | "/"
---
apiVersion: config.istio.io/v1alpha2
kind: memquota
metadata:
  name: quota
  namespace: istio-system
spec:
  quotas:
  - name: requestcount.quota.istio-system
    maxAmount: 1000000000
    validDuration: 1s
---
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata:
  name: requestcount
  namespace: istio-system
spec:
  dimensions:
    destination: destination.service.name | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpec
metadata:
  name: request-count
  namespace: istio-system
spec:
  rules:
  - quotas:
    - charge: 1
      quota: requestcount
---
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpecBinding
metadata:
  name: request-count
  namespace: istio-system
spec:
  quotaSpecs:
  - name: request-count
    namespace: istio-system
  services:
  - service: '*'
"#,
    );
    for k in 0..rules {
        let svc = k % services;
        let (condition, handler, instance) = match k % 3 {
            0 => (
                format!(r#"request.path.startsWith("/api/v{k}/")"#),
                "paths.listchecker",
                "path.listentry",
            ),
            1 => (
                format!(r#"request.headers["x-user"] == "blocked-{k}""#),
                "deny.denier",
                "nothing.checknothing",
            ),
            _ => (
                r#"request.method == "POST""#.to_string(),
                "quota.memquota",
                "requestcount.quota",
            ),
        };
        write!(
            y,
            r#"---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata:
  name: rule{k}
  namespace: istio-system
spec:
  match: destination.service.name == "svc{svc}" && {condition}
  actions:
  - handler: {handler}
    instances: [{instance}]
"#
        )
        .unwrap();
    }
    y
}

fn dispatcher(rules: usize) -> Arc<Dispatcher> {
    let path = Path::new("scale.yaml");
    let mut objects = BTreeMap::new();
    for r in mesh_runtime::config::parse_file(path, &config_yaml(rules)) {
        let o = r.unwrap();
        objects.insert(o.key.clone(), Arc::new(o));
    }
    let env = AdapterEnv {
        prometheus: Default::default(),
        start_tasks: true,
        shutdown: Default::default(),
    };
    let metrics = Arc::new(Metrics::default());
    let mut compiler = Compiler::new(CompileOptions::default(), env, metrics.clone());
    let resolved = compiler.compile(&Snapshot::new(1, true, objects, Vec::new()));
    assert!(resolved.refused.is_empty(), "{:#?}", resolved.refused);
    assert_eq!(resolved.rules.len(), rules);
    // The handlers' task guards live in the compiler; keep it for the process' life.
    std::mem::forget(compiler);
    Arc::new(Dispatcher::new(resolved, metrics))
}

/// Request `i` of a run against `rules` rules, with `attributes` attributes in all.
fn request(i: usize, rules: usize, attributes: usize) -> CheckRequest {
    let services = services_for(rules);
    let user = if i.is_multiple_of(100) {
        format!("blocked-{}", (i / 100) % rules)
    } else {
        "jane".to_string()
    };
    let path = if i.is_multiple_of(10) {
        format!("/api/v{}/items", (i / 10) % rules)
    } else {
        format!("/products/{}", i % 50)
    };
    let mut context_extensions: HashMap<String, String> = [
        (
            "destination.service.name".to_string(),
            format!("svc{}", i % services),
        ),
        (
            "destination.service.namespace".to_string(),
            "default".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    for j in 0..attributes.saturating_sub(BASE_ATTRIBUTES) {
        context_extensions.insert(format!("bench.attr{j}"), format!("value-{j}-{}", i % 7));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: format!("req-{i}"),
                    method: "GET".into(),
                    path,
                    host: "productpage:9080".into(),
                    headers: [
                        ("x-user".to_string(), user),
                        ("user-agent".to_string(), "bench".to_string()),
                        (":authority".to_string(), "productpage:9080".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// One point of a curve.
#[derive(Debug, Clone, Copy)]
struct Point {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    decide_us: f64,
}

/// The mean time of one in-process decision, over about `budget`.
fn decide_time(d: &Arc<Dispatcher>, rules: usize, attributes: usize, budget: Duration) -> f64 {
    let authz = ExtAuthz::new(d.clone());
    let requests: Vec<CheckRequest> = (0..1000).map(|i| request(i, rules, attributes)).collect();
    for r in &requests {
        std::hint::black_box(futures::executor::block_on(authz.decide(r)));
    }
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < budget {
        for r in &requests {
            std::hint::black_box(futures::executor::block_on(authz.decide(r)));
        }
        n += requests.len();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

async fn measure(rules: usize, attributes: usize, secs: u64, concurrency: usize) -> Point {
    let d = dispatcher(rules);
    let decide_us = decide_time(&d, rules, attributes, Duration::from_millis(700));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = mesh_runtime::Shutdown::new();
    let server = tokio::spawn(mixer::server::serve(listener, d, shutdown.clone()));
    let connections = 4;
    // The requests are made before the clock starts: the figure is Mixer's, not prost's.
    let requests: Arc<Vec<CheckRequest>> =
        Arc::new((0..2000).map(|i| request(i, rules, attributes)).collect());
    let mut clients = Vec::new();
    for _ in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(Checks {
            client: AuthorizationClient::new(channel),
            requests: requests.clone(),
        });
    }
    warm_up(&mut clients[0].clone(), 500).await.unwrap();
    let per_connection = concurrency.div_ceil(connections).max(1);
    let run = closed_loop(
        &clients,
        per_connection,
        Duration::from_secs(secs),
        |c, t| c * 131 + t * 17,
        1,
    )
    .await
    .unwrap();
    shutdown.cancel();
    let _ = server.await;
    Point {
        rps: run.rps,
        p50_us: run.p50_us,
        p99_us: run.p99_us,
        decide_us,
    }
}

/// An ext_authz client sending the run's requests (`i` modulo their number).
#[derive(Clone)]
struct Checks {
    client: AuthorizationClient<tonic::transport::Channel>,
    requests: Arc<Vec<CheckRequest>>,
}

impl Load for Checks {
    async fn send(&mut self, i: usize) -> Result<(), String> {
        let req = self.requests[i % self.requests.len()].clone();
        self.client.check(req).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn curve(title: &str, x: &str, y: &str, series: Vec<(&str, Vec<[f64; 2]>)>) -> serde_json::Value {
    let series: serde_json::Map<String, serde_json::Value> = series
        .into_iter()
        .map(|(name, points)| (name.to_string(), serde_json::json!(points)))
        .collect();
    serde_json::json!({ "title": title, "x": x, "y": y, "series": series })
}

fn main() {
    let secs = env_or("MIXER_SCALE_SECS", 3);
    let concurrency = env_or("MIXER_SCALE_CONCURRENCY", 16) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = serde_json::Map::new();
    let mut by_rules = Vec::new();
    for rules in [10usize, 100, 1000] {
        let p = runtime.block_on(measure(rules, BASE_ATTRIBUTES, secs, concurrency));
        eprintln!("{rules} rules, {BASE_ATTRIBUTES} attributes: {p:?}");
        by_rules.push((rules, p));
    }
    let mut by_attributes = Vec::new();
    for attributes in [BASE_ATTRIBUTES, 50, 200] {
        let p = runtime.block_on(measure(100, attributes, secs, concurrency));
        eprintln!("100 rules, {attributes} attributes: {p:?}");
        by_attributes.push((attributes, p));
    }
    for (axis, x, points) in [
        ("rules", "rules (10 attributes per request)", &by_rules),
        (
            "attributes",
            "attributes per request (100 rules)",
            &by_attributes,
        ),
    ] {
        let pts = |f: fn(&Point) -> f64| -> Vec<[f64; 2]> {
            points.iter().map(|(n, p)| [*n as f64, f(p)]).collect()
        };
        report.insert(
            format!("mixer_scale_{axis}_rps"),
            curve(
                &format!("Mixer Check throughput vs {axis}"),
                x,
                "checks/s (gRPC, 16 in flight)",
                vec![("rps", pts(|p| p.rps.round()))],
            ),
        );
        report.insert(
            format!("mixer_scale_{axis}_latency"),
            curve(
                &format!("Mixer Check latency vs {axis}"),
                x,
                "µs",
                vec![
                    ("p99 (gRPC)", pts(|p| p.p99_us)),
                    ("p50 (gRPC)", pts(|p| p.p50_us)),
                    (
                        "in-process decision (mean)",
                        pts(|p| (p.decide_us * 100.0).round() / 100.0),
                    ),
                ],
            ),
        );
        for (n, p) in points.iter() {
            report.insert(
                format!("mixer_scale_rps_{n}_{axis}"),
                serde_json::json!(p.rps.round()),
            );
            report.insert(
                format!("mixer_scale_p99_us_{n}_{axis}"),
                serde_json::json!(p.p99_us),
            );
            report.insert(
                format!("mixer_scale_decide_us_{n}_{axis}"),
                serde_json::json!((p.decide_us * 100.0).round() / 100.0),
            );
        }
    }
    let report = serde_json::Value::Object(report);
    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/mixer_scale.json")
        });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
}
