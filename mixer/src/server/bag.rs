//! Building attribute bags from the strings proxies send: each value is converted to the type
//! the vocabulary declares, and silently skipped when it does not convert.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::attribute::{DenseBag, Value, ValueType, Vocabulary, time};

/// Sets attribute `name` from text, converted to its declared type. Returns whether it was
/// set.
pub fn set_text<'a>(bag: &mut DenseBag<'a>, vocab: &Vocabulary, name: &str, text: &'a str) -> bool {
    let Some((id, ty)) = vocab.lookup(name) else {
        return false;
    };
    let v = match ty {
        ValueType::String => Value::String(Cow::Borrowed(text)),
        ValueType::EmailAddress => Value::EmailAddress(Cow::Borrowed(text)),
        ValueType::Uri => Value::Uri(Cow::Borrowed(text)),
        ValueType::DnsName => Value::DnsName(Cow::Borrowed(text)),
        ValueType::Int64 => match text.parse() {
            Ok(v) => Value::Int64(v),
            Err(_) => return false,
        },
        ValueType::Double => match text.parse() {
            Ok(v) => Value::Double(v),
            Err(_) => return false,
        },
        ValueType::Bool => match text {
            "true" | "True" | "TRUE" | "1" => Value::Bool(true),
            "false" | "False" | "FALSE" | "0" => Value::Bool(false),
            _ => return false,
        },
        ValueType::IpAddress => match text.parse::<IpAddr>() {
            Ok(ip) => Value::IpAddress(ip),
            Err(_) => return false,
        },
        ValueType::Duration => match time::parse_duration(text) {
            Some(d) => Value::Duration(d),
            None => return false,
        },
        ValueType::Timestamp => match time::parse_timestamp(text) {
            Some(t) => Value::Timestamp(t),
            None => return false,
        },
        ValueType::Bytes => Value::Bytes(Cow::Borrowed(text.as_bytes())),
        ValueType::StringMap => return false,
    };
    bag.set(id, v);
    true
}

/// Sets attribute `name` to `value` if the vocabulary declares that type.
pub fn set<'a>(bag: &mut DenseBag<'a>, vocab: &Vocabulary, name: &str, value: Value<'a>) {
    bag.set_named(vocab, name, value);
}

/// Sets a non-empty string attribute.
pub fn set_str<'a>(bag: &mut DenseBag<'a>, vocab: &Vocabulary, name: &str, s: &'a str) {
    if !s.is_empty() {
        bag.set_named(vocab, name, Value::String(Cow::Borrowed(s)));
    }
}

/// The principal of a SPIFFE identity as Istio writes it (`cluster.local/ns/x/sa/y`).
pub fn principal(s: &str) -> &str {
    s.strip_prefix("spiffe://").unwrap_or(s)
}

/// Converts a protobuf timestamp.
pub fn timestamp(
    t: &envoy_types::pb::google::protobuf::Timestamp,
) -> Option<std::time::SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

/// Converts a protobuf duration.
pub fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Option<std::time::Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(std::time::Duration::new(secs, nanos))
}
