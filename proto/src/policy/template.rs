//! Mixer `template`: a template for out-of-process adapters, given by its protobuf descriptor.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `config.istio.io/template` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "template",
    root = "TemplateResource",
    plural = "templates",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "policy-istio-io",
    doc = "A Mixer template for out-of-process adapters."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateInfo {
    /// The template's messages: a base64-encoded protobuf `FileDescriptorSet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<String>,
}
