//! Mixer's topology graph from real Envoy access logs, in file mode: one Envoy plays the
//! inbound sidecars of productpage-v1, reviews-v1, reviews-v2 and ratings-v1 (one listener
//! each, its workload and service as custom tags, as Pilot's inbound reports carry them; the
//! caller's workload comes in request headers, standing in for the peer metadata a real mesh
//! has). Calls go productpage -> reviews v1/v2 -> ratings, some answered 5xx by the upstream.
//! Then `/graph.json` must give exactly the counted requests; `/graph/edge` the recent ones
//! and the VirtualService a real Pilot serves for the service (and, with Pilot gone, that it
//! cannot be reached); and the page, rendered by headless Chromium (Debian's `chromium`),
//! must carry the same figures in its DOM once its script has run. The screenshot is kept
//! as `target/graph/graph.png`.

mod mixer_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_tests::mesh::Pilot;
use mesh_tests::{Envoy, Service, Upstream, free_port, http_get, repo_root};
use mixer_support::{cluster, mixer_access_log};
use serde_json::{Value, json};

/// `source.version` and `destination.version`: the test's sidecars name versions by these
/// (on Kubernetes they come from the pods' `version` label, `*.labels`).
const MANIFEST: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: attributemanifest
metadata: {name: graph-test, namespace: istio-system}
spec:
  attributes:
    source.version: {valueType: STRING}
    destination.version: {valueType: STRING}
"#;

const VIRTUAL_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews-route, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"#;

/// (workload, version, service) of each inbound listener.
const WORKLOADS: [(&str, &str, &str); 4] = [
    ("productpage-v1", "v1", "productpage"),
    ("reviews-v1", "v1", "reviews"),
    ("reviews-v2", "v2", "reviews"),
    ("ratings-v1", "v1", "ratings"),
];

fn header_tag(tag: &str, header: &str) -> Value {
    json!({"tag": tag, "request_header": {"name": header, "default_value": ""}})
}

fn literal(tag: &str, value: &str) -> Value {
    json!({"tag": tag, "literal": {"value": value}})
}

/// One inbound listener per workload, all to the sample upstream, each reporting to Mixer.
fn bootstrap(ports: &[u16], mixer: SocketAddr, upstream: SocketAddr) -> Value {
    let listeners: Vec<Value> = WORKLOADS
        .iter()
        .zip(ports)
        .map(|((workload, version, service), port)| {
            let tags = json!([
                literal("context.reporter.kind", "inbound"),
                literal("destination.workload.name", workload),
                literal("destination.workload.namespace", "default"),
                literal("destination.version", version),
                literal(
                    "destination.service.host",
                    &format!("{service}.default.svc.cluster.local"),
                ),
                header_tag("source.workload.name", "x-source-workload"),
                header_tag("source.workload.namespace", "x-source-namespace"),
                header_tag("source.version", "x-source-version"),
            ]);
            json!({
                "name": workload,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": workload,
                        "route_config": {"name": workload, "virtual_hosts": [{
                            "name": workload, "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                        "access_log": [mixer_access_log(tags)],
                    },
                }]}],
            })
        })
        .collect();
    json!({"static_resources": {
        "listeners": listeners,
        "clusters": [cluster("upstream", upstream, false), cluster("mixer", mixer, true)],
    }})
}

/// Mixer on Istio 1.0's default config plus the manifest, asking `pilot` for routing config.
async fn start_mixer(pilot: &str) -> (Service, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("mixer/tests/fixtures/istio-1.0-default-config.yaml"),
        dir.path().join("istio-1.0-default-config.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("graph.yaml"), MANIFEST).unwrap();
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let prometheus: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut svc = Service::start(
        "mixer",
        &[
            "--config-dir",
            dir.path().to_str().unwrap(),
            "--grpc-addr",
            &grpc.to_string(),
            "--prometheus-addr",
            &prometheus.to_string(),
            "--pilot-debug-addr",
            pilot,
        ],
    )
    .await
    .unwrap();
    svc.wait_ready(Duration::from_secs(60)).await.unwrap();
    (svc, grpc, dir)
}

/// GETs `path` on `port` as `source` (workload, version; `None` from outside the mesh).
async fn call(port: u16, path: &str, source: Option<(&str, &str)>) -> u16 {
    let mut headers = vec![];
    if let Some((w, v)) = source {
        headers = vec![
            ("x-source-workload", w),
            ("x-source-namespace", "default"),
            ("x-source-version", v),
        ];
    }
    http_get(&format!("http://127.0.0.1:{port}{path}"), &headers)
        .await
        .unwrap()
        .status
        .as_u16()
}

const UNKNOWN: &str = "workload:unknown/unknown/unknown";
const PRODUCTPAGE: &str = "workload:default/productpage-v1/v1";
const REVIEWS_V1: &str = "workload:default/reviews-v1/v1";
const REVIEWS_V2: &str = "workload:default/reviews-v2/v2";
const RATINGS_V1: &str = "workload:default/ratings-v1/v1";

fn svc(name: &str) -> String {
    format!("service:{name}.default.svc.cluster.local")
}

/// The edges the traffic makes: (source, target, requests, errors).
fn expected() -> Vec<(String, String, u64, u64)> {
    vec![
        (UNKNOWN.into(), svc("productpage"), 6, 0),
        (svc("productpage"), PRODUCTPAGE.into(), 6, 0),
        (PRODUCTPAGE.into(), svc("reviews"), 11, 2),
        (svc("reviews"), REVIEWS_V1.into(), 5, 0),
        (svc("reviews"), REVIEWS_V2.into(), 6, 2),
        (REVIEWS_V2.into(), svc("ratings"), 5, 1),
        (svc("ratings"), RATINGS_V1.into(), 5, 1),
    ]
}

fn find<'g>(graph: &'g Value, source: &str, target: &str) -> Option<&'g Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["target"] == target)
}

fn counts(graph: &Value) -> Vec<(String, String, u64, u64)> {
    let mut out: Vec<_> = graph["edges"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["source"].as_str().unwrap_or("").to_string(),
                        e["target"].as_str().unwrap_or("").to_string(),
                        e["requests"].as_u64().unwrap_or(0),
                        e["errors"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs Debian's `chromium` headless on `url` with `args`; `None` when it is not installed.
fn chromium(args: &[&str], url: &str) -> Option<std::process::Output> {
    let bin = ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=8000",
            "--window-size=1500,900",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    Some(out)
}

/// The value of attribute `name` in the element of `html` that starts at `at`.
fn attr<'h>(html: &'h str, at: usize, name: &str) -> Option<&'h str> {
    let end = at + html[at..].find('>')?;
    let tag = &html[at..end];
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

#[tokio::test]
async fn mixer_graph_counts_the_requests_envoy_reports_and_the_page_shows_them() {
    let pilot = Pilot::start(&[("reviews.yaml", VIRTUAL_SERVICE)], "", &[])
        .await
        .unwrap();
    let pilot_addr = pilot.service.http_addr().to_string();
    let (mixer, grpc, _dir) = start_mixer(&pilot_addr).await;
    let upstream = Upstream::start("backend", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ports: Vec<u16> = WORKLOADS.iter().map(|_| free_port()).collect();
    let _envoy = Envoy::start(bootstrap(&ports, grpc, upstream.addr()))
        .await
        .unwrap();
    let [productpage, reviews_v1, reviews_v2, ratings_v1] = ports[..] else {
        unreachable!()
    };
    let pp = Some(("productpage-v1", "v1"));
    let rv2 = Some(("reviews-v2", "v2"));
    let mut sent = Vec::new();
    for _ in 0..6 {
        sent.push(call(productpage, "/productpage", None).await);
    }
    for i in 0..5 {
        sent.push(call(reviews_v1, &format!("/reviews/{i}"), pp).await);
    }
    for i in 0..4 {
        sent.push(call(reviews_v2, &format!("/reviews/{i}"), pp).await);
    }
    for _ in 0..2 {
        sent.push(call(reviews_v2, "/status/503", pp).await);
    }
    for i in 0..4 {
        sent.push(call(ratings_v1, &format!("/ratings/{i}"), rv2).await);
    }
    sent.push(call(ratings_v1, "/status/500", rv2).await);
    assert_eq!(sent.iter().filter(|c| **c >= 500).count(), 3, "{sent:?}");
    assert_eq!(sent.len(), 22);

    let base = format!("http://{}", mixer.http_addr());
    let mut want = expected();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    let graph = loop {
        let r = http_get(&format!("{base}/graph.json?window=5m"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let g = r.json().unwrap();
        if counts(&g) == want {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "graph edges {:?}, want {want:?}\n{g:#}\nmixer log:\n{}",
            counts(&g),
            mixer.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The figures of each edge agree with the counted requests.
    for (s, t, requests, errors) in &want {
        let e = find(&graph, s, t).unwrap();
        let rate = *errors as f64 / *requests as f64;
        assert!(
            (e["errorRate"].as_f64().unwrap() - rate).abs() < 1e-3,
            "{e}"
        );
        let rps = *requests as f64 / 300.0;
        assert!((e["rps"].as_f64().unwrap() - rps).abs() < 1e-3, "{e}");
        let (p50, p99) = (e["p50Ms"].as_f64().unwrap(), e["p99Ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 1000.0, "{e}");
        assert_eq!(e["mtls"], false, "{e}");
        assert_eq!(e["reporter"], json!(["destination"]), "{e}");
    }
    let health = |id: &str| {
        graph["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["health"].as_str().unwrap().to_string())
    };
    assert_eq!(health(REVIEWS_V2).as_deref(), Some("failing"));
    assert_eq!(health(REVIEWS_V1).as_deref(), Some("healthy"));
    assert_eq!(health(&svc("reviews")).as_deref(), Some("degraded"));
    assert_eq!(health(PRODUCTPAGE).as_deref(), Some("healthy"));
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 8, "{graph:#}");

    // Servicegraph's shapes.
    let d3 = http_get(&format!("{base}/graph.json?format=d3"), &[])
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(d3["links"].as_array().unwrap().len(), 7, "{d3}");
    assert!(
        d3["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "reviews-v2 (v2)"),
        "{d3}"
    );
    let dot = http_get(&format!("{base}/graph.json?format=dot"), &[])
        .await
        .unwrap()
        .body;
    assert!(dot.starts_with("digraph \"istio-servicegraph\""), "{dot}");
    assert!(
        dot.contains("\"service_reviews_default_svc_cluster_local\" -> \"workload_default_reviews-v2_v2\" [label=\"errors/sec: 0.006667, mtls: false,"),
        "{dot}"
    );
    // Malformed queries are 400s naming the parameter.
    for (query, param) in [
        ("window=5minutes", "window"),
        ("window=2h", "window"),
        ("format=svg", "format"),
        ("windw=5m", "windw"),
    ] {
        let r = http_get(&format!("{base}/graph.json?{query}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(r.body.contains(param), "{query}: {}", r.body);
    }

    // An edge's recent requests and the routing config Pilot serves for its service.
    let edge_url = |s: &str, t: &str| {
        format!(
            "{base}/graph/edge?source={}&target={}",
            s.replace('/', "%2F").replace(':', "%3A"),
            t.replace('/', "%2F").replace(':', "%3A")
        )
    };
    let r = http_get(&edge_url(&svc("reviews"), REVIEWS_V2), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let e = r.json().unwrap();
    let recent = e["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 6, "{e:#}");
    assert_eq!(
        recent
            .iter()
            .filter(|r| r["code"] == 503 && r["path"] == "/status/503" && r["method"] == "GET")
            .count(),
        2,
        "{e:#}"
    );
    let vs = e["routing"]["virtualServices"].as_array().unwrap();
    assert_eq!(vs.len(), 1, "{e:#}");
    assert_eq!(vs[0]["name"], "reviews-route");
    assert_eq!(
        vs[0]["spec"]["http"][0]["route"][0]["destination"]["subset"],
        "v2"
    );
    assert!(e["routing"].get("error").is_none(), "{e:#}");
    let r = http_get(&edge_url(&svc("ratings"), RATINGS_V1), &[])
        .await
        .unwrap();
    let e = r.json().unwrap();
    assert_eq!(e["routing"]["virtualServices"], json!([]), "{e:#}");
    let r = http_get(&format!("{base}/graph/edge?target=x"), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("source"), "{}", r.body);

    // The page, rendered by headless Chromium.
    let page_url = format!("{base}/graph?window=5m");
    let Some(out) = chromium(&["--dump-dom"], &page_url) else {
        eprintln!(
            "SKIPPED the browser part: Debian's chromium is not installed (tests/scripts/deps.sh installs it)"
        );
        return;
    };
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page's script did not load the graph:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (s, t, requests, errors) in &want {
        let needle = format!("data-source=\"{s}\" data-target=\"{t}\"");
        let at = dom
            .match_indices("<g ")
            .map(|(i, _)| i)
            .find(|&i| dom[i..].split('>').next().unwrap_or("").contains(&needle))
            .unwrap_or_else(|| panic!("no SVG edge {s} -> {t} in the DOM:\n{dom}"));
        assert_eq!(
            attr(&dom, at, "data-requests"),
            Some(&*requests.to_string())
        );
        assert_eq!(attr(&dom, at, "data-errors"), Some(&*errors.to_string()));
        let rps = attr(&dom, at, "data-rps").unwrap().parse::<f64>().unwrap();
        assert!((rps - *requests as f64 / 300.0).abs() < 1e-3, "{rps}");
    }
    for (id, health) in [(REVIEWS_V2, "failing"), (REVIEWS_V1, "healthy")] {
        assert!(
            dom.contains(&format!(
                "data-id=\"{id}\" data-kind=\"workload\" data-health=\"{health}\""
            )),
            "{id} {health}:\n{dom}"
        );
    }
    assert!(dom.contains(">reviews-v2 (v2)</text>"), "{dom}");
    assert!(
        dom.contains("0.02 rps · 33.3%"),
        "reviews -> reviews-v2's label:\n{dom}"
    );
    assert_eq!(dom.matches("class=\"edge-row\"").count(), 7, "{dom}");
    assert!(dom.contains("7 edges in the last 5m"), "{dom}");

    // An edge opened on the page shows its requests and its routing config.
    let selected = format!("{}->{}", svc("reviews"), REVIEWS_V2);
    let out = chromium(
        &["--dump-dom"],
        &format!(
            "{page_url}&edge={}",
            selected
                .replace('/', "%2F")
                .replace(':', "%3A")
                .replace('>', "%3E")
        ),
    )
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(dom.matches("class=\"recent-row\"").count(), 6, "{dom}");
    assert!(dom.contains("<td>/status/503</td><td>503</td>"), "{dom}");
    assert!(
        dom.contains("VirtualService default/reviews-route"),
        "{dom}"
    );

    let shots = repo_root().join("target/graph");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("graph.png");
    let _ = std::fs::remove_file(&png);
    let out = chromium(&[&format!("--screenshot={}", png.display())], &page_url).unwrap();
    let meta = std::fs::metadata(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(meta.len() > 10_000, "screenshot of {} bytes", meta.len());

    // With Pilot gone, the edge says it cannot be asked.
    drop(pilot);
    let r = http_get(&edge_url(&svc("reviews"), REVIEWS_V2), &[])
        .await
        .unwrap();
    let e = r.json().unwrap();
    let err = e["routing"]["error"].as_str().unwrap_or("");
    assert!(
        err.contains(&pilot_addr) && err.contains("cannot be read"),
        "{e:#}"
    );
}
