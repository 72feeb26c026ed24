//! The generated CRDs: the checked-in `manifests/crds.yaml` is current, every schema is
//! structural, and each CRD's names, scope and versions agree with [`Kind`].

mod common;

use std::path::Path;

use mesh_proto::Kind;

const REGENERATE: &str = "cargo run -p mesh-proto --bin gen-crds -- --out manifests/crds.yaml";

#[test]
fn checked_in_manifest_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds.yaml");
    let generated = mesh_proto::crd::crds_yaml();
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != generated {
        let line = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || on_disk.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} is stale (first difference at line {line}); regenerate it with `{REGENERATE}`",
            path.display()
        );
    }
}

#[test]
fn manifest_parses_back_into_crds() {
    let yaml = mesh_proto::crd::crds_yaml();
    let mut count = 0;
    for de in yaml_serde::Deserializer::from_str(&yaml) {
        let _: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde::Deserialize::deserialize(de).unwrap();
        count += 1;
    }
    assert_eq!(count, mesh_proto::crd::crds().len());
}

#[test]
fn every_schema_is_structural() {
    let mut problems = Vec::new();
    for crd in mesh_proto::crd::crds() {
        let name = crd.metadata.name.clone().unwrap();
        for version in &crd.spec.versions {
            let schema = serde_json::to_value(
                version
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let mut found = Vec::new();
            common::check_structural(
                &format!("{name}/{}", version.name),
                &schema,
                false,
                &mut found,
            );
            problems.extend(found);
            if schema["properties"]["spec"]["type"] != "object" {
                problems.push(format!("{name}/{}: spec is not an object", version.name));
            }
            if schema["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "spec"))
            {
                problems.push(format!("{name}/{}: spec is required", version.name));
            }
            if schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] != true {
                problems.push(format!("{name}/{}: status is not free-form", version.name));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn crds_agree_with_kinds() {
    let kinds = Kind::all();
    let crds = mesh_proto::crd::crds();
    assert_eq!(
        crds.len(),
        kinds.len() - 1,
        "every kind but ServiceAccount has a CRD"
    );
    assert!(mesh_proto::crd::crd(&Kind::ServiceAccount).is_none());
    for kind in kinds.iter().filter(|k| **k != Kind::ServiceAccount) {
        let crd = mesh_proto::crd::crd(kind).unwrap();
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, kind.group(), "{kind}");
        assert_eq!(names.kind, kind.name(), "{kind}");
        assert_eq!(names.plural, kind.plural(), "{kind}");
        assert_eq!(
            names.singular.as_deref(),
            Some(kind.name().to_ascii_lowercase().as_str())
        );
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{}.{}", kind.plural(), kind.group()).as_str())
        );
        let scope = if kind.namespaced() {
            "Namespaced"
        } else {
            "Cluster"
        };
        assert_eq!(crd.spec.scope, scope, "{kind}");
        let served: Vec<_> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(served, kind.versions(), "{kind}");
        assert!(crd.spec.versions.iter().all(|v| v.served), "{kind}");
        let storage: Vec<_> = crd.spec.versions.iter().filter(|v| v.storage).collect();
        assert_eq!(storage.len(), 1, "{kind}");
        assert_eq!(storage[0].name, kind.versions()[0], "{kind}");
        // All versions share one schema.
        assert!(
            crd.spec
                .versions
                .iter()
                .all(|v| v.schema == crd.spec.versions[0].schema)
        );
        let categories = names.categories.clone().unwrap_or_default();
        assert!(categories.iter().any(|c| c == "istio-io"), "{kind}");
    }
}

#[test]
fn short_names_follow_istio() {
    let short = |kind: Kind| {
        mesh_proto::crd::crd(&kind)
            .unwrap()
            .spec
            .names
            .short_names
            .unwrap_or_default()
    };
    assert_eq!(short(Kind::VirtualService), ["vs"]);
    assert_eq!(short(Kind::DestinationRule), ["dr"]);
    assert_eq!(short(Kind::Gateway), ["gw"]);
    assert_eq!(short(Kind::ServiceEntry), ["se"]);
    assert_eq!(short(Kind::WorkloadEntry), ["we"]);
    assert_eq!(short(Kind::AuthorizationPolicy), ["ap"]);
    assert_eq!(short(Kind::PeerAuthentication), ["pa"]);
    assert_eq!(short(Kind::RequestAuthentication), ["ra"]);
}

#[test]
fn free_form_kinds_preserve_unknown_fields() {
    let schema = common::spec_schema(
        &Kind::CompiledAdapter(mesh_proto::policy::CompiledAdapter::Prometheus),
        "v1alpha2",
    );
    assert_eq!(schema["x-kubernetes-preserve-unknown-fields"], true);
    let handler = common::spec_schema(&Kind::Handler, "v1alpha2");
    assert_eq!(
        handler["properties"]["params"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
}

#[test]
fn schema_check_is_not_vacuous() {
    // The helper the corpus tests rely on must see what the API server would prune or refuse.
    let schema = common::spec_schema(&Kind::VirtualService, "v1");
    let doc = serde_json::json!({
        "hosts": ["a"],
        "http": [{
            "route": [{"destination": {"host": "a"}, "weigth": 5}],
            "match": [{"uri": {"exact": "/", "prefix": "/"}}],
            "fault": {"abort": {"httpStatus": "500"}},
        }],
    });
    let mut problems = Vec::new();
    common::check_value("spec", &doc, &schema, &mut problems);
    problems.sort();
    assert_eq!(
        problems,
        [
            "spec.http[0].fault.abort.httpStatus: expected an integer",
            "spec.http[0].match[0].uri: more than 1 properties",
            "spec.http[0].route[0].weigth: unknown to the schema (would be pruned)",
        ]
    );
    let schema = common::spec_schema(&Kind::DestinationRule, "v1alpha3");
    let mut problems = Vec::new();
    common::check_value(
        "spec",
        &serde_json::json!({"trafficPolicy": {}}),
        &schema,
        &mut problems,
    );
    assert_eq!(problems, ["spec: missing required field host"]);
}
