//! `networking.istio.io`: the traffic-management API (v1alpha3, v1beta1 and v1 share one schema).

mod service_entry;

pub use service_entry::*;
