//! This crate's own Istio configuration (`tests/fixtures/`), always present: every document
//! parses into its typed spec, fits the generated CRD schema, and round-trips; together the
//! fixtures cover every typed kind.

mod common;

use std::collections::BTreeSet;

use mesh_proto::networking::StringMatch;
use mesh_proto::policy::{CompiledAdapter, CompiledTemplate};
use mesh_proto::{Kind, Spec, parse_spec};

#[test]
fn every_fixture_parses_and_fits_its_crd() {
    let (parsed, untyped, problems) = common::check_corpus(&common::fixtures_dir());
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(untyped.is_empty(), "fixtures of untyped kinds: {untyped:?}");

    let seen: BTreeSet<Kind> = parsed.into_iter().map(|(_, k)| k).collect();
    let missing: Vec<String> = Kind::all()
        .into_iter()
        .filter(|k| !matches!(k, Kind::CompiledAdapter(_) | Kind::CompiledTemplate(_)))
        .filter(|k| !seen.contains(k))
        .map(|k| k.to_string())
        .collect();
    assert!(missing.is_empty(), "no fixture of {missing:?}");
    for compiled in [
        Kind::CompiledAdapter(CompiledAdapter::Denier),
        Kind::CompiledAdapter(CompiledAdapter::Memquota),
        Kind::CompiledAdapter(CompiledAdapter::Prometheus),
        Kind::CompiledAdapter(CompiledAdapter::Stdio),
        Kind::CompiledAdapter(CompiledAdapter::Kubernetesenv),
        Kind::CompiledTemplate(CompiledTemplate::Checknothing),
        Kind::CompiledTemplate(CompiledTemplate::Quota),
        Kind::CompiledTemplate(CompiledTemplate::Metric),
        Kind::CompiledTemplate(CompiledTemplate::Logentry),
        Kind::CompiledTemplate(CompiledTemplate::Kubernetes),
    ] {
        assert!(seen.contains(&compiled), "no fixture of {compiled}");
    }
}

/// The typed spec of the document of `kind` named `name` in a fixture file.
fn fixture(file: &str, kind: &str, name: &str) -> Spec {
    let path = common::fixtures_dir().join(file);
    let doc = common::documents(&path)
        .into_iter()
        .find(|d| d.kind() == kind && d.value["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {file}"));
    let kind = Kind::from_api_version(doc.api_version(), doc.kind()).unwrap();
    parse_spec(&kind, doc.spec()).unwrap()
}

#[test]
fn istio_1_0_virtual_service_reads_as_meant() {
    let Spec::VirtualService(vs) = fixture("istio-1.0/networking.yaml", "VirtualService", "stock")
    else {
        panic!("not a VirtualService")
    };
    assert_eq!(vs.hosts, ["stock"]);
    let tester = &vs.http[0];
    assert_eq!(
        tester.matches[0].headers["end-user"],
        StringMatch::Exact("tester".into())
    );
    let delay = tester.fault.as_ref().unwrap().delay.as_ref().unwrap();
    assert_eq!(delay.percent, Some(100));
    assert_eq!(delay.fixed_delay.unwrap().as_std().as_secs(), 7);
    let split = &vs.http[2];
    let weights: Vec<_> = split.route.iter().map(|r| r.weight).collect();
    assert_eq!(weights, [Some(90), Some(10)]);
    assert_eq!(split.mirror.as_ref().unwrap().subset.as_deref(), Some("v3"));
    assert_eq!(split.timeout.unwrap().as_std().as_secs(), 10);
}

#[test]
fn current_virtual_service_reads_as_meant() {
    let Spec::VirtualService(vs) =
        fixture("istio-current/networking.yaml", "VirtualService", "shop")
    else {
        panic!("not a VirtualService")
    };
    let api = &vs.http[0];
    assert_eq!(api.matches[0].without_headers["x-skip"], StringMatch::Any);
    assert_eq!(api.timeout.unwrap().as_std().as_millis(), 1500);
    assert_eq!(api.mirror_percentage.unwrap().value, 12.5);
    assert_eq!(
        api.cors_policy.as_ref().unwrap().allow_origins[1],
        StringMatch::Regex(r"https://.*\.example\.com".into())
    );
    let default = vs.http.last().unwrap();
    let abort = default.fault.as_ref().unwrap().abort.as_ref().unwrap();
    assert_eq!(abort.http_status, Some(555));
    assert_eq!(abort.percentage.unwrap().value, 100.0);
}

#[test]
fn legacy_route_rule_reads_as_meant() {
    let Spec::RouteRule(rule) = fixture("istio-0.5/route-rules.yaml", "RouteRule", "shop-tester")
    else {
        panic!("not a RouteRule")
    };
    assert_eq!(rule.precedence, Some(2));
    let headers = &rule
        .match_condition
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap()
        .headers;
    assert!(matches!(&headers["cookie"], StringMatch::Regex(r) if r.contains("tester=yes")));
    let delay = rule.http_fault.as_ref().unwrap().delay.as_ref().unwrap();
    assert_eq!(delay.percent, Some(100.0));
    assert_eq!(rule.route[0].labels["version"], "v2");
}

#[test]
fn mixer_documents_read_as_meant() {
    let Spec::Rule(rule) = fixture("istio-1.0/policy.yaml", "rule", "deny-stock-from-shop-v3")
    else {
        panic!("not a rule")
    };
    assert!(rule.match_expr.unwrap().contains("destination.labels"));
    assert_eq!(rule.actions[0].handler, "closed.denier");
    assert_eq!(rule.actions[0].instances, ["anything.checknothing"]);

    let Spec::CompiledAdapter(adapter, params) =
        fixture("istio-1.0/policy.yaml", "memquota", "limits")
    else {
        panic!("not an adapter")
    };
    assert_eq!(adapter, CompiledAdapter::Memquota);
    assert_eq!(params["quotas"][0]["maxAmount"], 1000);

    let Spec::AttributeManifest(manifest) =
        fixture("istio-1.0/policy.yaml", "attributemanifest", "proxy")
    else {
        panic!("not a manifest")
    };
    assert_eq!(
        manifest.attributes["request.size"].value_type,
        mesh_proto::policy::ValueType::Int64
    );
}

#[test]
fn bare_mtls_in_a_mesh_policy() {
    let Spec::MeshPolicy(policy) =
        fixture("istio-1.0/authentication.yaml", "MeshPolicy", "default")
    else {
        panic!("not a MeshPolicy")
    };
    assert_eq!(policy.peers.len(), 1);
    assert_eq!(policy.peers[0].mtls, Some(Default::default()));
}

#[test]
fn peer_authentication_port_keys_are_numbers() {
    let Spec::PeerAuthentication(pa) =
        fixture("istio-current/security.yaml", "PeerAuthentication", "shop")
    else {
        panic!("not a PeerAuthentication")
    };
    assert_eq!(
        pa.port_level_mtls[&9080].mode,
        Some(mesh_proto::security::MtlsMode::Disable)
    );
}
