//! `ServiceRole`: a set of permissions — which services, paths, methods and ports may be
//! accessed, under which constraints.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `rbac.istio.io/ServiceRole` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ServiceRole",
    root = "ServiceRoleResource",
    plural = "serviceroles",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "rbac-istio-io",
    doc = "A set of permissions on services in the namespace."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRole {
    /// The permissions; any of them grants access.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AccessRule>,
}

/// One permission: access to these services, restricted by the other fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    /// Service names (`*` and prefix/suffix wildcards allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Hosts (Host header) allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Paths allowed (HTTP paths or gRPC `/package.Service/Method`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Methods allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Ports allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,
    /// Ports not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<i32>,
    /// Further conditions on request attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// A condition: the attribute named by `key` has one of `values`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Constraint {
    /// The attribute, e.g. `destination.labels[version]`.
    #[serde(default)]
    pub key: String,
    /// Accepted values (`*` and prefix/suffix wildcards allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}
