//! `kubernetesenv`: generates source/destination workload attributes from pods.
//!
//! The attribute generation itself needs a pod cache from Kubernetes and is not implemented
//! yet; the handler validates its parameters (so Istio's default config loads) and generates
//! nothing, which leaves the `| "unknown"` defaults of the standard metrics in effect.

use std::time::Duration;

use serde_json::Value;

use super::params;
use super::{AdapterError, Handler};

/// The kubernetesenv handler.
#[derive(Debug, Clone)]
pub struct KubernetesEnv {
    #[allow(dead_code)]
    cache_refresh: Duration,
}

// === impl KubernetesEnv ===

impl KubernetesEnv {
    /// Validates parameters and builds the handler.
    pub fn build(p: &Value) -> Result<Self, AdapterError> {
        params::only(
            p,
            "",
            &[
                "kubeconfig_path",
                "cache_refresh_duration",
                "cluster_domain_name",
                "pod_label_for_app",
                "pod_label_for_version",
                "pod_ip_label",
                "pod_name_label",
                "fully_qualified_name_suffix",
                "cluster_registries_namespace",
            ],
        )?;
        let cache_refresh = params::duration(p, "cache_refresh_duration", "cacheRefreshDuration")?
            .unwrap_or(Duration::from_secs(300));
        Ok(Self { cache_refresh })
    }
}

impl Handler for KubernetesEnv {}
