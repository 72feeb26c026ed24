//! `pilot bootstrap`: the Envoy bootstrap a proxy needs to join the mesh.
//!
//! With the agent's SDS (`pilot-agent`'s certificate from Citadel, served on a Unix socket,
//! see `crate::agent::sds`), [`add_sds_cluster`] adds the static cluster `sds-grpc` on that
//! socket and the node metadata `SDS: "true"` that makes Pilot's TLS contexts use it (see
//! `crate::xds::generate::mtls`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

/// What goes into a bootstrap.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// Istio node id: `sidecar~IP~POD.NS~NS.svc.cluster.local` or `router~...`.
    pub node_id: String,
    /// Pilot's xDS address, `HOST:PORT`.
    pub xds_address: String,
    /// Envoy's admin port (on 127.0.0.1).
    pub admin_port: u16,
    /// Use the delta (incremental) xDS protocol.
    pub delta: bool,
    /// Node metadata.
    pub metadata: BTreeMap<String, Value>,
    /// A port on every address for the kubelet and Prometheus (Istio's 15021):
    /// `/healthz/ready` answers 200 once Envoy is initialized (its admin `/ready`), and
    /// `/stats/prometheus` serves Envoy's stats. None: no such listener.
    pub status_port: Option<u16>,
}

/// Errors building a bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Node(#[from] crate::model::ProxyError),
    #[error("--xds-address {0:?}: expected HOST:PORT")]
    Address(String),
}

/// Builds the bootstrap JSON (Envoy accepts JSON or YAML with `-c`).
pub fn bootstrap(opts: &BootstrapOptions) -> Result<Value, BootstrapError> {
    let proxy = crate::model::Proxy::from_node(&opts.node_id, opts.metadata.clone())?;
    let (host, port) = opts
        .xds_address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| BootstrapError::Address(opts.xds_address.clone()))?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    // Istio's service cluster: `app.namespace` when the workload says, else istio-proxy.
    let cluster = proxy
        .labels
        .get("app")
        .map(|app| format!("{app}.{}", proxy.namespace))
        .unwrap_or_else(|| "istio-proxy".to_string());
    let mut metadata = opts.metadata.clone();
    metadata
        .entry("NAMESPACE".into())
        .or_insert_with(|| json!(proxy.namespace));
    let api_type = if opts.delta { "DELTA_GRPC" } else { "GRPC" };
    let mut node = json!({
        "id": opts.node_id,
        "cluster": cluster,
        "metadata": metadata,
    });
    // Envoy's own idea of where it runs (Istio's agent sets it from ISTIO_LOCALITY).
    if let Some(l) = proxy.locality() {
        let l = crate::xds::generate::eds::parse_locality(&l);
        node["locality"] = json!({"region": l.region, "zone": l.zone, "sub_zone": l.sub_zone});
    }
    let mut bootstrap = json!({
        "node": node,
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": opts.admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": host, "port_value": port},
                    }}}]}],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                        }},
                    },
                },
            }],
        },
    });
    if let Some(port) = opts.status_port {
        add_status_listener(&mut bootstrap, port, opts.admin_port);
    }
    Ok(bootstrap)
}

/// Makes `bootstrap` (from [`bootstrap`]) fetch its certificates from the agent's SDS server
/// on the Unix socket `socket`: the static cluster `sds-grpc` (a pipe address, HTTP/2), and
/// node metadata `SDS: "true"` (Istio's), so Pilot's TLS contexts name that cluster and Pilot
/// serves the proxy no file-based secrets.
pub fn add_sds_cluster(bootstrap: &mut Value, socket: &Path) {
    use crate::xds::generate::mtls::{META_SDS, SDS_CLUSTER};
    if let Some(meta) = bootstrap["node"]["metadata"].as_object_mut() {
        meta.insert(META_SDS.into(), json!("true"));
    } else {
        bootstrap["node"]["metadata"] = json!({ META_SDS: "true" });
    }
    let cluster = json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "pipe": {"path": socket.display().to_string()},
            }}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
    });
    match bootstrap["static_resources"]["clusters"].as_array_mut() {
        Some(clusters) => {
            clusters.retain(|c| c["name"] != SDS_CLUSTER);
            clusters.push(cluster);
        }
        None => bootstrap["static_resources"]["clusters"] = json!([cluster]),
    }
}

/// The status listener: two paths of the admin interface, published on `port` (the admin
/// interface itself stays on loopback, since it can also change Envoy's state).
fn add_status_listener(bootstrap: &mut Value, port: u16, admin_port: u16) {
    let route = |path: &str, rewrite: &str| {
        json!({
            "match": {"path": path},
            "route": {"cluster": "envoy-admin", "prefix_rewrite": rewrite, "timeout": "5s"},
        })
    };
    let resources = &mut bootstrap["static_resources"];
    if let Some(clusters) = resources["clusters"].as_array_mut() {
        clusters.push(json!({
            "name": "envoy-admin",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "envoy-admin",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": admin_port},
                }}}]}],
            },
        }));
    }
    resources["listeners"] = json!([{
        "name": "status",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "status",
                "route_config": {"virtual_hosts": [{
                    "name": "status",
                    "domains": ["*"],
                    "routes": [
                        route("/healthz/ready", "/ready"),
                        route("/stats/prometheus", "/stats/prometheus"),
                    ],
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }],
            },
        }]}],
    }]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_bootstrap() {
        let b = bootstrap(&BootstrapOptions {
            node_id: "sidecar~127.0.0.5~pp.default~default.svc.cluster.local".into(),
            xds_address: "127.0.0.1:15010".into(),
            admin_port: 15000,
            delta: true,
            metadata: BTreeMap::from([("LABELS".into(), json!({"app": "productpage"}))]),
            status_port: None,
        })
        .unwrap();
        assert_eq!(b["node"]["cluster"], "productpage.default");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(b["static_resources"]["clusters"][0]["type"], "STATIC");
        let b = bootstrap(&BootstrapOptions {
            node_id: "sidecar~127.0.0.5~pp.default~default.svc.cluster.local".into(),
            xds_address: "127.0.0.1:15010".into(),
            admin_port: 15000,
            delta: false,
            metadata: BTreeMap::from([("ISTIO_LOCALITY".into(), json!("us/east/a"))]),
            status_port: None,
        })
        .unwrap();
        assert_eq!(b["node"]["locality"]["zone"], "east");
        assert!(
            bootstrap(&BootstrapOptions {
                node_id: "bad".into(),
                xds_address: "x".into(),
                admin_port: 1,
                delta: false,
                metadata: BTreeMap::new(),
                status_port: None,
            })
            .is_err()
        );
    }

    #[test]
    fn sds_cluster_on_the_agents_socket() {
        let mut b = bootstrap(&BootstrapOptions {
            node_id: "sidecar~127.0.0.5~pp.default~default.svc.cluster.local".into(),
            xds_address: "127.0.0.1:15010".into(),
            admin_port: 15000,
            delta: false,
            metadata: BTreeMap::new(),
            status_port: None,
        })
        .unwrap();
        add_sds_cluster(&mut b, Path::new("/etc/istio/proxy/SDS"));
        add_sds_cluster(&mut b, Path::new("/etc/istio/proxy/SDS"));
        assert_eq!(b["node"]["metadata"]["SDS"], "true");
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2, "once: {clusters:?}");
        let sds = &clusters[1];
        assert_eq!(sds["name"], "sds-grpc");
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
                ["path"],
            "/etc/istio/proxy/SDS"
        );
    }
}
