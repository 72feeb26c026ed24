//! The RBAC filters: Istio's order, TCP's broadened DENY and omitted ALLOW, identities,
//! failing closed, and where the filters go in a chain.

use super::*;

use crate::testutil::{TestConfig, mk_sidecar};
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;

fn rule(yaml: &str) -> Rule {
    yaml_serde::from_str(yaml).unwrap()
}

fn policy(name: &str, effect: Effect, rules: &[&str]) -> Applied {
    Applied {
        name: name.into(),
        effect,
        rules: std::sync::Arc::new(rules.iter().map(|r| rule(r)).collect()),
        shadow: false,
        error: None,
        provider: None,
    }
}

fn workload(policies: Vec<Applied>) -> WorkloadPolicies {
    WorkloadPolicies { policies }
}

fn actions(configs: &[RbacConfig]) -> Vec<(i32, usize)> {
    configs
        .iter()
        .map(|c| {
            let r = c.rules.as_ref().unwrap();
            (r.action, r.policies.len())
        })
        .collect()
}

#[test]
fn filters_come_in_istio_order_and_an_empty_allow_denies_all() {
    let w = workload(vec![
        policy("allow-nothing", Effect::Allow, &[]),
        policy(
            "deny",
            Effect::Deny,
            &["to: [{operation: {paths: [/admin]}}]"],
        ),
        policy("audit", Effect::Audit, &["{}"]),
    ]);
    let configs = rbac_configs(&w, Target::Http);
    assert_eq!(
        actions(&configs),
        [
            (RbacAction::Log as i32, 1),
            (RbacAction::Deny as i32, 1),
            (RbacAction::Allow as i32, 0)
        ]
    );
    assert!(
        configs[1]
            .rules
            .as_ref()
            .unwrap()
            .policies
            .contains_key("deny-rule[0]")
    );
    // No policy at all: no filter.
    assert!(rbac_configs(&WorkloadPolicies::default(), Target::Http).is_empty());
    // DENY alone: no ALLOW filter, so what it does not match passes.
    let w = workload(vec![policy("deny", Effect::Deny, &["{}"])]);
    assert_eq!(actions(&rbac_configs(&w, Target::Http)), [(1, 1)]);
}

#[test]
fn tcp_broadens_deny_rules_and_omits_http_allow_rules() {
    let deny = "from: [{source: {namespaces: [evil]}}]\nto: [{operation: {paths: [/admin*], methods: [POST]}}]\nwhen: [{key: 'request.headers[x]', values: [y]}]";
    let w = workload(vec![
        policy("deny", Effect::Deny, &[deny]),
        policy(
            "allow",
            Effect::Allow,
            &[
                "to: [{operation: {methods: [GET]}}]",
                "from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]",
                "from: [{source: {requestPrincipals: ['*']}}]",
            ],
        ),
    ]);
    let configs = rbac_configs(&w, Target::Tcp);
    let deny = &configs[0].rules.as_ref().unwrap().policies["deny-rule[0]"];
    // The path, method and header conditions are gone: every connection from `evil` is
    // denied.
    assert_eq!(
        deny.permissions,
        vec![Permission {
            rule: Some(permission::Rule::Any(true))
        }]
    );
    let Some(Identifier::Authenticated(a)) = &deny.principals[0].identifier else {
        panic!("{deny:?}");
    };
    assert_eq!(
        a.principal_name.as_ref().unwrap().match_pattern,
        Some(MatchPattern::SafeRegex(regex(".*/ns/evil/.*")))
    );
    // Only the ALLOW rule without HTTP fields is left.
    let allow = &configs[1].rules.as_ref().unwrap().policies;
    assert_eq!(
        allow.keys().collect::<Vec<_>>(),
        ["allow-rule[1]"],
        "{allow:?}"
    );
    // On HTTP all of them are there.
    let http = rbac_configs(&w, Target::Http);
    assert_eq!(http[1].rules.as_ref().unwrap().policies.len(), 3);
    let p = &http[0].rules.as_ref().unwrap().policies["deny-rule[0]"];
    assert!(matches!(
        p.permissions[0].rule,
        Some(permission::Rule::AndRules(_))
    ));
}

#[test]
fn a_policy_that_cannot_be_translated_denies_everything() {
    let mut broken = policy("broken", Effect::Deny, &["{}"]);
    broken.error = Some("roleRef: ServiceRole x/y does not exist".into());
    let w = workload(vec![broken, policy("allow-all", Effect::Allow, &["{}"])]);
    for target in [Target::Http, Target::Tcp] {
        let configs = rbac_configs(&w, target);
        assert_eq!(actions(&configs), [(RbacAction::Deny as i32, 1)]);
        let policies = &configs[0].rules.as_ref().unwrap().policies;
        let (name, p) = policies.iter().next().unwrap();
        assert_eq!(
            name,
            "fail-closed: broken: roleRef: ServiceRole x/y does not exist"
        );
        assert_eq!(p.principals[0].identifier, Some(Identifier::Any(true)));
        assert_eq!(p.permissions[0].rule, Some(permission::Rule::Any(true)));
    }
}

#[test]
fn identities_are_spiffe_uris() {
    assert_eq!(
        spiffe_matcher("cluster.local/ns/default/sa/x").match_pattern,
        Some(MatchPattern::Exact(
            "spiffe://cluster.local/ns/default/sa/x".into()
        ))
    );
    assert_eq!(
        spiffe_matcher("cluster.local/ns/default/*").match_pattern,
        Some(MatchPattern::Prefix(
            "spiffe://cluster.local/ns/default/".into()
        ))
    );
    assert_eq!(
        spiffe_matcher("*/sa/x").match_pattern,
        Some(MatchPattern::Suffix("/sa/x".into()))
    );
    assert_eq!(
        spiffe_matcher("*").match_pattern,
        Some(MatchPattern::SafeRegex(regex(".+")))
    );
    assert_eq!(
        namespace_matcher("team-*").match_pattern,
        Some(MatchPattern::SafeRegex(regex(".*/ns/team\\-[^/]*/.*")))
    );
    let re = regex::Regex::new(match &service_account_matcher("a/b").match_pattern {
        Some(MatchPattern::SafeRegex(r)) => &r.regex,
        other => panic!("{other:?}"),
    })
    .unwrap();
    assert!(re.is_match("spiffe://cluster.local/ns/a/sa/b"));
}

#[test]
fn filters_go_after_authentication_with_paths_normalised() {
    let ctx = TestConfig::from_yaml(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.4.0.1, labels: {app: ratings}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
",
    )
    .push_context();
    let proxy = mk_sidecar("default", "127.4.0.1")
        .labels(&[("app", "ratings")])
        .build();
    let hcm = HttpConnectionManager {
        http_filters: vec![
            HttpFilter {
                name: "envoy.filters.http.jwt_authn".into(),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut chain = FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(ConfigType::TypedConfig(any(&hcm))),
        }],
        ..Default::default()
    };
    apply_http(&ctx, &proxy, &mut chain, None);
    let Some(ConfigType::TypedConfig(cfg)) = &chain.filters[0].config_type else {
        panic!()
    };
    let hcm = HttpConnectionManager::decode(&cfg.value[..]).unwrap();
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.jwt_authn",
            HTTP_RBAC,
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(hcm.normalize_path, Some(BoolValue { value: true }));
    assert!(hcm.merge_slashes);
    assert_eq!(
        hcm.path_with_escaped_slashes_action,
        PathWithEscapedSlashesAction::UnescapeAndForward as i32
    );
}

#[test]
fn path_normalisation_follows_mesh_config() {
    let mesh = |yaml: &str| {
        crate::mesh::MeshConfig::parse(std::path::Path::new("mesh.yaml"), yaml).unwrap()
    };
    assert_eq!(
        PathNormalization::from_mesh(&mesh("")),
        PathNormalization::DecodeAndMergeSlashes
    );
    assert_eq!(
        PathNormalization::from_mesh(&mesh("pathNormalization: {normalization: BASE}")),
        PathNormalization::Base
    );
    assert_eq!(
        PathNormalization::from_mesh(&mesh("pathNormalization: {normalization: NONE}")),
        PathNormalization::None
    );
    let mut hcm = HttpConnectionManager::default();
    PathNormalization::MergeSlashes.apply(&mut hcm);
    assert!(hcm.merge_slashes);
    assert_eq!(
        hcm.path_with_escaped_slashes_action,
        PathWithEscapedSlashesAction::KeepUnchanged as i32
    );
}
