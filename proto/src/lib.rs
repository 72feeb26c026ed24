//! The mesh's API: the Istio configuration kinds this control plane understands, as Rust types.
//!
//! Every object a user applies (with `kubectl apply` or by dropping YAML in a config directory)
//! is identified by its [`Kind`] and carries a typed [`Spec`]. [`parse_spec`] turns the untyped
//! `spec` of a document into that typed form, and names the field that is wrong when it cannot.
//!
//! Field names and casing follow Istio's API exactly, so configuration written for Istio applies
//! here unchanged.

pub mod kind;
pub mod networking;

pub use kind::{Kind, Spec, SpecError, parse_spec};
