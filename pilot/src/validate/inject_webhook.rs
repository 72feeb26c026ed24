//! The sidecar injector (Istio's `sidecar-injector`), `POST /inject` on the webhook's HTTPS
//! port: the API server sends each Pod being created in a namespace labelled
//! `istio-injection=enabled` (the MutatingWebhookConfiguration's `namespaceSelector`) as an
//! `admission.k8s.io/v1` AdmissionReview, and the answer allows it with a JSON patch
//! (RFC 6902, [`super::jsonpatch`]) that turns it into the pod [`crate::inject::inject`]
//! makes: the same injection as `pilot kube-inject`, under the same policy
//! ([`crate::inject::decide`]: the pod's `sidecar.istio.io/inject`, the config's `policy`,
//! never kube-system, kube-public, hostNetwork pods or pods already injected).
//!
//! - A pod that is not injected, another kind, another operation: allowed, no patch.
//! - A pod that cannot be injected (a malformed annotation, a clashing container name):
//!   denied, code 400, with the pod (its `generateName` and `*` when the API server has not
//!   named it yet) and the annotation or field, so `kubectl` and the ReplicaSet's events say
//!   why.
//! - A body that is not an AdmissionReview: HTTP 400 with the reason.
//!
//! The config is the `config` key of ConfigMap `istio-sidecar-injector` as mounted
//! (`--injection-config`, the built-in one without it). [`Injector::watch`] reads it at start
//! (an invalid file stops Pilot there) and every few seconds after: a new valid version serves
//! from the next review on; an invalid one is refused (logged with the field, counted in
//! `sidecar_injection_config_refused_total`, shown on `/debug/injectz`) and the last good one
//! keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::ByteString;
use mesh_runtime::Shutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::jsonpatch;
use super::webhook::{AdmissionRequest, AdmissionReview, MAX_REVIEW, WebhookError};
use crate::inject::{
    Decision, InjectConfig, InjectError, PodRef, Policy, SidecarMode, SkipReason, decide, inject,
};

/// How often the config file is looked at (the kubelet updates a mounted ConfigMap within
/// about a minute of its change).
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Why the injection config cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    #[error("cannot read the injection config {path} (--injection-config): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} (--injection-config): {source}")]
    Invalid { path: PathBuf, source: InjectError },
}

/// The config in use.
#[derive(Debug)]
pub struct Served {
    pub config: InjectConfig,
    pub loaded_at: SystemTime,
}

/// What `/inject` injects with: the current config, and how its file fares.
#[derive(Debug, Clone)]
pub struct Injector {
    file: Option<PathBuf>,
    current: watch::Receiver<Arc<Served>>,
    refused: watch::Receiver<Option<String>>,
    metrics: InjectMetrics,
}

/// The config file, looked at again by [`ConfigFile::reload`].
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    /// The text last read, served or refused; `None` after a failed read.
    last: Option<String>,
    current: watch::Sender<Arc<Served>>,
    refused: watch::Sender<Option<String>>,
    metrics: InjectMetrics,
}

/// What a look at the file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded,
    Refused,
}

/// Istio's injector metrics, and the config file's.
#[derive(Debug, Clone, Default)]
pub struct InjectMetrics {
    requests: Counter,
    injected: Counter,
    skipped: Counter,
    failed: Counter,
    config_reloads: Counter,
    config_refused: Counter,
}

/// What became of one review.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allowed with a patch.
    Injected,
    /// A pod the policy does not inject: allowed, no patch.
    Skipped(SkipReason),
    /// Not a Pod being created: allowed, no patch.
    NotAPodCreate,
    /// Denied with this message.
    Denied(String),
}

// === impl Injector ===

impl Injector {
    /// Always `config`, with no file.
    pub fn fixed(config: InjectConfig) -> Injector {
        let (_, current) = watch::channel(Arc::new(Served {
            config,
            loaded_at: SystemTime::now(),
        }));
        let (_, refused) = watch::channel(None);
        Injector {
            file: None,
            current,
            refused,
            metrics: InjectMetrics::default(),
        }
    }

    /// Reads the file (the built-in config without one); the file is looked at again by the
    /// [`ConfigFile`] returned with it.
    pub fn load(path: Option<PathBuf>) -> Result<(Injector, Option<ConfigFile>), InjectorError> {
        let Some(path) = path else {
            return Ok((Injector::fixed(InjectConfig::builtin()), None));
        };
        let text = std::fs::read_to_string(&path).map_err(|source| InjectorError::Read {
            path: path.clone(),
            source,
        })?;
        let config = InjectConfig::parse(&text).map_err(|source| InjectorError::Invalid {
            path: path.clone(),
            source,
        })?;
        let (current_tx, current) = watch::channel(Arc::new(Served {
            config,
            loaded_at: SystemTime::now(),
        }));
        let (refused_tx, refused) = watch::channel(None);
        let metrics = InjectMetrics::default();
        let file = ConfigFile {
            path: path.clone(),
            last: Some(text),
            current: current_tx,
            refused: refused_tx,
            metrics: metrics.clone(),
        };
        let injector = Injector {
            file: Some(path),
            current,
            refused,
            metrics,
        };
        Ok((injector, Some(file)))
    }

    /// [`Injector::load`], and the file looked at every few seconds until `shutdown`.
    pub fn watch(path: Option<PathBuf>, shutdown: Shutdown) -> Result<Injector, InjectorError> {
        let (injector, file) = Injector::load(path)?;
        if let Some(file) = file {
            tokio::spawn(file.run(shutdown));
        }
        Ok(injector)
    }

    /// The config to inject with now.
    pub fn served(&self) -> Arc<Served> {
        self.current.borrow().clone()
    }

    pub fn metrics(&self) -> &InjectMetrics {
        &self.metrics
    }

    /// `/debug/injectz`: the file, a summary of the config in use, and why the file as it is
    /// now was refused (`null` when it serves).
    pub fn status(&self) -> Value {
        let served = self.served();
        let c = &served.config;
        let names = |key: &str| -> Vec<Value> {
            c.template
                .get(key)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.get("name").cloned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let loaded_at = served
            .loaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        json!({
            "file": self.file.as_ref().map(|p| p.display().to_string()),
            "config": {
                "source": if self.file.is_some() { "file" } else { "built-in" },
                "version": c.version,
                "policy": match c.policy { Policy::Enabled => "enabled", Policy::Disabled => "disabled" },
                "sidecarMode": match c.sidecar_mode { SidecarMode::Native => "native", SidecarMode::Plain => "plain" },
                "proxyImage": c.values.get("proxyImage"),
                "template": {
                    "initContainers": names("initContainers"),
                    "containers": names("containers"),
                    "volumes": names("volumes"),
                    "imagePullSecrets": names("imagePullSecrets"),
                },
                "loadedAt": loaded_at,
            },
            "refused": self.refused.borrow().clone(),
        })
    }
}

// === impl ConfigFile ===

impl ConfigFile {
    /// Looks at the file every [`RELOAD_EVERY`] until `shutdown`.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.reload();
        }
    }

    /// Serves the file's config if it changed and is valid; refuses it, keeping the last good
    /// one, if it is not (or cannot be read).
    pub fn reload(&mut self) -> Reload {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                if self.last.is_none() {
                    return Reload::Unchanged;
                }
                self.last = None;
                let e = InjectorError::Read {
                    path: self.path.clone(),
                    source: e,
                };
                return self.refuse(e.to_string());
            }
        };
        if self.last.as_deref() == Some(text.as_str()) {
            return Reload::Unchanged;
        }
        let parsed = InjectConfig::parse(&text);
        self.last = Some(text);
        match parsed {
            Ok(config) => {
                tracing::info!(path = %self.path.display(), version = %config.version, "injection config reloaded");
                self.current.send_replace(Arc::new(Served {
                    config,
                    loaded_at: SystemTime::now(),
                }));
                self.refused.send_replace(None);
                self.metrics.config_reloads.inc();
                Reload::Loaded
            }
            Err(source) => {
                let e = InjectorError::Invalid {
                    path: self.path.clone(),
                    source,
                };
                self.refuse(e.to_string())
            }
        }
    }

    fn refuse(&self, why: String) -> Reload {
        tracing::warn!(error = %why, "injection config refused; the last good one keeps serving");
        self.metrics.config_refused.inc();
        self.refused.send_replace(Some(why));
        Reload::Refused
    }
}

// === impl InjectMetrics ===

impl InjectMetrics {
    /// Adds the counters to `registry` (Istio's `sidecar_injection_*_total`).
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            (
                "sidecar_injection_requests",
                "Pod admission reviews received on /inject",
                &self.requests,
            ),
            (
                "sidecar_injection_success",
                "Pods injected (allowed with a patch)",
                &self.injected,
            ),
            (
                "sidecar_injection_skip",
                "Reviews allowed without a patch (not injected by policy, not a pod creation)",
                &self.skipped,
            ),
            (
                "sidecar_injection_failure",
                "Reviews denied or not understood",
                &self.failed,
            ),
            (
                "sidecar_injection_config_reloads",
                "New injection configs served from the --injection-config file",
                &self.config_reloads,
            ),
            (
                "sidecar_injection_config_refused",
                "Versions of the --injection-config file refused (the last good one kept serving)",
                &self.config_refused,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }

    /// (requests, injected, skipped, failed).
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.requests.get(),
            self.injected.get(),
            self.skipped.get(),
            self.failed.get(),
        )
    }
}

// === the review ===

/// `POST /inject`: the answer, counted.
pub fn handle(injector: &Injector, body: &[u8]) -> Response {
    let metrics = injector.metrics();
    metrics.requests.inc();
    if body.len() > MAX_REVIEW {
        metrics.failed.inc();
        return (StatusCode::PAYLOAD_TOO_LARGE, "AdmissionReview too large\n").into_response();
    }
    match review(&injector.served().config, body) {
        Ok((answer, outcome)) => {
            match outcome {
                Outcome::Injected => metrics.injected.inc(),
                Outcome::Skipped(_) | Outcome::NotAPodCreate => metrics.skipped.inc(),
                Outcome::Denied(_) => metrics.failed.inc(),
            };
            axum::Json(answer).into_response()
        }
        Err(e) => {
            metrics.failed.inc();
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

/// The answer to an AdmissionReview (JSON bytes) under `config`, and what it was.
pub fn review(config: &InjectConfig, body: &[u8]) -> Result<(Value, Outcome), WebhookError> {
    let (api_version, request) = AdmissionReview::parse(body)?;
    let (response, outcome) = respond(config, &request);
    Ok((AdmissionReview::answer(api_version, response), outcome))
}

fn respond(config: &InjectConfig, request: &AdmissionRequest) -> (Value, Outcome) {
    let uid = request.uid.as_str();
    let allowed = || json!({"uid": uid, "allowed": true});
    let is_pod = request.kind.kind == "Pod" && request.kind.group.is_empty();
    if !is_pod || !matches!(request.operation.as_str(), "CREATE" | "") {
        return (allowed(), Outcome::NotAPodCreate);
    }
    let pod = &request.object;
    let pod_ref = PodRef::new(&request.namespace, &pod["metadata"], None);
    // Ok(Ok(pod)): injected; Ok(Err(why)): skipped; Err: cannot be injected.
    let injected = decide(config, &pod_ref, pod).and_then(|decision| match decision {
        Decision::Inject => inject(config, &pod_ref, pod).map(Ok),
        Decision::Skip(why) => Ok(Err(why)),
    });
    match injected {
        Ok(Ok(injected)) => {
            let ops = jsonpatch::diff(pod, &injected.pod);
            // A list of JSON values always serializes.
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            tracing::info!(pod = %pod_ref, ops = ops.len(), "sidecar injected");
            let mut response = allowed();
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(ByteString(patch));
            (response, Outcome::Injected)
        }
        Ok(Err(why)) => {
            tracing::debug!(pod = %pod_ref, reason = %why, "sidecar not injected");
            (allowed(), Outcome::Skipped(why))
        }
        Err(e) => {
            // The pod's fault (400), or the config's (500).
            let (code, reason) = match e {
                InjectError::Annotation { .. } | InjectError::Pod { .. } => (400, "BadRequest"),
                _ => (500, "InternalError"),
            };
            let message = format!("cannot inject the sidecar: {e}");
            tracing::warn!(pod = %pod_ref, error = %e, "sidecar injection denied");
            let response = json!({
                "uid": uid,
                "allowed": false,
                "status": {"code": code, "reason": reason, "message": message},
            });
            (response, Outcome::Denied(message))
        }
    }
}
