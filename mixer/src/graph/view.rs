//! A time window of the graph store as the page draws it: workloads and services as nodes,
//! and as edges a source workload's calls to a service and the service's requests served by
//! each of its workloads (a call with no known service goes straight from workload to
//! workload). Formats: ours ([`View::to_json`]), Istio servicegraph's `d3` (`nodes` by name,
//! `links` by index with `labels`) and `dot` (`digraph "istio-servicegraph"`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::{CLASSES, EdgeRead, NodeId, Recent, Reporter, Stats, Workload};

/// A node's health from the requests it answered: `failing` at 20% errors or more,
/// `degraded` from 0.1%, `healthy` below, `idle` when it answered nothing in the window (Kiali's
/// default thresholds).
pub fn health(s: &Stats) -> &'static str {
    if s.requests == 0 {
        return "idle";
    }
    let rate = s.errors as f64 / s.requests as f64;
    if rate >= 0.2 {
        "failing"
    } else if rate >= 0.001 {
        "degraded"
    } else {
        "healthy"
    }
}

/// A node of the view.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub node: NodeId,
    /// What it answered (requests into it).
    pub inbound: Stats,
}

/// An edge of the view.
#[derive(Debug, Clone)]
pub struct Edge {
    pub source: String,
    pub target: String,
    /// The destination service of its requests (empty when unknown).
    pub service: String,
    pub service_namespace: String,
    pub protocol: String,
    pub reporters: Vec<Reporter>,
    pub stats: Stats,
    pub recent: Vec<Recent>,
}

/// The graph of a window.
#[derive(Debug, Clone)]
pub struct View {
    pub window: Duration,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// The id of a node: `workload:NS/NAME/VERSION` or `service:HOST`.
pub fn node_id(n: &NodeId) -> String {
    match n {
        NodeId::Workload(w) => format!(
            "workload:{}/{}/{}",
            or_unknown(&w.namespace),
            or_unknown(&w.name),
            or_unknown(&w.version)
        ),
        NodeId::Service { host, .. } => format!("service:{host}"),
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

/// A node's label: `NAME (VERSION)` for a workload (servicegraph's naming), the host's first
/// label for a service.
pub fn node_name(n: &NodeId) -> String {
    match n {
        NodeId::Workload(w) => format!("{} ({})", or_unknown(&w.name), or_unknown(&w.version)),
        NodeId::Service { host, .. } => host.split('.').next().unwrap_or(host).to_string(),
    }
}

/// Formats a duration the way the window parameter takes it (`90s`, `5m`, `1h`).
pub fn format_window(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

// === impl View ===

impl View {
    /// The view of `reads` (the store's edges for `window`).
    pub fn build(window: Duration, reads: Vec<EdgeRead>, recent: usize) -> Self {
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
        let mut node = |n: NodeId| -> String {
            let id = node_id(&n);
            nodes.entry(id.clone()).or_insert(Node {
                id: id.clone(),
                node: n,
                inbound: Stats::default(),
            });
            id
        };
        let mut hops = Vec::new();
        for r in reads {
            let src = node(NodeId::Workload(r.key.source.clone()));
            let svc = (!r.key.service.is_empty()).then(|| {
                node(NodeId::Service {
                    host: r.key.service.clone(),
                    namespace: r.key.service_namespace.clone(),
                })
            });
            let dst = (!r.key.destination.name.is_empty())
                .then(|| node(NodeId::Workload(r.key.destination.clone())));
            let pairs: Vec<(String, String)> = match (svc, dst) {
                (Some(s), Some(d)) => vec![(src, s.clone()), (s, d)],
                (Some(s), None) => vec![(src, s)],
                (None, Some(d)) => vec![(src, d)],
                (None, None) => vec![],
            };
            for (a, b) in pairs {
                hops.push((a, b, r.clone()));
            }
        }
        for (a, b, r) in hops {
            if let Some(n) = nodes.get_mut(&b) {
                n.inbound.add(&r.stats);
            }
            let e = edges
                .entry((a.clone(), b.clone(), r.key.protocol.to_string()))
                .or_insert_with(|| Edge {
                    source: a,
                    target: b,
                    service: r.key.service.to_string(),
                    service_namespace: r.key.service_namespace.to_string(),
                    protocol: r.key.protocol.to_string(),
                    reporters: Vec::new(),
                    stats: Stats::default(),
                    recent: Vec::new(),
                });
            e.stats.add(&r.stats);
            if !e.reporters.contains(&r.reporter) {
                e.reporters.push(r.reporter);
            }
            e.recent.extend(r.recent);
        }
        let mut edges: Vec<Edge> = edges.into_values().collect();
        for e in &mut edges {
            e.recent.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
            e.recent.truncate(recent);
        }
        Self {
            window,
            nodes: nodes.into_values().collect(),
            edges,
        }
    }

    fn secs(&self) -> f64 {
        self.window.as_secs_f64().max(1.0)
    }

    /// Our JSON: `{window, windowSeconds, nodes: [...], edges: [...]}`.
    pub fn to_json(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                let mut v = match &n.node {
                    NodeId::Workload(Workload {
                        namespace,
                        name,
                        version,
                    }) => json!({
                        "kind": "workload",
                        "namespace": or_unknown(namespace),
                        "workload": or_unknown(name),
                        "version": or_unknown(version),
                    }),
                    NodeId::Service { host, namespace } => json!({
                        "kind": "service",
                        "service": &**host,
                        "namespace": &**namespace,
                    }),
                };
                v["id"] = json!(n.id);
                v["name"] = json!(node_name(&n.node));
                v["health"] = json!(health(&n.inbound));
                v["requests"] = json!(n.inbound.requests);
                v["errors"] = json!(n.inbound.errors);
                v
            })
            .collect();
        let edges: Vec<Value> = self
            .edges
            .iter()
            .map(|e| self.edge_json(e, false))
            .collect();
        json!({
            "window": format_window(self.window),
            "windowSeconds": self.window.as_secs(),
            "nodes": nodes,
            "edges": edges,
        })
    }

    /// One edge as JSON; with `recent`, its recent requests too.
    pub fn edge_json(&self, e: &Edge, recent: bool) -> Value {
        let s = &e.stats;
        let rate = |n: u64| {
            if s.requests == 0 {
                0.0
            } else {
                n as f64 / s.requests as f64
            }
        };
        let responses: serde_json::Map<String, Value> = CLASSES
            .iter()
            .zip(s.classes)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (c.to_string(), json!(n)))
            .collect();
        let mut v = json!({
            "id": format!("{}->{}", e.source, e.target),
            "source": e.source,
            "target": e.target,
            "service": e.service,
            "protocol": e.protocol,
            "requests": s.requests,
            "errors": s.errors,
            "errorRate": round(rate(s.errors), 4),
            "rps": round(s.requests as f64 / self.secs(), 3),
            "p50Ms": s.quantile_ms(0.5).map(|v| round(v, 3)),
            "p99Ms": s.quantile_ms(0.99).map(|v| round(v, 3)),
            "mtls": s.requests > 0 && s.mtls == s.requests,
            "mtlsRequests": s.mtls,
            "responses": responses,
            "reporter": e.reporters.iter().map(|r| match r {
                Reporter::Destination => "destination",
                Reporter::Source => "source",
            }).collect::<Vec<_>>(),
        });
        if recent {
            v["recent"] = json!(
                e.recent
                    .iter()
                    .map(|r| json!({
                        "timeMs": r.at_ms,
                        "method": r.method,
                        "path": r.path,
                        "code": r.code,
                        "latencyMs": round(r.latency_us as f64 / 1000.0, 3),
                        "mtls": r.mtls,
                    }))
                    .collect::<Vec<_>>()
            );
        }
        v
    }

    /// Istio servicegraph's d3 shape: `{nodes: [{name}], links: [{source, target, labels}]}`
    /// with nodes and links by index.
    pub fn to_d3(&self) -> Value {
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| json!({"name": node_name(&n.node), "id": n.id}))
            .collect();
        let links: Vec<Value> = self
            .edges
            .iter()
            .filter_map(|e| {
                Some(json!({
                    "source": index.get(e.source.as_str())?,
                    "target": index.get(e.target.as_str())?,
                    "labels": self.labels(e),
                }))
            })
            .collect();
        json!({"nodes": nodes, "links": links})
    }

    fn labels(&self, e: &Edge) -> BTreeMap<&'static str, String> {
        let s = &e.stats;
        let mut l = BTreeMap::new();
        l.insert(
            "reqs/sec",
            format!("{:.6}", s.requests as f64 / self.secs()),
        );
        l.insert(
            "errors/sec",
            format!("{:.6}", s.errors as f64 / self.secs()),
        );
        if let Some(p) = s.quantile_ms(0.5) {
            l.insert("p50 ms", format!("{p:.3}"));
        }
        if let Some(p) = s.quantile_ms(0.99) {
            l.insert("p99 ms", format!("{p:.3}"));
        }
        l.insert("mtls", (s.requests > 0 && s.mtls == s.requests).to_string());
        l
    }

    /// Istio servicegraph's dot shape.
    pub fn to_dot(&self) -> String {
        let id = |s: &str| {
            s.chars()
                .map(|c| {
                    if matches!(c, '/' | '.' | ' ' | ':') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect::<String>()
        };
        let mut out = String::from("digraph \"istio-servicegraph\" {\n");
        for e in &self.edges {
            let label = self
                .labels(e)
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "{:?} -> {:?} [label={:?}];",
                id(&e.source),
                id(&e.target),
                label
            );
        }
        for n in &self.nodes {
            let _ = writeln!(out, "{:?} [label={:?}];", id(&n.id), node_name(&n.node));
        }
        out.push_str("}\n");
        out
    }

    /// The edge `source -> target`.
    pub fn edge(&self, source: &str, target: &str) -> Option<&Edge> {
        self.edges
            .iter()
            .find(|e| e.source == source && e.target == target)
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}
