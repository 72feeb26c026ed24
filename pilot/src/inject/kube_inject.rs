//! `pilot kube-inject`: Istio's `istioctl kube-inject`. Reads a YAML stream (a file, or stdin
//! with `-f -`), injects the pod template of every workload in it, and writes the stream
//! again; what it did is reported on stderr, one line per workload, as `linkerd inject` does:
//!
//! ```text
//! deployment "shop/reviews-v1" injected
//! pod "shop/node-exporter" skipped: hostNetwork pod
//! ```
//!
//! The workloads are Pod, Deployment, StatefulSet, DaemonSet, Job, CronJob (its
//! `jobTemplate`), ReplicaSet and ReplicationController, also as items of a `kind: List`.
//! Every other document, and every workload that is not injected, is written back as it was
//! read, comments included; an injected one is written anew (keys sorted). The policy is the
//! one of [`super::pod::decide`], except the namespace label, which kube-inject cannot see:
//! it injects for wherever the output is applied. The first workload that cannot be injected
//! (a malformed annotation, say) stops it with the document's place and the reason.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use serde_json::Value;

use super::pod::{Decision, PodRef, SkipReason, decide, inject};
use super::{InjectConfig, InjectError};

/// Flags of `pilot kube-inject`.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeInjectArgs {
    /// The YAML to inject (`-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: PathBuf,

    /// Write the injected YAML to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The injection config to use instead of the built-in one: the `config` key of
    /// ConfigMap istio-sidecar-injector, or that whole ConfigMap (`kubectl -n istio-system
    /// get configmap istio-sidecar-injector -o yaml`).
    #[arg(
        long = "injection-config",
        visible_alias = "injectConfigFile",
        value_name = "FILE"
    )]
    pub injection_config: Option<PathBuf>,
}

/// The kinds kube-inject injects, and where their pod template is.
pub const WORKLOADS: &[(&str, &str)] = &[
    ("Pod", ""),
    ("Deployment", "/spec/template"),
    ("StatefulSet", "/spec/template"),
    ("DaemonSet", "/spec/template"),
    ("Job", "/spec/template"),
    ("CronJob", "/spec/jobTemplate/spec/template"),
    ("ReplicaSet", "/spec/template"),
    ("ReplicationController", "/spec/template"),
];

/// What kube-inject made of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The stream, its workloads injected.
    pub yaml: String,
    /// One line per workload, in stream order.
    pub report: Vec<Report>,
}

/// What became of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: String,
    /// Empty when the document names none.
    pub namespace: String,
    pub name: String,
    /// `None` when injected.
    pub skipped: Option<SkipReason>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.to_ascii_lowercase();
        let name = if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        match &self.skipped {
            None => write!(f, "{kind} {name:?} injected"),
            Some(why) => write!(f, "{kind} {name:?} skipped: {why}"),
        }
    }
}

/// Runs `pilot kube-inject`.
pub fn run(args: &KubeInjectArgs) -> Result<(), InjectError> {
    let config = match &args.injection_config {
        Some(path) => {
            let text = read(path)?;
            InjectConfig::parse(&text).map_err(|e| InjectError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
        }
        None => InjectConfig::builtin(),
    };
    let input = read(&args.filename)?;
    let out = inject_stream(&config, &input)?;
    let written = match &args.output {
        Some(path) => std::fs::write(path, &out.yaml).map_err(|e| (path.display().to_string(), e)),
        None => std::io::stdout()
            .lock()
            .write_all(out.yaml.as_bytes())
            .map_err(|e| ("(stdout)".to_string(), e)),
    };
    written.map_err(|(path, e)| InjectError::Io {
        path,
        reason: e.to_string(),
    })?;
    let mut stderr = std::io::stderr().lock();
    for line in &out.report {
        let _ = writeln!(stderr, "{line}");
    }
    Ok(())
}

/// A file, or stdin for `-`.
fn read(path: &PathBuf) -> Result<String, InjectError> {
    let io_err = |e: std::io::Error| InjectError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(io_err)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(io_err)
}

/// Injects every workload of the YAML stream `text`.
pub fn inject_stream(config: &InjectConfig, text: &str) -> Result<Output, InjectError> {
    let mut docs = Vec::new();
    let mut report = Vec::new();
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let index = i + 1;
        if is_blank(&doc) {
            if !doc.trim().is_empty() {
                docs.push(doc);
            }
            continue;
        }
        let value: Value = yaml_serde::from_str(&doc).map_err(|e| InjectError::Yaml {
            index,
            reason: e.to_string(),
        })?;
        match inject_document(config, value, index, &mut report)? {
            Some(changed) => docs.push(to_yaml(&changed)),
            None => docs.push(doc),
        }
    }
    let mut yaml = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            yaml.push_str("---\n");
        }
        yaml.push_str(doc);
        if !doc.ends_with('\n') {
            yaml.push('\n');
        }
    }
    Ok(Output { yaml, report })
}

fn to_yaml(v: &Value) -> String {
    // A JSON value always serializes.
    yaml_serde::to_string(v).unwrap_or_default()
}

/// The stream's documents, as text: split at `---` lines (what follows `--- ` on the same
/// line starts the next document).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let rest = if bare == "---" {
            Some("")
        } else {
            bare.strip_prefix("--- ")
                .or_else(|| bare.strip_prefix("---\t"))
        };
        match rest {
            Some(rest) => {
                let mut next = String::new();
                if !rest.trim().is_empty() {
                    next.push_str(rest);
                    next.push('\n');
                }
                docs.push(next);
            }
            None => {
                if let Some(last) = docs.last_mut() {
                    last.push_str(line);
                }
            }
        }
    }
    docs
}

/// Only comments and blank lines.
fn is_blank(doc: &str) -> bool {
    doc.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// Injects one document; `Some` with the new document when it changed.
fn inject_document(
    config: &InjectConfig,
    value: Value,
    index: usize,
    report: &mut Vec<Report>,
) -> Result<Option<Value>, InjectError> {
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        let Some(items) = value.get("items").and_then(Value::as_array) else {
            return Ok(None);
        };
        let mut changed = false;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_place = format!(", item {}", i + 1);
            match inject_object(config, item, index, &item_place, report)? {
                Some(new) => {
                    changed = true;
                    out.push(new);
                }
                None => out.push(item.clone()),
            }
        }
        if !changed {
            return Ok(None);
        }
        let mut list = value;
        list["items"] = Value::Array(out);
        return Ok(Some(list));
    }
    inject_object(config, &value, index, "", report)
}

/// Injects one object if it is a workload; `Some` with the new object when it changed.
fn inject_object(
    config: &InjectConfig,
    object: &Value,
    index: usize,
    item: &str,
    report: &mut Vec<Report>,
) -> Result<Option<Value>, InjectError> {
    let Some(kind) = object.get("kind").and_then(Value::as_str) else {
        return Ok(None);
    };
    let Some((_, template_path)) = WORKLOADS.iter().find(|(k, _)| *k == kind) else {
        return Ok(None);
    };
    let meta = &object["metadata"];
    let text = |key: &str| {
        meta.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (namespace, name) = (text("namespace"), text("name"));
    let field = if template_path.is_empty() {
        "(pod)".to_string()
    } else {
        template_path.trim_start_matches('/').replace('/', ".")
    };
    let doc_err = |field: &str, reason: String| InjectError::Document {
        index,
        item: item.to_string(),
        kind: kind.to_string(),
        name: if name.is_empty() {
            "(unnamed)".into()
        } else {
            name.clone()
        },
        field: field.to_string(),
        reason,
    };
    let (pod_ref, template) = if template_path.is_empty() {
        (PodRef::new("", meta, None), object)
    } else {
        let Some(template) = object.pointer(template_path).filter(|t| t.is_object()) else {
            return Err(doc_err(
                &field,
                format!("a {kind} needs a pod template here"),
            ));
        };
        let pod_ref = PodRef {
            namespace: namespace.clone(),
            name: if name.is_empty() {
                "(unnamed)".into()
            } else {
                name.clone()
            },
            workload: Some(kind.to_string()),
        };
        (pod_ref, template)
    };
    let decision =
        decide(config, &pod_ref, template).map_err(|e| doc_err(&field, e.to_string()))?;
    let skipped = match decision {
        Decision::Inject => None,
        Decision::Skip(why) => Some(why),
    };
    let entry = Report {
        kind: kind.to_string(),
        namespace,
        name: name.clone(),
        skipped: skipped.clone(),
    };
    if skipped.is_some() {
        report.push(entry);
        return Ok(None);
    }
    let injected =
        inject(config, &pod_ref, template).map_err(|e| doc_err(&field, e.to_string()))?;
    report.push(entry);
    if template_path.is_empty() {
        return Ok(Some(injected.pod));
    }
    let mut out = object.clone();
    if let Some(slot) = out.pointer_mut(template_path) {
        *slot = injected.pod;
    }
    Ok(Some(out))
}
