//! The mesh's API: the Istio configuration kinds this control plane understands, as Rust types.
//!
//! Every object a user applies (with `kubectl apply` or by dropping YAML in a config directory)
//! is identified by its [`Kind`] and carries a typed [`Spec`]. [`parse_spec`] turns the untyped
//! `spec` of a document into that typed form, and names the field that is wrong when it cannot.
//!
//! Field names and casing follow Istio's API exactly, so configuration written for Istio applies
//! here unchanged — including configuration written for Istio 0.5–1.0 (the legacy routing API,
//! Mixer, RBAC and authentication policies). [`crd`] generates the CustomResourceDefinitions of
//! all kinds from the same types.
//!
//! Each typed kind also has a `*Resource` type (e.g. [`networking::VirtualServiceResource`]):
//! the whole Kubernetes object, with metadata, for use with `kube::Api`. Those require a
//! `spec`; code reading arbitrary objects should go through [`parse_spec`], which accepts a
//! missing one.
//!
//! | module | API group |
//! |---|---|
//! | [`networking`] | `networking.istio.io` (v1alpha3, v1beta1, v1) |
//! | [`policy`] | `config.istio.io` v1alpha2: Mixer and its client config |
//! | [`routing`] | `config.istio.io` v1alpha2: the pre-1.0 routing API |
//! | [`rbac`] | `rbac.istio.io` v1alpha1 |
//! | [`security`] | `security.istio.io` (v1beta1, v1) |
//! | [`authentication`] | `authentication.istio.io` v1alpha1 |
//!
//! [`grpc`] holds the wire APIs (gRPC services and messages) generated from `proto/proto/*.proto`.

pub mod authentication;
pub mod crd;
pub mod grpc;
pub mod kind;
pub mod networking;
pub mod policy;
pub mod rbac;
pub mod routing;
pub mod security;
pub mod types;

pub use kind::{Kind, Spec, SpecError, parse_spec};
