//! WorkloadEntry: a workload that is not a pod (a VM, a bare-metal host), described to the mesh
//! so that services can select it. Its spec is also the form of a ServiceEntry endpoint.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `networking.istio.io/WorkloadEntry` spec; also a ServiceEntry's inline endpoint.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "WorkloadEntry",
    root = "WorkloadEntryResource",
    plural = "workloadentries",
    namespaced,
    derive = "PartialEq",
    shortname = "we",
    category = "istio-io",
    category = "networking-istio-io",
    doc = "A workload outside the platform's registry (a VM, a bare-metal host).",
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.address",
        description = "Address of the workload"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP address, DNS name or Unix socket of the workload.
    #[serde(default)]
    pub address: String,
    /// Ports of the workload by service port name, when they differ from the service's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network the workload is on, for multi-network meshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Locality of the workload (`region/zone/subzone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load-balancing weight of the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Service account the workload runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}
