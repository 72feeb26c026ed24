//! Mixer `instance`: builds the data of a template (a metric, a log entry, a quota request…)
//! from request attributes.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::Struct;

/// `config.istio.io/instance` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "instance",
    root = "InstanceResource",
    plural = "instances",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "policy-istio-io",
    doc = "A Mixer template filled in from request attributes."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Instance {
    /// Name of the instance (the object's name when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Template compiled into Mixer, e.g. `metric`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled_template: Option<String>,
    /// Template of an out-of-process adapter, by the name of its `template` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The template's fields as attribute expressions; their schema is the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Struct>,
    /// Attributes produced from the adapter's output (`$out.field` expressions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attribute_bindings: BTreeMap<String, String>,
}
