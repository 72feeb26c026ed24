//! What the topology graph costs.
//!
//! Rates and times are per CPU second of the measuring thread (its schedstat), not wall
//! time: the development machine's two cores are shared.
//!
//! - Report ingestion with the graph on and off, side by side: the same access-log messages
//!   (100 HTTP entries each, bookinfo-like workloads and services as Pilot's inbound reports
//!   tag them, 5% answered 503) through `report_message_with` on Istio 1.0's default config
//!   plus the test policy, alternating rounds of 250 ms of each so that both see the same
//!   machine. The figures are the median round of each, and the median over the pairs of rounds
//!   of the cost `(off - on) / off`.
//! - The graph's own time per entry: the same entries taken in by the store alone.
//! - Memory for 1,000 services: every service's workload called by two others, each of the
//!   2,000 edges with requests in every 10 s bucket of the 10 min retention and a full ring of
//!   recent requests (the most the store holds for them); the growth of the process's RSS
//!   and the store's own estimate of its heap, and how long `/graph.json`'s view of it takes.
//!
//! Writes `mixer_graph_*` figures to `BENCH_OUT` (default `target/bench/mixer_graph.json`).
//! `MIXER_GRAPH_BENCH_ROUNDS` sets the rounds of each (default 40).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use mesh_runtime::Snapshot;
use mixer::adapter::AdapterEnv;
use mixer::attribute::{Bag, DenseBag, Value, Vocabulary};
use mixer::config::{CompileOptions, Compiler};
use mixer::dispatch::{Dispatcher, Metrics};
use mixer::graph::view::View;
use mixer::graph::{Graph, GraphSettings};
use mixer::server::accesslog::report_message_with;

#[path = "common/accesslog.rs"]
mod accesslog;

// The same allocator as the mixer binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Istio 1.0's default config and the test policy, the stdio log to /dev/null.
fn dispatcher() -> Arc<Dispatcher> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut objects = BTreeMap::new();
    for f in ["istio-1.0-default-config.yaml", "policy.yaml"] {
        let path = fixtures.join(f);
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
        start_tasks: false,
        shutdown: Default::default(),
    };
    let metrics = Arc::new(Metrics::default());
    let mut compiler = Compiler::new(CompileOptions::default(), env, metrics.clone());
    let resolved = compiler.compile(&Snapshot::new(1, true, objects, Vec::new()));
    assert!(resolved.refused.is_empty(), "{:#?}", resolved.refused);
    std::mem::forget(compiler);
    Arc::new(Dispatcher::new(resolved, metrics))
}

/// 100 inbound entries: 10 services, their callers and workloads, 5% answered 503.
fn message() -> StreamAccessLogsMessage {
    let entries = (0..100u32)
        .map(|i| {
            let svc = i % 10;
            let tags = [
                ("context.reporter.kind", "inbound".to_string()),
                ("source.workload.name", format!("caller{}-v1", i % 3)),
                ("source.workload.namespace", "default".to_string()),
                (
                    "destination.workload.name",
                    format!("svc{svc}-v{}", i % 2 + 1),
                ),
                ("destination.workload.namespace", "default".to_string()),
                (
                    "destination.service.host",
                    format!("svc{svc}.default.svc.cluster.local"),
                ),
            ];
            accesslog::entry(i, tags, 3_000_000 + i as i32 * 10_000)
        })
        .collect();
    accesslog::message(entries)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Entries per second with the graph off and on (median rounds), the median cost of the
/// rounds side by side (percent), and the graph's edges.
fn ingestion(rounds: usize) -> (f64, f64, f64, usize) {
    let d = dispatcher();
    let cfg = d.config();
    let msg = message();
    let graph = Graph::new(GraphSettings::default());
    let round = |g: Option<&Graph>| {
        let start = Instant::now();
        let cpu = cpu_ns();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(250) {
            report_message_with(&d, &cfg, &msg, g);
            n += 100;
        }
        n as f64 / ((cpu_ns() - cpu) as f64 / 1e9)
    };
    for _ in 0..50 {
        report_message_with(&d, &cfg, &msg, Some(&graph));
        report_message_with(&d, &cfg, &msg, None);
    }
    let (mut off, mut on, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which goes first, so neither always follows the other.
        if i % 2 == 0 {
            off.push(round(None));
            on.push(round(Some(&graph)));
        } else {
            on.push(round(Some(&graph)));
            off.push(round(None));
        }
        costs.push((off[i] - on[i]) / off[i] * 100.0);
    }
    eprintln!("cost % per pair of rounds: {costs:.1?}");
    (
        median(&mut off),
        median(&mut on),
        median(&mut costs),
        graph.size().0,
    )
}

/// The CPU time this thread has run, in nanoseconds (`/proc/thread-self/schedstat`): the
/// rates are per CPU second, so that time the thread waits for a core (the machine is
/// shared) counts for neither side.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat")
}

/// The graph's own CPU time per entry (ns), the same entries taken in without dispatch.
fn record_ns() -> f64 {
    let d = dispatcher();
    let cfg = d.config();
    let msg = message();
    let Some(LogEntries::HttpLogs(l)) = &msg.log_entries else {
        unreachable!()
    };
    let bags: Vec<DenseBag<'_>> = l
        .log_entry
        .iter()
        .map(|e| mixer::server::accesslog::http_bag(&cfg.vocab, e))
        .collect();
    let graph = Graph::new(GraphSettings::default());
    for _ in 0..100 {
        graph.record_report(&d, &cfg, &bags);
    }
    let start = Instant::now();
    let cpu = cpu_ns();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        graph.record_report(&d, &cfg, &bags);
        n += bags.len() as u64;
    }
    (cpu_ns() - cpu) as f64 / n as f64
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The store at 1,000 services, full: (RSS growth KB, heap estimate KB, edges, nodes, view ms).
fn memory() -> (u64, u64, usize, usize, f64) {
    const SERVICES: usize = 1000;
    let vocab = Arc::new(Vocabulary::builtin());
    let settings = GraphSettings::default();
    let buckets = settings.retention.as_secs() / settings.bucket.as_secs();
    let recent = settings.recent;
    let names: Vec<(String, String)> = (0..SERVICES)
        .map(|i| {
            (
                format!("svc{i}-v1"),
                format!("svc{i}.ns{}.svc.cluster.local", i % 20),
            )
        })
        .collect();
    let before = rss_kb();
    let graph = Graph::new(settings.clone());
    let start = SystemTime::now() - settings.retention;
    for b in 0..buckets {
        let now = start + Duration::from_secs(b * settings.bucket.as_secs());
        // In the last bucket, enough requests to fill every ring.
        let per_edge = if b + 1 == buckets { recent } else { 1 };
        let paths: Vec<String> = (0..per_edge)
            .map(|i| format!("/api/v1/items/{i}?page=2"))
            .collect();
        for i in 0..SERVICES {
            for caller in [(i + 1) % SERVICES, (i + 7) % SERVICES] {
                let mut bag = DenseBag::with_len(vocab.len());
                let mut s = |n: &str, v: &'static str| {
                    bag.set_named(&vocab, n, Value::String(Cow::Borrowed(v)));
                };
                s("source.workload.namespace", "bench");
                s("destination.workload.namespace", "bench");
                s("request.method", "GET");
                for (n, v) in [
                    ("source.workload.name", &names[caller].0),
                    ("destination.workload.name", &names[i].0),
                    ("destination.service.host", &names[i].1),
                ] {
                    bag.set_named(&vocab, n, Value::String(Cow::Borrowed(v.as_str())));
                }
                bag.set_named(&vocab, "response.code", Value::Int64(200));
                bag.set_named(
                    &vocab,
                    "response.duration",
                    Value::Duration(Duration::from_millis(4)),
                );
                for path in &paths {
                    bag.set_named(&vocab, "request.path", Value::String(Cow::Borrowed(path)));
                    graph.record_at(now, &vocab, [&bag as &dyn Bag]);
                }
            }
        }
    }
    let grown = rss_kb().saturating_sub(before);
    let (edges, nodes) = graph.size();
    let t = Instant::now();
    let view = View::build(
        settings.retention,
        graph.read(SystemTime::now(), settings.retention, false),
        recent,
    );
    let json = serde_json::to_vec(&view.to_json()).unwrap();
    let view_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "1,000 services: {edges} edges, {nodes} nodes, {} view edges, /graph.json {} KB",
        view.edges.len(),
        json.len() / 1024
    );
    (
        grown,
        graph.heap_bytes() as u64 / 1024,
        edges,
        nodes,
        view_ms,
    )
}

fn main() {
    let rounds: usize = std::env::var("MIXER_GRAPH_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
        .max(1);
    let (off, on, cost, edges) = ingestion(rounds);
    let per_entry = record_ns();
    let (rss, heap, mem_edges, mem_nodes, view_ms) = memory();
    let result = serde_json::json!({
        "mixer_graph_report_entries_per_s_off": off.round(),
        "mixer_graph_report_entries_per_s_on": on.round(),
        "mixer_graph_report_cost_percent": (cost * 10.0).round() / 10.0,
        "mixer_graph_bench_edges": edges,
        "mixer_graph_record_ns_per_entry": per_entry.round(),
        "mixer_graph_rss_kb_1000_services": rss,
        "mixer_graph_heap_kb_1000_services": heap,
        "mixer_graph_edges_1000_services": mem_edges,
        "mixer_graph_nodes_1000_services": mem_nodes,
        "mixer_graph_view_ms_1000_services": (view_ms * 10.0).round() / 10.0,
    });
    println!("{result}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("bench").join("mixer_graph.json")
        });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
}
