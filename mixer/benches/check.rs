//! Mixer's speed: ext_authz checks over gRPC (Istio 1.0's default config plus the test
//! policy: a denier, a listchecker and a memquota rule) with the load generator in the same
//! process, the same checks over `istio.mixer.v1` with compressed attributes, and access-log
//! entries dispatched to the prometheus (and stdio) adapters.
//!
//! Writes `target/bench/mixer.json` with `mixer_check_rps`, `mixer_check_p99_us`,
//! `mixer_v1_check_rps`, `mixer_v1_check_p99_us` and `mixer_report_entries_per_s`. `MIXER_BENCH_SECS` sets the length of each phase (default 5),
//! `MIXER_BENCH_CONCURRENCY` the checks in flight (default 16).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use mesh_proto::grpc::istio::mixer::v1 as mixer_v1;
use mesh_runtime::Snapshot;
use mixer::adapter::AdapterEnv;
use mixer::config::{CompileOptions, Compiler};
use mixer::dispatch::{Dispatcher, Metrics};

#[path = "common/accesslog.rs"]
mod accesslog;
mod common;

use common::{Load, closed_loop, warm_up};

// The same allocator as the mixer binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The default config and the test policy, with the stdio access log sent to /dev/null.
fn dispatcher(start_tasks: bool) -> Arc<Dispatcher> {
    let mut objects = BTreeMap::new();
    for f in ["istio-1.0-default-config.yaml", "policy.yaml"] {
        let path = fixtures().join(f);
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "  outputAsJson: true\n",
            "  outputAsJson: true\n  logStream: FILE\n  outputPath: /dev/null\n",
        );
        for r in mesh_runtime::config::parse_file(&path, &text) {
            let o = r.unwrap();
            objects.insert(o.key.clone(), Arc::new(o));
        }
    }
    let env = AdapterEnv {
        prometheus: Default::default(),
        start_tasks,
        shutdown: Default::default(),
    };
    let metrics = Arc::new(Metrics::default());
    let mut compiler = Compiler::new(CompileOptions::default(), env, metrics.clone());
    let resolved = compiler.compile(&Snapshot::new(1, true, objects, Vec::new()));
    assert!(resolved.refused.is_empty(), "{:#?}", resolved.refused);
    // The compiler owns the handlers' task guards only through the config; keep it alive.
    std::mem::forget(compiler);
    Arc::new(Dispatcher::new(resolved, metrics))
}

fn check_request(i: usize) -> CheckRequest {
    let user = if i.is_multiple_of(100) {
        "john"
    } else {
        "jane"
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: format!("req-{i}"),
                    method: "GET".into(),
                    path: format!("/products/{}", i % 50),
                    host: "productpage:9080".into(),
                    headers: [
                        ("x-user".to_string(), user.to_string()),
                        ("user-agent".to_string(), "bench".to_string()),
                        (":authority".to_string(), "productpage:9080".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [
                (
                    "destination.service.name".to_string(),
                    format!("svc{}", i % 10),
                ),
                (
                    "destination.service.namespace".to_string(),
                    "default".to_string(),
                ),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }),
    }
}

/// The same request as [`check_request`], compressed as an Istio proxy would send it to
/// `istio.mixer.v1.Mixer/Check` (global dictionary words where there are some), with the
/// `requestcount` quota asked for.
fn v1_check_request(i: usize) -> mixer_v1::CheckRequest {
    let user = if i.is_multiple_of(100) {
        "john"
    } else {
        "jane"
    };
    let mut a = mixer_v1::CompressedAttributes {
        words: vec![
            "x-user".into(),
            user.into(),
            "bench".into(),
            "productpage:9080".into(),
            format!("/products/{}", i % 50),
            format!("svc{}", i % 10),
            "default".into(),
            format!("req-{i}"),
        ],
        ..Default::default()
    };
    // request.headers: x-user, user-agent (86), :authority (31).
    a.string_maps.insert(
        15,
        mixer_v1::StringMap {
            entries: [(-1, -2), (86, -3), (31, -4)].into_iter().collect(),
        },
    );
    for (name, value) in [
        (19, 90),  // request.method = GET
        (17, -5),  // request.path
        (203, -5), // request.url_path
        (18, -4),  // request.host
        (16, -8),  // request.id
        (191, -6), // destination.service.name
        (192, -7), // destination.service.namespace
    ] {
        a.strings.insert(name, value);
    }
    mixer_v1::CheckRequest {
        attributes: Some(a),
        global_word_count: 222,
        deduplication_id: format!("req-{i}"),
        quotas: [(
            "requestcount".to_string(),
            mixer_v1::check_request::QuotaParams {
                amount: 1,
                best_effort: false,
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// Which API the checks go through.
#[derive(Debug, Clone, Copy)]
enum Api {
    ExtAuthz,
    MixerV1,
}

/// A client of each API, on one connection, and the API the checks go through.
#[derive(Clone)]
struct Clients {
    api: Api,
    authz: AuthorizationClient<tonic::transport::Channel>,
    v1: mixer_v1::mixer_client::MixerClient<tonic::transport::Channel>,
}

impl Load for Clients {
    /// Sends check `i` through the API.
    async fn send(&mut self, i: usize) -> Result<(), String> {
        match self.api {
            Api::ExtAuthz => {
                self.authz
                    .check(check_request(i))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Api::MixerV1 => {
                self.v1
                    .check(v1_check_request(i))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

async fn bench_checks(secs: u64, api: Api) -> (f64, f64) {
    let d = dispatcher(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = mesh_runtime::Shutdown::new();
    tokio::spawn(mixer::server::serve(listener, d, shutdown.clone()));
    // Closed loop: CONCURRENCY requests in flight over 4 connections (as a few sidecars
    // would hold), so latency is not just queueing behind an arbitrary backlog.
    let concurrency: usize = std::env::var("MIXER_BENCH_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let connections = 4;
    let per_connection = concurrency.div_ceil(connections).max(1);
    let mut clients: Vec<Clients> = Vec::new();
    for _ in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(Clients {
            api,
            authz: AuthorizationClient::new(channel.clone()),
            v1: mixer_v1::mixer_client::MixerClient::new(channel),
        });
    }
    warm_up(&mut clients[0].clone(), 1000).await.unwrap();
    let run = closed_loop(
        &clients,
        per_connection,
        Duration::from_secs(secs),
        |c, t| c * 1000 + t,
        17,
    )
    .await
    .unwrap();
    shutdown.cancel();
    (run.rps, run.p99_us)
}

fn bench_reports(secs: u64) -> f64 {
    let d = dispatcher(false);
    let cfg = d.config();
    let entries = (0..100u32)
        .map(|i| {
            let tags = [
                (
                    "destination.service.host",
                    format!("svc{}.default.svc.cluster.local", i % 10),
                ),
                ("destination.service.name", format!("svc{}", i % 10)),
            ];
            accesslog::entry(i, tags, 3_000_000)
        })
        .collect();
    let msg = accesslog::message(entries);
    for _ in 0..20 {
        mixer::server::accesslog::report_message(&d, &cfg, &msg);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        mixer::server::accesslog::report_message(&d, &cfg, &msg);
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: u64 = std::env::var("MIXER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rps, p99) = runtime.block_on(bench_checks(secs, Api::ExtAuthz));
    let (v1_rps, v1_p99) = runtime.block_on(bench_checks(secs, Api::MixerV1));
    let reports = bench_reports(secs);
    let result = serde_json::json!({
        "mixer_check_rps": rps.round(),
        "mixer_check_p99_us": p99,
        "mixer_v1_check_rps": v1_rps.round(),
        "mixer_v1_check_p99_us": v1_p99,
        "mixer_report_entries_per_s": reports.round(),
    });
    println!("{result}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mixer.json"),
        serde_json::to_vec_pretty(&result).unwrap(),
    )
    .unwrap();
}
