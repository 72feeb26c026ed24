//! What the JWT filters look like for RequestAuthentication and Istio 1.0 Policy config: which
//! workloads get them, where on the chain, the requirement Envoy evaluates, and golden files
//! of the generated `jwt_authn` config (`pilot/tests/golden/authn/`, rewritten with
//! `MESH_UPDATE_GOLDEN=1`).

use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtRequirement, jwt_provider::JwksSourceSpecifier,
    jwt_requirement::RequiresType, requirement_rule::RequirementType,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use mesh_proto::security::MtlsMode;
use prost::Message;

use super::*;
use crate::mesh::MeshConfig;
use crate::model::jwks::{FAKE_JWKS, JwksSet};
use crate::model::{Proxy, PushContext};
use crate::testutil::{TestConfig, golden, mk_router, mk_sidecar};
use crate::xds::dump::any_json;
use crate::xds::generate::lds;

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

/// `reviews` (app=reviews at 10.0.0.1:9080) and `ratings` (10.0.0.2) in `default`, an
/// ingress gateway, and the authentication config in `extra`.
fn config(extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 10.0.0.1, labels: {{app: reviews}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 10.0.0.2, labels: {{app: ratings}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ['*']
---
{extra}"
    )
}

fn reviews() -> Proxy {
    mk_sidecar("default", "10.0.0.1")
        .labels(&[("app", "reviews")])
        .build()
}

fn ratings() -> Proxy {
    mk_sidecar("default", "10.0.0.2")
        .labels(&[("app", "ratings")])
        .build()
}

fn gateway() -> Proxy {
    mk_router("istio-system", "10.0.0.40")
        .labels(&[("istio", "ingressgateway")])
        .build()
}

fn ctx(extra: &str) -> PushContext {
    TestConfig::from_yaml(&config(extra)).push_context()
}

fn request_authn(name: &str, ns: &str, selector: Option<&str>, rules: &str) -> String {
    let selector = selector
        .map(|app| format!("  selector: {{matchLabels: {{app: {app}}}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  jwtRules:\n{rules}"
    )
}

fn inline_rule(issuer: &str) -> String {
    format!("  - issuer: {issuer}\n    jwks: '{JWKS}'\n")
}

/// The HTTP connection managers of the proxy's listener `name`.
fn hcms(ctx: &PushContext, proxy: &Proxy, name: &str) -> Vec<HttpConnectionManager> {
    let listener = lds::listeners(ctx, proxy)
        .iter()
        .map(|r| Listener::decode(&r.any.value[..]).unwrap())
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"));
    listener
        .filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => HttpConnectionManager::decode(&a.value[..]).ok(),
            _ => None,
        })
        .filter(|h| !h.http_filters.is_empty())
        .collect()
}

fn filter_names(hcm: &HttpConnectionManager) -> Vec<&str> {
    hcm.http_filters.iter().map(|f| f.name.as_str()).collect()
}

fn jwt_config(hcm: &HttpConnectionManager) -> Option<JwtAuthentication> {
    let f = hcm.http_filters.iter().find(|f| f.name == JWT_FILTER)?;
    match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(a)) => {
            JwtAuthentication::decode(&a.value[..]).ok()
        }
        _ => None,
    }
}

fn inbound_jwt(ctx: &PushContext, proxy: &Proxy) -> Option<JwtAuthentication> {
    let name = format!("{}_9080", proxy.ips[0]);
    jwt_config(&hcms(ctx, proxy, &name)[0])
}

fn requirement_of(cfg: &JwtAuthentication) -> &JwtRequirement {
    match &cfg.rules[0].requirement_type {
        Some(RequirementType::Requires(r)) => r,
        other => panic!("no requirement: {other:?}"),
    }
}

/// A requirement as a short expression: `p0`, `missing`, `any(..)`, `all(..)`.
fn show(r: &JwtRequirement) -> String {
    let list = |rs: &[JwtRequirement]| rs.iter().map(show).collect::<Vec<_>>().join(", ");
    match &r.requires_type {
        Some(RequiresType::ProviderName(n)) => n.replace("origins-", "p"),
        Some(RequiresType::AllowMissing(_)) => "missing".into(),
        Some(RequiresType::RequiresAny(l)) => format!("any({})", list(&l.requirements)),
        Some(RequiresType::RequiresAll(l)) => format!("all({})", list(&l.requirements)),
        other => format!("{other:?}"),
    }
}

fn inline_keys(cfg: &JwtAuthentication, provider: &str) -> String {
    match &cfg.providers[provider].jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(ds)) => match &ds.specifier {
            Some(
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(s),
            ) => s.clone(),
            other => panic!("not inline: {other:?}"),
        },
        other => panic!("not local: {other:?}"),
    }
}

#[test]
fn a_selected_workload_gets_the_filters_before_the_router_and_others_none() {
    let ctx = ctx(&request_authn(
        "reviews",
        "default",
        Some("reviews"),
        &inline_rule("https://issuer.example"),
    ));
    let hcm = &hcms(&ctx, &reviews(), "10.0.0.1_9080")[0];
    assert_eq!(
        filter_names(hcm),
        [
            "envoy.filters.http.cors",
            JWT_FILTER,
            AUTHN_FILTER,
            "envoy.filters.http.fault",
            "envoy.filters.http.router"
        ]
    );
    let cfg = jwt_config(hcm).unwrap();
    assert_eq!(show(requirement_of(&cfg)), "any(p0, missing)");
    assert!(cfg.bypass_cors_preflight);
    let p = &cfg.providers["origins-0"];
    assert_eq!(p.issuer, "https://issuer.example");
    assert_eq!(p.payload_in_metadata, "https://issuer.example");
    assert_eq!(inline_keys(&cfg, "origins-0"), JWKS);
    assert!(inbound_jwt(&ctx, &ratings()).is_none());
    // Outbound listeners never get it.
    let outbound = hcms(&ctx, &reviews(), "0.0.0.0_9080");
    assert!(outbound.iter().all(|h| jwt_config(h).is_none()));
}

#[test]
fn root_namespace_and_namespace_policies_add_up() {
    let all = format!(
        "{}---\n{}---\n{}---\n{}",
        request_authn("mesh", "istio-system", None, &inline_rule("mesh-issuer")),
        request_authn("ns", "default", None, &inline_rule("ns-issuer")),
        request_authn(
            "only-reviews",
            "default",
            Some("reviews"),
            &inline_rule("reviews-issuer")
        ),
        request_authn("elsewhere", "other", None, &inline_rule("other-issuer")),
    );
    let ctx = ctx(&all);
    let issuers = |p: &Proxy| -> Vec<String> {
        let cfg = inbound_jwt(&ctx, p).unwrap();
        let mut v: Vec<(String, String)> = cfg
            .providers
            .iter()
            .map(|(n, p)| (n.clone(), p.issuer.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, i)| i).collect()
    };
    assert_eq!(
        issuers(&reviews()),
        ["mesh-issuer", "ns-issuer", "reviews-issuer"]
    );
    assert_eq!(issuers(&ratings()), ["mesh-issuer", "ns-issuer"]);
    let cfg = inbound_jwt(&ctx, &ratings()).unwrap();
    assert_eq!(
        show(requirement_of(&cfg)),
        "any(p0, p1, all(any(p0, missing), any(p1, missing)))"
    );
}

#[test]
fn fetched_keys_are_inlined_and_unfetched_ones_refuse_every_token() {
    let rule = "  - issuer: https://remote\n    jwksUri: https://remote/jwks\n";
    let text = request_authn("r", "default", None, rule);
    let cfg = inbound_jwt(&ctx(&text), &reviews()).unwrap();
    assert_eq!(inline_keys(&cfg, "origins-0"), FAKE_JWKS);
    let fetched = Arc::new(JwksSet::from_keys([(
        "https://remote/jwks".to_string(),
        JWKS.to_string(),
    )]));
    let ctx = ctx(&text).with_jwks(fetched);
    let cfg = inbound_jwt(&ctx, &reviews()).unwrap();
    assert_eq!(inline_keys(&cfg, "origins-0"), JWKS);
}

#[test]
fn the_filters_go_before_mixer_check() {
    let mesh = MeshConfig::parse(
        Path::new("mesh"),
        "mixerCheckServer: 10.0.0.7:9091\ndisablePolicyChecks: false\n",
    )
    .unwrap();
    let text = config(&request_authn("r", "default", None, &inline_rule("i")));
    let ctx = TestConfig::from_yaml(&text).mesh(mesh).push_context();
    let hcm = &hcms(&ctx, &reviews(), "10.0.0.1_9080")[0];
    let names = filter_names(hcm);
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(at(AUTHN_FILTER) == at(JWT_FILTER) + 1, "{names:?}");
    assert!(
        at(AUTHN_FILTER) < at(crate::xds::generate::mixer::EXT_AUTHZ_FILTER),
        "{names:?}"
    );
}

#[test]
fn gateways_get_the_filters_on_their_connection_managers() {
    let text = request_authn(
        "ingress",
        "istio-system",
        Some("ingressgateway-none"),
        &inline_rule("i"),
    );
    // A selector that does not pick the gateway: nothing.
    let ctx1 = ctx(&text);
    assert!(
        hcms(&ctx1, &gateway(), "0.0.0.0_80")
            .iter()
            .all(|h| jwt_config(h).is_none())
    );
    let text = "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: ingress, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  jwtRules:\n  - issuer: i\n    jwks: '".to_string()
        + JWKS
        + "'\n";
    let ctx2 = ctx(&text);
    let hcm = &hcms(&ctx2, &gateway(), "0.0.0.0_80")[0];
    assert!(jwt_config(hcm).is_some(), "{:?}", filter_names(hcm));
}

const LEGACY_ORIGINS: &str = "apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: reviews, namespace: default}
spec:
  targets: [{name: reviews}]
  origins:
  - jwt:
      issuer: https://legacy
      jwksUri: https://legacy/jwks
      jwtHeaders: [x-jwt]
  principalBinding: USE_ORIGIN
";

#[test]
fn istio_1_0_origins_require_a_token_on_their_targets() {
    let ctx = ctx(LEGACY_ORIGINS);
    let cfg = inbound_jwt(&ctx, &reviews()).unwrap();
    assert_eq!(show(requirement_of(&cfg)), "p0");
    let p = &cfg.providers["origins-0"];
    assert_eq!(p.from_headers[0].name, "x-jwt");
    assert_eq!(p.from_headers[0].value_prefix, "");
    assert!(p.forward);
    assert!(inbound_jwt(&ctx, &ratings()).is_none());
    // originIsOptional: a token is checked, not required.
    let optional = LEGACY_ORIGINS.replace(
        "principalBinding",
        "originIsOptional: true\n  principalBinding",
    );
    let cfg = inbound_jwt(&self::ctx(&optional), &reviews()).unwrap();
    assert_eq!(show(requirement_of(&cfg)), "any(p0, missing)");
}

const LEGACY_TRIGGERED: &str = "apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: default, namespace: default}
spec:
  origins:
  - jwt:
      issuer: https://legacy
      jwksUri: https://legacy/jwks
      triggerRules:
      - excludedPaths: [{exact: /health}, {suffix: .png}]
        includedPaths: [{prefix: /api}]
  principalBinding: USE_ORIGIN
";

/// Each requirement rule as `MATCH => REQUIREMENT`.
fn rules_of(cfg: &JwtAuthentication) -> Vec<String> {
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    cfg.rules
        .iter()
        .map(|r| {
            let m = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                Some(PathSpecifier::Path(p)) => format!("={p}"),
                Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
                Some(PathSpecifier::SafeRegex(r)) => format!("~{}", r.regex),
                other => format!("{other:?}"),
            };
            let req = match &r.requirement_type {
                Some(RequirementType::Requires(req)) => show(req),
                other => format!("{other:?}"),
            };
            format!("{m} => {req}")
        })
        .collect()
}

#[test]
fn an_istio_1_0_trigger_rule_limits_where_a_token_is_required() {
    let cfg = inbound_jwt(&ctx(LEGACY_TRIGGERED), &reviews()).unwrap();
    assert_eq!(
        rules_of(&cfg),
        [
            "=/health => any(p0, missing)",
            "~.*\\.png => any(p0, missing)",
            "/api* => p0",
            "/* => any(p0, missing)",
        ]
    );
    // No included paths: required everywhere but the excluded ones.
    let everywhere = LEGACY_TRIGGERED.replace("\n        includedPaths: [{prefix: /api}]", "");
    let cfg = inbound_jwt(&ctx(&everywhere), &reviews()).unwrap();
    assert_eq!(
        rules_of(&cfg),
        [
            "=/health => any(p0, missing)",
            "~.*\\.png => any(p0, missing)",
            "/* => p0",
        ]
    );
    // Without trigger rules, one rule for every path.
    let cfg = inbound_jwt(&ctx(LEGACY_ORIGINS), &reviews()).unwrap();
    assert_eq!(rules_of(&cfg), ["/* => p0"]);
}

#[test]
fn istio_1_0_policies_give_the_mtls_mode_when_no_peer_authentication_does() {
    let mesh_strict = "apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {name: default}
spec:
  peers: [{mtls: }]
";
    let ns_permissive = "apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: default, namespace: default}
spec:
  peers: [{mtls: {mode: PERMISSIVE}}]
";
    let reviews_port = "apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: reviews-port, namespace: default}
spec:
  targets: [{name: reviews, ports: [{number: 9080}]}]
";
    let mode = |text: &str, p: &Proxy| ctx(text).peer_authentication_mode(p, 9080);
    assert_eq!(mode(mesh_strict, &reviews()), Some(MtlsMode::Strict));
    let both = format!("{mesh_strict}---\n{ns_permissive}");
    assert_eq!(mode(&both, &reviews()), Some(MtlsMode::Permissive));
    // The port-targeted policy wins, and without peers it is plain text.
    let all = format!("{both}---\n{reviews_port}");
    assert_eq!(mode(&all, &reviews()), Some(MtlsMode::Disable));
    assert_eq!(mode(&all, &ratings()), Some(MtlsMode::Permissive));
    // A PeerAuthentication wins over all of them.
    let pa = format!(
        "{all}---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: default}}\nspec:\n  mtls: {{mode: STRICT}}\n"
    );
    assert_eq!(mode(&pa, &reviews()), Some(MtlsMode::Strict));
    assert_eq!(mode("", &reviews()), None);
}

/// The golden cases: a name and the authentication config.
fn golden_cases() -> Vec<(&'static str, String)> {
    let full = "  - issuer: https://issuer.example
    audiences: [reviews, bookinfo]
    jwks: '"
        .to_string()
        + JWKS
        + "'
    fromHeaders: [{name: x-jwt-assertion, prefix: 'Bearer '}]
    fromParams: [token]
    fromCookies: [session]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
    spaceDelimitedClaims: [roles]
";
    vec![
        (
            "request-authentication-all-fields",
            request_authn("reviews", "default", Some("reviews"), &full),
        ),
        (
            "request-authentication-two-issuers",
            format!(
                "{}---\n{}",
                request_authn(
                    "mesh",
                    "istio-system",
                    None,
                    &inline_rule("https://a.example")
                ),
                request_authn("ns", "default", None, &inline_rule("https://b.example")),
            ),
        ),
        ("istio-1.0-policy-origins", LEGACY_ORIGINS.to_string()),
        (
            "istio-1.0-policy-trigger-rules",
            LEGACY_TRIGGERED.to_string(),
        ),
    ]
}

#[test]
fn golden_jwt_authn_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/authn");
    if golden::update_requested() {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    for (name, text) in golden_cases() {
        let ctx = ctx(&text);
        let hcm = &hcms(&ctx, &reviews(), "10.0.0.1_9080")[0];
        let cfg = hcm
            .http_filters
            .iter()
            .find(|f| f.name == JWT_FILTER)
            .and_then(|f| match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(a)) => {
                    any_json(&a.type_url, &a.value).ok()
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name}: no jwt_authn"));
        let got = serde_json::to_string_pretty(&serde_json::json!({
            "inputs": text,
            "httpFilters": filter_names(hcm),
            "jwtAuthn": cfg,
        }))
        .unwrap()
            + "\n";
        if let Err(e) = golden::check(&dir.join(format!("{name}.json")), &got) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
