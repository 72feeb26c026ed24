//! Mixer `adapter`: describes an out-of-process adapter — the templates it accepts and the
//! schema of its parameters.
//!
//! Istio's tooling generated these objects with the proto field name `session_based`; protobuf's
//! JSON form accepts that as well as `sessionBased`, and so does this type. The CRD keeps
//! unknown fields of this spec so that the API server does not drop `session_based`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `config.istio.io/adapter` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "adapter",
    root = "AdapterResource",
    plural = "adapters",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "policy-istio-io",
    doc = "Description of an out-of-process Mixer adapter."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct AdapterInfo {
    /// Name of the adapter, as handlers refer to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the adapter does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Templates the adapter accepts, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<String>,
    /// Schema of the adapter's params: a base64-encoded protobuf `FileDescriptorSet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Whether the adapter keeps a session per handler configuration.
    #[serde(
        default,
        alias = "session_based",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_based: Option<bool>,
}
