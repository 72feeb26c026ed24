//! Config loading and the core paths end to end, in process: Istio 1.0's default config loads
//! unmodified; ext_authz checks and access-log reports give Istio's answers and metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, LogEntries,
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use futures::executor::block_on;
use mesh_runtime::Snapshot;
use mixer::adapter::AdapterEnv;
use mixer::adapter::prometheus::PrometheusEnv;
use mixer::config::{CompileOptions, Compiler};
use mixer::dispatch::{Dispatcher, Metrics};
use mixer::server::ext_authz::ExtAuthz;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn snapshot(files: &[PathBuf]) -> Snapshot {
    let mut objects = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for r in mesh_runtime::config::parse_file(f, &text) {
            match r {
                Ok(o) => {
                    objects.insert(o.key.clone(), Arc::new(o));
                }
                Err(e) => errors.push(e),
            }
        }
    }
    Snapshot::new(1, true, objects, errors)
}

#[test]
fn istio_default_config_loads_unmodified() {
    let problems = mixer::validate(&[fixture("istio-1.0-default-config.yaml")], "istio-system");
    assert!(problems.is_empty(), "{problems:#?}");
    // The conformance corpus itself, when this checkout has it.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/istio-1.0");
    if shared.is_dir() {
        let problems = mixer::validate(&[shared.join("mixer-default-config.yaml")], "istio-system");
        assert!(problems.is_empty(), "{problems:#?}");
        // The bookinfo policy samples load alongside it (each file on its own, as they
        // redefine the same handler names).
        for entry in std::fs::read_dir(shared.join("policy")).unwrap() {
            let path = entry.unwrap().path();
            let problems = mixer::validate(
                &[shared.join("mixer-default-config.yaml"), path.clone()],
                "istio-system",
            );
            let real: Vec<_> = problems
                .iter()
                .filter(|p| !p.contains("is already defined"))
                .collect();
            assert!(real.is_empty(), "{}: {real:#?}", path.display());
        }
    }
}

#[test]
fn validate_reports_one_line_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        r#"apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: r1, namespace: istio-system}
spec:
  match: request.headers["x"] == 1
  actions: [{handler: nope.denier, instances: []}]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: r2, namespace: istio-system}
spec:
  actions: [{handler: nope.denier, instances: []}]
---
apiVersion: config.istio.io/v1alpha2
kind: memquota
metadata: {name: q, namespace: istio-system}
spec:
  quotas: [{maxAmount: 3}]
"#,
    )
    .unwrap();
    let problems = mixer::validate(std::slice::from_ref(&f), "istio-system");
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems.iter().any(|p| p.contains("rule istio-system/r1")
            && p.contains(
                "spec.match: column 25: ==: operands have different types: STRING and INT64"
            )),
        "{problems:#?}"
    );
    // References to objects elsewhere are not validate's business...
    assert!(
        !problems.iter().any(|p| p.contains("rule istio-system/r2")),
        "{problems:#?}"
    );
    // ...but the serving config refuses them.
    let env = AdapterEnv {
        prometheus: Default::default(),
        start_tasks: false,
        shutdown: Default::default(),
    };
    let resolved = Compiler::new(CompileOptions::default(), env, Arc::new(Metrics::default()))
        .compile(&snapshot(&[f]));
    assert!(
        resolved
            .refused
            .iter()
            .any(|r| r.object.contains("rule istio-system/r2")
                && r.error
                    .contains("spec.actions[0].handler: handler nope.denier not found")),
        "{:#?}",
        resolved.refused
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("memquota istio-system/q") && p.contains("spec.quotas[0].name")),
        "{problems:#?}"
    );
}

struct Mixer {
    dispatcher: Arc<Dispatcher>,
    prometheus: Arc<PrometheusEnv>,
}

fn mixer() -> Mixer {
    let prometheus = Arc::new(PrometheusEnv::default());
    let env = AdapterEnv {
        prometheus: prometheus.clone(),
        start_tasks: false,
        shutdown: Default::default(),
    };
    let metrics = Arc::new(Metrics::default());
    let mut compiler = Compiler::new(CompileOptions::default(), env, metrics.clone());
    let resolved = compiler.compile(&snapshot(&[
        fixture("istio-1.0-default-config.yaml"),
        fixture("policy.yaml"),
    ]));
    assert!(resolved.refused.is_empty(), "{:#?}", resolved.refused);
    Mixer {
        dispatcher: Arc::new(Dispatcher::new(resolved, metrics)),
        prometheus,
    }
}

fn check_request(path: &str, headers: &[(&str, &str)], service: &str) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "svc".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("destination.service.name".to_string(), service.to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }
}

#[test]
fn checks_deny_blacklist_and_rate_limit() {
    let m = mixer();
    let authz = ExtAuthz::new(m.dispatcher.clone());
    let code = |req: CheckRequest| block_on(authz.decide(&req)).code;
    assert_eq!(code(check_request("/", &[], "a")), 0);
    assert_eq!(code(check_request("/", &[("x-user", "john")], "a")), 7);
    assert_eq!(code(check_request("/", &[("x-user", "jane")], "a")), 0);
    let d = block_on(authz.decide(&check_request("/admin?x=1", &[], "a")));
    assert_eq!(d.code, 7, "{d:?}");
    assert!(d.message.contains("/admin is blacklisted"), "{d:?}");
    for i in 0..5 {
        assert_eq!(code(check_request("/", &[], "limited")), 0, "request {i}");
    }
    let d = block_on(authz.decide(&check_request("/", &[], "limited")));
    assert_eq!(d.code, 8, "{d:?}");
    assert_eq!(mixer::adapter::code::http_status(d.code), 429);
    // Other services are not limited by the override.
    for _ in 0..10 {
        assert_eq!(code(check_request("/", &[], "other")), 0);
    }
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

#[test]
fn access_logs_become_istio_metrics() {
    let m = mixer();
    let entry = |code: u32| HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: socket("10.0.0.1", 5000),
            downstream_local_address: socket("10.0.0.2", 9080),
            custom_tags: [
                (
                    "destination.service.host".to_string(),
                    "reviews.default.svc.cluster.local".to_string(),
                ),
                (
                    "destination.service.name".to_string(),
                    "reviews".to_string(),
                ),
            ]
            .into_iter()
            .collect(),
            time_to_last_downstream_tx_byte: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 0,
                nanos: 20_000_000,
            }),
            ..Default::default()
        }),
        request: Some(HttpRequestProperties {
            request_method: 1,
            path: "/reviews/1".into(),
            request_body_bytes: 10,
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(envoy_types::pb::google::protobuf::UInt32Value { value: code }),
            response_body_bytes: 300,
            ..Default::default()
        }),
        ..Default::default()
    };
    let msg = StreamAccessLogsMessage {
        identifier: None,
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: vec![entry(200), entry(200), entry(503)],
        })),
    };
    let cfg = m.dispatcher.config();
    mixer::server::accesslog::report_message(&m.dispatcher, &cfg, &msg);
    let mut body = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut body, &m.prometheus.registry())
        .unwrap();
    let line = |code: &str| {
        body.lines()
            .find(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("response_code=\"{code}\""))
            })
            .unwrap_or_else(|| panic!("no series for {code}:\n{body}"))
            .to_string()
    };
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let ok = line("200");
    assert_eq!(value(&ok), 2.0, "{ok}");
    assert!(
        ok.contains("destination_service=\"reviews.default.svc.cluster.local\""),
        "{ok}"
    );
    assert!(ok.contains("reporter=\"destination\""), "{ok}");
    assert!(ok.contains("source_app=\"unknown\""), "{ok}");
    assert_eq!(value(&line("503")), 1.0);
    assert!(
        body.contains("istio_request_duration_seconds_bucket{"),
        "{body}"
    );
    assert!(body.contains("istio_request_bytes_sum{"), "{body}");
}
