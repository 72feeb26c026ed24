//! The `proxy.istio.io/config` pod annotation: a ProxyConfig (YAML or JSON) for this pod's
//! proxy, over the mesh's `defaultConfig`. Injection applies the part the agent reads at start:
//!
//! - `proxyMetadata`: environment variables of the proxy container (Istio's way to set the
//!   agent's knobs per pod, e.g. `PILOT_AGENT_WORKLOAD_CERT_TTL: 1h`).
//!
//! Other ProxyConfig fields are refused with the field's name (rather than ignored: a
//! setting that silently does nothing is worse than a clear no).

use serde_json::{Map, Value, json};

use super::InjectError;
use super::pod::PodRef;

/// The annotation.
pub const ANNOTATION: &str = "proxy.istio.io/config";

/// The environment variables the annotation of `annotations` gives the proxy container, in
/// order; none without the annotation.
pub fn env_of(pod: &PodRef, annotations: &Value) -> Result<Vec<Value>, InjectError> {
    let Some(raw) = annotations.get(ANNOTATION) else {
        return Ok(Vec::new());
    };
    let err = |reason: String| InjectError::Annotation {
        pod: pod.clone(),
        annotation: ANNOTATION.to_string(),
        value: match raw {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        reason,
    };
    let text = raw
        .as_str()
        .ok_or_else(|| err("expected a string holding a ProxyConfig".into()))?;
    let config: Value = if text.trim().is_empty() {
        json!({})
    } else {
        yaml_serde::from_str(text).map_err(|e| err(format!("not YAML: {e}")))?
    };
    let config = match config {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        _ => return Err(err("expected a mapping (a ProxyConfig)".into())),
    };
    let mut env = Vec::new();
    for (field, value) in &config {
        match field.as_str() {
            "proxyMetadata" => {
                let Some(vars) = value.as_object() else {
                    return Err(err(
                        "proxyMetadata: expected a mapping of names to strings".into()
                    ));
                };
                for (name, v) in vars {
                    if !valid_env_name(name) {
                        return Err(err(format!(
                            "proxyMetadata.{name}: not an environment variable name"
                        )));
                    }
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(err(format!("proxyMetadata.{name}: expected a string")));
                        }
                    };
                    env.push(json!({"name": name, "value": v}));
                }
            }
            other => {
                return Err(err(format!(
                    "{other}: not a ProxyConfig field this injector applies per pod \
                     (only proxyMetadata)"
                )));
            }
        }
    }
    Ok(env)
}

/// Appends `env` to the env of the container named `proxy`, a variable of the same name
/// replaced.
pub fn add_env(containers: &mut [Value], proxy: &str, env: Vec<Value>) {
    let Some(c) = containers
        .iter_mut()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(proxy))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let list = c.entry("env").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(list) = list.as_array_mut() {
        for e in env {
            list.retain(|have| have.get("name") != e.get("name"));
            list.push(e);
        }
    }
}

/// A C identifier, as environment variable names are in practice.
fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: "reviews-1".into(),
            workload: None,
        }
    }

    #[test]
    fn proxy_metadata_and_concurrency_become_env() {
        let a = json!({ANNOTATION: "proxyMetadata:\n  PILOT_AGENT_WORKLOAD_CERT_TTL: 1h\n  ISTIO_META_X: 'y'\n  PILOT_AGENT_CONCURRENCY: 4\n"});
        let env = env_of(&pod(), &a).unwrap();
        for want in [
            json!({"name": "PILOT_AGENT_CONCURRENCY", "value": "4"}),
            json!({"name": "ISTIO_META_X", "value": "y"}),
            json!({"name": "PILOT_AGENT_WORKLOAD_CERT_TTL", "value": "1h"}),
        ] {
            assert!(env.contains(&want), "{want} not in {env:?}");
        }
        assert_eq!(env.len(), 3);
        let mut containers = vec![json!({"name": "istio-proxy", "env": [
            {"name": "PILOT_AGENT_CONCURRENCY", "value": "2"}]})];
        add_env(&mut containers, "istio-proxy", env);
        let names: Vec<&str> = containers[0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == "PILOT_AGENT_CONCURRENCY")
                .count(),
            1
        );
        assert!(env_of(&pod(), &json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_configs_name_the_pod_annotation_and_field() {
        for (text, want) in [
            ("[", "not YAML"),
            ("- a", "expected a mapping"),
            ("proxyMetadata: [a]", "proxyMetadata"),
            ("proxyMetadata: {'a b': c}", "proxyMetadata.a b"),
            ("proxyMetadata: {A: {b: c}}", "proxyMetadata.A"),
            ("concurrency: 4", "concurrency"),
            ("tracing: {}", "tracing"),
        ] {
            let e = env_of(&pod(), &json!({ANNOTATION: text}))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("shop/reviews-1") && e.contains(ANNOTATION) && e.contains(want),
                "{text:?}: {e}"
            );
        }
    }
}
