//! Generation: the push context and a proxy in, Envoy resources out. Pure functions; caching
//! and serving live elsewhere.

pub mod cds;
pub mod eds;
pub mod lds;
pub mod rds;
mod util;

pub use util::{duration, socket_address};
