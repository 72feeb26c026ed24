//! Attributes: the typed name/value pairs that describe a request or connection.
//!
//! - [`ValueType`]: the types an attribute manifest may declare (Istio's `ValueType`, plus
//!   `BYTES`).
//! - [`Value`]: a borrowed, cheap-to-copy view of one value; [`OwnedValue`] owns one.
//! - [`Bag`]: where expressions read attributes from, by [`AttrId`] (an index into the
//!   [`Vocabulary`], resolved when config is compiled, so a lookup is an array access).
//! - [`Vocabulary`]: every known attribute and its type, from the attribute manifests.

pub mod time;
mod vocabulary;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

pub use vocabulary::{AttrId, BUILTIN_MANIFESTS, Vocabulary, VocabularyError};

/// The type of an attribute or expression, as named in attribute manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    String,
    Int64,
    Double,
    Bool,
    Timestamp,
    Duration,
    IpAddress,
    EmailAddress,
    Uri,
    DnsName,
    StringMap,
    Bytes,
}

/// A map of strings (request headers, pod labels, ...), however the bag stores it.
pub trait StringMap: Send + Sync + fmt::Debug {
    /// The value under `key`.
    fn get(&self, key: &str) -> Option<&str>;
    /// How many entries it holds.
    fn len(&self) -> usize;
    /// True when it holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Visits every entry (in no particular order).
    fn for_each(&self, f: &mut dyn FnMut(&str, &str));
}

/// A borrowed attribute value.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    String(Cow<'a, str>),
    Int64(i64),
    Double(f64),
    Bool(bool),
    Timestamp(SystemTime),
    Duration(Duration),
    IpAddress(IpAddr),
    EmailAddress(Cow<'a, str>),
    Uri(Cow<'a, str>),
    DnsName(Cow<'a, str>),
    StringMap(&'a dyn StringMap),
    Bytes(Cow<'a, [u8]>),
}

/// An owned attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    String(String),
    Int64(i64),
    Double(f64),
    Bool(bool),
    Timestamp(SystemTime),
    Duration(Duration),
    IpAddress(IpAddr),
    EmailAddress(String),
    Uri(String),
    DnsName(String),
    StringMap(BTreeMap<String, String>),
    Bytes(Vec<u8>),
}

/// Where expressions read attributes from.
pub trait Bag {
    /// The value of attribute `id`, if present.
    fn get(&self, id: AttrId) -> Option<Value<'_>>;
}

/// The empty string map (`emptyStringMap()`).
pub static EMPTY_MAP: EmptyMap = EmptyMap;

/// A string map with no entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyMap;

/// A bag backed by a vector indexed by [`AttrId`]; values borrow from the request they were
/// taken from.
#[derive(Debug, Default, Clone)]
pub struct DenseBag<'a> {
    values: Vec<Option<Value<'a>>>,
    present: usize,
}

// === impl ValueType ===

impl ValueType {
    /// Parses a manifest's `valueType`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "STRING" => Self::String,
            "INT64" => Self::Int64,
            "DOUBLE" => Self::Double,
            "BOOL" => Self::Bool,
            "TIMESTAMP" => Self::Timestamp,
            "DURATION" => Self::Duration,
            "IP_ADDRESS" => Self::IpAddress,
            "EMAIL_ADDRESS" => Self::EmailAddress,
            "URI" => Self::Uri,
            "DNS_NAME" => Self::DnsName,
            "STRING_MAP" => Self::StringMap,
            "BYTES" => Self::Bytes,
            _ => return None,
        })
    }

    /// The manifest name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "STRING",
            Self::Int64 => "INT64",
            Self::Double => "DOUBLE",
            Self::Bool => "BOOL",
            Self::Timestamp => "TIMESTAMP",
            Self::Duration => "DURATION",
            Self::IpAddress => "IP_ADDRESS",
            Self::EmailAddress => "EMAIL_ADDRESS",
            Self::Uri => "URI",
            Self::DnsName => "DNS_NAME",
            Self::StringMap => "STRING_MAP",
            Self::Bytes => "BYTES",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Value ===

impl<'a> Value<'a> {
    /// The type of the value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::String(_) => ValueType::String,
            Value::Int64(_) => ValueType::Int64,
            Value::Double(_) => ValueType::Double,
            Value::Bool(_) => ValueType::Bool,
            Value::Timestamp(_) => ValueType::Timestamp,
            Value::Duration(_) => ValueType::Duration,
            Value::IpAddress(_) => ValueType::IpAddress,
            Value::EmailAddress(_) => ValueType::EmailAddress,
            Value::Uri(_) => ValueType::Uri,
            Value::DnsName(_) => ValueType::DnsName,
            Value::StringMap(_) => ValueType::StringMap,
            Value::Bytes(_) => ValueType::Bytes,
        }
    }

    /// A borrowed copy (never allocates, unlike `clone` of an owned string).
    pub fn reborrow(&self) -> Value<'_> {
        fn b(s: &str) -> Cow<'_, str> {
            Cow::Borrowed(s)
        }
        match self {
            Value::String(s) => Value::String(b(s)),
            Value::Int64(v) => Value::Int64(*v),
            Value::Double(v) => Value::Double(*v),
            Value::Bool(v) => Value::Bool(*v),
            Value::Timestamp(v) => Value::Timestamp(*v),
            Value::Duration(v) => Value::Duration(*v),
            Value::IpAddress(v) => Value::IpAddress(*v),
            Value::EmailAddress(s) => Value::EmailAddress(b(s)),
            Value::Uri(s) => Value::Uri(b(s)),
            Value::DnsName(s) => Value::DnsName(b(s)),
            Value::StringMap(m) => Value::StringMap(*m),
            Value::Bytes(v) => Value::Bytes(Cow::Borrowed(v.as_ref())),
        }
    }

    /// The string of a string-like value (STRING, EMAIL_ADDRESS, URI, DNS_NAME).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::EmailAddress(s) | Value::Uri(s) | Value::DnsName(s) => {
                Some(s)
            }
            _ => None,
        }
    }

    /// Equality with Istio's semantics per type: DNS names and e-mail domains compare
    /// case-insensitively (and without a trailing dot), IP addresses compare as addresses.
    pub fn equals(&self, other: &Value<'_>) -> bool {
        match (self, other) {
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Int64(a), Value::Int64(b)) => a == b,
            (Value::Double(a), Value::Double(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Duration(a), Value::Duration(b)) => a == b,
            (Value::IpAddress(a), Value::IpAddress(b)) => a.to_canonical() == b.to_canonical(),
            (Value::DnsName(a), Value::DnsName(b)) => dns_equal(a, b),
            (Value::EmailAddress(a), Value::EmailAddress(b)) => {
                match (a.rsplit_once('@'), b.rsplit_once('@')) {
                    (Some((la, da)), Some((lb, db))) => la == lb && dns_equal(da, db),
                    _ => a == b,
                }
            }
            (Value::Uri(a), Value::Uri(b)) => uri_equal(a, b),
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::StringMap(a), Value::StringMap(b)) => {
                if a.len() != b.len() {
                    return false;
                }
                let mut same = true;
                a.for_each(&mut |k, v| same &= b.get(k) == Some(v));
                same
            }
            _ => false,
        }
    }

    /// Converts to an owned value.
    pub fn to_owned_value(&self) -> OwnedValue {
        match self {
            Value::String(s) => OwnedValue::String(s.to_string()),
            Value::Int64(v) => OwnedValue::Int64(*v),
            Value::Double(v) => OwnedValue::Double(*v),
            Value::Bool(v) => OwnedValue::Bool(*v),
            Value::Timestamp(v) => OwnedValue::Timestamp(*v),
            Value::Duration(v) => OwnedValue::Duration(*v),
            Value::IpAddress(v) => OwnedValue::IpAddress(*v),
            Value::EmailAddress(s) => OwnedValue::EmailAddress(s.to_string()),
            Value::Uri(s) => OwnedValue::Uri(s.to_string()),
            Value::DnsName(s) => OwnedValue::DnsName(s.to_string()),
            Value::StringMap(m) => {
                let mut out = BTreeMap::new();
                m.for_each(&mut |k, v| {
                    out.insert(k.to_string(), v.to_string());
                });
                OwnedValue::StringMap(out)
            }
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
        }
    }

    /// Appends the value's text form (as Istio's adapters print it) to `out`.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Value::String(s) | Value::EmailAddress(s) | Value::Uri(s) | Value::DnsName(s) => {
                out.push_str(s)
            }
            Value::Int64(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Double(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
            Value::Timestamp(t) => out.push_str(&time::format_timestamp(*t)),
            Value::Duration(d) => out.push_str(&time::format_duration(*d)),
            Value::IpAddress(ip) => {
                let _ = write!(out, "{}", ip.to_canonical());
            }
            Value::StringMap(m) => {
                let mut entries = Vec::with_capacity(m.len());
                m.for_each(&mut |k, v| entries.push(format!("{k}:{v}")));
                entries.sort();
                out.push_str(&entries.join(","));
            }
            Value::Bytes(b) => {
                for byte in b.iter() {
                    let _ = write!(out, "{byte:02x}");
                }
            }
        }
    }

    /// The value as JSON (for the stdio adapter and debug pages).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int64(v) => (*v).into(),
            Value::Double(v) => serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Bool(v) => (*v).into(),
            Value::StringMap(m) => {
                let mut obj = serde_json::Map::new();
                m.for_each(&mut |k, v| {
                    obj.insert(k.to_string(), v.into());
                });
                serde_json::Value::Object(obj)
            }
            other => {
                let mut s = String::new();
                other.write_text(&mut s);
                s.into()
            }
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_text(&mut s);
        f.write_str(&s)
    }
}

fn dns_equal(a: &str, b: &str) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a);
    let b = b.strip_suffix('.').unwrap_or(b);
    a.eq_ignore_ascii_case(b)
}

/// URIs compare with scheme and (for http/https) host case-insensitively.
fn uri_equal(a: &str, b: &str) -> bool {
    fn split(u: &str) -> (&str, &str, &str) {
        match u.split_once("://") {
            Some((scheme, rest)) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                (scheme, &rest[..end], &rest[end..])
            }
            None => ("", "", u),
        }
    }
    let (sa, ha, ra) = split(a);
    let (sb, hb, rb) = split(b);
    sa.eq_ignore_ascii_case(sb) && dns_equal(ha, hb) && ra == rb
}

// === impl OwnedValue ===

impl OwnedValue {
    /// A borrowed view.
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::String(s) => Value::String(Cow::Borrowed(s)),
            OwnedValue::Int64(v) => Value::Int64(*v),
            OwnedValue::Double(v) => Value::Double(*v),
            OwnedValue::Bool(v) => Value::Bool(*v),
            OwnedValue::Timestamp(v) => Value::Timestamp(*v),
            OwnedValue::Duration(v) => Value::Duration(*v),
            OwnedValue::IpAddress(v) => Value::IpAddress(*v),
            OwnedValue::EmailAddress(s) => Value::EmailAddress(Cow::Borrowed(s)),
            OwnedValue::Uri(s) => Value::Uri(Cow::Borrowed(s)),
            OwnedValue::DnsName(s) => Value::DnsName(Cow::Borrowed(s)),
            OwnedValue::StringMap(m) => Value::StringMap(m),
            OwnedValue::Bytes(b) => Value::Bytes(Cow::Borrowed(b)),
        }
    }

    /// The type of the value.
    pub fn value_type(&self) -> ValueType {
        self.as_value().value_type()
    }
}

// === impl StringMap for the usual maps ===

impl StringMap for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }
    fn len(&self) -> usize {
        HashMap::len(self)
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            f(k, v)
        }
    }
}

impl StringMap for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }
    fn len(&self) -> usize {
        BTreeMap::len(self)
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            f(k, v)
        }
    }
}

impl StringMap for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            f(k, v)
        }
    }
}

impl StringMap for EmptyMap {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
    fn len(&self) -> usize {
        0
    }
    fn for_each(&self, _: &mut dyn FnMut(&str, &str)) {}
}

// === impl DenseBag ===

impl<'a> DenseBag<'a> {
    /// An empty bag for a vocabulary of `len` attributes.
    pub fn with_len(len: usize) -> Self {
        Self {
            values: vec![None; len],
            present: 0,
        }
    }

    /// Sets attribute `id`. Ids beyond the vocabulary are ignored.
    pub fn set(&mut self, id: AttrId, value: Value<'a>) {
        if let Some(slot) = self.values.get_mut(id.index()) {
            if slot.is_none() {
                self.present += 1;
            }
            *slot = Some(value);
        }
    }

    /// Sets attribute `name` if the vocabulary knows it with the value's type; returns whether
    /// it was set.
    pub fn set_named(&mut self, vocab: &Vocabulary, name: &str, value: Value<'a>) -> bool {
        match vocab.lookup(name) {
            Some((id, ty)) if ty == value.value_type() => {
                self.set(id, value);
                true
            }
            _ => false,
        }
    }

    /// How many attributes are present.
    pub fn len(&self) -> usize {
        self.present
    }

    /// True when no attribute is present.
    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// The present attributes, by id.
    pub fn iter(&self) -> impl Iterator<Item = (AttrId, &Value<'a>)> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (AttrId::from_index(i), v)))
    }
}

impl Bag for DenseBag<'_> {
    #[inline]
    fn get(&self, id: AttrId) -> Option<Value<'_>> {
        self.values
            .get(id.index())
            .and_then(|v| v.as_ref())
            .map(Value::reborrow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_follows_istio() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(Value::IpAddress(v4).equals(&Value::IpAddress(v6)));
        assert!(Value::DnsName("Foo.Com.".into()).equals(&Value::DnsName("foo.com".into())));
        assert!(
            Value::EmailAddress("a@EXAMPLE.com".into())
                .equals(&Value::EmailAddress("a@example.com".into()))
        );
        assert!(
            !Value::EmailAddress("A@example.com".into())
                .equals(&Value::EmailAddress("a@example.com".into()))
        );
        assert!(Value::Uri("HTTP://Host/a".into()).equals(&Value::Uri("http://host/a".into())));
        assert!(!Value::Uri("http://host/A".into()).equals(&Value::Uri("http://host/a".into())));
        assert!(!Value::String("1".into()).equals(&Value::Int64(1)));
    }

    #[test]
    fn types_round_trip_names() {
        for t in [
            ValueType::String,
            ValueType::Int64,
            ValueType::Double,
            ValueType::Bool,
            ValueType::Timestamp,
            ValueType::Duration,
            ValueType::IpAddress,
            ValueType::EmailAddress,
            ValueType::Uri,
            ValueType::DnsName,
            ValueType::StringMap,
            ValueType::Bytes,
        ] {
            assert_eq!(ValueType::parse(t.name()), Some(t));
        }
        assert_eq!(ValueType::parse("STRNG"), None);
    }

    #[test]
    fn text_forms() {
        let mut s = String::new();
        Value::Duration(Duration::from_millis(1500)).write_text(&mut s);
        assert_eq!(s, "1.5s");
        let m: BTreeMap<String, String> = [("b".into(), "2".into()), ("a".into(), "1".into())]
            .into_iter()
            .collect();
        assert_eq!(Value::StringMap(&m).to_string(), "a:1,b:2");
    }
}
