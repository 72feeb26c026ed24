//! The mesh's default Mixer config in `manifests/install.yaml`: Istio 1.0's attribute
//! manifests, the kubernetesenv attribute generation, the Prometheus metrics
//! (`istio_requests_total` and friends) and the stdio access log, so telemetry reaches
//! Prometheus as soon as the install is applied.
//!
//! The objects are written, with comments on each part, in
//! `manifests/install/mixer-config.yaml` ([`MIXER_CONFIG_YAML`]); [`objects`] puts each in
//! [`NAMESPACE`] with the label every install object carries.

use serde_json::{Value, json};

use super::names::{MANAGED_LABEL, NAMESPACE};

/// The config, as written (no namespace, no labels).
pub const MIXER_CONFIG_YAML: &str = include_str!("../../../manifests/install/mixer-config.yaml");

/// The objects of [`MIXER_CONFIG_YAML`], in its order, each in [`NAMESPACE`] and labelled
/// `app.kubernetes.io/part-of: istio`.
pub fn objects() -> Vec<Value> {
    yaml_serde::Deserializer::from_str(MIXER_CONFIG_YAML)
        .map(|doc| {
            // The file is ours and a unit test parses it: a failure here is a bug.
            let mut object: Value = serde::Deserialize::deserialize(doc)
                .expect("manifests/install/mixer-config.yaml parses");
            let metadata = &mut object["metadata"];
            metadata["namespace"] = json!(NAMESPACE);
            metadata["labels"] = json!({MANAGED_LABEL.0: MANAGED_LABEL.1});
            object
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use mesh_proto::Kind;
    use mesh_proto::kind::CONFIG_GROUP;

    use super::*;

    fn names(kind: &str) -> BTreeSet<String> {
        objects()
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn istio_1_0_default_objects_are_all_there() {
        assert_eq!(
            names("attributemanifest"),
            set(&["istioproxy", "kubernetes"])
        );
        assert_eq!(names("prometheus"), set(&["handler"]));
        assert_eq!(names("stdio"), set(&["handler"]));
        assert_eq!(names("kubernetesenv"), set(&["handler"]));
        assert_eq!(names("kubernetes"), set(&["attributes"]));
        assert_eq!(names("logentry"), set(&["accesslog", "tcpaccesslog"]));
        assert_eq!(
            names("metric"),
            set(&[
                "requestcount",
                "requestduration",
                "requestsize",
                "responsesize",
                "tcpbytesent",
                "tcpbytereceived",
            ])
        );
        assert_eq!(
            names("rule"),
            set(&[
                "promhttp",
                "promtcp",
                "kubeattrgenrulerule",
                "tcpkubeattrgenrulerule",
                "stdio",
                "stdiotcp",
            ])
        );
        assert_eq!(objects().len(), 20);
    }

    #[test]
    fn every_object_is_a_namespaced_mixer_kind_of_crds_yaml_labelled_in_istio_system() {
        let crds = include_str!("../../../manifests/crds.yaml");
        for o in objects() {
            let what = format!("{} {}", o["kind"], o["metadata"]["name"]);
            let api_version = o["apiVersion"].as_str().unwrap();
            assert_eq!(api_version, "config.istio.io/v1alpha2", "{what}");
            let kind = Kind::from_api_version(api_version, o["kind"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(kind.group(), CONFIG_GROUP, "{what}");
            assert!(kind.namespaced(), "{what}");
            // The CRD is in the file applied with install.yaml, serving v1alpha2.
            let crd = format!("  name: {}.{CONFIG_GROUP}\n", kind.plural());
            let at = crds
                .find(&crd)
                .unwrap_or_else(|| panic!("{what}: no CRD {crd:?} in manifests/crds.yaml"));
            let body = crds[at..].split("\n---").next().unwrap();
            assert!(body.contains("  - name: v1alpha2\n"), "{what}: {body}");
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{what}");
            assert_eq!(o["metadata"]["labels"][MANAGED_LABEL.0], MANAGED_LABEL.1);
            assert!(o["spec"].is_object(), "{what}: no spec");
        }
    }

    #[test]
    fn the_prometheus_handler_serves_istio_1_0_metric_names_and_labels() {
        let objects = objects();
        let handler = objects.iter().find(|o| o["kind"] == "prometheus").unwrap();
        let metrics = handler["spec"]["metrics"].as_array().unwrap();
        let served: Vec<(&str, &str)> = metrics
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["instance_name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            served,
            [
                ("requests_total", "requestcount.metric.istio-system"),
                (
                    "request_duration_seconds",
                    "requestduration.metric.istio-system"
                ),
                ("request_bytes", "requestsize.metric.istio-system"),
                ("response_bytes", "responsesize.metric.istio-system"),
                ("tcp_sent_bytes_total", "tcpbytesent.metric.istio-system"),
                (
                    "tcp_received_bytes_total",
                    "tcpbytereceived.metric.istio-system"
                ),
            ]
        );
        // Each metric's labels are exactly its instance's dimensions (the YAML aliases
        // resolved).
        for m in metrics {
            let instance = m["instance_name"].as_str().unwrap().split('.').next();
            let metric = objects
                .iter()
                .find(|o| o["kind"] == "metric" && o["metadata"]["name"].as_str() == instance)
                .unwrap();
            let dims: BTreeSet<&str> = metric["spec"]["dimensions"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let labels: BTreeSet<&str> = m["label_names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();
            assert_eq!(dims, labels, "{}", m["name"]);
            for label in [
                "reporter",
                "source_workload",
                "destination_workload",
                "destination_version",
                "destination_service",
            ] {
                assert!(labels.contains(label), "{}: {label}", m["name"]);
            }
        }
    }
}
