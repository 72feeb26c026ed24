//! `authentication.istio.io` v1alpha1 (Istio 1.0–1.5): Policy and MeshPolicy.

mod policy;

pub use policy::*;
