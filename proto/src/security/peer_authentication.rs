//! `PeerAuthentication`: whether workloads accept plain text or require mutual TLS from their
//! peers, for the mesh, a namespace, a workload, or one port.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::WorkloadSelector;

/// `security.istio.io/PeerAuthentication` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1beta1",
    kind = "PeerAuthentication",
    root = "PeerAuthenticationResource",
    plural = "peerauthentications",
    namespaced,
    derive = "PartialEq",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    doc = "Mutual TLS requirements of workloads.",
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mtls.mode",
        description = "Mutual TLS mode"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workloads the policy applies to (all in the namespace when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Requirements for single ports, by port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::types::port_keyed_map::<MutualTls>")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// A mutual TLS requirement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The requirement (inherited from the parent scope when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// Mutual TLS requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherited from the parent scope.
    Unset,
    /// Plain text only.
    Disable,
    /// Both plain text and mutual TLS.
    Permissive,
    /// Mutual TLS only.
    Strict,
}
