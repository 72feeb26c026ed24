//! Pilot's debug pages: `/debug/syncz`, `/debug/adsz`, `/debug/registryz`, `/debug/meshz`,
//! `/debug/injectz`, `/debug/jwksz`, `/debug/analyzez` (Istio's analysis messages about the
//! config in force, see [`crate::model::analysis`]) and
//! `/debug/config_dump?proxyID=...` (what a proxy is sent, as JSON in the shape of Envoy's
//! admin `/config_dump`: see [`crate::xds::dump`]).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::model::Proxy;
use crate::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, short_type};
use crate::xds::{XdsServer, dump};

/// `/debug/meshz`: the MeshConfig file, and why the file as it is now was refused (`null`
/// when the file serves). A refused file leaves the last good config serving.
pub fn mesh_routes(
    path: Option<std::path::PathBuf>,
    refused: tokio::sync::watch::Receiver<Option<String>>,
) -> Router {
    Router::new().route(
        "/debug/meshz",
        get(move || {
            let refused = refused.borrow().clone();
            let path = path.as_ref().map(|p| p.display().to_string());
            async move { Json(json!({"file": path, "refused": refused})) }
        }),
    )
}

/// `/debug/injectz`: the sidecar injector's config file, a summary of the config in use
/// (version, policy, template's containers and volumes) and why the file as it is now was
/// refused (`null` when it serves); `webhook: false` when Pilot serves no webhook.
pub fn inject_routes(injector: Option<crate::validate::inject_webhook::Injector>) -> Router {
    Router::new().route(
        "/debug/injectz",
        get(move || {
            let status = match &injector {
                Some(injector) => {
                    let mut status = injector.status();
                    status["webhook"] = json!(true);
                    status
                }
                None => json!({"webhook": false, "file": null, "config": null, "refused": null}),
            };
            async move { Json(status) }
        }),
    )
}

/// The debug routes.
pub fn routes(server: XdsServer) -> Router {
    Router::new()
        .route("/debug/syncz", get(syncz))
        .route("/debug/adsz", get(adsz))
        .route("/debug/registryz", get(registryz))
        .route("/debug/analyzez", get(analyzez))
        .route("/debug/config_dump", get(config_dump))
        .with_state(server)
}

async fn syncz(State(server): State<XdsServer>) -> Json<Value> {
    let conns: Vec<Value> = server
        .connections()
        .iter()
        .map(|c| {
            let types: BTreeMap<&str, Value> = c
                .status()
                .iter()
                .map(|(ty, st)| {
                    (
                        short_type(ty),
                        json!({
                            "status": st.status(),
                            "sent_version": st.sent_version,
                            "sent_nonce": st.sent_nonce,
                            "acked_version": st.acked_version,
                            "acked_nonce": st.acked_nonce,
                            "nack": st.nack,
                        }),
                    )
                })
                .collect();
            json!({
                "proxy": c.proxy.to_string(),
                "connection": c.id,
                "delta": c.delta,
                "types": types,
            })
        })
        .collect();
    Json(json!(conns))
}

async fn adsz(State(server): State<XdsServer>) -> Json<Value> {
    let conns: Vec<Value> = server
        .connections()
        .iter()
        .map(|c| {
            let watched: BTreeMap<&str, Value> = c
                .status()
                .iter()
                .map(|(ty, st)| {
                    let names: Vec<&String> = st.names.iter().collect();
                    (
                        short_type(ty),
                        json!({"wildcard": st.wildcard, "names": names, "responses": st.responses}),
                    )
                })
                .collect();
            json!({
                "proxy": c.proxy.to_string(),
                "connection": c.id,
                "delta": c.delta,
                "namespace": c.proxy.namespace,
                "labels": c.proxy.labels,
                "connected_at": humantime(c.connected_at),
                "watched": watched,
            })
        })
        .collect();
    Json(json!({"version": server.current().version(), "connections": conns}))
}

/// `/debug/analyzez`: what the analysis finds in the config in force, `{"version",
/// "messages": [{level, code, name, kind, namespace, object, field, message}]}`.
async fn analyzez(State(server): State<XdsServer>) -> Json<Value> {
    let generation = server.current();
    let messages = crate::model::analysis::analyze(&generation.ctx);
    Json(json!({"version": generation.version(), "messages": messages}))
}

fn humantime(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

async fn registryz(State(server): State<XdsServer>) -> Json<Value> {
    let generation = server.current();
    let reg = &generation.ctx.registry;
    let services: Vec<Value> = reg
        .services()
        .map(|s| {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    let eps: Vec<Value> = reg
                        .endpoints(&s.hostname, p.number)
                        .iter()
                        .map(|e| {
                            json!({"address": e.address, "port": e.port, "labels": e.labels,
                                   "serviceAccount": e.service_account})
                        })
                        .collect();
                    json!({"name": p.name, "port": p.number, "protocol": p.protocol.to_string(),
                           "endpoints": eps})
                })
                .collect();
            json!({
                "hostname": s.hostname,
                "namespace": s.namespace,
                "addresses": s.addresses,
                "resolution": format!("{:?}", s.resolution),
                "meshExternal": s.mesh_external,
                "ports": ports,
            })
        })
        .collect();
    Json(json!(services))
}

#[derive(serde::Deserialize)]
struct DumpQuery {
    #[serde(rename = "proxyID")]
    proxy_id: Option<String>,
}

/// What Pilot would send the proxy now: the connected proxy with that id (the full node id,
/// or its `POD.NAMESPACE` part), or, for a full node id not connected, a proxy built from it.
async fn config_dump(State(server): State<XdsServer>, Query(q): Query<DumpQuery>) -> Response {
    let Some(id) = q.proxy_id else {
        return (StatusCode::BAD_REQUEST, "proxyID is required\n").into_response();
    };
    let connected = server
        .connections()
        .into_iter()
        .find(|c| c.proxy.to_string() == id || c.proxy.id == id);
    let (proxy, status) = match connected {
        Some(c) => (c.proxy.clone(), Some(c.status())),
        None => match Proxy::from_node(&id, BTreeMap::new()) {
            Ok(p) => (p, None),
            Err(e) => {
                return (
                    StatusCode::NOT_FOUND,
                    format!("no connected proxy {id:?}, and not a node id: {e}\n"),
                )
                    .into_response();
            }
        },
    };
    let generation = server.current();
    let empty = BTreeSet::new();
    let names = |ty: &str| -> BTreeSet<String> {
        status
            .as_ref()
            .and_then(|s| s.get(ty).map(|t| t.names.clone()))
            .unwrap_or_default()
    };
    let clusters = generation
        .resources(&proxy, CLUSTER, &empty)
        .unwrap_or_default();
    let listeners = generation
        .resources(&proxy, LISTENER, &empty)
        .unwrap_or_default();
    // Without a connection, ask for what the generated config refers to.
    let eds_names = if status.is_some() {
        names(ENDPOINT)
    } else {
        clusters
            .iter()
            .filter(|c| c.name.starts_with("outbound|"))
            .map(|c| c.name.clone())
            .collect()
    };
    let rds_names = if status.is_some() {
        names(ROUTE)
    } else {
        listeners
            .iter()
            .filter_map(|l| l.name.strip_prefix("0.0.0.0_").map(str::to_string))
            .chain(std::iter::once("http_proxy".to_string()))
            .collect()
    };
    let endpoints = generation
        .resources(&proxy, ENDPOINT, &eds_names)
        .unwrap_or_default();
    let routes = generation
        .resources(&proxy, ROUTE, &rds_names)
        .unwrap_or_default();
    // Without a connection, every secret the proxy's TLS contexts may refer to.
    let secrets = match status.as_ref().and_then(|s| s.get(SECRET)) {
        Some(t) => generation
            .resources(&proxy, SECRET, &t.names)
            .unwrap_or_default(),
        None if status.is_some() => Vec::new(),
        None => crate::xds::generate::mtls::secrets(&proxy),
    };
    let version = generation.version();
    Json(json!({
        "proxy": proxy.to_string(),
        "version": version,
        "configs": [
            dump::section(CLUSTER, version, &clusters),
            dump::section(ENDPOINT, version, &endpoints),
            dump::section(LISTENER, version, &listeners),
            dump::section(ROUTE, version, &routes),
            dump::section(SECRET, version, &secrets),
        ],
    }))
    .into_response()
}

/// `/debug/jwksz`: the `jwksUri`s the config names, the key ids Pilot holds for each (what
/// proxies get inline) and why the last fetch failed.
pub fn jwks_routes(resolver: std::sync::Arc<crate::model::jwks::JwksResolver>) -> Router {
    Router::new().route(
        "/debug/jwksz",
        get(move || {
            let status = resolver.status();
            async move { Json(status) }
        }),
    )
}
