//! `QuotaSpecBinding`: binds QuotaSpecs to the services whose requests they charge.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::IstioService;

/// `config.istio.io/QuotaSpecBinding` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "QuotaSpecBinding",
    root = "QuotaSpecBindingResource",
    plural = "quotaspecbindings",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "apim-istio-io",
    doc = "Binds QuotaSpecs to services."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpecBinding {
    /// Services whose requests are charged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<IstioService>,
    /// QuotaSpecs applied to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quota_specs: Vec<QuotaSpecReference>,
}

/// Names a QuotaSpec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaSpecReference {
    /// Name of the QuotaSpec.
    pub name: String,
    /// Its namespace (the binding's when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}
