//! Golden xDS output: for bookinfo (`golden/registry.yaml`) alone and beside each of Istio's
//! samples in `fixtures/`, what a sidecar (productpage v1) and a router (the ingress gateway)
//! are sent: CDS, EDS, LDS and RDS as Envoy's `/config_dump` shows them, one file per sample
//! and proxy under `golden/`. Any change to the translator shows as a diff of those files,
//! and the test fails until they are regenerated and the diff reviewed:
//!
//! ```sh
//! MESH_UPDATE_GOLDEN=1 cargo test -p pilot --test golden
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pilot::model::Proxy;
use pilot::testutil::golden::{self, UPDATE_ENV};
use pilot::testutil::{TestConfig, fixture, mk_router, mk_sidecar};
use pilot::xds::Generation;
use pilot::xds::dump::{resource_json, section};
use pilot::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SharedResource};
use serde_json::{Value, json};

/// The mesh config of every sample: Istio's defaults, spelled out.
const MESH: &str = "connectTimeout: 10s
rootNamespace: istio-system
trustDomain: cluster.local
outboundTrafficPolicy: {mode: ALLOW_ANY}
";

/// Stands in for the version of every section: the files must not change from run to run.
const VERSION: &str = "golden";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The samples: a name and the fixtures applied over the registry, in order. Every fixture
/// is one; a VirtualService sample comes over the subsets of its release's
/// destination-rule-all, as Istio's docs apply it.
fn samples() -> Vec<(String, Vec<String>)> {
    let mut files: Vec<String> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut out = vec![("bookinfo".to_string(), Vec::new())];
    for file in files {
        let stem = file.trim_end_matches(".yaml").to_string();
        let mut inputs = Vec::new();
        for kind in ["-virtual-service-", "-fault-injection-"] {
            if let Some((release, _)) = stem.split_once(kind) {
                inputs.push(format!("{release}-destination-rule-all.yaml"));
            }
        }
        inputs.push(file);
        out.push((stem, inputs));
    }
    out
}

fn proxies() -> [(&'static str, Proxy); 2] {
    [
        (
            "sidecar",
            mk_sidecar("default", "127.3.0.1")
                .pod("productpage-v1-0")
                .labels(&[("app", "productpage"), ("version", "v1")])
                .build(),
        ),
        (
            "router",
            mk_router("istio-system", "127.3.0.10")
                .pod("istio-ingressgateway-0")
                .labels(&[("istio", "ingressgateway")])
                .build(),
        ),
    ]
}

/// Every string under a `key` anywhere in `v`.
fn strings_under(v: &Value, key: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) if k == key => {
                        out.insert(s.to_string());
                    }
                    _ => strings_under(v, key, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

/// The names Envoy asks EDS for: those of its EDS clusters (or their `serviceName`).
fn eds_names(clusters: &[SharedResource]) -> BTreeSet<String> {
    clusters
        .iter()
        .map(resource_json)
        .filter(|c| c["type"] == "EDS")
        .map(|c| match c["edsClusterConfig"]["serviceName"].as_str() {
            Some(service) => service.to_string(),
            None => c["name"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// What `proxy` is sent of each type, resources sorted by name, as one JSON document.
fn dump(generation: &Generation, proxy: &Proxy, inputs: &[String]) -> Value {
    let get = |type_url: &str, names: &BTreeSet<String>| {
        let mut resources = generation.resources(proxy, type_url, names).unwrap();
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        resources
    };
    let clusters = get(CLUSTER, &BTreeSet::new());
    let endpoints = get(ENDPOINT, &eds_names(&clusters));
    let listeners = section(LISTENER, VERSION, &get(LISTENER, &BTreeSet::new()));
    let mut route_names = BTreeSet::new();
    strings_under(&listeners, "routeConfigName", &mut route_names);
    let routes = get(ROUTE, &route_names);
    let mut sources = vec!["golden/registry.yaml".to_string()];
    sources.extend(inputs.iter().map(|f| format!("fixtures/{f}")));
    json!({
        "node": proxy.to_string(),
        "inputs": sources,
        "configs": [
            section(CLUSTER, VERSION, &clusters),
            section(ENDPOINT, VERSION, &endpoints),
            listeners,
            section(ROUTE, VERSION, &routes),
        ],
    })
}

#[test]
fn xds_output_matches_the_golden_files() {
    let mut failures = Vec::new();
    let mut expected = BTreeSet::new();
    for (name, inputs) in samples() {
        let mut config = TestConfig::new()
            .mesh_yaml(MESH)
            .file(golden_dir().join("registry.yaml"));
        for input in &inputs {
            config = config.fixture(input);
        }
        let generation = config.generation();
        for (kind, proxy) in proxies() {
            let file = format!("{name}.{kind}.json");
            let got = serde_json::to_string_pretty(&dump(&generation, &proxy, &inputs)).unwrap();
            if let Err(e) = golden::check(&golden_dir().join(&file), &(got + "\n")) {
                failures.push(e);
            }
            expected.insert(file);
        }
    }
    // No golden file without a sample behind it.
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.ends_with(".json") && !expected.contains(&file) {
            if golden::update_requested() {
                std::fs::remove_file(&path).unwrap();
            } else {
                failures.push(format!("{file} belongs to no sample any more"));
            }
        }
    }
    // The first few in full, then only which files.
    let shown: Vec<&str> = failures
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i < 5 {
                f
            } else {
                f.lines().next().unwrap_or_default()
            }
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} golden file(s) out of date:\n\n{}\n\nIf the change is intended, regenerate them with \
         `{UPDATE_ENV}=1 cargo test -p pilot --test golden` and review the diff (git diff \
         pilot/tests/golden).",
        failures.len(),
        shown.join("\n")
    );
}
