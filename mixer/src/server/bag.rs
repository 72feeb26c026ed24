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
    match text_value(ty, text) {
        Some(v) => {
            bag.set(id, v);
            true
        }
        None => false,
    }
}

/// Converts text to a value of type `ty` (`None` when it does not convert; a STRING_MAP never
/// does).
pub fn text_value(ty: ValueType, text: &str) -> Option<Value<'_>> {
    Some(match ty {
        ValueType::String => Value::String(Cow::Borrowed(text)),
        ValueType::EmailAddress => Value::EmailAddress(Cow::Borrowed(text)),
        ValueType::Uri => Value::Uri(Cow::Borrowed(text)),
        ValueType::DnsName => Value::DnsName(Cow::Borrowed(text)),
        ValueType::Int64 => Value::Int64(text.parse().ok()?),
        ValueType::Double => Value::Double(text.parse().ok()?),
        ValueType::Bool => match text {
            "true" | "True" | "TRUE" | "1" => Value::Bool(true),
            "false" | "False" | "FALSE" | "0" => Value::Bool(false),
            _ => return None,
        },
        ValueType::IpAddress => Value::IpAddress(text.parse::<IpAddr>().ok()?),
        ValueType::Duration => Value::Duration(time::parse_duration(text)?),
        ValueType::Timestamp => Value::Timestamp(time::parse_timestamp(text)?),
        ValueType::Bytes => Value::Bytes(Cow::Borrowed(text.as_bytes())),
        ValueType::StringMap => return None,
    })
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
