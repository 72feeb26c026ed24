//! LDS: the listeners of a sidecar.
//!
//! - `virtualOutbound` on 0.0.0.0:15001 (when the proxy's traffic is captured by iptables):
//!   connections are handed to the listener of their original destination, or to the
//!   passthrough/blackhole cluster per `outboundTrafficPolicy` (the Sidecar's, else the mesh's).
//! - `0.0.0.0_PORT` per outbound HTTP port (routes from RDS `PORT`), `VIP_PORT` or
//!   `0.0.0.0_PORT` per outbound TCP port; not bound, reached through the virtual listener.
//! - `IP_PORT` per service instance of the proxy itself (inbound), not bound.
//! - `127.0.0.1_PORT` when the mesh sets `proxyHttpPort`: a bound HTTP proxy listener that
//!   routes every outbound HTTP service by Host (RDS `http_proxy`).
//!
//! HTTP chains run Istio's filters: CORS, fault injection (both configured per route by RDS)
//! and the router. TCP listeners follow the `tcp` routes of the service's VirtualService
//! (weighted). What a sidecar sees is scoped by its Sidecar resource
//! ([`PushContext::services_for_proxy`]); a `router` proxy gets the listeners of its
//! Gateways instead ([`super::gateway`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter::ConfigType,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy,
    tcp_proxy::{
        ClusterSpecifier as TcpCluster, WeightedCluster as TcpWeightedCluster,
        weighted_cluster::ClusterWeight as TcpClusterWeight,
    },
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::cds::{BLACK_HOLE, PASSTHROUGH};
use super::route::{CORS_FILTER, FAULT_FILTER};
use super::util::{ads, duration, socket_address};
use crate::mesh::OutboundMode;
use crate::model::service::{inbound_cluster_name, outbound_cluster_name};
use crate::model::{NodeType, Proxy, PushContext};
use crate::xds::resource::{Resource, SharedResource, any};

/// Port of the virtual outbound listener.
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
/// RDS name of the HTTP proxy listener's routes.
pub const HTTP_PROXY_ROUTE: &str = "http_proxy";

/// The HTTP proxy port for `proxy`: the `PROXY_HTTP_PORT` node metadata when set (so several
/// proxies on one host can each have their own), else the mesh's `proxyHttpPort`.
pub fn http_proxy_port(ctx: &PushContext, proxy: &Proxy) -> u32 {
    proxy
        .meta_str("PROXY_HTTP_PORT")
        .and_then(|p| p.parse().ok())
        .unwrap_or(ctx.mesh.proxy_http_port)
}

/// Every listener `proxy` gets, sorted by name.
pub fn listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<SharedResource> {
    if proxy.node_type == NodeType::Router {
        // Gateways get their listeners from Gateway resources.
        let mut resources: Vec<SharedResource> = super::gateway::listeners(ctx, proxy)
            .into_iter()
            .map(|l| Resource::encode(l.name.clone(), &l))
            .collect();
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        return resources;
    }
    let mut out = Vec::new();
    if proxy.captures_traffic() {
        out.push(virtual_outbound(ctx, proxy));
    }

    // Outbound: HTTP ports share one listener per port; TCP services get their own.
    let mut http_ports = BTreeSet::new();
    let mut tcp: BTreeMap<String, (u32, TcpCluster)> = BTreeMap::new();
    for svc in ctx.services_for_proxy(proxy) {
        for port in &svc.ports {
            if port.protocol.is_http() {
                http_ports.insert(port.number);
            } else {
                let cluster = outbound_cluster_name(port.number, "", &svc.hostname);
                let bind = svc.addresses.first().cloned().unwrap_or("0.0.0.0".into());
                tcp.entry(format!("{bind}_{}", port.number))
                    .or_insert_with(|| {
                        (port.number, tcp_destination(ctx, proxy, svc, port, cluster))
                    });
            }
        }
    }
    for port in &http_ports {
        out.push(unbound(
            format!("0.0.0.0_{port}"),
            "0.0.0.0",
            *port,
            http_chain(&format!("outbound_0.0.0.0_{port}"), rds(&port.to_string())),
        ));
    }
    for (name, (port, cluster)) in tcp {
        let (ip, _) = name.split_once('_').unwrap_or(("0.0.0.0", ""));
        if ip == "0.0.0.0" && http_ports.contains(&port) {
            tracing::debug!(%name, "TCP service shares a port with HTTP services; skipped");
            continue;
        }
        out.push(unbound(
            name.clone(),
            ip,
            port,
            tcp_chain_to(&format!("outbound|{port}||{name}"), cluster),
        ));
    }

    // Inbound through the Sidecar resource's ingress listeners: bound when the proxy's
    // traffic is not captured (captureMode NONE), forwarding to the defaultEndpoint.
    for ing in super::cds::sidecar_ingress(ctx, proxy) {
        let protocol = crate::model::Protocol::parse(ing.port.protocol.as_deref().unwrap_or("TCP"));
        let name = format!("{}_{}", ing.bind, ing.port.number);
        let chain = if protocol.is_http() {
            http_chain(
                &format!("inbound_{name}"),
                RouteSpecifier::RouteConfig(inbound_routes(&ing.cluster)),
            )
        } else {
            tcp_chain(&ing.cluster, &ing.cluster)
        };
        let capture_none = !proxy.captures_traffic()
            || ctx
                .sidecar_for(proxy)
                .and_then(|sc| {
                    sc.spec
                        .ingress
                        .iter()
                        .find(|i| i.port.number == ing.port.number)
                })
                .and_then(|i| i.capture_mode)
                == Some(mesh_proto::networking::CaptureMode::None);
        let mut listener = unbound(name, &ing.bind, ing.port.number, chain);
        if capture_none {
            listener.bind_to_port = None;
        }
        out.push(listener);
    }

    // Inbound: the proxy's own service instances.
    let mut seen = BTreeSet::new();
    for (svc, port, ep) in proxy
        .ips
        .iter()
        .flat_map(|ip| ctx.registry.instances_at(ip))
    {
        let name = format!("{}_{}", ep.address, ep.port);
        if !seen.insert(name.clone()) {
            continue;
        }
        let cluster = inbound_cluster_name(port.number, &svc.hostname);
        let chain = if port.protocol.is_http() {
            http_chain(
                &format!("inbound_{name}"),
                RouteSpecifier::RouteConfig(inbound_routes(&cluster)),
            )
        } else {
            tcp_chain(&cluster, &cluster)
        };
        out.push(unbound(name, &ep.address, ep.port, chain));
    }

    let proxy_port = http_proxy_port(ctx, proxy);
    if proxy_port > 0 {
        let mut chain = http_chain(
            &format!("outbound_127.0.0.1_{proxy_port}"),
            rds(HTTP_PROXY_ROUTE),
        );
        allow_absolute_urls(&mut chain);
        out.push(Listener {
            name: format!("127.0.0.1_{proxy_port}"),
            address: Some(socket_address("127.0.0.1", proxy_port)),
            filter_chains: vec![chain],
            ..Default::default()
        });
    }

    let mut resources: Vec<SharedResource> = out
        .into_iter()
        .map(|l| Resource::encode(l.name.clone(), &l))
        .collect();
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    // The first of two listeners on one address wins (Envoy refuses duplicates).
    resources.dedup_by(|a, b| a.name == b.name);
    resources
}

fn virtual_outbound(ctx: &PushContext, proxy: &Proxy) -> Listener {
    let cluster = match ctx.outbound_mode(proxy) {
        OutboundMode::AllowAny => PASSTHROUGH,
        OutboundMode::RegistryOnly => BLACK_HOLE,
    };
    Listener {
        name: "virtualOutbound".into(),
        address: Some(socket_address("0.0.0.0", VIRTUAL_OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![tcp_chain(cluster, cluster)],
        ..Default::default()
    }
}

fn unbound(name: String, ip: &str, port: u32, chain: FilterChain) -> Listener {
    Listener {
        name,
        address: Some(socket_address(ip, port)),
        bind_to_port: Some(BoolValue { value: false }),
        filter_chains: vec![chain],
        ..Default::default()
    }
}

pub(super) fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: name.to_string(),
    })
}

pub(super) fn http_chain(stat_prefix: &str, routes: RouteSpecifier) -> FilterChain {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(routes),
        // Istio's order: CORS answers preflights first, faults next, then routing. Both are
        // configured per route (RDS), and do nothing on routes without config.
        http_filters: vec![
            HttpFilter {
                name: CORS_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(&Cors::default()))),
                ..Default::default()
            },
            HttpFilter {
                name: FAULT_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(
                    &HttpFault::default(),
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(
                    any(&Router::default()),
                )),
                ..Default::default()
            },
        ],
        // Istio disables Envoy's default 5 minute stream idle timeout for sidecars.
        stream_idle_timeout: Some(duration(std::time::Duration::ZERO)),
        ..Default::default()
    };
    FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(ConfigType::TypedConfig(any(&hcm))),
        }],
        ..Default::default()
    }
}

/// Gateways match hosts without the port the client put in the Host header (Istio's
/// `strip_any_host_port`), so `host` serves whatever port the client used.
pub(super) fn strip_host_port(chain: &mut FilterChain) {
    for f in &mut chain.filters {
        if let Some(ConfigType::TypedConfig(cfg)) = &mut f.config_type
            && let Ok(mut hcm) = <HttpConnectionManager as prost::Message>::decode(&cfg.value[..])
        {
            hcm.strip_port_mode = Some(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode::StripAnyHostPort(true),
            );
            *cfg = any(&hcm);
        }
    }
}

fn allow_absolute_urls(chain: &mut FilterChain) {
    for f in &mut chain.filters {
        if let Some(ConfigType::TypedConfig(cfg)) = &mut f.config_type
            && let Ok(mut hcm) = <HttpConnectionManager as prost::Message>::decode(&cfg.value[..])
        {
            hcm.http_protocol_options = Some(Http1ProtocolOptions {
                allow_absolute_url: Some(BoolValue { value: true }),
                ..Default::default()
            });
            *cfg = any(&hcm);
        }
    }
}

pub(super) fn tcp_chain(stat_prefix: &str, cluster: &str) -> FilterChain {
    tcp_chain_to(stat_prefix, TcpCluster::Cluster(cluster.to_string()))
}

/// Where a TCP service's connections go: the `tcp` routes of its VirtualService (the first
/// whose match takes the port; weighted), else the service's own cluster.
fn tcp_destination(
    ctx: &PushContext,
    proxy: &Proxy,
    svc: &crate::model::Service,
    port: &crate::model::Port,
    default: String,
) -> TcpCluster {
    let Some(vs) = ctx.virtual_service(&proxy.namespace, &svc.hostname) else {
        return TcpCluster::Cluster(default);
    };
    let route = vs.spec.tcp.iter().find(|r| {
        r.matches.is_empty()
            || r.matches.iter().any(|m| {
                m.port.is_none_or(|p| p == port.number)
                    && m.source_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
            })
    });
    let Some(route) = route else {
        return TcpCluster::Cluster(default);
    };
    let clusters: Vec<(String, u32)> = route
        .route
        .iter()
        .map(|d| {
            let host = ctx.resolve(&d.destination.host, &vs.namespace);
            let dest_port = d
                .destination
                .port
                .as_ref()
                .and_then(|p| p.number)
                .unwrap_or(port.number);
            let subset = d.destination.subset.as_deref().unwrap_or("");
            let weight = d
                .weight
                .unwrap_or(if route.route.len() == 1 { 100 } else { 0 });
            (outbound_cluster_name(dest_port, subset, &host), weight)
        })
        .filter(|(_, w)| *w > 0)
        .collect();
    match clusters.as_slice() {
        [] => TcpCluster::Cluster(default),
        [(only, _)] => TcpCluster::Cluster(only.clone()),
        _ => TcpCluster::WeightedClusters(TcpWeightedCluster {
            clusters: clusters
                .into_iter()
                .map(|(name, weight)| TcpClusterWeight {
                    name,
                    weight,
                    ..Default::default()
                })
                .collect(),
        }),
    }
}

fn tcp_chain_to(stat_prefix: &str, cluster: TcpCluster) -> FilterChain {
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster),
        ..Default::default()
    };
    FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(ConfigType::TypedConfig(any(&tcp))),
        }],
        ..Default::default()
    }
}

fn inbound_routes(cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: cluster.to_string(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
                    timeout: Some(duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}
