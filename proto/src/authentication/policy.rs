//! `Policy` and `MeshPolicy` (Istio 1.0–1.5): how workloads authenticate their peers (mutual TLS)
//! and the origin of requests (JWT), and which identity becomes the request principal.
//! Replaced by `security.istio.io` PeerAuthentication and RequestAuthentication.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

use crate::networking::PortSelector;

/// `authentication.istio.io/Policy` spec; a MeshPolicy has the same fields.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "authentication.istio.io",
    version = "v1alpha1",
    kind = "Policy",
    root = "PolicyResource",
    plural = "policies",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "authentication-istio-io",
    doc = "Authentication requirements of services in a namespace."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Services the policy applies to (all in the namespace when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetSelector>,
    /// Accepted peer authentication methods; the first that succeeds wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerAuthenticationMethod>,
    /// Accept requests whose peer is not authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_is_optional: Option<bool>,
    /// Accepted origin (request) authentication methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<OriginAuthenticationMethod>,
    /// Accept requests whose origin is not authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_is_optional: Option<bool>,
    /// Which identity becomes the request principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_binding: Option<PrincipalBinding>,
}

/// `authentication.istio.io/MeshPolicy` spec (cluster-scoped, one named `default`): the same
/// fields as a Policy, for the whole mesh.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "authentication.istio.io",
    version = "v1alpha1",
    kind = "MeshPolicy",
    root = "MeshPolicyResource",
    plural = "meshpolicies",
    derive = "PartialEq",
    category = "istio-io",
    category = "authentication-istio-io",
    doc = "Authentication requirements of the whole mesh."
)]
#[serde(transparent)]
pub struct MeshPolicy(pub Policy);

/// A service a policy applies to, optionally limited to some ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSelector {
    /// Short name of the service.
    pub name: String,
    /// Labels selecting the workloads (Istio 1.1–1.4).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Ports of the service (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSelector>,
}

/// A peer authentication method: mutual TLS, or (deprecated) a JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationMethod {
    /// Mutual TLS. A bare `mtls:` (null) means mutual TLS with default settings, as Istio read it.
    #[serde(
        default,
        deserialize_with = "bare_mtls",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtls: Option<MutualTls>,
    /// A JWT as peer credential (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

fn bare_mtls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MutualTls>, D::Error> {
    Ok(Some(
        Option::<MutualTls>::deserialize(d)?.unwrap_or_default(),
    ))
}

/// Turns bare `mtls:` entries of a Policy spec's `peers` into empty objects, so that treating
/// null fields as absent elsewhere does not lose them.
pub(crate) fn fill_bare_mtls(spec: &mut serde_json::Value) {
    let Some(peers) = spec.get_mut("peers").and_then(|p| p.as_array_mut()) else {
        return;
    };
    for peer in peers {
        if let Some(mtls) = peer.get_mut("mtls")
            && mtls.is_null()
        {
            *mtls = serde_json::Value::Object(Default::default());
        }
    }
}

/// Mutual TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// Accept plain text too (deprecated; see `mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_tls: Option<bool>,
    /// Whether plain text is accepted too (STRICT when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// Whether plain text is accepted besides mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Mutual TLS only.
    Strict,
    /// Both.
    Permissive,
}

/// An origin authentication method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OriginAuthenticationMethod {
    /// The JWT accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

/// An accepted JWT issuer and how its tokens are read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Jwt {
    /// Issuer (`iss` claim).
    #[serde(default)]
    pub issuer: String,
    /// Accepted audiences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// URL of the issuer's public keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The issuer's public keys, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_headers: Vec<String>,
    /// Query parameters the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_params: Vec<String>,
    /// Paths the method applies to or skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trigger_rules: Vec<TriggerRule>,
}

/// Limits a JWT method to some paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerRule {
    /// Paths skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_paths: Vec<StringMatch>,
    /// Paths the method applies to (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_paths: Vec<StringMatch>,
}

/// Which identity becomes the request principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PrincipalBinding {
    /// The peer's.
    UsePeer,
    /// The origin's.
    UseOrigin,
}

/// How a path is matched in a trigger rule: an object with one of `exact`, `prefix`, `suffix`
/// or `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "StringMatchFields", into = "StringMatchFields")]
pub enum StringMatch {
    /// The whole string equals this.
    Exact(String),
    /// The string starts with this.
    Prefix(String),
    /// The string ends with this.
    Suffix(String),
    /// The whole string matches this regular expression.
    Regex(String),
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<StringMatchFields> for StringMatch {
    type Error = &'static str;

    fn try_from(f: StringMatchFields) -> Result<Self, Self::Error> {
        match (f.exact, f.prefix, f.suffix, f.regex) {
            (Some(s), None, None, None) => Ok(StringMatch::Exact(s)),
            (None, Some(s), None, None) => Ok(StringMatch::Prefix(s)),
            (None, None, Some(s), None) => Ok(StringMatch::Suffix(s)),
            (None, None, None, Some(s)) => Ok(StringMatch::Regex(s)),
            _ => Err("exactly one of exact, prefix, suffix or regex must be set"),
        }
    }
}

impl From<StringMatch> for StringMatchFields {
    fn from(m: StringMatch) -> Self {
        let mut f = StringMatchFields::default();
        match m {
            StringMatch::Exact(s) => f.exact = Some(s),
            StringMatch::Prefix(s) => f.prefix = Some(s),
            StringMatch::Suffix(s) => f.suffix = Some(s),
            StringMatch::Regex(s) => f.regex = Some(s),
        }
        f
    }
}

impl JsonSchema for StringMatch {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "AuthenticationStringMatch".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "Exactly one of exact, prefix, suffix or regex.",
            "properties": {
                "exact": { "type": "string" },
                "prefix": { "type": "string" },
                "suffix": { "type": "string" },
                "regex": { "type": "string" },
            },
            "minProperties": 1,
            "maxProperties": 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bare_mtls_means_defaults() {
        let p: Policy = serde_json::from_value(json!({"peers": [{"mtls": null}]})).unwrap();
        assert_eq!(p.peers[0].mtls, Some(MutualTls::default()));
        let p: Policy =
            serde_json::from_value(json!({"peers": [{"jwt": {"issuer": "a"}}]})).unwrap();
        assert_eq!(p.peers[0].mtls, None);

        let mut v = json!({"peers": [{"mtls": null}, {"jwt": {"issuer": "x"}}]});
        fill_bare_mtls(&mut v);
        assert_eq!(
            v,
            json!({"peers": [{"mtls": {}}, {"jwt": {"issuer": "x"}}]})
        );
    }

    #[test]
    fn trigger_paths() {
        let r: TriggerRule =
            serde_json::from_value(json!({"excludedPaths": [{"suffix": "/health"}]})).unwrap();
        assert_eq!(
            r.excluded_paths,
            vec![StringMatch::Suffix("/health".into())]
        );
        assert!(serde_json::from_value::<TriggerRule>(json!({"excludedPaths": [{}]})).is_err());
    }
}
