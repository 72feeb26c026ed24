//! The authorization model: scope, order, Istio 1.0 RBAC conversion, and validation.

use super::*;

use crate::testutil::TestConfig;

const REGISTRY: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.4.0.1, labels: {app: ratings, version: v1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: web, namespace: other}
spec:
  hosts: [web.other.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.4.0.2, labels: {app: web}}]
";

fn authz(yaml: &str) -> (Authz, crate::model::PushContext) {
    let ctx = TestConfig::from_yaml(REGISTRY).yaml(yaml).push_context();
    ((*ctx.authz).clone(), ctx)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn names(p: &WorkloadPolicies) -> Vec<String> {
    p.policies.iter().map(|a| a.name.clone()).collect()
}

fn service<'a>(ctx: &'a crate::model::PushContext, host: &str) -> &'a Service {
    ctx.registry.service(host).unwrap()
}

#[test]
fn policies_apply_by_namespace_selector_and_root_namespace() {
    let (a, _) = authz(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ratings-only, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: whole-ns, namespace: default}
spec: {}
",
    );
    let ratings = a.for_workload("default", &labels(&[("app", "ratings")]), &[]);
    assert_eq!(
        names(&ratings),
        [
            "ns[default]-policy[ratings-only]",
            "ns[default]-policy[whole-ns]",
            "ns[istio-system]-policy[mesh-deny]"
        ]
    );
    // Sorted by effect: ALLOW before DENY in the list; the generator orders the filters.
    assert_eq!(ratings.policies[2].effect, Effect::Deny);
    let other = a.for_workload("default", &labels(&[("app", "details")]), &[]);
    assert_eq!(
        names(&other),
        [
            "ns[default]-policy[whole-ns]",
            "ns[istio-system]-policy[mesh-deny]"
        ]
    );
    let elsewhere = a.for_workload("other", &labels(&[("app", "ratings")]), &[]);
    assert_eq!(names(&elsewhere), ["ns[istio-system]-policy[mesh-deny]"]);
    // `spec: {}` is an ALLOW policy without rules: it denies all.
    assert!(other.policies[0].rules.is_empty());
    assert_eq!(other.policies[0].effect, Effect::Allow);
}

/// The Istio 1.0 bookinfo RBAC samples, as Istio's docs apply them.
fn rbac_samples(files: &[&str]) -> String {
    let dir = crate::testutil::fixture("authz/istio-1.0-rbac");
    let mut out = String::new();
    for f in files {
        out.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
        out.push_str("\n---\n");
    }
    out
}

#[test]
fn rbac_on_with_inclusion_denies_what_no_binding_grants() {
    let (a, ctx) = authz(&rbac_samples(&["rbac-config-ON.yaml"]));
    let ratings = service(&ctx, "ratings.default.svc.cluster.local");
    let p = a.for_workload("default", &labels(&[("app", "ratings")]), &[ratings]);
    assert_eq!(names(&p), ["ns[default]-rbac-on"]);
    assert!(p.policies[0].rules.is_empty());
    // Not included: the other namespace is untouched.
    let web = service(&ctx, "web.other.svc.cluster.local");
    assert!(a.for_workload("other", &labels(&[]), &[web]).is_empty());
}

#[test]
fn rbac_bindings_become_allow_rules_for_their_services() {
    let (a, ctx) = authz(&rbac_samples(&[
        "rbac-config-ON.yaml",
        "ratings-policy.yaml",
        "productpage-policy.yaml",
    ]));
    let ratings = service(&ctx, "ratings.default.svc.cluster.local");
    let p = a.for_workload("default", &labels(&[("app", "ratings")]), &[ratings]);
    assert_eq!(
        names(&p),
        [
            "ns[default]-rbac-on",
            "ns[default]-rbac[bind-productpage-viewer]",
            "ns[default]-rbac[bind-ratings]"
        ]
    );
    // productpage's role names productpage only: nothing for ratings.
    assert!(p.policies[1].rules.is_empty());
    let rule = &p.policies[2].rules[0];
    assert_eq!(
        rule.from[0].source.as_ref().unwrap().principals,
        ["cluster.local/ns/default/sa/bookinfo-reviews"]
    );
    assert_eq!(
        rule.to[0].operation.as_ref().unwrap().methods,
        ["GET"],
        "{rule:?}"
    );
}

#[test]
fn rbac_properties_and_label_constraints() {
    let (a, ctx) = authz(&rbac_samples(&[
        "rbac-config-ON.yaml",
        "namespace-policy.yaml",
    ]));
    let ratings = service(&ctx, "ratings.default.svc.cluster.local");
    let p = a.for_workload("default", &labels(&[("app", "ratings")]), &[ratings]);
    let rules = &p.policies[1].rules;
    // One rule per subject: istio-system and default namespaces.
    assert_eq!(rules.len(), 2);
    let ns: Vec<&str> = rules
        .iter()
        .map(|r| r.from[0].source.as_ref().unwrap().namespaces[0].as_str())
        .collect();
    assert_eq!(ns, ["istio-system", "default"]);
    // destination.labels[app] does not hold for an `app: mongodb` workload: no rule.
    let p = a.for_workload("default", &labels(&[("app", "mongodb")]), &[ratings]);
    assert!(p.policies[1].rules.is_empty());
}

#[test]
fn a_binding_to_a_missing_role_fails_closed() {
    let (a, ctx) = authz(
        "apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: dangling, namespace: default}
spec:
  subjects: [{user: '*'}]
  roleRef: {kind: ServiceRole, name: nowhere}
",
    );
    let ratings = service(&ctx, "ratings.default.svc.cluster.local");
    let p = a.for_workload("default", &labels(&[]), &[ratings]);
    let errors = p.errors();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("ServiceRole default/nowhere does not exist"),
        "{errors:?}"
    );
}

#[test]
fn rbac_off_and_exclusion() {
    let on = |mode: &str| {
        let (a, ctx) = authz(&format!(
            "apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {{name: default}}
spec:
  mode: {mode}
  exclusion: {{services: [ratings.default.svc.cluster.local]}}
  inclusion: {{namespaces: [other]}}
"
        ));
        let ratings = service(&ctx, "ratings.default.svc.cluster.local");
        let web = service(&ctx, "web.other.svc.cluster.local");
        (
            !a.for_workload("default", &labels(&[]), &[ratings])
                .is_empty(),
            !a.for_workload("other", &labels(&[]), &[web]).is_empty(),
        )
    };
    assert_eq!(on("'OFF'"), (false, false));
    assert_eq!(on("'ON'"), (true, true));
    assert_eq!(on("ON_WITH_EXCLUSION"), (false, true));
    assert_eq!(on("ON_WITH_INCLUSION"), (false, true));
}

#[test]
fn keys_parse_as_istio_names_them() {
    assert_eq!(
        Key::parse("request.headers[x-user]"),
        Ok(Key::Header("x-user".into()))
    );
    assert_eq!(
        Key::parse("request.auth.claims[groups]"),
        Ok(Key::AuthClaims(vec!["groups".into()]))
    );
    assert_eq!(
        Key::parse("request.auth.claims[a][b]"),
        Ok(Key::AuthClaims(vec!["a".into(), "b".into()]))
    );
    assert_eq!(
        Key::parse("experimental.envoy.filters.network.mysql_proxy[db.table]"),
        Ok(Key::EnvoyFilter {
            filter: "envoy.filters.network.mysql_proxy".into(),
            key: "db.table".into()
        })
    );
    for bad in [
        "request.header[x]",
        "request.headers[]",
        "source.user",
        "request.auth.claims",
        "destination.labels[app]",
    ] {
        assert!(Key::parse(bad).is_err(), "{bad}");
    }
    assert!(Key::parse("request.headers[a]").unwrap().http_only());
    assert!(!Key::parse("source.ip").unwrap().http_only());
    assert!(!Key::parse("destination.port").unwrap().is_principal());
}

#[test]
fn cidrs_and_globs() {
    assert_eq!(
        parse_cidr("10.0.0.0/8").unwrap(),
        ("10.0.0.0".parse().unwrap(), 8)
    );
    assert_eq!(parse_cidr("::1").unwrap().1, 128);
    for bad in ["10.0.0.0/33", "10.0.0", "1.2.3.4/x", "", "fe80::/129"] {
        assert!(parse_cidr(bad).is_err(), "{bad}");
    }
    assert!(glob_matches("*", "x"));
    assert!(glob_matches("*.svc.cluster.local", "a.svc.cluster.local"));
    assert!(glob_matches("ratings*", "ratings.default"));
    assert!(!glob_matches("ratings", "ratings.default"));
}

fn problems(kind: Kind, yaml: &str) -> Vec<String> {
    let value: serde_json::Value = yaml_serde::from_str(yaml).unwrap();
    let spec = mesh_proto::parse_spec(&kind, value).unwrap();
    crate::validate::validate_spec(&spec)
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn invalid_policies_name_their_fields() {
    let cases = [
        (
            "rules: [{when: [{key: 'request.header[x]', values: [a]}]}]",
            "spec.rules[0].when[0].key",
        ),
        (
            "rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            "rules: [{from: [{source: {notRemoteIpBlocks: [not-an-ip]}}]}]",
            "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
        ),
        (
            "rules: [{from: [{source: {principals: [ns/default/sa/x]}}]}]",
            "spec.rules[0].from[0].source.principals[0]",
        ),
        (
            "rules: [{from: [{source: {principals: ['cluster.local/ns/a b/sa/x']}}]}]",
            "spec.rules[0].from[0].source.principals[0]",
        ),
        (
            "rules: [{from: [{source: {principals: [spiffe://cluster.local/ns/a/sa/b]}}]}]",
            "spec.rules[0].from[0].source.principals[0]",
        ),
        (
            "rules: [{to: [{operation: {paths: ['/a/*/b']}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "rules: [{to: [{operation: {paths: ['*a*']}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "rules: [{to: [{operation: {ports: ['http']}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            "rules: [{to: [{operation: {methods: ['']}}]}]",
            "spec.rules[0].to[0].operation.methods[0]",
        ),
        ("rules: [{from: [{}]}]", "spec.rules[0].from[0].source"),
        (
            "rules: [{to: [{operation: {}}]}]",
            "spec.rules[0].to[0].operation",
        ),
        (
            "rules: [{when: [{key: source.ip}]}]",
            "spec.rules[0].when[0]",
        ),
        (
            "rules: [{when: [{key: destination.port, values: ['99999']}]}]",
            "spec.rules[0].when[0].values[0]",
        ),
        (
            "rules: [{when: [{key: request.auth.principal, values: [nobody]}]}]",
            "spec.rules[0].when[0].values[0]",
        ),
        (
            "rules: [{from: [{source: {namespaces: [Not_A_Namespace]}}]}]",
            "spec.rules[0].from[0].source.namespaces[0]",
        ),
        ("action: CUSTOM", "spec.provider"),
        ("action: CUSTOM\nprovider: {name: ''}", "spec.provider.name"),
        ("action: DENY\nprovider: {name: ext}", "spec.provider"),
        ("targetRef: {kind: Gateway, name: gw}", "spec.targetRef"),
    ];
    for (yaml, field) in cases {
        let p = problems(Kind::AuthorizationPolicy, yaml);
        assert!(
            p.iter().any(|e| e.starts_with(&format!("{field}:"))),
            "{yaml}: expected a problem with {field}, got {p:?}"
        );
    }
}

#[test]
fn valid_policies_pass() {
    for yaml in [
        "{}",
        "action: DENY",
        "rules: [{}]",
        "rules: [{from: [{source: {principals: ['*', 'cluster.local/ns/default/sa/*', '*/sa/x', cluster.local/ns/a/sa/b]}}]}]",
        "rules: [{from: [{source: {requestPrincipals: ['https://issuer.example.com/user', '*'], namespaces: [foo, 'bar*'], ipBlocks: [10.0.0.0/8, '::1']}}]}]",
        "rules: [{to: [{operation: {hosts: ['*.example.com'], ports: ['8080'], methods: [GET], paths: ['/api/*', '*.json', /exact]}}]}]",
        "rules: [{when: [{key: 'request.headers[x-token]', values: ['*']}, {key: source.ip, notValues: [10.1.0.0/16]}, {key: 'request.auth.claims[groups]', values: [admins]}, {key: connection.sni, values: ['*.local']}, {key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]",
        "action: AUDIT\nrules: [{to: [{operation: {paths: [/log]}}]}]",
    ] {
        let p = problems(Kind::AuthorizationPolicy, yaml);
        assert!(p.is_empty(), "{yaml}: {p:?}");
    }
}

#[test]
fn rbac_objects_are_validated() {
    let role = problems(
        Kind::ServiceRole,
        "rules: [{methods: [GET], constraints: [{key: destination.user, values: [x]}]}]",
    );
    assert!(
        role.iter()
            .any(|e| e.starts_with("spec.rules[0].services:")),
        "{role:?}"
    );
    assert!(
        role.iter()
            .any(|e| e.starts_with("spec.rules[0].constraints[0].key:")),
        "{role:?}"
    );
    let binding = problems(
        Kind::ServiceRoleBinding,
        "subjects: [{properties: {source.bogus: x}}]\nroleRef: {kind: ClusterRole, name: r}",
    );
    assert!(
        binding.iter().any(|e| e.starts_with("spec.roleRef.kind:")),
        "{binding:?}"
    );
    assert!(
        binding
            .iter()
            .any(|e| e.starts_with("spec.subjects[0].properties[source.bogus]:")),
        "{binding:?}"
    );
    let config = problems(Kind::RbacConfig, "mode: ON_WITH_INCLUSION");
    assert!(
        config.iter().any(|e| e.starts_with("spec.inclusion:")),
        "{config:?}"
    );
    // The Istio 1.0 samples validate.
    let dir = crate::testutil::fixture("authz/istio-1.0-rbac");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for r in mesh_runtime::config::validate(
            mesh_runtime::config::parse_file(&path, &text),
            Some(&crate::validate::PilotValidator),
        ) {
            assert!(r.is_ok(), "{}: {:?}", path.display(), r.err());
        }
    }
}

#[test]
fn principals_are_written_for_the_trust_domain_and_each_alias() {
    let ctx = TestConfig::from_yaml(REGISTRY)
        .yaml(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: migrating, namespace: default}
spec:
  rules:
  - from:
    - source:
        principals: [old.td/ns/default/sa/a, cluster.local/ns/default/sa/b, other.td/ns/x/sa/c, '*']
        notPrincipals: [new.td/ns/default/sa/d]
    when: [{key: source.principal, values: ['*/ns/default/sa/e', old.td/ns/default/sa/f]}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: RbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: reader, namespace: default}
spec:
  rules: [{services: ['*'], methods: [GET]}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: readers, namespace: default}
spec:
  subjects: [{user: cluster.local/ns/default/sa/g}]
  roleRef: {kind: ServiceRole, name: reader}
",
        )
        .mesh_yaml("trustDomain: new.td\ntrustDomainAliases: [old.td]\n")
        .push_context();
    let ratings = service(&ctx, "ratings.default.svc.cluster.local");
    let w = ctx
        .authz
        .for_workload("default", &labels(&[("app", "ratings")]), &[ratings]);
    let policy = w
        .policies
        .iter()
        .find(|p| p.name == "ns[default]-policy[migrating]")
        .unwrap();
    let src = policy.rules[0].from[0].source.as_ref().unwrap();
    assert_eq!(
        src.principals,
        [
            "new.td/ns/default/sa/a",
            "old.td/ns/default/sa/a",
            "new.td/ns/default/sa/b",
            "old.td/ns/default/sa/b",
            "other.td/ns/x/sa/c",
            "*",
        ]
    );
    assert_eq!(
        src.not_principals,
        ["new.td/ns/default/sa/d", "old.td/ns/default/sa/d"]
    );
    assert_eq!(
        policy.rules[0].when[0].values,
        [
            "*/ns/default/sa/e",
            "new.td/ns/default/sa/f",
            "old.td/ns/default/sa/f"
        ]
    );
    // Istio 1.0 RBAC subjects too.
    let binding = w
        .policies
        .iter()
        .find(|p| p.name == "ns[default]-rbac[readers]")
        .unwrap();
    let src = binding.rules[0].from[0].source.as_ref().unwrap();
    assert_eq!(
        src.principals,
        ["new.td/ns/default/sa/g", "old.td/ns/default/sa/g"]
    );
}

#[test]
fn the_default_trust_domain_leaves_principals_alone() {
    let rules: Vec<Rule> = yaml_serde::from_str(
        "- from: [{source: {principals: [cluster.local/ns/a/sa/b, x.td/ns/a/sa/b]}}]",
    )
    .unwrap();
    assert_eq!(
        with_trust_domains(rules.clone(), &["cluster.local".to_string()]),
        rules
    );
}
