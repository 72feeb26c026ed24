//! One VirtualService HTTP route in, Envoy routes out: matches, weighted destinations,
//! redirects, direct responses, rewrites, timeouts, retries, faults, mirrors, CORS, header
//! operations and delegation, as Istio translates them.
//!
//! Used by RDS for sidecars and by the gateway generator; the caller decides which virtual
//! service applies and which port the routes are for.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, redirect_action, retry_policy,
    route::Action, route_action, route_match::PathSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay as EnvoyFaultDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as EnvoyFaultAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use mesh_proto::networking::{
    CorsPolicy, Destination, Headers, HttpFaultInjection, HttpMatchRequest, HttpRetry, HttpRoute,
    Percent, StringMatch, VirtualService,
};

use super::cds::hash_policy;
use super::util::duration;
use crate::model::push_context::gateway_name;
use crate::model::service::outbound_cluster_name;
use crate::model::{Port, Proxy, PushContext, Service};
use crate::xds::resource::any;

/// Name of Envoy's fault filter (per-route config key).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Name of Envoy's CORS filter (per-route config key).
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Istio's default `retryOn`.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// The Envoy routes of `vs` for requests to `port` of a service, for `proxy` acting as
/// `gateway` (`mesh` for sidecars, else the gateway's `namespace/name`). Routes whose
/// destinations all fail to resolve are left out; delegated routes are expanded in place.
pub fn virtual_service_routes(
    ctx: &PushContext,
    proxy: &Proxy,
    vs_namespace: &str,
    vs_name: &str,
    vs: &VirtualService,
    port: &Port,
    gateway: &str,
) -> Vec<Route> {
    let target = Target {
        proxy,
        port,
        gateway,
    };
    let mut routes = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let name = http
            .name
            .clone()
            .unwrap_or_else(|| format!("{vs_name}.{vs_namespace}.{i}"));
        match &http.delegate {
            Some(d) => {
                let ns = d.namespace.as_deref().unwrap_or(vs_namespace);
                let Some(child) = ctx.delegate(ns, &d.name, vs_namespace) else {
                    tracing::debug!(delegate = %d.name, "delegate VirtualService not found");
                    continue;
                };
                for (j, ch) in child.spec.http.iter().enumerate() {
                    let Some(merged) = merge_delegate(http, ch) else {
                        continue;
                    };
                    let name = ch.name.clone().unwrap_or_else(|| {
                        format!("{name}.{}.{}.{j}", child.name, child.namespace)
                    });
                    routes.extend(http_routes(ctx, &target, &child.namespace, &merged, &name));
                }
            }
            None => routes.extend(http_routes(ctx, &target, vs_namespace, http, &name)),
        }
    }
    routes
}

/// The default route of a service port (no VirtualService): everything to its cluster.
pub fn default_route(ctx: &PushContext, proxy: &Proxy, svc: &Service, port: &Port) -> Route {
    let cluster = outbound_cluster_name(port.number, "", &svc.hostname);
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
        timeout: Some(duration(Duration::ZERO)),
        retry_policy: Some(retry(None)),
        ..Default::default()
    };
    action.hash_policy = hash_policy(ctx, proxy, svc, "", port.number);
    Route {
        name: "default".into(),
        r#match: Some(prefix("/")),
        action: Some(Action::Route(action)),
        ..Default::default()
    }
}

/// Who the routes are for: a proxy, a port, and the gateway the proxy acts as.
struct Target<'a> {
    proxy: &'a Proxy,
    port: &'a Port,
    gateway: &'a str,
}

/// The routes of one HTTP route: one Envoy route per match (the same action each).
fn http_routes(
    ctx: &PushContext,
    target: &Target<'_>,
    namespace: &str,
    http: &HttpRoute,
    name: &str,
) -> Vec<Route> {
    let (proxy, port) = (target.proxy, target.port);
    let Some(action) = action(ctx, proxy, namespace, http, port) else {
        return Vec::new();
    };
    let matches: Vec<RouteMatch> = if http.matches.is_empty() {
        vec![prefix("/")]
    } else {
        http.matches
            .iter()
            .filter(|m| m.port.is_none_or(|p| p == port.number))
            .filter(|m| {
                m.gateways.is_empty()
                    || m.gateways.iter().any(|g| {
                        if target.gateway == "mesh" {
                            g == "mesh"
                        } else {
                            g != "mesh" && gateway_name(g, namespace) == target.gateway
                        }
                    })
            })
            .filter_map(|m| route_match(m, proxy))
            .collect()
    };
    let mut template = Route {
        name: name.to_string(),
        action: Some(action),
        ..Default::default()
    };
    apply_headers(&mut template, http);
    template.typed_per_filter_config = per_filter_config(http);
    matches
        .into_iter()
        .map(|m| {
            let mut r = template.clone();
            r.r#match = Some(m);
            r
        })
        .collect()
}

/// What a route does: redirect, answer directly, or forward.
fn action(
    ctx: &PushContext,
    proxy: &Proxy,
    namespace: &str,
    http: &HttpRoute,
    port: &Port,
) -> Option<Action> {
    if let Some(r) = &http.redirect {
        let response_code = match r.redirect_code.unwrap_or(301) {
            302 => redirect_action::RedirectResponseCode::Found,
            303 => redirect_action::RedirectResponseCode::SeeOther,
            307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => redirect_action::RedirectResponseCode::PermanentRedirect,
            _ => redirect_action::RedirectResponseCode::MovedPermanently,
        };
        let path = match (&r.uri, &r.prefix_rewrite) {
            (Some(uri), _) => Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                uri.clone(),
            )),
            (None, Some(p)) => Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
                p.clone(),
            )),
            (None, None) => None,
        };
        return Some(Action::Redirect(RedirectAction {
            host_redirect: r.authority.clone().unwrap_or_default(),
            port_redirect: r.port.unwrap_or(0),
            response_code: response_code as i32,
            scheme_rewrite_specifier: r
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: path,
            ..Default::default()
        }));
    }
    if let Some(d) = &http.direct_response {
        let body = d.body.as_ref().and_then(|b| {
            let specifier = match (&b.string, &b.bytes) {
                (Some(s), _) => data_source::Specifier::InlineString(s.clone()),
                (None, Some(b64)) => data_source::Specifier::InlineBytes(base64_decode(b64)?),
                (None, None) => return None,
            };
            Some(DataSource {
                specifier: Some(specifier),
                ..Default::default()
            })
        });
        return Some(Action::DirectResponse(DirectResponseAction {
            status: d.status,
            body,
            ..Default::default()
        }));
    }
    forward(ctx, proxy, namespace, http, port).map(Action::Route)
}

/// The forwarding action of a route, or `None` when it has no destination.
fn forward(
    ctx: &PushContext,
    proxy: &Proxy,
    namespace: &str,
    http: &HttpRoute,
    port: &Port,
) -> Option<RouteAction> {
    let mut clusters = Vec::new();
    let mut hash = None;
    let mut hash_consistent = true;
    for dest in &http.route {
        let weight = dest
            .weight
            .unwrap_or(if http.route.len() == 1 { 100 } else { 0 });
        if weight == 0 && http.route.len() > 1 {
            continue;
        }
        let (cluster, svc, dest_port) =
            destination_cluster(ctx, namespace, &dest.destination, port);
        let subset = dest.destination.subset.as_deref().unwrap_or("");
        let policy = svc
            .map(|s| hash_policy(ctx, proxy, s, subset, dest_port))
            .unwrap_or_default();
        match &hash {
            None => hash = Some(policy),
            Some(h) if *h != policy => hash_consistent = false,
            _ => {}
        }
        let mut cw = ClusterWeight {
            name: cluster,
            weight: Some(UInt32Value { value: weight }),
            ..Default::default()
        };
        let ops = destination_header_ops(dest);
        cw.request_headers_to_add = ops.request_add;
        cw.request_headers_to_remove = ops.request_remove;
        cw.response_headers_to_add = ops.response_add;
        cw.response_headers_to_remove = ops.response_remove;
        clusters.push(cw);
    }
    let spec = match clusters.len() {
        0 => return None,
        1 if clusters[0].request_headers_to_add.is_empty()
            && clusters[0].request_headers_to_remove.is_empty()
            && clusters[0].response_headers_to_add.is_empty()
            && clusters[0].response_headers_to_remove.is_empty() =>
        {
            route_action::ClusterSpecifier::Cluster(clusters.remove(0).name)
        }
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        }),
    };
    let mut action = RouteAction {
        cluster_specifier: Some(spec),
        // Istio: no route timeout unless the VirtualService sets one.
        timeout: Some(duration(
            http.timeout
                .as_ref()
                .map(|t| t.as_std())
                .unwrap_or(Duration::ZERO),
        )),
        retry_policy: http.retries.as_ref().map_or(Some(retry(None)), |r| {
            (r.attempts.unwrap_or(0) > 0).then(|| retry(Some(r)))
        }),
        ..Default::default()
    };
    if hash_consistent {
        action.hash_policy = hash.unwrap_or_default();
    }
    if let Some(rw) = &http.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&rr.pattern)),
                substitution: rr.rewrite.clone(),
            });
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(a.clone()),
            );
        }
    }
    action.request_mirror_policies = mirrors(ctx, namespace, http, port);
    Some(action)
}

/// The cluster of a destination, the service it names (when known) and its port.
fn destination_cluster<'a>(
    ctx: &'a PushContext,
    namespace: &str,
    dest: &Destination,
    port: &Port,
) -> (String, Option<&'a Service>, u32) {
    let host = ctx.resolve(&dest.host, namespace);
    let svc = ctx.registry.service(&host);
    let dest_port = dest
        .port
        .as_ref()
        .and_then(|p| {
            p.number
                .or_else(|| svc?.port_by_name(p.name.as_deref()?).map(|p| p.number))
        })
        .or_else(|| match svc?.ports.as_slice() {
            [only] => Some(only.number),
            _ => svc?.port(port.number).map(|p| p.number),
        })
        .unwrap_or(port.number);
    let subset = dest.subset.as_deref().unwrap_or("");
    (
        outbound_cluster_name(dest_port, subset, &host),
        svc.map(|s| s.as_ref()),
        dest_port,
    )
}

fn mirrors(
    ctx: &PushContext,
    namespace: &str,
    http: &HttpRoute,
    port: &Port,
) -> Vec<route_action::RequestMirrorPolicy> {
    let mut out = Vec::new();
    if let Some(m) = &http.mirror {
        let pct = http
            .mirror_percentage
            .map(|p| p.value)
            .or(http.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        out.push((m, pct));
    }
    for m in &http.mirrors {
        out.push((&m.destination, m.percentage.map_or(100.0, |p| p.value)));
    }
    out.into_iter()
        .filter(|(_, pct)| *pct > 0.0)
        .map(|(dest, pct)| route_action::RequestMirrorPolicy {
            cluster: destination_cluster(ctx, namespace, dest, port).0,
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(fraction(pct)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Istio's retry policy: its default (two attempts on connection failures and refused
/// streams) when a route sets none, else the route's, with numeric `retryOn` entries turned
/// into retriable status codes.
fn retry(r: Option<&HttpRetry>) -> RetryPolicy {
    let mut policy = RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: Some(UInt32Value { value: 2 }),
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        ..Default::default()
    };
    let mut previous_hosts = true;
    if let Some(r) = r {
        policy.num_retries = Some(UInt32Value {
            value: r.attempts.unwrap_or(2),
        });
        if let Some(on) = &r.retry_on {
            let mut kinds = Vec::new();
            let mut codes = Vec::new();
            for item in on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item.parse::<u32>() {
                    Ok(code) => codes.push(code),
                    Err(_) => kinds.push(item.to_string()),
                }
            }
            if !codes.is_empty() && !kinds.iter().any(|k| k == "retriable-status-codes") {
                kinds.push("retriable-status-codes".into());
            }
            policy.retry_on = kinds.join(",");
            policy.retriable_status_codes = codes;
        }
        if let Some(t) = &r.per_try_timeout {
            policy.per_try_timeout = Some(duration(t.as_std()));
        }
        if let Some(b) = &r.backoff {
            policy.retry_back_off = Some(retry_policy::RetryBackOff {
                base_interval: Some(duration(b.as_std())),
                ..Default::default()
            });
        }
        previous_hosts = r.retry_ignore_previous_hosts.unwrap_or(true);
    }
    if previous_hosts {
        policy.retry_host_predicate = vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                any(&envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate::default()),
            )),
        }];
    }
    policy
}

/// The per-route configuration of the fault and CORS filters.
fn per_filter_config(http: &HttpRoute) -> HashMap<String, Any> {
    let mut out = HashMap::new();
    if let Some(f) = http.fault.as_ref().and_then(fault) {
        out.insert(FAULT_FILTER.to_string(), any(&f));
    }
    if let Some(c) = &http.cors_policy {
        out.insert(CORS_FILTER.to_string(), any(&cors(c)));
    }
    out
}

fn fault(f: &HttpFaultInjection) -> Option<HttpFault> {
    let pct = |percentage: Option<Percent>, percent: Option<u32>| {
        percentage
            .map(|p| p.value)
            .or(percent.map(f64::from))
            .unwrap_or(100.0)
    };
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_ref()?;
        Some(EnvoyFaultDelay {
            percentage: Some(fraction(pct(d.percentage, d.percent))),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(fixed.as_std()))),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = match (a.http_status, &a.grpc_status) {
            (Some(code), _) => ErrorType::HttpStatus(code),
            (None, Some(g)) => ErrorType::GrpcStatus(grpc_code(g)?),
            (None, None) => return None,
        };
        Some(EnvoyFaultAbort {
            percentage: Some(fraction(pct(a.percentage, a.percent))),
            error_type: Some(error),
            ..Default::default()
        })
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

/// The numeric gRPC status of a code name (`UNAVAILABLE`) or number.
pub fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    name.parse::<u32>()
        .ok()
        .filter(|n| *n < 17)
        .or_else(|| CODES.iter().position(|c| *c == name).map(|p| p as u32))
}

fn cors(c: &CorsPolicy) -> EnvoyCors {
    let mut origins: Vec<StringMatcher> = c
        .allow_origin
        .iter()
        .map(|o| string_matcher(&StringMatch::Exact(o.clone())))
        .collect();
    origins.extend(c.allow_origins.iter().map(string_matcher));
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_ref()
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        forward_not_matching_preflights: c.unmatched_preflights.map(|u| BoolValue {
            value: !matches!(u, mesh_proto::networking::UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

// === header operations ===

#[derive(Default)]
struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
}

fn header_option(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn collect_ops(
    ops: &mut HeaderOps,
    headers: Option<&Headers>,
    legacy: [(&std::collections::BTreeMap<String, String>, &Vec<String>); 2],
) {
    let [(req_add, req_remove), (resp_add, resp_remove)] = legacy;
    for (k, v) in req_add {
        ops.request_add
            .push(header_option(k, v, HeaderAppendAction::AppendIfExistsOrAdd));
    }
    ops.request_remove.extend(req_remove.iter().cloned());
    for (k, v) in resp_add {
        ops.response_add
            .push(header_option(k, v, HeaderAppendAction::AppendIfExistsOrAdd));
    }
    ops.response_remove.extend(resp_remove.iter().cloned());
    let Some(h) = headers else { return };
    for (op, adds, removes) in [
        (
            h.request.as_ref(),
            &mut ops.request_add,
            &mut ops.request_remove,
        ),
        (
            h.response.as_ref(),
            &mut ops.response_add,
            &mut ops.response_remove,
        ),
    ] {
        let Some(op) = op else { continue };
        for (k, v) in &op.set {
            adds.push(header_option(
                k,
                v,
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            ));
        }
        for (k, v) in &op.add {
            adds.push(header_option(k, v, HeaderAppendAction::AppendIfExistsOrAdd));
        }
        removes.extend(op.remove.iter().cloned());
    }
}

fn destination_header_ops(d: &mesh_proto::networking::HttpRouteDestination) -> HeaderOps {
    let mut ops = HeaderOps::default();
    collect_ops(
        &mut ops,
        d.headers.as_ref(),
        [
            (&d.append_request_headers, &d.remove_request_headers),
            (&d.append_response_headers, &d.remove_response_headers),
        ],
    );
    ops
}

fn apply_headers(route: &mut Route, http: &HttpRoute) {
    let mut ops = HeaderOps::default();
    let mut request_add = http.append_headers.clone();
    request_add.extend(
        http.append_request_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    collect_ops(
        &mut ops,
        http.headers.as_ref(),
        [
            (&request_add, &http.remove_request_headers),
            (&http.append_response_headers, &http.remove_response_headers),
        ],
    );
    route.request_headers_to_add = ops.request_add;
    route.request_headers_to_remove = ops.request_remove;
    route.response_headers_to_add = ops.response_add;
    route.response_headers_to_remove = ops.response_remove;
}

// === matching ===

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

/// An Envoy route match for an Istio match, or `None` when it cannot apply to `proxy`
/// (its `sourceLabels` are not the proxy's).
fn route_match(m: &HttpMatchRequest, proxy: &Proxy) -> Option<RouteMatch> {
    if !m
        .source_labels
        .iter()
        .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
    {
        return None;
    }
    if m.source_namespace
        .as_ref()
        .is_some_and(|ns| *ns != proxy.namespace)
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
    let query_parameters = m
        .query_params
        .iter()
        .map(|(name, sm)| QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match sm {
                StringMatch::Any => QueryParameterMatchSpecifier::PresentMatch(true),
                sm => QueryParameterMatchSpecifier::StringMatch(string_matcher(sm)),
            }),
        })
        .collect();
    Some(RouteMatch {
        path_specifier: Some(path_specifier),
        case_sensitive: Some(BoolValue {
            value: case_sensitive,
        }),
        headers,
        query_parameters,
        ..Default::default()
    })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn string_matcher(sm: &StringMatch) -> StringMatcher {
    let pattern = match sm {
        StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
        StringMatch::Prefix(v) => MatchPattern::Prefix(v.clone()),
        StringMatch::Regex(v) => MatchPattern::SafeRegex(regex(v)),
        StringMatch::Any => MatchPattern::SafeRegex(regex(".*")),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(match sm {
            StringMatch::Any => HeaderMatchSpecifier::PresentMatch(true),
            sm => HeaderMatchSpecifier::StringMatch(string_matcher(sm)),
        }),
        ..Default::default()
    }
}

/// A percentage as Envoy's fraction per million (Istio's precision).
fn fraction(pct: f64) -> FractionalPercent {
    let pct = if pct.is_finite() {
        pct.clamp(0.0, 100.0)
    } else {
        100.0
    };
    FractionalPercent {
        numerator: (pct * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

// === delegation ===

/// A delegate's route merged with its root: the conditions of both must hold (a child match
/// that conflicts with every root match drops out), and the root's policies fill what the
/// child leaves unset. `None` when no combined match can hold.
fn merge_delegate(root: &HttpRoute, child: &HttpRoute) -> Option<HttpRoute> {
    let mut out = child.clone();
    out.delegate = None;
    out.matches = match (root.matches.is_empty(), child.matches.is_empty()) {
        (true, _) => child.matches.clone(),
        (false, true) => root.matches.clone(),
        (false, false) => {
            let merged: Vec<HttpMatchRequest> = root
                .matches
                .iter()
                .flat_map(|r| child.matches.iter().filter_map(move |c| merge_match(r, c)))
                .collect();
            if merged.is_empty() {
                return None;
            }
            merged
        }
    };
    macro_rules! inherit {
        ($($field:ident),*) => {
            $(if out.$field.is_none() {
                out.$field = root.$field.clone();
            })*
        };
    }
    inherit!(
        timeout,
        retries,
        fault,
        mirror,
        mirror_percentage,
        cors_policy,
        headers,
        rewrite
    );
    Some(out)
}

fn merge_match(root: &HttpMatchRequest, child: &HttpMatchRequest) -> Option<HttpMatchRequest> {
    let mut out = child.clone();
    match (&root.uri, &child.uri) {
        (Some(r), None) => out.uri = Some(r.clone()),
        (Some(StringMatch::Prefix(r)), Some(StringMatch::Prefix(c) | StringMatch::Exact(c)))
            if !c.starts_with(r.as_str()) =>
        {
            return None;
        }
        (Some(StringMatch::Exact(r)), Some(StringMatch::Exact(c) | StringMatch::Prefix(c)))
            if r != c =>
        {
            return None;
        }
        _ => {}
    }
    macro_rules! inherit {
        ($($field:ident),*) => {
            $(if out.$field.is_none() {
                out.$field = root.$field.clone();
            })*
        };
    }
    inherit!(
        scheme,
        method,
        authority,
        port,
        ignore_uri_case,
        source_namespace
    );
    for (k, v) in &root.headers {
        out.headers.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &root.without_headers {
        out.without_headers
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    for (k, v) in &root.query_params {
        out.query_params
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    for (k, v) in &root.source_labels {
        out.source_labels
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    Some(out)
}

/// Decodes standard base64 (with or without padding); `None` when malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_per_million() {
        assert_eq!(fraction(12.5).numerator, 125_000);
        assert_eq!(fraction(100.0).numerator, 1_000_000);
        assert_eq!(fraction(f64::NAN).numerator, 1_000_000);
        assert_eq!(fraction(-3.0).numerator, 0);
    }

    #[test]
    fn retry_on_codes_become_retriable_status_codes() {
        let p = retry(Some(&HttpRetry {
            attempts: Some(3),
            retry_on: Some("gateway-error,503".into()),
            ..Default::default()
        }));
        assert_eq!(p.retry_on, "gateway-error,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert_eq!(p.num_retries, Some(UInt32Value { value: 3 }));
    }

    #[test]
    fn base64_bodies() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn delegate_matches_merge() {
        let root = HttpMatchRequest {
            uri: Some(StringMatch::Prefix("/api".into())),
            ..Default::default()
        };
        let ok = HttpMatchRequest {
            uri: Some(StringMatch::Prefix("/api/v1".into())),
            ..Default::default()
        };
        let conflict = HttpMatchRequest {
            uri: Some(StringMatch::Prefix("/other".into())),
            ..Default::default()
        };
        assert!(merge_match(&root, &ok).is_some());
        assert!(merge_match(&root, &conflict).is_none());
        let inherit = merge_match(&root, &HttpMatchRequest::default()).unwrap();
        assert_eq!(inherit.uri, root.uri);
    }

    #[test]
    fn grpc_codes_by_name() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("4"), Some(4));
        assert_eq!(grpc_code("NOPE"), None);
    }
}
