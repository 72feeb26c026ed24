//! The registry of known kinds and the typed [`Spec`] each one carries.
//!
//! Every kind this control plane serves is a variant of [`Kind`], with its API group, the
//! versions served, its CRD plural and scope; [`parse_spec`] turns a document's untyped `spec`
//! into the kind's typed form, naming the offending field when it cannot.

use std::sync::LazyLock;

use serde::de::DeserializeOwned;

use crate::policy::{CompiledAdapter, CompiledTemplate};
use crate::types::Struct;
use crate::{authentication, networking, policy, rbac, routing, security};

/// API group of the traffic-management API.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// API group of Mixer and of the pre-1.0 routing API.
pub const CONFIG_GROUP: &str = "config.istio.io";
/// API group of Istio RBAC (1.0–1.5).
pub const RBAC_GROUP: &str = "rbac.istio.io";
/// API group of the current security API.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// API group of the authentication policies of Istio 1.0–1.5.
pub const AUTHENTICATION_GROUP: &str = "authentication.istio.io";

// Served versions per group; the first is the storage version (the one the API server keeps
// objects in, and the one this control plane writes). Istio itself stores networking objects as
// v1alpha3 and security objects as v1beta1 while serving the later versions with the same schema.
const NETWORKING_VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];
const CONFIG_VERSIONS: &[&str] = &["v1alpha2"];
const RBAC_VERSIONS: &[&str] = &["v1alpha1"];
const SECURITY_VERSIONS: &[&str] = &["v1beta1", "v1"];
const AUTHENTICATION_VERSIONS: &[&str] = &["v1alpha1"];
const CORE_VERSIONS: &[&str] = &["v1"];

/// A kind of configuration object, identified by API group and kind name.
///
/// Kinds this control plane types are listed by name; any other kind of an Istio API group is
/// kept as [`Kind::Other`] with an untyped spec so that nothing a user applies is lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.istio.io/ServiceEntry`
    ServiceEntry,
    /// `networking.istio.io/VirtualService`
    VirtualService,
    /// `networking.istio.io/DestinationRule`
    DestinationRule,
    /// `networking.istio.io/Gateway`
    Gateway,
    /// `networking.istio.io/Sidecar`
    Sidecar,
    /// `networking.istio.io/WorkloadEntry`
    WorkloadEntry,
    /// `config.istio.io/rule`: a Mixer rule.
    Rule,
    /// `config.istio.io/handler`: a configured Mixer adapter.
    Handler,
    /// `config.istio.io/instance`: a Mixer template filled in from attributes.
    Instance,
    /// `config.istio.io/attributemanifest`
    AttributeManifest,
    /// `config.istio.io/adapter`: description of an out-of-process adapter.
    Adapter,
    /// `config.istio.io/template`: a template for out-of-process adapters.
    Template,
    /// `config.istio.io/<adapter>` (e.g. `prometheus`): a handler of a compiled-in adapter.
    CompiledAdapter(CompiledAdapter),
    /// `config.istio.io/<template>` (e.g. `metric`): an instance of a compiled-in template.
    CompiledTemplate(CompiledTemplate),
    /// `config.istio.io/QuotaSpec`
    QuotaSpec,
    /// `config.istio.io/QuotaSpecBinding`
    QuotaSpecBinding,
    /// `config.istio.io/HTTPAPISpec`
    HttpApiSpec,
    /// `config.istio.io/HTTPAPISpecBinding`
    HttpApiSpecBinding,
    /// `config.istio.io/RouteRule` (pre-1.0 routing API)
    RouteRule,
    /// `config.istio.io/DestinationPolicy` (pre-1.0 routing API)
    DestinationPolicy,
    /// `config.istio.io/EgressRule` (pre-1.0 routing API)
    EgressRule,
    /// `rbac.istio.io/ServiceRole`
    ServiceRole,
    /// `rbac.istio.io/ServiceRoleBinding`
    ServiceRoleBinding,
    /// `rbac.istio.io/RbacConfig`
    RbacConfig,
    /// `rbac.istio.io/ClusterRbacConfig`
    ClusterRbacConfig,
    /// `security.istio.io/AuthorizationPolicy`
    AuthorizationPolicy,
    /// `security.istio.io/PeerAuthentication`
    PeerAuthentication,
    /// `security.istio.io/RequestAuthentication`
    RequestAuthentication,
    /// `authentication.istio.io/Policy`
    AuthenticationPolicy,
    /// `authentication.istio.io/MeshPolicy`
    MeshPolicy,
    /// Core `v1/ServiceAccount`: the identities Citadel issues certificates for.
    ServiceAccount,
    /// Any other kind of an Istio API group (`*.istio.io`), kept with an untyped spec.
    Other {
        /// API group, e.g. `networking.istio.io`.
        group: String,
        /// Kind name, e.g. `EnvoyFilter`.
        kind: String,
    },
}

/// The typed spec of a configuration object.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A ServiceEntry.
    ServiceEntry(networking::ServiceEntry),
    /// A VirtualService.
    VirtualService(networking::VirtualService),
    /// A DestinationRule.
    DestinationRule(networking::DestinationRule),
    /// A Gateway.
    Gateway(networking::Gateway),
    /// A Sidecar.
    Sidecar(networking::Sidecar),
    /// A WorkloadEntry.
    WorkloadEntry(networking::WorkloadEntrySpec),
    /// A Mixer rule.
    Rule(policy::Rule),
    /// A Mixer handler.
    Handler(policy::Handler),
    /// A Mixer instance.
    Instance(policy::Instance),
    /// A Mixer attribute manifest.
    AttributeManifest(policy::AttributeManifest),
    /// An out-of-process adapter's description.
    Adapter(policy::AdapterInfo),
    /// A template for out-of-process adapters.
    Template(policy::TemplateInfo),
    /// A handler of a compiled-in adapter: the adapter, and its params as written.
    CompiledAdapter(CompiledAdapter, Struct),
    /// An instance of a compiled-in template: the template, and its fields as written.
    CompiledTemplate(CompiledTemplate, Struct),
    /// A QuotaSpec.
    QuotaSpec(policy::QuotaSpec),
    /// A QuotaSpecBinding.
    QuotaSpecBinding(policy::QuotaSpecBinding),
    /// An HTTPAPISpec.
    HttpApiSpec(policy::HttpApiSpec),
    /// An HTTPAPISpecBinding.
    HttpApiSpecBinding(policy::HttpApiSpecBinding),
    /// A legacy RouteRule.
    RouteRule(routing::RouteRule),
    /// A legacy DestinationPolicy.
    DestinationPolicy(routing::DestinationPolicy),
    /// A legacy EgressRule.
    EgressRule(routing::EgressRule),
    /// A ServiceRole.
    ServiceRole(rbac::ServiceRole),
    /// A ServiceRoleBinding.
    ServiceRoleBinding(rbac::ServiceRoleBinding),
    /// An RbacConfig.
    RbacConfig(rbac::RbacConfig),
    /// A ClusterRbacConfig (same fields as an RbacConfig).
    ClusterRbacConfig(rbac::RbacConfig),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(security::AuthorizationPolicy),
    /// A PeerAuthentication.
    PeerAuthentication(security::PeerAuthentication),
    /// A RequestAuthentication.
    RequestAuthentication(security::RequestAuthentication),
    /// An authentication Policy.
    AuthenticationPolicy(authentication::Policy),
    /// A MeshPolicy (same fields as an authentication Policy).
    MeshPolicy(authentication::Policy),
    /// ServiceAccounts carry no spec of interest: their name and namespace are the identity.
    ServiceAccount,
    /// The spec of a kind this control plane does not type (yet), kept as written.
    Other(serde_json::Value),
}

/// Why a spec could not be turned into its typed form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec does not match the kind's schema; `path` names the offending field
    /// (e.g. `spec.ports[0].number`).
    #[error("{path}: {message}")]
    Invalid {
        /// Dotted path of the field, starting at `spec`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The apiVersion/kind pair is not one this control plane accepts (an unknown kind, or a
    /// known kind in a version that is not served).
    #[error("unknown kind {kind} in apiVersion {api_version}")]
    UnknownKind {
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
    },
}

/// The Istio API groups whose kinds this control plane knows completely.
pub const KNOWN_GROUPS: &[&str] = &[
    NETWORKING_GROUP,
    CONFIG_GROUP,
    RBAC_GROUP,
    SECURITY_GROUP,
    AUTHENTICATION_GROUP,
];

/// Istio's kinds in [`KNOWN_GROUPS`] that this control plane does not type: accepted and kept
/// as written ([`Kind::Other`]), not acted on.
const UNTYPED_ISTIO_KINDS: &[(&str, &str)] = &[
    (NETWORKING_GROUP, "EnvoyFilter"),
    (NETWORKING_GROUP, "WorkloadGroup"),
    (NETWORKING_GROUP, "ProxyConfig"),
    // Mixer adapters and templates of Istio 1.0-1.4 without an in-process implementation here.
    (CONFIG_GROUP, "bypass"),
    (CONFIG_GROUP, "circonus"),
    (CONFIG_GROUP, "cloudwatch"),
    (CONFIG_GROUP, "dogstatsd"),
    (CONFIG_GROUP, "fluentd"),
    (CONFIG_GROUP, "rbac"),
    (CONFIG_GROUP, "servicecontrol"),
    (CONFIG_GROUP, "servicecontrolreport"),
    (CONFIG_GROUP, "signalfx"),
    (CONFIG_GROUP, "solarwinds"),
    (CONFIG_GROUP, "stackdriver"),
    (CONFIG_GROUP, "statsd"),
    (CONFIG_GROUP, "zipkin"),
    (CONFIG_GROUP, "apikey"),
    (CONFIG_GROUP, "authorization"),
    (CONFIG_GROUP, "checknothing"),
    (CONFIG_GROUP, "edge"),
    (CONFIG_GROUP, "kubernetes"),
    (CONFIG_GROUP, "listentry"),
    (CONFIG_GROUP, "logentry"),
    (CONFIG_GROUP, "metric"),
    (CONFIG_GROUP, "quota"),
    (CONFIG_GROUP, "reportnothing"),
    (CONFIG_GROUP, "tracespan"),
];

/// The kind of `group` (else of any group) whose name is nearest to `kind`, ignoring case,
/// when it is near enough to be a misspelling of it.
fn nearest_kind(group: &str, kind: &str) -> Option<String> {
    let wanted = kind.to_ascii_lowercase();
    let score = |k: &Kind| edit_distance(&wanted, &k.name().to_ascii_lowercase());
    let limit = (wanted.chars().count() / 3).max(2);
    let best_in = |filter: &dyn Fn(&Kind) -> bool| {
        ALL_KINDS
            .iter()
            .filter(|k| filter(k))
            .map(|k| (score(k), k))
            .filter(|(d, _)| *d <= limit)
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k)
    };
    best_in(&|k| k.group() == group)
        .map(|k| k.name().to_string())
        .or_else(|| {
            best_in(&|k| !k.group().is_empty())
                .map(|k| format!("{} of {}", k.name(), k.api_version().unwrap_or_default()))
        })
}

/// Levenshtein distance between two strings (by chars).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

// === impl Kind ===

static ALL_KINDS: LazyLock<Vec<Kind>> = LazyLock::new(|| {
    let mut all = vec![
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::WorkloadEntry,
        Kind::Rule,
        Kind::Handler,
        Kind::Instance,
        Kind::AttributeManifest,
        Kind::Adapter,
        Kind::Template,
    ];
    all.extend(
        CompiledAdapter::ALL
            .iter()
            .map(|a| Kind::CompiledAdapter(*a)),
    );
    all.extend(
        CompiledTemplate::ALL
            .iter()
            .map(|t| Kind::CompiledTemplate(*t)),
    );
    all.extend([
        Kind::QuotaSpec,
        Kind::QuotaSpecBinding,
        Kind::HttpApiSpec,
        Kind::HttpApiSpecBinding,
        Kind::RouteRule,
        Kind::DestinationPolicy,
        Kind::EgressRule,
        Kind::ServiceRole,
        Kind::ServiceRoleBinding,
        Kind::RbacConfig,
        Kind::ClusterRbacConfig,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::AuthenticationPolicy,
        Kind::MeshPolicy,
        Kind::ServiceAccount,
    ]);
    all
});

impl Kind {
    /// Every typed kind: all variants but [`Kind::Other`], including [`Kind::ServiceAccount`]
    /// (a core kind, watched but not defined by a CRD of ours), grouped by API group.
    pub fn all() -> Vec<Kind> {
        ALL_KINDS.clone()
    }

    /// Resolves an `apiVersion` and `kind` pair, as written in a document.
    ///
    /// A typed kind is accepted only in a version it is served in (see [`Kind::versions`]);
    /// other kinds of `*.istio.io` groups resolve to [`Kind::Other`] whatever the version.
    pub fn from_api_version(api_version: &str, kind: &str) -> Result<Self, SpecError> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let unknown = || SpecError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        };
        if let Some(known) = ALL_KINDS
            .iter()
            .find(|k| k.group() == group && k.name() == kind)
        {
            return if known.versions().contains(&version) {
                Ok(known.clone())
            } else {
                Err(unknown())
            };
        }
        // The groups this control plane serves are closed: a kind they do not have is a
        // mistake (a misspelling, or a kind from another release), never a kind to keep.
        if KNOWN_GROUPS.contains(&group) && !UNTYPED_ISTIO_KINDS.contains(&(group, kind)) {
            return Err(unknown());
        }
        if group.ends_with(".istio.io") && !kind.is_empty() && !version.is_empty() {
            return Ok(Kind::Other {
                group: group.to_string(),
                kind: kind.to_string(),
            });
        }
        Err(unknown())
    }

    /// Why a document of `apiVersion`/`kind` is refused, when it is in one of the Istio API
    /// groups this control plane serves (a misspelled kind, or a version the kind is not
    /// served in), e.g. `kind VirtualServis is not served in networking.istio.io/v1 (did
    /// you mean VirtualService?)`; `None` when the pair is accepted or belongs to another
    /// group (a Deployment, a Service: skipped by config loading, not refused).
    pub fn refusal(api_version: &str, kind: &str) -> Option<String> {
        if Kind::from_api_version(api_version, kind).is_ok() {
            return None;
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if !KNOWN_GROUPS.contains(&group) {
            return None;
        }
        if let Some(known) = ALL_KINDS
            .iter()
            .find(|k| k.group() == group && k.name() == kind)
        {
            return Some(format!(
                "{kind} is not served in version {version:?} of {group} (served: {})",
                known.versions().join(", ")
            ));
        }
        let mut message = format!("kind {kind} is not served in {api_version}");
        if let Some(near) = nearest_kind(group, kind) {
            message.push_str(&format!(" (did you mean {near}?)"));
        } else {
            message.push_str(&format!(
                " (its kinds: {})",
                ALL_KINDS
                    .iter()
                    .filter(|k| k.group() == group)
                    .map(Kind::name)
                    .take(12)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Some(message)
    }

    /// The API group of this kind (empty for the core group).
    pub fn group(&self) -> &str {
        match self {
            Kind::ServiceEntry
            | Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::Sidecar
            | Kind::WorkloadEntry => NETWORKING_GROUP,
            Kind::Rule
            | Kind::Handler
            | Kind::Instance
            | Kind::AttributeManifest
            | Kind::Adapter
            | Kind::Template
            | Kind::CompiledAdapter(_)
            | Kind::CompiledTemplate(_)
            | Kind::QuotaSpec
            | Kind::QuotaSpecBinding
            | Kind::HttpApiSpec
            | Kind::HttpApiSpecBinding
            | Kind::RouteRule
            | Kind::DestinationPolicy
            | Kind::EgressRule => CONFIG_GROUP,
            Kind::ServiceRole
            | Kind::ServiceRoleBinding
            | Kind::RbacConfig
            | Kind::ClusterRbacConfig => RBAC_GROUP,
            Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication => {
                SECURITY_GROUP
            }
            Kind::AuthenticationPolicy | Kind::MeshPolicy => AUTHENTICATION_GROUP,
            Kind::ServiceAccount => "",
            Kind::Other { group, .. } => group,
        }
    }

    /// The kind name, as written in documents.
    pub fn name(&self) -> &str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Rule => "rule",
            Kind::Handler => "handler",
            Kind::Instance => "instance",
            Kind::AttributeManifest => "attributemanifest",
            Kind::Adapter => "adapter",
            Kind::Template => "template",
            Kind::CompiledAdapter(a) => a.name(),
            Kind::CompiledTemplate(t) => t.name(),
            Kind::QuotaSpec => "QuotaSpec",
            Kind::QuotaSpecBinding => "QuotaSpecBinding",
            Kind::HttpApiSpec => "HTTPAPISpec",
            Kind::HttpApiSpecBinding => "HTTPAPISpecBinding",
            Kind::RouteRule => "RouteRule",
            Kind::DestinationPolicy => "DestinationPolicy",
            Kind::EgressRule => "EgressRule",
            Kind::ServiceRole => "ServiceRole",
            Kind::ServiceRoleBinding => "ServiceRoleBinding",
            Kind::RbacConfig => "RbacConfig",
            Kind::ClusterRbacConfig => "ClusterRbacConfig",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::AuthenticationPolicy => "Policy",
            Kind::MeshPolicy => "MeshPolicy",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Other { kind, .. } => kind,
        }
    }

    /// The resource name in URLs and in the CRD's name: the lower-case kind name in the plural,
    /// e.g. `virtualservices`, `rules`, `prometheuses`, `policies`, `serviceaccounts`.
    ///
    /// For [`Kind::Other`] this follows the same rule as Istio's CRDs, which holds for every
    /// Istio kind.
    pub fn plural(&self) -> String {
        pluralize(&self.name().to_ascii_lowercase())
    }

    /// The versions this kind is served in; the first is the storage version and the one this
    /// control plane writes. Empty for [`Kind::Other`], whose versions are not known.
    ///
    /// `networking.istio.io` serves v1alpha3, v1beta1 and v1 with one schema, stored as v1alpha3
    /// as Istio does; `security.istio.io` serves v1beta1 and v1, stored as v1beta1.
    pub fn versions(&self) -> &'static [&'static str] {
        match self.group() {
            NETWORKING_GROUP => NETWORKING_VERSIONS,
            CONFIG_GROUP => CONFIG_VERSIONS,
            RBAC_GROUP => RBAC_VERSIONS,
            SECURITY_GROUP => SECURITY_VERSIONS,
            AUTHENTICATION_GROUP => AUTHENTICATION_VERSIONS,
            "" if *self == Kind::ServiceAccount => CORE_VERSIONS,
            _ => &[],
        }
    }

    /// The `apiVersion` this control plane writes the kind in (`group/storage-version`, or the
    /// bare version for core kinds); `None` for [`Kind::Other`].
    pub fn api_version(&self) -> Option<String> {
        let version = self.versions().first()?;
        Some(match self.group() {
            "" => version.to_string(),
            group => format!("{group}/{version}"),
        })
    }

    /// Whether objects of this kind live in a namespace. Only ClusterRbacConfig and MeshPolicy
    /// are cluster-scoped; [`Kind::Other`] is assumed namespaced, as every other Istio kind is.
    pub fn namespaced(&self) -> bool {
        !matches!(self, Kind::ClusterRbacConfig | Kind::MeshPolicy)
    }
}

/// Istio's plural of a lower-case kind name: `-es` after `s`, `ch` and `sh`, `-ies` for a
/// consonant followed by `y`, `-s` otherwise (`signalfx` becomes `signalfxs`).
fn pluralize(singular: &str) -> String {
    if singular.ends_with('s') || singular.ends_with("ch") || singular.ends_with("sh") {
        return format!("{singular}es");
    }
    if let Some(stem) = singular.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    format!("{singular}s")
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.group() {
            "" => f.write_str(self.name()),
            g => write!(f, "{}.{}", self.name(), g),
        }
    }
}

// === impl Spec ===

impl Spec {
    /// The spec in Istio's JSON form (fields in camelCase, unset fields left out), as
    /// [`parse_spec`] reads it back. `ServiceAccount` specs are empty objects.
    pub fn to_json(&self) -> serde_json::Value {
        fn json<T: serde::Serialize>(spec: &T) -> serde_json::Value {
            serde_json::to_value(spec).expect("specs have string keys and serialize to JSON")
        }
        match self {
            Spec::ServiceEntry(s) => json(s),
            Spec::VirtualService(s) => json(s),
            Spec::DestinationRule(s) => json(s),
            Spec::Gateway(s) => json(s),
            Spec::Sidecar(s) => json(s),
            Spec::WorkloadEntry(s) => json(s),
            Spec::Rule(s) => json(s),
            Spec::Handler(s) => json(s),
            Spec::Instance(s) => json(s),
            Spec::AttributeManifest(s) => json(s),
            Spec::Adapter(s) => json(s),
            Spec::Template(s) => json(s),
            Spec::CompiledAdapter(_, s) | Spec::CompiledTemplate(_, s) => json(s),
            Spec::QuotaSpec(s) => json(s),
            Spec::QuotaSpecBinding(s) => json(s),
            Spec::HttpApiSpec(s) => json(s),
            Spec::HttpApiSpecBinding(s) => json(s),
            Spec::RouteRule(s) => json(s),
            Spec::DestinationPolicy(s) => json(s),
            Spec::EgressRule(s) => json(s),
            Spec::ServiceRole(s) => json(s),
            Spec::ServiceRoleBinding(s) => json(s),
            Spec::RbacConfig(s) | Spec::ClusterRbacConfig(s) => json(s),
            Spec::AuthorizationPolicy(s) => json(s),
            Spec::PeerAuthentication(s) => json(s),
            Spec::RequestAuthentication(s) => json(s),
            Spec::AuthenticationPolicy(s) | Spec::MeshPolicy(s) => json(s),
            Spec::ServiceAccount => serde_json::Value::Object(Default::default()),
            Spec::Other(v) => v.clone(),
        }
    }
}

/// Parses the `spec` of a document of the given kind into its typed form.
///
/// A missing spec is passed as `Value::Null` and treated as an empty object. As in Istio, a
/// field whose value is null is treated as absent (except a bare `mtls:` peer method of an
/// authentication policy, which Istio reads as mutual TLS with default settings). Unknown
/// fields and unknown enum values are refused, with the path of the field in the error.
pub fn parse_spec(kind: &Kind, spec: serde_json::Value) -> Result<Spec, SpecError> {
    let mut spec = match spec {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        v => v,
    };
    match kind {
        Kind::ServiceAccount => return Ok(Spec::ServiceAccount),
        Kind::Other { .. } => return Ok(Spec::Other(spec)),
        Kind::AuthenticationPolicy | Kind::MeshPolicy => authentication::fill_bare_mtls(&mut spec),
        _ => {}
    }
    strip_nulls(&mut spec);
    Ok(match kind {
        Kind::ServiceEntry => Spec::ServiceEntry(typed(spec)?),
        Kind::VirtualService => Spec::VirtualService(typed(spec)?),
        Kind::DestinationRule => Spec::DestinationRule(typed(spec)?),
        Kind::Gateway => Spec::Gateway(typed(spec)?),
        Kind::Sidecar => Spec::Sidecar(typed(spec)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(spec)?),
        Kind::Rule => Spec::Rule(typed(spec)?),
        Kind::Handler => Spec::Handler(typed(spec)?),
        Kind::Instance => Spec::Instance(typed(spec)?),
        Kind::AttributeManifest => Spec::AttributeManifest(typed(spec)?),
        Kind::Adapter => Spec::Adapter(typed(spec)?),
        Kind::Template => Spec::Template(typed(spec)?),
        Kind::CompiledAdapter(a) => Spec::CompiledAdapter(*a, typed(spec)?),
        Kind::CompiledTemplate(t) => Spec::CompiledTemplate(*t, typed(spec)?),
        Kind::QuotaSpec => Spec::QuotaSpec(typed(spec)?),
        Kind::QuotaSpecBinding => Spec::QuotaSpecBinding(typed(spec)?),
        Kind::HttpApiSpec => Spec::HttpApiSpec(typed(spec)?),
        Kind::HttpApiSpecBinding => Spec::HttpApiSpecBinding(typed(spec)?),
        Kind::RouteRule => Spec::RouteRule(typed(spec)?),
        Kind::DestinationPolicy => Spec::DestinationPolicy(typed(spec)?),
        Kind::EgressRule => Spec::EgressRule(typed(spec)?),
        Kind::ServiceRole => Spec::ServiceRole(typed(spec)?),
        Kind::ServiceRoleBinding => Spec::ServiceRoleBinding(typed(spec)?),
        Kind::RbacConfig => Spec::RbacConfig(typed(spec)?),
        Kind::ClusterRbacConfig => Spec::ClusterRbacConfig(typed(spec)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(typed(spec)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(typed(spec)?),
        Kind::RequestAuthentication => Spec::RequestAuthentication(typed(spec)?),
        Kind::AuthenticationPolicy => Spec::AuthenticationPolicy(typed(spec)?),
        Kind::MeshPolicy => Spec::MeshPolicy(typed(spec)?),
        Kind::ServiceAccount | Kind::Other { .. } => unreachable!("handled above"),
    })
}

/// Removes object entries whose value is null, at every depth.
fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn typed<T: DeserializeOwned>(spec: serde_json::Value) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            "spec".to_string()
        } else if inner.starts_with('[') {
            format!("spec{inner}")
        } else {
            format!("spec.{inner}")
        };
        SpecError::Invalid {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invalid(kind: &Kind, spec: serde_json::Value) -> (String, String) {
        match parse_spec(kind, spec).unwrap_err() {
            SpecError::Invalid { path, message } => (path, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn resolves_kinds() {
        assert_eq!(
            Kind::from_api_version("networking.istio.io/v1alpha3", "ServiceEntry").unwrap(),
            Kind::ServiceEntry
        );
        assert_eq!(
            Kind::from_api_version("networking.istio.io/v1", "VirtualService").unwrap(),
            Kind::VirtualService
        );
        assert_eq!(
            Kind::from_api_version("v1", "ServiceAccount").unwrap(),
            Kind::ServiceAccount
        );
        assert_eq!(
            Kind::from_api_version("config.istio.io/v1alpha2", "rule").unwrap(),
            Kind::Rule
        );
        assert_eq!(
            Kind::from_api_version("config.istio.io/v1alpha2", "prometheus").unwrap(),
            Kind::CompiledAdapter(CompiledAdapter::Prometheus)
        );
        assert_eq!(
            Kind::from_api_version("config.istio.io/v1alpha2", "metric").unwrap(),
            Kind::CompiledTemplate(CompiledTemplate::Metric)
        );
        assert_eq!(
            Kind::from_api_version("authentication.istio.io/v1alpha1", "Policy").unwrap(),
            Kind::AuthenticationPolicy
        );
        assert!(matches!(
            Kind::from_api_version("networking.istio.io/v1alpha3", "EnvoyFilter").unwrap(),
            Kind::Other { .. }
        ));
        assert!(Kind::from_api_version("apps/v1", "Deployment").is_err());
        assert!(Kind::from_api_version("v1", "Service").is_err());
        // A known kind in a version that is not served.
        assert!(Kind::from_api_version("networking.istio.io/v2", "VirtualService").is_err());
        assert!(Kind::from_api_version("rbac.istio.io/v1", "ServiceRole").is_err());
        // Kind names are case-sensitive, as in Kubernetes: `Rule` is no kind of
        // config.istio.io (refused, with `rule` suggested).
        assert!(Kind::from_api_version("config.istio.io/v1alpha2", "Rule").is_err());
        assert!(
            Kind::refusal("config.istio.io/v1alpha2", "Rule")
                .unwrap()
                .contains("did you mean rule?")
        );
    }

    #[test]
    fn every_kind_resolves_in_every_served_version() {
        for kind in Kind::all() {
            assert!(!kind.versions().is_empty(), "{kind} has no versions");
            for version in kind.versions() {
                let api_version = match kind.group() {
                    "" => version.to_string(),
                    g => format!("{g}/{version}"),
                };
                assert_eq!(
                    Kind::from_api_version(&api_version, kind.name()).unwrap(),
                    kind,
                    "{api_version} {}",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn all_lists_each_kind_once() {
        let all = Kind::all();
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert!(all.contains(&Kind::ServiceAccount));
        assert!(!all.iter().any(|k| matches!(k, Kind::Other { .. })));
        // (group, name) pairs are unique too.
        let mut names: Vec<_> = all.iter().map(|k| (k.group(), k.name())).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn plurals_follow_istio() {
        let cases = [
            (Kind::VirtualService, "virtualservices"),
            (Kind::ServiceEntry, "serviceentries"),
            (Kind::Gateway, "gateways"),
            (Kind::WorkloadEntry, "workloadentries"),
            (Kind::Rule, "rules"),
            (Kind::Handler, "handlers"),
            (Kind::AttributeManifest, "attributemanifests"),
            (Kind::HttpApiSpec, "httpapispecs"),
            (Kind::DestinationPolicy, "destinationpolicies"),
            (Kind::AuthenticationPolicy, "policies"),
            (Kind::MeshPolicy, "meshpolicies"),
            (Kind::AuthorizationPolicy, "authorizationpolicies"),
            (Kind::ServiceAccount, "serviceaccounts"),
            (
                Kind::CompiledAdapter(CompiledAdapter::Prometheus),
                "prometheuses",
            ),
            (
                Kind::CompiledAdapter(CompiledAdapter::Signalfx),
                "signalfxs",
            ),
            (
                Kind::CompiledAdapter(CompiledAdapter::Solarwinds),
                "solarwindses",
            ),
            (
                Kind::CompiledAdapter(CompiledAdapter::Cloudwatch),
                "cloudwatches",
            ),
            (Kind::CompiledAdapter(CompiledAdapter::Bypass), "bypasses"),
            (
                Kind::CompiledTemplate(CompiledTemplate::Kubernetes),
                "kuberneteses",
            ),
            (
                Kind::CompiledTemplate(CompiledTemplate::Logentry),
                "logentries",
            ),
        ];
        for (kind, plural) in cases {
            assert_eq!(kind.plural(), plural, "{kind}");
        }
        let other = Kind::Other {
            group: "telemetry.istio.io".into(),
            kind: "Telemetry".into(),
        };
        assert_eq!(other.plural(), "telemetries");
    }

    #[test]
    fn versions_and_scope() {
        assert_eq!(
            Kind::VirtualService.versions(),
            &["v1alpha3", "v1beta1", "v1"]
        );
        assert_eq!(Kind::Rule.versions(), &["v1alpha2"]);
        assert_eq!(Kind::ServiceRole.versions(), &["v1alpha1"]);
        assert_eq!(Kind::AuthorizationPolicy.versions(), &["v1beta1", "v1"]);
        assert_eq!(Kind::ServiceAccount.versions(), &["v1"]);
        assert_eq!(
            Kind::VirtualService.api_version().as_deref(),
            Some("networking.istio.io/v1alpha3")
        );
        assert_eq!(Kind::ServiceAccount.api_version().as_deref(), Some("v1"));
        assert!(Kind::VirtualService.namespaced());
        assert!(!Kind::MeshPolicy.namespaced());
        assert!(!Kind::ClusterRbacConfig.namespaced());
        assert_eq!(Kind::Rule.to_string(), "rule.config.istio.io");
        assert_eq!(Kind::ServiceAccount.to_string(), "ServiceAccount");
    }

    #[test]
    fn names_the_bad_field() {
        let spec = json!({"hosts": ["a"], "ports": [{"number": "x", "name": "http"}]});
        assert_eq!(invalid(&Kind::ServiceEntry, spec).0, "spec.ports[0].number");

        let spec = json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": -5}]}]});
        assert_eq!(
            invalid(&Kind::VirtualService, spec).0,
            "spec.http[0].route[0].weight"
        );
    }

    #[test]
    fn refuses_unknown_fields_with_their_path() {
        let spec = json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r", "subnet": "v1"}}]}]});
        let (path, message) = invalid(&Kind::VirtualService, spec);
        assert_eq!(path, "spec.http[0].route[0].destination.subnet");
        assert!(message.contains("unknown field `subnet`"), "{message}");

        let (path, _) = invalid(
            &Kind::DestinationRule,
            json!({"host": "h", "trafficPolicy": {"tls": {"mod": "SIMPLE"}}}),
        );
        assert_eq!(path, "spec.trafficPolicy.tls.mod");

        let (path, _) = invalid(
            &Kind::Rule,
            json!({"actions": [{"handler": "h", "instance": ["i"]}]}),
        );
        assert_eq!(path, "spec.actions[0].instance");

        let (path, _) = invalid(&Kind::Gateway, json!({"servers": [], "selectors": {}}));
        assert_eq!(path, "spec.selectors");
    }

    #[test]
    fn names_bad_enum_values() {
        let spec = json!({"host": "h", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL_TLS"}}});
        let (path, message) = invalid(&Kind::DestinationRule, spec);
        assert_eq!(path, "spec.trafficPolicy.tls.mode");
        assert!(message.contains("ISTIO_MUTUAL_TLS"), "{message}");
        assert!(message.contains("ISTIO_MUTUAL"), "{message}");

        let (path, _) = invalid(&Kind::RbacConfig, json!({"mode": "on"}));
        assert_eq!(path, "spec.mode");

        let spec = json!({"attributes": {"request.size": {"valueType": "INT32"}}});
        let (path, _) = invalid(&Kind::AttributeManifest, spec);
        assert_eq!(path, "spec.attributes.request.size.valueType");
    }

    #[test]
    fn names_bad_durations_and_string_matches() {
        let spec = json!({"hosts": ["r"], "http": [{"timeout": "10 seconds"}]});
        let (path, message) = invalid(&Kind::VirtualService, spec);
        assert_eq!(path, "spec.http[0].timeout");
        assert!(message.contains("invalid duration"), "{message}");

        let spec = json!({"hosts": ["r"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}]}]});
        let (path, _) = invalid(&Kind::VirtualService, spec);
        assert_eq!(path, "spec.http[0].match[0].uri");
    }

    #[test]
    fn missing_required_fields_are_named() {
        let (path, message) = invalid(
            &Kind::VirtualService,
            json!({"http": [{"route": [{"weight": 10}]}]}),
        );
        assert_eq!(path, "spec.http[0].route[0]");
        assert!(message.contains("destination"), "{message}");
    }

    #[test]
    fn null_and_missing_specs() {
        assert_eq!(
            parse_spec(
                &Kind::CompiledTemplate(CompiledTemplate::Checknothing),
                serde_json::Value::Null
            )
            .unwrap(),
            Spec::CompiledTemplate(CompiledTemplate::Checknothing, Struct::default())
        );
        // `exportTo:` with nothing after it is a null, read as absent.
        let spec = parse_spec(
            &Kind::VirtualService,
            json!({"hosts": ["a"], "exportTo": null}),
        )
        .unwrap();
        assert!(matches!(spec, Spec::VirtualService(vs) if vs.export_to.is_empty()));
        // A spec that is not an object is refused at `spec`.
        assert_eq!(invalid(&Kind::Gateway, json!("gw")).0, "spec");
        assert_eq!(
            invalid(&Kind::CompiledAdapter(CompiledAdapter::Denier), json!([1])).0,
            "spec"
        );
    }

    #[test]
    fn bare_mtls_peer_survives_null_stripping() {
        let spec = parse_spec(&Kind::MeshPolicy, json!({"peers": [{"mtls": null}]})).unwrap();
        let Spec::MeshPolicy(policy) = spec else {
            panic!("wrong spec")
        };
        assert_eq!(
            policy.peers[0].mtls,
            Some(authentication::MutualTls::default())
        );
    }

    #[test]
    fn other_kinds_keep_their_spec() {
        let kind = Kind::from_api_version("networking.istio.io/v1alpha3", "EnvoyFilter").unwrap();
        let spec = json!({"filters": [{"anything": null}]});
        assert_eq!(parse_spec(&kind, spec.clone()).unwrap(), Spec::Other(spec));
    }

    #[test]
    fn misspelled_kinds_of_known_groups_are_refused_with_a_suggestion() {
        assert!(Kind::from_api_version("networking.istio.io/v1", "VirtualServis").is_err());
        let why = Kind::refusal("networking.istio.io/v1", "VirtualServis").unwrap();
        assert!(why.contains("did you mean VirtualService?"), "{why}");
        let why = Kind::refusal("networking.istio.io/v2", "VirtualService").unwrap();
        assert!(why.contains("v1alpha3, v1beta1, v1"), "{why}");
        let why = Kind::refusal("config.istio.io/v1alpha2", "rul").unwrap();
        assert!(why.contains("did you mean rule?"), "{why}");
        // Foreign groups are not ours to judge; other istio.io groups are kept as written.
        assert_eq!(Kind::refusal("apps/v1", "Deployment"), None);
        assert_eq!(Kind::refusal("v1", "Service"), None);
        assert!(matches!(
            Kind::from_api_version("telemetry.istio.io/v1", "Telemetry"),
            Ok(Kind::Other { .. })
        ));
        assert_eq!(Kind::refusal("networking.istio.io/v1", "Gateway"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
