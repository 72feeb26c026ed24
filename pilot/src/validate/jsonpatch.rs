//! RFC 6902 JSON patches from the difference of two documents: what the `/inject` webhook
//! answers, the ops that turn the pod the API server sent into the injected pod.
//!
//! Mappings are compared key by key (a key only in the old document is removed, one only in
//! the new is added, a changed scalar or list is replaced); a list that only grew at its end
//! gets `add` ops at `/-`, one that only grew at its start (the native sidecars before the
//! app's init containers) gets `add` ops at its first indexes, and any other changed list is
//! replaced whole. Keys are escaped as RFC 6901 says (`~` as `~0`, `/` as `~1`), so an
//! annotation such as `sidecar.istio.io/status` has the path
//! `/metadata/annotations/sidecar.istio.io~1status`.

use serde_json::{Value, json};

/// The ops that turn `old` into `new` (none when they are equal).
pub fn diff(old: &Value, new: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at(&mut String::new(), old, new, &mut ops);
    ops
}

/// One path segment, escaped (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff_at(path: &mut String, old: &Value, new: &Value, ops: &mut Vec<Value>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(key))}));
            }
            for (key, v) in b {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(key));
                match a.get(key) {
                    None => ops.push(json!({"op": "add", "path": path.as_str(), "value": v})),
                    Some(old_v) => diff_at(path, old_v, v, ops),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) if b.len() > a.len() && b.starts_with(a) => {
            for v in &b[a.len()..] {
                ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": v}));
            }
        }
        (Value::Array(a), Value::Array(b)) if b.len() > a.len() && b.ends_with(a) => {
            for (i, v) in b[..b.len() - a.len()].iter().enumerate() {
                ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": v}));
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": new})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(doc: &Value, ops: &[Value]) -> Value {
        let patch: json_patch::Patch = serde_json::from_value(Value::from(ops.to_vec())).unwrap();
        let mut doc = doc.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn keys_are_escaped_and_the_patch_applies() {
        let old = json!({"metadata": {"annotations": {"a/b": "1", "t~x": "2", "gone": 3}},
                         "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "i"}],
                                  "volumes": [{"name": "v"}]}});
        let new = json!({"metadata": {"annotations": {"a/b": "one", "t~x": "2", "c/d~e": "new"}},
                         "spec": {"containers": [{"name": "app"}, {"name": "proxy"}],
                                  "initContainers": [{"name": "init"}, {"name": "i"}],
                                  "volumes": [{"name": "w"}], "securityContext": {"fsGroup": 1}}});
        let ops = diff(&old, &new);
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert!(paths.contains(&"/metadata/annotations/a~1b"), "{paths:?}");
        assert!(
            paths.contains(&"/metadata/annotations/c~1d~0e"),
            "{paths:?}"
        );
        assert!(paths.contains(&"/spec/containers/-"), "{paths:?}");
        assert!(paths.contains(&"/spec/initContainers/0"), "{paths:?}");
        assert_eq!(apply(&old, &ops), new);
        assert!(diff(&new, &new).is_empty());
        // Whatever the shapes, applying the diff gives the new document.
        for (a, b) in [
            (json!(null), json!({"a": 1})),
            (json!({"a": [1, 2]}), json!({"a": [2, 1]})),
            (json!({"a": [1, 2]}), json!({"a": [1]})),
            (json!({"a": {"b": 1}}), json!({"a": null})),
            (json!({"": {"~": 1}}), json!({"": {"~": 2, "/": 3}})),
            (json!([1]), json!([0, 1])),
        ] {
            assert_eq!(apply(&a, &diff(&a, &b)), b, "{a} -> {b}");
        }
    }
}
