//! Turning YAML documents and API objects into [`ConfigObject`]s.

use std::collections::BTreeMap;
use std::path::Path;

use mesh_proto::{Kind, SpecError, parse_spec};
use serde_json::Value;

use super::{ConfigKey, ConfigObject, LoadError, Origin};

/// The namespace given to namespaced objects whose file names none, as `kubectl apply` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why one object could not be read.
#[derive(Debug)]
pub(super) enum ObjectError {
    /// Not a well-formed object: no apiVersion, kind or name.
    Malformed(String),
    /// Identified, but its spec is invalid.
    Invalid(ConfigKey, SpecError),
}

/// Parses every document of a YAML (or JSON) file.
///
/// Documents are split on `---` lines and parsed one by one, so a broken document is reported
/// with its 1-based index and line, and the documents after it still load. Documents of kinds
/// outside Istio's API groups (Deployments, Services, ...) are skipped; a kind that is not one
/// of a known Istio group's, or not in a version it is served in, is refused with the nearest
/// known kind; a `kind: List` is expanded into its items.
pub fn parse_file(path: &Path, text: &str) -> Vec<Result<ConfigObject, LoadError>> {
    let mut out = Vec::new();
    for (index, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
        let document = index + 1;
        let origin = Origin::File {
            path: path.to_path_buf(),
            document,
        };
        let value: Value = match yaml_serde::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(LoadError::Document {
                    path: path.to_path_buf(),
                    document,
                    message: yaml_message(&e, first_line),
                }));
                continue;
            }
        };
        let items = match value {
            Value::Null => continue,
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                match map.get("items") {
                    Some(Value::Array(items)) => items.clone(),
                    _ => Vec::new(),
                }
            }
            v => vec![v],
        };
        for item in items {
            match object_from_value(item, origin.clone()) {
                Ok(Some(obj)) => out.push(Ok(obj)),
                Ok(None) => {}
                Err(e) => out.push(Err(to_load_error(e, &origin))),
            }
        }
    }
    out
}

/// Runs `validator` over parsed results: a valid object stays, an object with problems becomes
/// one [`LoadError::Invalid`] per problem.
pub fn validate(
    results: Vec<Result<ConfigObject, LoadError>>,
    validator: Option<&dyn super::Validator>,
) -> Vec<Result<ConfigObject, LoadError>> {
    let Some(validator) = validator else {
        return results;
    };
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(obj) => {
                let problems = validator.validate(&obj);
                if problems.is_empty() {
                    out.push(Ok(obj));
                } else {
                    for error in problems {
                        out.push(Err(LoadError::Invalid {
                            origin: obj.origin.to_string(),
                            key: obj.key.clone(),
                            error,
                        }));
                    }
                }
            }
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

pub(super) fn to_load_error(e: ObjectError, origin: &Origin) -> LoadError {
    match (e, origin) {
        (ObjectError::Invalid(key, error), _) => LoadError::Invalid {
            origin: origin.to_string(),
            key,
            error,
        },
        (ObjectError::Malformed(message), Origin::File { path, document }) => LoadError::Document {
            path: path.clone(),
            document: *document,
            message,
        },
        (ObjectError::Malformed(message), Origin::Kube { .. }) => LoadError::Read {
            path: "kubernetes".into(),
            message,
        },
    }
}

/// Reads one object (as JSON) into a typed [`ConfigObject`]; `Ok(None)` for kinds we do not
/// serve.
pub(super) fn object_from_value(
    value: Value,
    origin: Origin,
) -> Result<Option<ConfigObject>, ObjectError> {
    let Value::Object(mut map) = value else {
        return Err(ObjectError::Malformed(
            "document is not a mapping with apiVersion, kind and metadata".into(),
        ));
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ObjectError::Malformed("apiVersion: missing".into())),
    };
    let kind_name = match map.get("kind") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ObjectError::Malformed("kind: missing".into())),
    };
    let Ok(kind) = Kind::from_api_version(&api_version, &kind_name) else {
        // A kind of an Istio group we serve that is not one of its kinds is refused (a
        // misspelling would otherwise be skipped silently); other groups' kinds are skipped.
        if let Some(why) = Kind::refusal(&api_version, &kind_name) {
            return Err(ObjectError::Malformed(why));
        }
        return Ok(None);
    };
    let metadata = match map.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(ObjectError::Malformed(format!(
                "{kind_name}: metadata: missing"
            )));
        }
    };
    let name = match metadata.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ObjectError::Malformed(format!(
                "{kind_name}: metadata.name: missing"
            )));
        }
    };
    let namespace = match metadata.get("namespace") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => DEFAULT_NAMESPACE.to_string(),
    };
    let key = ConfigKey::new(kind, namespace, name);
    let labels = string_map(metadata.get("labels"));
    let annotations = string_map(metadata.get("annotations"));
    let generation = metadata.get("generation").and_then(Value::as_i64);
    let spec = map.remove("spec").unwrap_or(Value::Null);
    let spec = parse_spec(&key.kind, spec).map_err(|e| ObjectError::Invalid(key.clone(), e))?;
    Ok(Some(ConfigObject {
        key,
        api_version,
        labels,
        annotations,
        generation,
        origin,
        spec,
    }))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    match v {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Splits a multi-document YAML text on `---` lines. Returns each document with the 1-based
/// line number it starts on.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        let rest = if trimmed == "---" {
            Some("")
        } else {
            trimmed.strip_prefix("--- ")
        };
        match rest {
            Some(rest) => {
                docs.push((start, std::mem::take(&mut current)));
                start = i + 1;
                // Content after the marker (`--- # comment` or `--- {}`) begins the next one.
                current.push_str(rest);
                current.push('\n');
            }
            None => {
                current.push_str(line);
                current.push('\n');
            }
        }
    }
    docs.push((start, current));
    // A leading `---` yields an empty first document: drop empty ones but keep numbering for
    // those with content, counting only documents that hold something.
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
        })
        .collect()
}

/// The YAML error with its line made relative to the whole file.
fn yaml_message(e: &yaml_serde::Error, first_line: usize) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let line = first_line + loc.line() - 1;
            let base = text.split(" at line ").next().unwrap_or(&text).to_string();
            format!("line {line} column {}: {base}", loc.column())
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SE: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\n";

    #[test]
    fn splits_and_numbers_documents() {
        let text = format!(
            "---\n{SE}metadata:\n  name: a\nspec:\n  hosts: [a.example]\n---\n# only a comment\n---\n{SE}metadata:\n  name: b\n  namespace: ns\nspec:\n  hosts: [b.example]\n"
        );
        let out = parse_file(Path::new("f.yaml"), &text);
        assert_eq!(out.len(), 2);
        let a = out[0].as_ref().unwrap();
        assert_eq!(a.key.name, "a");
        assert_eq!(a.key.namespace, "default");
        let b = out[1].as_ref().unwrap();
        assert_eq!(b.key.namespace, "ns");
        assert_eq!(
            b.origin,
            Origin::File {
                path: "f.yaml".into(),
                document: 2
            }
        );
    }

    #[test]
    fn reports_broken_documents_and_keeps_going() {
        let text = format!(
            "{SE}metadata:\n  name: a\nspec:\n  hosts: [a.example\n---\n{SE}metadata:\n  name: b\nspec:\n  ports:\n  - number: notanumber\n    name: http\n---\n{SE}metadata:\n  name: c\n"
        );
        let out = parse_file(Path::new("f.yaml"), &text);
        assert_eq!(out.len(), 3);
        let e0 = out[0].as_ref().unwrap_err().to_string();
        assert!(e0.starts_with("f.yaml document 1: line "), "{e0}");
        let e1 = out[1].as_ref().unwrap_err().to_string();
        assert!(e1.contains("document 2"), "{e1}");
        assert!(e1.contains("default/b"), "{e1}");
        assert!(e1.contains("spec.ports[0].number"), "{e1}");
        assert_eq!(out[2].as_ref().unwrap().key.name, "c");
    }

    #[test]
    fn refuses_misspelled_istio_kinds_naming_the_nearest() {
        let text = "apiVersion: apps/v1\nkind: Deploymnt\nmetadata: {name: d}\n---\n\
                    apiVersion: networking.istio.io/v1\nkind: VirtualServis\n\
                    metadata: {name: reviews}\nspec: {hosts: [reviews]}\n";
        let out = parse_file(Path::new("f.yaml"), text);
        assert_eq!(out.len(), 1, "the foreign kind is skipped: {out:?}");
        let err = out[0].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("f.yaml") && err.contains("document 2") && err.contains("VirtualServis"),
            "{err}"
        );
        assert!(err.contains("did you mean VirtualService?"), "{err}");
    }

    #[test]
    fn skips_foreign_kinds_and_expands_lists() {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ServiceAccount\n  metadata:\n    name: sa1\n- {}\n",
            "{apiVersion: v1, kind: ServiceAccount, metadata: {name: sa2, namespace: x}}"
        );
        let out = parse_file(Path::new("f.yaml"), &text);
        let names: Vec<_> = out
            .iter()
            .map(|r| r.as_ref().unwrap().key.to_string())
            .collect();
        assert_eq!(
            names,
            vec!["ServiceAccount default/sa1", "ServiceAccount x/sa2"]
        );
    }

    #[test]
    fn missing_identity_is_reported() {
        let out = parse_file(Path::new("f.yaml"), "kind: ServiceEntry\n");
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("apiVersion: missing"), "{e}");
        let out = parse_file(Path::new("f.yaml"), &format!("{SE}metadata: {{}}\n"));
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("metadata.name: missing"), "{e}");
    }
}
