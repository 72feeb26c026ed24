//! Request authentication in Envoy: `envoy.filters.http.jwt_authn` on the inbound HTTP chains
//! of sidecars and on every HTTP connection manager of gateways, from the workload's
//! [`JwtPolicy`] (RequestAuthentication and Istio 1.0 Policy `origins`, see
//! [`crate::model::authn`]).
//!
//! Istio's semantics: each JWT rule is a provider `origins-N` with the issuer, audiences, the
//! token locations, and its key set inline (`local_jwks`: inline `jwks`, or what Pilot fetched
//! from `jwksUri`, or a key nobody holds when that never worked). A present token must verify
//! against one provider (bad signature, expired, unknown issuer, wrong audience: 401); a
//! missing token passes (`allow_missing`) unless the policy requires one (Istio 1.0
//! `origins`). CORS preflights pass (`bypass_cors_preflight`), as in Istio.
//!
//! # Where the verified identity is, for RBAC
//!
//! Stock Envoy has no `istio_authn` filter, so a small Lua filter named `istio_authn` runs
//! right after `jwt_authn` and writes what Istio's filter wrote, in the **dynamic metadata
//! namespace `istio_authn`** ([`AUTHN_METADATA`]), only when a token verified:
//!
//! | key | value |
//! |---|---|
//! | `request.auth.principal` ([`PRINCIPAL_KEY`]) | string `ISS/SUB` (`iss` and `sub` claims joined by `/`) |
//! | `request.auth.audiences` ([`AUDIENCES_KEY`]) | string, the `aud` claim (its first entry when a list) |
//! | `request.auth.presenter` ([`PRESENTER_KEY`]) | string, the `azp` claim |
//! | `request.auth.claims` ([`CLAIMS_KEY`]) | struct: every claim whose value is a string or a list, as a **list of strings** (`scope` and `permission` split at spaces) |
//!
//! When several tokens verify, the one whose issuer sorts first wins. An RBAC principal for
//! Istio's `requestPrincipals: ["ISS/SUB"]` is therefore a `metadata` matcher with `filter:
//! istio_authn`, `path: [{key: request.auth.principal}]` and a string matcher (exact, prefix
//! or suffix for Istio's `*` forms; `present_match` for `*`); `request.auth.claims[NAME]` is
//! `path: [{key: request.auth.claims}, {key: NAME}]` with a list matcher (`one_of`).
//!
//! The raw payload of each verified token is also in namespace `envoy.filters.http.jwt_authn`
//! ([`JWT_FILTER`]) under its issuer (`payload_in_metadata`, as Istio sets it).
//!
//! Filter order: both go before any `envoy.filters.http.rbac` or `envoy.filters.http.ext_authz`
//! already on the chain (else before the fault filter, else before the router); an RBAC
//! filter added later must go after [`AUTHN_FILTER`].

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match::PathSpecifier};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RequirementRule,
    jwt_provider::{JwksSourceSpecifier, NormalizePayload},
    jwt_requirement::RequiresType,
    requirement_rule::RequirementType,
};
use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use mesh_proto::authentication::StringMatch;
use prost::Message;

use crate::model::authn::{JwtPolicy, ResolvedJwt};
use crate::model::{Proxy, PushContext};
use crate::xds::resource::any;

/// Envoy's JWT filter (also the metadata namespace of the verified payloads).
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The Lua filter standing in for Istio's `istio_authn`.
pub const AUTHN_FILTER: &str = "istio_authn";
/// The dynamic metadata namespace of the request's authenticated identity.
pub const AUTHN_METADATA: &str = "istio_authn";
/// `ISS/SUB` of the verified token.
pub const PRINCIPAL_KEY: &str = "request.auth.principal";
/// The `aud` claim.
pub const AUDIENCES_KEY: &str = "request.auth.audiences";
/// The `azp` claim.
pub const PRESENTER_KEY: &str = "request.auth.presenter";
/// The claims, each a list of strings.
pub const CLAIMS_KEY: &str = "request.auth.claims";

/// Claims always read as space-separated lists (Istio's list).
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// Filters that decide on the identity: the JWT filters go before them.
const DECIDERS: [&str; 4] = [
    "envoy.filters.http.rbac",
    super::mixer::EXT_AUTHZ_FILTER,
    super::route::FAULT_FILTER,
    "envoy.filters.http.router",
];

/// The Lua source of [`AUTHN_FILTER`].
const AUTHN_LUA: &str = r#"-- mesh: the request principal of a verified JWT, where Istio's istio_authn put it.
local function strings(v, split)
  local out = {}
  if type(v) == "string" then
    if split then
      for part in string.gmatch(v, "%S+") do out[#out + 1] = part end
    else
      out[1] = v
    end
  elseif type(v) == "table" then
    for _, e in ipairs(v) do
      if type(e) == "string" then out[#out + 1] = e end
    end
  end
  return out
end

function envoy_on_request(handle)
  local meta = handle:streamInfo():dynamicMetadata()
  local verified = meta:get("envoy.filters.http.jwt_authn")
  if verified == nil then return end
  local issuers = {}
  for issuer, payload in pairs(verified) do
    if type(payload) == "table" then issuers[#issuers + 1] = issuer end
  end
  if #issuers == 0 then return end
  table.sort(issuers)
  local payload = verified[issuers[1]]
  local iss = type(payload.iss) == "string" and payload.iss or ""
  local sub = type(payload.sub) == "string" and payload.sub or ""
  meta:set("istio_authn", "request.auth.principal", iss .. "/" .. sub)
  local aud = strings(payload.aud, false)
  if #aud > 0 then meta:set("istio_authn", "request.auth.audiences", aud[1]) end
  if type(payload.azp) == "string" then
    meta:set("istio_authn", "request.auth.presenter", payload.azp)
  end
  local claims = {}
  for name, value in pairs(payload) do
    local list = strings(value, name == "scope" or name == "permission")
    if #list > 0 then claims[name] = list end
  end
  if next(claims) ~= nil then meta:set("istio_authn", "request.auth.claims", claims) end
end
"#;

/// Adds the JWT filters to the HTTP connection managers of `chain` when `proxy`'s workload
/// `port` (0 on gateways) has JWT rules.
pub fn apply(ctx: &PushContext, proxy: &Proxy, chain: &mut FilterChain, port: u32) {
    let policy = ctx.authn.jwt_policy(ctx, proxy, port);
    if policy.rules.is_empty() {
        return;
    }
    let filters = http_filters(&policy);
    for f in &mut chain.filters {
        let Some(ConfigType::TypedConfig(cfg)) = &mut f.config_type else {
            continue;
        };
        let Ok(mut hcm) = HttpConnectionManager::decode(&cfg.value[..]) else {
            continue;
        };
        if hcm.http_filters.iter().any(|f| f.name == JWT_FILTER) {
            continue;
        }
        let at = hcm
            .http_filters
            .iter()
            .position(|f| DECIDERS.contains(&f.name.as_str()))
            .unwrap_or(hcm.http_filters.len());
        for (i, filter) in filters.iter().enumerate() {
            hcm.http_filters.insert(at + i, filter.clone());
        }
        *cfg = any(&hcm);
    }
}

/// The `jwt_authn` filter and the principal filter after it.
pub fn http_filters(policy: &JwtPolicy) -> [HttpFilter; 2] {
    let lua = Lua {
        default_source_code: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(AUTHN_LUA.into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    [
        HttpFilter {
            name: JWT_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&jwt_authn(
                policy,
            )))),
            ..Default::default()
        },
        HttpFilter {
            name: AUTHN_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&lua))),
            ..Default::default()
        },
    ]
}

/// Istio's name of the provider of the `i`th rule.
fn provider_name(i: usize) -> String {
    format!("origins-{i}")
}

/// The `jwt_authn` config of a policy.
pub fn jwt_authn(policy: &JwtPolicy) -> JwtAuthentication {
    let providers = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (provider_name(i), provider(r)))
        .collect();
    let n = policy.rules.len();
    let rule = |path: PathSpecifier, required: bool| RequirementRule {
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        requirement_type: Some(RequirementType::Requires(requirement(n, required))),
    };
    // The first rule whose path matches decides. Istio 1.0's trigger rule: excluded paths
    // need no token, then included ones (all paths when none are listed) need one.
    let mut rules = Vec::new();
    match policy.trigger.as_ref().filter(|_| policy.required) {
        Some(trigger) => {
            rules.extend(trigger.excluded_paths.iter().map(|m| rule(path(m), false)));
            rules.extend(trigger.included_paths.iter().map(|m| rule(path(m), true)));
            let everywhere = trigger.included_paths.is_empty();
            rules.push(rule(PathSpecifier::Prefix("/".into()), everywhere));
        }
        None => rules.push(rule(PathSpecifier::Prefix("/".into()), policy.required)),
    }
    JwtAuthentication {
        providers,
        rules,
        bypass_cors_preflight: true,
        ..Default::default()
    }
}

/// A trigger rule's path match as a route match (RE2 for suffixes and regexes).
fn path(m: &StringMatch) -> PathSpecifier {
    let regex = |r: String| {
        PathSpecifier::SafeRegex(RegexMatcher {
            regex: r,
            ..Default::default()
        })
    };
    match m {
        StringMatch::Exact(p) => PathSpecifier::Path(p.clone()),
        StringMatch::Prefix(p) => PathSpecifier::Prefix(p.clone()),
        StringMatch::Suffix(s) => regex(format!(".*{}", regex_escape(s))),
        StringMatch::Regex(r) => regex(r.clone()),
    }
}

/// `s` as an RE2 literal.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn provider(r: &ResolvedJwt) -> JwtProvider {
    let mut delimited: Vec<String> = SPACE_DELIMITED.iter().map(|s| s.to_string()).collect();
    for c in &r.space_delimited_claims {
        if !delimited.contains(c) {
            delimited.push(c.clone());
        }
    }
    JwtProvider {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(r.jwks.clone())),
            ..Default::default()
        })),
        forward: r.forward_original_token,
        from_headers: r
            .from_headers
            .iter()
            .map(|(name, prefix)| JwtHeader {
                name: name.clone(),
                value_prefix: prefix.clone(),
            })
            .collect(),
        from_params: r.from_params.clone(),
        from_cookies: r.from_cookies.clone(),
        forward_payload_header: r.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: r.issuer.clone(),
        normalize_payload_in_metadata: Some(NormalizePayload {
            space_delimited_claims: delimited,
        }),
        claim_to_headers: r
            .output_claim_to_headers
            .iter()
            .map(|(header, claim)| JwtClaimToHeader {
                header_name: header.clone(),
                claim_name: claim.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn by_name(i: usize) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(RequiresType::ProviderName(provider_name(i))),
    }
}

fn any_of(requirements: Vec<JwtRequirement>) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
            requirements,
        })),
    }
}

fn allow_missing() -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(RequiresType::AllowMissing(Default::default())),
    }
}

/// What a request must carry with `n` providers (n > 0):
/// - required: a valid token of one of them (`origins-0`, or any of them);
/// - else, one provider: its valid token, or none at all;
/// - else, several: a valid token of any one, or, for every provider, its valid token or
///   none in its locations. The second arm lets a request without tokens through and
///   refuses one with an invalid token; the first is needed when providers share a
///   location (then the second always fails on the others' tokens), as Istio builds it.
fn requirement(n: usize, required: bool) -> JwtRequirement {
    if required {
        return match n {
            1 => by_name(0),
            _ => any_of((0..n).map(by_name).collect()),
        };
    }
    if n == 1 {
        return any_of(vec![by_name(0), allow_missing()]);
    }
    let each = (0..n)
        .map(|i| any_of(vec![by_name(i), allow_missing()]))
        .collect();
    let mut outer: Vec<JwtRequirement> = (0..n).map(by_name).collect();
    outer.push(JwtRequirement {
        requires_type: Some(RequiresType::RequiresAll(JwtRequirementAndList {
            requirements: each,
        })),
    });
    any_of(outer)
}

#[cfg(test)]
mod tests;
