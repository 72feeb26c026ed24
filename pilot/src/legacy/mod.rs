//! The routing API of Istio 0.5-0.7 (`config.istio.io/v1alpha2` RouteRule, DestinationPolicy,
//! EgressRule), converted into the v1alpha3 model the generators use.
//!
//! - The RouteRules of one destination become one VirtualService: its rules in precedence order
//!   (highest first, then by name), one HTTP route each.
//! - The label sets that rules route to become subsets of a DestinationRule for the host,
//!   named after the labels (`version-v1`); DestinationPolicies add their load balancing and
//!   circuit breaker (connection pool and outlier detection) to the host or to a subset.
//! - EgressRules become MESH_EXTERNAL ServiceEntries ([`egress_service_entries`]).

use std::collections::BTreeMap;

use mesh_proto::networking::{
    ConnectionPoolSettings, Destination, DestinationRule, FaultAbort, FaultDelay,
    HttpFaultInjection, HttpMatchRequest, HttpRetry, HttpRoute, HttpRouteDestination, HttpSettings,
    LoadBalancerSettings, Location, OutlierDetection, Percent, Resolution, ServiceEntry,
    ServicePort, SimpleLb, StringMatch, Subset, TcpSettings, TrafficPolicy, VirtualService,
};
use mesh_proto::routing::{DestinationPolicy, EgressRule, RouteRule, SimpleLbPolicy};
use mesh_proto::types::IstioService;
use mesh_proto::{Kind, Spec};
use mesh_runtime::Snapshot;

use crate::validate::Problems;

/// What legacy config converts to: virtual services and destination rules by host FQDN,
/// each with the namespace it lives in.
#[derive(Debug, Default)]
pub struct Converted {
    pub virtual_services: BTreeMap<String, (String, VirtualService)>,
    pub destination_rules: BTreeMap<String, (String, DestinationRule)>,
}

/// The FQDN of a legacy service reference, from a rule in `namespace`.
pub fn service_host(svc: &IstioService, namespace: &str, suffix: &str) -> Option<String> {
    if let Some(s) = svc.service.as_deref().filter(|s| !s.is_empty()) {
        return Some(s.to_string());
    }
    let name = svc.name.as_deref().filter(|n| !n.is_empty())?;
    if name.contains('.') {
        return Some(name.to_string());
    }
    let ns = svc.namespace.as_deref().unwrap_or(namespace);
    let domain = svc
        .domain
        .clone()
        .unwrap_or_else(|| format!("svc.{suffix}"));
    Some(format!("{name}.{ns}.{domain}"))
}

/// The subset name Pilot gives a label set: `key-value` pairs joined by `-`, in key order,
/// lower-cased with other characters replaced by `-` (`version-v1`).
pub fn subset_name(labels: &BTreeMap<String, String>) -> String {
    let raw: Vec<String> = labels.iter().map(|(k, v)| format!("{k}-{v}")).collect();
    let name: String = raw
        .join("-")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-');
    let mut name: String = name.chars().take(63).collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// Converts the legacy rules of a snapshot.
pub fn convert(config: &Snapshot, suffix: &str) -> Converted {
    let mut out = Converted::default();
    // RouteRules, grouped by destination host.
    let mut rules: BTreeMap<String, Vec<(i32, String, String, &RouteRule)>> = BTreeMap::new();
    for obj in config.of_kind(&Kind::RouteRule) {
        let Spec::RouteRule(rr) = &obj.spec else {
            continue;
        };
        let Some(host) = rr
            .destination
            .as_ref()
            .and_then(|d| service_host(d, &obj.key.namespace, suffix))
        else {
            continue;
        };
        rules.entry(host).or_default().push((
            rr.precedence.unwrap_or(0),
            obj.key.name.clone(),
            obj.key.namespace.clone(),
            rr,
        ));
    }
    let mut subsets: BTreeMap<String, (String, BTreeMap<String, Subset>)> = BTreeMap::new();
    let mut add_subset =
        |host: &str, ns: &str, labels: &BTreeMap<String, String>| -> Option<String> {
            if labels.is_empty() {
                return None;
            }
            let name = subset_name(labels);
            subsets
                .entry(host.to_string())
                .or_insert_with(|| (ns.to_string(), BTreeMap::new()))
                .1
                .entry(name.clone())
                .or_insert_with(|| Subset {
                    name: name.clone(),
                    labels: labels.clone(),
                    traffic_policy: None,
                });
            Some(name)
        };
    for (host, mut list) in rules {
        // Highest precedence first; equal precedence by name, for a stable order.
        list.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let namespace = list[0].2.clone();
        let mut vs = VirtualService {
            hosts: vec![host.clone()],
            ..Default::default()
        };
        for (_, name, ns, rr) in list {
            vs.http
                .push(http_route(rr, &name, &ns, &host, suffix, &mut add_subset));
        }
        out.virtual_services.insert(host, (namespace, vs));
    }
    // DestinationPolicies: traffic policy of the host, or of the subset of their labels.
    let mut policies: Vec<(String, String, Option<String>, TrafficPolicy)> = Vec::new();
    for obj in config.of_kind(&Kind::DestinationPolicy) {
        let Spec::DestinationPolicy(dp) = &obj.spec else {
            continue;
        };
        let Some(dest) = &dp.destination else {
            continue;
        };
        let Some(host) = service_host(dest, &obj.key.namespace, suffix) else {
            continue;
        };
        let subset = add_subset(&host, &obj.key.namespace, &dest.labels);
        policies.push((host, obj.key.namespace.clone(), subset, traffic_policy(dp)));
    }
    for (host, (ns, subsets)) in subsets {
        out.destination_rules.insert(
            host.clone(),
            (
                ns,
                DestinationRule {
                    host,
                    subsets: subsets.into_values().collect(),
                    ..Default::default()
                },
            ),
        );
    }
    for (host, ns, subset, policy) in policies {
        let (_, dr) = out
            .destination_rules
            .entry(host.clone())
            .or_insert_with(|| {
                (
                    ns,
                    DestinationRule {
                        host,
                        ..Default::default()
                    },
                )
            });
        match subset.and_then(|s| dr.subsets.iter_mut().find(|x| x.name == s)) {
            Some(s) => s.traffic_policy = Some(policy),
            None => dr.traffic_policy = Some(policy),
        }
    }
    out
}

fn destination(
    svc: Option<&IstioService>,
    labels: &BTreeMap<String, String>,
    default_host: &str,
    namespace: &str,
    suffix: &str,
    add_subset: &mut impl FnMut(&str, &str, &BTreeMap<String, String>) -> Option<String>,
) -> Destination {
    let host = svc
        .and_then(|s| service_host(s, namespace, suffix))
        .unwrap_or_else(|| default_host.to_string());
    let mut all = svc.map(|s| s.labels.clone()).unwrap_or_default();
    all.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    Destination {
        subset: add_subset(&host, namespace, &all),
        host,
        port: None,
    }
}

fn http_route(
    rr: &RouteRule,
    name: &str,
    namespace: &str,
    host: &str,
    suffix: &str,
    add_subset: &mut impl FnMut(&str, &str, &BTreeMap<String, String>) -> Option<String>,
) -> HttpRoute {
    let mut route = HttpRoute {
        name: Some(format!("{name}.{namespace}")),
        redirect: rr.redirect.clone(),
        rewrite: rr.rewrite.clone(),
        cors_policy: rr.cors_policy.clone(),
        append_headers: rr.append_headers.clone(),
        websocket_upgrade: rr.websocket_upgrade,
        ..Default::default()
    };
    if let Some(m) = &rr.match_condition {
        let mut hm = HttpMatchRequest::default();
        if let Some(req) = &m.request {
            for (k, v) in &req.headers {
                match k.as_str() {
                    "uri" => hm.uri = Some(v.clone()),
                    "scheme" => hm.scheme = Some(v.clone()),
                    "method" => hm.method = Some(v.clone()),
                    "authority" => hm.authority = Some(v.clone()),
                    _ => {
                        hm.headers.insert(k.to_ascii_lowercase(), v.clone());
                    }
                }
            }
        }
        if let Some(src) = &m.source {
            hm.source_labels = src.labels.clone();
        }
        if hm != HttpMatchRequest::default() {
            route.matches.push(hm);
        }
    }
    if rr.redirect.is_none() {
        let routes: Vec<HttpRouteDestination> = if rr.route.is_empty() {
            vec![HttpRouteDestination {
                destination: Destination {
                    host: host.to_string(),
                    ..Default::default()
                },
                ..Default::default()
            }]
        } else {
            let single = rr.route.len() == 1;
            rr.route
                .iter()
                .map(|dw| HttpRouteDestination {
                    destination: destination(
                        dw.destination.as_ref(),
                        &dw.labels,
                        host,
                        namespace,
                        suffix,
                        add_subset,
                    ),
                    weight: if single {
                        None
                    } else {
                        Some(dw.weight.unwrap_or(0))
                    },
                    ..Default::default()
                })
                .collect()
        };
        route.route = routes;
    }
    route.timeout = rr
        .http_req_timeout
        .as_ref()
        .and_then(|t| t.simple_timeout.as_ref())
        .and_then(|t| t.timeout);
    route.retries = rr
        .http_req_retries
        .as_ref()
        .and_then(|r| r.simple_retry.as_ref())
        .map(|r| HttpRetry {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout,
            ..Default::default()
        });
    route.fault = rr.http_fault.as_ref().map(|f| HttpFaultInjection {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            fixed_delay: d.fixed_delay,
            exponential_delay: d.exponential_delay,
            percentage: Some(Percent {
                value: d.percent.unwrap_or(100.0),
            }),
            ..Default::default()
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            http_status: a.http_status,
            grpc_status: a.grpc_status.clone(),
            http2_error: a.http2_error.clone(),
            percentage: Some(Percent {
                value: a.percent.unwrap_or(100.0),
            }),
            ..Default::default()
        }),
    });
    route.mirror = rr.mirror.as_ref().map(|m| {
        destination(
            Some(m),
            &BTreeMap::new(),
            host,
            namespace,
            suffix,
            add_subset,
        )
    });
    route
}

fn traffic_policy(dp: &DestinationPolicy) -> TrafficPolicy {
    let mut tp = TrafficPolicy::default();
    if let Some(name) = dp.load_balancing.as_ref().and_then(|l| l.name) {
        tp.load_balancer = Some(LoadBalancerSettings {
            simple: Some(match name {
                SimpleLbPolicy::RoundRobin => SimpleLb::RoundRobin,
                SimpleLbPolicy::LeastConn => SimpleLb::LeastRequest,
                SimpleLbPolicy::Random => SimpleLb::Random,
            }),
            ..Default::default()
        });
    }
    if let Some(cb) = dp
        .circuit_breaker
        .as_ref()
        .and_then(|c| c.simple_cb.as_ref())
    {
        tp.connection_pool = Some(ConnectionPoolSettings {
            tcp: Some(TcpSettings {
                max_connections: cb.max_connections,
                ..Default::default()
            }),
            http: Some(HttpSettings {
                http1_max_pending_requests: cb.http_max_pending_requests,
                http2_max_requests: cb.http_max_requests,
                max_requests_per_connection: cb.http_max_requests_per_connection,
                max_retries: cb.http_max_retries,
                ..Default::default()
            }),
        });
        if cb.http_consecutive_errors.is_some()
            || cb.sleep_window.is_some()
            || cb.http_detection_interval.is_some()
        {
            tp.outlier_detection = Some(OutlierDetection {
                consecutive_errors: cb.http_consecutive_errors,
                interval: cb.http_detection_interval,
                base_ejection_time: cb.sleep_window,
                max_ejection_percent: cb.http_max_ejection_percent,
                ..Default::default()
            });
        }
    }
    tp
}

/// The ServiceEntries the EgressRules of a snapshot stand for: MESH_EXTERNAL, resolved by DNS
/// (a wildcard host by the address the caller asked for). Returned with their namespace and
/// name, for the registry.
pub fn egress_service_entries(config: &Snapshot) -> Vec<(String, String, ServiceEntry)> {
    let mut out = Vec::new();
    for obj in config.of_kind(&Kind::EgressRule) {
        let Spec::EgressRule(er) = &obj.spec else {
            continue;
        };
        if let Some(se) = egress_service_entry(er) {
            out.push((obj.key.namespace.clone(), obj.key.name.clone(), se));
        }
    }
    out
}

fn egress_service_entry(er: &EgressRule) -> Option<ServiceEntry> {
    let host = er.destination.as_ref()?.service.clone()?;
    let wildcard = host.starts_with('*');
    Some(ServiceEntry {
        hosts: vec![host],
        ports: er
            .ports
            .iter()
            .map(|p| ServicePort {
                number: p.port,
                protocol: Some(p.protocol.to_ascii_uppercase()),
                name: format!("{}-{}", p.protocol.to_ascii_lowercase(), p.port),
                target_port: None,
            })
            .collect(),
        location: Some(Location::MeshExternal),
        resolution: Some(if wildcard {
            Resolution::None
        } else {
            Resolution::Dns
        }),
        ..Default::default()
    })
}

/// Checks legacy rules: they must name a destination, and what they convert to must be valid.
pub fn validate(p: &mut Problems, spec: &Spec) {
    match spec {
        Spec::RouteRule(rr) => {
            if rr
                .destination
                .as_ref()
                .and_then(|d| service_host(d, "default", "cluster.local"))
                .is_none()
            {
                p.add("spec.destination", "a destination service name is required");
                return;
            }
            let total: u32 = rr.route.iter().map(|r| r.weight.unwrap_or(0)).sum();
            if rr.route.len() > 1 && total != 100 {
                p.add(
                    "spec.route",
                    format!("the destination weights add up to {total}, not 100"),
                );
            }
            if let Some(req) = rr.match_condition.as_ref().and_then(|m| m.request.as_ref()) {
                for (k, v) in &req.headers {
                    if let StringMatch::Regex(r) = v
                        && let Err(e) = crate::validate::check_regex(r)
                    {
                        p.add(
                            format!("spec.match.request.headers.{k}.regex"),
                            e.to_string(),
                        );
                    }
                }
            }
            if let Some(f) = &rr.http_fault {
                for (field, pct) in [
                    ("delay", f.delay.as_ref().and_then(|d| d.percent)),
                    ("abort", f.abort.as_ref().and_then(|a| a.percent)),
                ] {
                    if let Some(pct) = pct
                        && !(0.0..=100.0).contains(&pct)
                    {
                        p.add(
                            format!("spec.httpFault.{field}.percent"),
                            format!("percentage {pct} is not within 0-100"),
                        );
                    }
                }
                if let Some(code) = f.abort.as_ref().and_then(|a| a.http_status)
                    && !(200..=599).contains(&code)
                {
                    p.add(
                        "spec.httpFault.abort.httpStatus",
                        format!("HTTP status {code} is not within 200-599"),
                    );
                }
            }
        }
        Spec::DestinationPolicy(dp) => {
            p.check(
                dp.destination
                    .as_ref()
                    .and_then(|d| service_host(d, "default", "cluster.local"))
                    .is_some(),
                "spec.destination",
                "a destination service name is required",
            );
        }
        Spec::EgressRule(er) => {
            match er.destination.as_ref().and_then(|d| d.service.as_deref()) {
                Some(host) => {
                    if let Some(m) = crate::validate::host_problem(host) {
                        p.add("spec.destination.service", m);
                    }
                }
                None => p.add(
                    "spec.destination.service",
                    "the external service host is required",
                ),
            }
            if er.ports.is_empty() {
                p.add("spec.ports", "at least one port is required");
            }
            for (i, port) in er.ports.iter().enumerate() {
                if !(1..=65535).contains(&port.port) {
                    p.add(
                        format!("spec.ports[{i}].port"),
                        format!("port number {} is not within 1-65535", port.port),
                    );
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_names_from_labels() {
        let labels = BTreeMap::from([("version".to_string(), "v1".to_string())]);
        assert_eq!(subset_name(&labels), "version-v1");
        let labels = BTreeMap::from([
            ("app".to_string(), "Reviews".to_string()),
            ("track".to_string(), "a_b".to_string()),
        ]);
        assert_eq!(subset_name(&labels), "app-reviews-track-a-b");
    }

    fn snapshot(text: &str) -> std::sync::Arc<Snapshot> {
        crate::testutil::TestConfig::from_yaml(text).snapshot()
    }

    #[test]
    fn route_rules_convert_in_precedence_order_with_subsets_and_policies() {
        let snap = snapshot(
            r#"apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-default}
spec:
  destination: {name: reviews}
  precedence: 1
  route:
  - labels: {version: v1}
    weight: 80
  - labels: {version: v3}
    weight: 20
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-test-v2}
spec:
  destination: {name: reviews}
  precedence: 2
  match:
    request:
      headers:
        cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}
        uri: {prefix: /api}
  route:
  - labels: {version: v2}
  httpFault:
    delay: {percent: 10, fixedDelay: 2s}
  httpReqTimeout:
    simpleTimeout: {timeout: 1s}
---
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-cb}
spec:
  destination:
    name: reviews
    labels: {version: v1}
  circuitBreaker:
    simpleCb: {maxConnections: 1, httpMaxPendingRequests: 1, sleepWindow: 15m, httpConsecutiveErrors: 1}
"#,
        );
        let c = convert(&snap, "cluster.local");
        let host = "reviews.default.svc.cluster.local";
        let (_, vs) = &c.virtual_services[host];
        assert_eq!(vs.http.len(), 2);
        // Precedence 2 first.
        let first = &vs.http[0];
        assert_eq!(
            first.route[0].destination.subset.as_deref(),
            Some("version-v2")
        );
        let m = &first.matches[0];
        assert_eq!(m.uri, Some(StringMatch::Prefix("/api".into())));
        assert!(matches!(
            m.headers.get("cookie"),
            Some(StringMatch::Regex(_))
        ));
        assert_eq!(
            first.timeout.map(|t| t.as_std()),
            Some(std::time::Duration::from_secs(1))
        );
        let pct = first
            .fault
            .as_ref()
            .unwrap()
            .delay
            .as_ref()
            .unwrap()
            .percentage;
        assert_eq!(pct.map(|p| p.value), Some(10.0));
        let weights: Vec<_> = vs.http[1]
            .route
            .iter()
            .map(|r| (r.destination.subset.clone().unwrap(), r.weight))
            .collect();
        assert_eq!(
            weights,
            vec![
                ("version-v1".to_string(), Some(80)),
                ("version-v3".to_string(), Some(20)),
            ]
        );
        let (_, dr) = &c.destination_rules[host];
        let names: Vec<_> = dr.subsets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["version-v1", "version-v2", "version-v3"]);
        let v1 = &dr.subsets[0];
        let pool = v1
            .traffic_policy
            .as_ref()
            .unwrap()
            .connection_pool
            .as_ref()
            .unwrap();
        assert_eq!(pool.tcp.as_ref().unwrap().max_connections, Some(1));
        assert!(dr.traffic_policy.is_none());
    }

    #[test]
    fn egress_rules_become_external_service_entries() {
        let snap = snapshot(
            "apiVersion: config.istio.io/v1alpha2\nkind: EgressRule\nmetadata: {name: google}\nspec:\n  destination: {service: \"*.googleapis.com\"}\n  ports: [{port: 443, protocol: https}]\n",
        );
        let entries = egress_service_entries(&snap);
        assert_eq!(entries.len(), 1);
        let se = &entries[0].2;
        assert_eq!(se.hosts, vec!["*.googleapis.com"]);
        assert_eq!(se.location, Some(Location::MeshExternal));
        assert_eq!(se.resolution, Some(Resolution::None));
        assert_eq!(se.ports[0].protocol.as_deref(), Some("HTTPS"));
    }

    #[test]
    fn legacy_hosts() {
        let svc = IstioService {
            name: Some("reviews".into()),
            ..Default::default()
        };
        assert_eq!(
            service_host(&svc, "default", "cluster.local").as_deref(),
            Some("reviews.default.svc.cluster.local")
        );
    }
}
