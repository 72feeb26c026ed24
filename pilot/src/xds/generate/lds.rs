//! LDS: the listeners of a sidecar.
//!
//! - `virtualOutbound` on 0.0.0.0:15001 (when the proxy's traffic is captured by iptables):
//!   connections are handed to the listener of their original destination, or to the
//!   passthrough/blackhole cluster per `outboundTrafficPolicy`.
//! - `0.0.0.0_PORT` per outbound HTTP port (routes from RDS `PORT`), `VIP_PORT` or
//!   `0.0.0.0_PORT` per outbound TCP port; not bound, reached through the virtual listener.
//! - `IP_PORT` per service instance of the proxy itself (inbound), not bound.
//! - `127.0.0.1_PORT` when the mesh sets `proxyHttpPort`: a bound HTTP proxy listener that
//!   routes every outbound HTTP service by Host (RDS `http_proxy`).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter::ConfigType,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier as TcpCluster,
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::cds::{BLACK_HOLE, PASSTHROUGH};
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
        return Vec::new();
    }
    let mut out = Vec::new();
    if proxy.captures_traffic() {
        out.push(virtual_outbound(ctx));
    }

    // Outbound: HTTP ports share one listener per port; TCP services get their own.
    let mut http_ports = BTreeSet::new();
    let mut tcp: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for svc in ctx.services_for(&proxy.namespace) {
        for port in &svc.ports {
            if port.protocol.is_http() {
                http_ports.insert(port.number);
            } else {
                let cluster = outbound_cluster_name(port.number, "", &svc.hostname);
                let bind = svc.addresses.first().cloned().unwrap_or("0.0.0.0".into());
                tcp.entry(format!("{bind}_{}", port.number))
                    .or_insert((port.number, cluster));
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
            tcp_chain(&format!("outbound|{port}||{name}"), &cluster),
        ));
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
    resources
}

fn virtual_outbound(ctx: &PushContext) -> Listener {
    let cluster = match ctx.mesh.outbound_traffic_policy.mode {
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

fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: name.to_string(),
    })
}

fn http_chain(stat_prefix: &str, routes: RouteSpecifier) -> FilterChain {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(routes),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
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

fn tcp_chain(stat_prefix: &str, cluster: &str) -> FilterChain {
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(TcpCluster::Cluster(cluster.to_string())),
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
