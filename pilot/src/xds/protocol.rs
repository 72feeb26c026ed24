//! The xDS protocol rules, per stream, as pure state machines: one for state-of-the-world
//! (SotW) and one for delta (incremental) streams. They decide what a request means (initial
//! request, ACK, NACK, stale, subscription change) and what a push must send; they never
//! generate config and never touch the network, so they are tested with scripted requests.
//!
//! The rules followed:
//! - Per-type `version_info` and a fresh nonce for every response.
//! - A request whose `response_nonce` is not the last one sent for its type is stale and
//!   ignored (SotW). In delta, subscription changes are applied whatever the nonce, since they
//!   are deltas and cannot be resent.
//! - `error_detail` set means NACK: recorded, never answered; the proxy keeps its last good
//!   config and the same resources are not sent again until they change.
//! - An ACK is not answered, unless it also changes the subscription.
//! - Nothing is resent unchanged: each resource's version (a hash of its bytes) is remembered.
//! - Clusters and listeners are wildcard types: every SotW response carries the complete set.
//!   Endpoints and routes are named: responses carry only what changed, and names requested
//!   before they exist are remembered and sent when they appear.
//! - Delta responses carry changed resources and `removed_resources`; on reconnect,
//!   `initial_resource_versions` says what the proxy already has.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;

use super::resource::{CLUSTER, ENDPOINT, LISTENER, SECRET, SharedResource, is_wildcard_type};

/// What a request asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Generate and send this type now (first request, or the subscription changed).
    Respond,
    /// The last response was accepted; nothing to send.
    Ack,
    /// The last response was rejected with this message; nothing to send.
    Nack(String),
    /// The request answers an older response; ignored.
    Stale,
}

/// A response a stream decided to send: its own few fields and the shared resources it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub type_url: String,
    pub version: String,
    pub nonce: String,
    /// Resources to send (SotW: the complete set for wildcard types; delta: what changed).
    pub resources: Vec<SharedResource>,
    /// Names the proxy must drop (delta only).
    pub removed: Vec<String>,
}

/// One stream's protocol, state-of-the-world or delta: how its requests read, what a request
/// means, and how responses are encoded. The stream loop in `server.rs` is written once
/// against this.
pub trait Protocol: Default + Send + 'static {
    /// The request message of the stream.
    type Request: Message + Default + Send + 'static;
    /// Whether this is the delta protocol.
    const DELTA: bool;
    fn node(req: &Self::Request) -> Option<&Node>;
    fn type_url(req: &Self::Request) -> &str;
    fn nonce(req: &Self::Request) -> &str;
    /// Interprets a request and updates the subscription it carries.
    fn on_request(&mut self, req: &Self::Request) -> Action;
    /// The response bringing the proxy to `resources`, or `None` when there is nothing to
    /// send. `force` answers a request even when nothing changed (SotW only: a delta stream
    /// never sends an empty response).
    fn respond(
        &mut self,
        type_url: &str,
        version: &str,
        resources: &[SharedResource],
        force: bool,
    ) -> Option<Response>;
    /// The gRPC message (length-prefixed protobuf) of a response, in chunks.
    fn encode(resp: &Response) -> Vec<Bytes>;
    /// Every type's state.
    fn types(&self) -> &HashMap<String, TypeState>;

    /// Whether the stream has asked for this type at all.
    fn watches(&self, type_url: &str) -> bool {
        self.types().contains_key(type_url)
    }

    /// The subscription of a type.
    fn state(&self, type_url: &str) -> Option<&TypeState> {
        self.types().get(type_url)
    }
}

// === impl Response ===

impl Response {
    /// As a `DiscoveryResponse` message (tests and tools; streams send [`Protocol::encode`]).
    pub fn to_sotw(&self) -> DiscoveryResponse {
        let bytes: Vec<u8> = Sotw::encode(self)
            .iter()
            .flat_map(|b| b.iter().copied())
            .skip(5)
            .collect();
        DiscoveryResponse::decode(&bytes[..]).unwrap_or_default()
    }

    /// As a `DeltaDiscoveryResponse` message (tests and tools).
    pub fn to_delta(&self) -> DeltaDiscoveryResponse {
        let bytes: Vec<u8> = Delta::encode(self)
            .iter()
            .flat_map(|b| b.iter().copied())
            .skip(5)
            .collect();
        DeltaDiscoveryResponse::decode(&bytes[..]).unwrap_or_default()
    }
}

/// A gRPC message of `head` (the response's own fields) followed by shared `entries`: the
/// 5-byte prefix (uncompressed, big-endian length), then the protobuf, which is the merge of
/// its parts.
fn grpc_message(head: &impl Message, entries: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    let entries: Vec<Bytes> = entries.collect();
    let len = head.encoded_len() + entries.iter().map(Bytes::len).sum::<usize>();
    let mut first = Vec::with_capacity(5 + head.encoded_len());
    first.put_u8(0);
    // A response over 4 GiB cannot be framed; the decoder on the other side would refuse
    // it long before (Envoy's limit is far lower), so saturate rather than wrap.
    first.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    head.encode_raw(&mut first);
    let mut out = Vec::with_capacity(entries.len() + 1);
    out.push(Bytes::from(first));
    out.extend(entries);
    out
}

/// The sync status of one type on one stream, as shown on `/debug/syncz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SyncStatus {
    /// Nothing sent yet.
    NotSent,
    /// The last response was ACKed.
    Synced,
    /// A response is waiting for its ACK.
    Stale,
    /// The last response was NACKed.
    Nacked,
}

/// What is known of one type on one stream.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TypeState {
    /// Subscribed names (named types).
    pub names: BTreeSet<String>,
    /// Subscribed to everything (wildcard types, or `*`).
    pub wildcard: bool,
    /// Versions of what the proxy has (or was last sent), by resource name (shared with the
    /// resource: no copy per connection).
    #[serde(skip)]
    pub sent: BTreeMap<Arc<str>, Version>,
    pub sent_version: String,
    pub sent_nonce: String,
    pub acked_version: String,
    pub acked_nonce: String,
    /// The error of the last NACK, until a later response is ACKed.
    pub nack: Option<String>,
    pub responses: u64,
}

// === impl TypeState ===

impl TypeState {
    pub fn status(&self) -> SyncStatus {
        if self.sent_nonce.is_empty() {
            SyncStatus::NotSent
        } else if self.nack.is_some() {
            SyncStatus::Nacked
        } else if self.acked_nonce == self.sent_nonce {
            SyncStatus::Synced
        } else {
            SyncStatus::Stale
        }
    }

    /// A copy without the per-resource versions, for status pages.
    pub fn summary(&self) -> TypeState {
        TypeState {
            names: self.names.clone(),
            wildcard: self.wildcard,
            sent: BTreeMap::new(),
            sent_version: self.sent_version.clone(),
            sent_nonce: self.sent_nonce.clone(),
            acked_version: self.acked_version.clone(),
            acked_nonce: self.acked_nonce.clone(),
            nack: self.nack.clone(),
            responses: self.responses,
        }
    }

    /// Whether the proxy wants resource `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Whether the proxy has (or was last sent) this very resource.
    fn has(&self, r: &SharedResource) -> bool {
        self.sent
            .get(r.name.as_str())
            .is_some_and(|v| v.matches(&Version::parse(&r.version)))
    }

    /// Remembers that the proxy was sent `r`.
    fn record(&mut self, r: &SharedResource) {
        let version = Version::parse(&r.version);
        match self.sent.get_mut(r.name.as_str()) {
            Some(v) => *v = version,
            None => {
                self.sent.insert(r.key(), version);
            }
        }
    }
}

/// A resource version a proxy has, kept compactly: ours are 64-bit hashes in 16 hex digits,
/// held as the number; any other string (from a proxy's `initial_resource_versions`) is
/// unknown and matches nothing, so the resource is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(Option<u64>);

// === impl Version ===

impl Version {
    pub fn parse(s: &str) -> Version {
        Version(
            (s.len() == 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten(),
        )
    }

    fn matches(&self, other: &Version) -> bool {
        self.0.is_some() && self.0 == other.0
    }
}

/// Nonce source: unique per stream and response.
#[derive(Debug, Default)]
struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("{:x}", self.0)
    }
}

/// What both protocols keep: the state of each type, and the nonce source.
#[derive(Debug, Default)]
struct Types {
    types: HashMap<String, TypeState>,
    nonces: Nonces,
}

impl Types {
    /// Records a response of `type_url` carrying `resources` (and, in delta, removing
    /// `removed`, already forgotten by the caller) and builds it, with a fresh nonce.
    fn response(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<SharedResource>,
        removed: Vec<String>,
    ) -> Response {
        let nonce = self.nonces.next();
        if let Some(state) = self.types.get_mut(type_url) {
            for r in &resources {
                state.record(r);
            }
            state.sent_version = version.to_string();
            state.sent_nonce.clone_from(&nonce);
            state.responses += 1;
        }
        if type_url == CLUSTER {
            // Envoy warms a new or changed EDS cluster until it gets that cluster's endpoints
            // again (and holds the CDS ACK until then), even if they did not change: forget
            // them, so the EDS push that follows every CDS push sends them.
            if let Some(eds) = self.types.get_mut(ENDPOINT) {
                for r in &resources {
                    eds.sent.remove(r.name.as_str());
                }
            }
        }
        if type_url == CLUSTER || type_url == LISTENER {
            // Likewise a cluster or listener whose secrets Envoy subscribes to afresh (its
            // last user of a secret replaced in one update, the name list unchanged) waits
            // for them: the SDS push that follows sends them again (Envoy ignores a secret
            // it already has).
            if let Some(sds) = self.types.get_mut(SECRET) {
                sds.sent.clear();
            }
        }
        Response {
            type_url: type_url.to_string(),
            version: version.to_string(),
            nonce,
            resources,
            removed,
        }
    }
}

/// The [`Protocol`] accessors of the fields both request types have.
macro_rules! request_fields {
    ($req:ty) => {
        fn node(req: &$req) -> Option<&Node> {
            req.node.as_ref()
        }

        fn type_url(req: &$req) -> &str {
            &req.type_url
        }

        fn nonce(req: &$req) -> &str {
            &req.response_nonce
        }
    };
}

/// A state-of-the-world stream.
#[derive(Debug, Default)]
pub struct Sotw(Types);

// === impl Sotw ===

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    const DELTA: bool = false;

    request_fields!(DiscoveryRequest);

    fn on_request(&mut self, req: &DiscoveryRequest) -> Action {
        let wildcard_type = is_wildcard_type(&req.type_url);
        let types = &mut self.0.types;
        let state = match types.get_mut(&req.type_url) {
            Some(s) => s,
            None => types.entry(req.type_url.clone()).or_default(),
        };
        if !req.response_nonce.is_empty() && req.response_nonce != state.sent_nonce {
            return Action::Stale;
        }
        let wildcard = req.resource_names.iter().any(|n| n == "*")
            || (wildcard_type && req.resource_names.is_empty());
        // Compared without copying the names: most requests are ACKs of the same list.
        let same_names = req.resource_names.len() >= state.names.len()
            && req.resource_names.iter().all(|n| state.names.contains(n))
            && names_set_len(&req.resource_names) == state.names.len();
        let changed = !same_names || wildcard != state.wildcard;
        if !same_names {
            state.names = req.resource_names.iter().cloned().collect();
        }
        state.wildcard = wildcard;
        if req.response_nonce.is_empty() {
            // A first request on this stream (or after the proxy restarted the type).
            state.sent.clear();
            return Action::Respond;
        }
        if let Some(err) = &req.error_detail {
            state.nack = Some(err.message.clone());
            return Action::Nack(err.message.clone());
        }
        if state.acked_version != req.version_info {
            state.acked_version.clone_from(&req.version_info);
        }
        state.acked_nonce.clone_from(&req.response_nonce);
        state.nack = None;
        if changed {
            // Forget what was sent under names no longer wanted, so they are sent again if
            // the proxy subscribes to them later.
            let (wildcard, names) = (state.wildcard, &state.names);
            state.sent.retain(|n, _| wildcard || names.contains(&**n));
            Action::Respond
        } else {
            Action::Ack
        }
    }

    fn types(&self) -> &HashMap<String, TypeState> {
        &self.0.types
    }

    /// Builds the response for `resources` (everything the proxy should have of this type,
    /// or for named types, the wanted resources that exist), or `None` when nothing changed.
    fn respond(
        &mut self,
        type_url: &str,
        version: &str,
        resources: &[SharedResource],
        force: bool,
    ) -> Option<Response> {
        let state = self.0.types.get_mut(type_url)?;
        let wanted = resources.iter().filter(|r| state.wants(&r.name));
        let to_send: Vec<SharedResource> = if is_wildcard_type(type_url) {
            let wanted: Vec<SharedResource> = wanted.cloned().collect();
            let same = wanted.len() == state.sent.len() && wanted.iter().all(|r| state.has(r));
            if same && !force {
                return None;
            }
            state.sent.clear();
            wanted
        } else {
            let changed: Vec<SharedResource> = wanted.filter(|r| !state.has(r)).cloned().collect();
            if changed.is_empty() && !force {
                return None;
            }
            changed
        };
        Some(self.0.response(type_url, version, to_send, Vec::new()))
    }

    fn encode(resp: &Response) -> Vec<Bytes> {
        let head = DiscoveryResponse {
            version_info: resp.version.clone(),
            type_url: resp.type_url.clone(),
            nonce: resp.nonce.clone(),
            ..Default::default()
        };
        grpc_message(&head, resp.resources.iter().map(|r| r.sotw_entry()))
    }
}

/// The number of distinct names in a request's list.
fn names_set_len(names: &[String]) -> usize {
    names.iter().collect::<BTreeSet<_>>().len()
}

/// A delta (incremental) stream.
#[derive(Debug, Default)]
pub struct Delta(Types);

// === impl Delta ===

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    const DELTA: bool = true;

    request_fields!(DeltaDiscoveryRequest);

    /// Applies subscription changes (whatever the nonce), then reads the ACK or NACK.
    fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> Action {
        let first = !self.0.types.contains_key(&req.type_url);
        let state = self.0.types.entry(req.type_url.clone()).or_default();
        if first {
            state.wildcard =
                is_wildcard_type(&req.type_url) && req.resource_names_subscribe.is_empty();
            state.sent = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), Version::parse(v)))
                .collect();
        }
        let mut subscribed_new = false;
        for name in &req.resource_names_subscribe {
            if name == "*" {
                subscribed_new |= !state.wildcard;
                state.wildcard = true;
            } else if state.names.insert(name.clone()) {
                subscribed_new = true;
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                // The proxy forgets it; send it again if it comes back.
                state.sent.remove(name.as_str());
            }
        }
        if first {
            return Action::Respond;
        }
        let action = if req.response_nonce.is_empty() {
            Action::Respond
        } else if req.response_nonce != state.sent_nonce {
            Action::Stale
        } else if let Some(err) = &req.error_detail {
            state.nack = Some(err.message.clone());
            Action::Nack(err.message.clone())
        } else {
            state.acked_nonce.clone_from(&req.response_nonce);
            state.acked_version.clone_from(&state.sent_version);
            state.nack = None;
            Action::Ack
        };
        if subscribed_new {
            Action::Respond
        } else {
            action
        }
    }

    fn types(&self) -> &HashMap<String, TypeState> {
        &self.0.types
    }

    /// Builds the response bringing the proxy from what it has to `resources` (for wildcard
    /// subscriptions: everything that exists; for names: the wanted ones that exist), or
    /// `None` when it is already there. A name the proxy has that is missing from
    /// `resources` was removed.
    fn respond(
        &mut self,
        type_url: &str,
        version: &str,
        resources: &[SharedResource],
        _force: bool,
    ) -> Option<Response> {
        let state = self.0.types.get_mut(type_url)?;
        let present: BTreeSet<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        let changed: Vec<SharedResource> = resources
            .iter()
            .filter(|r| state.wants(&r.name) && !state.has(r))
            .cloned()
            .collect();
        let removed: Vec<String> = state
            .sent
            .keys()
            .filter(|n| !present.contains(&***n))
            .map(|n| n.to_string())
            .collect();
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        for n in &removed {
            state.sent.remove(n.as_str());
        }
        Some(self.0.response(type_url, version, changed, removed))
    }

    fn encode(resp: &Response) -> Vec<Bytes> {
        let head = DeltaDiscoveryResponse {
            system_version_info: resp.version.clone(),
            type_url: resp.type_url.clone(),
            nonce: resp.nonce.clone(),
            removed_resources: resp.removed.clone(),
            ..Default::default()
        };
        grpc_message(&head, resp.resources.iter().map(|r| r.delta_entry()))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    use super::*;
    use crate::xds::resource::Resource;

    /// A version in the server's own format (16 hex digits) from a short test number.
    fn ver(v: &str) -> String {
        format!("{:016x}", v.parse::<u64>().unwrap())
    }

    fn res(name: &str, version: &str) -> SharedResource {
        Resource::new(
            name,
            ver(version),
            Any {
                type_url: String::new(),
                value: version.as_bytes().to_vec(),
            },
        )
    }

    fn req(type_url: &str, names: &[&str], nonce: &str, nack: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            error_detail: nack.map(|m| RpcStatus {
                code: 3,
                message: m.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_changed_cluster_gets_its_unchanged_endpoints_again() {
        let mut s = Sotw::default();
        s.on_request(&req(CLUSTER, &[], "", None));
        let c1 = s
            .respond(CLUSTER, "v1", &[res("a", "1"), res("b", "1")], true)
            .unwrap();
        s.on_request(&req(CLUSTER, &[], &c1.nonce, None));
        s.on_request(&req(ENDPOINT, &["a", "b"], "", None));
        let e1 = s
            .respond(ENDPOINT, "v1", &[res("a", "7"), res("b", "7")], true)
            .unwrap();
        assert_eq!(
            s.on_request(&req(ENDPOINT, &["a", "b"], &e1.nonce, None)),
            Action::Ack
        );
        // Nothing changed: nothing to send.
        assert!(
            s.respond(ENDPOINT, "v2", &[res("a", "7"), res("b", "7")], false)
                .is_none()
        );

        // Cluster `a` changes; Envoy warms it until it gets `a`'s endpoints again.
        let c2 = s
            .respond(CLUSTER, "v3", &[res("a", "2"), res("b", "1")], false)
            .unwrap();
        assert_eq!(c2.resources.len(), 2, "CDS is sent whole");
        let e2 = s
            .respond(ENDPOINT, "v3", &[res("a", "7"), res("b", "7")], false)
            .unwrap();
        let names: BTreeSet<&str> = e2.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["a", "b"]));
        assert_eq!(
            s.on_request(&req(CLUSTER, &[], &c2.nonce, None)),
            Action::Ack
        );
        assert_eq!(s.state(CLUSTER).unwrap().status(), SyncStatus::Synced);
    }

    #[test]
    fn secrets_are_sent_again_after_clusters_and_listeners() {
        let mut s = Sotw::default();
        s.on_request(&req(CLUSTER, &[], "", None));
        s.respond(CLUSTER, "v1", &[res("c", "1")], true).unwrap();
        s.on_request(&req(SECRET, &["default"], "", None));
        let s1 = s
            .respond(SECRET, "v1", &[res("default", "1")], true)
            .unwrap();
        assert_eq!(
            s.on_request(&req(SECRET, &["default"], &s1.nonce, None)),
            Action::Ack
        );
        assert!(
            s.respond(SECRET, "v2", &[res("default", "1")], false)
                .is_none()
        );
        s.on_request(&req(LISTENER, &[], "", None));
        s.respond(LISTENER, "v3", &[res("l", "1")], true).unwrap();
        let again = s.respond(SECRET, "v3", &[res("default", "1")], false);
        assert_eq!(again.map(|r| r.resources.len()), Some(1));
    }

    #[test]
    fn sotw_initial_ack_nack_and_stale() {
        let mut s = Sotw::default();
        assert_eq!(s.on_request(&req(CLUSTER, &[], "", None)), Action::Respond);
        let r1 = s.respond(CLUSTER, "v1", &[res("a", "1")], true).unwrap();
        assert_eq!(r1.resources.len(), 1);
        assert_eq!(s.state(CLUSTER).unwrap().status(), SyncStatus::Stale);

        // ACK: not answered.
        assert_eq!(
            s.on_request(&req(CLUSTER, &[], &r1.nonce, None)),
            Action::Ack
        );
        assert_eq!(s.state(CLUSTER).unwrap().status(), SyncStatus::Synced);

        // A push with the same content sends nothing.
        assert!(s.respond(CLUSTER, "v2", &[res("a", "1")], false).is_none());

        // A change is sent, complete (wildcard type): both clusters.
        let r2 = s
            .respond(CLUSTER, "v3", &[res("a", "1"), res("b", "1")], false)
            .unwrap();
        assert_eq!(r2.resources.len(), 2);
        assert_ne!(r2.nonce, r1.nonce);

        // A request carrying the old nonce is stale and ignored.
        assert_eq!(
            s.on_request(&req(CLUSTER, &[], &r1.nonce, None)),
            Action::Stale
        );

        // NACK: recorded, not answered, not resent unchanged.
        assert_eq!(
            s.on_request(&req(CLUSTER, &[], &r2.nonce, Some("bad cluster"))),
            Action::Nack("bad cluster".into())
        );
        assert_eq!(s.state(CLUSTER).unwrap().status(), SyncStatus::Nacked);
        assert!(
            s.respond(CLUSTER, "v4", &[res("a", "1"), res("b", "1")], false)
                .is_none()
        );
        // A fixed config goes out and its ACK clears the NACK.
        let r3 = s
            .respond(CLUSTER, "v5", &[res("a", "1"), res("b", "2")], false)
            .unwrap();
        assert_eq!(
            s.on_request(&req(CLUSTER, &[], &r3.nonce, None)),
            Action::Ack
        );
        assert_eq!(s.state(CLUSTER).unwrap().status(), SyncStatus::Synced);
        assert!(s.state(CLUSTER).unwrap().nack.is_none());
    }

    #[test]
    fn sotw_named_types_send_only_what_changed_and_remember_missing_names() {
        let mut s = Sotw::default();
        assert_eq!(
            s.on_request(&req(ENDPOINT, &["x", "y"], "", None)),
            Action::Respond
        );
        // Only x exists yet: the answer carries x; y is remembered.
        let r1 = s.respond(ENDPOINT, "v1", &[res("x", "1")], true).unwrap();
        assert_eq!(r1.resources.len(), 1);
        assert_eq!(
            s.on_request(&req(ENDPOINT, &["x", "y"], &r1.nonce, None)),
            Action::Ack
        );
        // y appears: only y is sent.
        let r2 = s
            .respond(ENDPOINT, "v2", &[res("x", "1"), res("y", "1")], false)
            .unwrap();
        assert_eq!(r2.resources.len(), 1);
        // A subscription change on the ACK is answered.
        assert_eq!(
            s.on_request(&req(ENDPOINT, &["x", "y", "z"], &r2.nonce, None)),
            Action::Respond
        );
        // Resources nobody asked for are never sent.
        let r3 = s
            .respond(ENDPOINT, "v3", &[res("q", "1"), res("z", "1")], true)
            .unwrap();
        let names: Vec<_> = r3.resources.iter().map(|r| r.any.value.clone()).collect();
        assert_eq!(names, vec![b"1".to_vec()]);
        assert!(s.watches(ENDPOINT) && !s.watches(CLUSTER));
    }

    fn dreq(
        type_url: &str,
        sub: &[&str],
        unsub: &[&str],
        nonce: &str,
        initial: &[(&str, &str)],
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            initial_resource_versions: initial
                .iter()
                .map(|(k, v)| (k.to_string(), ver(v)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn delta_sends_changes_and_removals_and_honours_initial_versions() {
        let mut d = Delta::default();
        // Reconnect: the proxy already has a@1 and gone@1.
        assert_eq!(
            d.on_request(&dreq(CLUSTER, &[], &[], "", &[("a", "1"), ("gone", "1")])),
            Action::Respond
        );
        let r1 = d
            .respond(CLUSTER, "v1", &[res("a", "1"), res("b", "1")], false)
            .unwrap();
        let sent: Vec<_> = r1.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(sent, vec!["b"]);
        assert_eq!(r1.removed, vec!["gone".to_string()]);
        assert_eq!(
            d.on_request(&dreq(CLUSTER, &[], &[], &r1.nonce, &[])),
            Action::Ack
        );
        assert!(
            d.respond(CLUSTER, "v2", &[res("a", "1"), res("b", "1")], false)
                .is_none()
        );
        let r2 = d.respond(CLUSTER, "v3", &[res("b", "2")], false).unwrap();
        assert_eq!(r2.resources[0].name, "b");
        assert_eq!(r2.removed, vec!["a".to_string()]);
    }

    #[test]
    fn delta_subscriptions_apply_even_on_stale_nonces() {
        let mut d = Delta::default();
        assert_eq!(
            d.on_request(&dreq(ENDPOINT, &["x"], &[], "", &[])),
            Action::Respond
        );
        let r1 = d.respond(ENDPOINT, "v1", &[res("x", "1")], false).unwrap();
        let r2 = d.respond(ENDPOINT, "v2", &[res("x", "2")], false).unwrap();
        // Subscribing with an old nonce still subscribes.
        assert_eq!(
            d.on_request(&dreq(ENDPOINT, &["y"], &[], &r1.nonce, &[])),
            Action::Respond
        );
        assert!(d.state(ENDPOINT).unwrap().names.contains("y"));
        // A stale ACK with no changes is ignored.
        assert_eq!(
            d.on_request(&dreq(ENDPOINT, &[], &[], &r1.nonce, &[])),
            Action::Stale
        );
        assert_eq!(
            d.on_request(&dreq(ENDPOINT, &[], &[], &r2.nonce, &[])),
            Action::Ack
        );
        // Unsubscribed names are forgotten and never reported removed.
        assert_eq!(
            d.on_request(&dreq(ENDPOINT, &[], &["x"], &r2.nonce, &[])),
            Action::Ack
        );
        let r3 = d.respond(ENDPOINT, "v3", &[res("y", "1")], false).unwrap();
        assert!(r3.removed.is_empty());
        assert_eq!(r3.resources[0].name, "y");
    }

    #[test]
    fn responses_encode_as_the_protobuf_messages_they_stand_for() {
        let a = Resource::encode(
            "a",
            &envoy_types::pb::envoy::config::cluster::v3::Cluster {
                name: "a".into(),
                ..Default::default()
            },
        );
        let resp = Response {
            type_url: CLUSTER.into(),
            version: "v1".into(),
            nonce: "7".into(),
            resources: vec![a.clone(), a.clone()],
            removed: vec!["gone".into()],
        };
        let sotw = resp.to_sotw();
        assert_eq!(
            sotw,
            DiscoveryResponse {
                version_info: "v1".into(),
                resources: vec![a.any.clone(), a.any.clone()],
                type_url: CLUSTER.into(),
                nonce: "7".into(),
                ..Default::default()
            }
        );
        let delta = resp.to_delta();
        assert_eq!(delta.system_version_info, "v1");
        assert_eq!(delta.removed_resources, vec!["gone".to_string()]);
        assert_eq!(delta.resources.len(), 2);
        assert_eq!(delta.resources[0].name, "a");
        assert_eq!(delta.resources[0].version, a.version);
        assert_eq!(delta.resources[0].resource.as_ref(), Some(&a.any));
        // The gRPC prefix carries the length of what follows.
        let chunks = Sotw::encode(&resp);
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        let len = u32::from_be_bytes(chunks[0][1..5].try_into().unwrap()) as usize;
        assert_eq!((chunks[0][0], len), (0, total - 5));
    }

    #[test]
    fn versions_not_in_the_server_format_never_match() {
        let mut d = Delta::default();
        d.on_request(&DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            initial_resource_versions: [("a".to_string(), "1".to_string())].into(),
            ..Default::default()
        });
        let r = d.respond(CLUSTER, "v1", &[res("a", "1")], false).unwrap();
        assert_eq!(r.resources.len(), 1, "an unknown version is resent");
    }
}
