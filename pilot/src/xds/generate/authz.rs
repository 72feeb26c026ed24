//! Authorization in Envoy: the policies of a workload ([`crate::model::authz`]) as
//! `envoy.filters.http.rbac` on its inbound HTTP chains and `envoy.filters.network.rbac` on
//! its inbound TCP chains (gateways get the same on theirs), and MeshConfig's
//! `pathNormalization` on those connection managers so a path rule sees the path the
//! workload will.
//!
//! - **Filters.** One filter per effect, in Istio's order: AUDIT (Envoy's LOG), DENY, ALLOW,
//!   then one with shadow rules only (Istio 1.0 PERMISSIVE). The ALLOW filter exists as soon
//!   as one ALLOW policy applies, so an ALLOW policy without rules denies all. Each rule of a
//!   policy is an Envoy policy `ns[NS]-policy[NAME]-rule[I]`: principals (who: `from`, and
//!   the `when` keys about the caller) and permissions (what: `to`, and the `when` keys about
//!   the destination).
//! - **Where.** HTTP filters go first in the chain, after the authentication filters
//!   ([`AUTHN_FILTERS`], `jwt_authn` among them, which run before authorization), and so
//!   before CORS, Mixer's check, faults and the router.
//! - **TCP.** A TCP connection has no method, path, host, header or JWT. A DENY (or AUDIT)
//!   rule that uses them loses those conditions and so denies the whole connection for the
//!   rest of its conditions (broader, never narrower: CVE-2019-12243's class); an ALLOW rule
//!   that uses them is left out (it never allows a connection).
//! - **Identities.** Principals match Envoy's authenticated peer (the URI SAN of the
//!   client's certificate): `TD/ns/NS/sa/SA` as `spiffe://TD/ns/NS/sa/SA`, `*` as any
//!   authenticated peer; namespaces as the regex `.*/ns/NS/.*` on it. Plain text callers
//!   have no principal.
//! - **JWT.** Request principals and `request.auth.*` match what the authentication filters
//!   (`jwt_authn`, then the `istio_authn` stand-in of `super::authn`) leave in the dynamic
//!   metadata namespace [`AUTHN_METADATA`], as Istio's `istio_authn` filter did: the string
//!   `request.auth.principal` (`ISS/SUB`), the strings `request.auth.audiences` and
//!   `request.auth.presenter`, and `request.auth.claims`, each claim a list of strings.
//!   Without a verified token none is there, and nothing that needs one matches.
//! - **CUSTOM.** Policies asking an external authorizer go first, as a shadow RBAC filter
//!   marking the requests they match and an ext_authz filter for those ([`custom`]).
//! - **Fail closed.** When a policy of the workload cannot be translated, the workload gets a
//!   single filter denying everything, whose one policy is named `fail-closed: REASON` (seen
//!   in `/debug/config_dump` and Envoy's RBAC log), and the reason is logged.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter::ConfigType};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, SourcedMetadata, permission, principal,
    rbac::Action as RbacAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, header_matcher::HeaderMatchSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::PathWithEscapedSlashesAction,
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher,
    ValueMatcher, list_matcher, metadata_matcher::PathSegment,
    metadata_matcher::path_segment::Segment, path_matcher, string_matcher::MatchPattern,
    value_matcher,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use prost::Message;

use crate::mesh::MeshConfig;
use crate::model::authz::{
    Applied, AuthzError, Effect, Key, WorkloadPolicies, parse_cidr, uses_http_only,
};
use crate::model::{Proxy, PushContext, Service};
use crate::xds::resource::any;
use mesh_proto::security::{Condition, Operation, Rule, Source};

/// Envoy's HTTP RBAC filter.
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
/// Envoy's network (TCP) RBAC filter.
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// The HTTP filters that authenticate a request: authorization goes after them.
pub const AUTHN_FILTERS: &[&str] = &["envoy.filters.http.jwt_authn", "istio_authn"];
/// The dynamic metadata namespace of the request's verified identity (`super::authn`'s).
pub const AUTHN_METADATA: &str = "istio_authn";

/// What a filter is made for: an HTTP request, or a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Http,
    Tcp,
}

/// One RBAC filter's configuration: enforced rules and/or shadow rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacConfig {
    pub rules: Option<Rbac>,
    pub shadow: Option<Rbac>,
}

/// The policies that apply to `proxy` on a chain serving `service` (all of the proxy's
/// services when `None`).
pub fn workload_policies(
    ctx: &PushContext,
    proxy: &Proxy,
    service: Option<&Service>,
) -> WorkloadPolicies {
    if ctx.authz.is_empty() {
        return WorkloadPolicies::default();
    }
    let mut services: Vec<&Service> = match service {
        Some(s) => vec![s],
        None => proxy
            .ips
            .iter()
            .flat_map(|ip| ctx.registry.instances_at(ip))
            .map(|(svc, _, _)| svc.as_ref())
            .collect(),
    };
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    services.dedup_by(|a, b| a.hostname == b.hostname);
    ctx.authz
        .for_workload(&proxy.namespace, &proxy.labels, &services)
}

/// The RBAC filter configurations for `policies` on `target`, in evaluation order.
pub fn rbac_configs(policies: &WorkloadPolicies, target: Target) -> Vec<RbacConfig> {
    if policies.is_empty() {
        return Vec::new();
    }
    match build(policies, target) {
        Ok(configs) => configs,
        Err(reason) => {
            tracing::warn!(%reason, "authorization policy cannot be translated: denying all");
            vec![deny_all(&reason)]
        }
    }
}

/// A filter that denies everything, its one policy named after `reason` (so
/// `/debug/config_dump` and Envoy's RBAC log say why).
fn deny_all(reason: &str) -> RbacConfig {
    let mut name = format!("fail-closed: {reason}");
    if name.len() > 300 {
        let mut cut = 300;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    let everything = Policy {
        permissions: vec![perm(permission::Rule::Any(true))],
        principals: vec![id(principal::Identifier::Any(true))],
        ..Default::default()
    };
    RbacConfig {
        rules: Some(Rbac {
            action: RbacAction::Deny as i32,
            policies: HashMap::from([(name, everything)]),
            ..Default::default()
        }),
        shadow: None,
    }
}

fn build(policies: &WorkloadPolicies, target: Target) -> Result<Vec<RbacConfig>, String> {
    let errors = policies.errors();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let mut out = Vec::new();
    for (effect, action) in [
        (Effect::Audit, RbacAction::Log),
        (Effect::Deny, RbacAction::Deny),
        (Effect::Allow, RbacAction::Allow),
    ] {
        let applied: Vec<&Applied> = policies.enforced(effect).collect();
        if applied.is_empty() {
            continue;
        }
        let rbac = rbac(&applied, action, target).map_err(|e| e.to_string())?;
        out.push(RbacConfig {
            rules: Some(rbac),
            shadow: None,
        });
    }
    let shadow: Vec<&Applied> = policies.shadow().collect();
    if !shadow.is_empty() {
        let rbac = rbac(&shadow, RbacAction::Allow, target).map_err(|e| e.to_string())?;
        out.push(RbacConfig {
            rules: None,
            shadow: Some(rbac),
        });
    }
    Ok(out)
}

fn rbac(applied: &[&Applied], action: RbacAction, target: Target) -> Result<Rbac, AuthzError> {
    // A DENY or AUDIT rule on TCP is broadened (its HTTP-only conditions dropped); an ALLOW
    // rule that needs HTTP is left out.
    let broaden = action != RbacAction::Allow;
    let mut policies = HashMap::new();
    for a in applied {
        for (i, rule) in a.rules.iter().enumerate() {
            if target == Target::Tcp && !broaden && uses_http_only(rule) {
                continue;
            }
            let drop_http = target == Target::Tcp;
            policies.insert(
                format!("{}-rule[{i}]", a.name),
                rule_policy(rule, drop_http)?,
            );
        }
    }
    Ok(Rbac {
        action: action as i32,
        policies,
        ..Default::default()
    })
}

/// An Envoy policy for one rule; `drop_http` leaves out what only HTTP requests have.
pub fn rule_policy(rule: &Rule, drop_http: bool) -> Result<Policy, AuthzError> {
    let mut ids = Vec::new();
    let sources: Vec<&Source> = rule.from.iter().filter_map(|f| f.source.as_ref()).collect();
    if !sources.is_empty() {
        let mut alternatives = Vec::new();
        for s in sources {
            alternatives.push(and_ids(source_ids(s, drop_http)?));
        }
        ids.push(or_ids(alternatives));
    }
    let mut perms = Vec::new();
    let ops: Vec<&Operation> = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .collect();
    if !ops.is_empty() {
        let mut alternatives = Vec::new();
        for o in ops {
            alternatives.push(and_rules(operation_rules(o, drop_http)?));
        }
        perms.push(or_rules(alternatives));
    }
    for (i, c) in rule.when.iter().enumerate() {
        let key = Key::parse(&c.key).map_err(|m| invalid(format!("when[{i}].key"), m))?;
        if drop_http && key.http_only() {
            continue;
        }
        if key.is_principal() {
            ids.push(condition(c, |v| principal_for(&key, v))?);
        } else {
            perms.push(condition_permission(c, |v| permission_for(&key, v))?);
        }
    }
    Ok(Policy {
        permissions: vec![and_rules(perms)],
        principals: vec![and_ids(ids)],
        ..Default::default()
    })
}

fn invalid(field: String, message: impl Into<String>) -> AuthzError {
    AuthzError::Invalid {
        field,
        message: message.into(),
    }
}

fn source_ids(s: &Source, drop_http: bool) -> Result<Vec<Principal>, AuthzError> {
    let mut ids = Vec::new();
    let mut field = |values: &[String],
                     negate: bool,
                     f: &dyn Fn(&str) -> Result<Principal, AuthzError>|
     -> Result<(), AuthzError> {
        if values.is_empty() {
            return Ok(());
        }
        let mut alternatives = Vec::new();
        for v in values {
            alternatives.push(f(v)?);
        }
        let id = or_ids(alternatives);
        ids.push(if negate { not_id(id) } else { id });
        Ok(())
    };
    let peer = |v: &str| Ok(authenticated(spiffe_matcher(v)));
    let namespace = |v: &str| Ok(authenticated(namespace_matcher(v)));
    let account = |v: &str| Ok(authenticated(service_account_matcher(v)));
    let domain = |v: &str| Ok(authenticated(trust_domain_matcher(v)));
    let direct = |v: &str| ip_id(v, false);
    let remote = |v: &str| ip_id(v, true);
    let request = |v: &str| Ok(request_principal(v));
    field(&s.principals, false, &peer)?;
    field(&s.not_principals, true, &peer)?;
    if !drop_http {
        field(&s.request_principals, false, &request)?;
        field(&s.not_request_principals, true, &request)?;
    }
    field(&s.namespaces, false, &namespace)?;
    field(&s.not_namespaces, true, &namespace)?;
    field(&s.service_accounts, false, &account)?;
    field(&s.not_service_accounts, true, &account)?;
    field(&s.trust_domains, false, &domain)?;
    field(&s.not_trust_domains, true, &domain)?;
    field(&s.ip_blocks, false, &direct)?;
    field(&s.not_ip_blocks, true, &direct)?;
    field(&s.remote_ip_blocks, false, &remote)?;
    field(&s.not_remote_ip_blocks, true, &remote)?;
    Ok(ids)
}

fn operation_rules(o: &Operation, drop_http: bool) -> Result<Vec<Permission>, AuthzError> {
    let mut rules = Vec::new();
    let mut field = |values: &[String],
                     negate: bool,
                     f: &dyn Fn(&str) -> Result<Permission, AuthzError>|
     -> Result<(), AuthzError> {
        if values.is_empty() {
            return Ok(());
        }
        let mut alternatives = Vec::new();
        for v in values {
            alternatives.push(f(v)?);
        }
        let rule = or_rules(alternatives);
        rules.push(if negate { not_rule(rule) } else { rule });
        Ok(())
    };
    let host = |v: &str| Ok(host_permission(v));
    let method = |v: &str| Ok(header_permission(":method", v));
    let path = |v: &str| Ok(path_permission(v));
    let port = |v: &str| port_permission(v);
    if !drop_http {
        field(&o.hosts, false, &host)?;
        field(&o.not_hosts, true, &host)?;
        field(&o.methods, false, &method)?;
        field(&o.not_methods, true, &method)?;
        field(&o.paths, false, &path)?;
        field(&o.not_paths, true, &path)?;
    }
    field(&o.ports, false, &port)?;
    field(&o.not_ports, true, &port)?;
    Ok(rules)
}

/// `values` (any of) and not `notValues` (none of) of a condition about the caller.
fn condition(
    c: &Condition,
    f: impl Fn(&str) -> Result<Principal, AuthzError>,
) -> Result<Principal, AuthzError> {
    let mut parts = Vec::new();
    if !c.values.is_empty() {
        parts.push(or_ids(
            c.values.iter().map(|v| f(v)).collect::<Result<_, _>>()?,
        ));
    }
    if !c.not_values.is_empty() {
        let none = or_ids(
            c.not_values
                .iter()
                .map(|v| f(v))
                .collect::<Result<_, _>>()?,
        );
        parts.push(not_id(none));
    }
    Ok(and_ids(parts))
}

/// The same for a condition about the destination.
fn condition_permission(
    c: &Condition,
    f: impl Fn(&str) -> Result<Permission, AuthzError>,
) -> Result<Permission, AuthzError> {
    let mut parts = Vec::new();
    if !c.values.is_empty() {
        parts.push(or_rules(
            c.values.iter().map(|v| f(v)).collect::<Result<_, _>>()?,
        ));
    }
    if !c.not_values.is_empty() {
        let none = or_rules(
            c.not_values
                .iter()
                .map(|v| f(v))
                .collect::<Result<_, _>>()?,
        );
        parts.push(not_rule(none));
    }
    Ok(and_rules(parts))
}

fn principal_for(key: &Key, v: &str) -> Result<Principal, AuthzError> {
    Ok(match key {
        Key::Header(name) => header_id(name, v),
        Key::SourceIp => ip_id(v, false)?,
        Key::RemoteIp => ip_id(v, true)?,
        Key::SourceNamespace => authenticated(namespace_matcher(v)),
        Key::SourcePrincipal => authenticated(spiffe_matcher(v)),
        Key::AuthPrincipal => request_principal(v),
        Key::AuthAudiences => authn_string("request.auth.audiences", v),
        Key::AuthPresenter => authn_string("request.auth.presenter", v),
        Key::AuthClaims(path) => claim(path, v),
        other => {
            return Err(invalid(
                "when".into(),
                format!("{other:?} is not about the caller"),
            ));
        }
    })
}

fn permission_for(key: &Key, v: &str) -> Result<Permission, AuthzError> {
    Ok(match key {
        Key::DestinationIp => {
            let (ip, len) = parse_cidr(v).map_err(|m| invalid("when.values".into(), m))?;
            perm(permission::Rule::DestinationIp(cidr(ip, len)))
        }
        Key::DestinationPort => port_permission(v)?,
        Key::ConnectionSni => perm(permission::Rule::RequestedServerName(glob(v, false))),
        Key::EnvoyFilter { filter, key } => {
            perm(permission::Rule::SourcedMetadata(SourcedMetadata {
                metadata_matcher: Some(metadata(filter, &[key.as_str()], string_or_list(v))),
                metadata_source: 0,
            }))
        }
        other => {
            return Err(invalid(
                "when".into(),
                format!("{other:?} is not about the destination"),
            ));
        }
    })
}

// === matchers ===

/// Istio's value globs: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact.
fn glob(v: &str, ignore_case: bool) -> StringMatcher {
    let pattern = if v == "*" {
        MatchPattern::SafeRegex(regex(".+"))
    } else if let Some(suffix) = v.strip_prefix('*') {
        MatchPattern::Suffix(suffix.to_string())
    } else if let Some(prefix) = v.strip_suffix('*') {
        MatchPattern::Prefix(prefix.to_string())
    } else {
        MatchPattern::Exact(v.to_string())
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

fn regex_matcher(r: String) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(regex(&r))),
        ignore_case: false,
    }
}

/// RE2 text matching `s` literally.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A regex for one path segment matching the glob `v`.
fn segment_regex(v: &str) -> String {
    if v == "*" {
        return "[^/]+".into();
    }
    if let Some(s) = v.strip_prefix('*') {
        return format!("[^/]*{}", escape(s));
    }
    if let Some(p) = v.strip_suffix('*') {
        return format!("{}[^/]*", escape(p));
    }
    escape(v)
}

/// A principal as Envoy sees it: `spiffe://` and Istio's `TD/ns/NS/sa/SA`.
fn spiffe_matcher(v: &str) -> StringMatcher {
    if v == "*" || v.starts_with('*') {
        glob(v, false)
    } else {
        glob(&format!("spiffe://{v}"), false)
    }
}

fn namespace_matcher(v: &str) -> StringMatcher {
    regex_matcher(format!(".*/ns/{}/.*", segment_regex(v)))
}

fn service_account_matcher(v: &str) -> StringMatcher {
    let (ns, sa) = v.split_once('/').unwrap_or((v, ""));
    regex_matcher(format!(
        "spiffe://[^/]+/ns/{}/sa/{}",
        segment_regex(ns),
        segment_regex(sa)
    ))
}

fn trust_domain_matcher(v: &str) -> StringMatcher {
    regex_matcher(format!("spiffe://{}/.*", segment_regex(v)))
}

fn authenticated(m: StringMatcher) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

fn cidr(ip: std::net::IpAddr, len: u32) -> CidrRange {
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

fn ip_id(v: &str, remote: bool) -> Result<Principal, AuthzError> {
    let (ip, len) = parse_cidr(v).map_err(|m| invalid("ipBlocks".into(), m))?;
    Ok(id(if remote {
        principal::Identifier::RemoteIp(cidr(ip, len))
    } else {
        principal::Identifier::DirectRemoteIp(cidr(ip, len))
    }))
}

fn header_matcher(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        HeaderMatchSpecifier::StringMatch(glob(v, ignore_case))
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn header_id(name: &str, v: &str) -> Principal {
    id(principal::Identifier::Header(header_matcher(
        name, v, false,
    )))
}

fn header_permission(name: &str, v: &str) -> Permission {
    perm(permission::Rule::Header(header_matcher(name, v, false)))
}

/// A host, matched on `:authority` without case, with or without a port.
fn host_permission(v: &str) -> Permission {
    let header = |m: StringMatcher| {
        perm(permission::Rule::Header(HeaderMatcher {
            name: ":authority".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(m)),
            ..Default::default()
        }))
    };
    if v == "*" {
        return header_permission(":authority", "*");
    }
    if let Some(prefix) = v.strip_suffix('*') {
        return header(glob(&format!("{prefix}*"), true));
    }
    let with_port = if let Some(suffix) = v.strip_prefix('*') {
        format!("(?i).*{}:[0-9]+", escape(suffix))
    } else {
        format!("(?i){}:[0-9]+", escape(v))
    };
    or_rules(vec![
        header(glob(v, true)),
        header(regex_matcher(with_port)),
    ])
}

fn path_permission(v: &str) -> Permission {
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(glob(v, false))),
    }))
}

fn port_permission(v: &str) -> Result<Permission, AuthzError> {
    let port: u32 = v
        .parse()
        .ok()
        .filter(|p| *p <= 65535)
        .ok_or_else(|| invalid("ports".into(), format!("{v:?} is not a port number")))?;
    Ok(perm(permission::Rule::DestinationPort(port)))
}

fn metadata(filter: &str, path: &[&str], value: ValueMatcher) -> MetadataMatcher {
    MetadataMatcher {
        filter: filter.to_string(),
        path: path
            .iter()
            .map(|k| PathSegment {
                segment: Some(Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(value),
        invert: false,
    }
}

/// A value that is the string `v`, or a list holding it (JWT claims are either).
fn string_or_list(v: &str) -> ValueMatcher {
    if v == "*" {
        return ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        };
    }
    let string = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(glob(v, false))),
    };
    let list = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string.clone()))),
            },
        ))),
    };
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: vec![string, list],
        })),
    }
}

/// A matcher on the verified request identity at `path` of [`AUTHN_METADATA`].
fn authn(path: &[&str], value: ValueMatcher) -> Principal {
    id(principal::Identifier::SourcedMetadata(SourcedMetadata {
        metadata_matcher: Some(metadata(AUTHN_METADATA, path, value)),
        metadata_source: 0,
    }))
}

/// A string of the verified identity (`*`: present).
fn authn_string(key: &str, v: &str) -> Principal {
    let value = if v == "*" {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        }
    } else {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(glob(v, false))),
        }
    };
    authn(&[key], value)
}

/// A claim (each a list of strings there) holding `v` (`*`: present).
fn claim(path: &[String], v: &str) -> Principal {
    let mut keys = vec!["request.auth.claims"];
    keys.extend(path.iter().map(String::as_str));
    let value = if v == "*" {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        }
    } else {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                ListMatcher {
                    match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                        ValueMatcher {
                            match_pattern: Some(value_matcher::MatchPattern::StringMatch(glob(
                                v, false,
                            ))),
                        },
                    ))),
                },
            ))),
        }
    };
    authn(&keys, value)
}

/// A request principal `ISSUER/SUBJECT` (Istio's globs).
fn request_principal(v: &str) -> Principal {
    authn_string("request.auth.principal", v)
}

// === sets ===

fn id(identifier: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn perm(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn and_ids(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => id(principal::Identifier::Any(true)),
        1 => ids.remove(0),
        _ => id(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn or_ids(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => not_id(id(principal::Identifier::Any(true))),
        1 => ids.remove(0),
        _ => id(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn not_id(p: Principal) -> Principal {
    id(principal::Identifier::NotId(Box::new(p)))
}

fn and_rules(mut rules: Vec<Permission>) -> Permission {
    match rules.len() {
        0 => perm(permission::Rule::Any(true)),
        1 => rules.remove(0),
        _ => perm(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn or_rules(mut rules: Vec<Permission>) -> Permission {
    match rules.len() {
        0 => not_rule(perm(permission::Rule::Any(true))),
        1 => rules.remove(0),
        _ => perm(permission::Rule::OrRules(permission::Set { rules })),
    }
}

fn not_rule(p: Permission) -> Permission {
    perm(permission::Rule::NotRule(Box::new(p)))
}

// === filters ===

/// The HTTP RBAC filters of `configs`.
pub fn http_filters(configs: Vec<RbacConfig>) -> Vec<HttpFilter> {
    configs
        .into_iter()
        .map(|c| HttpFilter {
            name: HTTP_RBAC.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&HttpRbac {
                shadow_rules_stat_prefix: if c.shadow.is_some() {
                    "istio_dry_run_allow_".into()
                } else {
                    String::new()
                },
                rules: c.rules,
                shadow_rules: c.shadow,
                ..Default::default()
            }))),
            ..Default::default()
        })
        .collect()
}

/// The network RBAC filters of `configs`.
pub fn network_filters(configs: Vec<RbacConfig>) -> Vec<Filter> {
    configs
        .into_iter()
        .map(|c| Filter {
            name: NETWORK_RBAC.into(),
            config_type: Some(ConfigType::TypedConfig(any(&NetworkRbac {
                stat_prefix: "tcp.".into(),
                shadow_rules_stat_prefix: if c.shadow.is_some() {
                    "istio_dry_run_allow_".into()
                } else {
                    String::new()
                },
                rules: c.rules,
                shadow_rules: c.shadow,
                ..Default::default()
            }))),
        })
        .collect()
}

/// Every authorization HTTP filter of `proxy` on a chain serving `service`, in Istio's
/// order: CUSTOM, then AUDIT, DENY and ALLOW.
pub fn authz_http_filters(
    ctx: &PushContext,
    proxy: &Proxy,
    service: Option<&Service>,
) -> Vec<HttpFilter> {
    let policies = workload_policies(ctx, proxy, service);
    let mut filters = custom::resolve(ctx, proxy, &policies, Target::Http).http_filters();
    filters.extend(http_filters(rbac_configs(&policies, Target::Http)));
    filters
}

/// The same for a TCP chain.
pub fn authz_network_filters(
    ctx: &PushContext,
    proxy: &Proxy,
    service: Option<&Service>,
) -> Vec<Filter> {
    let policies = workload_policies(ctx, proxy, service);
    let mut filters = custom::resolve(ctx, proxy, &policies, Target::Tcp).network_filters();
    filters.extend(network_filters(rbac_configs(&policies, Target::Tcp)));
    filters
}

/// Adds `proxy`'s authorization to an HTTP chain (inbound, or a gateway's) serving
/// `service`, and sets its path normalisation.
pub fn apply_http(
    ctx: &PushContext,
    proxy: &Proxy,
    chain: &mut FilterChain,
    service: Option<&Service>,
) {
    let filters = authz_http_filters(ctx, proxy, service);
    let normalization = PathNormalization::from_mesh(&ctx.mesh);
    for f in &mut chain.filters {
        let Some(ConfigType::TypedConfig(cfg)) = &mut f.config_type else {
            continue;
        };
        let Ok(mut hcm) = HttpConnectionManager::decode(&cfg.value[..]) else {
            continue;
        };
        normalization.apply(&mut hcm);
        // After the authentication filters (a JWT must be verified before its claims are
        // authorized), before everything else.
        let at = hcm
            .http_filters
            .iter()
            .rposition(|f| AUTHN_FILTERS.contains(&f.name.as_str()))
            .map_or(0, |i| i + 1);
        for (i, filter) in filters.iter().enumerate() {
            hcm.http_filters.insert(at + i, filter.clone());
        }
        *cfg = any(&hcm);
    }
}

/// Adds `proxy`'s authorization to a TCP chain serving `service`: the network RBAC filters
/// first.
pub fn apply_tcp(
    ctx: &PushContext,
    proxy: &Proxy,
    chain: &mut FilterChain,
    service: Option<&Service>,
) {
    let mut filters = authz_network_filters(ctx, proxy, service);
    if filters.is_empty() {
        return;
    }
    filters.append(&mut chain.filters);
    chain.filters = filters;
}

// === path normalisation ===

/// MeshConfig's `pathNormalization.normalization`, as HCM settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathNormalization {
    /// `NONE`: the path as sent.
    None,
    /// `BASE`: RFC 3986 normalisation (dot segments, `%2e`, backslashes).
    Base,
    /// `MERGE_SLASHES`: BASE, and `//` as `/`.
    MergeSlashes,
    /// `DECODE_AND_MERGE_SLASHES` (our default): MERGE_SLASHES, and `%2F` / `%5C` decoded
    /// before routing and authorization.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// The mesh's setting; unset or `DEFAULT` is [`PathNormalization::DecodeAndMergeSlashes`],
    /// stricter than Istio's BASE (CVE-2021-31920: `%2F` must not pass a path rule).
    pub fn from_mesh(mesh: &MeshConfig) -> PathNormalization {
        let value = mesh
            .other
            .get("pathNormalization")
            .and_then(|v| v.get("normalization"))
            .and_then(|v| v.as_str());
        match value {
            Some("NONE") => PathNormalization::None,
            Some("BASE") => PathNormalization::Base,
            Some("MERGE_SLASHES") => PathNormalization::MergeSlashes,
            Some("DECODE_AND_MERGE_SLASHES") | Some("DEFAULT") | None => {
                PathNormalization::DecodeAndMergeSlashes
            }
            Some(other) => {
                tracing::warn!(
                    value = other,
                    "MeshConfig pathNormalization.normalization unknown; using DECODE_AND_MERGE_SLASHES"
                );
                PathNormalization::DecodeAndMergeSlashes
            }
        }
    }

    fn apply(self, hcm: &mut HttpConnectionManager) {
        let (normalize, merge, escaped) = match self {
            PathNormalization::None => return,
            PathNormalization::Base => (true, false, PathWithEscapedSlashesAction::KeepUnchanged),
            PathNormalization::MergeSlashes => {
                (true, true, PathWithEscapedSlashesAction::KeepUnchanged)
            }
            PathNormalization::DecodeAndMergeSlashes => {
                (true, true, PathWithEscapedSlashesAction::UnescapeAndForward)
            }
        };
        hcm.normalize_path = Some(BoolValue { value: normalize });
        hcm.merge_slashes = merge;
        hcm.path_with_escaped_slashes_action = escaped as i32;
    }
}

pub mod custom;

#[cfg(test)]
mod tests;
