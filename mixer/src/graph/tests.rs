use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::view::View;
use super::*;
use crate::attribute::{DenseBag, StringMap, Value, Vocabulary};

#[derive(Debug)]
struct Labels(BTreeMap<String, String>);

impl StringMap for Labels {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in &self.0 {
            f(k, v)
        }
    }
}

/// One request: `src` -> `svc` served by `dst` (workload `NAME-VERSION`).
struct Req<'a> {
    src: &'a str,
    svc: &'a str,
    dst: &'a str,
    code: i64,
    ms: u64,
    mtls: bool,
    reporter: &'a str,
}

fn req<'a>(src: &'a str, svc: &'a str, dst: &'a str) -> Req<'a> {
    Req {
        src,
        svc,
        dst,
        code: 200,
        ms: 5,
        mtls: false,
        reporter: "inbound",
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn record(g: &Graph, vocab: &Arc<Vocabulary>, now: SystemTime, reqs: &[Req<'_>]) {
    let labels: Vec<(Labels, Labels)> = reqs
        .iter()
        .map(|r| {
            let version = |w: &str| {
                w.rsplit_once('-')
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default()
            };
            (
                Labels([("version".to_string(), version(r.src))].into()),
                Labels([("version".to_string(), version(r.dst))].into()),
            )
        })
        .collect();
    let mut bags = Vec::new();
    for (r, (sl, dl)) in reqs.iter().zip(&labels) {
        let mut b = DenseBag::with_len(vocab.len());
        let s = |b: &mut DenseBag<'_>, n: &str, v: &'static str| {
            b.set_named(vocab, n, Value::String(Cow::Borrowed(v)));
        };
        let leak = |v: &str| -> &'static str { Box::leak(v.to_string().into_boxed_str()) };
        s(&mut b, "source.workload.name", leak(r.src));
        s(&mut b, "source.workload.namespace", "default");
        if !r.svc.is_empty() {
            s(
                &mut b,
                "destination.service.host",
                leak(&format!("{}.default.svc.cluster.local", r.svc)),
            );
            s(&mut b, "destination.service.namespace", "default");
        }
        if !r.dst.is_empty() {
            s(&mut b, "destination.workload.name", leak(r.dst));
            s(&mut b, "destination.workload.namespace", "default");
        }
        s(&mut b, "context.reporter.kind", leak(r.reporter));
        s(&mut b, "request.method", "GET");
        s(&mut b, "request.path", "/reviews/0");
        b.set_named(vocab, "source.labels", Value::StringMap(sl));
        b.set_named(vocab, "destination.labels", Value::StringMap(dl));
        b.set_named(vocab, "response.code", Value::Int64(r.code));
        b.set_named(
            vocab,
            "response.duration",
            Value::Duration(Duration::from_millis(r.ms)),
        );
        if r.mtls {
            b.set_named(vocab, "connection.mtls", Value::Bool(true));
        }
        bags.push(b);
    }
    g.record_at(now, vocab, bags.iter().map(|b| b as &dyn Bag));
}

fn view(g: &Graph, now: SystemTime, window: u64) -> View {
    let w = Duration::from_secs(window);
    View::build(w, g.read(now, w, true), g.settings().recent)
}

fn edge<'v>(v: &'v View, source: &str, target: &str) -> &'v view::Edge {
    v.edge(source, target)
        .unwrap_or_else(|| panic!("no edge {source} -> {target} in {:#?}", v.to_json()))
}

const PP: &str = "workload:default/productpage-v1/v1";
const REVIEWS: &str = "service:reviews.default.svc.cluster.local";
const R1: &str = "workload:default/reviews-v1/v1";
const R2: &str = "workload:default/reviews-v2/v2";

#[test]
fn requests_become_workload_service_workload_edges_with_their_figures() {
    let vocab = Arc::new(Vocabulary::builtin());
    let g = Graph::new(GraphSettings::default());
    let mut reqs = Vec::new();
    for i in 0..10 {
        reqs.push(Req {
            ms: 2 + i,
            mtls: true,
            ..req("productpage-v1", "reviews", "reviews-v1")
        });
    }
    for i in 0..10 {
        reqs.push(Req {
            code: if i < 3 { 503 } else { 200 },
            ms: 40,
            ..req("productpage-v1", "reviews", "reviews-v2")
        });
    }
    record(&g, &vocab, at(5), &reqs);
    let v = view(&g, at(6), 60);
    let to_svc = edge(&v, PP, REVIEWS);
    assert_eq!((to_svc.stats.requests, to_svc.stats.errors), (20, 3));
    let j = v.edge_json(to_svc, false);
    assert_eq!(j["errorRate"], 0.15);
    assert_eq!(j["rps"], 0.333);
    assert_eq!(j["mtls"], false, "half of its requests were plaintext");
    let r1 = edge(&v, REVIEWS, R1);
    assert_eq!(
        (r1.stats.requests, r1.stats.errors, r1.stats.mtls),
        (10, 0, 10)
    );
    assert_eq!(v.edge_json(r1, false)["mtls"], true);
    let r2 = edge(&v, REVIEWS, R2);
    assert_eq!((r2.stats.requests, r2.stats.errors), (10, 3));
    assert_eq!(r2.stats.classes[4], 3);
    // reviews-v2 answered 30% errors: failing; reviews-v1 healthy; the service 15%: degraded.
    let health = |id: &str| {
        v.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| view::health(&n.inbound))
    };
    assert_eq!(health(R2), Some("failing"));
    assert_eq!(health(R1), Some("healthy"));
    assert_eq!(health(REVIEWS), Some("degraded"));
    assert_eq!(health(PP), Some("idle"));
    // Latencies: reviews-v1 took 2..11 ms, so p50 is in 3..7.5 ms; reviews-v2 all 40 ms.
    let p50 = r1.stats.quantile_ms(0.5).unwrap();
    assert!((3.0..=7.5).contains(&p50), "{p50}");
    let p99 = r2.stats.quantile_ms(0.99).unwrap();
    assert!((25.0..=50.0).contains(&p99), "{p99}");
    // Recent requests, newest first, at most the ring's size.
    assert_eq!(r1.recent.len(), 10);
    assert_eq!(r1.recent[0].path, "/reviews/0");
    assert_eq!(r2.recent.iter().filter(|r| r.code == 503).count(), 3);
}

#[test]
fn windows_count_only_their_buckets_and_old_buckets_go() {
    let vocab = Arc::new(Vocabulary::builtin());
    let g = Graph::new(GraphSettings {
        retention: Duration::from_secs(60),
        ..Default::default()
    });
    let one = [req("productpage-v1", "reviews", "reviews-v1")];
    record(&g, &vocab, at(0), &one);
    record(&g, &vocab, at(0), &one);
    record(&g, &vocab, at(35), &one);
    record(&g, &vocab, at(55), &one);
    let count = |now, window| {
        let v = view(&g, at(now), window);
        v.edge(REVIEWS, R1).map(|e| e.stats.requests).unwrap_or(0)
    };
    assert_eq!(count(59, 60), 4);
    // The 10s buckets of the last 30s at 59s: 30..59.
    assert_eq!(count(59, 30), 2);
    assert_eq!(count(59, 10), 1);
    // At 70s the first bucket (0..9) is out of the 60s retention.
    assert_eq!(count(70, 60), 2);
    // An entry at 65s rolls the first bucket out of the ring for good.
    record(&g, &vocab, at(65), &one);
    let inner = g.inner.lock();
    let e = inner.edges.iter().flatten().next().unwrap();
    assert!(
        e.series[0].iter().all(|b| b.index > (1_800_000_000 / 10)),
        "{:?}",
        e.series[0].iter().map(|b| b.index).collect::<Vec<_>>()
    );
}

#[test]
fn the_destinations_reports_count_and_the_source_fills_in_where_it_alone_reported() {
    let vocab = Arc::new(Vocabulary::builtin());
    let g = Graph::new(GraphSettings::default());
    let inbound = req("productpage-v1", "reviews", "reviews-v1");
    let outbound = Req {
        reporter: "outbound",
        ..req("productpage-v1", "reviews", "reviews-v1")
    };
    // Both sidecars report the same 3 requests; the source alone reports 2 that never
    // reached a workload (no upstream: code 503, no destination workload).
    let failed = Req {
        code: 503,
        reporter: "outbound",
        ..req("productpage-v1", "reviews", "")
    };
    record(
        &g,
        &vocab,
        at(1),
        &[
            inbound,
            outbound,
            req("productpage-v1", "reviews", "reviews-v1"),
            Req {
                reporter: "outbound",
                ..req("productpage-v1", "reviews", "reviews-v1")
            },
            req("productpage-v1", "reviews", "reviews-v1"),
            Req {
                reporter: "outbound",
                ..req("productpage-v1", "reviews", "reviews-v1")
            },
            failed,
            Req {
                code: 503,
                reporter: "outbound",
                ..req("productpage-v1", "reviews", "")
            },
        ],
    );
    let v = view(&g, at(2), 60);
    let to_svc = edge(&v, PP, REVIEWS);
    assert_eq!((to_svc.stats.requests, to_svc.stats.errors), (5, 2));
    assert_eq!(edge(&v, REVIEWS, R1).stats.requests, 3);
    assert_eq!(v.edges.len(), 2, "the failed calls stop at the service");
}

#[test]
fn caps_refuse_new_edges_and_count_them_and_silent_edges_are_evicted() {
    let vocab = Arc::new(Vocabulary::builtin());
    let g = Graph::new(GraphSettings {
        max_edges: 2,
        retention: Duration::from_secs(60),
        ..Default::default()
    });
    record(
        &g,
        &vocab,
        at(0),
        &[
            req("a-v1", "b", "b-v1"),
            req("a-v1", "c", "c-v1"),
            req("a-v1", "d", "d-v1"),
            req("a-v1", "b", "b-v1"),
        ],
    );
    assert_eq!(g.size().0, 2);
    assert_eq!(g.metrics.dropped.get(), 1);
    // Node cap: 3 nodes fit a -> b -> b-v1 only.
    let small = Graph::new(GraphSettings {
        max_nodes: 3,
        ..Default::default()
    });
    record(
        &small,
        &vocab,
        at(0),
        &[
            req("a-v1", "b", "b-v1"),
            req("a-v1", "c", "c-v1"),
            req("x-v1", "b", "b-v1"),
        ],
    );
    assert_eq!(small.size(), (1, 3));
    assert_eq!(small.metrics.dropped.get(), 2);
    // Once the retention has passed with nothing on them, the edges go, and a new one fits.
    record(&g, &vocab, at(61), &[req("a-v1", "d", "d-v1")]);
    assert_eq!(g.size(), (1, 3));
    assert_eq!(g.metrics.edges.get(), 1);
    let v = view(&g, at(62), 60);
    assert!(
        v.edge(
            "service:d.default.svc.cluster.local",
            "workload:default/d-v1/v1"
        )
        .is_some()
    );
    assert!(v.edge(PP, REVIEWS).is_none());
}

#[test]
fn the_recent_ring_is_bounded_and_keeps_the_newest() {
    let vocab = Arc::new(Vocabulary::builtin());
    let g = Graph::new(GraphSettings {
        recent: 4,
        ..Default::default()
    });
    for i in 0..10u64 {
        record(
            &g,
            &vocab,
            at(i),
            &[Req {
                ms: i,
                ..req("productpage-v1", "reviews", "reviews-v1")
            }],
        );
    }
    let v = view(&g, at(10), 60);
    let e = edge(&v, REVIEWS, R1);
    assert_eq!(
        e.recent
            .iter()
            .map(|r| r.latency_us / 1000)
            .collect::<Vec<_>>(),
        [9, 8, 7, 6]
    );
}

#[test]
fn percentiles_interpolate_inside_the_histogram_buckets() {
    let mut s = Stats::default();
    assert_eq!(s.quantile_ms(0.5), None);
    // 100 requests of 1..=100 ms.
    for ms in 1..=100u64 {
        s.latency[latency_slot(ms * 1000)] += 1;
        s.requests += 1;
    }
    let p50 = s.quantile_ms(0.5).unwrap();
    let p99 = s.quantile_ms(0.99).unwrap();
    assert!((40.0..=60.0).contains(&p50), "{p50}");
    assert!((90.0..=100.0).contains(&p99), "{p99}");
    assert!(s.quantile_ms(0.0).unwrap() <= 1.0);
}

#[test]
fn a_disabled_graph_takes_nothing() {
    let vocab = Arc::new(Vocabulary::builtin());
    let g = Graph::new(GraphSettings {
        enabled: false,
        ..Default::default()
    });
    record(&g, &vocab, at(0), &[req("a-v1", "b", "b-v1")]);
    assert_eq!(g.size(), (0, 0));
}

#[test]
fn servicegraph_shapes_name_nodes_by_workload_and_version() {
    let vocab = Arc::new(Vocabulary::builtin());
    let g = Graph::new(GraphSettings::default());
    record(
        &g,
        &vocab,
        at(0),
        &[req("productpage-v1", "reviews", "reviews-v2")],
    );
    let v = view(&g, at(1), 10);
    let d3 = v.to_d3();
    let names: Vec<&str> = d3["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reviews", "productpage-v1 (v1)", "reviews-v2 (v2)"]);
    let links = d3["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    assert_eq!(links[0]["labels"]["reqs/sec"], "0.100000");
    let dot = v.to_dot();
    assert!(
        dot.starts_with("digraph \"istio-servicegraph\" {\n"),
        "{dot}"
    );
    assert!(dot.contains("\"workload_default_productpage-v1_v1\" -> \"service_reviews_default_svc_cluster_local\" [label=\""), "{dot}");
    assert!(dot.contains("[label=\"reviews-v2 (v2)\"];"), "{dot}");
}

#[test]
fn routing_config_is_matched_by_host() {
    let configz = serde_json::json!({"objects": [
        {"kind": "VirtualService", "namespace": "default", "name": "reviews", "spec": {"hosts": ["reviews"]}},
        {"kind": "VirtualService", "namespace": "other", "name": "reviews-other", "spec": {"hosts": ["reviews"]}},
        {"kind": "VirtualService", "namespace": "istio-system", "name": "all", "spec": {"hosts": ["*.default.svc.cluster.local"]}},
        {"kind": "DestinationRule", "namespace": "default", "name": "reviews", "spec": {"host": "reviews.default.svc.cluster.local"}},
        {"kind": "DestinationRule", "namespace": "default", "name": "ratings", "spec": {"host": "ratings"}},
        {"kind": "AuthorizationPolicy", "namespace": "default", "name": "allow", "spec": {}},
        {"kind": "AuthorizationPolicy", "namespace": "other", "name": "deny", "spec": {}},
        {"kind": "Policy", "namespace": "default", "name": "jwt", "spec": {"targets": [{"name": "reviews"}]}},
        {"kind": "Policy", "namespace": "default", "name": "ratings-jwt", "spec": {"targets": [{"name": "ratings"}]}},
    ]});
    let r = http::routing(&configz, "reviews.default.svc.cluster.local", "default");
    let names = |k: &str| -> Vec<String> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("virtualServices"), ["reviews", "all"]);
    assert_eq!(names("destinationRules"), ["reviews"]);
    assert_eq!(names("policies"), ["allow", "jwt"]);
    assert!(http::host_matches(
        "reviews.default",
        "x",
        "reviews.default.svc.cluster.local"
    ));
    assert!(!http::host_matches(
        "reviews.other",
        "x",
        "reviews.default.svc.cluster.local"
    ));
}

#[test]
fn query_windows_are_checked_by_name() {
    let g = Graph::new(GraphSettings::default());
    assert_eq!(http::window(&g, None).unwrap(), Duration::from_secs(300));
    assert_eq!(
        http::window(&g, Some("90s")).unwrap(),
        Duration::from_secs(90)
    );
    for bad in ["5 minutes", "-1m", "", "0s", "11m"] {
        let e = http::window(&g, Some(bad)).unwrap_err();
        assert!(
            e.to_string().starts_with("query parameter window: "),
            "{bad}: {e}"
        );
    }
}

#[test]
fn keys_of_many_services_do_not_share_hashes() {
    let names: Vec<(String, String)> = (0..1000)
        .map(|i| {
            (
                format!("svc{i}-v1"),
                format!("svc{i}.ns{}.svc.cluster.local", i % 20),
            )
        })
        .collect();
    let mut seen = std::collections::HashMap::new();
    for i in 0..1000 {
        for c in [(i + 1) % 1000, (i + 7) % 1000] {
            let k = KeyRef {
                src: ["bench", &names[c].0, ""],
                service: &names[i].1,
                service_namespace: "",
                dst: ["bench", &names[i].0, ""],
                protocol: "http",
            };
            *seen.entry(k.hash()).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 2000, "max {:?}", seen.values().max());
}
