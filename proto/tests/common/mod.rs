//! Helpers shared by the integration tests: reading multi-document YAML, and checking documents
//! and schemas the way the Kubernetes API server would.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use mesh_proto::{Kind, Spec, SpecError, parse_spec};
use serde::Deserialize;
use serde_json::Value;

/// One document of a YAML file.
#[derive(Debug)]
pub struct Doc {
    /// File and position of the document, for messages.
    pub origin: String,
    /// The document as JSON.
    pub value: Value,
}

impl Doc {
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn spec(&self) -> Value {
        self.value.get("spec").cloned().unwrap_or(Value::Null)
    }
}

/// Every non-empty document of a YAML file, converted to JSON.
pub fn documents(path: &Path) -> Vec<Doc> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = Vec::new();
    for (i, de) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        let yaml = yaml_serde::Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        let value = serde_json::to_value(&yaml)
            .unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        if value.is_null() {
            continue;
        }
        docs.push(Doc {
            origin: format!("{} (document {})", path.display(), i + 1),
            value,
        });
    }
    docs
}

/// Every `.yaml`/`.yml` file under `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// What became of a document.
#[derive(Debug)]
pub enum Outcome {
    /// Not an Istio kind (Deployment, Service…) or a CRD: not ours to parse.
    Skipped,
    /// An Istio kind this control plane does not type.
    Untyped(Kind),
    /// Parsed into its typed spec.
    Parsed(Kind, Spec),
}

/// Resolves and parses a document as the control plane would.
pub fn parse_doc(doc: &Doc) -> Result<Outcome, String> {
    if doc.kind() == "CustomResourceDefinition" {
        return Ok(Outcome::Skipped);
    }
    let kind = match Kind::from_api_version(doc.api_version(), doc.kind()) {
        Ok(kind) => kind,
        Err(SpecError::UnknownKind { .. }) if !doc.api_version().contains(".istio.io/") => {
            return Ok(Outcome::Skipped);
        }
        Err(e) => return Err(format!("{}: {e}", doc.origin)),
    };
    if matches!(kind, Kind::Other { .. }) {
        return Ok(Outcome::Untyped(kind));
    }
    let spec = parse_spec(&kind, doc.spec()).map_err(|e| format!("{}: {kind}: {e}", doc.origin))?;
    Ok(Outcome::Parsed(kind, spec))
}

/// The OpenAPI schema of `spec` in the generated CRD of `kind`, at `version`.
pub fn spec_schema(kind: &Kind, version: &str) -> Value {
    let crd = mesh_proto::crd::crd(kind).unwrap_or_else(|| panic!("{kind} has no CRD"));
    let v = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .unwrap_or_else(|| panic!("{kind} has no version {version}"));
    let schema = serde_json::to_value(
        v.schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    schema["properties"]["spec"].clone()
}

/// Checks a value against a CRD schema the way the API server validates and prunes: every
/// problem (a wrong type, a field the schema does not know and the server would silently drop,
/// a missing required field, a value outside an enum) is reported with its path.
pub fn check_value(path: &str, value: &Value, schema: &Value, problems: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
    if value.is_null() {
        // The API server drops nulls of non-nullable fields; parse_spec ignores them too.
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            problems.push(format!("{path}: expected an integer or a string"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                problems.push(format!("{path}: expected an object"));
                return;
            };
            if let Some(max) = schema["maxProperties"].as_u64()
                && obj.len() as u64 > max
            {
                problems.push(format!("{path}: more than {max} properties"));
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && (obj.len() as u64) < min
            {
                problems.push(format!("{path}: fewer than {min} properties"));
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap();
                if !obj.contains_key(name) {
                    problems.push(format!("{path}: missing required field {name}"));
                }
            }
            for (key, v) in obj {
                let sub = format!("{path}.{key}");
                if let Some(prop) = schema["properties"].get(key) {
                    check_value(&sub, v, prop, problems);
                } else if let Some(additional) = schema.get("additionalProperties") {
                    check_value(&sub, v, additional, problems);
                } else if !preserve {
                    problems.push(format!("{sub}: unknown to the schema (would be pruned)"));
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                problems.push(format!("{path}: expected an array"));
                return;
            };
            for (i, item) in items.iter().enumerate() {
                check_value(&format!("{path}[{i}]"), item, &schema["items"], problems);
            }
        }
        Some("string") if !value.is_string() => problems.push(format!("{path}: expected a string")),
        Some("integer") if !(value.is_i64() || value.is_u64()) => {
            problems.push(format!("{path}: expected an integer"))
        }
        Some("number") if !value.is_number() => problems.push(format!("{path}: expected a number")),
        Some("boolean") if !value.is_boolean() => {
            problems.push(format!("{path}: expected a boolean"))
        }
        Some(_) => {}
        None if preserve => {}
        None => problems.push(format!("{path}: schema node has no type")),
    }
}

/// Checks a CRD schema against the rules for structural schemas that the API server enforces:
/// every node typed (or int-or-string / preserve-unknown-fields), no `additionalProperties`
/// beside `properties`, no types, descriptions, defaults or nullability inside `oneOf`, `anyOf`,
/// `allOf` or `not`, and no `$ref`.
pub fn check_structural(path: &str, schema: &Value, in_junctor: bool, problems: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "definitions",
        "$schema",
        "patternProperties",
        "const",
    ] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: has {forbidden}"));
        }
    }
    if in_junctor {
        for forbidden in [
            "type",
            "description",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if obj.contains_key(forbidden) {
                problems.push(format!("{path}: {forbidden} inside a junctor"));
            }
        }
    } else {
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if !obj.contains_key("type") && !int_or_string && !preserve {
            problems.push(format!("{path}: no type"));
        }
        if obj.get("type") == Some(&Value::String("array".into())) && !obj.contains_key("items") {
            problems.push(format!("{path}: array without items"));
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(additional) = obj.get("additionalProperties") {
        if additional.is_boolean() {
            problems.push(format!("{path}: boolean additionalProperties"));
        } else {
            check_structural(
                &format!("{path}.additionalProperties"),
                additional,
                in_junctor,
                problems,
            );
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            check_structural(&format!("{path}.{name}"), prop, in_junctor, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, in_junctor, problems);
    }
    for junctor in ["oneOf", "anyOf", "allOf"] {
        for (i, sub) in obj
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_structural(&format!("{path}.{junctor}[{i}]"), sub, true, problems);
        }
    }
    if let Some(not) = obj.get("not") {
        check_structural(&format!("{path}.not"), not, true, problems);
    }
}

/// The directory holding the shared conformance corpus, if this checkout has one:
/// `$MESH_CONFORMANCE_DIR`, or `../shared/conformance` beside the workspace.
pub fn conformance_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("MESH_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"),
    };
    dir.is_dir().then_some(dir)
}

/// This crate's own fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Parses every document under `dir`, checks each typed one against its CRD schema and checks
/// that it survives a round trip through its typed form. Returns the kinds parsed and the
/// problems found.
pub fn check_corpus(dir: &Path) -> (Vec<(String, Kind)>, Vec<String>, Vec<String>) {
    let mut parsed = Vec::new();
    let mut untyped = Vec::new();
    let mut problems = Vec::new();
    for file in yaml_files(dir) {
        for doc in documents(&file) {
            match parse_doc(&doc) {
                Err(e) => problems.push(e),
                Ok(Outcome::Skipped) => {}
                Ok(Outcome::Untyped(kind)) => untyped.push(format!("{}: {kind}", doc.origin)),
                Ok(Outcome::Parsed(kind, spec)) => {
                    if kind != Kind::ServiceAccount {
                        let version = doc.api_version().rsplit('/').next().unwrap();
                        let schema = spec_schema(&kind, version);
                        let mut found = Vec::new();
                        check_value("spec", &strip_nulls(doc.spec()), &schema, &mut found);
                        problems.extend(
                            found
                                .into_iter()
                                .map(|p| format!("{}: {kind}: {p}", doc.origin)),
                        );
                        // What the typed spec writes, it reads back the same.
                        match parse_spec(&kind, spec.to_json()) {
                            Ok(again) if again == spec => {}
                            Ok(again) => problems.push(format!(
                                "{}: {kind}: round trip changed the spec: {spec:?} became {again:?}",
                                doc.origin
                            )),
                            Err(e) => problems.push(format!("{}: {kind}: round trip: {e}", doc.origin)),
                        }
                    }
                    parsed.push((doc.origin.clone(), kind));
                }
            }
        }
    }
    (parsed, untyped, problems)
}

fn strip_nulls(mut value: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    if value.is_null() {
        Value::Object(Default::default())
    } else {
        value
    }
}
