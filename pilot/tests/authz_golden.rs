//! Golden authorization output: for each policy sample in `fixtures/authz/` (and each Istio
//! 1.0 RBAC sample of `fixtures/authz/istio-1.0-rbac/`, beside its RbacConfig), the RBAC
//! filters each workload of `golden/authz/registry.yaml` gets, on an HTTP chain and on a TCP
//! chain, as Envoy's `/config_dump` shows their typed config, one file per sample under
//! `golden/authz/`. Regenerate and review with
//!
//! ```sh
//! MESH_UPDATE_GOLDEN=1 cargo test -p pilot --test authz_golden
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pilot::testutil::golden::{self, UPDATE_ENV};
use pilot::testutil::{TestConfig, fixture, mk_sidecar};
use pilot::xds::dump::any_json;
use pilot::xds::generate::authz::{authz_http_filters, authz_network_filters, workload_policies};
use serde_json::{Value, json};

const MESH: &str = r#"rootNamespace: istio-system
trustDomain: cluster.local
extensionProviders:
- name: ext-authz-grpc
  envoyExtAuthzGrpc: {service: ext-authz.default.svc.cluster.local, port: 9000, timeout: 1s}
- name: ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.default.svc.cluster.local
    port: 8000
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-ext-authz-check-result]
    headersToDownstreamOnDeny: [x-ext-authz-check-result]
"#;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/authz")
}

/// (name, fixture files under `fixtures/authz/`).
fn samples() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        v.sort();
        v
    };
    for f in names(&fixture("authz")) {
        out.push((f.trim_end_matches(".yaml").to_string(), vec![f]));
    }
    for f in names(&fixture("authz/istio-1.0-rbac")) {
        if f == "rbac-config-ON.yaml" {
            continue;
        }
        out.push((
            format!("istio-1.0-rbac-{}", f.trim_end_matches(".yaml")),
            vec![
                "istio-1.0-rbac/rbac-config-ON.yaml".to_string(),
                format!("istio-1.0-rbac/{f}"),
            ],
        ));
    }
    out
}

/// A workload: name, IP, labels.
type Workload = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The workloads.
const WORKLOADS: [Workload; 3] = [
    (
        "productpage",
        "127.5.0.1",
        &[("app", "productpage"), ("version", "v1")],
    ),
    (
        "ratings",
        "127.5.0.2",
        &[("app", "ratings"), ("version", "v1")],
    ),
    (
        "mongodb",
        "127.5.0.3",
        &[("app", "mongodb"), ("version", "v1")],
    ),
];

fn typed(any: Option<&envoy_types::pb::google::protobuf::Any>) -> Value {
    let any = any.expect("typed config");
    any_json(&any.type_url, &any.value).unwrap()
}

fn dump(files: &[String]) -> Value {
    let mut config = TestConfig::new()
        .mesh_yaml(MESH)
        .file(golden_dir().join("registry.yaml"));
    for f in files {
        config = config.fixture(&format!("authz/{f}"));
    }
    let ctx = config.push_context();
    let mut workloads = serde_json::Map::new();
    for (name, ip, labels) in WORKLOADS {
        let proxy = mk_sidecar("default", ip).labels(labels).build();
        let policies = workload_policies(&ctx, &proxy, None);
        let http: Vec<Value> = authz_http_filters(&ctx, &proxy, None)
            .iter()
            .map(|f| {
                let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(a)) = &f.config_type else {
                    panic!("no typed config");
                };
                json!({"name": f.name, "typedConfig": typed(Some(a))})
            })
            .collect();
        let tcp: Vec<Value> = authz_network_filters(&ctx, &proxy, None)
            .iter()
            .map(|f| {
                let Some(
                    envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                        a,
                    ),
                ) = &f.config_type
                else {
                    panic!("no typed config");
                };
                json!({"name": f.name, "typedConfig": typed(Some(a))})
            })
            .collect();
        let applied: Vec<&str> = policies.policies.iter().map(|p| p.name.as_str()).collect();
        workloads.insert(
            name.to_string(),
            json!({"policies": applied, "http": http, "tcp": tcp}),
        );
    }
    let mut inputs = vec!["golden/authz/registry.yaml".to_string()];
    inputs.extend(files.iter().map(|f| format!("fixtures/authz/{f}")));
    json!({"inputs": inputs, "workloads": workloads})
}

#[test]
fn rbac_filters_match_the_golden_files() {
    let mut failures = Vec::new();
    let mut expected = BTreeSet::new();
    for (name, files) in samples() {
        let file = format!("{name}.json");
        let got = serde_json::to_string_pretty(&dump(&files)).unwrap() + "\n";
        if let Err(e) = golden::check(&golden_dir().join(&file), &got) {
            failures.push(e);
        }
        expected.insert(file);
    }
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
    assert!(
        failures.is_empty(),
        "{} golden file(s) out of date:\n\n{}\n\nIf the change is intended, regenerate them with \
         `{UPDATE_ENV}=1 cargo test -p pilot --test authz_golden` and review the diff.",
        failures.len(),
        failures.join("\n")
    );
}
