//! `rbac`: Istio 1.0's role-based access control, decided in Mixer for `authorization`
//! instances from the `rbac.istio.io` ServiceRoles and ServiceRoleBindings of the config
//! store.
//!
//! Parameters (Istio's): `configStoreUrl` (`k8s://`, optionally followed by a kubeconfig
//! path, or `fs://DIRECTORY`; default `k8s://`) and `cacheDuration` (how long a decision
//! may be cached, default 60s). The URL is checked, but the objects always come from Mixer's
//! own config store (its `--config-dir`, or the API server it watches), which is where Istio
//! deployments pointed it anyway. Each compile of Mixer's config hands the store's snapshot
//! to the handler ([`Handler::observe_config`]), so edits apply without a restart.
//!
//! A check is decided as Istio 1.0's adapter did:
//!
//! - Roles are per namespace: only the ServiceRoles of `action.namespace` count, and a
//!   ServiceRoleBinding grants the role its `roleRef` names (kind `ServiceRole`) in its own
//!   namespace to its `subjects`.
//! - A role's rule matches when `services` names `action.service` (exact, `*`, `prefix*` or
//!   `*suffix`; a short name and its `NAME.NAMESPACE.svc.cluster.local` form are the same
//!   service), `methods` and `paths` match the same way (when given), no `notMethods` or
//!   `notPaths` match, and every constraint's `key` is an `action.properties` entry with one
//!   of its `values`. A key `base[k]` (or `base["k"]`) also reads entry `k` of a map property
//!   `base`, e.g. `destination.labels[version]`.
//! - A subject matches when at least one of `user` (`*` for anyone), `group` (the
//!   `subject.groups` string, or one of its comma-separated items) and `properties` (each an
//!   entry of `subject.properties`, e.g. `source.namespace` or
//!   `request.auth.claims[iss]`, matched like services) is given and all given ones hold.
//! - Allowed is OK; anything else PERMISSION_DENIED, naming the namespace and service. Both
//!   answers may be cached `cacheDuration` or 1,000,000,000 uses, as in Istio. Until the store has loaded the RBAC kinds, checks are UNAVAILABLE
//!   (and not cacheable).
//!
//! The RbacConfig (a ClusterRbacConfig `default`, else an RbacConfig `default`) decides
//! where this is enforced: `OFF` nowhere, `ON` everywhere, `ON_WITH_INCLUSION` for the listed
//! namespaces and services only, `ON_WITH_EXCLUSION` everywhere else; with
//! `enforcementMode: PERMISSIVE` decisions are logged, never enforced. Without any RbacConfig
//! every request is enforced: the rule sending requests to the handler is the opt-in, as in
//! Istio 1.0, whose adapter did not read RbacConfig. A binding in `PERMISSIVE` mode grants
//! nothing.
//!
//! Unlike Istio, fields of later API versions that this adapter cannot evaluate (a rule's
//! `hosts`, `notHosts`, `ports`, `notPorts`; a subject's `names`, `groups`, `namespaces`,
//! `ips` and their `not` forms) make that rule or subject match nothing (logged once per
//! change), rather than being ignored and granting more than written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::rbac::{
    AccessRule, EnforcementMode, RbacConfig, RbacMode, RbacTarget, ServiceRoleBinding, Subject,
};
use mesh_proto::{Kind, Spec};
use mesh_runtime::{ConfigObject, Snapshot};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use super::params::{self, bad};
use super::{AdapterError, CheckResult, Handler, InstanceValues, Status, code};
use crate::attribute::Value as Attr;

/// How many times a decision may be used, as Istio's adapter said.
const VALID_USE_COUNT: i32 = 1_000_000_000;

/// The default `cacheDuration`.
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(60);

/// The cluster domain of the `NAME.NAMESPACE.svc.DOMAIN` form of a short service name.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// Why an RBAC object is not used, or a request cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbacError {
    #[error("ServiceRoleBinding {namespace}/{binding}: roleRef.kind is {kind:?}, not ServiceRole")]
    RoleKind {
        namespace: String,
        binding: String,
        kind: String,
    },
    #[error("ServiceRoleBinding {namespace}/{binding}: names no role (roleRef.name)")]
    NoRole { namespace: String, binding: String },
    #[error(
        "ServiceRoleBinding {namespace}/{binding}: ServiceRole {namespace}/{role} does not exist"
    )]
    MissingRole {
        namespace: String,
        binding: String,
        role: String,
    },
    #[error("{object}: {field} cannot be evaluated by Mixer's rbac adapter; it matches nothing")]
    Unsupported { object: String, field: String },
    #[error("the request has no {field}")]
    MissingAction { field: &'static str },
}

/// A property of a subject or action: text, or a map (e.g. `destination.labels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    Text(String),
    Map(BTreeMap<String, String>),
}

/// What an `authorization` instance says about a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub user: String,
    pub groups: String,
    pub subject_properties: BTreeMap<String, Property>,
    pub namespace: String,
    pub service: String,
    pub method: String,
    pub path: String,
    pub action_properties: BTreeMap<String, Property>,
}

/// A role's rule, or nothing when it uses fields this adapter cannot evaluate.
#[derive(Debug, Clone)]
struct Rule(Option<AccessRule>);

/// A subject, or nothing when it uses fields this adapter cannot evaluate.
#[derive(Debug, Clone)]
struct Who(Option<Subject>);

/// A role with the bindings that grant it.
#[derive(Debug, Clone, Default)]
struct Role {
    name: String,
    rules: Vec<Rule>,
    /// (binding name, its subjects).
    bindings: Vec<(String, Vec<Who>)>,
}

/// The RBAC objects of one snapshot, ready to decide requests.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Whether the store had loaded everything (else checks are UNAVAILABLE).
    loaded: bool,
    /// The RbacConfig in force; `None`: enforced everywhere.
    config: Option<RbacConfig>,
    /// Roles by namespace, by name.
    roles: BTreeMap<String, BTreeMap<String, Role>>,
    /// Why some objects are not used.
    problems: Vec<RbacError>,
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// RBAC is not enforced for the service.
    NotEnforced,
    /// A binding grants the request: (namespace, role, binding).
    Allowed { role: String, binding: String },
    /// Nothing grants it.
    Denied(String),
}

/// The rbac handler.
#[derive(Debug)]
pub struct Rbac {
    cache_duration: Duration,
    policy: RwLock<Arc<Policy>>,
    /// The RBAC objects (and sync state) the policy was made from, to skip unchanged ones.
    seen: Mutex<Option<(bool, Vec<Arc<ConfigObject>>)>>,
}

/// The kinds this adapter reads, with the version to watch on Kubernetes.
pub fn watched_kinds() -> Vec<(Kind, String)> {
    [
        Kind::ServiceRole,
        Kind::ServiceRoleBinding,
        Kind::RbacConfig,
        Kind::ClusterRbacConfig,
    ]
    .into_iter()
    .map(|k| (k, "v1alpha1".to_string()))
    .collect()
}

fn is_rbac_kind(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::ServiceRole | Kind::ServiceRoleBinding | Kind::RbacConfig | Kind::ClusterRbacConfig
    )
}

// === impl Rbac ===

impl Rbac {
    /// Validates parameters; the policy comes with the first [`Handler::observe_config`].
    pub fn build(p: &Value) -> Result<Self, AdapterError> {
        params::only(p, "", &["configStoreUrl", "cacheDuration"])?;
        let url = params::string(p, "configStoreUrl", "configStoreUrl")?
            .unwrap_or_else(|| "k8s://".to_string());
        check_store_url(&url)?;
        let cache_duration = params::duration(p, "cacheDuration", "cacheDuration")?
            .unwrap_or(DEFAULT_CACHE_DURATION);
        Ok(Self {
            cache_duration,
            policy: RwLock::new(Arc::new(Policy::default())),
            seen: Mutex::new(None),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().clone()
    }
}

fn check_store_url(url: &str) -> Result<(), AdapterError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            "configStoreUrl",
            format!("{url:?} is not a URL (e.g. \"k8s://\" or \"fs:///etc/config\")"),
        ));
    };
    match scheme {
        "k8s" => Ok(()),
        "fs" if rest.starts_with('/') => Ok(()),
        "fs" => Err(bad(
            "configStoreUrl",
            format!("{url}: fs:// needs an absolute directory, e.g. fs:///etc/config"),
        )),
        other => Err(bad(
            "configStoreUrl",
            format!("unknown config store scheme {other:?} (supported: k8s://, fs://)"),
        )),
    }
}

impl Handler for Rbac {
    fn check(&self, instance: &InstanceValues<'_>) -> CheckResult {
        let policy = self.policy();
        if !policy.loaded {
            // Not a decision: nothing may cache it.
            return CheckResult {
                status: Status::new(
                    code::UNAVAILABLE,
                    "RBAC: the config store's ServiceRoles and ServiceRoleBindings are not loaded yet",
                ),
                valid_duration: Duration::ZERO,
                valid_use_count: 0,
            };
        }
        let status = {
            let request = Request::from_instance(instance);
            match policy.decide(&request) {
                Ok(Decision::Allowed { .. } | Decision::NotEnforced) => Status::default(),
                Ok(Decision::Denied(why)) if policy.permissive() => {
                    tracing::info!(instance = %instance.instance.name, %why, "rbac (permissive) would deny");
                    Status::default()
                }
                Ok(Decision::Denied(why)) => Status::new(
                    code::PERMISSION_DENIED,
                    format!("RBAC: permission denied: {why}"),
                ),
                Err(e) => Status::new(
                    code::PERMISSION_DENIED,
                    format!("RBAC: permission denied: {e}"),
                ),
            }
        };
        CheckResult {
            status,
            valid_duration: self.cache_duration,
            valid_use_count: VALID_USE_COUNT,
        }
    }

    fn observe_config(&self, snapshot: &Snapshot) {
        let objects: Vec<Arc<ConfigObject>> = snapshot
            .objects()
            .values()
            .filter(|o| is_rbac_kind(&o.key.kind))
            .cloned()
            .collect();
        let synced = snapshot.is_synced();
        {
            let mut seen = self.seen.lock();
            if let Some((was_synced, before)) = seen.as_ref()
                && *was_synced == synced
                && before.len() == objects.len()
                && before
                    .iter()
                    .zip(&objects)
                    .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
            {
                return;
            }
            *seen = Some((synced, objects.clone()));
        }
        let policy = Policy::from_objects(synced, objects.iter().map(|o| o.as_ref()));
        for p in &policy.problems {
            tracing::warn!(problem = %p, "rbac adapter");
        }
        tracing::info!(
            namespaces = policy.roles.len(),
            roles = policy.roles.values().map(BTreeMap::len).sum::<usize>(),
            mode = ?policy.config.as_ref().map(|c| c.mode),
            "rbac adapter policy loaded"
        );
        *self.policy.write() = Arc::new(policy);
    }
}

// === impl Policy ===

impl Policy {
    /// The policy of these RBAC objects (others are ignored).
    pub fn from_objects<'a>(
        loaded: bool,
        objects: impl IntoIterator<Item = &'a ConfigObject>,
    ) -> Self {
        let mut policy = Policy {
            loaded,
            ..Default::default()
        };
        let mut cluster_config = None;
        let mut namespaced_config = None;
        let mut bindings: Vec<(&str, &str, &ServiceRoleBinding)> = Vec::new();
        for obj in objects {
            let (ns, name) = (obj.key.namespace.as_str(), obj.key.name.as_str());
            match &obj.spec {
                Spec::ServiceRole(role) => {
                    let object = format!("ServiceRole {ns}/{name}");
                    let rules = role
                        .rules
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            Rule::new(r, &format!("{object} rules[{i}]"), &mut policy.problems)
                        })
                        .collect();
                    policy.roles.entry(ns.to_string()).or_default().insert(
                        name.to_string(),
                        Role {
                            name: name.to_string(),
                            rules,
                            bindings: Vec::new(),
                        },
                    );
                }
                Spec::ServiceRoleBinding(b) => bindings.push((ns, name, b)),
                Spec::ClusterRbacConfig(c) if name == "default" => cluster_config = Some(c.clone()),
                Spec::RbacConfig(c) if name == "default" && namespaced_config.is_none() => {
                    namespaced_config = Some(c.clone())
                }
                _ => {}
            }
        }
        policy.config = cluster_config.or(namespaced_config);
        for (ns, name, b) in bindings {
            if b.mode == Some(EnforcementMode::Permissive) {
                continue;
            }
            let object = format!("ServiceRoleBinding {ns}/{name}");
            let subjects: Vec<Who> = b
                .subjects
                .iter()
                .enumerate()
                .map(|(i, s)| Who::new(s, &format!("{object} subjects[{i}]"), &mut policy.problems))
                .collect();
            if !b.actions.is_empty() {
                // Inline permissions: a role of their own.
                let rules = b
                    .actions
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        Rule::new(r, &format!("{object} actions[{i}]"), &mut policy.problems)
                    })
                    .collect();
                let role = format!("{name} (inline)");
                policy.roles.entry(ns.to_string()).or_default().insert(
                    role.clone(),
                    Role {
                        name: role,
                        rules,
                        bindings: vec![(name.to_string(), subjects)],
                    },
                );
                continue;
            }
            let role = match (&b.role_ref, &b.role) {
                (Some(r), _) if r.kind != "ServiceRole" => {
                    policy.problems.push(RbacError::RoleKind {
                        namespace: ns.to_string(),
                        binding: name.to_string(),
                        kind: r.kind.clone(),
                    });
                    continue;
                }
                (Some(r), _) => r.name.clone(),
                (None, Some(role)) => role.trim_start_matches('/').to_string(),
                (None, None) => String::new(),
            };
            if role.is_empty() {
                policy.problems.push(RbacError::NoRole {
                    namespace: ns.to_string(),
                    binding: name.to_string(),
                });
                continue;
            }
            match policy.roles.get_mut(ns).and_then(|r| r.get_mut(&role)) {
                Some(r) => r.bindings.push((name.to_string(), subjects)),
                None => policy.problems.push(RbacError::MissingRole {
                    namespace: ns.to_string(),
                    binding: name.to_string(),
                    role,
                }),
            }
        }
        policy
    }

    /// Why some objects are not used.
    pub fn problems(&self) -> &[RbacError] {
        &self.problems
    }

    fn permissive(&self) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.enforcement_mode == Some(EnforcementMode::Permissive))
    }

    /// Whether RBAC is enforced for `service` in `namespace`.
    fn enforced(&self, namespace: &str, service: &str) -> bool {
        let Some(config) = &self.config else {
            return true;
        };
        let listed = |t: &Option<RbacTarget>| {
            t.as_ref().is_some_and(|t| {
                t.namespaces.iter().any(|n| n == namespace)
                    || t.services
                        .iter()
                        .any(|s| service_matches(s, service, namespace))
            })
        };
        match config.mode {
            None | Some(RbacMode::Off) => false,
            Some(RbacMode::On) => true,
            Some(RbacMode::OnWithInclusion) => listed(&config.inclusion),
            Some(RbacMode::OnWithExclusion) => !listed(&config.exclusion),
        }
    }

    /// Decides `req`.
    pub fn decide(&self, req: &Request) -> Result<Decision, RbacError> {
        if self
            .config
            .as_ref()
            .is_some_and(|c| matches!(c.mode, None | Some(RbacMode::Off)))
        {
            return Ok(Decision::NotEnforced);
        }
        for (field, value) in [
            ("action.namespace", &req.namespace),
            ("action.service", &req.service),
        ] {
            if value.is_empty() {
                return Err(RbacError::MissingAction { field });
            }
        }
        if !self.enforced(&req.namespace, &req.service) {
            return Ok(Decision::NotEnforced);
        }
        for (field, value) in [("action.method", &req.method), ("action.path", &req.path)] {
            if value.is_empty() {
                return Err(RbacError::MissingAction { field });
            }
        }
        for role in self
            .roles
            .get(&req.namespace)
            .into_iter()
            .flat_map(|r| r.values())
        {
            if !role.rules.iter().any(|r| r.matches(req)) {
                continue;
            }
            for (binding, subjects) in &role.bindings {
                if subjects.iter().any(|s| s.matches(req)) {
                    return Ok(Decision::Allowed {
                        role: role.name.clone(),
                        binding: binding.clone(),
                    });
                }
            }
        }
        let who = if req.user.is_empty() {
            String::new()
        } else {
            format!(" to user {:?}", req.user)
        };
        Ok(Decision::Denied(format!(
            "no ServiceRoleBinding in namespace {} grants {} {} on service {}{who}",
            req.namespace, req.method, req.path, req.service
        )))
    }
}

/// Whether none of the fields this adapter cannot evaluate is set (`set`: field name and
/// whether it is); the first one that is becomes a problem of `object`, and the rule or
/// subject then matches nothing rather than granting more than written.
fn supported(set: &[(&str, bool)], object: &str, problems: &mut Vec<RbacError>) -> bool {
    match set.iter().find(|(_, is_set)| *is_set) {
        Some((field, _)) => {
            problems.push(RbacError::Unsupported {
                object: object.to_string(),
                field: field.to_string(),
            });
            false
        }
        None => true,
    }
}

// === impl Rule ===

impl Rule {
    fn new(rule: &AccessRule, object: &str, problems: &mut Vec<RbacError>) -> Self {
        let set = [
            ("hosts", !rule.hosts.is_empty()),
            ("notHosts", !rule.not_hosts.is_empty()),
            ("ports", !rule.ports.is_empty()),
            ("notPorts", !rule.not_ports.is_empty()),
        ];
        Rule(supported(&set, object, problems).then(|| rule.clone()))
    }

    fn matches(&self, req: &Request) -> bool {
        let Some(r) = &self.0 else {
            return false;
        };
        r.services
            .iter()
            .any(|s| service_matches(s, &req.service, &req.namespace))
            && (r.methods.is_empty() || any_match(&r.methods, &req.method))
            && !any_match(&r.not_methods, &req.method)
            && (r.paths.is_empty() || any_match(&r.paths, &req.path))
            && !any_match(&r.not_paths, &req.path)
            && r.constraints.iter().all(|c| {
                lookup(&req.action_properties, &c.key).is_some_and(|v| any_match(&c.values, v))
            })
    }
}

// === impl Who ===

impl Who {
    fn new(subject: &Subject, object: &str, problems: &mut Vec<RbacError>) -> Self {
        let set = [
            ("names", !subject.names.is_empty()),
            ("notNames", !subject.not_names.is_empty()),
            ("groups", !subject.groups.is_empty()),
            ("notGroups", !subject.not_groups.is_empty()),
            ("namespaces", !subject.namespaces.is_empty()),
            ("notNamespaces", !subject.not_namespaces.is_empty()),
            ("ips", !subject.ips.is_empty()),
            ("notIps", !subject.not_ips.is_empty()),
        ];
        Who(supported(&set, object, problems).then(|| subject.clone()))
    }

    /// Istio 1.0's rule: at least one of user, group and properties is given, and all the
    /// given ones hold.
    fn matches(&self, req: &Request) -> bool {
        let Some(s) = &self.0 else {
            return false;
        };
        let mut given = false;
        if let Some(user) = s.user.as_deref().filter(|u| !u.is_empty()) {
            if user != "*" && user != req.user {
                return false;
            }
            given = true;
        }
        if let Some(group) = s.group.as_deref().filter(|g| !g.is_empty()) {
            let member = group == "*"
                || group == req.groups
                || req.groups.split(',').any(|g| g.trim() == group);
            if !member {
                return false;
            }
            given = true;
        }
        if !s.properties.is_empty() {
            let all = s
                .properties
                .iter()
                .all(|(k, want)| lookup(&req.subject_properties, k).is_some_and(|v| glob(want, v)));
            if !all {
                return false;
            }
            given = true;
        }
        given
    }
}

// === impl Request ===

impl Request {
    /// The request an `authorization` instance describes.
    pub fn from_instance(instance: &InstanceValues<'_>) -> Self {
        let mut req = Request::default();
        for (i, field) in instance.instance.fields.iter().enumerate() {
            let Some(Some(value)) = instance.values.get(i) else {
                continue;
            };
            if let Some(key) = field.strip_prefix("subject.properties.") {
                req.subject_properties
                    .insert(key.to_string(), property(value));
                continue;
            }
            if let Some(key) = field.strip_prefix("action.properties.") {
                req.action_properties
                    .insert(key.to_string(), property(value));
                continue;
            }
            let slot = match &**field {
                "subject.user" => &mut req.user,
                "subject.groups" => &mut req.groups,
                "action.namespace" => &mut req.namespace,
                "action.service" => &mut req.service,
                "action.method" => &mut req.method,
                "action.path" => &mut req.path,
                _ => continue,
            };
            value.write_text(slot);
        }
        req
    }
}

fn property(value: &Attr<'_>) -> Property {
    match value {
        Attr::StringMap(m) => {
            let mut out = BTreeMap::new();
            m.for_each(&mut |k, v| {
                out.insert(k.to_string(), v.to_string());
            });
            Property::Map(out)
        }
        other => {
            let mut text = String::new();
            other.write_text(&mut text);
            Property::Text(text)
        }
    }
}

/// `base["k"]` and `base['k']` as `base[k]`.
fn unquote_key(key: &str) -> String {
    key.replace("[\"", "[")
        .replace("\"]", "]")
        .replace("['", "[")
        .replace("']", "]")
}

/// The text of property `key`: the entry of that name (quotes in brackets aside), or entry
/// `k` of a map property `base` for `base[k]`.
fn lookup<'a>(props: &'a BTreeMap<String, Property>, key: &str) -> Option<&'a str> {
    let text = |p: &'a Property| match p {
        Property::Text(t) => Some(t.as_str()),
        Property::Map(_) => None,
    };
    if let Some(p) = props.get(key) {
        return text(p);
    }
    let want = unquote_key(key);
    if let Some((_, p)) = props.iter().find(|(k, _)| unquote_key(k) == want) {
        return text(p);
    }
    let (base, rest) = want.split_once('[')?;
    let sub = rest.strip_suffix(']')?;
    match props.get(base)? {
        Property::Map(m) => m.get(sub).map(String::as_str),
        Property::Text(_) => None,
    }
}

/// Istio's string match: exact, `*`, `prefix*` or `*suffix`.
fn glob(pattern: &str, value: &str) -> bool {
    pattern == "*"
        || pattern == value
        || pattern
            .strip_suffix('*')
            .is_some_and(|p| value.starts_with(p))
        || pattern
            .strip_prefix('*')
            .is_some_and(|s| value.ends_with(s))
}

fn any_match(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| glob(p, value))
}

/// Whether service pattern `pattern` names `service` of `namespace`, whichever of the short
/// name (`reviews`) and the FQDN (`reviews.default.svc.cluster.local`) each is written as.
fn service_matches(pattern: &str, service: &str, namespace: &str) -> bool {
    if glob(pattern, service) {
        return true;
    }
    match service.split_once('.') {
        // A short name: also as `NAME.NAMESPACE` and `NAME.NAMESPACE.svc.cluster.local`.
        None => {
            glob(pattern, &format!("{service}.{namespace}"))
                || glob(
                    pattern,
                    &format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}"),
                )
        }
        // A name of this namespace: also as the short name.
        Some((short, rest)) => {
            let own = rest == namespace || rest.starts_with(&format!("{namespace}.svc"));
            own && glob(pattern, short)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_runtime::ConfigKey;
    use serde_json::json;

    fn object(api_kind: Kind, ns: &str, name: &str, spec: Value) -> ConfigObject {
        let spec = mesh_proto::parse_spec(&api_kind, spec).unwrap();
        ConfigObject {
            key: ConfigKey::new(api_kind, ns, name),
            api_version: "rbac.istio.io/v1alpha1".into(),
            labels: Default::default(),
            annotations: Default::default(),
            generation: None,
            origin: mesh_runtime::config::Origin::File {
                path: "test.yaml".into(),
                document: 1,
            },
            spec,
        }
    }

    /// Istio 1.0's sample roles (operatorconfig/rbac.yaml) and a few more.
    fn objects() -> Vec<ConfigObject> {
        vec![
            object(
                Kind::ServiceRole,
                "default",
                "products-viewer",
                json!({"rules": [{
                    "services": ["products.svc.cluster.local"],
                    "methods": ["GET", "HEAD"],
                    "constraints": [{"key": "version", "values": ["v1", "v2"]}],
                }]}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "test-binding-products",
                json!({
                    "subjects": [
                        {"user": "alice@yahoo.com"},
                        {"properties": {"service": "reviews", "namespace": "abc"}},
                    ],
                    "roleRef": {"kind": "ServiceRole", "name": "products-viewer"},
                }),
            ),
            object(
                Kind::ServiceRole,
                "default",
                "book-reader",
                json!({"rules": [
                    {"services": ["reviews*"], "methods": ["*"]},
                    {"services": ["bookstore.svc.cluster.local"], "paths": ["*/review"], "methods": ["GET"]},
                ]}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "test-binding-book",
                json!({
                    "subjects": [{"properties": {"namespace": "acme"}}],
                    "roleRef": {"kind": "ServiceRole", "name": "book-reader"},
                }),
            ),
            object(
                Kind::ServiceRole,
                "default",
                "ratings-v2",
                json!({"rules": [{
                    "services": ["ratings.default.svc.cluster.local"],
                    "paths": ["/ratings/*"],
                    "notMethods": ["DELETE"],
                    "constraints": [{"key": "destination.labels[version]", "values": ["v2"]}],
                }]}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "ratings-v2-users",
                json!({
                    "subjects": [
                        {"group": "testers"},
                        {"user": "*", "properties": {"source.principal": "cluster.local/ns/default/sa/*"}},
                    ],
                    "roleRef": {"kind": "ServiceRole", "name": "ratings-v2"},
                }),
            ),
            // The same role name in another namespace grants nothing in `default`.
            object(
                Kind::ServiceRole,
                "other",
                "all",
                json!({"rules": [{"services": ["*"]}]}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "other",
                "everyone",
                json!({"subjects": [{"user": "*"}], "roleRef": {"kind": "ServiceRole", "name": "all"}}),
            ),
        ]
    }

    fn policy_of(objects: &[ConfigObject]) -> Policy {
        Policy::from_objects(true, objects.iter())
    }

    fn text(pairs: &[(&str, &str)]) -> BTreeMap<String, Property> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Property::Text(v.to_string())))
            .collect()
    }

    fn req(user: &str, ns: &str, service: &str, method: &str, path: &str) -> Request {
        Request {
            user: user.into(),
            namespace: ns.into(),
            service: service.into(),
            method: method.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    fn allowed(p: &Policy, r: &Request) -> bool {
        matches!(
            p.decide(r),
            Ok(Decision::Allowed { .. } | Decision::NotEnforced)
        )
    }

    #[test]
    fn subjects_and_actions_table() {
        let p = policy_of(&objects());
        assert_eq!(p.problems(), &[]);
        let version = |v: &str| text(&[("version", v)]);
        let from = |pairs: &[(&str, &str)]| text(pairs);
        let labels = |v: &str| {
            BTreeMap::from([(
                "destination.labels".to_string(),
                Property::Map(BTreeMap::from([("version".to_string(), v.to_string())])),
            )])
        };
        #[allow(clippy::type_complexity)]
        let table: Vec<(&str, Request, bool)> = vec![
            (
                "alice may GET products v1",
                Request {
                    action_properties: version("v1"),
                    ..req(
                        "alice@yahoo.com",
                        "default",
                        "products.svc.cluster.local",
                        "GET",
                        "/p",
                    )
                },
                true,
            ),
            (
                "alice may not POST products",
                Request {
                    action_properties: version("v1"),
                    ..req(
                        "alice@yahoo.com",
                        "default",
                        "products.svc.cluster.local",
                        "POST",
                        "/p",
                    )
                },
                false,
            ),
            (
                "alice may not GET products v3 (constraint)",
                Request {
                    action_properties: version("v3"),
                    ..req(
                        "alice@yahoo.com",
                        "default",
                        "products.svc.cluster.local",
                        "GET",
                        "/p",
                    )
                },
                false,
            ),
            (
                "a constraint on a property the request lacks fails",
                req(
                    "alice@yahoo.com",
                    "default",
                    "products.svc.cluster.local",
                    "GET",
                    "/p",
                ),
                false,
            ),
            (
                "bob is not bound",
                Request {
                    action_properties: version("v1"),
                    ..req("bob", "default", "products.svc.cluster.local", "GET", "/p")
                },
                false,
            ),
            (
                "reviews in abc by properties (all must hold)",
                Request {
                    subject_properties: from(&[("service", "reviews"), ("namespace", "abc")]),
                    action_properties: version("v2"),
                    ..req("", "default", "products.svc.cluster.local", "HEAD", "/")
                },
                true,
            ),
            (
                "reviews in xyz fails one property",
                Request {
                    subject_properties: from(&[("service", "reviews"), ("namespace", "xyz")]),
                    action_properties: version("v2"),
                    ..req("", "default", "products.svc.cluster.local", "HEAD", "/")
                },
                false,
            ),
            (
                "prefix service reviews* and method *",
                Request {
                    subject_properties: from(&[("namespace", "acme")]),
                    ..req("", "default", "reviews-v2", "DELETE", "/x")
                },
                true,
            ),
            (
                "suffix path */review",
                Request {
                    subject_properties: from(&[("namespace", "acme")]),
                    ..req(
                        "",
                        "default",
                        "bookstore.svc.cluster.local",
                        "GET",
                        "/books/1/review",
                    )
                },
                true,
            ),
            (
                "suffix path does not match",
                Request {
                    subject_properties: from(&[("namespace", "acme")]),
                    ..req(
                        "",
                        "default",
                        "bookstore.svc.cluster.local",
                        "GET",
                        "/books/1",
                    )
                },
                false,
            ),
            (
                "roles are per namespace",
                Request {
                    subject_properties: from(&[("namespace", "acme")]),
                    ..req("", "other2", "reviews", "GET", "/")
                },
                false,
            ),
            (
                "other's wildcard role is for other",
                req("anyone", "other", "details", "GET", "/"),
                true,
            ),
            (
                "group, short name against FQDN, map constraint",
                Request {
                    groups: "dev,testers".into(),
                    action_properties: labels("v2"),
                    ..req("", "default", "ratings", "GET", "/ratings/1")
                },
                true,
            ),
            (
                "notMethods",
                Request {
                    groups: "testers".into(),
                    action_properties: labels("v2"),
                    ..req("", "default", "ratings", "DELETE", "/ratings/1")
                },
                false,
            ),
            (
                "map constraint value",
                Request {
                    groups: "testers".into(),
                    action_properties: labels("v1"),
                    ..req("", "default", "ratings", "GET", "/ratings/1")
                },
                false,
            ),
            (
                "quoted constraint key as the instance's property name",
                Request {
                    groups: "testers".into(),
                    action_properties: text(&[("destination.labels[\"version\"]", "v2")]),
                    ..req(
                        "",
                        "default",
                        "ratings.default.svc.cluster.local",
                        "GET",
                        "/ratings/1",
                    )
                },
                true,
            ),
            (
                "user * with a principal property wildcard",
                Request {
                    subject_properties: from(&[(
                        "source.principal",
                        "cluster.local/ns/default/sa/bookinfo",
                    )]),
                    action_properties: labels("v2"),
                    ..req("x", "default", "ratings", "GET", "/ratings/2")
                },
                true,
            ),
            (
                "principal of another namespace",
                Request {
                    subject_properties: from(&[(
                        "source.principal",
                        "cluster.local/ns/evil/sa/bookinfo",
                    )]),
                    action_properties: labels("v2"),
                    ..req("x", "default", "ratings", "GET", "/ratings/2")
                },
                false,
            ),
            (
                "an FQDN of another namespace is not the short name",
                Request {
                    groups: "testers".into(),
                    action_properties: labels("v2"),
                    ..req(
                        "",
                        "default",
                        "ratings.other.svc.cluster.local",
                        "GET",
                        "/ratings/1",
                    )
                },
                false,
            ),
        ];
        for (what, r, want) in table {
            assert_eq!(allowed(&p, &r), want, "{what}: {:?}", p.decide(&r));
        }
    }

    #[test]
    fn denials_name_namespace_and_service_and_missing_fields() {
        let p = policy_of(&objects());
        let d = p
            .decide(&req("bob", "default", "details", "GET", "/"))
            .unwrap();
        assert_eq!(
            d,
            Decision::Denied(
                "no ServiceRoleBinding in namespace default grants GET / on service details to user \"bob\"".into()
            )
        );
        assert_eq!(
            p.decide(&req("bob", "default", "details", "GET", "")),
            Err(RbacError::MissingAction {
                field: "action.path"
            })
        );
        assert_eq!(
            p.decide(&req("bob", "", "details", "GET", "/")),
            Err(RbacError::MissingAction {
                field: "action.namespace"
            })
        );
    }

    #[test]
    fn rbac_config_modes() {
        let mut objs = objects();
        let config = |spec: Value| object(Kind::RbacConfig, "istio-system", "default", spec);
        let bob = req("bob", "default", "details", "GET", "/");
        let bob_other = req("bob", "other2", "details", "GET", "/");
        let decide = |objs: &[ConfigObject], r: &Request| policy_of(objs).decide(r).unwrap();

        objs.push(config(json!({"mode": "OFF"})));
        assert_eq!(decide(&objs, &bob), Decision::NotEnforced);
        // OFF needs no namespace or path at all.
        assert_eq!(decide(&objs, &Request::default()), Decision::NotEnforced);

        objs.pop();
        objs.push(config(json!({"mode": "ON"})));
        assert!(matches!(decide(&objs, &bob), Decision::Denied(_)));

        objs.pop();
        objs.push(config(
            json!({"mode": "ON_WITH_INCLUSION", "inclusion": {"namespaces": ["default"]}}),
        ));
        assert!(matches!(decide(&objs, &bob), Decision::Denied(_)));
        assert_eq!(decide(&objs, &bob_other), Decision::NotEnforced);

        objs.pop();
        objs.push(config(json!({"mode": "ON_WITH_INCLUSION", "inclusion": {"services": ["details.default.svc.cluster.local"]}})));
        assert!(matches!(decide(&objs, &bob), Decision::Denied(_)));
        assert_eq!(
            decide(&objs, &req("bob", "default", "reviews", "GET", "/")),
            Decision::NotEnforced
        );

        objs.pop();
        objs.push(config(
            json!({"mode": "ON_WITH_EXCLUSION", "exclusion": {"services": ["details*"]}}),
        ));
        assert_eq!(decide(&objs, &bob), Decision::NotEnforced);
        assert!(matches!(
            decide(&objs, &req("bob", "default", "reviews", "GET", "/")),
            Decision::Denied(_)
        ));

        // A ClusterRbacConfig `default` wins over the RbacConfig.
        objs.push(object(
            Kind::ClusterRbacConfig,
            "",
            "default",
            json!({"mode": "OFF"}),
        ));
        assert_eq!(
            decide(&objs, &req("bob", "default", "reviews", "GET", "/")),
            Decision::NotEnforced
        );
        // An RbacConfig with another name is not the mesh's.
        let mut objs = objects();
        objs.push(object(
            Kind::RbacConfig,
            "default",
            "mine",
            json!({"mode": "OFF"}),
        ));
        assert!(matches!(decide(&objs, &bob), Decision::Denied(_)));
    }

    #[test]
    fn bad_bindings_and_unsupported_fields_grant_nothing() {
        let objs = vec![
            object(
                Kind::ServiceRole,
                "default",
                "r",
                json!({"rules": [{"services": ["*"]}]}),
            ),
            object(
                Kind::ServiceRole,
                "default",
                "ports",
                json!({"rules": [{"services": ["*"], "ports": [8080]}]}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "dangling",
                json!({"subjects": [{"user": "*"}], "roleRef": {"kind": "ServiceRole", "name": "nope"}}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "wrong-kind",
                json!({"subjects": [{"user": "*"}], "roleRef": {"kind": "ClusterRole", "name": "r"}}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "by-namespace",
                json!({"subjects": [{"user": "*", "namespaces": ["prod"]}], "roleRef": {"kind": "ServiceRole", "name": "r"}}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "ports-user",
                json!({"subjects": [{"user": "*"}], "roleRef": {"kind": "ServiceRole", "name": "ports"}}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "dry-run",
                json!({"subjects": [{"user": "*"}], "roleRef": {"kind": "ServiceRole", "name": "r"}, "mode": "PERMISSIVE"}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "nobody",
                json!({"subjects": [{}], "roleRef": {"kind": "ServiceRole", "name": "r"}}),
            ),
        ];
        let p = policy_of(&objs);
        assert!(!allowed(&p, &req("bob", "default", "details", "GET", "/")));
        let mut problems: Vec<String> = p.problems().iter().map(|e| e.to_string()).collect();
        problems.sort();
        assert_eq!(
            problems,
            [
                "ServiceRole default/ports rules[0]: ports cannot be evaluated by Mixer's rbac adapter; it matches nothing",
                "ServiceRoleBinding default/by-namespace subjects[0]: namespaces cannot be evaluated by Mixer's rbac adapter; it matches nothing",
                "ServiceRoleBinding default/dangling: ServiceRole default/nope does not exist",
                "ServiceRoleBinding default/wrong-kind: roleRef.kind is \"ClusterRole\", not ServiceRole",
            ]
        );
    }

    #[test]
    fn inline_actions_and_role_names() {
        let objs = vec![
            object(
                Kind::ServiceRole,
                "default",
                "r",
                json!({"rules": [{"services": ["details"], "methods": ["GET"]}]}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "by-role",
                json!({"subjects": [{"user": "ann"}], "role": "/r"}),
            ),
            object(
                Kind::ServiceRoleBinding,
                "default",
                "inline",
                json!({"subjects": [{"user": "bob"}], "actions": [{"services": ["reviews"], "paths": ["/health"]}]}),
            ),
        ];
        let p = policy_of(&objs);
        assert_eq!(p.problems(), &[]);
        assert!(allowed(&p, &req("ann", "default", "details", "GET", "/")));
        assert!(!allowed(&p, &req("bob", "default", "details", "GET", "/")));
        assert!(allowed(
            &p,
            &req("bob", "default", "reviews", "POST", "/health")
        ));
        assert!(!allowed(&p, &req("bob", "default", "reviews", "GET", "/")));
    }

    #[test]
    fn params_are_validated_with_field_names() {
        assert!(Rbac::build(&json!({})).is_ok());
        assert!(Rbac::build(&json!({"configStoreUrl": "k8s://", "cacheDuration": "30s"})).is_ok());
        assert!(
            Rbac::build(
                &json!({"config_store_url": "fs:///etc/istio/config", "cache_duration": "0s"})
            )
            .is_ok()
        );
        for (p, field, text) in [
            (
                json!({"cacheDuration": "soon"}),
                "cacheDuration",
                "invalid duration",
            ),
            (
                json!({"cacheDuration": "-1s"}),
                "cacheDuration",
                "invalid duration",
            ),
            (
                json!({"configStoreUrl": "etcd://x"}),
                "configStoreUrl",
                "unknown config store scheme \"etcd\"",
            ),
            (
                json!({"configStoreUrl": "fs://relative"}),
                "configStoreUrl",
                "absolute",
            ),
            (
                json!({"configStoreUrl": "nowhere"}),
                "configStoreUrl",
                "not a URL",
            ),
            (
                json!({"configStoreUrl": 3}),
                "configStoreUrl",
                "must be a string",
            ),
            (json!({"cacheTime": "1s"}), "cacheTime", "unknown field"),
        ] {
            let e = Rbac::build(&p).unwrap_err();
            assert_eq!(e.field, field, "{p}");
            assert!(e.message.contains(text), "{p}: {}", e.message);
        }
    }

    #[test]
    fn the_handler_follows_the_snapshots_it_observes() {
        use crate::config::{Instance, Variety};
        let h = Rbac::build(&json!({"cacheDuration": "5s"})).unwrap();
        let instance = Instance {
            name: "a.authorization.istio-system".into(),
            short_name: "a".into(),
            namespace: "istio-system".into(),
            template: "authorization".into(),
            variety: Variety::Check,
            fields: vec![
                "subject.user".into(),
                "action.namespace".into(),
                "action.service".into(),
                "action.method".into(),
                "action.path".into(),
            ],
            exprs: Vec::new(),
        };
        let check = |user: &'static str| {
            h.check(&InstanceValues {
                instance: &instance,
                values: ["alice", "default", "details", "GET", "/"]
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Some(Attr::String(if i == 0 { user } else { v }.into())))
                    .collect(),
            })
        };
        // Nothing observed yet: not a decision, not to be cached.
        let unavailable = check("alice");
        assert_eq!(unavailable.status.code, code::UNAVAILABLE);
        assert_eq!(unavailable.valid_duration, Duration::ZERO);
        let snapshot = |objs: Vec<ConfigObject>| {
            Snapshot::new(
                1,
                true,
                objs.into_iter()
                    .map(|o| (o.key.clone(), Arc::new(o)))
                    .collect(),
                Vec::new(),
            )
        };
        let role = object(
            Kind::ServiceRole,
            "default",
            "r",
            json!({"rules": [{"services": ["details"]}]}),
        );
        let binding = |user: &str| {
            object(
                Kind::ServiceRoleBinding,
                "default",
                "b",
                json!({"subjects": [{"user": user}], "roleRef": {"kind": "ServiceRole", "name": "r"}}),
            )
        };
        h.observe_config(&snapshot(vec![role.clone(), binding("alice")]));
        let ok = check("alice");
        assert_eq!(ok.status.code, code::OK);
        assert_eq!(ok.valid_duration, Duration::from_secs(5));
        assert_eq!(ok.valid_use_count, VALID_USE_COUNT);
        let denied = check("bob").status;
        assert_eq!(denied.code, code::PERMISSION_DENIED);
        assert!(
            denied
                .message
                .starts_with("RBAC: permission denied: no ServiceRoleBinding in namespace default"),
            "{}",
            denied.message
        );
        h.observe_config(&snapshot(vec![role, binding("bob")]));
        assert_eq!(check("alice").status.code, code::PERMISSION_DENIED);
        assert_eq!(check("bob").status.code, code::OK);
    }
}
