//! The Mixer config `manifests/telemetry.yaml` installs (`pilot/src/install/mixer_config.rs`,
//! from `manifests/install/mixer-config.yaml`) against the real `mixer` binary in file mode
//! (`--config-dir` holding exactly those objects, nothing else):
//!
//! - `mixer validate` and the serving config accept every object; the rules, handlers and
//!   instances are all there.
//! - A Report (Mixer's own `istio.mixer.v1` API) carrying the workload attributes that
//!   kubernetesenv would generate on Kubernetes lands in `istio_requests_total` with
//!   `source_workload`, `destination_workload`, `destination_version` and `response_code`, and
//!   in the TCP byte counters and the stdio access log.
//! - Requests through a real Envoy reporting as Pilot's inbound sidecars do (the gRPC access
//!   log with `context.reporter.kind` and the destination service as custom tags) are counted
//!   under `reporter="destination"` and their service; with no Kubernetes the kubernetesenv
//!   handler generates nothing and the workload labels are `"unknown"`.

mod mixer_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_proto::grpc::istio::mixer::v1::mixer_client::MixerClient;
use mesh_proto::grpc::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mesh_proto::grpc::istio::mixer::v1::{CompressedAttributes, ReportRequest, StringMap};
use mesh_proto::grpc::prost_types;
use mesh_tests::{Envoy, Upstream, free_port, http_get, workspace_binary};
use mixer_support::{Mixer, envoy_bootstrap, ext_authz_filter, mixer_access_log, sample};
use pilot::install::InstallOptions;
use serde_json::{Value, json};

/// manifests/telemetry.yaml, the Mixer config applied after install.yaml; install.yaml
/// itself holds no config.istio.io object (they would be refused in the apply that creates
/// their CRDs).
fn installed_mixer_config() -> String {
    let in_install = pilot::install::objects(&InstallOptions::default())
        .into_iter()
        .filter(|o| {
            o["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("config.istio.io/"))
        })
        .count();
    assert_eq!(in_install, 0, "install.yaml holds Mixer config");
    std::fs::read_to_string(mesh_tests::repo_root().join("manifests/telemetry.yaml"))
        .expect("manifests/telemetry.yaml")
}

/// Mixer on a directory holding only manifests/telemetry.yaml.
async fn start_mixer() -> Mixer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mixer-config.yaml"),
        installed_mixer_config(),
    )
    .unwrap();
    mixer_support::start_mixer_on(dir).await
}

/// The prometheus adapter's page (what Prometheus scrapes on 42422 in the install).
async fn scrape(m: &Mixer) -> String {
    http_get(&format!("http://{}/metrics", m.prometheus), &[])
        .await
        .unwrap()
        .body
}

/// Waits until `ready` holds for the adapter's page, and returns the page.
async fn scrape_until(m: &Mixer, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = scrape(m).await;
        if ready(&page) {
            // A stray late report would show now; the caller checks exact counts.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return scrape(m).await;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed:\n{page}\nmixer log:\n{}",
            m.svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn mixer_accepts_every_object_of_the_installed_config() {
    // Offline, as `mixer validate -f` checks files.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixer-config.yaml");
    std::fs::write(&file, installed_mixer_config()).unwrap();
    let out = std::process::Command::new(workspace_binary("mixer").unwrap())
        .arg("validate")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "mixer validate: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Serving: nothing refused, references resolved strictly.
    let m = start_mixer().await;
    assert_eq!(m.refused().await, Vec::<String>::new());
    let configz = m.configz().await;
    let mixer = &configz["mixer"];
    let names = |field: &str, key: &str| -> Vec<String> {
        let mut v: Vec<String> = mixer[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x[key].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names("rules", "rule"),
        [
            "kubeattrgenrulerule",
            "promhttp",
            "promtcp",
            "stdio",
            "stdiotcp",
            "tcpkubeattrgenrulerule"
        ]
        .map(|r| format!("istio-system/{r}")),
        "{configz:#}"
    );
    let mut adapters = names("handlers", "adapter");
    adapters.dedup();
    assert_eq!(adapters, ["kubernetesenv", "prometheus", "stdio"]);
    let mut templates = names("instances", "template");
    templates.dedup();
    assert_eq!(templates, ["kubernetes", "logentry", "metric"]);
    assert_eq!(mixer["instances"].as_array().unwrap().len(), 9);
}

/// A Report entry whose attribute names and string values are all message words.
#[derive(Default)]
struct Entry {
    words: Vec<String>,
    a: CompressedAttributes,
}

impl Entry {
    fn word(&mut self, w: &str) -> i32 {
        let at = match self.words.iter().position(|x| x == w) {
            Some(i) => i,
            None => {
                self.words.push(w.to_string());
                self.words.len() - 1
            }
        };
        -(at as i32) - 1
    }

    fn string(mut self, name: &str, value: &str) -> Self {
        let (n, v) = (self.word(name), self.word(value));
        self.a.strings.insert(n, v);
        self
    }

    fn int(mut self, name: &str, value: i64) -> Self {
        let n = self.word(name);
        self.a.int64s.insert(n, value);
        self
    }

    fn map(mut self, name: &str, entries: &[(&str, &str)]) -> Self {
        let n = self.word(name);
        let entries = entries
            .iter()
            .map(|(k, v)| (self.word(k), self.word(v)))
            .collect();
        self.a.string_maps.insert(n, StringMap { entries });
        self
    }

    fn done(mut self) -> CompressedAttributes {
        self.a.words = self.words;
        self.a
    }
}

/// What productpage-v1 calling reviews-v2 looks like once kubernetesenv has run: the
/// destination's sidecar reports it (inbound).
fn request(code: i64) -> CompressedAttributes {
    let mut e = Entry::default()
        .string("context.protocol", "http")
        .string("context.reporter.kind", "inbound")
        .string(
            "destination.service.host",
            "reviews.default.svc.cluster.local",
        )
        .string("destination.service.name", "reviews")
        .string("destination.service.namespace", "default")
        .string("source.workload.name", "productpage-v1")
        .string("source.workload.namespace", "default")
        .map(
            "source.labels",
            &[("app", "productpage"), ("version", "v1")],
        )
        .string("destination.workload.name", "reviews-v2")
        .string("destination.workload.namespace", "default")
        .map(
            "destination.labels",
            &[("app", "reviews"), ("version", "v2")],
        )
        .string("request.path", "/reviews/0")
        .int("response.code", code)
        .int("response.size", 300);
    let d = e.word("response.duration");
    e.a.durations.insert(
        d,
        prost_types::Duration {
            seconds: 0,
            nanos: 20_000_000,
        },
    );
    // The access log's `timestamp` and `responseTimestamp` have no fallback: proxies always
    // send both times.
    for name in ["request.time", "response.time"] {
        let t = e.word(name);
        e.a.timestamps.insert(
            t,
            prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            },
        );
    }
    e.done()
}

/// A TCP connection report from the same pair: 1200 bytes sent, 80 received.
fn connection() -> CompressedAttributes {
    Entry::default()
        .string("context.protocol", "tcp")
        .string("context.reporter.kind", "inbound")
        .string("destination.service.name", "reviews")
        .string("destination.service.namespace", "default")
        .string("source.workload.name", "productpage-v1")
        .string("destination.workload.name", "reviews-v2")
        .map(
            "destination.labels",
            &[("app", "reviews"), ("version", "v2")],
        )
        .int("connection.sent.bytes", 1200)
        .int("connection.received.bytes", 80)
        .done()
}

#[tokio::test]
async fn a_report_with_workload_attributes_reaches_istio_requests_total() {
    let m = start_mixer().await;
    let mut client = MixerClient::connect(format!("http://{}", m.grpc))
        .await
        .unwrap();
    client
        .report(ReportRequest {
            attributes: vec![request(200), request(200), request(200), request(503)],
            repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
            default_words: vec![],
            global_word_count: 0,
        })
        .await
        .unwrap();
    client
        .report(ReportRequest {
            attributes: vec![connection()],
            repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
            ..Default::default()
        })
        .await
        .unwrap();

    let series = |code: &'static str| {
        vec![
            ("reporter", "destination"),
            ("source_workload", "productpage-v1"),
            ("source_workload_namespace", "default"),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("destination_workload", "reviews-v2"),
            ("destination_workload_namespace", "default"),
            ("destination_app", "reviews"),
            ("destination_version", "v2"),
            ("destination_service", "reviews.default.svc.cluster.local"),
            ("destination_service_name", "reviews"),
            ("destination_service_namespace", "default"),
            ("request_protocol", "http"),
            ("response_code", code),
            ("connection_security_policy", "none"),
        ]
    };
    let page = scrape_until(&m, "istio_requests_total", |p| {
        sample(p, "istio_requests_total", &series("200")) >= 3.0
            && sample(p, "istio_tcp_sent_bytes_total", &[]) > 0.0
    })
    .await;
    assert_eq!(
        sample(&page, "istio_requests_total", &series("200")),
        3.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, "istio_requests_total", &series("503")),
        1.0,
        "{page}"
    );
    // The same four in the duration and size histograms.
    assert_eq!(
        sample(
            &page,
            "istio_request_duration_seconds_count",
            &series("200")
        ),
        3.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, "istio_response_bytes_sum", &series("200")),
        900.0,
        "{page}"
    );
    // TCP: the service by its short name, no response code.
    let tcp = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("destination_workload", "reviews-v2"),
        ("destination_version", "v2"),
        ("destination_service", "reviews"),
    ];
    assert_eq!(
        sample(&page, "istio_tcp_sent_bytes_total", &tcp),
        1200.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, "istio_tcp_received_bytes_total", &tcp),
        80.0,
        "{page}"
    );
    // And one access-log line per request on Mixer's stdout.
    let logs = m.svc.logs();
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.get(l.find('{')?..)?).ok())
        .filter(|l| l["instance"] == "accesslog.logentry.istio-system")
        .collect();
    assert_eq!(lines.len(), 4, "{logs}");
    assert_eq!(lines[0]["sourceWorkload"], "productpage-v1", "{logs}");
    assert_eq!(lines[0]["destinationWorkload"], "reviews-v2", "{logs}");
    assert_eq!(lines[0]["url"], "/reviews/0", "{logs}");
    assert_eq!(lines[3]["responseCode"], 503, "{logs}");
}

#[tokio::test]
async fn envoy_reporting_as_an_inbound_sidecar_is_counted_without_kubernetes() {
    let m = start_mixer().await;
    let upstream = Upstream::start("reviews", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The custom tags Pilot gives an inbound listener's Mixer access log
    // (pilot/src/xds/generate/mixer.rs, report_tags).
    let tags = json!([
        { "tag": "context.reporter.kind", "literal": { "value": "inbound" } },
        { "tag": "destination.namespace", "literal": { "value": "default" } },
        { "tag": "destination.service.host", "literal": { "value": "reviews.default.svc.cluster.local" } },
        { "tag": "destination.service.name", "literal": { "value": "reviews" } },
        { "tag": "destination.service.namespace", "literal": { "value": "default" } },
    ]);
    let port = free_port();
    let host = json!({
        "name": "reviews",
        "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }],
    });
    // Checked with Mixer first, as an inbound sidecar with policy checks on: the default
    // config has no policy, so every request is let through.
    let bootstrap = envoy_bootstrap(
        port,
        m.grpc,
        upstream.addr(),
        vec![host],
        ext_authz_filter(),
        Some(mixer_access_log(tags)),
    );
    let _envoy = Envoy::start(bootstrap).await.unwrap();
    for _ in 0..3 {
        let r = http_get(&format!("http://127.0.0.1:{port}/"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }

    let labels = [
        ("reporter", "destination"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("response_code", "200"),
        ("request_protocol", "http"),
        // In file mode nothing fills the workloads: the config's fallbacks.
        ("source_workload", "unknown"),
        ("destination_workload", "unknown"),
        ("destination_version", "unknown"),
    ];
    let page = scrape_until(&m, "Envoy's requests", |p| {
        sample(p, "istio_requests_total", &labels) >= 3.0
    })
    .await;
    assert_eq!(
        sample(&page, "istio_requests_total", &labels),
        3.0,
        "{page}"
    );
    assert_eq!(upstream.requests(), 3);
}

/// kind/name -> spec of the config.istio.io objects of a YAML file (a null spec as `{}`).
fn specs(yaml: &str) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    for doc in yaml_serde::Deserializer::from_str(yaml) {
        let o: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !o["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("config.istio.io/"))
        {
            continue;
        }
        let spec = match &o["spec"] {
            Value::Null => json!({}),
            s => s.clone(),
        };
        out.insert(format!("{}/{}", o["kind"], o["metadata"]["name"]), spec);
    }
    out
}

#[test]
fn the_installed_config_is_istio_1_0s_default_config() {
    let shared =
        mesh_tests::repo_root().join("../shared/conformance/istio-1.0/mixer-default-config.yaml");
    let Ok(istio) = std::fs::read_to_string(&shared) else {
        eprintln!("{} not in this checkout: skipping", shared.display());
        return;
    };
    // Object for object, spec for spec (Istio's file also has two DestinationRules, which
    // are not Mixer config). One addition of ours: the kubernetes instance also looks pods
    // up by `destination.ip` (as Istio 1.1's does), for stock Envoy's TCP checks, which
    // carry no uid.
    let mut ours = specs(&installed_mixer_config());
    let attributes = ours
        .get_mut("\"kubernetes\"/\"attributes\"")
        .and_then(Value::as_object_mut)
        .expect("the kubernetes instance");
    assert_eq!(
        attributes.remove("destination_ip"),
        Some(json!("destination.ip | ip(\"0.0.0.0\")"))
    );
    assert_eq!(ours, specs(&istio));
}

#[test]
fn report_entries_name_their_attributes_with_message_words() {
    let e = Entry::default()
        .string("a", "b")
        .string("c", "b")
        .map("m", &[("a", "x")])
        .done();
    assert_eq!(e.words, ["a", "b", "c", "m", "x"]);
    assert_eq!(e.strings, HashMap::from([(-1, -2), (-3, -2)]));
    assert_eq!(e.string_maps[&-4].entries, HashMap::from([(-1, -5)]));
}
