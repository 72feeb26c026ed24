//! [`OwnedInstance`]: an instance evaluated for a report, owned so it can travel to a
//! handler's task, in a compact form: every string of the instance in one buffer, and one
//! small slot per field (two allocations per instance instead of one per string).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::attribute::{OwnedValue, Value};
use crate::config::Instance;

/// Which string type a [`Slot::Str`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrKind {
    String,
    Email,
    Uri,
    Dns,
}

#[derive(Debug, Clone)]
enum Slot {
    Absent,
    Str(StrKind, u32, u32),
    Int(i64),
    Double(f64),
    Bool(bool),
    Timestamp(SystemTime),
    Duration(Duration),
    Ip(IpAddr),
    Other(Box<OwnedValue>),
}

/// An instance evaluated for one report.
#[derive(Debug, Clone)]
pub struct OwnedInstance {
    pub instance: Arc<Instance>,
    buf: String,
    slots: Vec<Slot>,
}

impl OwnedInstance {
    /// An empty record for `instance`, with room for its fields.
    pub fn new(instance: Arc<Instance>) -> Self {
        let n = instance.fields.len();
        Self {
            instance,
            buf: String::with_capacity(n * 16),
            slots: Vec::with_capacity(n),
        }
    }

    /// Appends the next field's value (`None`: absent).
    pub fn push(&mut self, v: Option<&Value<'_>>) {
        let mut s = |kind, text: &str| {
            let start = self.buf.len() as u32;
            self.buf.push_str(text);
            Slot::Str(kind, start, self.buf.len() as u32)
        };
        let slot = match v {
            None => Slot::Absent,
            Some(Value::String(t)) => s(StrKind::String, t),
            Some(Value::EmailAddress(t)) => s(StrKind::Email, t),
            Some(Value::Uri(t)) => s(StrKind::Uri, t),
            Some(Value::DnsName(t)) => s(StrKind::Dns, t),
            Some(Value::Int64(i)) => Slot::Int(*i),
            Some(Value::Double(d)) => Slot::Double(*d),
            Some(Value::Bool(b)) => Slot::Bool(*b),
            Some(Value::Timestamp(t)) => Slot::Timestamp(*t),
            Some(Value::Duration(d)) => Slot::Duration(*d),
            Some(Value::IpAddress(ip)) => Slot::Ip(*ip),
            Some(other) => Slot::Other(Box::new(other.to_owned_value())),
        };
        self.slots.push(slot);
    }

    /// The value of field `index`.
    pub fn value(&self, index: usize) -> Option<Value<'_>> {
        Some(match self.slots.get(index)? {
            Slot::Absent => return None,
            Slot::Str(kind, a, b) => {
                let t = Cow::Borrowed(&self.buf[*a as usize..*b as usize]);
                match kind {
                    StrKind::String => Value::String(t),
                    StrKind::Email => Value::EmailAddress(t),
                    StrKind::Uri => Value::Uri(t),
                    StrKind::Dns => Value::DnsName(t),
                }
            }
            Slot::Int(i) => Value::Int64(*i),
            Slot::Double(d) => Value::Double(*d),
            Slot::Bool(b) => Value::Bool(*b),
            Slot::Timestamp(t) => Value::Timestamp(*t),
            Slot::Duration(d) => Value::Duration(*d),
            Slot::Ip(ip) => Value::IpAddress(*ip),
            Slot::Other(v) => v.as_value(),
        })
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<Value<'_>> {
        self.value(self.instance.field_index(name)?)
    }

    /// Every field with a value, as (path, value).
    pub fn fields(&self) -> impl Iterator<Item = (&str, Value<'_>)> {
        self.instance
            .fields
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((&**f, self.value(i)?)))
    }
}
