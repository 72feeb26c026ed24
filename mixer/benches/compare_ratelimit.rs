//! Mixer's rate limit service against Envoy's reference one, `envoyproxy/ratelimit` (built by
//! `tests/scripts/bench-compare.sh` from `tests/peers/ratelimit/`), driven by the same client
//! of `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` at the same descriptors
//! and limits, on the same Redis.
//!
//! - Redis: a `redis-server` of its own on a free loopback port (no persistence), stopped at
//!   the end.
//! - theirs: the `RATELIMIT_BIN` binary with a file config (`RUNTIME_ROOT`), Redis over TCP,
//!   no statsd, gRPC on a free loopback port; a process of its own (its defaults otherwise:
//!   a pool of connections, no pipelining).
//! - ours: Mixer's gRPC server on a tokio runtime of its own (2 threads) in this process, with
//!   the `requestcount` quota (dimension `user: ratelimit.user`) kept by a `memquota` handler
//!   or by a `redisquota` handler (fixed window, `connectionPoolSize` multiplexed
//!   connections: `COMPARE_REDIS_POOL`, default 4) on the same Redis.
//!
//! The same limit everywhere: 1,000,000 per second per user, which no user reaches (every
//! answer is OK; checked), so the figures are the cost of counting. Each request is one
//! descriptor `(quota=requestcount, user=user<i % 100>)` of domain `bench`. Closed loop
//! (`common::closed_loop`): `COMPARE_CONCURRENCY` requests in flight (default 16) over 4
//! connections, for `COMPARE_SECS` (default 5) each. Writes `$BENCH_OUT` (default
//! `target/bench/compare_ratelimit.json`): per figure `{"ours", "theirs", "speedup", "unit"}`
//! where `speedup` is above 1 when ours is better: ours / theirs for throughput (`_rps`),
//! theirs / ours for latency (`_p50_us`, `_p99_us`). (Not the `ratio` = theirs / ours of
//! the other comparisons, which reads backwards for throughput.) When it cannot measure
//! (no `RATELIMIT_BIN`, no `redis-server`, a service that does not answer) it writes
//! `{"compare_ratelimit": {"skipped": reason}}` instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use mesh_runtime::Snapshot;
use mixer::adapter::AdapterEnv;
use mixer::config::{CompileOptions, Compiler};
use mixer::dispatch::{Dispatcher, Metrics};
use tonic::transport::Channel;

mod common;

use common::{Load, Run, closed_loop, warm_up};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LIMIT: u64 = 1_000_000;
const USERS: usize = 100;

/// A child process, killed (by its pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `port` accepts connections, or fails naming `what`.
fn wait_port(port: u16, what: &str, proc: &mut Proc) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.0.try_wait() {
            return Err(format!("{what} exited: {status}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} does not listen on {port} after 30 s"))
}

fn start_redis() -> Result<(Proc, u16), String> {
    let port = free_port();
    let child = Command::new(std::env::var("REDIS_SERVER").unwrap_or("redis-server".into()))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let mut p = Proc(child);
    wait_port(port, "redis-server", &mut p)?;
    Ok((p, port))
}

fn start_ratelimit(bin: &Path, redis_port: u16, dir: &Path) -> Result<(Proc, u16), String> {
    let config = dir.join("ratelimit/config");
    std::fs::create_dir_all(&config).unwrap();
    let yaml = format!(
        "domain: bench\ndescriptors:\n  - key: quota\n    value: requestcount\n    descriptors:\n      - key: user\n        rate_limit:\n          unit: second\n          requests_per_unit: {LIMIT}\n"
    );
    std::fs::write(config.join("bench.yaml"), yaml).unwrap();
    let (grpc, http, debug) = (free_port(), free_port(), free_port());
    let child = Command::new(bin)
        .env_clear()
        .env("RUNTIME_ROOT", dir)
        .env("RUNTIME_SUBDIRECTORY", "ratelimit")
        .env("RUNTIME_APPDIRECTORY", "config")
        .env("RUNTIME_WATCH_ROOT", "false")
        .env("RUNTIME_IGNOREDOTFILES", "true")
        .env("REDIS_SOCKET_TYPE", "tcp")
        .env("REDIS_URL", format!("127.0.0.1:{redis_port}"))
        .env("USE_STATSD", "false")
        .env("LOG_LEVEL", "warn")
        .env("HOST", "127.0.0.1")
        .env("GRPC_HOST", "127.0.0.1")
        .env("DEBUG_HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("PORT", http.to_string())
        .env("DEBUG_PORT", debug.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut p = Proc(child);
    wait_port(grpc, "ratelimit", &mut p)?;
    Ok((p, grpc))
}

/// Mixer's config: the quota instance, its handler and the rule sending it there.
fn mixer_config(redis_port: Option<u16>, pool: u64) -> String {
    let handler = match redis_port {
        None => format!(
            "kind: memquota\nmetadata:\n  name: handler\n  namespace: istio-system\nspec:\n  quotas:\n  - name: requestcount.quota.istio-system\n    maxAmount: {LIMIT}\n    validDuration: 1s\n"
        ),
        Some(port) => format!(
            "kind: redisquota\nmetadata:\n  name: handler\n  namespace: istio-system\nspec:\n  redisServerUrl: 127.0.0.1:{port}\n  connectionPoolSize: {pool}\n  quotas:\n  - name: requestcount.quota.istio-system\n    maxAmount: {LIMIT}\n    validDuration: 1s\n    rateLimitAlgorithm: FIXED_WINDOW\n"
        ),
    };
    let adapter = if redis_port.is_some() {
        "redisquota"
    } else {
        "memquota"
    };
    format!(
        r#"apiVersion: config.istio.io/v1alpha2
kind: attributemanifest
metadata:
  name: ratelimit
  namespace: istio-system
spec:
  attributes:
    ratelimit.user:
      valueType: STRING
---
apiVersion: config.istio.io/v1alpha2
{handler}---
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata:
  name: requestcount
  namespace: istio-system
spec:
  dimensions:
    user: ratelimit.user | "anonymous"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata:
  name: quota
  namespace: istio-system
spec:
  actions:
  - handler: handler.{adapter}
    instances: [requestcount.quota]
"#
    )
}

/// Serves Mixer with `yaml` on a runtime of its own; returns the port and what stops it.
fn start_mixer(yaml: &str) -> (u16, mesh_runtime::Shutdown, std::thread::JoinHandle<()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut objects = BTreeMap::new();
    for r in mesh_runtime::config::parse_file(Path::new("ratelimit.yaml"), yaml) {
        let o = r.unwrap();
        objects.insert(o.key.clone(), Arc::new(o));
    }
    let shutdown = mesh_runtime::Shutdown::new();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = shutdown.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let yaml_objects = objects;
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let env = AdapterEnv {
                prometheus: Default::default(),
                start_tasks: true,
                shutdown: Default::default(),
            };
            let metrics = Arc::new(Metrics::default());
            let mut compiler = Compiler::new(CompileOptions::default(), env, metrics.clone());
            let resolved = compiler.compile(&Snapshot::new(1, true, yaml_objects, Vec::new()));
            assert!(resolved.refused.is_empty(), "{:#?}", resolved.refused);
            let d = Arc::new(Dispatcher::new(resolved, metrics));
            tx.send(()).unwrap();
            mixer::server::serve(listener, d, stop).await.unwrap();
            drop(compiler);
        });
    });
    rx.recv().unwrap();
    (port, shutdown, thread)
}

fn request(i: usize) -> RateLimitRequest {
    RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "quota".into(),
                    value: "requestcount".into(),
                },
                Entry {
                    key: "user".into(),
                    value: format!("user{}", i % USERS),
                },
            ],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

/// A ShouldRateLimit client sending the run's requests (`i` modulo their number); an answer
/// other than OK ends the run.
#[derive(Clone)]
struct Limits {
    client: RateLimitServiceClient<Channel>,
    requests: Arc<Vec<RateLimitRequest>>,
}

impl Load for Limits {
    async fn send(&mut self, i: usize) -> Result<(), String> {
        let req = self.requests[i % self.requests.len()].clone();
        let r = self
            .client
            .should_rate_limit(req)
            .await
            .map_err(|e| e.to_string())?;
        if r.get_ref().overall_code != Code::Ok as i32 {
            return Err(format!("answer not OK: {:?}", r.get_ref()));
        }
        Ok(())
    }
}

/// Drives the service on `port`; Err when it does not answer, or answers OVER_LIMIT.
async fn drive(port: u16, secs: u64, concurrency: usize) -> Result<Run, String> {
    let requests: Arc<Vec<RateLimitRequest>> = Arc::new((0..1000).map(request).collect());
    let mut clients: Vec<Limits> = Vec::new();
    for _ in 0..4 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        clients.push(Limits {
            client: RateLimitServiceClient::new(channel),
            requests: requests.clone(),
        });
    }
    // Ready when the first answer comes (the peer loads its config after listening).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first = clients[0].clone();
    loop {
        match first.send(0).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => return Err(format!("ShouldRateLimit: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    warm_up(&mut first, 1000).await?;
    let per_connection = concurrency.div_ceil(clients.len()).max(1);
    closed_loop(
        &clients,
        per_connection,
        Duration::from_secs(secs),
        |c, t| c * 37 + t * 7,
        1,
    )
    .await
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy)]
enum Better {
    /// Throughput: more is better.
    Higher,
    /// Latency, memory: less is better.
    Lower,
}

/// A figure: ours, theirs and `speedup`, above 1 when ours is better (ours / theirs for
/// throughput, theirs / ours for latency and memory).
fn figure(ours: f64, theirs: f64, unit: &str, better: Better) -> serde_json::Value {
    let speedup = match better {
        Better::Higher => ours / theirs,
        Better::Lower => theirs / ours,
    };
    serde_json::json!({
        "ours": ours.round(),
        "theirs": theirs.round(),
        "speedup": (speedup * 100.0).round() / 100.0,
        "unit": unit,
    })
}

fn main() {
    let Some(bin) = std::env::var_os("RATELIMIT_BIN").map(PathBuf::from) else {
        return skip("RATELIMIT_BIN is not set (tests/scripts/bench-compare.sh builds it)");
    };
    let secs = env_or("COMPARE_SECS", 5);
    let concurrency = env_or("COMPARE_CONCURRENCY", 16) as usize;
    let pool = env_or("COMPARE_REDIS_POOL", 4);
    let (redis, redis_port) = match start_redis() {
        Ok(r) => r,
        Err(e) => return skip(&e),
    };
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();

    let theirs = match start_ratelimit(&bin, redis_port, work.path()) {
        Ok((proc, port)) => {
            let r = client.block_on(drive(port, secs, concurrency));
            drop(proc);
            r
        }
        Err(e) => Err(e),
    };
    let theirs = match theirs {
        Ok(r) => r,
        Err(e) => return skip(&format!("envoyproxy/ratelimit: {e}")),
    };
    eprintln!("envoyproxy/ratelimit (redis): {theirs:?}");

    let mut ours = BTreeMap::new();
    for (name, redis) in [("memquota", None), ("redisquota", Some(redis_port))] {
        let (port, stop, thread) = start_mixer(&mixer_config(redis, pool));
        let r = client.block_on(drive(port, secs, concurrency));
        stop.cancel();
        let _ = thread.join();
        match r {
            Ok(r) => {
                eprintln!("mixer {name}: {r:?}");
                ours.insert(name, r);
            }
            Err(e) => return skip(&format!("mixer {name}: {e}")),
        }
    }
    drop(redis);

    let mut report = serde_json::Map::new();
    for (name, r) in &ours {
        report.insert(
            format!("compare_ratelimit_{name}_rps"),
            figure(r.rps, theirs.rps, "requests/s", Better::Higher),
        );
        report.insert(
            format!("compare_ratelimit_{name}_p99_us"),
            figure(r.p99_us, theirs.p99_us, "µs", Better::Lower),
        );
        report.insert(
            format!("compare_ratelimit_{name}_p50_us"),
            figure(r.p50_us, theirs.p50_us, "µs", Better::Lower),
        );
    }
    write(&serde_json::Value::Object(report));
}

/// Says why nothing was measured, in the output too.
fn skip(reason: &str) {
    eprintln!("compare_ratelimit: skipped: {reason}");
    write(&serde_json::json!({ "compare_ratelimit": { "skipped": reason } }));
}

fn write(report: &serde_json::Value) {
    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/compare_ratelimit.json")
        });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_vec_pretty(report).unwrap()).unwrap();
}
