//! The attribute vocabulary: every attribute name Mixer knows, with its type.
//!
//! Built from the `attributemanifest` objects in config, on top of the manifests Istio 1.0
//! ships (`istio-proxy` and `kubernetes`) plus the few attributes later Istio versions added,
//! so a config without manifests still type-checks Istio's standard attributes. A manifest in
//! config overrides the built-in type of an attribute it declares.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::ValueType;

/// The index of an attribute in a [`Vocabulary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrId(u32);

/// Why (part of) an attribute manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabularyError {
    /// `spec.attributes` is not a mapping.
    #[error("spec.attributes: must be a mapping of attribute name to {{valueType}}")]
    NotAMap,
    /// An attribute's `valueType` is missing or unknown.
    #[error("spec.attributes.{name}.valueType: unknown value type {value_type:?}")]
    BadType { name: String, value_type: String },
    /// Two manifests declare the same attribute with different types.
    #[error(
        "spec.attributes.{name}.valueType: {value_type} conflicts with {previous} declared by {by}"
    )]
    Conflict {
        name: String,
        value_type: ValueType,
        previous: ValueType,
        by: String,
    },
}

/// Every known attribute and its type.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    names: Vec<(Arc<str>, ValueType)>,
    index: HashMap<Arc<str>, u32, BuildHasherDefault<Fnv>>,
    /// Which manifest declared each attribute (`None`: built in).
    declared_by: Vec<Option<Arc<str>>>,
}

/// FNV-1a: attribute names are short, and this is several times faster than SipHash on them.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The attributes of Istio 1.0's `istio-proxy` and `kubernetes` manifests, and later
/// additions, as `(name, type)`.
pub const BUILTIN_MANIFESTS: &[(&str, ValueType)] = {
    use ValueType::*;
    &[
        ("origin.ip", IpAddress),
        ("origin.uid", String),
        ("origin.user", String),
        ("request.headers", StringMap),
        ("request.id", String),
        ("request.host", String),
        ("request.method", String),
        ("request.path", String),
        ("request.url_path", String),
        ("request.query_params", StringMap),
        ("request.reason", String),
        ("request.referer", String),
        ("request.scheme", String),
        ("request.total_size", Int64),
        ("request.size", Int64),
        ("request.time", Timestamp),
        ("request.useragent", String),
        ("response.code", Int64),
        ("response.duration", Duration),
        ("response.headers", StringMap),
        ("response.total_size", Int64),
        ("response.size", Int64),
        ("response.time", Timestamp),
        ("response.grpc_status", String),
        ("response.grpc_message", String),
        ("source.uid", String),
        ("source.user", String),
        ("source.principal", String),
        ("destination.uid", String),
        ("destination.principal", String),
        ("destination.port", Int64),
        ("connection.event", String),
        ("connection.id", String),
        ("connection.received.bytes", Int64),
        ("connection.received.bytes_total", Int64),
        ("connection.sent.bytes", Int64),
        ("connection.sent.bytes_total", Int64),
        ("connection.duration", Duration),
        ("connection.mtls", Bool),
        ("connection.requested_server_name", String),
        ("context.protocol", String),
        ("context.timestamp", Timestamp),
        ("context.time", Timestamp),
        ("context.reporter.local", Bool),
        ("context.reporter.kind", String),
        ("context.reporter.uid", String),
        ("context.proxy_error_code", String),
        ("api.service", String),
        ("api.version", String),
        ("api.operation", String),
        ("api.protocol", String),
        ("request.auth.principal", String),
        ("request.auth.audiences", String),
        ("request.auth.presenter", String),
        ("request.auth.claims", StringMap),
        ("request.auth.raw_claims", String),
        ("request.api_key", String),
        ("check.error_code", Int64),
        ("check.error_message", String),
        ("check.cache_hit", Bool),
        ("quota.cache_hit", Bool),
        ("source.ip", IpAddress),
        ("source.labels", StringMap),
        ("source.metadata", StringMap),
        ("source.name", String),
        ("source.namespace", String),
        ("source.owner", String),
        ("source.service", String),
        ("source.serviceAccount", String),
        ("source.services", String),
        ("source.workload.uid", String),
        ("source.workload.name", String),
        ("source.workload.namespace", String),
        ("destination.ip", IpAddress),
        ("destination.labels", StringMap),
        ("destination.metadata", StringMap),
        ("destination.owner", String),
        ("destination.name", String),
        ("destination.container.name", String),
        ("destination.namespace", String),
        ("destination.service", String),
        ("destination.service.uid", String),
        ("destination.service.name", String),
        ("destination.service.namespace", String),
        ("destination.service.host", String),
        ("destination.serviceAccount", String),
        ("destination.workload.uid", String),
        ("destination.workload.name", String),
        ("destination.workload.namespace", String),
    ]
};

// === impl AttrId ===

impl AttrId {
    /// The position in the vocabulary.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn from_index(i: usize) -> Self {
        AttrId(i as u32)
    }
}

// === impl Vocabulary ===

impl Vocabulary {
    /// The built-in vocabulary alone.
    pub fn builtin() -> Self {
        let mut v = Vocabulary::default();
        for (name, ty) in BUILTIN_MANIFESTS {
            v.insert(name, *ty, None);
        }
        v
    }

    /// The built-in vocabulary plus the manifests given as `(object name, spec)`; errors are
    /// reported per manifest and the rest of it still applies.
    pub fn from_manifests<'a>(
        manifests: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
    ) -> (Self, Vec<(String, VocabularyError)>) {
        let mut v = Self::builtin();
        let mut errors = Vec::new();
        for (origin, spec) in manifests {
            for e in v.add_manifest(origin, spec) {
                errors.push((origin.to_string(), e));
            }
        }
        (v, errors)
    }

    /// Adds one manifest's attributes; returns what was refused.
    pub fn add_manifest(&mut self, origin: &str, spec: &serde_json::Value) -> Vec<VocabularyError> {
        let mut errors = Vec::new();
        let attrs = match spec.get("attributes") {
            None | Some(serde_json::Value::Null) => return errors,
            Some(serde_json::Value::Object(m)) => m,
            Some(_) => return vec![VocabularyError::NotAMap],
        };
        let origin: Arc<str> = origin.into();
        for (name, info) in attrs {
            let type_name = info
                .get("valueType")
                .or_else(|| info.get("value_type"))
                .and_then(|t| t.as_str())
                .unwrap_or("");
            let Some(ty) = ValueType::parse(type_name) else {
                errors.push(VocabularyError::BadType {
                    name: name.clone(),
                    value_type: type_name.to_string(),
                });
                continue;
            };
            if let Some(&i) = self.index.get(name.as_str()) {
                let i = i as usize;
                let previous = self.names[i].1;
                match &self.declared_by[i] {
                    Some(by) if previous != ty => {
                        errors.push(VocabularyError::Conflict {
                            name: name.clone(),
                            value_type: ty,
                            previous,
                            by: by.to_string(),
                        });
                        continue;
                    }
                    Some(_) => continue,
                    None => {
                        self.names[i].1 = ty;
                        self.declared_by[i] = Some(origin.clone());
                        continue;
                    }
                }
            }
            self.insert(name, ty, Some(origin.clone()));
        }
        errors
    }

    fn insert(&mut self, name: &str, ty: ValueType, by: Option<Arc<str>>) -> AttrId {
        if let Some(&i) = self.index.get(name) {
            return AttrId(i);
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = name.into();
        self.names.push((name.clone(), ty));
        self.declared_by.push(by);
        self.index.insert(name, id);
        AttrId(id)
    }

    /// The id and type of attribute `name`.
    #[inline]
    pub fn lookup(&self, name: &str) -> Option<(AttrId, ValueType)> {
        self.index
            .get(name)
            .map(|&i| (AttrId(i), self.names[i as usize].1))
    }

    /// The id of attribute `name`.
    pub fn id(&self, name: &str) -> Option<AttrId> {
        self.index.get(name).map(|&i| AttrId(i))
    }

    /// The name of attribute `id`.
    pub fn name(&self, id: AttrId) -> &str {
        self.names.get(id.index()).map(|(n, _)| &**n).unwrap_or("")
    }

    /// The shared name of attribute `id` (cheap to clone).
    pub fn shared_name(&self, id: AttrId) -> Arc<str> {
        self.names
            .get(id.index())
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| "".into())
    }

    /// The type of attribute `id`.
    pub fn value_type(&self, id: AttrId) -> Option<ValueType> {
        self.names.get(id.index()).map(|(_, t)| *t)
    }

    /// How many attributes it knows.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when it knows none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every attribute, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (AttrId, &str, ValueType)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, (n, t))| (AttrId(i as u32), &**n, *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn manifests_extend_and_override_builtins() {
        let a = json!({"attributes": {"custom.attr": {"valueType": "INT64"}, "request.size": {"valueType": "DOUBLE"}}});
        let b = json!({"attributes": {"custom.attr": {"valueType": "STRING"}, "bad": {"valueType": "NOPE"}}});
        let (v, errors) = Vocabulary::from_manifests([("a", &a), ("b", &b)]);
        assert_eq!(v.lookup("custom.attr").unwrap().1, ValueType::Int64);
        assert_eq!(v.lookup("request.size").unwrap().1, ValueType::Double);
        assert_eq!(v.lookup("request.path").unwrap().1, ValueType::String);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let msgs: Vec<String> = errors.iter().map(|(o, e)| format!("{o}: {e}")).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("custom.attr") && m.contains("conflicts")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("spec.attributes.bad.valueType")),
            "{msgs:?}"
        );
        let id = v.id("custom.attr").unwrap();
        assert_eq!(v.name(id), "custom.attr");
    }
}
