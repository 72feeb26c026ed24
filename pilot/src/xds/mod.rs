//! The xDS v3 server: generation ([`generate`]), caching ([`cache`]), the protocol rules
//! ([`protocol`]), the gRPC streams ([`server`]) and the push pipeline ([`push`]).

pub mod cache;
pub mod dump;
pub mod generate;
pub mod metrics;
pub mod pbjson;
pub mod protocol;
pub mod push;
pub mod resource;
pub mod server;

pub use cache::Generation;
pub use metrics::XdsMetrics;
pub use server::{PushRequest, XdsServer};
