//! `config.istio.io` v1alpha2, Mixer's API: rules, handlers, instances and attribute manifests;
//! the per-adapter and per-template kinds of Istio 1.0/1.1; and Mixer's client configuration
//! (QuotaSpec, HTTPAPISpec and their bindings).
//!
//! The same API group also held the pre-1.0 routing API, which lives in [`crate::routing`].

mod adapter;
mod attribute_manifest;
mod compiled;
mod handler;
mod http_api_spec;
mod http_api_spec_binding;
mod instance;
mod quota_spec;
mod quota_spec_binding;
mod rule;
mod template;

pub use adapter::*;
pub use attribute_manifest::*;
pub use compiled::*;
pub use handler::*;
pub use http_api_spec::*;
pub use http_api_spec_binding::*;
pub use instance::*;
pub use quota_spec::*;
pub use quota_spec_binding::*;
pub use rule::*;
pub use template::*;
