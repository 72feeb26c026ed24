//! Mixer `rule`: when its `match` expression holds for a request's attributes, the rule sends
//! the listed instances to a handler.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::Duration;

/// `config.istio.io/rule` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "rule",
    root = "RuleResource",
    plural = "rules",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "policy-istio-io",
    doc = "A Mixer rule: which instances go to which handler, and when."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Attribute expression selecting the requests the rule applies to (all when empty).
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_expr: Option<String>,
    /// What to do with matching requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// Changes to request headers, with values computed from attributes and action outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_header_operations: Vec<HeaderOperationTemplate>,
    /// Changes to response headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_header_operations: Vec<HeaderOperationTemplate>,
    /// Sampling of the requests the rule's report actions see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

/// Sends instances to a handler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Action {
    /// The handler, as `name`, `name.kind` or `name.kind.namespace`.
    pub handler: String,
    /// Instances sent, each as `name`, `name.kind` or `name.kind.namespace`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Name of the action, by which header operations refer to its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A header change whose values are attribute expressions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperationTemplate {
    /// Header name.
    pub name: String,
    /// Expressions giving the header values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// What to do with the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<HeaderOperation>,
}

/// What a header operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeaderOperation {
    /// Overwrite the header.
    Replace,
    /// Remove the header.
    Remove,
    /// Add values to the header.
    Append,
}

/// Sampling of the requests a rule reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sampling {
    /// Random sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<RandomSampling>,
    /// Sampling once a rate is exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSampling>,
}

/// Random sampling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RandomSampling {
    /// Expression that, when true, applies the sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_expression: Option<String>,
    /// Share of requests kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_sampled: Option<FractionalPercent>,
    /// Sample independently of other rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_independent_randomness: Option<bool>,
}

/// A fraction: a numerator over a hundred or ten thousand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FractionalPercent {
    /// Numerator.
    #[serde(default)]
    pub numerator: u32,
    /// Denominator (a hundred when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<DenominatorType>,
}

/// Denominator of a fractional percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DenominatorType {
    /// 100.
    Hundred,
    /// 10,000.
    TenThousand,
}

/// Keeps every request until a rate is exceeded, then one in `samplingRate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSampling {
    /// Window over which requests are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_duration: Option<Duration>,
    /// Requests kept in a window before sampling starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unsampled_entries: Option<i64>,
    /// One in this many requests is kept once sampling starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<i64>,
}
