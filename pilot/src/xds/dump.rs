//! Resources as JSON for the debug pages.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use serde_json::{Value, json};

use super::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource};

/// A resource with its name, version, size and decoded content (in protobuf text form).
pub fn resource_json(r: &Resource) -> Value {
    let bytes = &r.any.value[..];
    let decoded = match r.any.type_url.as_str() {
        CLUSTER => Cluster::decode(bytes).map(|m| format!("{m:?}")),
        ENDPOINT => ClusterLoadAssignment::decode(bytes).map(|m| format!("{m:?}")),
        LISTENER => Listener::decode(bytes).map(|m| format!("{m:?}")),
        ROUTE => RouteConfiguration::decode(bytes).map(|m| format!("{m:?}")),
        _ => Ok(String::new()),
    };
    json!({
        "name": r.name,
        "version": r.version,
        "type": r.any.type_url,
        "bytes": r.size(),
        "config": decoded.unwrap_or_else(|e| format!("undecodable: {e}")),
    })
}
