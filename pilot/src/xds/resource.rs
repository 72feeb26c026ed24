//! Encoded xDS resources: generated once, encoded once, shared by every proxy that gets them.
//!
//! A resource also keeps, built on first use and then shared, its encoding as an entry of a
//! state-of-the-world response and of a delta response: a response to a proxy is a few bytes of
//! its own (version, nonce, type) followed by these shared entries, so no proxy holds a copy of
//! the config it is sent.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};
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
    /// The name again, shared: what connections remember they sent is keyed by it, without
    /// a copy of the name per connection.
    key: Arc<str>,
    /// This resource as field `resources` of a `DiscoveryResponse`.
    sotw_entry: OnceLock<Bytes>,
    /// This resource as field `resources` of a `DeltaDiscoveryResponse`.
    delta_entry: OnceLock<Bytes>,
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
        Resource::new(
            name,
            format!("{:016x}", hasher.finish()),
            Any {
                type_url: M::type_url(),
                value,
            },
        )
    }

    /// A resource from its parts.
    pub fn new(name: impl Into<String>, version: impl Into<String>, any: Any) -> SharedResource {
        let name = name.into();
        Arc::new(Resource {
            key: Arc::from(name.as_str()),
            name,
            version: version.into(),
            any,
            sotw_entry: OnceLock::new(),
            delta_entry: OnceLock::new(),
        })
    }

    /// The name, shared (see the field).
    pub fn key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// Size of the encoded resource in bytes.
    pub fn size(&self) -> usize {
        self.any.value.len()
    }

    /// The encoding of this resource as one element of `DiscoveryResponse.resources`.
    /// Protobuf messages concatenate by merging, so a response is its own scalar fields
    /// followed by these entries.
    pub fn sotw_entry(&self) -> Bytes {
        self.sotw_entry
            .get_or_init(|| {
                let msg = DiscoveryResponse {
                    resources: vec![self.any.clone()],
                    ..Default::default()
                };
                Bytes::from(msg.encode_to_vec())
            })
            .clone()
    }

    /// The encoding of this resource as one element of `DeltaDiscoveryResponse.resources`.
    pub fn delta_entry(&self) -> Bytes {
        self.delta_entry
            .get_or_init(|| {
                let msg = DeltaDiscoveryResponse {
                    resources: vec![DeltaResource {
                        name: self.name.clone(),
                        version: self.version.clone(),
                        resource: Some(self.any.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                Bytes::from(msg.encode_to_vec())
            })
            .clone()
    }
}

/// Packs a message into an `Any` (for typed_config fields).
pub fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}
