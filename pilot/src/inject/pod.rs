//! One pod: whether it is injected ([`decide`]) and the injection itself ([`inject`]).
//!
//! Both work on a pod as JSON (`{metadata, spec}`: a Pod, or the `template` of a workload),
//! so what Kubernetes adds later and what this version does not know passes through.
//!
//! The policy, as Istio's:
//!
//! - the namespace label `istio-injection=enabled` is the webhook's `namespaceSelector`, so a
//!   pod reaching the webhook is in such a namespace (kube-inject injects wherever the output
//!   is applied);
//! - never in `kube-system` or `kube-public`, never a `hostNetwork` pod (its iptables would be
//!   the node's), never a pod already injected (it has the `sidecar.istio.io/status`
//!   annotation);
//! - the pod's label, else its annotation, `sidecar.istio.io/inject` (`true`/`false`, also
//!   `yes`/`no`, `on`/`off`, `y`/`n`) overrides the config's `policy`; any other value is an
//!   error naming the pod and the annotation.
//!
//! The injection renders the config's template with the values of [`super::config`] (pod
//! annotations over the config's `values`, then what is computed for this pod) and merges the
//! result into the pod: the template's init containers first, then its containers as native
//! sidecars (`restartPolicy: Always`) before the app's own init containers, or, in `plain`
//! mode, its init containers after the app's and its containers after the app's. A container
//! or volume of the template whose name the pod already uses is an error (Kubernetes would
//! refuse the pod anyway, with a less clear message).

use std::fmt;

use serde_json::{Map, Value, json};

use super::config::{ANNOTATIONS, Check, check_value, scalar_text};
use super::template::{self, Values};
use super::{INJECT_ANNOTATION, InjectConfig, InjectError, Policy, STATUS_ANNOTATION, SidecarMode};

/// Namespaces whose pods are never injected.
pub const IGNORED_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];

/// The proxy's own inbound ports, never captured (`pilot-agent iptables -d`): Envoy's
/// Prometheus port, the health port and the agent's status port.
pub const PROXY_PORTS: [u16; 3] = [15090, 15021, 15020];

/// Names a pod, or a workload's pod template, in messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodRef {
    /// Empty when unknown (a kube-inject document without a namespace).
    pub namespace: String,
    /// The pod's name; for a pod to be named by the API server, its `generateName` and `*`.
    pub name: String,
    /// The kind of the workload whose template this is; `None` for a Pod.
    pub workload: Option<String>,
}

impl PodRef {
    /// The pod (or template) of `object`'s metadata, in `namespace` when its metadata has
    /// none.
    pub fn new(namespace: &str, metadata: &Value, workload: Option<&str>) -> PodRef {
        let text = |key: &str| {
            metadata
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let name = match (text("name"), text("generateName")) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) => format!("{prefix}*"),
            (None, None) => "(unnamed)".to_string(),
        };
        PodRef {
            namespace: text("namespace").unwrap_or(namespace).to_string(),
            name,
            workload: workload.map(str::to_string),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)?;
        } else {
            write!(f, "{}/{}", self.namespace, self.name)?;
        }
        if let Some(kind) = &self.workload {
            write!(f, " ({kind} template)")?;
        }
        Ok(())
    }
}

/// Whether a pod gets the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(SkipReason),
}

/// Why a pod is not injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `kube-system` or `kube-public`.
    IgnoredNamespace(String),
    /// `hostNetwork: true`: the pod's iptables would be the node's.
    HostNetwork,
    /// The `sidecar.istio.io/status` annotation is there.
    AlreadyInjected,
    /// `sidecar.istio.io/inject` says no (`source` is `label` or `annotation`).
    OptedOut { source: &'static str, value: String },
    /// The config's policy is `disabled` and the pod does not opt in.
    NotOptedIn,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::IgnoredNamespace(ns) => {
                write!(f, "namespace {ns} is never injected")
            }
            SkipReason::HostNetwork => write!(f, "hostNetwork pod"),
            SkipReason::AlreadyInjected => {
                write!(f, "already injected ({STATUS_ANNOTATION} is set)")
            }
            SkipReason::OptedOut { source, value } => {
                write!(f, "opted out ({source} {INJECT_ANNOTATION}: {value:?})")
            }
            SkipReason::NotOptedIn => write!(
                f,
                "policy is disabled and the pod does not say {INJECT_ANNOTATION}: \"true\""
            ),
        }
    }
}

/// An injected pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// The pod (`{metadata, spec, ...}`) with the sidecar.
    pub pod: Value,
    /// The value of its `sidecar.istio.io/status` annotation.
    pub status: String,
}

/// Whether `pod` (`{metadata, spec}`) is injected under `config`. A
/// `sidecar.istio.io/inject` that is not a yes or a no is an error.
pub fn decide(
    config: &InjectConfig,
    pod_ref: &PodRef,
    pod: &Value,
) -> Result<Decision, InjectError> {
    if IGNORED_NAMESPACES.contains(&pod_ref.namespace.as_str()) {
        return Ok(Decision::Skip(SkipReason::IgnoredNamespace(
            pod_ref.namespace.clone(),
        )));
    }
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Ok(Decision::Skip(SkipReason::HostNetwork));
    }
    let meta = &pod["metadata"];
    if meta["annotations"].get(STATUS_ANNOTATION).is_some() {
        return Ok(Decision::Skip(SkipReason::AlreadyInjected));
    }
    for (source, map) in [("label", "labels"), ("annotation", "annotations")] {
        let Some(v) = meta[map].get(INJECT_ANNOTATION) else {
            continue;
        };
        let text = match v {
            Value::Bool(b) => b.to_string(),
            other => scalar_text(other).unwrap_or_default(),
        };
        return match text.trim().to_ascii_lowercase().as_str() {
            "" => continue,
            "true" | "yes" | "y" | "on" => Ok(Decision::Inject),
            "false" | "no" | "n" | "off" => Ok(Decision::Skip(SkipReason::OptedOut {
                source,
                value: text,
            })),
            _ => Err(InjectError::Annotation {
                pod: pod_ref.clone(),
                annotation: INJECT_ANNOTATION.to_string(),
                value: display_value(v),
                reason: format!("expected \"true\" or \"false\" (in the pod's {map})"),
            }),
        };
    }
    Ok(match config.policy {
        Policy::Enabled => Decision::Inject,
        Policy::Disabled => Decision::Skip(SkipReason::NotOptedIn),
    })
}

/// Injects the sidecar into `pod` (`{metadata, spec}`), whatever [`decide`] says (callers
/// ask it first).
pub fn inject(
    config: &InjectConfig,
    pod_ref: &PodRef,
    pod: &Value,
) -> Result<Injected, InjectError> {
    let pod_err = |field: &str, reason: &str| InjectError::Pod {
        pod: pod_ref.clone(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    let Some(obj) = pod.as_object() else {
        return Err(pod_err("(pod)", "expected a mapping"));
    };
    let meta = match obj.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(pod_err("metadata", "expected a mapping")),
    };
    let Some(spec) = obj.get("spec").and_then(Value::as_object) else {
        return Err(pod_err("spec", "expected a mapping"));
    };
    let mut app_containers = list_of(spec, "containers", pod_ref)?;
    if app_containers.is_empty() {
        return Err(pod_err("spec.containers", "the pod has no containers"));
    }
    let app_inits = list_of(spec, "initContainers", pod_ref)?;
    let volumes = list_of(spec, "volumes", pod_ref)?;
    let pull_secrets = list_of(spec, "imagePullSecrets", pod_ref)?;

    let values = values_for(config, pod_ref, &meta, spec, &app_containers)?;
    let rendered = template::render(&config.template, &values)?.unwrap_or(json!({}));
    let part = |key: &str| -> Vec<Value> {
        rendered
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (t_inits, mut t_containers, t_volumes, t_secrets) = (
        part("initContainers"),
        part("containers"),
        part("volumes"),
        part("imagePullSecrets"),
    );

    // The app's HTTP probes through the agent (they would meet the inbound listener's mutual
    // TLS otherwise).
    if super::probes::wanted(meta.get("annotations").unwrap_or(&Value::Null)) {
        let probers = super::probes::rewrite(&mut app_containers);
        if !probers.is_empty() {
            super::probes::set_env(&mut t_containers, super::PROXY_CONTAINER, &probers);
        }
    }

    // proxy.istio.io/config: per-pod settings of the agent.
    let proxy_env =
        super::proxy_config::env_of(pod_ref, meta.get("annotations").unwrap_or(&Value::Null))?;
    if !proxy_env.is_empty() {
        super::proxy_config::add_env(&mut t_containers, super::PROXY_CONTAINER, proxy_env);
    }

    // Names must not clash with the pod's.
    let taken: Vec<&str> = app_inits
        .iter()
        .chain(&app_containers)
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    for c in t_inits.iter().chain(&t_containers) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if taken.contains(&name) {
            return Err(pod_err(
                "spec.containers",
                &format!("the pod already has a container named {name}, which injection adds"),
            ));
        }
    }
    let volume_names: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    for v in &t_volumes {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if volume_names.contains(&name) {
            return Err(pod_err(
                "spec.volumes",
                &format!("the pod already has a volume named {name}, which injection adds"),
            ));
        }
    }

    let names = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let (inits, containers, status_inits, status_containers) = match config.sidecar_mode {
        SidecarMode::Native => {
            for c in &mut t_containers {
                if let Some(c) = c.as_object_mut() {
                    c.insert("restartPolicy".into(), json!("Always"));
                }
            }
            let added: Vec<Value> = t_inits.iter().chain(&t_containers).cloned().collect();
            let status_inits = names(&added);
            let inits: Vec<Value> = added.into_iter().chain(app_inits).collect();
            (inits, app_containers, status_inits, Vec::new())
        }
        SidecarMode::Plain => {
            let (si, sc) = (names(&t_inits), names(&t_containers));
            let inits: Vec<Value> = app_inits.into_iter().chain(t_inits).collect();
            let containers: Vec<Value> = app_containers.into_iter().chain(t_containers).collect();
            (inits, containers, si, sc)
        }
    };
    let status_volumes = names(&t_volumes);
    let mut secrets = pull_secrets;
    let mut status_secrets = Vec::new();
    for s in t_secrets {
        if !secrets.contains(&s) {
            status_secrets.extend(names(std::slice::from_ref(&s)));
            secrets.push(s);
        }
    }

    let mut new_spec = spec.clone();
    if !inits.is_empty() {
        new_spec.insert("initContainers".into(), Value::Array(inits));
    }
    new_spec.insert("containers".into(), Value::Array(containers));
    if !t_volumes.is_empty() {
        let all: Vec<Value> = volumes.into_iter().chain(t_volumes).collect();
        new_spec.insert("volumes".into(), Value::Array(all));
    }
    if !status_secrets.is_empty() {
        new_spec.insert("imagePullSecrets".into(), Value::Array(secrets));
    }

    let status = status_json(
        &config.version,
        &status_inits,
        &status_containers,
        &status_volumes,
        &status_secrets,
    );
    let mut new_meta = meta;
    let annotations = new_meta.entry("annotations").or_insert_with(|| json!({}));
    if annotations.is_null() {
        *annotations = json!({});
    }
    let Some(annotations) = annotations.as_object_mut() else {
        return Err(pod_err("metadata.annotations", "expected a mapping"));
    };
    annotations.insert(STATUS_ANNOTATION.into(), json!(status));

    let mut out = obj.clone();
    out.insert("metadata".into(), Value::Object(new_meta));
    out.insert("spec".into(), Value::Object(new_spec));
    Ok(Injected {
        pod: Value::Object(out),
        status,
    })
}

/// The list `spec[key]` (empty when absent), each item a mapping.
fn list_of(
    spec: &Map<String, Value>,
    key: &str,
    pod_ref: &PodRef,
) -> Result<Vec<Value>, InjectError> {
    let items = match spec.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(InjectError::Pod {
                pod: pod_ref.clone(),
                field: format!("spec.{key}"),
                reason: "expected a list".into(),
            });
        }
    };
    for (i, item) in items.iter().enumerate() {
        if !item.is_object() {
            return Err(InjectError::Pod {
                pod: pod_ref.clone(),
                field: format!("spec.{key}[{i}]"),
                reason: "expected a mapping".into(),
            });
        }
    }
    Ok(items.clone())
}

/// The annotation's JSON, with Istio's keys in Istio's order; `null` for an empty list.
fn status_json(
    version: &str,
    inits: &[String],
    containers: &[String],
    volumes: &[String],
    secrets: &[String],
) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "null".to_string()
        } else {
            Value::from(items.to_vec()).to_string()
        }
    };
    format!(
        r#"{{"version":{},"initContainers":{},"containers":{},"volumes":{},"imagePullSecrets":{}}}"#,
        Value::from(version),
        list(inits),
        list(containers),
        list(volumes),
        list(secrets)
    )
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The values this pod's template is rendered with: the config's, the pod's annotations over
/// them, and what is computed for the pod.
fn values_for(
    config: &InjectConfig,
    pod_ref: &PodRef,
    meta: &Map<String, Value>,
    spec: &Map<String, Value>,
    app_containers: &[Value],
) -> Result<Values, InjectError> {
    let mut values = config.values.clone();
    let annotations = match meta.get("annotations") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(InjectError::Pod {
                pod: pod_ref.clone(),
                field: "metadata.annotations".into(),
                reason: "expected a mapping".into(),
            });
        }
    };
    let annotation_err =
        |annotation: &str, value: &Value, reason: String| InjectError::Annotation {
            pod: pod_ref.clone(),
            annotation: annotation.to_string(),
            value: display_value(value),
            reason,
        };
    let mut annotated = Vec::new();
    for (annotation, name, check) in ANNOTATIONS {
        let Some(v) = annotations.get(*annotation) else {
            continue;
        };
        let text = scalar_text(v)
            .ok_or_else(|| annotation_err(annotation, v, "expected a string".into()))?;
        check_value(*check, &text).map_err(|r| annotation_err(annotation, v, r))?;
        let typed = match check {
            Check::Seconds | Check::Positive => text
                .trim()
                .parse::<u32>()
                .map(Value::from)
                .unwrap_or(Value::String(text)),
            _ => Value::String(text.trim().to_string()),
        };
        values.insert((*name).to_string(), typed);
        annotated.push(*name);
    }

    let mode = values
        .get("interceptionMode")
        .and_then(scalar_text)
        .unwrap_or_else(|| "REDIRECT".into());
    if mode == "TPROXY" {
        let reason = "TPROXY interception is not supported yet by pilot-agent iptables; use \
                      REDIRECT (the default)"
            .to_string();
        return Err(if annotated.contains(&"interceptionMode") {
            let annotation = "sidecar.istio.io/interceptionMode";
            annotation_err(annotation, &annotations[annotation], reason)
        } else {
            InjectError::Config {
                field: "values.interceptionMode".into(),
                reason,
            }
        });
    }

    // What the pod's containers declare.
    let mut ports = Vec::new();
    let mut port_numbers = Vec::new();
    let mut container_names = Vec::new();
    for (i, c) in app_containers.iter().enumerate() {
        if let Some(name) = c.get("name").and_then(Value::as_str) {
            container_names.push(name.to_string());
        }
        match c.get("ports") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for p in list {
                    ports.push(p.clone());
                    if let Some(n) = p.get("containerPort").and_then(Value::as_u64) {
                        let is_tcp = p
                            .get("protocol")
                            .and_then(Value::as_str)
                            .is_none_or(|proto| proto == "TCP");
                        if is_tcp && !port_numbers.contains(&n) {
                            port_numbers.push(n);
                        }
                    }
                }
            }
            Some(_) => {
                return Err(InjectError::Pod {
                    pod: pod_ref.clone(),
                    field: format!("spec.containers[{i}].ports"),
                    reason: "expected a list".into(),
                });
            }
        }
    }
    if values.get("includeInboundPorts").is_none_or(Value::is_null) {
        let declared: Vec<String> = port_numbers.iter().map(u64::to_string).collect();
        values.insert("includeInboundPorts".into(), json!(declared.join(",")));
    }
    let mut excluded: Vec<String> = PROXY_PORTS.iter().map(u16::to_string).collect();
    if let Some(more) = values.get("excludeInboundPorts").and_then(scalar_text) {
        excluded.extend(
            more.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && !excluded.iter().any(|e| e == p))
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
    }
    let service_account = ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|k| {
            spec.get(*k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default");
    let labels = meta
        .get("labels")
        .filter(|l| l.is_object())
        .cloned()
        .unwrap_or(json!({}));
    let computed = [
        ("excludeInboundPortsAll", json!(excluded.join(","))),
        ("captureTraffic", json!(mode != "NONE")),
        ("proxyCapabilities", Value::Null),
        ("serviceAccount", json!(service_account)),
        ("podPorts", json!(Value::Array(ports).to_string())),
        ("appContainers", json!(container_names.join(","))),
        ("labelsJSON", json!(labels.to_string())),
        ("version", json!(env!("CARGO_PKG_VERSION"))),
    ];
    for (name, v) in computed {
        values.insert(name.to_string(), v);
    }
    Ok(values)
}
