//! Checks of the authentication kinds: `security.istio.io` RequestAuthentication and
//! `authentication.istio.io` Policy and MeshPolicy (Istio 1.0). Istio's checks plus what
//! Envoy would refuse later (an inline JWKS that does not parse, empty token locations), each
//! naming its field.

use mesh_proto::authentication::{self as v1alpha1, StringMatch};
use mesh_proto::security::{JwtRule, RequestAuthentication};

use mesh_proto::{Spec, SpecError};
use mesh_runtime::config::ConfigObject;

use super::{Problems, check_duration, check_regex};
use crate::model::jwks::check_jwks;

/// Istio's naming rules of the 1.0 policies: a Policy without targets is its namespace's
/// policy and must be named `default`; the MeshPolicy is named `default`.
pub(super) fn names(obj: &ConfigObject) -> Vec<SpecError> {
    let mut p = Problems::default();
    let name = obj.key.name.as_str();
    match &obj.spec {
        Spec::AuthenticationPolicy(policy) if policy.targets.is_empty() && name != "default" => {
            p.add(
                "metadata.name",
                format!("a Policy without targets applies to its namespace and must be named \"default\", not {name:?}"),
            )
        }
        Spec::MeshPolicy(_) if name != "default" => p.add(
            "metadata.name",
            format!("the MeshPolicy must be named \"default\", not {name:?}"),
        ),
        _ => {}
    }
    p.0
}

/// A RequestAuthentication.
pub(super) fn request_authentication(p: &mut Problems, ra: &RequestAuthentication) {
    if ra.selector.is_some() && (ra.target_ref.is_some() || !ra.target_refs.is_empty()) {
        p.add(
            "spec.selector",
            "only one of selector and targetRef/targetRefs may be set",
        );
    }
    if ra.target_ref.is_some() && !ra.target_refs.is_empty() {
        p.add(
            "spec.targetRef",
            "only one of targetRef and targetRefs may be set",
        );
    }
    if let Some(sel) = &ra.selector {
        for k in sel.match_labels.keys() {
            p.check(
                !k.is_empty(),
                "spec.selector.matchLabels",
                "label keys must not be empty",
            );
        }
    }
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        jwt_rule(p, &format!("spec.jwtRules[{i}]"), rule);
    }
}

fn jwt_rule(p: &mut Problems, path: &str, r: &JwtRule) {
    keys(
        p,
        path,
        &r.issuer,
        &r.audiences,
        r.jwks_uri.as_deref(),
        r.jwks.as_deref(),
    );
    for (j, h) in r.from_headers.iter().enumerate() {
        header_name(p, &format!("{path}.fromHeaders[{j}].name"), &h.name);
    }
    for (j, q) in r.from_params.iter().enumerate() {
        p.check(
            !q.is_empty(),
            format!("{path}.fromParams[{j}]"),
            "query parameter name must not be empty",
        );
    }
    for (j, c) in r.from_cookies.iter().enumerate() {
        p.check(
            !c.is_empty(),
            format!("{path}.fromCookies[{j}]"),
            "cookie name must not be empty",
        );
    }
    if let Some(h) = &r.output_payload_to_header {
        header_name(p, &format!("{path}.outputPayloadToHeader"), h);
    }
    for (j, c) in r.output_claim_to_headers.iter().enumerate() {
        header_name(
            p,
            &format!("{path}.outputClaimToHeaders[{j}].header"),
            &c.header,
        );
        p.check(
            !c.claim.is_empty(),
            format!("{path}.outputClaimToHeaders[{j}].claim"),
            "claim must not be empty",
        );
    }
    check_duration(p, &format!("{path}.timeout"), &r.timeout);
}

/// An Istio 1.0 Policy, or (`mesh`) a MeshPolicy.
pub(super) fn policy(p: &mut Problems, policy: &v1alpha1::Policy, mesh: bool) {
    if mesh && !policy.targets.is_empty() {
        p.add(
            "spec.targets",
            "a MeshPolicy applies to the whole mesh: no targets",
        );
    }
    for (i, t) in policy.targets.iter().enumerate() {
        p.check(
            !t.name.is_empty(),
            format!("spec.targets[{i}].name"),
            "target name must be set",
        );
        for (j, port) in t.ports.iter().enumerate() {
            let path = format!("spec.targets[{i}].ports[{j}]");
            match (port.number, port.name.as_deref()) {
                (Some(n), None) => p.check(
                    (1..=65535).contains(&n),
                    format!("{path}.number"),
                    format!("port number {n} is not within 1-65535"),
                ),
                (None, Some(name)) => p.check(
                    !name.is_empty(),
                    format!("{path}.name"),
                    "port name must not be empty",
                ),
                _ => p.add(path, "exactly one of number and name must be set"),
            }
        }
    }
    for (i, peer) in policy.peers.iter().enumerate() {
        let path = format!("spec.peers[{i}]");
        match (&peer.mtls, &peer.jwt) {
            (Some(_), Some(_)) => p.add(path, "only one of mtls and jwt may be set"),
            (None, None) => p.add(path, "one of mtls and jwt must be set"),
            (None, Some(jwt)) => legacy_jwt(p, &format!("{path}.jwt"), jwt),
            (Some(_), None) => {}
        }
    }
    for (i, origin) in policy.origins.iter().enumerate() {
        match &origin.jwt {
            Some(jwt) => legacy_jwt(p, &format!("spec.origins[{i}].jwt"), jwt),
            None => p.add(format!("spec.origins[{i}].jwt"), "jwt must be set"),
        }
    }
    if policy.principal_binding == Some(v1alpha1::PrincipalBinding::UseOrigin)
        && policy.origins.is_empty()
    {
        p.add(
            "spec.principalBinding",
            "USE_ORIGIN needs origins to take the principal from",
        );
    }
}

fn legacy_jwt(p: &mut Problems, path: &str, jwt: &v1alpha1::Jwt) {
    keys(
        p,
        path,
        &jwt.issuer,
        &jwt.audiences,
        jwt.jwks_uri.as_deref(),
        jwt.jwks.as_deref(),
    );
    for (j, h) in jwt.jwt_headers.iter().enumerate() {
        header_name(p, &format!("{path}.jwtHeaders[{j}]"), h);
    }
    for (j, q) in jwt.jwt_params.iter().enumerate() {
        p.check(
            !q.is_empty(),
            format!("{path}.jwtParams[{j}]"),
            "query parameter name must not be empty",
        );
    }
    for (j, rule) in jwt.trigger_rules.iter().enumerate() {
        let paths = rule
            .excluded_paths
            .iter()
            .enumerate()
            .map(|(k, m)| (format!("{path}.triggerRules[{j}].excludedPaths[{k}]"), m))
            .chain(
                rule.included_paths
                    .iter()
                    .enumerate()
                    .map(|(k, m)| (format!("{path}.triggerRules[{j}].includedPaths[{k}]"), m)),
            );
        for (at, m) in paths {
            if let StringMatch::Regex(r) = m
                && let Err(e) = check_regex(r)
            {
                p.add(format!("{at}.regex"), e.to_string());
            }
        }
    }
}

/// Issuer, audiences and where the keys come from.
fn keys(
    p: &mut Problems,
    path: &str,
    issuer: &str,
    audiences: &[String],
    jwks_uri: Option<&str>,
    jwks: Option<&str>,
) {
    p.check(
        !issuer.trim().is_empty(),
        format!("{path}.issuer"),
        "issuer must be set",
    );
    for (j, a) in audiences.iter().enumerate() {
        p.check(
            !a.trim().is_empty(),
            format!("{path}.audiences[{j}]"),
            "audience must not be empty",
        );
    }
    if let Some(uri) = jwks_uri
        && let Err(reason) = check_jwks_uri(uri)
    {
        p.add(format!("{path}.jwksUri"), reason);
    }
    if let Some(text) = jwks {
        if jwks_uri.is_some_and(|u| !u.is_empty()) {
            p.add(
                format!("{path}.jwks"),
                "only one of jwks and jwksUri may be set",
            );
        }
        if let Err(reason) = check_jwks(text) {
            p.add(format!("{path}.jwks"), format!("invalid JWKS: {reason}"));
        }
    }
}

/// An absolute `http` or `https` URL with a host.
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("{uri:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{uri:?} has no host"));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{uri:?} contains whitespace"));
    }
    let parsed: Result<http::Uri, _> = uri.parse();
    parsed.map_err(|e| format!("{uri:?} is not a valid URL: {e}"))?;
    Ok(())
}

/// An HTTP header name (a token; any case, Envoy lower-cases it).
fn header_name(p: &mut Problems, path: &str, name: &str) {
    if name.is_empty() {
        p.add(path, "header name must not be empty");
        return;
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    p.check(
        ok,
        path,
        format!("{name:?} is not a valid HTTP header name"),
    );
}

#[cfg(test)]
mod tests {
    use mesh_proto::{Kind, parse_spec};
    use serde_json::json;

    fn problems(kind: Kind, spec: serde_json::Value) -> Vec<String> {
        let spec = parse_spec(&kind, spec).unwrap();
        super::super::validate_spec(&spec)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#;

    #[test]
    fn a_good_request_authentication_has_no_problems() {
        let got = problems(
            Kind::RequestAuthentication,
            json!({
                "selector": {"matchLabels": {"app": "reviews"}},
                "jwtRules": [
                    {"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks",
                     "audiences": ["reviews"], "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
                     "fromParams": ["token"], "fromCookies": ["session"],
                     "outputPayloadToHeader": "x-jwt-payload",
                     "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]},
                    {"issuer": "inline", "jwks": JWKS}
                ]
            }),
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn request_authentication_problems_name_their_field() {
        let got = problems(
            Kind::RequestAuthentication,
            json!({"jwtRules": [
                {"issuer": "", "jwksUri": "ftp://x/jwks"},
                {"issuer": "a", "jwksUri": "https://a/jwks", "jwks": JWKS},
                {"issuer": "b", "jwks": "{not json"},
                {"issuer": "c", "jwks": "{\"keys\": []}"},
                {"issuer": "d", "jwksUri": "https:///jwks", "fromHeaders": [{"name": ""}],
                 "fromParams": [""], "audiences": [""],
                 "outputClaimToHeaders": [{"header": "bad header", "claim": ""}]}
            ]}),
        );
        let want = [
            "spec.jwtRules[0].issuer",
            "spec.jwtRules[0].jwksUri",
            "spec.jwtRules[1].jwks",
            "spec.jwtRules[2].jwks",
            "spec.jwtRules[3].jwks",
            "spec.jwtRules[4].audiences[0]",
            "spec.jwtRules[4].jwksUri",
            "spec.jwtRules[4].fromHeaders[0].name",
            "spec.jwtRules[4].fromParams[0]",
            "spec.jwtRules[4].outputClaimToHeaders[0].header",
            "spec.jwtRules[4].outputClaimToHeaders[0].claim",
        ];
        for field in want {
            assert!(
                got.iter()
                    .any(|p| p.contains(&format!("{field}:")) || p.contains(&format!("{field} "))),
                "no problem for {field}: {got:?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        assert!(got.iter().any(|p| p.contains("not JSON")), "{got:?}");
        assert!(
            got.iter()
                .any(|p| p.contains("only one of jwks and jwksUri")),
            "{got:?}"
        );
    }

    #[test]
    fn istio_1_0_policies_without_targets_are_named_default() {
        let text = "apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: mtls, namespace: default}
spec:
  peers: [{mtls: {}}]
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: reviews, namespace: default}
spec:
  targets: [{name: reviews}]
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: default, namespace: default}
spec: {}
---
apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {name: mesh}
spec: {}
";
        let results = mesh_runtime::config::parse_file(std::path::Path::new("p.yaml"), text);
        let errors: Vec<String> =
            mesh_runtime::config::validate(results, Some(&super::super::PilotValidator))
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string()))
                .collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].contains("mtls") && errors[0].contains("metadata.name"),
            "{errors:?}"
        );
        assert!(errors[1].contains("MeshPolicy"), "{errors:?}");
    }

    #[test]
    fn istio_1_0_policies() {
        let good = problems(
            Kind::AuthenticationPolicy,
            json!({
                "targets": [{"name": "reviews", "ports": [{"number": 9080}]}],
                "peers": [{"mtls": null}],
                "origins": [{"jwt": {"issuer": "https://i", "jwksUri": "http://i/jwks",
                                     "jwtHeaders": ["x-jwt"], "jwtParams": ["t"],
                                     "triggerRules": [{"excludedPaths": [{"exact": "/health"}]}]}}],
                "principalBinding": "USE_ORIGIN"
            }),
        );
        assert!(good.is_empty(), "{good:?}");
        let got = problems(
            Kind::AuthenticationPolicy,
            json!({
                "targets": [{"name": ""}],
                "origins": [{"jwt": {"issuer": "", "jwksUri": "not a url",
                                     "triggerRules": [{"includedPaths": [{"regex": "(a"}]}]}}, {}],
            }),
        );
        for field in [
            "spec.targets[0].name",
            "spec.origins[0].jwt.issuer",
            "spec.origins[0].jwt.jwksUri",
            "spec.origins[0].jwt.triggerRules[0].includedPaths[0].regex",
            "spec.origins[1].jwt",
        ] {
            assert!(got.iter().any(|p| p.contains(field)), "no {field}: {got:?}");
        }
        let got = problems(
            Kind::MeshPolicy,
            json!({"targets": [{"name": "x"}], "principalBinding": "USE_ORIGIN"}),
        );
        assert!(got.iter().any(|p| p.contains("spec.targets")), "{got:?}");
        assert!(
            got.iter().any(|p| p.contains("spec.principalBinding")),
            "{got:?}"
        );
    }
}
