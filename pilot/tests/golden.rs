//! Golden xDS output: for bookinfo (`golden/registry.yaml`) alone and beside each of Istio's
//! samples in `fixtures/`, what a sidecar (and, for gateway samples and the baseline, an
//! ingress gateway) is sent: its CDS, LDS, RDS and EDS, as JSON in the shape of Envoy's
//! `/config_dump`, one file per sample and proxy under `golden/`. A change of the translator
//! shows as a diff of those files; the test fails until they are regenerated with
//!
//! ```sh
//! MESH_UPDATE_GOLDEN=1 cargo test -p pilot --test golden
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pilot::mesh::MeshConfig;
use pilot::model::{Proxy, PushContext};
use pilot::testutil::{context_from_yaml, mk_router, mk_sidecar};
use pilot::xds::dump::section;
use pilot::xds::generate::{cds, eds, lds, rds};
use pilot::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use serde_json::{Value, json};

const UPDATE_ENV: &str = "MESH_UPDATE_GOLDEN";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The samples: name, the fixture files beside the registry (in order), and whether an
/// ingress gateway's config is kept too.
fn samples() -> Vec<(String, Vec<String>, bool)> {
    let mut out = vec![("bookinfo".to_string(), Vec::new(), true)];
    let mut files: Vec<String> = std::fs::read_dir(dir().join("fixtures"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    for file in files {
        let stem = file.trim_end_matches(".yaml").to_string();
        let mut inputs = Vec::new();
        // As Istio's docs apply them: a VirtualService sample over the subsets of
        // destination-rule-all of its own release.
        if stem.contains("virtual-service") || stem.contains("fault-injection") {
            let release = stem.split("-virtual-service").next().unwrap_or_default();
            let release = release.split("-fault-injection").next().unwrap_or_default();
            inputs.push(format!("{release}-destination-rule-all.yaml"));
        }
        inputs.push(file.clone());
        let gateway = stem.contains("gateway");
        out.push((stem, inputs, gateway));
    }
    out
}

/// Every `routeConfigName` the listeners refer to.
fn route_names(listeners: &Value, out: &mut BTreeSet<String>) {
    match listeners {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "routeConfigName"
                    && let Some(name) = v.as_str()
                {
                    out.insert(name.to_string());
                } else {
                    route_names(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| route_names(v, out)),
        _ => {}
    }
}

/// Every EDS cluster name the clusters refer to.
fn eds_names(clusters: &[pilot::xds::resource::SharedResource]) -> BTreeSet<String> {
    clusters
        .iter()
        .filter(|c| {
            let json = pilot::xds::dump::resource_json(c);
            json["type"] == "EDS"
        })
        .map(|c| c.name.clone())
        .collect()
}

/// The four sections a proxy gets, as one JSON document.
fn dump(ctx: &PushContext, proxy: &Proxy) -> Value {
    let clusters = cds::clusters(ctx, proxy);
    let listeners = lds::listeners(ctx, proxy);
    let listener_json = section(LISTENER, "golden", &listeners);
    let mut names = BTreeSet::new();
    route_names(&listener_json, &mut names);
    let routes = rds::routes(ctx, proxy, &names);
    let endpoints: Vec<_> = eds_names(&clusters)
        .iter()
        .filter_map(|name| eds::load_assignment(ctx, name))
        .collect();
    json!({
        "node": proxy.to_string(),
        "configs": [
            section(CLUSTER, "golden", &clusters),
            section(ENDPOINT, "golden", &endpoints),
            listener_json,
            section(ROUTE, "golden", &routes),
        ]
    })
}

/// The first lines where `want` and `got` differ, with line numbers.
fn first_differences(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    let mut shown = 0;
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i).copied(), g.get(i).copied());
        if a != b {
            let _ = writeln!(out, "  line {}:", i + 1);
            let _ = writeln!(out, "  - {}", a.unwrap_or("<end of file>"));
            let _ = writeln!(out, "  + {}", b.unwrap_or("<end of file>"));
            shown += 1;
            if shown == 8 {
                let _ = writeln!(out, "  ...");
                break;
            }
        }
    }
    out
}

#[test]
fn xds_output_matches_the_golden_files() {
    let update = std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1");
    let registry = std::fs::read_to_string(dir().join("golden/registry.yaml")).unwrap();
    let sidecar = mk_sidecar(
        "productpage-v1-0",
        "default",
        "127.3.0.1",
        &[("app", "productpage"), ("version", "v1")],
    );
    let router = mk_router(
        "istio-ingressgateway-0",
        "istio-system",
        "127.3.0.10",
        &[("istio", "ingressgateway")],
    );
    let mut failures = Vec::new();
    let mut written = BTreeSet::new();
    for (name, inputs, gateway) in samples() {
        let mut text = registry.clone();
        for input in &inputs {
            text.push_str("\n---\n");
            text.push_str(&std::fs::read_to_string(dir().join("fixtures").join(input)).unwrap());
        }
        let ctx = context_from_yaml(&text, MeshConfig::default());
        let mut proxies = vec![("sidecar", &sidecar)];
        if gateway {
            proxies.push(("router", &router));
        }
        for (kind, proxy) in proxies {
            let file = format!("{name}.{kind}.json");
            let got = serde_json::to_string_pretty(&dump(&ctx, proxy)).unwrap() + "\n";
            let path = dir().join("golden").join(&file);
            written.insert(file.clone());
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(want) if want == got => {}
                Ok(want) => failures.push(format!(
                    "{file} differs from what Pilot generates now:\n{}",
                    first_differences(&want, &got)
                )),
                Err(_) => failures.push(format!("{file} is missing")),
            }
        }
    }
    // No golden file without a sample behind it.
    for entry in std::fs::read_dir(dir().join("golden")).unwrap().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.ends_with(".json") && !written.contains(&file) {
            if update {
                std::fs::remove_file(entry.path()).unwrap();
            } else {
                failures.push(format!("{file} belongs to no sample any more"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden file(s) out of date:\n{}\nIf the change is intended, regenerate them with \
         `{UPDATE_ENV}=1 cargo test -p pilot --test golden` and review the diff.",
        failures.len(),
        failures.join("\n")
    );
}
