//! The graph's routes on Mixer's monitoring port:
//!
//! - `/graph`: the topology page (one static HTML file with its script and styles inline,
//!   drawn as SVG; nothing is loaded from elsewhere). It polls `/graph.json` every few
//!   seconds and asks `/graph/edge` when an edge is clicked.
//! - `/graph.json?window=5m&format=json|d3|dot`: the graph of the last `window` (Go
//!   duration text, from 1s to the retention; default 5m or the retention if shorter).
//! - `/graph/edge?source=ID&target=ID&window=5m`: one edge with its recent requests and the
//!   routing config that applies to its destination service, from Pilot's `/debug/configz`
//!   (VirtualServices and DestinationRules whose hosts match it, and the authentication and
//!   authorization policies of its namespace and the root namespace), or why Pilot could not
//!   be asked.
//!
//! A malformed or unknown parameter is a 400 naming it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::view::{View, format_window};
use super::{Graph, GraphError};
use crate::attribute::time::parse_duration;

/// The page.
const PAGE: &str = include_str!("page.html");

/// Where Mixer asks Pilot for config, and how long it waits.
#[derive(Debug, Clone)]
pub struct PilotDebug {
    /// `host:port` of Pilot's monitoring server.
    pub addr: String,
    pub timeout: Duration,
}

/// What the routes share.
#[derive(Debug, Clone)]
struct State {
    graph: Arc<Graph>,
    pilot: PilotDebug,
}

/// The graph's routes.
pub fn routes(graph: Arc<Graph>, pilot: PilotDebug) -> Router {
    let state = State { graph, pilot };
    let page = || async {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            PAGE,
        )
    };
    let s1 = state.clone();
    let s2 = state;
    Router::new()
        .route("/graph", get(page))
        .route(
            "/graph.json",
            get(move |q: Query<Vec<(String, String)>>| {
                let s = s1.clone();
                async move { graph_json(&s, &q.0) }
            }),
        )
        .route(
            "/graph/edge",
            get(move |q: Query<Vec<(String, String)>>| {
                let s = s2.clone();
                async move { edge(&s, &q.0).await }
            }),
        )
}

fn bad(e: GraphError) -> Response {
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

fn off() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "enabled": false,
            "error": "the topology graph is off (--graph false, MIXER_GRAPH=false or graph: false)",
        })),
    )
        .into_response()
}

/// The query's parameters, each known and given at most once.
fn params<'q>(
    q: &'q [(String, String)],
    known: &[&'static str],
) -> Result<Vec<(&'static str, &'q str)>, GraphError> {
    let mut out: Vec<(&'static str, &str)> = Vec::new();
    for (k, v) in q {
        let Some(&name) = known.iter().find(|n| **n == k) else {
            return Err(GraphError::Query {
                param: "(unknown)",
                message: format!("{k:?} is not a parameter (known: {})", known.join(", ")),
            });
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(GraphError::Query {
                param: name,
                message: "given more than once".into(),
            });
        }
        out.push((name, v));
    }
    Ok(out)
}

fn get_param<'q>(p: &[(&'static str, &'q str)], name: &str) -> Option<&'q str> {
    p.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The window a query asks for: Go duration text from 1s to the retention.
pub fn window(graph: &Graph, text: Option<&str>) -> Result<Duration, GraphError> {
    let retention = graph.settings().retention;
    let Some(text) = text else {
        return Ok(Duration::from_secs(300).min(retention));
    };
    let d = parse_duration(text).ok_or_else(|| GraphError::Query {
        param: "window",
        message: format!("{text:?} is not a duration (e.g. 30s, 5m, 1h)"),
    })?;
    if d < Duration::from_secs(1) || d > retention {
        return Err(GraphError::Query {
            param: "window",
            message: format!(
                "{text:?} is outside 1s..{} (the graph's retention, --graph-retention)",
                format_window(retention)
            ),
        });
    }
    Ok(Duration::from_secs(d.as_secs()))
}

/// The view of a window (with the edges' recent requests, or not).
pub fn view(graph: &Graph, window: Duration, recent: bool) -> View {
    View::build(
        window,
        graph.read(SystemTime::now(), window, recent),
        graph.settings().recent,
    )
}

fn graph_json(s: &State, q: &[(String, String)]) -> Response {
    if !s.graph.settings().enabled {
        return off();
    }
    let p = match params(q, &["window", "format"]) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let w = match window(&s.graph, get_param(&p, "window")) {
        Ok(w) => w,
        Err(e) => return bad(e),
    };
    let v = view(&s.graph, w, false);
    match get_param(&p, "format").unwrap_or("json") {
        "json" => {
            let mut j = v.to_json();
            let (edges, nodes) = s.graph.size();
            j["enabled"] = json!(true);
            j["store"] = json!({
                "edges": edges,
                "nodes": nodes,
                "maxEdges": s.graph.settings().max_edges,
                "maxNodes": s.graph.settings().max_nodes,
                "droppedEntries": s.graph.metrics.dropped.get(),
                "retention": format_window(s.graph.settings().retention),
            });
            axum::Json(j).into_response()
        }
        "d3" => axum::Json(v.to_d3()).into_response(),
        "dot" => (
            [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
            v.to_dot(),
        )
            .into_response(),
        other => bad(GraphError::Query {
            param: "format",
            message: format!("{other:?} is not a format (json, d3, dot)"),
        }),
    }
}

async fn edge(s: &State, q: &[(String, String)]) -> Response {
    if !s.graph.settings().enabled {
        return off();
    }
    let p = match params(q, &["source", "target", "window"]) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let w = match window(&s.graph, get_param(&p, "window")) {
        Ok(w) => w,
        Err(e) => return bad(e),
    };
    let mut ends = [""; 2];
    for (i, name) in ["source", "target"].into_iter().enumerate() {
        match get_param(&p, name) {
            Some(v) if !v.is_empty() => ends[i] = v,
            _ => {
                return bad(GraphError::Query {
                    param: if i == 0 { "source" } else { "target" },
                    message: "missing (a node id of /graph.json)".into(),
                });
            }
        }
    }
    let v = view(&s.graph, w, true);
    let Some(e) = v.edge(ends[0], ends[1]) else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no edge {} -> {} in the last {}\n",
                ends[0],
                ends[1],
                format_window(w)
            ),
        )
            .into_response();
    };
    let mut j = v.edge_json(e, true);
    j["window"] = json!(format_window(w));
    j["routing"] = if e.service.is_empty() {
        json!({"pilot": s.pilot.addr, "error": "the edge names no destination service"})
    } else {
        match fetch_configz(&s.pilot).await {
            Ok(configz) => {
                let mut r = routing(&configz, &e.service, &e.service_namespace);
                r["pilot"] = json!(s.pilot.addr);
                r
            }
            Err(err) => json!({
                "pilot": s.pilot.addr,
                "error": format!("Pilot's /debug/configz at {} cannot be read: {err}", s.pilot.addr),
            }),
        }
    };
    axum::Json(j).into_response()
}

/// GETs Pilot's `/debug/configz`.
async fn fetch_configz(pilot: &PilotDebug) -> Result<Value, String> {
    let url = format!("http://{}/debug/configz", pilot.addr);
    let body = crate::adapter::listchecker::http_get(&url, pilot.timeout).await?;
    serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
}

/// `(name, namespace)` of a Kubernetes service host `NAME.NAMESPACE.svc...`.
fn split_host(host: &str) -> Option<(&str, &str)> {
    let mut it = host.split('.');
    let (n, ns, svc) = (it.next()?, it.next()?, it.next()?);
    (svc == "svc").then_some((n, ns))
}

/// Whether host `pattern` of an object in `obj_ns` names `host` (a short name is relative
/// to the object's namespace, as Istio reads it; `*.suffix` and `*` are wildcards).
pub fn host_matches(pattern: &str, obj_ns: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return host.ends_with(suffix);
    }
    let Some((name, ns)) = split_host(host) else {
        return false;
    };
    if !pattern.contains('.') {
        return pattern == name && obj_ns == ns;
    }
    pattern == format!("{name}.{ns}") || pattern == format!("{name}.{ns}.svc")
}

const ROOT_NAMESPACE: &str = "istio-system";

/// The objects of Pilot's configz that apply to requests for `host` in `svc_ns`.
pub fn routing(configz: &Value, host: &str, svc_ns: &str) -> Value {
    let svc_ns = if svc_ns.is_empty() {
        split_host(host).map(|(_, ns)| ns).unwrap_or("")
    } else {
        svc_ns
    };
    let short = split_host(host).map(|(n, _)| n).unwrap_or(host);
    let mut vs = Vec::new();
    let mut dr = Vec::new();
    let mut policies = Vec::new();
    let objects = configz["objects"].as_array().cloned().unwrap_or_default();
    let has_specs = objects.iter().any(|o| o.get("spec").is_some());
    for o in &objects {
        let ns = o["namespace"].as_str().unwrap_or("");
        let spec = &o["spec"];
        let brief = || {
            json!({
                "kind": o["kind"],
                "namespace": ns,
                "name": o["name"],
                "origin": o["origin"],
                "spec": spec,
            })
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        match o["kind"].as_str().unwrap_or("") {
            "VirtualService"
                if strings(&spec["hosts"])
                    .iter()
                    .any(|h| host_matches(h, ns, host)) =>
            {
                vs.push(brief());
            }
            "DestinationRule"
                if spec["host"]
                    .as_str()
                    .is_some_and(|h| host_matches(h, ns, host)) =>
            {
                dr.push(brief());
            }
            "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication"
                if ns == svc_ns || ns == ROOT_NAMESPACE =>
            {
                policies.push(brief());
            }
            "MeshPolicy" => policies.push(brief()),
            "Policy" => {
                let targets: Vec<&str> = spec["targets"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| t["name"].as_str()).collect())
                    .unwrap_or_default();
                if ns == svc_ns && (targets.is_empty() || targets.contains(&short)) {
                    policies.push(brief());
                }
            }
            "ServiceRole" => {
                let services: Vec<String> = spec["rules"]
                    .as_array()
                    .map(|rules| rules.iter().flat_map(|r| strings(&r["services"])).collect())
                    .unwrap_or_default();
                if ns == svc_ns
                    && services
                        .iter()
                        .any(|s| s == "*" || s == host || s == short || host_matches(s, ns, host))
                {
                    policies.push(brief());
                }
            }
            _ => {}
        }
    }
    let mut r = json!({
        "service": host,
        "virtualServices": vs,
        "destinationRules": dr,
        "policies": policies,
    });
    if !has_specs && !objects.is_empty() {
        r["error"] = json!("Pilot's /debug/configz lists no specs, so hosts cannot be matched");
    }
    r
}
