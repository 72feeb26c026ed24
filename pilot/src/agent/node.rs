//! Who the proxy is: Istio's node id and node metadata, from the pod's Downward API
//! environment.
//!
//! - Node id: `TYPE~INSTANCE_IP~POD_NAME.POD_NAMESPACE~DOMAIN`, TYPE `sidecar` or `router`,
//!   DOMAIN `POD_NAMESPACE.svc.cluster.local` unless `--domain` says otherwise.
//! - Metadata (what Pilot reads from it, see [`crate::model::Proxy`]):
//!   - every `ISTIO_META_X=v` as `X: "v"` (e.g. `ISTIO_META_INTERCEPTION_MODE`);
//!   - every `ISTIO_METAJSON_X={...}` as `X`: the parsed JSON (`ISTIO_METAJSON_LABELS` gives
//!     `LABELS`, the workload's labels);
//!   - `LABELS` from a Downward API labels file (`--labels-file`, lines `key="value"`) when
//!     no `ISTIO_METAJSON_LABELS` is set;
//!   - `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `SERVICE_ACCOUNT` (Istio's keys) from `POD_NAME`,
//!     `POD_NAMESPACE`, `INSTANCE_IP`, `SERVICE_ACCOUNT`, unless an `ISTIO_META_*` variable
//!     sets them already.
//!
//! Bad input (a missing or malformed variable) is a [`NodeError`] naming the variable.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

/// `ISTIO_META_X`: metadata `X` as a string.
pub const META_PREFIX: &str = "ISTIO_META_";
/// `ISTIO_METAJSON_X`: metadata `X` as JSON.
pub const META_JSON_PREFIX: &str = "ISTIO_METAJSON_";

/// What the proxy is: Istio's `proxy sidecar` or `proxy router` (a gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Next to an application, in its pod.
    Sidecar,
    /// A gateway: ingress or egress, with no application of its own.
    Router,
}

// === impl Role ===

impl Role {
    /// The node id's first part.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::Router => "router",
        }
    }
}

/// A missing or malformed Downward API variable.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A variable the node id needs is not set.
    #[error("{var} is not set (the pod spec sets it from the Downward API: {hint})")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    /// `INSTANCE_IP` is not an address.
    #[error("INSTANCE_IP {0:?} is not an IP address")]
    BadIp(String),
    /// A name that would break the node id (`~` separates its parts).
    #[error("{var} {value:?} is not a valid name (empty or holding '~' or whitespace)")]
    BadName { var: &'static str, value: String },
    /// An `ISTIO_METAJSON_*` variable that is not JSON.
    #[error("{var}: not JSON ({source})")]
    BadJson {
        var: String,
        #[source]
        source: serde_json::Error,
    },
    /// The labels file cannot be read.
    #[error("labels file {path}: {source}")]
    LabelsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A line of the labels file that is not `key="value"`.
    #[error("labels file {path}, line {line}: expected key=\"value\", got {text:?}")]
    LabelsLine {
        path: String,
        line: usize,
        text: String,
    },
}

/// The node id and metadata of a proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub metadata: BTreeMap<String, Value>,
    pub namespace: String,
}

// === impl Node ===

impl Node {
    /// Builds the node from `env` (the process environment), for `role`, with DNS `domain`
    /// (default `POD_NAMESPACE.svc.cluster.local`) and the labels of `labels_file` when
    /// `ISTIO_METAJSON_LABELS` is not set.
    pub fn from_env(
        role: Role,
        env: &BTreeMap<String, String>,
        domain: Option<&str>,
        labels_file: Option<&Path>,
    ) -> Result<Node, NodeError> {
        let var = |name: &'static str, hint: &'static str| -> Result<String, NodeError> {
            let value = env
                .get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or(NodeError::Missing { var: name, hint })?;
            if value.contains('~') || value.chars().any(char::is_whitespace) {
                return Err(NodeError::BadName { var: name, value });
            }
            Ok(value)
        };
        let ip = var("INSTANCE_IP", "fieldRef status.podIP")?;
        if ip.parse::<IpAddr>().is_err() {
            return Err(NodeError::BadIp(ip));
        }
        let pod = var("POD_NAME", "fieldRef metadata.name")?;
        let namespace = var("POD_NAMESPACE", "fieldRef metadata.namespace")?;
        let domain = domain
            .map(str::to_string)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| format!("{namespace}.svc.cluster.local"));
        if domain.contains('~') {
            return Err(NodeError::BadName {
                var: "--domain",
                value: domain,
            });
        }
        let id = format!("{}~{ip}~{pod}.{namespace}~{domain}", role.as_str());

        let mut metadata = BTreeMap::new();
        for (name, value) in env {
            if let Some(key) = name
                .strip_prefix(META_JSON_PREFIX)
                .filter(|k| !k.is_empty())
            {
                let json: Value =
                    serde_json::from_str(value).map_err(|source| NodeError::BadJson {
                        var: name.clone(),
                        source,
                    })?;
                metadata.insert(key.to_string(), json);
            }
        }
        // Plain values win over JSON ones of the same key, as in Istio.
        for (name, value) in env {
            if let Some(key) = name.strip_prefix(META_PREFIX).filter(|k| !k.is_empty()) {
                metadata.insert(key.to_string(), Value::String(value.clone()));
            }
        }
        if !metadata.contains_key("LABELS")
            && let Some(path) = labels_file
        {
            let labels = read_labels(path)?;
            metadata.insert(
                "LABELS".into(),
                Value::Object(
                    labels
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                ),
            );
        }
        let defaults = [
            ("NAME", Some(pod)),
            ("NAMESPACE", Some(namespace.clone())),
            ("INSTANCE_IPS", Some(ip)),
            (
                "SERVICE_ACCOUNT",
                env.get("SERVICE_ACCOUNT")
                    .filter(|s| !s.is_empty())
                    .cloned(),
            ),
        ];
        for (key, value) in defaults {
            if let Some(value) = value {
                metadata
                    .entry(key.to_string())
                    .or_insert(Value::String(value));
            }
        }
        Ok(Node {
            id,
            metadata,
            namespace,
        })
    }
}

/// Reads a Downward API labels file (`fieldRef metadata.labels`): one `key="value"` a line,
/// the value quoted as a Go string.
pub fn read_labels(path: &Path) -> Result<BTreeMap<String, String>, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|source| NodeError::LabelsFile {
        path: path.display().to_string(),
        source,
    })?;
    let mut labels = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || NodeError::LabelsLine {
            path: path.display().to_string(),
            line: i + 1,
            text: line.to_string(),
        };
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(bad)?;
        if key.is_empty() {
            return Err(bad());
        }
        labels.insert(key.to_string(), unquote(value));
    }
    Ok(labels)
}

/// Undoes Go's `%q` escapes of the few characters a label value can hold.
fn unquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod() -> BTreeMap<String, String> {
        env(&[
            ("POD_NAME", "reviews-v1-abc"),
            ("POD_NAMESPACE", "bookinfo"),
            ("INSTANCE_IP", "10.1.2.3"),
            ("SERVICE_ACCOUNT", "reviews"),
            ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"reviews","version":"v1"}"#,
            ),
            ("ISTIO_META_", "ignored"),
            ("HOME", "/home/istio-proxy"),
        ])
    }

    #[test]
    fn istio_node_id_and_metadata() {
        let n = Node::from_env(Role::Sidecar, &pod(), None, None).unwrap();
        assert_eq!(
            n.id,
            "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(
            serde_json::to_value(&n.metadata).unwrap(),
            json!({
                "INTERCEPTION_MODE": "REDIRECT",
                "LABELS": {"app": "reviews", "version": "v1"},
                "NAME": "reviews-v1-abc",
                "NAMESPACE": "bookinfo",
                "INSTANCE_IPS": "10.1.2.3",
                "SERVICE_ACCOUNT": "reviews",
            })
        );
        // Pilot reads it back as the same proxy.
        let p = crate::model::Proxy::from_node(&n.id, n.metadata.clone()).unwrap();
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.labels["version"], "v1");

        let r = Node::from_env(Role::Router, &pod(), Some("cluster.example"), None).unwrap();
        assert_eq!(
            r.id,
            "router~10.1.2.3~reviews-v1-abc.bookinfo~cluster.example"
        );
    }

    #[test]
    fn labels_from_a_downward_api_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels");
        std::fs::write(
            &path,
            "app=\"ratings\"\npod-template-hash=\"5d8f\"\nnote=\"a \\\"b\\\"\"\n\n",
        )
        .unwrap();
        let mut e = pod();
        e.remove("ISTIO_METAJSON_LABELS");
        let n = Node::from_env(Role::Sidecar, &e, None, Some(&path)).unwrap();
        assert_eq!(
            n.metadata["LABELS"],
            json!({"app": "ratings", "pod-template-hash": "5d8f", "note": "a \"b\""})
        );
        // ISTIO_METAJSON_LABELS wins.
        let n = Node::from_env(Role::Sidecar, &pod(), None, Some(&path)).unwrap();
        assert_eq!(n.metadata["LABELS"]["app"], "reviews");

        std::fs::write(&path, "app=ratings\n").unwrap();
        let err = Node::from_env(Role::Sidecar, &e, None, Some(&path)).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err =
            Node::from_env(Role::Sidecar, &e, None, Some(&dir.path().join("none"))).unwrap_err();
        assert!(matches!(err, NodeError::LabelsFile { .. }), "{err}");
    }

    #[test]
    fn bad_environment_names_the_variable() {
        for (var, value, expect) in [
            ("INSTANCE_IP", "", "INSTANCE_IP is not set"),
            ("INSTANCE_IP", "10.0.0.300", "is not an IP address"),
            ("POD_NAME", "a~b", "POD_NAME \"a~b\" is not a valid name"),
            ("POD_NAMESPACE", "  ", "POD_NAMESPACE is not set"),
            (
                "ISTIO_METAJSON_LABELS",
                "{app",
                "ISTIO_METAJSON_LABELS: not JSON",
            ),
        ] {
            let mut e = pod();
            e.insert(var.into(), value.into());
            let err = Node::from_env(Role::Sidecar, &e, None, None).unwrap_err();
            assert!(err.to_string().contains(expect), "{var}={value:?}: {err}");
        }
        let mut e = pod();
        e.remove("POD_NAME");
        let err = Node::from_env(Role::Sidecar, &e, None, None).unwrap_err();
        assert!(err.to_string().contains("metadata.name"), "{err}");
    }
}
