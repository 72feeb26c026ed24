//! Semantic validation of traffic config, Istio's checks: what a schema cannot say. Weights
//! sum to 100, regexes compile with RE2's rules, durations are positive, status codes and
//! percentages are in range, hosts are well formed, STATIC endpoints are IPs, ports are given.
//!
//! [`PilotValidator`] is run by the config store on every object Pilot loads (an object with
//! problems is refused, its last good version keeps serving); `pilot validate -f FILE...`
//! runs the same checks offline. Every problem names its field, from `spec`.

mod authn;
pub mod cabundle;
#[cfg(test)]
mod inject_fuzz;
#[cfg(test)]
mod inject_golden;
#[cfg(test)]
mod inject_tests;
pub mod inject_webhook;
pub mod jsonpatch;
mod regex;
#[cfg(any(test, feature = "testutil"))]
pub mod test_client;
pub mod webhook;

use std::collections::BTreeSet;
use std::net::IpAddr;

use mesh_proto::networking::{
    ClientTlsMode, ConnectionPoolSettings, CorsPolicy, Destination, DestinationRule, Gateway,
    Headers, HttpFaultInjection, HttpMatchRequest, HttpRoute, LoadBalancerSettings,
    OutlierDetection, Percent, PortSelector, Resolution, ServerTlsMode, ServiceEntry, Sidecar,
    StringMatch, TrafficPolicy, VirtualService, WorkloadEntrySpec,
};
use mesh_proto::types::Duration;
use mesh_proto::{Spec, SpecError};
use mesh_runtime::config::{ConfigObject, Validator};

pub use self::regex::check_regex;

/// The validator Pilot's config store runs.
#[derive(Debug, Clone, Default)]
pub struct PilotValidator;

// === impl PilotValidator ===

impl Validator for PilotValidator {
    fn validate(&self, obj: &ConfigObject) -> Vec<SpecError> {
        let mut problems = validate_spec(&obj.spec);
        problems.extend(authn::names(obj));
        problems
    }
}

/// `pilot validate -f FILE...`: the problems of every object in `files`, one line each,
/// naming the file, document, object and field (empty when all are valid). `-` reads stdin.
pub fn validate_files(files: &[std::path::PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for path in files {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
        } else {
            std::fs::read_to_string(path)
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                out.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let results = mesh_runtime::config::parse_file(path, &text);
        for r in mesh_runtime::config::validate(results, Some(&PilotValidator)) {
            if let Err(e) = r {
                out.push(e.to_string());
            }
        }
    }
    out
}

/// The problems of a spec (empty when valid, and for kinds Pilot does not check).
pub fn validate_spec(spec: &Spec) -> Vec<SpecError> {
    let mut p = Problems::default();
    match spec {
        Spec::VirtualService(vs) => virtual_service(&mut p, vs),
        Spec::DestinationRule(dr) => destination_rule(&mut p, dr),
        Spec::ServiceEntry(se) => service_entry(&mut p, se),
        Spec::Gateway(gw) => gateway(&mut p, gw),
        Spec::Sidecar(sc) => sidecar(&mut p, sc),
        Spec::WorkloadEntry(we) => workload_entry(&mut p, "spec", we, false),
        Spec::RouteRule(_) | Spec::DestinationPolicy(_) | Spec::EgressRule(_) => {
            crate::legacy::validate(&mut p, spec)
        }
        Spec::AuthorizationPolicy(_)
        | Spec::ServiceRole(_)
        | Spec::ServiceRoleBinding(_)
        | Spec::RbacConfig(_)
        | Spec::ClusterRbacConfig(_) => crate::model::authz::validate(&mut p, spec),
        Spec::RequestAuthentication(ra) => authn::request_authentication(&mut p, ra),
        Spec::AuthenticationPolicy(policy) => authn::policy(&mut p, policy, false),
        Spec::MeshPolicy(policy) => authn::policy(&mut p, policy, true),
        _ => {}
    }
    p.0
}

/// Problems found so far.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<SpecError>);

// === impl Problems ===

impl Problems {
    /// Records a problem with field `path`.
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError::Invalid {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records a problem when `cond` is false.
    pub fn check(&mut self, cond: bool, path: impl Into<String>, message: impl Into<String>) {
        if !cond {
            self.add(path, message);
        }
    }
}

// === shared checks ===

/// A DNS-1123 label: lower-case letters, digits and `-`, 1 to 63 characters, starting and
/// ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Istio's host check: a DNS name (labels of letters, digits, `-` and `_`), optionally
/// starting with a `*` label, at most 255 characters; `*` alone is allowed.
pub fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("host must not be empty".into());
    }
    if host == "*" {
        return None;
    }
    if host.len() > 255 {
        return Some(format!("host {host:?} is longer than 255 characters"));
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Some(format!(
                "host {host:?} is not a valid DNS name (wildcards only as a leading `*.`)"
            ));
        }
    }
    None
}

fn check_host(p: &mut Problems, path: &str, host: &str) {
    if let Some(m) = host_problem(host) {
        p.add(path, m);
    }
}

fn check_duration(p: &mut Problems, path: &str, d: &Option<Duration>) {
    if let Some(d) = d
        && d.as_std() < std::time::Duration::from_millis(1)
    {
        p.add(path, "duration must be at least 1ms");
    }
}

fn check_percent(p: &mut Problems, path: &str, pct: &Option<Percent>) {
    if let Some(pct) = pct
        && !(pct.value.is_finite() && (0.0..=100.0).contains(&pct.value))
    {
        p.add(
            path,
            format!("percentage {} is not within 0-100", pct.value),
        );
    }
}

fn check_port(p: &mut Problems, path: &str, port: u32) {
    p.check(
        (1..=65535).contains(&port),
        path,
        format!("port number {port} is not within 1-65535"),
    );
}

fn check_string_match(p: &mut Problems, path: &str, m: &StringMatch) {
    match m {
        StringMatch::Exact(s) | StringMatch::Prefix(s) if s.is_empty() => {
            p.add(path, "exact and prefix matches must not be empty")
        }
        StringMatch::Regex(r) => {
            if let Err(e) = check_regex(r) {
                p.add(format!("{path}.regex"), e.to_string());
            }
        }
        _ => {}
    }
}

/// Header names as Envoy takes them: lower-case tokens, no pseudo-headers.
fn check_header_name(p: &mut Problems, path: &str, name: &str) {
    let ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    p.check(
        ok,
        path,
        format!("header name {name:?} must be a lower-case HTTP token"),
    );
}

fn check_status(p: &mut Problems, path: &str, code: u32) {
    p.check(
        (200..=599).contains(&code),
        path,
        format!("HTTP status {code} is not within 200-599"),
    );
}

// === VirtualService ===

fn virtual_service(p: &mut Problems, vs: &VirtualService) {
    let delegate = vs.hosts.is_empty();
    if delegate && !vs.gateways.is_empty() {
        p.add(
            "spec.gateways",
            "a delegate VirtualService (no hosts) must not name gateways",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, h) in vs.hosts.iter().enumerate() {
        check_host(p, &format!("spec.hosts[{i}]"), h);
        if !seen.insert(h) {
            p.add(format!("spec.hosts[{i}]"), format!("duplicate host {h:?}"));
        }
        if h == "*" && (vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")) {
            p.add(
                format!("spec.hosts[{i}]"),
                "the wildcard host `*` is not allowed for the mesh gateway",
            );
        }
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        let name = g.rsplit('/').next().unwrap_or(g);
        let ns_ok = g.split_once('/').is_none_or(|(ns, _)| is_dns_label(ns));
        p.check(
            ns_ok && (g == "mesh" || host_problem(name).is_none()),
            format!("spec.gateways[{i}]"),
            format!("gateway {g:?} is not a valid name or namespace/name"),
        );
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        p.add(
            "spec",
            "at least one of http, tcp or tls routes is required",
        );
    }
    for (i, r) in vs.http.iter().enumerate() {
        http_route(p, &format!("spec.http[{i}]"), r, delegate);
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let path = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            if let Some(port) = m.port {
                check_port(p, &format!("{path}.match[{j}].port"), port);
            }
        }
        l4_routes(p, &path, r.route.iter().map(|d| (&d.destination, d.weight)));
    }
    for (i, r) in vs.tls.iter().enumerate() {
        let path = format!("spec.tls[{i}]");
        p.check(
            !r.matches.is_empty(),
            format!("{path}.match"),
            "TLS routes need a match",
        );
        for (j, m) in r.matches.iter().enumerate() {
            p.check(
                !m.sni_hosts.is_empty(),
                format!("{path}.match[{j}].sniHosts"),
                "sniHosts is required",
            );
            for (k, h) in m.sni_hosts.iter().enumerate() {
                check_host(p, &format!("{path}.match[{j}].sniHosts[{k}]"), h);
            }
        }
        l4_routes(p, &path, r.route.iter().map(|d| (&d.destination, d.weight)));
    }
}

fn l4_routes<'a>(
    p: &mut Problems,
    path: &str,
    routes: impl Iterator<Item = (&'a Destination, Option<u32>)>,
) {
    let routes: Vec<_> = routes.collect();
    p.check(
        !routes.is_empty(),
        format!("{path}.route"),
        "at least one destination is required",
    );
    for (j, (d, _)) in routes.iter().enumerate() {
        destination(p, &format!("{path}.route[{j}].destination"), d);
    }
    check_weights(p, &format!("{path}.route"), routes.iter().map(|(_, w)| *w));
}

fn check_weights(p: &mut Problems, path: &str, weights: impl Iterator<Item = Option<u32>>) {
    let weights: Vec<Option<u32>> = weights.collect();
    if weights.len() < 2 && weights.iter().all(|w| w.is_none_or(|w| w == 100 || w == 0)) {
        return;
    }
    let total: u64 = weights.iter().map(|w| u64::from(w.unwrap_or(0))).sum();
    if weights.len() == 1 && weights[0].is_none() {
        return;
    }
    p.check(
        total == 100,
        path,
        format!("the destination weights add up to {total}, not 100"),
    );
}

fn destination(p: &mut Problems, path: &str, d: &Destination) {
    check_host(p, &format!("{path}.host"), &d.host);
    if let Some(s) = &d.subset {
        p.check(
            is_dns_label(s),
            format!("{path}.subset"),
            format!("subset {s:?} is not a valid name"),
        );
    }
    if let Some(port) = &d.port {
        port_selector(p, &format!("{path}.port"), port);
    }
}

fn port_selector(p: &mut Problems, path: &str, port: &PortSelector) {
    match (port.number, &port.name) {
        (Some(n), _) => check_port(p, &format!("{path}.number"), n),
        (None, Some(_)) => {}
        (None, None) => p.add(path, "a port number is required"),
    }
}

fn http_route(p: &mut Problems, path: &str, r: &HttpRoute, in_delegate: bool) {
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
        r.delegate.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    match actions {
        0 => p.add(
            path,
            "one of route, redirect, directResponse or delegate is required",
        ),
        1 => {}
        _ => p.add(
            path,
            "only one of route, redirect, directResponse or delegate may be set",
        ),
    }
    if in_delegate && r.delegate.is_some() {
        p.add(
            format!("{path}.delegate"),
            "delegates cannot delegate again",
        );
    }
    if let Some(d) = &r.delegate {
        p.check(
            !d.name.is_empty(),
            format!("{path}.delegate.name"),
            "the delegate's name is required",
        );
    }
    for (i, m) in r.matches.iter().enumerate() {
        http_match(p, &format!("{path}.match[{i}]"), m);
    }
    for (i, d) in r.route.iter().enumerate() {
        let dpath = format!("{path}.route[{i}]");
        destination(p, &format!("{dpath}.destination"), &d.destination);
        if let Some(h) = &d.headers {
            headers(p, &format!("{dpath}.headers"), h);
        }
    }
    check_weights(
        p,
        &format!("{path}.route"),
        r.route.iter().map(|d| d.weight),
    );
    if let Some(rd) = &r.redirect {
        let rpath = format!("{path}.redirect");
        if let Some(code) = rd.redirect_code {
            p.check(
                [301, 302, 303, 307, 308].contains(&code),
                format!("{rpath}.redirectCode"),
                format!("redirect code {code} is not one of 301, 302, 303, 307, 308"),
            );
        }
        if let Some(port) = rd.port {
            check_port(p, &format!("{rpath}.port"), port);
        }
        if rd.uri.is_some() && rd.prefix_rewrite.is_some() {
            p.add(&rpath, "uri and prefixRewrite are mutually exclusive");
        }
        if let Some(s) = &rd.scheme {
            p.check(
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)),
                format!("{rpath}.scheme"),
                format!("scheme {s:?} is not valid"),
            );
        }
    }
    if let Some(d) = &r.direct_response {
        check_status(p, &format!("{path}.directResponse.status"), d.status);
        if let Some(b) = &d.body
            && b.string.is_some()
            && b.bytes.is_some()
        {
            p.add(
                format!("{path}.directResponse.body"),
                "only one of string or bytes may be set",
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            p.add(
                format!("{path}.rewrite"),
                "uri and uriRegexRewrite are mutually exclusive",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite
            && let Err(e) = check_regex(&rr.pattern)
        {
            p.add(
                format!("{path}.rewrite.uriRegexRewrite.match"),
                e.to_string(),
            );
        }
        if let Some(a) = &rw.authority {
            p.check(
                !a.is_empty(),
                format!("{path}.rewrite.authority"),
                "authority must not be empty",
            );
        }
    }
    check_duration(p, &format!("{path}.timeout"), &r.timeout);
    if let Some(rt) = &r.retries {
        check_duration(
            p,
            &format!("{path}.retries.perTryTimeout"),
            &rt.per_try_timeout,
        );
        check_duration(p, &format!("{path}.retries.backoff"), &rt.backoff);
        if let Some(on) = &rt.retry_on {
            for item in on.split(',').map(str::trim) {
                retry_on(p, &format!("{path}.retries.retryOn"), item);
            }
        }
    }
    if let Some(f) = &r.fault {
        fault(p, &format!("{path}.fault"), f);
    }
    if let Some(m) = &r.mirror {
        destination(p, &format!("{path}.mirror"), m);
    }
    check_percent(p, &format!("{path}.mirrorPercentage"), &r.mirror_percentage);
    if let Some(pct) = r.mirror_percent {
        p.check(
            pct <= 100,
            format!("{path}.mirrorPercent"),
            format!("percentage {pct} is not within 0-100"),
        );
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        destination(
            p,
            &format!("{path}.mirrors[{i}].destination"),
            &m.destination,
        );
        check_percent(p, &format!("{path}.mirrors[{i}].percentage"), &m.percentage);
    }
    if let Some(c) = &r.cors_policy {
        cors(p, &format!("{path}.corsPolicy"), c);
    }
    if let Some(h) = &r.headers {
        headers(p, &format!("{path}.headers"), h);
    }
    for k in r.append_headers.keys() {
        check_header_name(p, &format!("{path}.appendHeaders"), k);
    }
}

/// Envoy's retry conditions, and HTTP status codes.
fn retry_on(p: &mut Problems, path: &str, item: &str) {
    const KNOWN: [&str; 14] = [
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
    ];
    const GRPC: [&str; 2] = ["resource-exhausted", "unavailable"];
    if item.is_empty() || KNOWN.contains(&item) || GRPC.contains(&item) {
        return;
    }
    match item.parse::<u32>() {
        Ok(code) => check_status(p, path, code),
        Err(_) => p.add(path, format!("{item:?} is not a retry condition")),
    }
}

fn http_match(p: &mut Problems, path: &str, m: &HttpMatchRequest) {
    for (field, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(p, &format!("{path}.{field}"), sm);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let hpath = format!("{path}.{field}.{name}");
            check_header_name(p, &hpath, name);
            check_string_match(p, &hpath, sm);
        }
    }
    for (name, sm) in &m.query_params {
        check_string_match(p, &format!("{path}.queryParams.{name}"), sm);
    }
    if let Some(port) = m.port {
        check_port(p, &format!("{path}.port"), port);
    }
}

fn fault(p: &mut Problems, path: &str, f: &HttpFaultInjection) {
    if f.delay.is_none() && f.abort.is_none() {
        p.add(path, "at least one of delay or abort is required");
    }
    if let Some(d) = &f.delay {
        let dpath = format!("{path}.delay");
        check_percent(p, &format!("{dpath}.percentage"), &d.percentage);
        if let Some(pct) = d.percent {
            p.check(
                pct <= 100,
                format!("{dpath}.percent"),
                "percent must be within 0-100",
            );
        }
        match (&d.fixed_delay, &d.exponential_delay) {
            (None, None) => p.add(&dpath, "fixedDelay is required"),
            (Some(_), Some(_)) => p.add(&dpath, "fixedDelay and exponentialDelay are exclusive"),
            _ => {}
        }
        check_duration(p, &format!("{dpath}.fixedDelay"), &d.fixed_delay);
        check_duration(
            p,
            &format!("{dpath}.exponentialDelay"),
            &d.exponential_delay,
        );
    }
    if let Some(a) = &f.abort {
        let apath = format!("{path}.abort");
        check_percent(p, &format!("{apath}.percentage"), &a.percentage);
        if let Some(pct) = a.percent {
            p.check(
                pct <= 100,
                format!("{apath}.percent"),
                "percent must be within 0-100",
            );
        }
        match (a.http_status, &a.grpc_status, &a.http2_error) {
            (Some(code), None, None) => check_status(p, &format!("{apath}.httpStatus"), code),
            (None, Some(g), None) => p.check(
                crate::xds::generate::route::grpc_code(g).is_some(),
                format!("{apath}.grpcStatus"),
                format!("{g:?} is not a gRPC status"),
            ),
            (None, None, Some(_)) => {}
            (None, None, None) => p.add(
                &apath,
                "one of httpStatus, grpcStatus or http2Error is required",
            ),
            _ => p.add(
                &apath,
                "only one of httpStatus, grpcStatus or http2Error may be set",
            ),
        }
    }
}

fn cors(p: &mut Problems, path: &str, c: &CorsPolicy) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        check_string_match(p, &format!("{path}.allowOrigins[{i}]"), o);
    }
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    for (i, m) in c.allow_methods.iter().enumerate() {
        p.check(
            METHODS.contains(&m.as_str()),
            format!("{path}.allowMethods[{i}]"),
            format!("{m:?} is not an HTTP method"),
        );
    }
    for (i, h) in c.allow_headers.iter().enumerate() {
        check_header_name(
            p,
            &format!("{path}.allowHeaders[{i}]"),
            &h.to_ascii_lowercase(),
        );
    }
    for (i, h) in c.expose_headers.iter().enumerate() {
        check_header_name(
            p,
            &format!("{path}.exposeHeaders[{i}]"),
            &h.to_ascii_lowercase(),
        );
    }
    if let Some(m) = &c.max_age
        && (m.as_std().subsec_nanos() != 0 || m.as_std().is_zero())
    {
        p.add(
            format!("{path}.maxAge"),
            "maxAge must be a whole number of seconds, at least 1s",
        );
    }
}

fn headers(p: &mut Problems, path: &str, h: &Headers) {
    for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (field, names) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for n in names {
                check_header_name(p, &format!("{path}.{dir}.{field}"), &n.to_ascii_lowercase());
            }
        }
    }
}

// === DestinationRule ===

fn destination_rule(p: &mut Problems, dr: &DestinationRule) {
    check_host(p, "spec.host", &dr.host);
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(p, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        p.check(
            is_dns_label(&s.name),
            format!("{path}.name"),
            format!("subset name {:?} is not a valid DNS label", s.name),
        );
        if !names.insert(&s.name) {
            p.add(
                format!("{path}.name"),
                format!("duplicate subset {:?}", s.name),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(p, &format!("{path}.trafficPolicy"), tp);
        }
    }
}

fn traffic_policy(p: &mut Problems, path: &str, tp: &TrafficPolicy) {
    policy_fields(
        p,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let ppath = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            Some(port) => {
                port_selector(p, &format!("{ppath}.port"), port);
                if let Some(n) = port.number
                    && !ports.insert(n)
                {
                    p.add(format!("{ppath}.port"), format!("port {n} is set twice"));
                }
            }
            None => p.add(format!("{ppath}.port"), "the port is required"),
        }
        policy_fields(
            p,
            &ppath,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
}

fn policy_fields(
    p: &mut Problems,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&mesh_proto::networking::ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let lpath = format!("{path}.loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            p.add(&lpath, "simple and consistentHash are mutually exclusive");
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            p.check(
                keys == 1,
                format!("{lpath}.consistentHash"),
                "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
            );
            if let Some(c) = &ch.http_cookie {
                p.check(
                    !c.name.is_empty(),
                    format!("{lpath}.consistentHash.httpCookie.name"),
                    "the cookie name is required",
                );
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                p.add(
                    format!("{lpath}.consistentHash"),
                    "ringHash and maglev are mutually exclusive",
                );
            }
        }
    }
    if let Some(pool) = pool {
        let cpath = format!("{path}.connectionPool");
        if pool.tcp.is_none() && pool.http.is_none() {
            p.add(&cpath, "at least one of tcp or http is required");
        }
        if let Some(tcp) = &pool.tcp {
            if let Some(n) = tcp.max_connections {
                p.check(
                    n > 0,
                    format!("{cpath}.tcp.maxConnections"),
                    "must be positive",
                );
            }
            check_duration(
                p,
                &format!("{cpath}.tcp.connectTimeout"),
                &tcp.connect_timeout,
            );
            check_duration(p, &format!("{cpath}.tcp.idleTimeout"), &tcp.idle_timeout);
            check_duration(
                p,
                &format!("{cpath}.tcp.maxConnectionDuration"),
                &tcp.max_connection_duration,
            );
        }
        if let Some(http) = &pool.http {
            for (field, v) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ] {
                if let Some(v) = v {
                    p.check(
                        v >= 0,
                        format!("{cpath}.http.{field}"),
                        "must not be negative",
                    );
                }
            }
            check_duration(p, &format!("{cpath}.http.idleTimeout"), &http.idle_timeout);
        }
    }
    if let Some(od) = outlier {
        let opath = format!("{path}.outlierDetection");
        if let Some(v) = od.consecutive_errors {
            p.check(
                v >= 0,
                format!("{opath}.consecutiveErrors"),
                "must not be negative",
            );
        }
        check_duration(p, &format!("{opath}.interval"), &od.interval);
        check_duration(
            p,
            &format!("{opath}.baseEjectionTime"),
            &od.base_ejection_time,
        );
        for (field, v) in [
            ("maxEjectionPercent", od.max_ejection_percent),
            ("minHealthPercent", od.min_health_percent),
        ] {
            if let Some(v) = v {
                p.check(
                    (0..=100).contains(&v),
                    format!("{opath}.{field}"),
                    format!("percentage {v} is not within 0-100"),
                );
            }
        }
    }
    if let Some(tls) = tls
        && tls.mode == Some(ClientTlsMode::Mutual)
        && tls.credential_name.is_none()
    {
        p.check(
            tls.client_certificate.is_some(),
            format!("{path}.tls.clientCertificate"),
            "clientCertificate is required for MUTUAL TLS",
        );
        p.check(
            tls.private_key.is_some(),
            format!("{path}.tls.privateKey"),
            "privateKey is required for MUTUAL TLS",
        );
    }
}

// === ServiceEntry, WorkloadEntry ===

fn service_entry(p: &mut Problems, se: &ServiceEntry) {
    p.check(
        !se.hosts.is_empty(),
        "spec.hosts",
        "at least one host is required",
    );
    let resolution = se.resolution.unwrap_or(Resolution::None);
    for (i, h) in se.hosts.iter().enumerate() {
        check_host(p, &format!("spec.hosts[{i}]"), h);
        if h.starts_with('*') && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            p.add(
                format!("spec.hosts[{i}]"),
                "wildcard hosts cannot be resolved with DNS",
            );
        }
    }
    for (i, a) in se.addresses.iter().enumerate() {
        p.check(
            is_ip_or_cidr(a),
            format!("spec.addresses[{i}]"),
            format!("{a:?} is not an IP address or CIDR block"),
        );
    }
    p.check(
        !se.ports.is_empty(),
        "spec.ports",
        "at least one port is required",
    );
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in se.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        check_port(p, &format!("{path}.number"), port.number);
        if let Some(t) = port.target_port {
            check_port(p, &format!("{path}.targetPort"), t);
        }
        if port.name.is_empty() {
            p.add(format!("{path}.name"), "the port name is required");
        } else if !names.insert(&port.name) {
            p.add(
                format!("{path}.name"),
                format!("duplicate port name {:?}", port.name),
            );
        }
        if !numbers.insert(port.number) {
            p.add(
                format!("{path}.number"),
                format!("duplicate port {}", port.number),
            );
        }
    }
    match resolution {
        Resolution::Static => {
            p.check(
                !se.endpoints.is_empty() || se.workload_selector.is_some(),
                "spec.endpoints",
                "endpoints are required for STATIC resolution (or a workloadSelector)",
            );
        }
        Resolution::None => {
            p.check(
                se.endpoints.is_empty(),
                "spec.endpoints",
                "endpoints are not allowed with resolution NONE",
            );
        }
        _ => {}
    }
    for (i, ep) in se.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        workload_entry(p, &path, ep, resolution != Resolution::Static);
        for name in ep.ports.keys() {
            p.check(
                names.contains(name),
                format!("{path}.ports.{name}"),
                format!("{name:?} is not a port name of the ServiceEntry"),
            );
        }
    }
}

fn workload_entry(p: &mut Problems, path: &str, we: &WorkloadEntrySpec, dns_allowed: bool) {
    let a = &we.address;
    let ok = a.parse::<IpAddr>().is_ok()
        || a.starts_with("unix://")
        || (dns_allowed && host_problem(a).is_none() && !a.starts_with('*'));
    if a.is_empty() {
        p.add(format!("{path}.address"), "the address is required");
    } else if !ok {
        p.add(
            format!("{path}.address"),
            if dns_allowed {
                format!("{a:?} is neither an IP address nor a host name")
            } else {
                format!("{a:?} is not an IP address (STATIC endpoints are IPs)")
            },
        );
    }
    for (name, port) in &we.ports {
        check_port(p, &format!("{path}.ports.{name}"), *port);
    }
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    }
}

// === Gateway, Sidecar ===

fn gateway(p: &mut Problems, gw: &Gateway) {
    p.check(
        !gw.servers.is_empty(),
        "spec.servers",
        "at least one server is required",
    );
    for (i, s) in gw.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        check_port(p, &format!("{path}.port.number"), s.port.number);
        p.check(
            !s.port.protocol.is_empty(),
            format!("{path}.port.protocol"),
            "the protocol is required",
        );
        p.check(
            !s.hosts.is_empty(),
            format!("{path}.hosts"),
            "at least one host is required",
        );
        for (j, h) in s.hosts.iter().enumerate() {
            let host = match h.split_once('/') {
                Some((ns, host)) => {
                    p.check(
                        ns == "*" || ns == "." || is_dns_label(ns),
                        format!("{path}.hosts[{j}]"),
                        format!("namespace {ns:?} is not valid"),
                    );
                    host
                }
                None => h.as_str(),
            };
            check_host(p, &format!("{path}.hosts[{j}]"), host);
        }
        let protocol = s.port.protocol.to_ascii_uppercase();
        let Some(tls) = &s.tls else {
            if protocol == "HTTPS" || protocol == "TLS" {
                p.add(
                    format!("{path}.tls"),
                    format!("{protocol} servers need tls settings"),
                );
            }
            continue;
        };
        let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
        let needs_cert = matches!(
            mode,
            ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
        ) && tls.credential_name.is_none()
            && tls.credential_names.is_empty()
            && tls.tls_certificates.is_empty();
        if needs_cert && tls.https_redirect != Some(true) {
            p.check(
                tls.server_certificate.is_some(),
                format!("{path}.tls.serverCertificate"),
                "serverCertificate is required for SIMPLE and MUTUAL TLS",
            );
            p.check(
                tls.private_key.is_some(),
                format!("{path}.tls.privateKey"),
                "privateKey is required for SIMPLE and MUTUAL TLS",
            );
            if matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual) {
                p.check(
                    tls.ca_certificates.is_some(),
                    format!("{path}.tls.caCertificates"),
                    "caCertificates is required for MUTUAL TLS",
                );
            }
        }
    }
}

fn sidecar(p: &mut Problems, sc: &Sidecar) {
    for (i, l) in sc.ingress.iter().enumerate() {
        let path = format!("spec.ingress[{i}]");
        check_port(p, &format!("{path}.port.number"), l.port.number);
        if let Some(d) = &l.default_endpoint {
            let ok = d.starts_with("unix://")
                || d.rsplit_once(':').is_some_and(|(host, port)| {
                    (host == "127.0.0.1" || host == "0.0.0.0" || host == "[::1]" || host == "[::]")
                        && port.parse::<u16>().is_ok_and(|n| n > 0)
                });
            p.check(
                ok,
                format!("{path}.defaultEndpoint"),
                format!("{d:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT or unix://"),
            );
        }
    }
    for (i, l) in sc.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        if let Some(port) = &l.port {
            check_port(p, &format!("{path}.port.number"), port.number);
        }
        p.check(
            !l.hosts.is_empty(),
            format!("{path}.hosts"),
            "at least one host is required",
        );
        for (j, h) in l.hosts.iter().enumerate() {
            let hpath = format!("{path}.hosts[{j}]");
            match h.split_once('/') {
                Some((ns, host)) => {
                    p.check(
                        ns == "*" || ns == "." || ns == "~" || is_dns_label(ns),
                        &hpath,
                        format!("namespace {ns:?} is not valid"),
                    );
                    check_host(p, &hpath, host);
                }
                None => p.add(hpath, format!("{h:?} must be namespace/host")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
