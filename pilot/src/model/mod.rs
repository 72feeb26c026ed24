//! Pilot's model of the mesh: services and their endpoints, proxies, and the push context
//! that a generation of Envoy config is computed from. Nothing here knows where the data came
//! from (a config directory or Kubernetes) or how it is served (xDS over gRPC).

pub mod analysis;
pub mod authn;
pub mod authz;
pub mod jwks;
pub mod jwks_fetch;
pub mod proxy;
pub mod push_context;
pub mod registry;
pub mod service;

pub use proxy::{InterceptionMode, NodeType, Proxy, ProxyError};
pub use push_context::PushContext;
pub use registry::{Registry, Workload};
pub use service::{Endpoint, Port, Protocol, Resolution, Service};
