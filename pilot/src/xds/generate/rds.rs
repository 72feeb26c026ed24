//! RDS: route configurations. `PORT` holds a virtual host per HTTP service on that port (with
//! Istio's short-name domains); `http_proxy` holds every HTTP service, by `host:port`.
//!
//! Routes come from the VirtualService that names the host (see [`super::route`]), or default
//! to the service's own cluster.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::cds::{BLACK_HOLE, PASSTHROUGH};
use super::lds::{HTTP_PROXY_ROUTE, http_proxy_port};
use super::util::duration;
use super::{gateway, route};
use crate::mesh::OutboundMode;
use crate::model::{NodeType, Port, Proxy, PushContext, Service};
use crate::xds::resource::{Resource, SharedResource};

/// The route configurations named `names` that exist for `proxy`.
pub fn routes(ctx: &PushContext, proxy: &Proxy, names: &BTreeSet<String>) -> Vec<SharedResource> {
    names
        .iter()
        .filter_map(|name| route_config(ctx, proxy, name))
        .map(|rc| Resource::encode(rc.name.clone(), &rc))
        .collect()
}

/// Every route name a proxy's listeners refer to (used to know what exists).
pub fn route_config(ctx: &PushContext, proxy: &Proxy, name: &str) -> Option<RouteConfiguration> {
    if proxy.node_type == NodeType::Router {
        return gateway::route_config(ctx, proxy, name);
    }
    let http_proxy = name == HTTP_PROXY_ROUTE;
    let port: Option<u32> = if http_proxy {
        if http_proxy_port(ctx, proxy) == 0 {
            return None;
        }
        None
    } else {
        Some(name.parse().ok()?)
    };
    let mut virtual_hosts = Vec::new();
    for svc in ctx.services_for_proxy(proxy) {
        for p in svc.ports.iter().filter(|p| p.protocol.is_http()) {
            if port.is_some_and(|n| n != p.number) {
                continue;
            }
            let domains = if http_proxy {
                proxy_domains(svc, p)
            } else {
                domains(svc, p, proxy)
            };
            virtual_hosts.push(VirtualHost {
                name: format!("{}:{}", svc.hostname, p.number),
                domains,
                routes: service_routes(ctx, proxy, svc, p),
                ..Default::default()
            });
        }
    }
    if port.is_some() && virtual_hosts.is_empty() {
        return None;
    }
    match (http_proxy, ctx.outbound_mode(proxy)) {
        (false, OutboundMode::AllowAny) => virtual_hosts.push(catch_all("allow_any", PASSTHROUGH)),
        // REGISTRY_ONLY: hosts outside the registry (or the Sidecar's scope) hit the black hole
        // (502), on the HTTP proxy port too. ALLOW_ANY has no destination to pass through to
        // there (the client named a host, not an address): those get a 404.
        (_, OutboundMode::RegistryOnly) => virtual_hosts.push(catch_all("block_all", BLACK_HOLE)),
        (true, OutboundMode::AllowAny) => {}
    }
    dedup_domains(&mut virtual_hosts);
    Some(RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    })
}

/// Istio's domains of a virtual host, for a proxy in `proxy.namespace`: the FQDN, the shorter
/// names that resolve from the proxy's namespace, and the service's VIPs; each also with
/// `:PORT`.
fn domains(svc: &Service, port: &Port, proxy: &Proxy) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let k8s_suffix = ".svc.cluster.local";
    if let Some(short) = svc.hostname.strip_suffix(k8s_suffix) {
        // name.ns -> name.ns, name.ns.svc, name.ns.svc.cluster; and name in the same namespace.
        names.push(format!("{short}.svc.cluster"));
        names.push(format!("{short}.svc"));
        names.push(short.to_string());
        if let Some((name, ns)) = short.split_once('.')
            && ns == proxy.namespace
        {
            names.push(name.to_string());
        }
    }
    names.extend(svc.addresses.iter().cloned());
    with_ports(names, port.number)
}

/// Domains for the HTTP proxy listener: only forms that carry the port (and bare forms for
/// port 80), so one route table can hold every port without clashes.
fn proxy_domains(svc: &Service, port: &Port) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    if let Some(short) = svc.hostname.strip_suffix(".svc.cluster.local") {
        names.push(short.to_string());
        if let Some((name, _)) = short.split_once('.') {
            names.push(name.to_string());
        }
    }
    names.extend(svc.addresses.iter().cloned());
    let mut out: Vec<String> = names
        .iter()
        .map(|n| format!("{n}:{}", port.number))
        .collect();
    if port.number == 80 {
        out.extend(names);
    }
    out
}

fn with_ports(names: Vec<String>, port: u32) -> Vec<String> {
    let mut out = Vec::with_capacity(names.len() * 2);
    for n in names {
        out.push(format!("{n}:{port}"));
        out.push(n);
    }
    out
}

/// Envoy refuses a route table where two virtual hosts share a domain: the first keeps it.
fn dedup_domains(vhosts: &mut [VirtualHost]) {
    let mut seen = BTreeSet::new();
    for vh in vhosts.iter_mut() {
        vh.domains.retain(|d| seen.insert(d.clone()));
    }
}

/// The `*` virtual host of the outbound policy: ALLOW_ANY passes through to the original
/// destination; REGISTRY_ONLY (`block_all`) answers 502 itself, as Istio does.
fn catch_all(name: &str, cluster: &str) -> VirtualHost {
    let action = if cluster == BLACK_HOLE {
        Action::DirectResponse(DirectResponseAction {
            status: 502,
            ..Default::default()
        })
    } else {
        Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            timeout: Some(duration(std::time::Duration::ZERO)),
            ..Default::default()
        })
    };
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(prefix("/")),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

/// The routes of one service port: from its VirtualService, else the default route.
fn service_routes(ctx: &PushContext, proxy: &Proxy, svc: &Service, port: &Port) -> Vec<Route> {
    let routes = match ctx.virtual_service(&proxy.namespace, &svc.hostname) {
        Some(vs) => route::virtual_service_routes(
            ctx,
            proxy,
            &vs.namespace,
            &vs.name,
            &vs.spec,
            port,
            "mesh",
        ),
        None => Vec::new(),
    };
    if routes.is_empty() {
        return vec![route::default_route(ctx, proxy, svc, port)];
    }
    routes
}
