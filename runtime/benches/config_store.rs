//! Benchmark of the directory config store: how long a large config directory takes to load,
//! and how long an edit takes to reach a subscriber. Writes `target/bench/runtime.json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_runtime::config::{DirectoryOptions, DirectoryStore};
use mesh_runtime::{ConfigStore, Shutdown};

const OBJECTS: usize = 1000;
const PER_FILE: usize = 50;
const EDITS: usize = 20;

fn service_entry(i: usize, version: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: svc-{i}\n  namespace: ns-{}\nspec:\n  hosts: [svc-{i}.example.com]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - number: {}\n    name: http\n    protocol: HTTP\n  endpoints:\n  - address: 127.0.{}.{}\n    labels: {{app: svc-{i}, version: v{version}}}\n---\n",
        i % 10,
        8000 + version,
        i / 250,
        i % 250 + 1
    )
}

fn write_file(dir: &std::path::Path, file: usize, version: usize) {
    let text: String = (file * PER_FILE..(file + 1) * PER_FILE)
        .map(|i| service_entry(i, version))
        .collect();
    let tmp = dir.join(format!(".f{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(format!("f{file}.yaml"))).unwrap();
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..OBJECTS / PER_FILE {
        write_file(dir.path(), f, 1);
    }

    let mut loads = Vec::new();
    for _ in 0..5 {
        let shutdown = Shutdown::new();
        let start = Instant::now();
        let store =
            DirectoryStore::start(dir.path(), DirectoryOptions::default(), shutdown.clone())
                .unwrap();
        loads.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(store.subscribe().borrow().objects().len(), OBJECTS);
        shutdown.cancel();
    }

    // Edit latency includes the 100 ms debounce, as a user sees it.
    let shutdown = Shutdown::new();
    let store =
        DirectoryStore::start(dir.path(), DirectoryOptions::default(), shutdown.clone()).unwrap();
    let mut rx = store.subscribe();
    let mut edits = Vec::new();
    for e in 0..EDITS {
        rx.borrow_and_update();
        let start = Instant::now();
        write_file(dir.path(), e % (OBJECTS / PER_FILE), e + 2);
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("edit reached the subscriber")
            .unwrap();
        edits.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    shutdown.cancel();

    let report = serde_json::json!({
        "config_dir_load_ms_1000_objects": percentile(&mut loads, 0.5),
        "config_dir_edit_to_subscriber_p99_ms": percentile(&mut edits, 0.99),
    });
    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../target/bench/runtime.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
