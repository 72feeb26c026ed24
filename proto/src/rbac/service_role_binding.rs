//! `ServiceRoleBinding`: grants a ServiceRole (or inline permissions) to subjects — users,
//! groups, namespaces, IP ranges or attribute properties.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rbac::{AccessRule, EnforcementMode};

/// `rbac.istio.io/ServiceRoleBinding` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ServiceRoleBinding",
    root = "ServiceRoleBindingResource",
    plural = "servicerolebindings",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "rbac-istio-io",
    doc = "Grants a ServiceRole to subjects."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRoleBinding {
    /// Who is granted the role; any subject qualifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// The ServiceRole granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_ref: Option<RoleRef>,
    /// Whether the binding is enforced or only logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EnforcementMode>,
    /// Permissions granted inline, instead of `roleRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<AccessRule>,
    /// Name of the ServiceRole granted, instead of `roleRef` (`/name` form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Who a role is granted to; all the given fields must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// User (peer or request principal); `*` for everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Principals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Principals excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_names: Vec<String>,
    /// Group (deprecated; see `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Groups (from the JWT `groups` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Groups excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_groups: Vec<String>,
    /// Namespaces of the callers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Caller IP addresses or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Caller addresses excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ips: Vec<String>,
    /// Conditions on attributes of the caller, e.g. `source.namespace: default`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// Names the role a binding grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleRef {
    /// Kind of the role; `ServiceRole`.
    #[serde(default)]
    pub kind: String,
    /// Name of the role, in the binding's namespace.
    #[serde(default)]
    pub name: String,
}
