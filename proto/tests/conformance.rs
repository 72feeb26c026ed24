//! Real users' Istio configuration (the shared conformance corpus, `../shared/conformance`):
//! every document of a kind we serve must parse, fit the generated CRD schema, and survive a
//! round trip; and the CRDs Istio 1.0 registered must match our kinds' names and scopes.
//!
//! A clone of the repository has no `../shared`; these tests then skip with a message, and the
//! fixtures test (`tests/fixtures.rs`) covers the same ground with our own documents.

mod common;

use mesh_proto::Kind;

#[test]
fn every_conformance_document_parses() {
    let Some(dir) = common::conformance_dir() else {
        eprintln!(
            "skipped: no conformance corpus (../shared/conformance or $MESH_CONFORMANCE_DIR)"
        );
        return;
    };
    let (parsed, untyped, problems) = common::check_corpus(&dir);
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for doc in &untyped {
        eprintln!("not typed (kept as written): {doc}");
    }
    let mut kinds: Vec<_> = parsed.iter().map(|(_, k)| k.to_string()).collect();
    kinds.sort();
    kinds.dedup();
    eprintln!(
        "parsed {} documents of {} kinds from {}",
        parsed.len(),
        kinds.len(),
        dir.display()
    );
    assert!(
        parsed.len() > 100,
        "the corpus seems truncated: {} documents",
        parsed.len()
    );
}

#[test]
fn istio_1_0_crds_match_our_kinds() {
    let Some(dir) = common::conformance_dir() else {
        eprintln!(
            "skipped: no conformance corpus (../shared/conformance or $MESH_CONFORMANCE_DIR)"
        );
        return;
    };
    let path = dir.join("istio-1.0/crds.yaml");
    if !path.is_file() {
        eprintln!("skipped: {} is missing", path.display());
        return;
    }
    let mut problems = Vec::new();
    let mut seen = 0;
    for doc in common::documents(&path) {
        if doc.kind() != "CustomResourceDefinition" {
            continue;
        }
        seen += 1;
        let spec = &doc.value["spec"];
        let group = spec["group"].as_str().unwrap();
        let version = spec["version"].as_str().unwrap();
        let name = spec["names"]["kind"].as_str().unwrap();
        let kind = match Kind::from_api_version(&format!("{group}/{version}"), name) {
            Ok(kind) => kind,
            Err(e) => {
                problems.push(format!("{name}.{group}: {e}"));
                continue;
            }
        };
        if matches!(kind, Kind::Other { .. }) {
            // EnvoyFilter: a patch language for Envoy's config, not served here.
            eprintln!("not typed: {name}.{group}");
        }
        let plural = spec["names"]["plural"].as_str().unwrap();
        if kind.plural() != plural {
            problems.push(format!(
                "{kind}: plural {} but Istio has {plural}",
                kind.plural()
            ));
        }
        let namespaced = spec["scope"] == "Namespaced";
        if kind.namespaced() != namespaced {
            problems.push(format!(
                "{kind}: namespaced {} but Istio's scope is {}",
                kind.namespaced(),
                spec["scope"]
            ));
        }
        // Every CRD of ours carries Istio's plural and scope too.
        if let Some(crd) = mesh_proto::crd::crd(&kind) {
            if crd.spec.names.plural != plural {
                problems.push(format!("{kind}: CRD plural {}", crd.spec.names.plural));
            }
            if !crd.spec.versions.iter().any(|v| v.name == version) {
                problems.push(format!("{kind}: CRD does not serve {version}"));
            }
        }
    }
    assert_eq!(seen, 50, "Istio 1.0 registered 50 CRDs");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
