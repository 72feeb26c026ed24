//! Request authentication (JWT) and Istio 1.0's authentication policy, resolved per workload.
//!
//! - `security.istio.io` **RequestAuthentication**: every policy that applies to a workload
//!   counts, as in Istio (they add up; none overrides another): those of the root namespace
//!   and of the workload's namespace, each without `selector` or with one that picks the
//!   workload. Policies that attach through `targetRef(s)` (waypoints, Gateway API) apply to
//!   no sidecar or gateway here. A token that is present must be valid; a missing one passes
//!   (AuthorizationPolicy's `requestPrincipals` decide).
//! - `authentication.istio.io` v1alpha1 **Policy** and **MeshPolicy** (Istio 1.0): one policy
//!   applies to a workload's port, the most specific: a Policy of the service's namespace
//!   whose `targets` name the service and that port, else one naming the service without
//!   ports, else the namespace's policy named `default` (no targets), else the MeshPolicy
//!   `default`. Its `peers` give the port's mutual TLS mode when no PeerAuthentication sets
//!   one ([`AuthnIndex::legacy_mtls_mode`]); its `origins` are JWT rules, and unless
//!   `originIsOptional` they are required: a request without a valid token is refused (401),
//!   whatever `principalBinding` says (Istio 1.0's authn filter failed origin
//!   authentication the same way).
//!
//! The key sets of `jwksUri`s come from [`super::jwks`] through [`AuthnIndex::jwks`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::authentication::{self as v1alpha1, PrincipalBinding};
use mesh_proto::security::{JwtRule, RequestAuthentication};
use mesh_proto::{Kind, Spec};
use mesh_runtime::Snapshot;

use super::jwks::{DEFAULT_TIMEOUT, FAKE_JWKS, JwksSet, discovery_uri};
use super::proxy::Proxy;
use super::push_context::{Named, PushContext};
use super::registry::Registry;
use super::service::Service;

/// A JWT rule as generation needs it, whichever API it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedJwt {
    /// `ns/name` of the policy it came from (for logs).
    pub origin: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The JWKS text: inline, fetched, or [`FAKE_JWKS`] when it could not be had.
    pub jwks: String,
    /// Headers and the prefix before the token in each.
    pub from_headers: Vec<(String, String)>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub forward_original_token: bool,
    pub output_payload_to_header: Option<String>,
    /// (header, claim) pairs.
    pub output_claim_to_headers: Vec<(String, String)>,
    pub space_delimited_claims: Vec<String>,
}

/// What a workload's port requires of request credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtPolicy {
    /// Accepted issuers, in config order (root namespace, then namespace, by name).
    pub rules: Vec<ResolvedJwt>,
    /// A valid token from one of `rules` is required (Istio 1.0 `origins`).
    pub required: bool,
    /// Where `required` holds (Istio 1.0 `triggerRules`, when the policy has one origin with
    /// one trigger rule): on the other paths a token that is present must still be valid.
    pub trigger: Option<v1alpha1::TriggerRule>,
}

/// Authentication config of a push, indexed.
#[derive(Debug, Default)]
pub struct AuthnIndex {
    request_authentications: Vec<Named<RequestAuthentication>>,
    /// Istio 1.0 Policies, by namespace and name.
    policies: Vec<Named<v1alpha1::Policy>>,
    /// The MeshPolicy named `default`.
    mesh_policy: Option<Named<v1alpha1::Policy>>,
    /// The key sets of `jwksUri`s, as fetched for this push.
    pub jwks: Arc<JwksSet>,
}

// === impl AuthnIndex ===

impl AuthnIndex {
    /// Indexes the authentication kinds of `config` (no fetched keys yet).
    pub fn from_config(config: &Snapshot) -> Self {
        let mut out = AuthnIndex::default();
        for obj in config.of_kind(&Kind::RequestAuthentication) {
            if let Spec::RequestAuthentication(ra) = &obj.spec {
                out.request_authentications.push(Named {
                    namespace: obj.key.namespace.clone(),
                    name: obj.key.name.clone(),
                    spec: Arc::new(ra.clone()),
                });
            }
        }
        for obj in config.of_kind(&Kind::AuthenticationPolicy) {
            if let Spec::AuthenticationPolicy(p) = &obj.spec {
                out.policies.push(Named {
                    namespace: obj.key.namespace.clone(),
                    name: obj.key.name.clone(),
                    spec: Arc::new(p.clone()),
                });
            }
        }
        for obj in config.of_kind(&Kind::MeshPolicy) {
            if let Spec::MeshPolicy(p) = &obj.spec
                && obj.key.name == "default"
            {
                out.mesh_policy = Some(Named {
                    namespace: obj.key.namespace.clone(),
                    name: obj.key.name.clone(),
                    spec: Arc::new(p.clone()),
                });
            }
        }
        let by_key = |a: &Named<RequestAuthentication>, b: &Named<RequestAuthentication>| {
            (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
        };
        out.request_authentications.sort_by(by_key);
        out.policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// The JWT requirements of `proxy`'s inbound workload `port` (0 for a gateway, whose
    /// Istio 1.0 Policy cannot target a port).
    pub fn jwt_policy(&self, ctx: &PushContext, proxy: &Proxy, port: u32) -> JwtPolicy {
        let mut out = JwtPolicy::default();
        let root = ctx.mesh.root_namespace.as_str();
        let picks = |ra: &Named<RequestAuthentication>| {
            if ra.spec.target_ref.is_some() || !ra.spec.target_refs.is_empty() {
                return false;
            }
            (ra.namespace == root || ra.namespace == proxy.namespace)
                && ra.spec.selector.as_ref().is_none_or(|sel| {
                    sel.match_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
                })
        };
        // Root namespace first, then the workload's (each by name).
        let (in_root, in_ns): (Vec<_>, Vec<_>) = self
            .request_authentications
            .iter()
            .filter(|ra| picks(ra))
            .partition(|ra| ra.namespace == root);
        for ra in in_root.into_iter().chain(in_ns) {
            let origin = format!("{}/{}", ra.namespace, ra.name);
            for rule in &ra.spec.jwt_rules {
                let resolved = self.resolve_rule(&origin, rule);
                if !out.rules.contains(&resolved) {
                    out.rules.push(resolved);
                }
            }
        }
        if let Some(policy) = self.legacy_policy(&ctx.registry, proxy, port) {
            let origin = format!("{}/{}", policy.namespace, policy.name);
            let jwts: Vec<&v1alpha1::Jwt> = policy
                .spec
                .origins
                .iter()
                .filter_map(|o| o.jwt.as_ref())
                .collect();
            for jwt in &jwts {
                let resolved = self.resolve_legacy(&origin, jwt);
                if !out.rules.contains(&resolved) {
                    out.rules.push(resolved);
                }
            }
            if !jwts.is_empty() && policy.spec.origin_is_optional != Some(true) {
                out.trigger = match jwts.as_slice() {
                    [only] if only.trigger_rules.len() == 1 => only.trigger_rules.first().cloned(),
                    _ => {
                        if jwts.iter().any(|j| !j.trigger_rules.is_empty()) {
                            // Said once per push by `jwks_uris`; per proxy only in debug.
                            tracing::debug!(
                                policy = %origin,
                                "triggerRules are applied with one origin and one rule only: a token is required on every path"
                            );
                        }
                        None
                    }
                };
                if policy.spec.principal_binding != Some(PrincipalBinding::UseOrigin) {
                    tracing::debug!(
                        policy = %origin,
                        "origins without principalBinding USE_ORIGIN still require a token"
                    );
                }
                out.required = true;
            }
        }
        out
    }

    /// The mutual TLS mode Istio 1.0's policy gives `proxy`'s workload `port`: `peers` with
    /// `mtls` are STRICT (PERMISSIVE with `mode: PERMISSIVE` or `allowTls: true`, or when
    /// `peerIsOptional`), a policy without it is plain text. `None` when no policy applies.
    pub fn legacy_mtls_mode(
        &self,
        registry: &Registry,
        proxy: &Proxy,
        port: u32,
    ) -> Option<mesh_proto::security::MtlsMode> {
        use mesh_proto::security::MtlsMode;
        let policy = self.legacy_policy(registry, proxy, port)?;
        let Some(mtls) = policy.spec.peers.iter().find_map(|p| p.mtls.as_ref()) else {
            return Some(MtlsMode::Disable);
        };
        let permissive = mtls.mode == Some(v1alpha1::MtlsMode::Permissive)
            || mtls.allow_tls == Some(true)
            || policy.spec.peer_is_optional == Some(true);
        Some(if permissive {
            MtlsMode::Permissive
        } else {
            MtlsMode::Strict
        })
    }

    /// The Istio 1.0 policy of a workload port: targeted at the service and port, then at the
    /// service, then the namespace's `default`, then the MeshPolicy `default`.
    fn legacy_policy(
        &self,
        registry: &Registry,
        proxy: &Proxy,
        port: u32,
    ) -> Option<&Named<v1alpha1::Policy>> {
        if self.policies.is_empty() && self.mesh_policy.is_none() {
            return None;
        }
        // The services (and their ports) the workload serves on `port`.
        let served: Vec<(&Service, &super::service::Port)> = proxy
            .ips
            .iter()
            .flat_map(|ip| registry.instances_at(ip))
            .filter(|(_, _, ep)| port == 0 || ep.port == port)
            .map(|(svc, p, _)| (svc.as_ref(), p))
            .collect();
        let short = |svc: &Service| svc.hostname.split('.').next().unwrap_or("").to_string();
        let mut by_service = None;
        for policy in &self.policies {
            for target in &policy.spec.targets {
                for (svc, svc_port) in &served {
                    if svc.namespace != policy.namespace || short(svc) != target.name {
                        continue;
                    }
                    if target.ports.is_empty() {
                        by_service = by_service.or(Some(policy));
                    } else if target.ports.iter().any(|p| {
                        p.number == Some(svc_port.number)
                            || p.name.as_deref() == Some(svc_port.name.as_str())
                    }) {
                        return Some(policy);
                    }
                }
            }
        }
        by_service
            .or_else(|| {
                self.policies.iter().find(|p| {
                    p.namespace == proxy.namespace
                        && p.name == "default"
                        && p.spec.targets.is_empty()
                })
            })
            .or(self.mesh_policy.as_ref())
    }

    fn keys_for(
        &self,
        origin: &str,
        issuer: &str,
        jwks: Option<&str>,
        uri: Option<&str>,
    ) -> String {
        if let Some(inline) = jwks {
            return inline.to_string();
        }
        let Some(uri) = uri
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .or_else(|| discovery_uri(issuer))
        else {
            tracing::debug!(%origin, %issuer, "no key source: the provider refuses every token");
            return FAKE_JWKS.to_string();
        };
        let uri = uri.as_str();
        match self.jwks.get(uri) {
            Some(keys) => keys.to_string(),
            // The resolver said so when the fetch failed; per proxy only in debug.
            None => {
                tracing::debug!(%origin, %issuer, %uri, "JWKS never fetched: the provider refuses every token");
                FAKE_JWKS.to_string()
            }
        }
    }

    fn resolve_rule(&self, origin: &str, rule: &JwtRule) -> ResolvedJwt {
        ResolvedJwt {
            origin: origin.to_string(),
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            jwks: self.keys_for(
                origin,
                &rule.issuer,
                rule.jwks.as_deref(),
                rule.jwks_uri.as_deref(),
            ),
            from_headers: rule
                .from_headers
                .iter()
                .map(|h| (h.name.clone(), h.prefix.clone().unwrap_or_default()))
                .collect(),
            from_params: rule.from_params.clone(),
            from_cookies: rule.from_cookies.clone(),
            forward_original_token: rule.forward_original_token == Some(true),
            output_payload_to_header: rule.output_payload_to_header.clone(),
            output_claim_to_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|c| (c.header.clone(), c.claim.clone()))
                .collect(),
            space_delimited_claims: rule.space_delimited_claims.clone(),
        }
    }

    fn resolve_legacy(&self, origin: &str, jwt: &v1alpha1::Jwt) -> ResolvedJwt {
        ResolvedJwt {
            origin: origin.to_string(),
            issuer: jwt.issuer.clone(),
            audiences: jwt.audiences.clone(),
            jwks: self.keys_for(
                origin,
                &jwt.issuer,
                jwt.jwks.as_deref(),
                jwt.jwks_uri.as_deref(),
            ),
            // Istio 1.0 read the whole header value as the token.
            from_headers: jwt
                .jwt_headers
                .iter()
                .map(|h| (h.clone(), String::new()))
                .collect(),
            from_params: jwt.jwt_params.clone(),
            from_cookies: Vec::new(),
            // Istio 1.0 forwarded the token to the workload.
            forward_original_token: true,
            output_payload_to_header: None,
            output_claim_to_headers: Vec::new(),
            space_delimited_claims: Vec::new(),
        }
    }
}

/// Every `jwksUri` the config names (RequestAuthentication rules and Istio 1.0 origins
/// without inline `jwks`; the issuer's discovery document for those without either), with
/// the shortest fetch timeout a rule asks for. Called once per push, it also logs what the
/// config asks that cannot be done (once per push rather than once per proxy).
pub fn jwks_uris(config: &Snapshot) -> BTreeMap<String, Duration> {
    let mut out: BTreeMap<String, Duration> = BTreeMap::new();
    let mut add = |issuer: &str,
                   uri: &Option<String>,
                   inline: &Option<String>,
                   timeout: Option<Duration>| {
        if inline.is_some() {
            return;
        }
        let Some(uri) = uri
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| discovery_uri(issuer))
        else {
            tracing::warn!(
                %issuer,
                "no jwks or jwksUri, and the issuer is no URL to discover them at: its tokens are refused"
            );
            return;
        };
        let t = timeout.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TIMEOUT);
        out.entry(uri)
            .and_modify(|old| *old = (*old).min(t))
            .or_insert(t);
    };
    for obj in config.of_kind(&Kind::RequestAuthentication) {
        if let Spec::RequestAuthentication(ra) = &obj.spec {
            for r in &ra.jwt_rules {
                add(
                    &r.issuer,
                    &r.jwks_uri,
                    &r.jwks,
                    r.timeout.as_ref().map(|d| d.0),
                );
            }
        }
    }
    for kind in [Kind::AuthenticationPolicy, Kind::MeshPolicy] {
        for obj in config.of_kind(&kind) {
            let (Spec::AuthenticationPolicy(p) | Spec::MeshPolicy(p)) = &obj.spec else {
                continue;
            };
            let jwts: Vec<_> = p.origins.iter().filter_map(|o| o.jwt.as_ref()).collect();
            for jwt in &jwts {
                add(&jwt.issuer, &jwt.jwks_uri, &jwt.jwks, None);
            }
            let triggered = jwts.iter().filter(|j| !j.trigger_rules.is_empty()).count();
            if triggered > 0 && !(jwts.len() == 1 && jwts[0].trigger_rules.len() == 1) {
                tracing::warn!(
                    policy = %format!("{}/{}", obj.key.namespace, obj.key.name),
                    "triggerRules are applied with one origin and one rule only: a token is required on every path"
                );
            }
        }
    }
    out
}

impl PushContext {
    /// This context with the key sets fetched for it.
    pub fn with_jwks(mut self, jwks: Arc<JwksSet>) -> Self {
        self.authn.jwks = jwks;
        self
    }
}
