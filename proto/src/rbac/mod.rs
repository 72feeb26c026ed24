//! `rbac.istio.io` v1alpha1: Istio's first authorization API (Istio 1.0–1.5) — ServiceRole,
//! ServiceRoleBinding, and the RbacConfig/ClusterRbacConfig switch. Replaced by
//! `security.istio.io` AuthorizationPolicy.

mod rbac_config;
mod service_role;
mod service_role_binding;

pub use rbac_config::*;
pub use service_role::*;
pub use service_role_binding::*;
