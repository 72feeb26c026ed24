//! `QuotaSpec`: which quotas a request is charged against, and how much, by request attributes.
//! Part of Mixer's client configuration (what the proxy asks Mixer).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::networking::StringMatch;

/// `config.istio.io/QuotaSpec` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "QuotaSpec",
    root = "QuotaSpecResource",
    plural = "quotaspecs",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "apim-istio-io",
    doc = "The quotas requests are charged against."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpec {
    /// Rules, each charging quotas when its conditions hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<QuotaRule>,
}

/// Charges quotas when any of its conditions holds (always, when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaRule {
    /// Conditions, any of which applies the rule.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<AttributeMatch>,
    /// Quotas charged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Quota>,
}

/// Conditions on request attributes, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributeMatch {
    /// Attribute name to condition on its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clause: BTreeMap<String, StringMatch>,
}

/// A quota and the amount charged against it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Name of the quota instance.
    #[serde(default)]
    pub quota: String,
    /// Amount charged per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<i64>,
}
