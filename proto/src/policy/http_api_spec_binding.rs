//! `HTTPAPISpecBinding`: binds HTTPAPISpecs to the services that implement them.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::IstioService;

/// `config.istio.io/HTTPAPISpecBinding` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "HTTPAPISpecBinding",
    root = "HttpApiSpecBindingResource",
    plural = "httpapispecbindings",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "apim-istio-io",
    doc = "Binds HTTPAPISpecs to services."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpApiSpecBinding {
    /// Services implementing the APIs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<IstioService>,
    /// The HTTPAPISpecs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_specs: Vec<HttpApiSpecReference>,
}

/// Names an HTTPAPISpec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpApiSpecReference {
    /// Name of the HTTPAPISpec.
    pub name: String,
    /// Its namespace (the binding's when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}
