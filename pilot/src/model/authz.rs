//! Authorization: Istio's `security.istio.io` AuthorizationPolicy and the Istio 1.0 RBAC API
//! (`rbac.istio.io` RbacConfig / ClusterRbacConfig, ServiceRole, ServiceRoleBinding) as one
//! model, the policies that apply to a workload. Envoy's filters are made from it in
//! `crate::xds::generate::authz`.
//!
//! - **Scope.** A policy in the workload's namespace applies when it has no selector or its
//!   selector's labels are all on the workload; a policy in MeshConfig's `rootNamespace`
//!   (`istio-system`) applies the same way to workloads of every namespace.
//! - **Order.** Istio's: CUSTOM, then DENY, then ALLOW. When any ALLOW policy applies, only
//!   what one of them allows passes; an ALLOW policy without rules therefore denies all. A
//!   DENY or AUDIT policy without rules matches nothing.
//! - **Istio 1.0 RBAC** becomes ALLOW policies: where the RbacConfig (a ClusterRbacConfig
//!   `default` first, else an RbacConfig `default`) turns RBAC on for a service (ON,
//!   ON_WITH_INCLUSION of its namespace or name, ON_WITH_EXCLUSION of neither), every
//!   ServiceRoleBinding of the namespace is a policy whose rules are the bound ServiceRole's
//!   rules that name the service (`services`, with `*` globs) and whose `destination.*`
//!   constraints hold for the workload, for each subject. RBAC on and no binding denies all.
//!   `enforcementMode: PERMISSIVE` (config or binding) makes them shadow policies: evaluated
//!   and counted, never enforced.
//! - **Failures.** A policy that cannot be translated (a ServiceRoleBinding whose role is
//!   missing, a constraint it cannot express) carries its reason in [`Applied::error`]; the
//!   workload then denies everything (fail closed) and the reason is logged.
//!
//! Validation ([`validate`]) refuses what Istio refuses and a little more, naming the field:
//! unknown `when` keys, malformed CIDRs, ports, principals without a trust domain, `*` in the
//! middle of a value, empty values, action CUSTOM without a provider.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_proto::rbac::{
    AccessRule, EnforcementMode, RbacConfig, RbacMode, ServiceRole, ServiceRoleBinding, Subject,
};
use mesh_proto::security::{
    Action, AuthorizationPolicy, Condition, Operation, Rule, RuleFrom, RuleTo, Source,
};
use mesh_proto::{Kind, Spec};
use mesh_runtime::Snapshot;

use super::service::Service;
use crate::mesh::MeshConfig;
use crate::validate::Problems;

/// Why an authorization object is invalid, or cannot be translated for a workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// A field holds something Istio does not accept (or we cannot enforce).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A ServiceRoleBinding names a ServiceRole that does not exist.
    #[error("roleRef: ServiceRole {namespace}/{name} does not exist")]
    MissingRole { namespace: String, name: String },
}

impl AuthzError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> AuthzError {
        AuthzError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a policy does with the requests its rules match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    Allow,
    Deny,
    Audit,
    /// Asked of an external authorizer (MeshConfig `extensionProviders`).
    Custom,
}

/// A policy as it applies to one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Istio's name, `ns[NAMESPACE]-policy[NAME]` (`ns[NS]-rbac[BINDING]` for Istio 1.0 RBAC).
    pub name: String,
    pub effect: Effect,
    /// A request matches the policy when it matches any rule.
    pub rules: Arc<Vec<Rule>>,
    /// Evaluated and counted only (Istio 1.0's PERMISSIVE enforcement).
    pub shadow: bool,
    /// Why the policy cannot be translated: the workload then denies everything.
    pub error: Option<String>,
    /// The extension provider a CUSTOM policy asks.
    pub provider: Option<String>,
}

/// The policies that apply to one workload, ordered by effect, namespace and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadPolicies {
    pub policies: Vec<Applied>,
}

impl WorkloadPolicies {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The enforced policies with `effect`.
    pub fn enforced(&self, effect: Effect) -> impl Iterator<Item = &Applied> {
        self.policies
            .iter()
            .filter(move |p| p.effect == effect && !p.shadow)
    }

    /// The shadow (not enforced) policies.
    pub fn shadow(&self) -> impl Iterator<Item = &Applied> {
        self.policies.iter().filter(|p| p.shadow)
    }

    /// The reasons of the policies that cannot be translated (`name: reason`).
    pub fn errors(&self) -> Vec<String> {
        self.policies
            .iter()
            .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.name)))
            .collect()
    }
}

/// An AuthorizationPolicy with where it lives.
#[derive(Debug, Clone)]
struct Scoped {
    namespace: String,
    name: String,
    spec: AuthorizationPolicy,
    /// Its rules, shared with every workload it applies to.
    rules: Arc<Vec<Rule>>,
    /// The first validation problem, if any (the config store refuses such objects; this is
    /// the last line of defence, so a policy is never half-enforced).
    error: Option<String>,
}

/// The Istio 1.0 RBAC objects.
#[derive(Debug, Clone, Default)]
struct Rbac1 {
    config: RbacConfig,
    roles: BTreeMap<(String, String), ServiceRole>,
    /// Bindings by namespace, then name.
    bindings: BTreeMap<String, Vec<(String, ServiceRoleBinding)>>,
    /// MeshConfig's trust domain and aliases (see [`with_trust_domains`]).
    trust_domains: Vec<String>,
}

/// Every authorization object of a config snapshot, ready to be asked per workload.
#[derive(Debug, Clone, Default)]
pub struct Authz {
    policies: Vec<Scoped>,
    rbac: Option<Rbac1>,
    root_namespace: String,
}

impl Authz {
    /// Collects the AuthorizationPolicies and Istio 1.0 RBAC objects of `config`.
    pub fn from_config(config: &Snapshot, mesh: &MeshConfig) -> Authz {
        let trust_domains: Vec<String> = mesh
            .trust_domains()
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut policies = Vec::new();
        for obj in config.of_kind(&Kind::AuthorizationPolicy) {
            if let Spec::AuthorizationPolicy(ap) = &obj.spec {
                let mut problems = Problems::default();
                authorization_policy(&mut problems, ap);
                policies.push(Scoped {
                    namespace: obj.key.namespace.clone(),
                    name: obj.key.name.clone(),
                    spec: ap.clone(),
                    rules: Arc::new(with_trust_domains(ap.rules.clone(), &trust_domains)),
                    error: problems.0.first().map(|e| e.to_string()),
                });
            }
        }
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        // ClusterRbacConfig `default` wins over an RbacConfig `default` (Istio 1.1's rule).
        let cluster = config
            .of_kind(&Kind::ClusterRbacConfig)
            .find(|o| o.key.name == "default")
            .and_then(|o| match &o.spec {
                Spec::ClusterRbacConfig(c) => Some(c.clone()),
                _ => None,
            });
        let namespaced = || {
            config
                .of_kind(&Kind::RbacConfig)
                .find(|o| o.key.name == "default")
                .and_then(|o| match &o.spec {
                    Spec::RbacConfig(c) => Some(c.clone()),
                    _ => None,
                })
        };
        let rbac = cluster.or_else(namespaced).map(|config_spec| {
            let mut r = Rbac1 {
                config: config_spec,
                trust_domains: trust_domains.clone(),
                ..Default::default()
            };
            for obj in config.of_kind(&Kind::ServiceRole) {
                if let Spec::ServiceRole(role) = &obj.spec {
                    r.roles.insert(
                        (obj.key.namespace.clone(), obj.key.name.clone()),
                        role.clone(),
                    );
                }
            }
            for obj in config.of_kind(&Kind::ServiceRoleBinding) {
                if let Spec::ServiceRoleBinding(b) = &obj.spec {
                    r.bindings
                        .entry(obj.key.namespace.clone())
                        .or_default()
                        .push((obj.key.name.clone(), b.clone()));
                }
            }
            for list in r.bindings.values_mut() {
                list.sort_by(|a, b| a.0.cmp(&b.0));
            }
            r
        });
        Authz {
            policies,
            rbac,
            root_namespace: mesh.root_namespace.clone(),
        }
    }

    /// References that do not resolve and so make workloads fail closed: a CUSTOM policy's
    /// provider MeshConfig lacks (or that is no ext_authz provider), and, while Istio 1.0
    /// RBAC is configured, a ServiceRoleBinding's missing ServiceRole. Each as (kind,
    /// namespace, name, field, message).
    pub fn dangling(
        &self,
        mesh: &MeshConfig,
    ) -> Vec<(&'static str, String, String, String, String)> {
        let mut out = Vec::new();
        for p in &self.policies {
            if p.spec.action != Some(Action::Custom) {
                continue;
            }
            let Some(name) = p.spec.provider.as_ref().map(|x| x.name.as_str()) else {
                continue;
            };
            let message = match mesh.extension_provider(name) {
                None => format!(
                    "Referenced extension provider not found: {name:?} (MeshConfig \
                     extensionProviders); what its rules match is denied"
                ),
                Some(e) if e.ext_authz().is_none() => format!(
                    "Referenced extension provider {name:?} is not an ext_authz provider; \
                     what its rules match is denied"
                ),
                Some(_) => continue,
            };
            out.push((
                "AuthorizationPolicy",
                p.namespace.clone(),
                p.name.clone(),
                "spec.provider.name".to_string(),
                message,
            ));
        }
        if let Some(rbac) = &self.rbac {
            for (ns, bindings) in &rbac.bindings {
                for (name, b) in bindings {
                    if !b.actions.is_empty() {
                        continue;
                    }
                    let Some(role) = role_name(b) else { continue };
                    if rbac.roles.contains_key(&(ns.clone(), role.to_string())) {
                        continue;
                    }
                    out.push((
                        "ServiceRoleBinding",
                        ns.clone(),
                        name.clone(),
                        "spec.roleRef.name".to_string(),
                        format!(
                            "Referenced ServiceRole not found: {ns}/{role}; the workloads of \
                             the services RBAC covers in {ns} deny everything"
                        ),
                    ));
                }
            }
        }
        out
    }

    /// The CUSTOM AuthorizationPolicies, as (namespace, name, provider name).
    pub fn custom(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.policies.iter().filter_map(|p| {
            let provider = p.spec.provider.as_ref()?;
            (p.spec.action == Some(Action::Custom)).then_some((
                p.namespace.as_str(),
                p.name.as_str(),
                provider.name.as_str(),
            ))
        })
    }

    /// Whether no authorization object exists at all.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.rbac.is_none()
    }

    /// How many AuthorizationPolicies there are.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// The policies that apply to a workload in `namespace` with `labels`, serving `services`
    /// (what Istio 1.0 RBAC is scoped by).
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        services: &[&Service],
    ) -> WorkloadPolicies {
        let mut out = Vec::new();
        for p in &self.policies {
            if p.namespace != namespace && p.namespace != self.root_namespace {
                continue;
            }
            let selected = p.spec.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            });
            // Policies attached by targetRef are for gateways and waypoints, not sidecars.
            if !selected || p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
                continue;
            }
            out.push(applied(p));
        }
        if let Some(rbac) = &self.rbac {
            out.extend(rbac.for_workload(namespace, labels, services));
        }
        out.sort_by(|a, b| a.effect.cmp(&b.effect).then_with(|| a.name.cmp(&b.name)));
        WorkloadPolicies { policies: out }
    }
}

fn applied(p: &Scoped) -> Applied {
    let name = format!("ns[{}]-policy[{}]", p.namespace, p.name);
    let (effect, error) = match p.spec.action.unwrap_or(Action::Allow) {
        Action::Allow => (Effect::Allow, None),
        Action::Deny => (Effect::Deny, None),
        Action::Audit => (Effect::Audit, None),
        Action::Custom => (Effect::Custom, None),
    };
    let error = error.or_else(|| p.error.clone());
    Applied {
        name,
        effect,
        rules: p.rules.clone(),
        shadow: false,
        error,
        provider: p.spec.provider.as_ref().map(|x| x.name.clone()),
    }
}

// === Istio 1.0 RBAC ===

impl Rbac1 {
    fn enabled_for(&self, svc: &Service) -> bool {
        let listed = |t: &Option<mesh_proto::rbac::RbacTarget>| {
            t.as_ref().is_some_and(|t| {
                t.namespaces.contains(&svc.namespace)
                    || t.services.iter().any(|s| glob_matches(s, &svc.hostname))
            })
        };
        match self.config.mode {
            None | Some(RbacMode::Off) => false,
            Some(RbacMode::On) => true,
            Some(RbacMode::OnWithInclusion) => listed(&self.config.inclusion),
            Some(RbacMode::OnWithExclusion) => !listed(&self.config.exclusion),
        }
    }

    fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        services: &[&Service],
    ) -> Vec<Applied> {
        let on: Vec<&Service> = services
            .iter()
            .copied()
            .filter(|s| self.enabled_for(s))
            .collect();
        if on.is_empty() {
            return Vec::new();
        }
        let config_shadow = self.config.enforcement_mode == Some(EnforcementMode::Permissive);
        // RBAC on: what no binding grants is denied, even with no binding at all.
        let mut out = vec![Applied {
            name: format!("ns[{namespace}]-rbac-on"),
            effect: Effect::Allow,
            rules: Arc::default(),
            shadow: config_shadow,
            error: None,
            provider: None,
        }];
        for (name, binding) in self.bindings.get(namespace).into_iter().flatten() {
            let (rules, error) = match self.binding_rules(namespace, binding, labels, &on) {
                Ok(rules) => (
                    Arc::new(with_trust_domains(rules, &self.trust_domains)),
                    None,
                ),
                Err(e) => (Arc::default(), Some(e.to_string())),
            };
            out.push(Applied {
                name: format!("ns[{namespace}]-rbac[{name}]"),
                effect: Effect::Allow,
                rules,
                shadow: config_shadow || binding.mode == Some(EnforcementMode::Permissive),
                error,
                provider: None,
            });
        }
        out
    }

    /// The rules a binding grants on `services` of a workload with `labels`.
    fn binding_rules(
        &self,
        namespace: &str,
        binding: &ServiceRoleBinding,
        labels: &BTreeMap<String, String>,
        services: &[&Service],
    ) -> Result<Vec<Rule>, AuthzError> {
        let access: Vec<AccessRule> = if !binding.actions.is_empty() {
            binding.actions.clone()
        } else {
            let name = role_name(binding).ok_or_else(|| {
                AuthzError::invalid("roleRef", "a binding names its ServiceRole in roleRef")
            })?;
            self.roles
                .get(&(namespace.to_string(), name.to_string()))
                .ok_or_else(|| AuthzError::MissingRole {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })?
                .rules
                .clone()
        };
        let mut subjects = Vec::new();
        for (i, s) in binding.subjects.iter().enumerate() {
            subjects.push(subject_rule(&format!("subjects[{i}]"), s)?);
        }
        let mut rules = Vec::new();
        for (i, a) in access.iter().enumerate() {
            let field = format!("rules[{i}]");
            for svc in services {
                if !a.services.iter().any(|s| glob_matches(s, &svc.hostname)) {
                    continue;
                }
                let Some(when) = constraints(&field, a, labels, svc)? else {
                    continue;
                };
                let op = Operation {
                    hosts: a.hosts.clone(),
                    not_hosts: a.not_hosts.clone(),
                    ports: a.ports.iter().map(|p| p.to_string()).collect(),
                    not_ports: a.not_ports.iter().map(|p| p.to_string()).collect(),
                    methods: a.methods.clone(),
                    not_methods: a.not_methods.clone(),
                    paths: a.paths.clone(),
                    not_paths: a.not_paths.clone(),
                };
                let to = if op == Operation::default() {
                    Vec::new()
                } else {
                    vec![RuleTo {
                        operation: Some(op),
                    }]
                };
                for (from, extra) in &subjects {
                    let mut all_when = when.clone();
                    all_when.extend(extra.iter().cloned());
                    rules.push(Rule {
                        from: from.clone(),
                        to: to.clone(),
                        when: all_when,
                    });
                }
                // One service of the workload is enough for the rule.
                break;
            }
        }
        Ok(rules)
    }
}

fn role_name(b: &ServiceRoleBinding) -> Option<&str> {
    b.role_ref
        .as_ref()
        .map(|r| r.name.as_str())
        .filter(|n| !n.is_empty())
        .or_else(|| b.role.as_deref().map(|r| r.trim_start_matches('/')))
        .filter(|n| !n.is_empty())
}

/// A ServiceRole rule's constraints for a workload: `None` when a `destination.*` one that
/// is known statically (labels, name, namespace) does not hold, else the rest as `when`
/// conditions.
fn constraints(
    field: &str,
    a: &AccessRule,
    labels: &BTreeMap<String, String>,
    svc: &Service,
) -> Result<Option<Vec<Condition>>, AuthzError> {
    let mut when = Vec::new();
    for (i, c) in a.constraints.iter().enumerate() {
        let any = |value: Option<&str>| {
            value.is_some_and(|v| c.values.iter().any(|pattern| glob_matches(pattern, v)))
        };
        let short = svc.hostname.split('.').next().unwrap_or_default();
        let holds = if let Some(label) = bracketed(&c.key, "destination.labels") {
            any(labels.get(label).map(String::as_str))
        } else {
            match c.key.as_str() {
                "destination.name" => any(Some(short)),
                "destination.namespace" => any(Some(&svc.namespace)),
                "destination.service" => any(Some(&svc.hostname)),
                _ => {
                    check_key(&format!("{field}.constraints[{i}].key"), &c.key)?;
                    when.push(Condition {
                        key: c.key.clone(),
                        values: c.values.clone(),
                        not_values: Vec::new(),
                    });
                    true
                }
            }
        };
        if !holds {
            return Ok(None);
        }
    }
    Ok(Some(when))
}

/// `rules` with each peer principal (`principals`, `notPrincipals`, `source.principal`
/// conditions) in the mesh's trust domain, one of its aliases or `cluster.local` (which
/// stands for the local trust domain) written once for each of `domains` (the trust domain
/// and its aliases), as Istio does for `trustDomainAliases`: a workload still carrying an old
/// trust domain's identity matches the policy written for the new one, and the other way
/// round. Principals of other trust domains, or whose trust domain is a wildcard, are left
/// as they are.
pub fn with_trust_domains(rules: Vec<Rule>, domains: &[String]) -> Vec<Rule> {
    if domains.len() == 1 && domains[0] == "cluster.local" {
        return rules;
    }
    let expand = |values: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in values {
            let alternatives = match v.split_once('/') {
                Some((td, rest))
                    if !td.contains('*')
                        && (td == "cluster.local" || domains.iter().any(|d| d == td)) =>
                {
                    domains.iter().map(|d| format!("{d}/{rest}")).collect()
                }
                _ => vec![v.clone()],
            };
            for a in alternatives {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    };
    rules
        .into_iter()
        .map(|mut rule| {
            for from in &mut rule.from {
                if let Some(src) = &mut from.source {
                    src.principals = expand(&src.principals);
                    src.not_principals = expand(&src.not_principals);
                }
            }
            for c in &mut rule.when {
                if c.key == "source.principal" {
                    c.values = expand(&c.values);
                    c.not_values = expand(&c.not_values);
                }
            }
            rule
        })
        .collect()
}

/// A subject as the `from` of a rule and the `when` conditions it adds.
fn subject_rule(field: &str, s: &Subject) -> Result<(Vec<RuleFrom>, Vec<Condition>), AuthzError> {
    let mut src = Source::default();
    let mut when = Vec::new();
    match s.user.as_deref() {
        None | Some("*") => {}
        Some(user) => src.principals.push(user.to_string()),
    }
    src.principals.extend(s.names.iter().cloned());
    src.not_principals.extend(s.not_names.iter().cloned());
    src.namespaces.extend(s.namespaces.iter().cloned());
    src.not_namespaces.extend(s.not_namespaces.iter().cloned());
    src.ip_blocks.extend(s.ips.iter().cloned());
    src.not_ip_blocks.extend(s.not_ips.iter().cloned());
    let mut groups: Vec<String> = s.group.iter().cloned().collect();
    groups.extend(s.groups.iter().cloned());
    if !groups.is_empty() {
        when.push(condition("request.auth.claims[groups]", groups));
    }
    if !s.not_groups.is_empty() {
        when.push(Condition {
            key: "request.auth.claims[groups]".into(),
            values: Vec::new(),
            not_values: s.not_groups.clone(),
        });
    }
    for (key, value) in &s.properties {
        match key.as_str() {
            "source.namespace" => src.namespaces.push(value.clone()),
            "source.principal" | "source.user" => src.principals.push(value.clone()),
            "source.ip" => src.ip_blocks.push(value.clone()),
            _ => {
                check_key(&format!("{field}.properties[{key}]"), key)?;
                when.push(condition(key, vec![value.clone()]));
            }
        }
    }
    let from = if src == Source::default() {
        Vec::new()
    } else {
        vec![RuleFrom { source: Some(src) }]
    };
    Ok((from, when))
}

fn condition(key: &str, values: Vec<String>) -> Condition {
    Condition {
        key: key.to_string(),
        values,
        not_values: Vec::new(),
    }
}

// === keys and values ===

/// A `when` key, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `request.headers[NAME]`
    Header(String),
    /// `source.ip`: the peer's address.
    SourceIp,
    /// `remote.ip`: the original client's (X-Forwarded-For, PROXY protocol).
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    /// `request.auth.principal`: `issuer/subject` of the request's JWT.
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    /// `request.auth.claims[a][b]...`: a (nested) claim of the JWT.
    AuthClaims(Vec<String>),
    DestinationIp,
    DestinationPort,
    ConnectionSni,
    /// `experimental.envoy.filters.FILTER[KEY]`: dynamic metadata of an Envoy filter.
    EnvoyFilter {
        filter: String,
        key: String,
    },
}

impl Key {
    /// Parses one of Istio's condition keys.
    pub fn parse(key: &str) -> Result<Key, String> {
        if let Some(name) = bracketed(key, "request.headers") {
            if name.is_empty() {
                return Err("request.headers[] needs a header name".into());
            }
            return Ok(Key::Header(name.to_string()));
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims") {
            let claims = bracket_list(rest)
                .filter(|c| !c.is_empty() && c.iter().all(|s| !s.is_empty()))
                .ok_or_else(|| format!("{key:?}: want request.auth.claims[NAME]"))?;
            return Ok(Key::AuthClaims(claims));
        }
        if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
            let (filter, k) = rest
                .split_once('[')
                .and_then(|(f, k)| Some((f, k.strip_suffix(']')?)))
                .filter(|(f, k)| !f.is_empty() && !k.is_empty())
                .ok_or_else(|| format!("{key:?}: want experimental.envoy.filters.NAME[KEY]"))?;
            return Ok(Key::EnvoyFilter {
                filter: format!("envoy.filters.{filter}"),
                key: k.to_string(),
            });
        }
        Ok(match key {
            "source.ip" => Key::SourceIp,
            "remote.ip" => Key::RemoteIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" => Key::SourcePrincipal,
            "request.auth.principal" => Key::AuthPrincipal,
            "request.auth.audiences" => Key::AuthAudiences,
            "request.auth.presenter" => Key::AuthPresenter,
            "destination.ip" => Key::DestinationIp,
            "destination.port" => Key::DestinationPort,
            "connection.sni" => Key::ConnectionSni,
            _ => return Err(format!("unknown condition key {key:?}")),
        })
    }

    /// Whether only an HTTP request has it (a TCP connection has no headers or JWT).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Key::Header(_)
                | Key::AuthPrincipal
                | Key::AuthAudiences
                | Key::AuthPresenter
                | Key::AuthClaims(_)
        )
    }

    /// Whether Envoy matches it as a principal (who asks) rather than a permission (what).
    pub fn is_principal(&self) -> bool {
        !matches!(
            self,
            Key::DestinationIp
                | Key::DestinationPort
                | Key::ConnectionSni
                | Key::EnvoyFilter { .. }
        )
    }
}

fn check_key(field: &str, key: &str) -> Result<Key, AuthzError> {
    Key::parse(key).map_err(|m| AuthzError::invalid(field, m))
}

/// `NAME` of `PREFIX[NAME]`.
fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')
}

/// `[a][b]` as `[a, b]`.
fn bracket_list(mut s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let rest = s.strip_prefix('[')?;
        let (name, after) = rest.split_once(']')?;
        out.push(name.to_string());
        s = after;
    }
    Some(out)
}

/// Istio's value matching: `*` anything (present), `*x` a suffix, `x*` a prefix, else exact.
pub fn glob_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    pattern == value
}

/// Whether a policy rule uses what only HTTP requests have (hosts, methods, paths, request
/// principals, headers and JWT claims).
pub fn uses_http_only(rule: &Rule) -> bool {
    let source = rule
        .from
        .iter()
        .filter_map(|f| f.source.as_ref())
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty());
    let op = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .any(op_uses_http_only);
    let when = rule
        .when
        .iter()
        .any(|c| Key::parse(&c.key).is_ok_and(|k| k.http_only()));
    source || op || when
}

/// Whether an operation uses HTTP-only fields.
pub fn op_uses_http_only(o: &Operation) -> bool {
    !(o.hosts.is_empty()
        && o.not_hosts.is_empty()
        && o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty())
}

/// An IP address or CIDR block (`10.0.0.0/8`, `::1`), as (address, prefix length).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u32), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
    };
    Ok((ip, len))
}

// === validation ===

/// The problems of an authorization object (AuthorizationPolicy, ServiceRole,
/// ServiceRoleBinding, RbacConfig, ClusterRbacConfig), each naming its field from `spec`.
pub fn validate(p: &mut Problems, spec: &Spec) {
    match spec {
        Spec::AuthorizationPolicy(ap) => authorization_policy(p, ap),
        Spec::ServiceRole(r) => service_role(p, r),
        Spec::ServiceRoleBinding(b) => service_role_binding(p, b),
        Spec::RbacConfig(c) | Spec::ClusterRbacConfig(c) => rbac_config(p, c),
        _ => {}
    }
}

fn add(p: &mut Problems, e: AuthzError) {
    match e {
        AuthzError::Invalid { field, message } => p.add(format!("spec.{field}"), message),
        other => p.add("spec", other.to_string()),
    }
}

fn authorization_policy(p: &mut Problems, ap: &AuthorizationPolicy) {
    let provider = ap.provider.as_ref().map(|x| x.name.trim());
    match (ap.action, provider) {
        (Some(Action::Custom), None) => p.add(
            "spec.provider",
            "action CUSTOM needs provider.name, one of MeshConfig's extensionProviders",
        ),
        (Some(Action::Custom), Some("")) => p.add(
            "spec.provider.name",
            "must name one of MeshConfig's extensionProviders",
        ),
        (Some(Action::Custom), _) => {}
        (_, Some(_)) => p.add("spec.provider", "a provider is only for action CUSTOM"),
        _ => {}
    }
    if ap.target_ref.is_some() || !ap.target_refs.is_empty() {
        let field = if ap.target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        p.add(
            field,
            "policies attached to gateways or waypoints by targetRef are not supported; use selector",
        );
    }
    if let Some(sel) = &ap.selector {
        for (k, v) in &sel.match_labels {
            if k.is_empty() {
                p.add("spec.selector.matchLabels", "label names must not be empty");
            }
            if v.contains('*') {
                p.add(
                    format!("spec.selector.matchLabels[{k}]"),
                    "wildcards are not allowed in label values",
                );
            }
        }
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        for e in rule_problems(&format!("rules[{i}]"), rule) {
            add(p, e);
        }
    }
}

/// The problems of one rule, fields relative to `spec`.
pub fn rule_problems(field: &str, rule: &Rule) -> Vec<AuthzError> {
    let mut out = Vec::new();
    for (i, from) in rule.from.iter().enumerate() {
        let f = format!("{field}.from[{i}].source");
        match &from.source {
            None => out.push(AuthzError::invalid(&f, "a from entry needs a source")),
            Some(s) if *s == Source::default() => {
                out.push(AuthzError::invalid(&f, "a source needs at least one field"))
            }
            Some(s) => source_problems(&f, s, &mut out),
        }
    }
    for (i, to) in rule.to.iter().enumerate() {
        let f = format!("{field}.to[{i}].operation");
        match &to.operation {
            None => out.push(AuthzError::invalid(&f, "a to entry needs an operation")),
            Some(o) if *o == Operation::default() => out.push(AuthzError::invalid(
                &f,
                "an operation needs at least one field",
            )),
            Some(o) => operation_problems(&f, o, &mut out),
        }
    }
    for (i, c) in rule.when.iter().enumerate() {
        condition_problems(&format!("{field}.when[{i}]"), c, &mut out);
    }
    out
}

fn source_problems(f: &str, s: &Source, out: &mut Vec<AuthzError>) {
    for (name, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        each(out, f, name, values, principal_problem);
    }
    for (name, values) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        each(out, f, name, values, request_principal_problem);
    }
    for (name, values) in [
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
    ] {
        each(out, f, name, values, namespace_problem);
    }
    for (name, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        each(out, f, name, values, service_account_problem);
    }
    for (name, values) in [
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        each(out, f, name, values, |v| {
            glob_problem(v).or_else(|| {
                (!identity_chars(v.trim_matches('*')) || v.contains('/'))
                    .then(|| format!("{v:?} is not a trust domain"))
            })
        });
    }
    for (name, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        each(out, f, name, values, |v| parse_cidr(v).err());
    }
}

fn operation_problems(f: &str, o: &Operation, out: &mut Vec<AuthzError>) {
    for (name, values) in [("hosts", &o.hosts), ("notHosts", &o.not_hosts)] {
        each(out, f, name, values, glob_problem);
    }
    for (name, values) in [("methods", &o.methods), ("notMethods", &o.not_methods)] {
        each(out, f, name, values, glob_problem);
    }
    for (name, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        each(out, f, name, values, path_problem);
    }
    for (name, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
        each(out, f, name, values, port_problem);
    }
}

fn condition_problems(f: &str, c: &Condition, out: &mut Vec<AuthzError>) {
    let key = match Key::parse(&c.key) {
        Ok(k) => k,
        Err(m) => {
            out.push(AuthzError::invalid(format!("{f}.key"), m));
            return;
        }
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        out.push(AuthzError::invalid(
            f,
            "a condition needs values or notValues",
        ));
    }
    let check: fn(&str) -> Option<String> = match key {
        Key::SourceIp | Key::RemoteIp | Key::DestinationIp => |v| parse_cidr(v).err(),
        Key::DestinationPort => port_problem,
        Key::SourcePrincipal => principal_problem,
        Key::SourceNamespace => namespace_problem,
        Key::AuthPrincipal => request_principal_problem,
        _ => glob_problem,
    };
    each(out, f, "values", &c.values, check);
    each(out, f, "notValues", &c.not_values, check);
}

fn each(
    out: &mut Vec<AuthzError>,
    f: &str,
    name: &str,
    values: &[String],
    check: impl Fn(&str) -> Option<String>,
) {
    for (i, v) in values.iter().enumerate() {
        if let Some(m) = check(v) {
            out.push(AuthzError::invalid(format!("{f}.{name}[{i}]"), m));
        }
    }
}

/// Istio's rule for values: not empty, `*` only alone, first or last.
fn glob_problem(v: &str) -> Option<String> {
    if v.is_empty() {
        return Some("values must not be empty".into());
    }
    let stars = v.matches('*').count();
    if v != "*" && (stars > 1 || (stars == 1 && !v.starts_with('*') && !v.ends_with('*'))) {
        return Some(format!(
            "{v:?}: `*` may only be the whole value, its first or its last character"
        ));
    }
    None
}

/// Letters, digits and `.-_:/` (what SPIFFE identities are made of).
fn identity_chars(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/'))
}

/// A principal: `*`, a glob, or `TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT` (without `spiffe://`).
fn principal_problem(v: &str) -> Option<String> {
    if let Some(m) = glob_problem(v) {
        return Some(m);
    }
    if v.starts_with("spiffe://") {
        return Some(format!(
            "{v:?}: write principals without `spiffe://` (TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT)"
        ));
    }
    if !identity_chars(v.trim_matches('*')) {
        return Some(format!(
            "{v:?} has characters a SPIFFE identity cannot have"
        ));
    }
    if v.contains('*') {
        return None;
    }
    let parts: Vec<&str> = v.split('/').collect();
    match parts.as_slice() {
        [td, "ns", ns, "sa", sa]
            if !td.is_empty()
                && crate::validate::is_dns_label(ns)
                && !sa.is_empty()
                && sa.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                }) =>
        {
            None
        }
        ["ns", ..] => Some(format!(
            "{v:?} has no trust domain (want TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT, e.g. cluster.local/{v})"
        )),
        _ => Some(format!(
            "{v:?} is not TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT (or a `*` glob)"
        )),
    }
}

/// A request principal: `*`, a glob, or `ISSUER/SUBJECT`.
fn request_principal_problem(v: &str) -> Option<String> {
    glob_problem(v).or_else(|| {
        (!v.contains('*') && !v.contains('/'))
            .then(|| format!("{v:?} is not ISSUER/SUBJECT (or a `*` glob)"))
    })
}

fn namespace_problem(v: &str) -> Option<String> {
    glob_problem(v).or_else(|| {
        let bare = v.trim_matches('*');
        (!bare.is_empty()
            && !bare
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        .then(|| format!("{v:?} is not a namespace name (or a `*` glob)"))
    })
}

fn service_account_problem(v: &str) -> Option<String> {
    match v.split_once('/') {
        Some((ns, sa))
            if crate::validate::is_dns_label(ns) && !sa.is_empty() && !sa.contains('/') =>
        {
            None
        }
        _ => Some(format!("{v:?} is not NAMESPACE/SERVICE_ACCOUNT")),
    }
}

fn path_problem(v: &str) -> Option<String> {
    if let Some(m) = glob_problem(v) {
        return Some(m);
    }
    if v.contains('{') || v.contains('}') {
        return Some(format!(
            "{v:?}: path templates ({{*}}, {{**}}) are not supported"
        ));
    }
    (!v.starts_with('/') && !v.starts_with('*'))
        .then(|| format!("{v:?}: paths start with `/` (or `*`)"))
}

fn port_problem(v: &str) -> Option<String> {
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 => None,
        _ => Some(format!("{v:?} is not a port number (0-65535)")),
    }
}

fn service_role(p: &mut Problems, r: &ServiceRole) {
    if r.rules.is_empty() {
        p.add("spec.rules", "a ServiceRole needs at least one rule");
    }
    for (i, a) in r.rules.iter().enumerate() {
        access_rule(p, &format!("spec.rules[{i}]"), a);
    }
}

fn access_rule(p: &mut Problems, f: &str, a: &AccessRule) {
    if a.services.is_empty() {
        p.add(format!("{f}.services"), "a rule names at least one service");
    }
    let mut out = Vec::new();
    let f2 = f.trim_start_matches("spec.");
    each(&mut out, f2, "services", &a.services, glob_problem);
    each(&mut out, f2, "methods", &a.methods, glob_problem);
    each(&mut out, f2, "paths", &a.paths, path_problem);
    each(&mut out, f2, "hosts", &a.hosts, glob_problem);
    for (i, port) in a.ports.iter().chain(&a.not_ports).enumerate() {
        if !(0..=65535).contains(port) {
            out.push(AuthzError::invalid(
                format!("{f2}.ports[{i}]"),
                format!("{port} is not a port number"),
            ));
        }
    }
    for (i, c) in a.constraints.iter().enumerate() {
        let cf = format!("{f2}.constraints[{i}]");
        let static_key = bracketed(&c.key, "destination.labels").is_some()
            || matches!(
                c.key.as_str(),
                "destination.name" | "destination.namespace" | "destination.service"
            );
        if !static_key && let Err(m) = Key::parse(&c.key) {
            out.push(AuthzError::invalid(format!("{cf}.key"), m));
        }
        if c.values.is_empty() {
            out.push(AuthzError::invalid(&cf, "a constraint needs values"));
        }
        each(&mut out, &cf, "values", &c.values, glob_problem);
    }
    for e in out {
        add(p, e);
    }
}

fn service_role_binding(p: &mut Problems, b: &ServiceRoleBinding) {
    if b.subjects.is_empty() {
        p.add("spec.subjects", "a binding needs at least one subject");
    }
    if b.actions.is_empty() {
        match (&b.role_ref, role_name(b)) {
            (Some(r), _) if r.kind != "ServiceRole" => p.add(
                "spec.roleRef.kind",
                format!("{:?}: only ServiceRole can be bound", r.kind),
            ),
            (_, None) => p.add("spec.roleRef", "a binding names the ServiceRole it grants"),
            _ => {}
        }
    }
    for (i, a) in b.actions.iter().enumerate() {
        access_rule(p, &format!("spec.actions[{i}]"), a);
    }
    for (i, s) in b.subjects.iter().enumerate() {
        let f = format!("subjects[{i}]");
        if *s == Subject::default() {
            add(
                p,
                AuthzError::invalid(&f, "a subject needs at least one field"),
            );
            continue;
        }
        match subject_rule(&f, s) {
            Err(e) => add(p, e),
            Ok((from, when)) => {
                let rule = Rule {
                    from,
                    to: Vec::new(),
                    when,
                };
                for e in rule_problems(&f, &rule) {
                    // Report against the subject, not the synthesised rule.
                    let e = match e {
                        AuthzError::Invalid { field, message } => AuthzError::Invalid {
                            field: field.replace(".from[0].source", ""),
                            message,
                        },
                        other => other,
                    };
                    add(p, e);
                }
            }
        }
    }
}

fn rbac_config(p: &mut Problems, c: &RbacConfig) {
    match c.mode {
        Some(RbacMode::OnWithInclusion) if c.inclusion.is_none() => p.add(
            "spec.inclusion",
            "mode ON_WITH_INCLUSION needs the included services or namespaces",
        ),
        Some(RbacMode::OnWithExclusion) if c.exclusion.is_none() => p.add(
            "spec.exclusion",
            "mode ON_WITH_EXCLUSION needs the excluded services or namespaces",
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
