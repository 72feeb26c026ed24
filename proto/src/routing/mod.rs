//! The pre-1.0 routing API (`config.istio.io` v1alpha2, Istio 0.2–0.8): RouteRule,
//! DestinationPolicy and EgressRule. Kept so that configuration written for those releases
//! still applies; the networking API ([`crate::networking`]) replaced it.
//!
//! Where a message had the same shape as its networking successor (redirect, rewrite, CORS),
//! the networking type is reused.

mod destination_policy;
mod egress_rule;
mod route_rule;

pub use destination_policy::*;
pub use egress_rule::*;
pub use route_rule::*;
