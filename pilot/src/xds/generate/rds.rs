//! RDS: route configurations. `PORT` holds a virtual host per HTTP service on that port (with
//! Istio's short-name domains); `http_proxy` holds every HTTP service, by `host:port`.
//!
//! Routes come from the VirtualService that names the host (matches, weighted destinations,
//! timeouts), or default to the service's own cluster.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster, header_matcher::HeaderMatchSpecifier, retry_policy::RetryHostPredicate,
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use mesh_proto::networking::{HttpMatchRequest, HttpRoute, StringMatch};

use super::cds::{BLACK_HOLE, PASSTHROUGH};
use super::lds::{HTTP_PROXY_ROUTE, http_proxy_port};
use super::util::duration;
use crate::mesh::OutboundMode;
use crate::model::service::outbound_cluster_name;
use crate::model::{Port, Proxy, PushContext, Service};
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
    for svc in ctx.services_for(&proxy.namespace) {
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
    if !http_proxy {
        virtual_hosts.push(match ctx.mesh.outbound_traffic_policy.mode {
            OutboundMode::AllowAny => catch_all("allow_any", PASSTHROUGH),
            OutboundMode::RegistryOnly => catch_all("block_all", BLACK_HOLE),
        });
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

fn catch_all(name: &str, cluster: &str) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: name.into(),
            r#match: Some(prefix("/")),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                timeout: Some(duration(std::time::Duration::ZERO)),
                ..Default::default()
            })),
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
    let default = || Route {
        name: "default".into(),
        r#match: Some(prefix("/")),
        action: Some(Action::Route(route_action(
            ClusterSpecifier::Cluster(outbound_cluster_name(port.number, "", &svc.hostname)),
            None,
        ))),
        ..Default::default()
    };
    let Some(vs) = ctx.virtual_service(&proxy.namespace, &svc.hostname) else {
        return vec![default()];
    };
    let mut routes = Vec::new();
    for (i, http) in vs.spec.http.iter().enumerate() {
        let Some(action) = http_action(ctx, &vs.namespace, http, port) else {
            continue;
        };
        let name = http
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}.{i}", vs.name, vs.namespace));
        let matches: Vec<RouteMatch> = if http.matches.is_empty() {
            vec![prefix("/")]
        } else {
            http.matches
                .iter()
                .filter(|m| m.port.is_none_or(|p| p == port.number))
                .filter_map(|m| route_match(m, proxy))
                .collect()
        };
        for m in matches {
            routes.push(Route {
                name: name.clone(),
                r#match: Some(m),
                action: Some(Action::Route(action.clone())),
                ..Default::default()
            });
        }
    }
    if routes.is_empty() {
        routes.push(default());
    }
    routes
}

fn http_action(
    ctx: &PushContext,
    namespace: &str,
    http: &HttpRoute,
    port: &Port,
) -> Option<RouteAction> {
    let mut clusters = Vec::new();
    for dest in &http.route {
        let host = ctx.resolve(&dest.destination.host, namespace);
        let dest_port = dest
            .destination
            .port
            .as_ref()
            .and_then(|p| p.number)
            .or_else(|| {
                let svc = ctx.registry.service(&host)?;
                match svc.ports.as_slice() {
                    [only] => Some(only.number),
                    _ => svc.port(port.number).map(|p| p.number),
                }
            })
            .unwrap_or(port.number);
        let subset = dest.destination.subset.as_deref().unwrap_or("");
        let weight = dest
            .weight
            .unwrap_or(if http.route.len() == 1 { 100 } else { 0 });
        if weight == 0 && http.route.len() > 1 {
            continue;
        }
        clusters.push((outbound_cluster_name(dest_port, subset, &host), weight));
    }
    let spec = match clusters.len() {
        0 => return None,
        1 => ClusterSpecifier::Cluster(clusters.remove(0).0),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let timeout = http.timeout.as_ref().map(|t| t.as_std());
    Some(route_action(spec, timeout))
}

fn route_action(spec: ClusterSpecifier, timeout: Option<std::time::Duration>) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(spec),
        // Istio: no route timeout unless a VirtualService sets one.
        timeout: Some(duration(timeout.unwrap_or(std::time::Duration::ZERO))),
        retry_policy: Some(default_retry()),
        ..Default::default()
    }
}

/// Istio's default retry policy: two retries on connection failures and refused streams.
fn default_retry() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    crate::xds::resource::any(
                        &envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate::default(),
                    ),
                ),
            ),
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        ..Default::default()
    }
}

fn route_match(m: &HttpMatchRequest, proxy: &Proxy) -> Option<RouteMatch> {
    // sourceLabels: the match applies only to proxies carrying those labels.
    if !m
        .source_labels
        .iter()
        .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
    {
        return None;
    }
    let case_sensitive = !m.ignore_uri_case.unwrap_or(false);
    let path_specifier = match &m.uri {
        Some(StringMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(r)) => PathSpecifier::SafeRegex(regex(r)),
        Some(StringMatch::Any) | None => PathSpecifier::Prefix("/".into()),
    };
    let mut headers = Vec::new();
    for (name, sm) in &m.headers {
        headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        headers.push(header_matcher(name, sm, true));
    }
    for (pseudo, sm) in [
        (":scheme", &m.scheme),
        (":method", &m.method),
        (":authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo, sm, false));
        }
    }
    Some(RouteMatch {
        path_specifier: Some(path_specifier),
        case_sensitive: Some(BoolValue {
            value: case_sensitive,
        }),
        headers,
        ..Default::default()
    })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    let pattern = match sm {
        StringMatch::Exact(v) => Some(MatchPattern::Exact(v.clone())),
        StringMatch::Prefix(v) => Some(MatchPattern::Prefix(v.clone())),
        StringMatch::Regex(v) => Some(MatchPattern::SafeRegex(regex(v))),
        StringMatch::Any => None,
    };
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(match pattern {
            Some(p) => HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(p),
                ..Default::default()
            }),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}
