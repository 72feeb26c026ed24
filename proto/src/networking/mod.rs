//! `networking.istio.io`: the traffic-management API. Versions v1alpha3, v1beta1 and v1 share one
//! schema; the types here read all three.
//!
//! Each kind's spec type is named after the kind (the ServiceEntry spec is [`ServiceEntry`]),
//! except WorkloadEntry's, [`WorkloadEntrySpec`], which also serves as a ServiceEntry endpoint.
//! The `*Resource` types (e.g. [`VirtualServiceResource`]) are the whole Kubernetes objects,
//! for use with `kube::Api`.

mod destination_rule;
mod gateway;
mod service_entry;
mod sidecar;
mod virtual_service;
mod workload_entry;

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;
pub use workload_entry::*;
