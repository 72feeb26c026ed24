//! Encoded xDS resources: generated once, encoded once, shared by every proxy that gets them.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// Type URL of clusters (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of cluster load assignments (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of listeners (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of route configurations (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The types this server serves, in make-before-break push order.
pub const PUSH_ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Whether a type is requested by wildcard (every resource) rather than by name.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// A short name for a type URL, for logs, metrics and debug pages (`cds`, `eds`, ...).
pub fn short_type(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER => "cds",
        ENDPOINT => "eds",
        LISTENER => "lds",
        ROUTE => "rds",
        _ => "unknown",
    }
}

/// One named resource, encoded, with a version derived from its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    /// Hex hash of the encoded bytes: equal bytes, equal version.
    pub version: String,
    pub any: Any,
}

/// A shared resource.
pub type SharedResource = Arc<Resource>;

// === impl Resource ===

impl Resource {
    /// Encodes a message as a named resource.
    pub fn encode<M: Message + Name>(name: impl Into<String>, msg: &M) -> SharedResource {
        let value = msg.encode_to_vec();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut hasher);
        Arc::new(Resource {
            name: name.into(),
            version: format!("{:016x}", hasher.finish()),
            any: Any {
                type_url: M::type_url(),
                value,
            },
        })
    }

    /// Size of the encoded resource in bytes.
    pub fn size(&self) -> usize {
        self.any.value.len()
    }
}

/// Packs a message into an `Any` (for typed_config fields).
pub fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}
