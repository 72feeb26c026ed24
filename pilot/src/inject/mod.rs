//! Sidecar injection, as Istio's `istio-sidecar-injector` does it: a pod template goes in,
//! the same pod comes out with the `istio-init` init container (iptables), the `istio-proxy`
//! sidecar, their volumes and the `sidecar.istio.io/status` annotation.
//!
//! - [`config`]: the injection config, the `config` key of ConfigMap `istio-sidecar-injector`
//!   ([`default_config_yaml`] is the built-in one): `policy`, `sidecarMode`, `values` and the
//!   `template`.
//! - [`template`]: the template's placeholder syntax (`${name}`) and its rendering.
//! - [`pod`]: the policy ([`pod::decide`]: inject or skip, and why) and the injection of one
//!   pod template ([`pod::inject`]); what the webhook will call too.
//! - [`probes`]: the app's HTTP probes rewritten to the agent's status port.
//! - [`proxy_config`]: the `proxy.istio.io/config` annotation (`proxyMetadata`).
//! - [`kube_inject`]: `pilot kube-inject`: every workload of a YAML stream.
//!
//! The core knows neither a Kubernetes client nor gRPC: it works on `serde_json` values, so
//! unknown fields of a workload go through unchanged.

pub mod config;
pub mod kube_inject;
pub mod pod;
pub mod probes;
pub mod proxy_config;
pub mod template;
#[cfg(test)]
mod tests;

pub use config::{InjectConfig, Policy, SidecarMode, config_yaml_for_image, default_config_yaml};
pub use kube_inject::{KubeInjectArgs, Output, inject_stream, run};
pub use pod::{Decision, Injected, PodRef, SkipReason, decide, inject};

/// Annotation (and label) by which a pod opts in or out.
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
/// Annotation recording what injection added; its presence means "already injected".
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The proxy container's name.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The iptables init container's name.
pub const INIT_CONTAINER: &str = "istio-init";

/// Why a pod, a config or a YAML stream cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A pod annotation (or label) has a value injection cannot use.
    #[error("pod {pod}: annotation {annotation}: {value:?}: {reason}")]
    Annotation {
        pod: PodRef,
        annotation: String,
        value: String,
        reason: String,
    },
    /// A field of the pod is not of the shape Kubernetes defines, or clashes with what
    /// injection adds.
    #[error("pod {pod}: {field}: {reason}")]
    Pod {
        pod: PodRef,
        field: String,
        reason: String,
    },
    /// The injection config is unusable.
    #[error("injection config: {field}: {reason}")]
    Config { field: String, reason: String },
    /// The template cannot be rendered (an unknown or unterminated placeholder, a misplaced
    /// `$when`).
    #[error("injection template: {path}: {reason}")]
    Template { path: String, reason: String },
    /// A document of a kube-inject stream: where, and what is wrong with it.
    #[error("document {index}{item} ({kind} {name}): {field}: {reason}")]
    Document {
        /// 1-based, in stream order.
        index: usize,
        /// `, item N` inside a `kind: List`, or empty.
        item: String,
        kind: String,
        name: String,
        field: String,
        reason: String,
    },
    /// A document that is not YAML (the stream stops there).
    #[error("document {index}: not YAML: {reason}")]
    Yaml { index: usize, reason: String },
    /// A file that cannot be read or written.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}
