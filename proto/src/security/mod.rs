//! `security.istio.io` v1beta1 (also served as v1): the current security API —
//! AuthorizationPolicy, PeerAuthentication and RequestAuthentication.

mod authorization_policy;
mod peer_authentication;
mod request_authentication;

pub use authorization_policy::*;
pub use peer_authentication::*;
pub use request_authentication::*;
