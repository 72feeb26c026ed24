//! Mixer `handler`: a configured adapter — compiled into Mixer or reached over gRPC — with its
//! parameters.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{Duration, Struct};

/// `config.istio.io/handler` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "handler",
    root = "HandlerResource",
    plural = "handlers",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    category = "policy-istio-io",
    doc = "A configured Mixer adapter."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handler {
    /// Name of the handler (the object's name when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Adapter compiled into Mixer, e.g. `prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled_adapter: Option<String>,
    /// Out-of-process adapter, by the name of its `adapter` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The adapter's parameters; their schema is the adapter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Struct>,
    /// How to reach an out-of-process adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
}

/// How Mixer reaches an out-of-process adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connection {
    /// Address of the adapter's gRPC service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Timeout of calls to the adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Authentication towards the adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

/// Authentication towards an adapter: TLS with a token, or mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// TLS with a bearer token or OAuth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual: Option<Mutual>,
}

/// TLS towards an adapter, with a token in a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// CA certificates file for verifying the adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// File holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_path: Option<String>,
    /// Obtain the token through OAuth client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuth>,
    /// Send the token in the Authorization header, in this form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_header: Option<AuthHeader>,
    /// Send the token in this header instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_header: Option<String>,
    /// Name the adapter's certificate must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Form of the Authorization header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthHeader {
    /// The token alone.
    Plain,
    /// `Bearer <token>`.
    Bearer,
}

/// OAuth client credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth {
    /// Client ID.
    #[serde(default)]
    pub client_id: String,
    /// File holding the client secret.
    #[serde(default)]
    pub client_secret: String,
    /// Token endpoint.
    #[serde(default)]
    pub token_url: String,
    /// Scopes requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Extra parameters of the token request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_params: BTreeMap<String, String>,
}

/// Mutual TLS towards an adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mutual {
    /// Client private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Client certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// CA certificates file for verifying the adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Name the adapter's certificate must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}
