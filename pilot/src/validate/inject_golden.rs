//! Golden injection: for each workload of `pilot/tests/golden/inject/*.in.yaml`, the output of
//! `pilot kube-inject` and the patch of the `/inject` webhook, compared with the files beside
//! it (rewritten with `MESH_UPDATE_GOLDEN=1`, see that directory's README). Both must agree:
//! the webhook's patched pod has kube-inject's pod template.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::inject_tests::{apply, patch_ops, pod_review};
use super::inject_webhook::{Outcome, review};
use crate::inject::kube_inject::WORKLOADS;
use crate::inject::{InjectConfig, inject_stream};
use crate::testutil::golden;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

/// The pod the API server sends the webhook for `workload`: its template, named by
/// `generateName` (a Pod as it is), and the namespace.
fn admitted_pod(workload: &Value) -> (Value, String) {
    let namespace = workload["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let kind = workload["kind"].as_str().unwrap();
    let (_, template_at) = WORKLOADS.iter().find(|(k, _)| *k == kind).unwrap();
    if template_at.is_empty() {
        return (workload.clone(), namespace);
    }
    let template = workload.pointer(template_at).unwrap();
    let mut metadata = template["metadata"].clone();
    let name = workload["metadata"]["name"].as_str().unwrap();
    metadata["generateName"] = json!(format!("{name}-"));
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]});
    (pod, namespace)
}

#[test]
fn golden_injection_of_kube_inject_and_the_webhook() {
    let config = InjectConfig::builtin();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 5, "{inputs:?}");
    let mut failures = Vec::new();
    for input in &inputs {
        let stem = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".in.yaml")
            .to_string();
        let text = std::fs::read_to_string(input).unwrap();
        let workload: Value = yaml_serde::from_str(&text).unwrap();

        let out = inject_stream(&config, &text).unwrap();
        assert!(
            out.report.iter().all(|r| r.skipped.is_none()),
            "{stem}: {:?}",
            out.report
        );
        let kube_path = dir().join(format!("{stem}.kube-inject.yaml"));
        if let Err(e) = golden::check(&kube_path, &out.yaml) {
            failures.push(e);
        }

        let (pod, namespace) = admitted_pod(&workload);
        let (answer, outcome) = review(&config, &pod_review(&pod, &namespace, "CREATE")).unwrap();
        assert_eq!(outcome, Outcome::Injected, "{stem}");
        let ops = patch_ops(&answer).unwrap();
        let patch_path = dir().join(format!("{stem}.patch.json"));
        let pretty = serde_json::to_string_pretty(&ops).unwrap() + "\n";
        if let Err(e) = golden::check(&patch_path, &pretty) {
            failures.push(e);
        }

        // The webhook's pod is kube-inject's template.
        let patched = apply(&pod, &ops);
        let injected: Value = yaml_serde::from_str(&out.yaml).unwrap();
        let (template, _) = admitted_pod(&injected);
        assert_eq!(patched["spec"], template["spec"], "{stem}: spec");
        for key in ["annotations", "labels"] {
            assert_eq!(
                patched["metadata"][key], template["metadata"][key],
                "{stem}: metadata.{key}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nregenerate with {}=1 and review the diff",
        failures.join("\n"),
        golden::UPDATE_ENV
    );
}
