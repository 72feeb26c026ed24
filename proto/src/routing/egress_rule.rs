//! `EgressRule` (Istio 0.2–0.8): lets the mesh reach a service outside it. Replaced by
//! ServiceEntry.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::IstioService;

/// `config.istio.io/EgressRule` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "EgressRule",
    root = "EgressRuleResource",
    plural = "egressrules",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    doc = "An external service reachable from the mesh (pre-1.0 routing API)."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// The external service; `service` holds its host name (may be wildcarded) or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IstioService>,
    /// Ports through which it is reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EgressPort>,
    /// Send the traffic through the egress proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_egress_proxy: Option<bool>,
}

/// A port of an external service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressPort {
    /// Port number.
    #[serde(default)]
    pub port: u32,
    /// Protocol (case-insensitive): http, https, http2, grpc, tcp or mongo.
    #[serde(default)]
    pub protocol: String,
}
