//! ServiceEntry: adds entries to the mesh's service registry — services outside the mesh, or
//! workloads the platform's registry does not know.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::networking::{WorkloadEntrySpec, WorkloadSelector};

/// `networking.istio.io/ServiceEntry` spec.
// Several `printcolumn(...)` attributes repeat the same keys, which is how kube spells them.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "ServiceEntry",
    root = "ServiceEntryResource",
    plural = "serviceentries",
    namespaced,
    derive = "PartialEq",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    doc = "An entry in the mesh's service registry.",
    printcolumn(
        name = "Hosts",
        type_ = "string",
        json_path = ".spec.hosts",
        description = "The hosts of the service"
    ),
    printcolumn(
        name = "Location",
        type_ = "string",
        json_path = ".spec.location",
        description = "Whether the service is inside or outside the mesh"
    ),
    printcolumn(
        name = "Resolution",
        type_ = "string",
        json_path = ".spec.resolution",
        description = "How the service's endpoints are found"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Host names of the service (may be wildcarded).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IP addresses or CIDR blocks of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Whether the service is inside or outside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How the proxy finds the service's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// Endpoints of the service, written inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Selects the service's endpoints among pods and WorkloadEntries by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces the entry is visible to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Identities the service's workloads may present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// A port of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number.
    pub number: u32,
    /// Protocol: HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Name of the port.
    #[serde(default)]
    pub name: String,
    /// Port the endpoints listen on, when it differs from `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Whether a service is inside or outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no sidecar, no mutual TLS.
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// How a proxy finds the endpoints of a ServiceEntry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the address the caller asked for.
    None,
    /// Use the endpoints listed.
    Static,
    /// Resolve the hosts (or endpoint names) through DNS, using every address.
    Dns,
    /// Resolve through DNS, using the first address only.
    DnsRoundRobin,
    /// Resolve wildcard hosts through DNS as requests arrive.
    DynamicDns,
}
