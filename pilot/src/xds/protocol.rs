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

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};

use super::resource::{SharedResource, is_wildcard_type};

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
    /// Versions of what the proxy has (or was last sent), by resource name.
    #[serde(skip)]
    pub sent: BTreeMap<String, String>,
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

/// A state-of-the-world stream.
#[derive(Debug, Default)]
pub struct Sotw {
    types: HashMap<String, TypeState>,
    nonces: Nonces,
}

// === impl Sotw ===

impl Sotw {
    /// Interprets a request and updates the subscription it carries.
    pub fn on_request(&mut self, req: &DiscoveryRequest) -> Action {
        let wildcard_type = is_wildcard_type(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != state.sent_nonce {
            return Action::Stale;
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = names.contains("*") || (wildcard_type && names.is_empty());
        let changed = names != state.names || wildcard != state.wildcard;
        state.names = names;
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
        state.acked_version = req.version_info.clone();
        state.acked_nonce = req.response_nonce.clone();
        state.nack = None;
        if changed {
            // Forget what was sent under names no longer wanted, so they are sent again if
            // the proxy subscribes to them later.
            let keep: BTreeSet<String> = state
                .sent
                .keys()
                .filter(|n| state.wants(n))
                .cloned()
                .collect();
            state.sent.retain(|n, _| keep.contains(n));
            Action::Respond
        } else {
            Action::Ack
        }
    }

    /// Whether the stream has asked for this type at all.
    pub fn watches(&self, type_url: &str) -> bool {
        self.types.contains_key(type_url)
    }

    /// The subscription of a type.
    pub fn state(&self, type_url: &str) -> Option<&TypeState> {
        self.types.get(type_url)
    }

    /// All types' states.
    pub fn states(&self) -> impl Iterator<Item = (&String, &TypeState)> {
        self.types.iter()
    }

    /// Builds the response for `resources` (everything the proxy should have of this type,
    /// or for named types, the wanted resources that exist), or `None` when nothing changed.
    /// `force` sends even when nothing changed (an answer to a request).
    pub fn respond(
        &mut self,
        type_url: &str,
        version: &str,
        resources: &[SharedResource],
        force: bool,
    ) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let wanted: Vec<&SharedResource> =
            resources.iter().filter(|r| state.wants(&r.name)).collect();
        let to_send: Vec<&SharedResource> = if is_wildcard_type(type_url) {
            let same = wanted.len() == state.sent.len()
                && wanted
                    .iter()
                    .all(|r| state.sent.get(&r.name) == Some(&r.version));
            if same && !force {
                return None;
            }
            wanted
        } else {
            let changed: Vec<&SharedResource> = wanted
                .into_iter()
                .filter(|r| state.sent.get(&r.name) != Some(&r.version))
                .collect();
            if changed.is_empty() && !force {
                return None;
            }
            changed
        };
        if is_wildcard_type(type_url) {
            state.sent.clear();
        }
        for r in &to_send {
            state.sent.insert(r.name.clone(), r.version.clone());
        }
        let nonce = self.nonces.next();
        state.sent_version = version.to_string();
        state.sent_nonce = nonce.clone();
        state.responses += 1;
        Some(DiscoveryResponse {
            version_info: version.to_string(),
            resources: to_send.iter().map(|r| r.any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        })
    }
}

/// A delta (incremental) stream.
#[derive(Debug, Default)]
pub struct Delta {
    types: HashMap<String, TypeState>,
    nonces: Nonces,
}

// === impl Delta ===

impl Delta {
    /// Interprets a request: applies subscription changes (whatever the nonce), then reads
    /// the ACK or NACK.
    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> Action {
        let first = !self.types.contains_key(&req.type_url);
        let state = self.types.entry(req.type_url.clone()).or_default();
        if first {
            state.wildcard =
                is_wildcard_type(&req.type_url) && req.resource_names_subscribe.is_empty();
            state.sent = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
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
                state.sent.remove(name);
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
            state.acked_nonce = req.response_nonce.clone();
            state.acked_version = state.sent_version.clone();
            state.nack = None;
            Action::Ack
        };
        if subscribed_new {
            Action::Respond
        } else {
            action
        }
    }

    pub fn watches(&self, type_url: &str) -> bool {
        self.types.contains_key(type_url)
    }

    pub fn state(&self, type_url: &str) -> Option<&TypeState> {
        self.types.get(type_url)
    }

    pub fn states(&self) -> impl Iterator<Item = (&String, &TypeState)> {
        self.types.iter()
    }

    /// Builds the response bringing the proxy from what it has to `resources` (for wildcard
    /// subscriptions: everything that exists; for names: the wanted ones that exist), or
    /// `None` when it is already there. `complete` says `resources` covers every name the
    /// proxy wants, so a wanted name missing from it was removed.
    pub fn respond(
        &mut self,
        type_url: &str,
        version: &str,
        resources: &[SharedResource],
    ) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let present: BTreeSet<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        let changed: Vec<&SharedResource> = resources
            .iter()
            .filter(|r| state.wants(&r.name))
            .filter(|r| state.sent.get(&r.name) != Some(&r.version))
            .collect();
        let removed: Vec<String> = state
            .sent
            .keys()
            .filter(|n| !present.contains(n.as_str()))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        for n in &removed {
            state.sent.remove(n);
        }
        for r in &changed {
            state.sent.insert(r.name.clone(), r.version.clone());
        }
        let nonce = self.nonces.next();
        state.sent_version = version.to_string();
        state.sent_nonce = nonce.clone();
        state.responses += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: version.to_string(),
            resources: changed
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    use super::*;
    use crate::xds::resource::{CLUSTER, ENDPOINT, Resource};

    fn res(name: &str, version: &str) -> SharedResource {
        Arc::new(Resource {
            name: name.into(),
            version: version.into(),
            any: Any {
                type_url: String::new(),
                value: version.as_bytes().to_vec(),
            },
        })
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
        let names: Vec<_> = r3.resources.iter().map(|a| a.value.clone()).collect();
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
                .map(|(k, v)| (k.to_string(), v.to_string()))
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
            .respond(CLUSTER, "v1", &[res("a", "1"), res("b", "1")])
            .unwrap();
        let sent: Vec<_> = r1.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(sent, vec!["b"]);
        assert_eq!(r1.removed_resources, vec!["gone".to_string()]);
        assert_eq!(
            d.on_request(&dreq(CLUSTER, &[], &[], &r1.nonce, &[])),
            Action::Ack
        );
        assert!(
            d.respond(CLUSTER, "v2", &[res("a", "1"), res("b", "1")])
                .is_none()
        );
        let r2 = d.respond(CLUSTER, "v3", &[res("b", "2")]).unwrap();
        assert_eq!(r2.resources[0].name, "b");
        assert_eq!(r2.removed_resources, vec!["a".to_string()]);
    }

    #[test]
    fn delta_subscriptions_apply_even_on_stale_nonces() {
        let mut d = Delta::default();
        assert_eq!(
            d.on_request(&dreq(ENDPOINT, &["x"], &[], "", &[])),
            Action::Respond
        );
        let r1 = d.respond(ENDPOINT, "v1", &[res("x", "1")]).unwrap();
        let r2 = d.respond(ENDPOINT, "v2", &[res("x", "2")]).unwrap();
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
        let r3 = d.respond(ENDPOINT, "v3", &[res("y", "1")]).unwrap();
        assert!(r3.removed_resources.is_empty());
        assert_eq!(r3.resources[0].name, "y");
    }
}
