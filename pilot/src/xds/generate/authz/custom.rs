//! Action CUSTOM: requests a workload's CUSTOM policies match are asked of the external
//! authorizer their `provider.name` names in MeshConfig `extensionProviders`, before any
//! DENY or ALLOW policy is evaluated (Istio's order).
//!
//! As Istio does it, two filters per chain: an RBAC filter holding the CUSTOM policies' rules
//! as shadow rules (it decides nothing, and marks a request that matches one in its dynamic
//! metadata, `istio_ext_authz_shadow_effective_policy_id` = `istio-ext-authz-...`), then
//! Envoy's ext_authz filter, enabled only for requests so marked
//! (`filter_enabled_metadata`), calling the provider's service through its outbound cluster.
//! On TCP chains the network filters do the same, for gRPC providers.
//!
//! **Failing closed.** When the provider cannot be used — not in MeshConfig, not an ext_authz
//! provider, its service or port not in the registry, two providers for one workload (Istio
//! allows one), an HTTP provider on a TCP chain — the CUSTOM policies' rules are enforced as
//! DENY rules instead: what they would have sent to the provider is refused, and the reason is
//! logged and named in the filter's policy names. Istio skips an HTTP provider on TCP; we deny.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, HeaderValue, HttpUri, grpc_service::EnvoyGrpc,
    grpc_service::TargetSpecifier, http_uri::HttpUpstreamType,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter::ConfigType};
use envoy_types::pb::envoy::config::rbac::v3::{Rbac, rbac::Action as RbacAction};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    AuthorizationRequest, AuthorizationResponse, BufferSettings, ExtAuthz, HttpService,
    ext_authz::Services,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, StringMatcher, ValueMatcher, string_matcher::MatchPattern,
    value_matcher,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;

use super::{HTTP_RBAC, NETWORK_RBAC, Target, metadata, rbac};
use crate::mesh::providers::{ExtAuthz as Provider, HeaderGlob, header_glob};
use crate::model::authz::{Applied, Effect, WorkloadPolicies};
use crate::model::service::outbound_cluster_name;
use crate::model::{Proxy, PushContext, Service};
use crate::xds::generate::util::duration;
use crate::xds::resource::any;

/// Name of the HTTP ext_authz filter of CUSTOM policies (Mixer's check filter has Envoy's
/// default name, and its per-route settings must not reach this one).
pub const HTTP_FILTER: &str = "istio.ext_authz";
/// Name of the network ext_authz filter of CUSTOM policies.
pub const NETWORK_FILTER: &str = "istio.network.ext_authz";
/// The shadow rules' stat prefix, and the prefix of the metadata keys they write.
pub const SHADOW_PREFIX: &str = "istio_ext_authz_";
/// The prefix of the shadow policies' names, which enables the ext_authz filter.
pub const POLICY_PREFIX: &str = "istio-ext-authz-";

/// What the CUSTOM policies of a workload become on one chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Custom<'a> {
    /// No CUSTOM policy applies.
    None,
    /// Ask `provider` (on `cluster`, `host` its authority) for what `shadow` matches.
    Ask {
        shadow: Rbac,
        provider: Provider<'a>,
        cluster: String,
        host: String,
    },
    /// The provider cannot be used: deny what the rules match.
    Deny { rules: Rbac, reason: String },
}

/// The CUSTOM policies of `policies` on `target`.
pub fn resolve<'a>(
    ctx: &'a PushContext,
    proxy: &Proxy,
    policies: &WorkloadPolicies,
    target: Target,
) -> Custom<'a> {
    let custom: Vec<&Applied> = policies.enforced(Effect::Custom).collect();
    if custom.is_empty() {
        return Custom::None;
    }
    match provider(ctx, proxy, &custom, target) {
        Ok((provider, cluster, host)) => match rbac(&custom, RbacAction::Allow, target) {
            Ok(mut shadow) => {
                shadow.policies = shadow
                    .policies
                    .into_iter()
                    .map(|(name, p)| (format!("{POLICY_PREFIX}{name}"), p))
                    .collect();
                Custom::Ask {
                    shadow,
                    provider,
                    cluster,
                    host,
                }
            }
            Err(e) => deny(&custom, target, e.to_string()),
        },
        Err(reason) => deny(&custom, target, reason),
    }
}

/// The provider the CUSTOM policies name, its cluster and host; `Err(why)` when it cannot be
/// used on `target`.
fn provider<'a>(
    ctx: &'a PushContext,
    proxy: &Proxy,
    custom: &[&Applied],
    target: Target,
) -> Result<(Provider<'a>, String, String), String> {
    let names: BTreeSet<&str> = custom
        .iter()
        .map(|a| a.provider.as_deref().unwrap_or(""))
        .collect();
    if names.len() > 1 {
        let names: Vec<&str> = names.into_iter().collect();
        return Err(format!(
            "CUSTOM policies of one workload must use one provider; they name {}",
            names.join(", ")
        ));
    }
    let name = names.into_iter().next().unwrap_or_default();
    let entry = ctx
        .mesh
        .extension_provider(name)
        .ok_or_else(|| format!("provider {name:?} is not in MeshConfig extensionProviders"))?;
    let provider = entry
        .ext_authz()
        .ok_or_else(|| format!("provider {name:?} is not an ext_authz provider"))?;
    if target == Target::Tcp && matches!(provider, Provider::Http(_)) {
        return Err(format!(
            "provider {name:?} is an HTTP authorizer, which cannot check TCP connections"
        ));
    }
    let host = provider.hostname();
    let service: &Service = ctx
        .registry
        .service(host)
        .map(|s| s.as_ref())
        .ok_or_else(|| format!("provider {name:?}: service {host:?} is not in the registry"))?;
    if !service.ports.iter().any(|p| p.number == provider.port()) {
        return Err(format!(
            "provider {name:?}: service {host:?} has no port {}",
            provider.port()
        ));
    }
    if !ctx.services_for_proxy(proxy).any(|s| s.hostname == host) {
        return Err(format!(
            "provider {name:?}: service {host:?} is not visible to this proxy (its Sidecar's \
             egress hosts or the service's exportTo leave it out)"
        ));
    }
    let cluster = outbound_cluster_name(provider.port(), "", host);
    Ok((provider, cluster, host.to_string()))
}

fn deny(custom: &[&Applied], target: Target, reason: String) -> Custom<'static> {
    tracing::warn!(
        %reason,
        "CUSTOM authorization provider cannot be used: denying what its policies match"
    );
    let rules = match rbac(custom, RbacAction::Deny, target) {
        Ok(mut r) => {
            r.policies = r
                .policies
                .into_iter()
                .map(|(name, p)| (fail_closed_name(&name, &reason), p))
                .collect();
            r
        }
        Err(e) => return Custom::deny_everything(format!("{reason}; {e}")),
    };
    Custom::Deny { rules, reason }
}

fn fail_closed_name(policy: &str, reason: &str) -> String {
    let mut name = format!("{policy} fail-closed: {reason}");
    if name.len() > 300 {
        let mut cut = 300;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

// === impl Custom ===

impl Custom<'_> {
    fn deny_everything(reason: String) -> Custom<'static> {
        let all = super::deny_all(&reason);
        Custom::Deny {
            rules: all.rules.unwrap_or_default(),
            reason,
        }
    }

    /// The HTTP filters: shadow RBAC and ext_authz, or an enforcing RBAC filter.
    pub fn http_filters(self) -> Vec<HttpFilter> {
        let filter = |name: &str, cfg| HttpFilter {
            name: name.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(cfg)),
            ..Default::default()
        };
        match self {
            Custom::None => Vec::new(),
            Custom::Deny { rules, .. } => vec![filter(
                HTTP_RBAC,
                any(&HttpRbac {
                    rules: Some(rules),
                    ..Default::default()
                }),
            )],
            Custom::Ask {
                shadow,
                provider,
                cluster,
                host,
            } => vec![
                filter(
                    HTTP_RBAC,
                    any(&HttpRbac {
                        shadow_rules: Some(shadow),
                        shadow_rules_stat_prefix: SHADOW_PREFIX.into(),
                        ..Default::default()
                    }),
                ),
                filter(HTTP_FILTER, any(&http_ext_authz(provider, cluster, host))),
            ],
        }
    }

    /// The network filters: shadow RBAC and ext_authz, or an enforcing RBAC filter.
    pub fn network_filters(self) -> Vec<Filter> {
        let filter = |name: &str, cfg| Filter {
            name: name.to_string(),
            config_type: Some(ConfigType::TypedConfig(cfg)),
        };
        match self {
            Custom::None => Vec::new(),
            Custom::Deny { rules, .. } => vec![filter(
                NETWORK_RBAC,
                any(&NetworkRbac {
                    stat_prefix: "tcp.".into(),
                    rules: Some(rules),
                    ..Default::default()
                }),
            )],
            Custom::Ask {
                shadow,
                provider,
                cluster,
                host,
            } => vec![
                filter(
                    NETWORK_RBAC,
                    any(&NetworkRbac {
                        stat_prefix: "tcp.".into(),
                        shadow_rules: Some(shadow),
                        shadow_rules_stat_prefix: SHADOW_PREFIX.into(),
                        ..Default::default()
                    }),
                ),
                filter(
                    NETWORK_FILTER,
                    any(&NetworkExtAuthz {
                        stat_prefix: "tcp.".into(),
                        grpc_service: Some(grpc_service(&provider, cluster, host)),
                        failure_mode_allow: provider.fail_open(),
                        include_peer_certificate: true,
                        transport_api_version: ApiVersion::V3 as i32,
                        filter_enabled_metadata: Some(enabled(NETWORK_RBAC)),
                        ..Default::default()
                    }),
                ),
            ],
        }
    }
}

/// Enabled when the shadow rules of the RBAC filter `filter` matched a CUSTOM policy.
fn enabled(filter: &str) -> MetadataMatcher {
    let key = format!("{SHADOW_PREFIX}shadow_effective_policy_id");
    metadata(
        filter,
        &[key.as_str()],
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(POLICY_PREFIX.into())),
                ignore_case: false,
            })),
        },
    )
}

/// The provider's service on its cluster; the `:authority` is its hostname (Envoy's default,
/// the cluster name, has `|` in it, which HTTP/2 servers refuse).
fn grpc_service(provider: &Provider<'_>, cluster: String, host: String) -> GrpcService {
    GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: cluster,
            authority: host,
            ..Default::default()
        })),
        timeout: Some(duration(provider.timeout())),
        ..Default::default()
    }
}

fn http_ext_authz(provider: Provider<'_>, cluster: String, host: String) -> ExtAuthz {
    let mut cfg = ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: provider.fail_open(),
        status_on_error: Some(HttpStatus {
            code: provider.status_on_error() as i32,
        }),
        with_request_body: provider.body().map(|b| BufferSettings {
            max_request_bytes: b.max_request_bytes,
            allow_partial_message: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        }),
        filter_enabled_metadata: Some(enabled(HTTP_RBAC)),
        // A gRPC provider (Mixer among them) sees the caller's identity.
        include_peer_certificate: true,
        ..Default::default()
    };
    if let Provider::Http(h) = provider {
        // The request headers sent to an HTTP provider (Envoy's default set when empty).
        cfg.allowed_headers = headers(&h.include_request_headers_in_check);
    }
    cfg.services = Some(match provider {
        Provider::Grpc(_) => Services::GrpcService(grpc_service(&provider, cluster, host)),
        Provider::Http(h) => {
            let port = h.port;
            Services::HttpService(HttpService {
                server_uri: Some(HttpUri {
                    uri: format!("http://{host}:{port}"),
                    timeout: Some(duration(provider.timeout())),
                    http_upstream_type: Some(HttpUpstreamType::Cluster(cluster)),
                }),
                path_prefix: h.path_prefix.clone(),
                authorization_request: Some(AuthorizationRequest {
                    headers_to_add: h
                        .include_additional_headers_in_check
                        .iter()
                        .map(|(k, v)| HeaderValue {
                            key: k.clone(),
                            value: v.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                authorization_response: Some(AuthorizationResponse {
                    allowed_upstream_headers: headers(&h.headers_to_upstream_on_allow),
                    allowed_client_headers: headers(&h.headers_to_downstream_on_deny),
                    allowed_client_headers_on_success: headers(&h.headers_to_downstream_on_allow),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
    });
    cfg
}

/// Header name patterns as Envoy's list (any case); `None` for an empty list (Envoy's
/// defaults).
fn headers(globs: &[String]) -> Option<ListStringMatcher> {
    let patterns: Vec<StringMatcher> = globs
        .iter()
        .filter_map(|g| header_glob(g).ok())
        .map(|g| StringMatcher {
            match_pattern: Some(match g {
                HeaderGlob::Exact(s) => MatchPattern::Exact(s.to_string()),
                HeaderGlob::Prefix(s) => MatchPattern::Prefix(s.to_string()),
                HeaderGlob::Suffix(s) => MatchPattern::Suffix(s.to_string()),
            }),
            ignore_case: true,
        })
        .collect();
    (!patterns.is_empty()).then_some(ListStringMatcher { patterns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestConfig, mk_sidecar};
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    use prost::Message;

    const MESH: &str = r#"
extensionProviders:
- name: grpc-authz
  envoyExtAuthzGrpc: {service: ext-authz.default.svc.cluster.local, port: "9000", timeout: 2s}
- name: http-authz
  envoyExtAuthzHttp:
    service: default/ext-authz.default.svc.cluster.local
    port: 8000
    pathPrefix: /check
    statusOnError: "503"
    includeRequestHeadersInCheck: [x-ext-authz, "x-team-*"]
    headersToUpstreamOnAllow: [x-ext-authz-check-result]
- name: tracing
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"#;

    /// The workload the tests look at.
    const RATINGS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.4.0.1, labels: {app: ratings}}]
";

    /// The providers' service.
    const EXT_AUTHZ: &str = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-authz, namespace: default}
spec:
  hosts: [ext-authz.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: grpc, protocol: GRPC}, {number: 8000, name: http}]
  endpoints: [{address: 127.4.0.9}]
";

    fn config(policies: &str) -> TestConfig {
        TestConfig::from_yaml(&format!("{RATINGS}{EXT_AUTHZ}{policies}")).mesh_yaml(MESH)
    }

    fn custom(name: &str, provider: &str, paths: &str) -> String {
        format!(
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  action: CUSTOM
  provider: {{name: {provider}}}
  rules: [{{to: [{{operation: {{paths: [{paths}]}}}}]}}]
"
        )
    }

    fn ratings() -> Proxy {
        mk_sidecar("default", "127.4.0.1")
            .labels(&[("app", "ratings")])
            .build()
    }

    fn http(cfg: &TestConfig) -> Vec<HttpFilter> {
        let ctx = cfg.push_context();
        let policies = super::super::workload_policies(&ctx, &ratings(), None);
        resolve(&ctx, &ratings(), &policies, Target::Http).http_filters()
    }

    fn typed<M: Message + Default>(f: &HttpFilter) -> M {
        let Some(http_filter::ConfigType::TypedConfig(a)) = &f.config_type else {
            panic!("{} has no typed config", f.name)
        };
        M::decode(&a.value[..]).unwrap()
    }

    #[test]
    fn a_grpc_provider_is_asked_for_what_the_rules_match() {
        let filters = http(&config(&custom("ext", "grpc-authz", "'/custom*'")));
        let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [HTTP_RBAC, HTTP_FILTER]);
        let rbac: HttpRbac = typed(&filters[0]);
        assert!(rbac.rules.is_none(), "the shadow filter decides nothing");
        assert_eq!(rbac.shadow_rules_stat_prefix, SHADOW_PREFIX);
        let shadow = rbac.shadow_rules.unwrap();
        assert_eq!(shadow.action, RbacAction::Allow as i32);
        let keys: Vec<&String> = shadow.policies.keys().collect();
        assert_eq!(keys, ["istio-ext-authz-ns[default]-policy[ext]-rule[0]"]);
        let ext: ExtAuthz = typed(&filters[1]);
        assert_eq!(ext.filter_enabled_metadata, Some(enabled(HTTP_RBAC)));
        assert!(!ext.failure_mode_allow);
        assert_eq!(ext.status_on_error.unwrap().code, 403);
        let Some(Services::GrpcService(g)) = ext.services else {
            panic!("a gRPC service")
        };
        let Some(TargetSpecifier::EnvoyGrpc(e)) = g.target_specifier else {
            panic!()
        };
        assert_eq!(
            e.cluster_name,
            "outbound|9000||ext-authz.default.svc.cluster.local"
        );
        assert_eq!(e.authority, "ext-authz.default.svc.cluster.local");
        assert_eq!(g.timeout.unwrap().seconds, 2);
    }

    #[test]
    fn an_http_provider_gets_its_headers_and_prefix() {
        let filters = http(&config(&custom("ext", "http-authz", "'*'")));
        let ext: ExtAuthz = typed(&filters[1]);
        assert_eq!(ext.status_on_error.unwrap().code, 503);
        let allowed: Vec<_> = ext
            .allowed_headers
            .unwrap()
            .patterns
            .into_iter()
            .map(|p| p.match_pattern.unwrap())
            .collect();
        assert_eq!(
            allowed,
            [
                MatchPattern::Exact("x-ext-authz".into()),
                MatchPattern::Prefix("x-team-".into())
            ]
        );
        let Some(Services::HttpService(h)) = ext.services else {
            panic!("an HTTP service")
        };
        assert_eq!(h.path_prefix, "/check");
        let uri = h.server_uri.unwrap();
        assert_eq!(uri.uri, "http://ext-authz.default.svc.cluster.local:8000");
        assert_eq!(
            uri.http_upstream_type,
            Some(HttpUpstreamType::Cluster(
                "outbound|8000||ext-authz.default.svc.cluster.local".into()
            ))
        );
        assert_eq!(uri.timeout.unwrap().seconds, 600, "Istio's default");
        let upstream = h
            .authorization_response
            .unwrap()
            .allowed_upstream_headers
            .unwrap();
        assert_eq!(upstream.patterns.len(), 1);
    }

    #[test]
    fn a_provider_that_cannot_be_used_denies_what_its_rules_match() {
        for (policies, reason) in [
            (
                custom("ext", "nope", "'/custom'"),
                "provider \"nope\" is not in MeshConfig extensionProviders",
            ),
            (
                custom("ext", "tracing", "'/custom'"),
                "provider \"tracing\" is not an ext_authz provider",
            ),
            (
                custom("a", "grpc-authz", "'/a'") + &custom("b", "http-authz", "'/b'"),
                "must use one provider; they name grpc-authz, http-authz",
            ),
        ] {
            let filters = http(&config(&policies));
            assert_eq!(filters.len(), 1, "{reason}");
            let rbac: HttpRbac = typed(&filters[0]);
            let rules = rbac.rules.expect("enforced rules");
            assert_eq!(rules.action, RbacAction::Deny as i32, "{reason}");
            assert!(
                rules
                    .policies
                    .keys()
                    .all(|k| k.contains("fail-closed") && k.contains(reason)),
                "{reason}: {:?}",
                rules.policies.keys()
            );
        }
        // A provider whose service is not in the registry.
        let ctx =
            TestConfig::from_yaml(&format!("{RATINGS}{}", custom("ext", "grpc-authz", "'*'")))
                .mesh_yaml(MESH)
                .push_context();
        let policies = super::super::workload_policies(&ctx, &ratings(), None);
        let Custom::Deny { reason, .. } = resolve(&ctx, &ratings(), &policies, Target::Http) else {
            panic!("deny")
        };
        assert!(reason.contains("is not in the registry"), "{reason}");
    }

    #[test]
    fn on_tcp_grpc_providers_are_asked_and_http_ones_deny() {
        let cfg = config(&custom("ext", "grpc-authz", "'/custom'"));
        let ctx = cfg.push_context();
        let policies = super::super::workload_policies(&ctx, &ratings(), None);
        let filters = resolve(&ctx, &ratings(), &policies, Target::Tcp).network_filters();
        let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [NETWORK_RBAC, NETWORK_FILTER]);
        let Some(ConfigType::TypedConfig(a)) = &filters[1].config_type else {
            panic!()
        };
        let ext = NetworkExtAuthz::decode(&a.value[..]).unwrap();
        assert_eq!(ext.filter_enabled_metadata, Some(enabled(NETWORK_RBAC)));

        let cfg = config(&custom("ext", "http-authz", "'/custom'"));
        let ctx = cfg.push_context();
        let policies = super::super::workload_policies(&ctx, &ratings(), None);
        let Custom::Deny { rules, reason } = resolve(&ctx, &ratings(), &policies, Target::Tcp)
        else {
            panic!("deny")
        };
        assert!(reason.contains("cannot check TCP"), "{reason}");
        // The path is dropped on TCP, so the whole connection is denied (DENY's broadening).
        assert_eq!(rules.policies.len(), 1);
    }
}
