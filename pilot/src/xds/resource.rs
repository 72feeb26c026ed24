//! Encoded xDS resources: generated once, encoded once, shared by every proxy that gets them.
//!
//! A resource also keeps, built on first use and then shared, its encoding as an entry of a
//! state-of-the-world response and of a delta response: a response to a proxy is a few bytes of
//! its own (version, nonce, type) followed by these shared entries, so no proxy holds a copy of
//! the config it is sent.
//!
//! Encodings are canonical: prost writes protobuf maps (`typed_per_filter_config`,
//! `filter_metadata`, `Struct.fields`, `context_extensions`, ...) in `HashMap` order, which
//! changes from one map to the next, so the same config would encode to different bytes, get a
//! new version on every push and be resent to every proxy. [`Resource::encode`] and [`any`]
//! rewrite every map's entries in key order, guided by Envoy's descriptors: equal config,
//! equal bytes, equal version, in any process. Each `Any` is made canonical when it is packed
//! (by [`any`], which every generator uses), so encoding the message around it skips it:
//! only the few paths that can reach a map are walked.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, OnceLock};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

/// Type URL of clusters (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of cluster load assignments (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of listeners (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of route configurations (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Type URL of SDS secrets (certificates and roots, by name, like EDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The types this server serves, in make-before-break push order: secrets after endpoints,
/// as a new cluster warms until it has both, and before the listeners that may need them.
/// (Envoy also pauses its EDS and SDS requests while it applies CDS, and asks for a secret a
/// new cluster or listener refers to when it creates it.)
pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE];

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
        SECRET => "sds",
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
        let value = canonical_encoding(msg);
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

/// Packs a message into an `Any` (for typed_config fields), canonically encoded.
pub fn any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: canonical_encoding(msg),
    }
}

// === canonical encoding ===

/// Envoy's API descriptor set, as `envoy-types` ships it (see `build.rs`).
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// The descriptors, decoded once for the canonical encoder and the JSON config dump.
static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()));

/// Envoy's API descriptors (a cheap handle on the one decoded pool); the error says why they
/// do not load.
pub fn envoy_descriptors() -> Result<DescriptorPool, String> {
    POOL.clone()
}

/// What canonicalizing needs to know of every message type, computed once. `Any`s are taken
/// as they are: [`any`] made them canonical.
static CANON: LazyLock<Option<Canon>> = LazyLock::new(|| match Canon::new(false) {
    Ok(c) => Some(c),
    Err(e) => {
        tracing::error!(error = %e, "resources will not be encoded canonically");
        None
    }
});

/// Why the canonical encoder is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum CanonError {
    #[error("Envoy's descriptors do not load: {0}")]
    Descriptors(String),
}

/// A message that is not well-formed protobuf (left as it is).
#[derive(Debug, thiserror::Error)]
#[error("malformed protobuf")]
struct Malformed;

/// `msg` encoded with its maps' entries in key order (plain prost encoding for types outside
/// Envoy's descriptors).
pub fn canonical_encoding<M: Message + Name>(msg: &M) -> Vec<u8> {
    let mut value = msg.encode_to_vec();
    if let Some(canon) = CANON.as_ref()
        && let Some(index) = canon.index(M::PACKAGE, M::NAME)
    {
        let _ = canon.message(index, &mut value);
    }
    value
}

/// Whether `bytes`, an encoded `type_name`, are canonical all the way down, inside its `Any`s
/// too (which the encoder takes as they are): what [`any`] must have made them.
#[cfg(test)]
pub(crate) fn is_canonical_deep(type_name: &str, bytes: &[u8]) -> bool {
    static DEEP: LazyLock<Option<Canon>> = LazyLock::new(|| Canon::new(true).ok());
    let mut copy = bytes.to_vec();
    let Some(canon) = DEEP.as_ref() else {
        return false;
    };
    canon.canonicalize(type_name, &mut copy);
    copy == bytes
}

/// Per message type (by its index in `by_name`): the fields that may hold a map, at any depth.
/// Message types that cannot are absent (`None`), so canonicalizing skips them whole.
struct Canon {
    /// Message types' indexes, by full name.
    by_name: HashMap<Box<str>, usize>,
    /// The same, by package, then name within the package (what prost's `Name` gives).
    by_package: HashMap<Box<str>, HashMap<Box<str>, usize>>,
    plans: Vec<Option<Plan>>,
}

/// The fields of a message type that may hold a map, by field number (sorted).
type Plan = Box<[(u32, FieldPlan)]>;

/// What to do with one field of a message.
#[derive(Debug, Clone, Copy)]
enum FieldPlan {
    /// A map: sort its entries by key, after canonicalizing each entry (the message type of
    /// the entries, when their values may hold maps).
    Map(Option<usize>),
    /// A message that may hold maps.
    Message(usize),
    /// An `Any`: canonicalize its value as the type its URL names (deep canonicalizers only;
    /// others take `Any`s as they are).
    Any,
}

const ANY: &str = "google.protobuf.Any";

// === impl Canon ===

impl Canon {
    fn new(deep: bool) -> Result<Canon, CanonError> {
        let pool = envoy_descriptors().map_err(CanonError::Descriptors)?;
        let messages: Vec<MessageDescriptor> = pool.all_messages().collect();
        let count = messages.len();
        let by_name: HashMap<Box<str>, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (Box::from(m.full_name()), i))
            .collect();
        let message_type = |f: &prost_reflect::FieldDescriptor| match f.kind() {
            Kind::Message(m) => by_name.get(m.full_name()).copied(),
            _ => None,
        };
        let mut by_package: HashMap<Box<str>, HashMap<Box<str>, usize>> = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            let package = m.package_name();
            let name = m
                .full_name()
                .strip_prefix(package)
                .and_then(|n| n.strip_prefix('.'))
                .unwrap_or(m.full_name());
            by_package
                .entry(Box::from(package))
                .or_default()
                .insert(Box::from(name), i);
        }
        // Which types may hold a map: fixed point over the (possibly recursive) type graph.
        // An `Any` may hold anything when canonicalizing deep, else nothing to do.
        let any_index = by_name.get(ANY).copied().filter(|_| deep);
        let mut holds = vec![false; count];
        let mut changed = true;
        while changed {
            changed = false;
            for (i, m) in messages.iter().enumerate() {
                if holds[i] {
                    continue;
                }
                if Some(i) == any_index
                    || m.fields()
                        .any(|f| f.is_map() || message_type(&f).is_some_and(|t| holds[t]))
                {
                    holds[i] = true;
                    changed = true;
                }
            }
        }
        let mut plans: Vec<Option<Plan>> = vec![None; count];
        for (i, m) in messages.iter().enumerate() {
            if !holds[i] || Some(i) == any_index {
                continue;
            }
            let mut fields: Vec<(u32, FieldPlan)> = m
                .fields()
                .filter_map(|f| {
                    let t = message_type(&f)?;
                    let plan = if f.is_map() {
                        let value = messages.get(t)?.map_entry_value_field();
                        let deep = message_type(&value).is_some_and(|v| holds[v]);
                        FieldPlan::Map(deep.then_some(t))
                    } else if Some(t) == any_index {
                        FieldPlan::Any
                    } else if holds[t] {
                        FieldPlan::Message(t)
                    } else {
                        return None;
                    };
                    Some((f.number(), plan))
                })
                .collect();
            fields.sort_by_key(|(n, _)| *n);
            plans[i] = Some(fields.into_boxed_slice());
        }
        Ok(Canon {
            by_name,
            by_package,
            plans,
        })
    }

    /// The index of message type `name` of `package`.
    fn index(&self, package: &str, name: &str) -> Option<usize> {
        self.by_package.get(package)?.get(name).copied()
    }

    /// Rewrites `buf`, an encoded `type_name`, canonically, in place (the length never
    /// changes: only map entries move). Malformed input is left as it is from where it breaks.
    #[cfg(test)]
    fn canonicalize(&self, type_name: &str, buf: &mut [u8]) {
        if let Some(&m) = self.by_name.get(type_name) {
            let _ = self.message(m, buf);
        }
    }

    fn plan(&self, index: usize, field: u32) -> Option<FieldPlan> {
        let fields = self.plans.get(index)?.as_ref()?;
        let at = fields.binary_search_by_key(&field, |(n, _)| *n).ok()?;
        Some(fields[at].1)
    }

    fn message(&self, index: usize, buf: &mut [u8]) -> Result<(), Malformed> {
        if self.plans.get(index).is_none_or(Option::is_none) {
            return Ok(());
        }
        let mut at = 0;
        // The current run of one map field's entries: (field, entry type, spans).
        let mut run: Option<(u32, Option<usize>, Vec<Span>)> = None;
        while at < buf.len() {
            let field = read_field(buf, at)?;
            let plan = match field.payload {
                Some(_) => self.plan(index, field.number),
                None => None,
            };
            if let Some((number, entry, spans)) = run.take() {
                match plan {
                    Some(FieldPlan::Map(_)) if number == field.number => {
                        run = Some((number, entry, spans));
                    }
                    _ => self.sort_entries(buf, entry, &spans)?,
                }
            }
            match (plan, field.payload) {
                (Some(FieldPlan::Map(entry)), Some(payload)) => {
                    let span = Span {
                        start: at,
                        payload,
                        end: field.end,
                    };
                    match &mut run {
                        Some((_, _, spans)) => spans.push(span),
                        None => run = Some((field.number, entry, vec![span])),
                    }
                }
                (Some(FieldPlan::Message(t)), Some(payload)) => {
                    self.message(t, sub(buf, payload, field.end)?)?;
                }
                (Some(FieldPlan::Any), Some(payload)) => {
                    self.any(sub(buf, payload, field.end)?)?;
                }
                _ => {}
            }
            at = field.end;
        }
        if let Some((_, entry, spans)) = run {
            self.sort_entries(buf, entry, &spans)?;
        }
        Ok(())
    }

    /// Canonicalizes the value of an `Any` as the type its URL names.
    fn any(&self, buf: &mut [u8]) -> Result<(), Malformed> {
        let mut type_index = None;
        let mut value = None;
        let mut at = 0;
        while at < buf.len() {
            let field = read_field(buf, at)?;
            match (field.number, field.payload) {
                (1, Some(p)) => {
                    let url = std::str::from_utf8(&buf[p..field.end]).map_err(|_| Malformed)?;
                    let name = url.rsplit_once('/').map_or(url, |(_, n)| n);
                    type_index = self.by_name.get(name).copied();
                }
                (2, Some(p)) => value = Some((p, field.end)),
                _ => {}
            }
            at = field.end;
        }
        if let (Some(m), Some((start, end))) = (type_index, value) {
            self.message(m, sub(buf, start, end)?)?;
        }
        Ok(())
    }

    /// Canonicalizes each entry of a run of map entries, then puts them in key order.
    fn sort_entries(
        &self,
        buf: &mut [u8],
        entry: Option<usize>,
        spans: &[Span],
    ) -> Result<(), Malformed> {
        if let Some(t) = entry {
            for s in spans {
                self.message(t, sub(buf, s.payload, s.end)?)?;
            }
        }
        if spans.len() < 2 {
            return Ok(());
        }
        let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
            return Ok(());
        };
        let range = first.start..last.end;
        let mut entries = Vec::with_capacity(spans.len());
        for s in spans {
            let entry = buf.get(s.payload..s.end).ok_or(Malformed)?;
            let whole = buf.get(s.start..s.end).ok_or(Malformed)?;
            entries.push((map_key(entry)?, whole));
        }
        if entries.is_sorted() {
            return Ok(());
        }
        entries.sort();
        let mut sorted = Vec::with_capacity(range.len());
        for (_, bytes) in entries {
            sorted.extend_from_slice(bytes);
        }
        let target = buf.get_mut(range).ok_or(Malformed)?;
        // A run is contiguous, so the entries fill it exactly.
        if target.len() != sorted.len() {
            return Err(Malformed);
        }
        target.copy_from_slice(&sorted);
        Ok(())
    }
}

/// Where one map entry lies in its message: its tag, its payload, its end.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    payload: usize,
    end: usize,
}

/// One field as read from the wire.
struct Field {
    number: u32,
    wire: u64,
    /// Where the value starts (after the tag).
    value: usize,
    /// Where the payload of a length-delimited field starts.
    payload: Option<usize>,
    end: usize,
}

fn sub(buf: &mut [u8], start: usize, end: usize) -> Result<&mut [u8], Malformed> {
    buf.get_mut(start..end).ok_or(Malformed)
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or(Malformed)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed)
}

fn read_field(buf: &[u8], start: usize) -> Result<Field, Malformed> {
    let mut at = start;
    let tag = read_varint(buf, &mut at)?;
    let number = u32::try_from(tag >> 3).map_err(|_| Malformed)?;
    let value = at;
    let wire = tag & 7;
    let (payload, end) = match wire {
        0 => {
            read_varint(buf, &mut at)?;
            (None, at)
        }
        1 => (None, at + 8),
        2 => {
            let len = usize::try_from(read_varint(buf, &mut at)?).map_err(|_| Malformed)?;
            (Some(at), at.checked_add(len).ok_or(Malformed)?)
        }
        5 => (None, at + 4),
        _ => return Err(Malformed),
    };
    if end > buf.len() {
        return Err(Malformed);
    }
    Ok(Field {
        number,
        wire,
        value,
        payload,
        end,
    })
}

/// The sort key of a map entry: its key field's payload (strings by their bytes; integers
/// by value).
fn map_key(entry: &[u8]) -> Result<Cow<'_, [u8]>, Malformed> {
    let mut at = 0;
    while at < entry.len() {
        let field = read_field(entry, at)?;
        if field.number == 1 {
            let mut v = field.value;
            return Ok(match (field.payload, field.wire) {
                (Some(p), _) => Cow::Borrowed(&entry[p..field.end]),
                // Varints by value; fixed-width keys by their bytes.
                (None, 0) => Cow::Owned(read_varint(entry, &mut v)?.to_be_bytes().to_vec()),
                (None, _) => Cow::Borrowed(&entry[field.value..field.end]),
            });
        }
        at = field.end;
    }
    // Default keys are not written.
    Ok(Cow::Borrowed(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as ValueKind};

    /// A route whose per-filter config has `n` entries (each an `Any` holding a map of its
    /// own) and metadata with nested structs, its maps filled in `order`.
    fn route(n: usize, reverse: bool) -> Route {
        let mut keys: Vec<usize> = (0..n).collect();
        if reverse {
            keys.reverse();
        }
        let string = |s: String| Value {
            kind: Some(ValueKind::StringValue(s)),
        };
        let mut route = Route {
            name: "r".into(),
            ..Default::default()
        };
        for &k in &keys {
            let inner: HashMap<String, Value> = keys
                .iter()
                .map(|&j| (format!("field-{j}"), string(format!("{k}.{j}"))))
                .collect();
            route
                .typed_per_filter_config
                .insert(format!("filter-{k}"), any(&Struct { fields: inner }));
            let nested = Struct {
                fields: HashMap::from([(
                    format!("nested-{k}"),
                    Value {
                        kind: Some(ValueKind::StructValue(Struct {
                            fields: keys
                                .iter()
                                .map(|&j| (format!("leaf-{j}"), string(j.to_string())))
                                .collect(),
                        })),
                    },
                )]),
            };
            route
                .metadata
                .get_or_insert_with(Metadata::default)
                .filter_metadata
                .insert(format!("ns-{k}"), nested);
        }
        route
    }

    fn config(route: Route) -> RouteConfiguration {
        RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![route],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn maps_encode_in_key_order_at_every_depth() {
        // Twenty entries per map: two maps iterating alike by chance is all but impossible,
        // so plain prost encoding fails this.
        let a = config(route(20, false));
        let b = config(route(20, true));
        assert!(
            a.encode_to_vec() != b.encode_to_vec(),
            "prost's map order happened to agree; the test proves nothing"
        );
        let (ra, rb) = (Resource::encode("80", &a), Resource::encode("80", &b));
        assert!(ra.any.value == rb.any.value, "different bytes");
        assert_eq!(ra.version, rb.version);
        // Still the same config: every map holds what it held, the `Any`s too.
        let cfg = RouteConfiguration::decode(&ra.any.value[..]).unwrap();
        let (got, want) = (
            &cfg.virtual_hosts[0].routes[0],
            &a.virtual_hosts[0].routes[0],
        );
        assert!(got.metadata == want.metadata, "metadata changed");
        assert_eq!(got.typed_per_filter_config.len(), 20);
        for (k, v) in &want.typed_per_filter_config {
            let decode = |a: &Any| Struct::decode(&a.value[..]).unwrap();
            assert!(
                decode(&got.typed_per_filter_config[k]) == decode(v),
                "{k} changed"
            );
        }
        // Canonical already: encoding the decoded config again gives the same bytes.
        assert!(Resource::encode("80", &cfg).any.value == ra.any.value);
        // Entries in key order, inside the `Any`s too.
        let decoded_keys = |bytes: &[u8]| {
            let mut names = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let f = read_field(bytes, at).unwrap();
                if f.number == 1
                    && let Some(p) = f.payload
                {
                    let key = read_field(&bytes[p..f.end], 0).unwrap();
                    let start = p + key.payload.unwrap();
                    names.push(String::from_utf8(bytes[start..p + key.end].to_vec()).unwrap());
                }
                at = f.end;
            }
            names
        };
        let inner = &cfg.virtual_hosts[0].routes[0].typed_per_filter_config["filter-3"];
        let mut inner_bytes = inner.value.clone();
        let before = inner_bytes.clone();
        CANON
            .as_ref()
            .unwrap()
            .canonicalize("google.protobuf.Struct", &mut inner_bytes);
        let names = decoded_keys(&before);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names.len(), 20);
        assert_eq!(names, sorted, "the Any inside was not canonicalized");
        assert_eq!(inner_bytes, before);
    }

    #[test]
    fn malformed_bytes_are_left_alone() {
        let mut bytes = vec![0x0a, 0xff, 0xff, 0x01, 0x02];
        let copy = bytes.clone();
        CANON
            .as_ref()
            .unwrap()
            .canonicalize("envoy.config.route.v3.RouteConfiguration", &mut bytes);
        assert_eq!(bytes, copy);
    }
}
