//! Mixer `attributemanifest`: declares the attributes a component produces and their types.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `config.istio.io/attributemanifest` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "attributemanifest",
    root = "AttributeManifestResource",
    plural = "attributemanifests",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "policy-istio-io",
    doc = "The attributes a component produces, with their types."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributeManifest {
    /// Revision of the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Name of the component producing the attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The attributes, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, AttributeInfo>,
}

/// Declaration of one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributeInfo {
    /// What the attribute means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Type of the attribute's values.
    pub value_type: ValueType,
}

/// Types of attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValueType {
    /// Not set.
    ValueTypeUnspecified,
    /// A string.
    String,
    /// A 64-bit integer.
    Int64,
    /// A double.
    Double,
    /// A boolean.
    Bool,
    /// A point in time.
    Timestamp,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// An e-mail address.
    EmailAddress,
    /// A URI.
    Uri,
    /// A DNS name.
    DnsName,
    /// A length of time.
    Duration,
    /// A map from strings to strings.
    StringMap,
}
