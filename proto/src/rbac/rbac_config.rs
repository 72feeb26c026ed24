//! `RbacConfig` and `ClusterRbacConfig`: switch Istio RBAC on for the mesh, for some
//! namespaces and services, or for all but some. One object named `default` per mesh.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `rbac.istio.io/RbacConfig` spec (namespaced, Istio 1.0).
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "RbacConfig",
    root = "RbacConfigResource",
    plural = "rbacconfigs",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "rbac-istio-io",
    doc = "Where Istio RBAC is enforced in the mesh."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbacConfig {
    /// Where RBAC is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RbacMode>,
    /// Where RBAC is on, for mode ON_WITH_INCLUSION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<RbacTarget>,
    /// Where RBAC is off, for mode ON_WITH_EXCLUSION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion: Option<RbacTarget>,
    /// Default enforcement of the bindings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_mode: Option<EnforcementMode>,
}

/// `rbac.istio.io/ClusterRbacConfig` spec (cluster-scoped, Istio 1.1 and later): the same
/// fields as an RbacConfig.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ClusterRbacConfig",
    root = "ClusterRbacConfigResource",
    plural = "clusterrbacconfigs",
    derive = "PartialEq",
    category = "istio-io",
    category = "rbac-istio-io",
    doc = "Where Istio RBAC is enforced in the mesh (cluster-scoped)."
)]
#[serde(transparent)]
pub struct ClusterRbacConfig(pub RbacConfig);

/// Where RBAC is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacMode {
    /// Nowhere.
    Off,
    /// Everywhere.
    On,
    /// Only for the services and namespaces in `inclusion`.
    OnWithInclusion,
    /// Everywhere but the services and namespaces in `exclusion`.
    OnWithExclusion,
}

/// Services and namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbacTarget {
    /// Service names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// Whether a policy is enforced or only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnforcementMode {
    /// Enforced.
    Enforced,
    /// Only logged (dry run).
    Permissive,
}
