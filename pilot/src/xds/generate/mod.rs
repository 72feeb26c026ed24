//! Generation: the push context and a proxy in, Envoy resources out. Pure functions; caching
//! and serving live elsewhere.

pub mod authn;
pub mod authz;
pub mod cds;
pub mod eds;
pub mod gateway;
pub mod lds;
pub mod mixer;
pub mod mtls;
pub mod rds;
pub mod route;
pub mod tracing;
mod util;

pub use util::{duration, socket_address};

#[cfg(test)]
mod tests;
