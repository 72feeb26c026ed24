//! `HTTPAPISpec`: describes an HTTP API — its operations by method and path, and where API keys
//! are found — so that requests carry API attributes (`api.operation`, `request.api_key`…).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::Duration;

/// `config.istio.io/HTTPAPISpec` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "HTTPAPISpec",
    root = "HttpApiSpecResource",
    plural = "httpapispecs",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "apim-istio-io",
    doc = "Description of an HTTP API, producing API attributes for its requests."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpApiSpec {
    /// Attributes every request of the API gets (e.g. `api.service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
    /// Operations of the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<HttpApiSpecPattern>,
    /// Where API keys are found, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKey>,
}

/// An operation of an API: requests with this method and path get these attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpApiSpecPattern {
    /// Attributes the matching requests get (e.g. `api.operation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    /// Path template, e.g. `/pets/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_template: Option<String>,
    /// Path regular expression, instead of a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Where an API key is found: a query parameter, a header or a cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// Query parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Cookie name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// A set of Mixer attributes with literal values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attributes {
    /// Attribute values by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AttributeValue>,
}

/// A literal attribute value: one of the typed fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributeValue {
    /// A string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    /// A 64-bit integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int64_value: Option<i64>,
    /// A double.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub double_value: Option<f64>,
    /// A boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bool_value: Option<bool>,
    /// Bytes, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_value: Option<String>,
    /// A point in time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_value: Option<String>,
    /// A length of time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_value: Option<Duration>,
    /// A map from strings to strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_map_value: Option<StringMap>,
}

/// A map from strings to strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMap {
    /// The entries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<String, String>,
}
