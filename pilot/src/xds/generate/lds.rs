//! LDS: the listeners of a sidecar.
//!
//! Whether the proxy's traffic is captured by iptables ([`Proxy::interception_mode`], Istio's
//! `INTERCEPTION_MODE` node metadata) decides the shape. Interception is the default: a
//! sidecar that sends `INTERCEPTION_MODE` `REDIRECT` (what `pilot-agent` sends for an injected
//! pod) or `TPROXY`, or sends neither it nor `PROXY_HTTP_PORT`, is captured. `NONE`, or a
//! `PROXY_HTTP_PORT` without `INTERCEPTION_MODE`, is the no-iptables mode of `make run` and
//! the tests: no virtual listener binds 15001 or 15006 (several such proxies share one host),
//! and the application reaches the mesh through the bound HTTP proxy listener.
//!
//! - `virtualOutbound` on 0.0.0.0:15001 (the mesh's `proxyListenPort`; captured only), where
//!   `pilot-agent iptables -p` redirects outbound TCP: `use_original_dst` hands each
//!   connection to the listener of its destination before the REDIRECT (`VIP_PORT`, else
//!   `0.0.0.0_PORT`); one no listener takes goes to `PassthroughCluster` (ORIGINAL_DST) or
//!   `BlackHoleCluster` per `outboundTrafficPolicy` (the Sidecar's, else the mesh's,
//!   ALLOW_ANY / REGISTRY_ONLY). A connection to 15001 itself is dropped (it would loop).
//! - `virtualInbound` on 0.0.0.0:15006 (the mesh's `proxyInboundListenPort`, Istio's knob;
//!   captured sidecars only), where `pilot-agent iptables -z` redirects inbound TCP: the
//!   `original_dst` listener filter recovers the destination (`SO_ORIGINAL_DST`) and filter
//!   chains match its port, one set per inbound port, the very chains of that port's `IP_PORT`
//!   listener below (so Mixer and PeerAuthentication STRICT / PERMISSIVE behave the same on
//!   both paths); every other port passes through to `InboundPassthroughClusterIpv4` (the
//!   workload's own address, from 127.0.0.6 so iptables lets it through, as Istio does), so an
//!   application port no Service declares still works when captured. `transparent` in
//!   `TPROXY` mode.
//! - `0.0.0.0_PORT` per outbound HTTP port (routes from RDS `PORT`), `VIP_PORT` or
//!   `0.0.0.0_PORT` per outbound TCP port; not bound, reached through the virtual listener.
//! - `IP_PORT` per service instance of the proxy itself (inbound), not bound: reached through
//!   `virtualOutbound`'s handoff when inbound traffic is redirected to 15001 (Istio 1.0's
//!   capture); 15006 capture goes through `virtualInbound`'s copy of its chains.
//! - `127.0.0.1_PORT` when the proxy's `PROXY_HTTP_PORT` metadata or the mesh's
//!   `proxyHttpPort` sets a port: a bound HTTP proxy listener that routes every outbound HTTP
//!   service by Host (RDS `http_proxy`).
//!
//! HTTP chains run Istio's filters: CORS, fault injection (both configured per route by RDS)
//! and the router, and report spans when the mesh traces ([`super::tracing`]; outbound
//! listeners are `OUTBOUND`, inbound ones `INBOUND`, which makes Envoy's spans client or
//! server ones). TCP listeners follow the `tcp` routes of the service's VirtualService
//! (weighted). What a sidecar sees is scoped by its Sidecar resource
//! ([`PushContext::services_for_proxy`]); a `router` proxy gets the listeners of its
//! Gateways instead ([`super::gateway`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter::ConfigType,
    listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_connection_manager::Tracing as HcmTracing,
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy,
    tcp_proxy::{
        ClusterSpecifier as TcpCluster, WeightedCluster as TcpWeightedCluster,
        weighted_cluster::ClusterWeight as TcpClusterWeight,
    },
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::cds::{BLACK_HOLE, INBOUND_PASSTHROUGH, PASSTHROUGH, Ranked, merge, ranked};
use super::mixer::{self, Side};
use super::route::{CORS_FILTER, FAULT_FILTER};
use super::util::{UniqueChains, ads, duration, socket_address};
use crate::mesh::OutboundMode;
use crate::model::service::{inbound_cluster_name, outbound_cluster_name};
use crate::model::{InterceptionMode, NodeType, Proxy, PushContext};
use crate::xds::resource::{Resource, SharedResource, any};

/// Istio's name of the listener captured outbound traffic is redirected to.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// Istio's name of the listener captured inbound traffic is redirected to.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
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

/// Every listener `proxy` gets, sorted by name: [`outbound_listeners`] and
/// [`own_listeners`], merged.
pub fn listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<SharedResource> {
    merge(&outbound_listeners(ctx, proxy), &own_listeners(ctx, proxy))
}

/// Where a listener stands among those of its name (see [`Ranked`]): of two with one name
/// a bound one wins, as it is what the workload's traffic arrives on; else the first of
/// outbound (group 0), inbound (1) and the HTTP proxy listener (2).
fn rank(listener: &Listener, group: u8) -> u8 {
    let unbound = listener.bind_to_port.as_ref().is_some_and(|b| !b.value);
    u8::from(unbound) * 3 + group
}

fn rank_all(listeners: Vec<(Listener, u8)>) -> Vec<Ranked> {
    ranked(
        listeners
            .into_iter()
            .map(|(l, group)| Ranked {
                rank: rank(&l, group),
                resource: Resource::encode(l.name.clone(), &l),
            })
            .collect(),
    )
}

/// The listeners of `proxy` that proxies of one namespace and Sidecar scope share:
/// `virtualOutbound`, the Sidecar's egress listeners, the outbound listeners of every visible
/// service port and the HTTP proxy listener; a gateway's from its Gateway resources. They
/// read the proxy's node type, namespace, Sidecar resource, traffic capture, HTTP proxy
/// port, which `sourceLabels` of VirtualServices pick it and (with a Mixer report address)
/// its pod, never its other labels or its instances.
pub fn outbound_listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<Ranked> {
    if proxy.node_type == NodeType::Router {
        // Gateways get their listeners from Gateway resources (sorted, as generated).
        let mut resources: Vec<Ranked> = super::gateway::listeners(ctx, proxy)
            .into_iter()
            .map(|l| Ranked {
                resource: Resource::encode(l.name.clone(), &l),
                rank: 0,
            })
            .collect();
        resources.sort_by(|a, b| a.resource.name.cmp(&b.resource.name));
        // Collected in the listeners' buffer (see `ranked`).
        resources.shrink_to_fit();
        return resources;
    }
    let mut out = Vec::new();
    if proxy.captures_traffic() {
        out.push(virtual_outbound(ctx, proxy));
    }

    // The Sidecar's egress listeners with a port come first: they win over the default
    // outbound listener of the same address (the first of two names is kept).
    out.extend(egress_listeners(ctx, proxy));

    // Outbound: HTTP ports share one listener per port; TCP services get their own.
    let mut http_ports = BTreeSet::new();
    let mut tcp: BTreeMap<String, (u32, TcpCluster)> = BTreeMap::new();
    let mut tls: BTreeMap<String, (u32, Vec<FilterChain>)> = BTreeMap::new();
    for svc in ctx.services_for_proxy(proxy) {
        for port in &svc.ports {
            if port.protocol.is_http() {
                http_ports.insert(port.number);
            } else if port.protocol.is_tls() {
                let vip = svc.addresses.first();
                let bind = vip.cloned().unwrap_or("0.0.0.0".into());
                let chains = tls_chains(ctx, proxy, svc, port, vip.is_none());
                let entry = tls
                    .entry(format!("{bind}_{}", port.number))
                    .or_insert_with(|| (port.number, Vec::new()));
                add_chains(&mut entry.1, chains, &svc.hostname);
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
    let traced = super::tracing::hcm_tracing(ctx, proxy, Side::Outbound);
    for port in &http_ports {
        let mut chain = http_chain(
            &format!("outbound_0.0.0.0_{port}"),
            rds(&port.to_string()),
            traced.clone(),
        );
        mixer::apply(ctx, proxy, &mut chain, Side::Outbound, None);
        out.push(unbound(format!("0.0.0.0_{port}"), "0.0.0.0", *port, chain));
    }
    for (name, (port, cluster)) in tcp {
        let (ip, _) = name.split_once('_').unwrap_or(("0.0.0.0", ""));
        if ip == "0.0.0.0" && http_ports.contains(&port) {
            tracing::debug!(%name, "TCP service shares a port with HTTP services; skipped");
            continue;
        }
        let mut chain = tcp_chain_to(&format!("outbound|{port}||{name}"), cluster);
        mixer::apply_tcp(ctx, proxy, &mut chain, Side::Outbound, None);
        out.push(unbound(name.clone(), ip, port, chain));
    }

    for (name, (port, chains)) in tls {
        let (ip, _) = name.split_once('_').unwrap_or(("0.0.0.0", ""));
        if ip == "0.0.0.0" && http_ports.contains(&port) {
            tracing::debug!(%name, "TLS service shares a port with HTTP services; skipped");
            continue;
        }
        let mut listener = unbound(name.clone(), ip, port, FilterChain::default());
        listener.filter_chains = chains;
        for chain in &mut listener.filter_chains {
            mixer::apply_tcp(ctx, proxy, chain, Side::Outbound, None);
        }
        listener.listener_filters = vec![tls_inspector()];
        out.push(listener);
    }

    let mut out: Vec<(Listener, u8)> = out.into_iter().map(|l| (l, 0)).collect();
    let proxy_port = http_proxy_port(ctx, proxy);
    if proxy_port > 0 {
        let mut chain = http_chain(
            &format!("outbound_127.0.0.1_{proxy_port}"),
            rds(HTTP_PROXY_ROUTE),
            traced,
        );
        allow_absolute_urls(&mut chain);
        mixer::apply(ctx, proxy, &mut chain, Side::Outbound, None);
        let listener = Listener {
            name: format!("127.0.0.1_{proxy_port}"),
            address: Some(socket_address("127.0.0.1", proxy_port)),
            filter_chains: vec![chain],
            ..Default::default()
        };
        out.push((listener, 2));
    }
    // Istio's direction of a sidecar's outbound listeners: Envoy's spans there are clients.
    for (l, _) in &mut out {
        l.traffic_direction = TrafficDirection::Outbound as i32;
    }
    rank_all(out)
}

/// The listeners of `proxy` alone: inbound ones for its service instances and its Sidecar
/// resource's ingress listeners, each port's `IP_PORT` (unbound, reached through
/// virtualOutbound's handoff when inbound traffic is redirected to 15001 as in Istio 1.0),
/// and, when the proxy's traffic is captured, the same chains in `virtualInbound`. Their
/// authentication and authorization filters read its labels; none for a gateway.
pub fn own_listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<Ranked> {
    if proxy.node_type == NodeType::Router {
        return Vec::new();
    }
    let mut out = Vec::new();
    let inbound = inbound_listeners(ctx, proxy);
    if proxy.captures_traffic() {
        let captured: Vec<(u32, &Listener)> = inbound
            .iter()
            .filter(|i| i.captured)
            .map(|i| (i.port, &i.listener))
            .collect();
        out.push((virtual_inbound(ctx, proxy, &captured), 1));
    }
    out.extend(inbound.into_iter().map(|i| {
        let mut l = i.listener;
        // Envoy's spans on inbound listeners are the server side.
        l.traffic_direction = TrafficDirection::Inbound as i32;
        (l, 1)
    }));
    rank_all(out)
}

/// The listeners of the Sidecar resource's egress listeners that name a port: for TLS ports,
/// SNI-matched chains for the listener's hosts on that port, bound to `bind` (default
/// `0.0.0.0`) when `captureMode` is NONE (or the proxy's traffic is not captured). Other
/// protocols are served by the per-port outbound listeners.
fn egress_listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<Listener> {
    let Some(sc) = ctx.sidecar_for(proxy) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for eg in &sc.spec.egress {
        let Some(port) = &eg.port else { continue };
        let protocol = crate::model::Protocol::parse(port.protocol.as_deref().unwrap_or("TCP"));
        if !protocol.is_tls() {
            continue;
        }
        let hosts: Vec<(String, String)> = eg
            .hosts
            .iter()
            .filter_map(|h| {
                let (ns, host) = h.split_once('/')?;
                let ns = if ns == "." {
                    proxy.namespace.as_str()
                } else {
                    ns
                };
                Some((ns.to_string(), host.to_string()))
            })
            .collect();
        let mut chains = Vec::new();
        for svc in ctx.services_for_proxy(proxy) {
            let picked = hosts.iter().any(|(ns, host)| {
                ns != "~"
                    && (ns == "*" || *ns == svc.namespace)
                    && (host == "*"
                        || crate::model::push_context::host_matches(host, &svc.hostname))
            });
            let Some(svc_port) = svc.port(port.number).filter(|p| p.protocol.is_tls()) else {
                continue;
            };
            if picked {
                let more = tls_chains(ctx, proxy, svc, svc_port, true);
                add_chains(&mut chains, more, &svc.hostname);
            }
        }
        if chains.is_empty() {
            continue;
        }
        let bind = eg.bind.clone().unwrap_or_else(|| "0.0.0.0".into());
        let mut listener = unbound(
            format!("{bind}_{}", port.number),
            &bind,
            port.number,
            FilterChain::default(),
        );
        listener.filter_chains = chains;
        for chain in &mut listener.filter_chains {
            mixer::apply_tcp(ctx, proxy, chain, Side::Outbound, None);
        }
        listener.listener_filters = vec![tls_inspector()];
        if !proxy.captures_traffic()
            || eg.capture_mode == Some(mesh_proto::networking::CaptureMode::None)
        {
            listener.bind_to_port = None;
        }
        out.push(listener);
    }
    out
}

/// An inbound listener and the workload port it serves.
struct InboundListener {
    listener: Listener,
    port: u32,
    /// Whether its traffic is captured (its chains go into virtualInbound).
    captured: bool,
}

/// The inbound listeners of `proxy`: those of its Sidecar resource's ingress listeners (bound
/// when the proxy's traffic is not captured or the ingress says `captureMode: NONE`, else
/// unbound, forwarding to the `defaultEndpoint`), then one per service instance of the proxy
/// itself (`IP_PORT`, unbound), HTTP or TCP by the service port's protocol, with Mixer and
/// the PeerAuthentication's mTLS.
fn inbound_listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<InboundListener> {
    let mut out = Vec::new();
    for ing in super::cds::sidecar_ingress(ctx, proxy) {
        let protocol = crate::model::Protocol::parse(ing.port.protocol.as_deref().unwrap_or("TCP"));
        let name = format!("{}_{}", ing.bind, ing.port.number);
        // The service this port serves: the proxy's instance listening on it (Istio
        // matches the ingress port against the endpoint port).
        let service = proxy
            .ips
            .iter()
            .flat_map(|ip| ctx.registry.instances_at(ip))
            .find(|(_, _, ep)| ep.port == ing.port.number)
            .map(|(svc, _, _)| svc.as_ref());
        let chain = if protocol.is_http() {
            let mut chain = inbound_http_chain(ctx, proxy, &name, &ing.cluster, service);
            super::authn::apply(ctx, proxy, &mut chain, ing.port.number);
            chain
        } else {
            let mut chain = tcp_chain(&ing.cluster, &ing.cluster);
            mixer::apply_tcp(ctx, proxy, &mut chain, Side::Inbound, service);
            super::authz::apply_tcp(ctx, proxy, &mut chain, service);
            chain
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
        super::mtls::secure_inbound(ctx, proxy, &mut listener, ing.port.number);
        out.push(InboundListener {
            listener,
            port: ing.port.number,
            captured: !capture_none,
        });
    }

    // The proxy's own service instances.
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
            let mut chain = inbound_http_chain(ctx, proxy, &name, &cluster, Some(svc));
            super::authn::apply(ctx, proxy, &mut chain, ep.port);
            chain
        } else {
            let mut chain = tcp_chain(&cluster, &cluster);
            mixer::apply_tcp(ctx, proxy, &mut chain, Side::Inbound, Some(svc));
            super::authz::apply_tcp(ctx, proxy, &mut chain, Some(svc));
            chain
        };
        let mut listener = unbound(name, &ep.address, ep.port, chain);
        super::mtls::secure_inbound(ctx, proxy, &mut listener, ep.port);
        out.push(InboundListener {
            listener,
            port: ep.port,
            captured: true,
        });
    }
    out
}

/// The port of `virtualOutbound`: the mesh's `proxyListenPort` (15001).
pub fn virtual_outbound_port(ctx: &PushContext) -> u32 {
    ctx.mesh.proxy_listen_port
}

/// The port of `virtualInbound`: the mesh's `proxyInboundListenPort` (15006).
pub fn virtual_inbound_port(ctx: &PushContext) -> u32 {
    ctx.mesh.proxy_inbound_listen_port
}

/// Istio's `virtualInbound` on 0.0.0.0:15006, where iptables redirects captured inbound
/// connections. The `original_dst` listener filter gives each its destination before the
/// REDIRECT (`SO_ORIGINAL_DST`), and the chains match its port: for each of `inbound`
/// (workload port, listener), that listener's chains (the first listener of a port wins);
/// a blackhole for the listener's own port (a connection made to 15006 itself would
/// otherwise pass through to 15006 again); and passthrough chains for every other port, to
/// `InboundPassthroughClusterIpv4` with the workload's PeerAuthentication. The TLS inspector
/// runs when a chain matches on TLS (PERMISSIVE mode). No chain matches on an application
/// protocol, so there is no HTTP inspector. `transparent` in `TPROXY` mode.
fn virtual_inbound(ctx: &PushContext, proxy: &Proxy, inbound: &[(u32, &Listener)]) -> Listener {
    let own_port = virtual_inbound_port(ctx);
    let mut chains = Vec::new();
    let mut ports = BTreeSet::from([own_port]);
    let mut inspect_tls = false;
    for (port, listener) in inbound {
        if !ports.insert(*port) {
            tracing::debug!(
                port,
                listener = %listener.name,
                "virtualInbound: port already served by an earlier inbound listener"
            );
            continue;
        }
        inspect_tls |= has_tls_inspector(listener);
        for chain in &listener.filter_chains {
            let mut chain = chain.clone();
            chain
                .filter_chain_match
                .get_or_insert_with(Default::default)
                .destination_port = Some(UInt32Value { value: *port });
            chains.push(chain);
        }
    }
    let mut black_hole = tcp_chain(BLACK_HOLE, BLACK_HOLE);
    black_hole.filter_chain_match = Some(FilterChainMatch {
        destination_port: Some(UInt32Value { value: own_port }),
        ..Default::default()
    });
    chains.push(black_hole);
    // Passthrough: the workload-wide mode (no port-level setting applies to port 0).
    let mut passthrough = Listener {
        filter_chains: vec![tcp_chain(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH)],
        ..Default::default()
    };
    for chain in &mut passthrough.filter_chains {
        super::authz::apply_tcp(ctx, proxy, chain, None);
    }
    super::mtls::secure_inbound(ctx, proxy, &mut passthrough, 0);
    inspect_tls |= has_tls_inspector(&passthrough);
    chains.extend(passthrough.filter_chains);

    let mut listener_filters = vec![original_dst()];
    if inspect_tls {
        listener_filters.push(tls_inspector());
    }
    Listener {
        name: VIRTUAL_INBOUND.into(),
        address: Some(socket_address("0.0.0.0", own_port)),
        listener_filters,
        filter_chains: chains,
        traffic_direction: TrafficDirection::Inbound as i32,
        transparent: (proxy.interception_mode() == InterceptionMode::Tproxy)
            .then_some(BoolValue { value: true }),
        ..Default::default()
    }
}

fn has_tls_inspector(listener: &Listener) -> bool {
    listener
        .listener_filters
        .iter()
        .any(|f| f.name == TLS_INSPECTOR)
}

fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

fn virtual_outbound(ctx: &PushContext, proxy: &Proxy) -> Listener {
    let cluster = match ctx.outbound_mode(proxy) {
        OutboundMode::AllowAny => PASSTHROUGH,
        OutboundMode::RegistryOnly => BLACK_HOLE,
    };
    let port = virtual_outbound_port(ctx);
    // A connection made to the listener's own port has no other destination: passed
    // through, it would come back here.
    let mut black_hole = tcp_chain(BLACK_HOLE, BLACK_HOLE);
    black_hole.filter_chain_match = Some(FilterChainMatch {
        destination_port: Some(UInt32Value { value: port }),
        ..Default::default()
    });
    Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: Some(socket_address("0.0.0.0", port)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![black_hole, tcp_chain(cluster, cluster)],
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

/// An HTTP connection manager's chain; `tracing` from [`super::tracing::hcm_tracing`].
pub(super) fn http_chain(
    stat_prefix: &str,
    routes: RouteSpecifier,
    tracing: Option<HcmTracing>,
) -> FilterChain {
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
        tracing,
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
    weighted_destinations(ctx, &vs.namespace, &route.route, port.number, default)
}

/// The (weighted) clusters of an L4 route's destinations; `default` when none has weight.
fn weighted_destinations(
    ctx: &PushContext,
    namespace: &str,
    destinations: &[mesh_proto::networking::RouteDestination],
    port: u32,
    default: String,
) -> TcpCluster {
    let clusters: Vec<(String, u32)> = destinations
        .iter()
        .map(|d| {
            let host = ctx.resolve(&d.destination.host, namespace);
            let dest_port = d
                .destination
                .port
                .as_ref()
                .and_then(|p| p.number)
                .unwrap_or(port);
            let subset = d.destination.subset.as_deref().unwrap_or("");
            let weight = d
                .weight
                .unwrap_or(if destinations.len() == 1 { 100 } else { 0 });
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

/// The filter chains of a TLS (or HTTPS) service port on an outbound listener, matched by
/// SNI as Istio does: one per `tls` route of the service's VirtualService (its `sniHosts`,
/// to its weighted destinations), else one for the service's own hostname, to its cluster.
/// `shared` listeners (no VIP) never get a chain without SNI, which would take every host.
fn tls_chains(
    ctx: &PushContext,
    proxy: &Proxy,
    svc: &crate::model::Service,
    port: &crate::model::Port,
    shared: bool,
) -> Vec<FilterChain> {
    let default = outbound_cluster_name(port.number, "", &svc.hostname);
    let mut out = Vec::new();
    if let Some(vs) = ctx.virtual_service(&proxy.namespace, &svc.hostname) {
        for route in &vs.spec.tls {
            let snis: Vec<String> = route
                .matches
                .iter()
                .filter(|m| m.port.is_none_or(|p| p == port.number))
                .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                .filter(|m| {
                    m.source_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
                })
                .flat_map(|m| m.sni_hosts.iter().cloned())
                .collect();
            if snis.is_empty() {
                continue;
            }
            let dest = weighted_destinations(
                ctx,
                &vs.namespace,
                &route.route,
                port.number,
                default.clone(),
            );
            let mut chain =
                tcp_chain_to(&format!("outbound|{}||{}", port.number, svc.hostname), dest);
            chain.filter_chain_match = Some(FilterChainMatch {
                server_names: snis,
                ..Default::default()
            });
            out.push(chain);
        }
    }
    if out.is_empty() {
        let mut chain = tcp_chain(&default, &default);
        if shared {
            chain.filter_chain_match = Some(FilterChainMatch {
                server_names: vec![svc.hostname.clone()],
                ..Default::default()
            });
        }
        out.push(chain);
    }
    out
}

/// Adds `chains` (of service `origin`) to a listener's, leaving out the server names another
/// chain already matches (Envoy refuses duplicates; the first wins).
fn add_chains(into: &mut Vec<FilterChain>, chains: Vec<FilterChain>, origin: &str) {
    let mut unique = UniqueChains::default();
    for c in into.drain(..).chain(chains) {
        unique.add(c, origin);
    }
    *into = unique.into_chains();
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
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

/// The HTTP chain of an inbound listener `name` forwarding to `cluster`, with Mixer's check
/// and report when the mesh has Mixer (`service` is what the workload serves there).
fn inbound_http_chain(
    ctx: &PushContext,
    proxy: &Proxy,
    name: &str,
    cluster: &str,
    service: Option<&crate::model::Service>,
) -> FilterChain {
    let mut routes = inbound_routes(cluster);
    if let Some(svc) = service {
        let mut extra = vec![
            ("context.reporter.kind", "inbound".to_string()),
            ("destination.namespace", proxy.namespace.clone()),
        ];
        // The workload checked: Mixer's kubernetesenv finds its pod (labels, workload) by it.
        extra.extend(mixer::pod_uid(proxy).map(|uid| ("destination.uid", uid)));
        if let Some(cfg) = mixer::check_settings(ctx, svc, &extra) {
            for vh in &mut routes.virtual_hosts {
                for r in &mut vh.routes {
                    r.typed_per_filter_config
                        .insert(mixer::EXT_AUTHZ_FILTER.to_string(), cfg.clone());
                }
            }
        }
    }
    let mut chain = http_chain(
        &format!("inbound_{name}"),
        RouteSpecifier::RouteConfig(routes),
        super::tracing::hcm_tracing(ctx, proxy, Side::Inbound),
    );
    mixer::apply(ctx, proxy, &mut chain, Side::Inbound, service);
    super::authz::apply_http(ctx, proxy, &mut chain, service);
    chain
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
