//! Compressed attribute bags (`istio.mixer.v1.CompressedAttributes`) to and from Mixer's own
//! bags.
//!
//! Every name and string in a compressed bag is a *word index*: `>= 0` picks a word of the
//! [global dictionary](super::dictionary), `< 0` one of the message's own words (`-1` is
//! `words[0]`, `-2` is `words[1]`, ...). Only the first `global_word_count` words of the
//! global dictionary belong to the client (0 means all of ours); an index past them, or past
//! the message's words, is refused with a [`DecodeError`] naming the attribute index.
//!
//! Values are converted to the type the vocabulary declares for their attribute: a string is
//! parsed as an `IP_ADDRESS`, `INT64`, `DURATION`... when that is the declared type (as the
//! ext_authz front door does), and 4 or 16 bytes are an `IP_ADDRESS` (how Istio's proxies
//! send `source.ip`). Attributes the vocabulary does not know, and values that do not
//! convert, are skipped (logged at debug level): they cannot matter to any rule.
//!
//! [`referenced`] goes the other way for a check's answer: the attributes it depended on, as
//! word indices in the client's dictionary.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_proto::grpc::istio::mixer::v1::referenced_attributes::{AttributeMatch, Condition};
use mesh_proto::grpc::istio::mixer::v1::{CompressedAttributes, ReferencedAttributes};
use mesh_proto::grpc::prost_types;

use super::bag::text_value;
use super::dictionary::{self, GLOBAL_DICTIONARY};
use crate::attribute::{AttrId, Bag, DenseBag, StringMap, Value, ValueType, Vocabulary};

/// Why a compressed bag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An attribute's name is not a word the client may use.
    #[error("attribute name index {index}: {problem}")]
    Name { index: i32, problem: WordError },
    /// A string value (or a string map's key or value) is not a word the client may use.
    #[error("attribute {name} (index {index}): {what} index {word}: {problem}")]
    Value {
        name: String,
        index: i32,
        what: &'static str,
        word: i32,
        problem: WordError,
    },
    /// A timestamp or duration protobuf cannot be a time.
    #[error("attribute {name} (index {index}): {problem}")]
    Time {
        name: String,
        index: i32,
        problem: &'static str,
    },
}

/// Why a word index names no word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    #[error("beyond the global dictionary (the client knows {known} words)")]
    Global { known: usize },
    #[error("beyond the message's words (it has {len})")]
    Message { len: usize },
}

/// The words a message's indices refer to.
#[derive(Debug, Clone, Copy)]
pub struct Words<'a> {
    global: &'static [&'static str],
    message: &'a [String],
}

/// A string map decoded from word indices.
#[derive(Debug, Default)]
pub struct WordMap<'a>(Vec<(&'a str, &'a str)>);

/// A decoded value, or a string map kept beside it (a bag borrows maps, so they live here).
#[derive(Debug)]
enum Pending<'a> {
    Value(Value<'a>),
    Map(usize),
}

/// A decoded compressed bag: values by attribute, ready to be put in a [`DenseBag`].
#[derive(Debug, Default)]
pub struct Decoded<'a> {
    values: Vec<(AttrId, Pending<'a>)>,
    maps: Vec<WordMap<'a>>,
}

/// How many words of the global dictionary a client with `global_word_count` knows: all of
/// ours for 0 (a client that does not say), never more than ours.
pub fn known_words(global_word_count: u32) -> usize {
    match usize::try_from(global_word_count) {
        Ok(0) | Err(_) => GLOBAL_DICTIONARY.len(),
        Ok(n) => n.min(GLOBAL_DICTIONARY.len()),
    }
}

// === impl Words ===

impl<'a> Words<'a> {
    /// The first `known` global words and the message's `words`.
    pub fn new(known: usize, message: &'a [String]) -> Self {
        Self {
            global: &GLOBAL_DICTIONARY[..known.min(GLOBAL_DICTIONARY.len())],
            message,
        }
    }

    /// The word at `index`.
    pub fn get(&self, index: i32) -> Result<&'a str, WordError> {
        if index >= 0 {
            self.global
                .get(index as usize)
                .copied()
                .ok_or(WordError::Global {
                    known: self.global.len(),
                })
        } else {
            // -1 is words[0]; computed in i64 so i32::MIN cannot overflow.
            let i = (-(i64::from(index)) - 1) as usize;
            self.message
                .get(i)
                .map(String::as_str)
                .ok_or(WordError::Message {
                    len: self.message.len(),
                })
        }
    }
}

// === impl WordMap ===

impl StringMap for WordMap<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in &self.0 {
            f(k, v)
        }
    }
}

// === impl Decoded ===

impl<'a> Decoded<'a> {
    /// How many attributes were decoded (those the vocabulary knows, with values that
    /// convert).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when nothing was decoded.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Sets every decoded attribute in `bag` (over what it holds: a delta).
    pub fn apply<'d>(&'d self, bag: &mut DenseBag<'d>) {
        for (id, p) in &self.values {
            let v = match p {
                Pending::Value(v) => v.reborrow(),
                Pending::Map(i) => Value::StringMap(&self.maps[*i]),
            };
            bag.set(*id, v);
        }
    }

    /// A bag of the decoded attributes, for a vocabulary of `len` attributes.
    pub fn bag(&self, len: usize) -> DenseBag<'_> {
        let mut b = DenseBag::with_len(len);
        self.apply(&mut b);
        b
    }

    fn push(&mut self, vocab: &Vocabulary, name: &str, value: Value<'a>) {
        let Some((id, ty)) = vocab.lookup(name) else {
            tracing::debug!(attribute = name, "unknown attribute skipped");
            return;
        };
        match convert(ty, value) {
            Some(v) => self.values.push((id, Pending::Value(v))),
            None => {
                tracing::debug!(attribute = name, declared = %ty, "attribute of another type skipped")
            }
        }
    }
}

/// `value` as declared type `ty`, when it converts.
fn convert(ty: ValueType, value: Value<'_>) -> Option<Value<'_>> {
    if value.value_type() == ty {
        return Some(value);
    }
    match value {
        Value::String(Cow::Borrowed(s)) => text_value(ty, s),
        Value::Bytes(Cow::Borrowed(b)) if ty == ValueType::IpAddress => match b.len() {
            4 => Some(Value::IpAddress(IpAddr::from(<[u8; 4]>::try_from(b).ok()?))),
            16 => Some(Value::IpAddress(IpAddr::from(
                <[u8; 16]>::try_from(b).ok()?,
            ))),
            _ => None,
        },
        Value::Int64(v) if ty == ValueType::Double => Some(Value::Double(v as f64)),
        _ => None,
    }
}

fn timestamp(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    if t.seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(t.seconds as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.seconds.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

fn duration(d: &prost_types::Duration) -> Result<Duration, &'static str> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err("negative duration");
    }
    if d.nanos >= 1_000_000_000 {
        return Err("duration nanos out of range");
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// The error for a value word of attribute `name`.
fn value_err<'n>(
    name: &'n str,
    index: i32,
    what: &'static str,
    word: i32,
) -> impl FnOnce(WordError) -> DecodeError + 'n {
    move |problem| DecodeError::Value {
        name: name.to_string(),
        index,
        what,
        word,
        problem,
    }
}

/// Decodes `attrs` against `vocab`, its indices resolved in `words`.
pub fn decode<'a>(
    vocab: &Vocabulary,
    words: Words<'a>,
    attrs: &'a CompressedAttributes,
) -> Result<Decoded<'a>, DecodeError> {
    let mut out = Decoded::default();
    let name_of = |index: i32| {
        words
            .get(index)
            .map_err(|problem| DecodeError::Name { index, problem })
    };
    for (&index, &word) in &attrs.strings {
        let name = name_of(index)?;
        let s = words
            .get(word)
            .map_err(value_err(name, index, "value", word))?;
        out.push(vocab, name, Value::String(Cow::Borrowed(s)));
    }
    for (&index, &v) in &attrs.int64s {
        let name = name_of(index)?;
        out.push(vocab, name, Value::Int64(v));
    }
    for (&index, &v) in &attrs.doubles {
        let name = name_of(index)?;
        out.push(vocab, name, Value::Double(v));
    }
    for (&index, &v) in &attrs.bools {
        let name = name_of(index)?;
        out.push(vocab, name, Value::Bool(v));
    }
    for (&index, t) in &attrs.timestamps {
        let name = name_of(index)?;
        let t = timestamp(t).ok_or_else(|| DecodeError::Time {
            name: name.to_string(),
            index,
            problem: "timestamp out of range",
        })?;
        out.push(vocab, name, Value::Timestamp(t));
    }
    for (&index, d) in &attrs.durations {
        let name = name_of(index)?;
        let d = duration(d).map_err(|problem| DecodeError::Time {
            name: name.to_string(),
            index,
            problem,
        })?;
        out.push(vocab, name, Value::Duration(d));
    }
    for (&index, b) in &attrs.bytes {
        let name = name_of(index)?;
        out.push(vocab, name, Value::Bytes(Cow::Borrowed(b)));
    }
    for (&index, m) in &attrs.string_maps {
        let name = name_of(index)?;
        let mut map = WordMap(Vec::with_capacity(m.entries.len()));
        for (&k, &v) in &m.entries {
            let key = words.get(k).map_err(value_err(name, index, "map key", k))?;
            let value = words
                .get(v)
                .map_err(value_err(name, index, "map value", v))?;
            map.0.push((key, value));
        }
        match vocab.lookup(name) {
            Some((id, ValueType::StringMap)) => {
                out.values.push((id, Pending::Map(out.maps.len())));
                out.maps.push(map);
            }
            _ => tracing::debug!(
                attribute = name,
                "string map of an unknown attribute skipped"
            ),
        }
    }
    Ok(out)
}

/// The attributes in `ids` as Istio's `ReferencedAttributes`: names as indices into the
/// client's first `known` global words (or new words of the answer), EXACT for those present
/// in `bag` and ABSENCE for the others.
pub fn referenced(
    vocab: &Vocabulary,
    bag: &dyn Bag,
    ids: &[AttrId],
    known: usize,
) -> ReferencedAttributes {
    let mut out = ReferencedAttributes::default();
    for &id in ids {
        let name = vocab.name(id);
        let index = match dictionary::index_of(name, known) {
            Some(i) => i as i32,
            None => {
                out.words.push(name.to_string());
                -(out.words.len() as i32)
            }
        };
        let condition = if bag.get(id).is_some() {
            Condition::Exact
        } else {
            Condition::Absence
        };
        out.attribute_matches.push(AttributeMatch {
            name: index,
            condition: condition as i32,
            regex: String::new(),
            map_key: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mesh_proto::grpc::istio::mixer::v1::StringMap as WireMap;

    use super::*;

    fn vocab() -> Vocabulary {
        Vocabulary::builtin()
    }

    fn get<'b>(v: &Vocabulary, bag: &'b DenseBag<'_>, name: &str) -> Option<Value<'b>> {
        bag.get(v.id(name).unwrap())
    }

    #[test]
    fn words_resolve_global_and_message_indices() {
        let msg = vec!["first".to_string(), "second".to_string()];
        let w = Words::new(GLOBAL_DICTIONARY.len(), &msg);
        assert_eq!(w.get(0), Ok("source.ip"));
        assert_eq!(w.get(-1), Ok("first"));
        assert_eq!(w.get(-2), Ok("second"));
        assert_eq!(w.get(-3), Err(WordError::Message { len: 2 }));
        assert_eq!(w.get(i32::MIN), Err(WordError::Message { len: 2 }));
        assert_eq!(w.get(222), Err(WordError::Global { known: 222 }));
        // A client that knows only 100 words cannot use word 150.
        let short = Words::new(100, &msg);
        assert_eq!(short.get(99), Ok(GLOBAL_DICTIONARY[99]));
        assert_eq!(short.get(150), Err(WordError::Global { known: 100 }));
        assert_eq!(known_words(0), 222);
        assert_eq!(known_words(100), 100);
        assert_eq!(known_words(1000), 222);
    }

    #[test]
    fn every_kind_of_value_decodes_to_its_declared_type() {
        let v = vocab();
        let words = vec![
            "x-user".to_string(),
            "john".to_string(),
            "10.1.2.3".to_string(),
            "not an ip".to_string(),
        ];
        let mut a = CompressedAttributes {
            words: words.clone(),
            ..Default::default()
        };
        // request.headers (15) = {x-user: john, :path (33): /ok ... } uses both word kinds.
        a.string_maps.insert(
            15,
            WireMap {
                entries: HashMap::from([(-1, -2), (65, 18)]),
            },
        );
        a.strings.insert(19, 90); // request.method = GET
        a.strings.insert(150, -3); // destination.ip from text
        a.bytes.insert(0, vec![127, 0, 0, 9]); // source.ip from 4 bytes
        a.int64s.insert(30, 200); // response.code
        a.bools.insert(177, true); // connection.mtls
        a.timestamps.insert(
            24,
            prost_types::Timestamp {
                seconds: 1_500_000_000,
                nanos: 5,
            },
        );
        a.durations.insert(
            29,
            prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            },
        );
        a.strings.insert(-4, -3); // "not an ip" is an unknown attribute name: skipped
        let d = decode(&v, Words::new(222, &a.words), &a).unwrap();
        let bag = d.bag(v.len());
        let Some(Value::StringMap(h)) = get(&v, &bag, "request.headers") else {
            panic!("no headers");
        };
        assert_eq!(h.get("x-user"), Some("john"));
        assert_eq!(h.get("host"), Some("request.host"));
        assert_eq!(h.len(), 2);
        assert_eq!(
            get(&v, &bag, "request.method").unwrap().as_str(),
            Some("GET")
        );
        assert!(matches!(
            get(&v, &bag, "destination.ip"),
            Some(Value::IpAddress(ip)) if ip.to_string() == "10.1.2.3"
        ));
        assert!(matches!(
            get(&v, &bag, "source.ip"),
            Some(Value::IpAddress(ip)) if ip.to_string() == "127.0.0.9"
        ));
        assert!(matches!(
            get(&v, &bag, "response.code"),
            Some(Value::Int64(200))
        ));
        assert!(matches!(
            get(&v, &bag, "connection.mtls"),
            Some(Value::Bool(true))
        ));
        assert!(matches!(
            get(&v, &bag, "request.time"),
            Some(Value::Timestamp(t)) if t == UNIX_EPOCH + Duration::new(1_500_000_000, 5)
        ));
        assert!(matches!(
            get(&v, &bag, "response.duration"),
            Some(Value::Duration(d)) if d == Duration::from_millis(1500)
        ));
        assert_eq!(d.len(), 8);
    }

    #[test]
    fn values_that_do_not_convert_are_skipped() {
        let v = vocab();
        let mut a = CompressedAttributes {
            words: vec!["not an ip".into()],
            ..Default::default()
        };
        a.strings.insert(0, -1); // source.ip = "not an ip"
        a.bytes.insert(150, vec![1, 2, 3]); // destination.ip from 3 bytes
        a.bools.insert(23, true); // request.size is an INT64
        let d = decode(&v, Words::new(222, &a.words), &a).unwrap();
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn bad_indices_name_the_attribute() {
        let v = vocab();
        let mut a = CompressedAttributes {
            words: vec!["w".into()],
            ..Default::default()
        };
        a.strings.insert(-2, 0);
        let e = decode(&v, Words::new(222, &a.words), &a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "attribute name index -2: beyond the message's words (it has 1)"
        );

        let mut a = CompressedAttributes::default();
        a.strings.insert(19, 500);
        let e = decode(&v, Words::new(222, &a.words), &a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "attribute request.method (index 19): value index 500: beyond the global dictionary (the client knows 222 words)"
        );

        // The same index is fine for a client with the full dictionary, not for one that
        // knows 100 words.
        let mut a = CompressedAttributes::default();
        a.strings.insert(191, 90);
        assert!(decode(&v, Words::new(222, &a.words), &a).is_ok());
        let e = decode(&v, Words::new(100, &a.words), &a).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::Name {
                index: 191,
                problem: WordError::Global { known: 100 }
            }
        ));

        let mut a = CompressedAttributes::default();
        a.string_maps.insert(
            15,
            WireMap {
                entries: HashMap::from([(-7, 0)]),
            },
        );
        let e = decode(&v, Words::new(222, &a.words), &a).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("attribute request.headers (index 15): map key index -7"),
            "{e}"
        );

        let mut a = CompressedAttributes::default();
        a.durations.insert(
            29,
            prost_types::Duration {
                seconds: -1,
                nanos: 0,
            },
        );
        let e = decode(&v, Words::new(222, &a.words), &a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "attribute response.duration (index 29): negative duration"
        );

        let mut a = CompressedAttributes::default();
        a.timestamps.insert(
            24,
            prost_types::Timestamp {
                seconds: 0,
                nanos: -5,
            },
        );
        assert!(matches!(
            decode(&v, Words::new(222, &a.words), &a),
            Err(DecodeError::Time { index: 24, .. })
        ));
    }

    #[test]
    fn deltas_apply_over_the_previous_bag() {
        let v = vocab();
        let mut first = CompressedAttributes::default();
        first.strings.insert(19, 90); // request.method = GET
        first.int64s.insert(30, 200);
        let mut second = CompressedAttributes::default();
        second.int64s.insert(30, 404);
        let d1 = decode(&v, Words::new(222, &[]), &first).unwrap();
        let d2 = decode(&v, Words::new(222, &[]), &second).unwrap();
        let mut bag = d1.bag(v.len());
        d2.apply(&mut bag);
        assert!(matches!(
            get(&v, &bag, "response.code"),
            Some(Value::Int64(404))
        ));
        assert_eq!(
            get(&v, &bag, "request.method").unwrap().as_str(),
            Some("GET")
        );
    }

    #[test]
    fn referenced_attributes_use_the_clients_dictionary() {
        let v = vocab();
        let mut a = CompressedAttributes::default();
        a.strings.insert(19, 90);
        let d = decode(&v, Words::new(222, &[]), &a).unwrap();
        let bag = d.bag(v.len());
        let ids = [
            v.id("request.method").unwrap(),
            v.id("request.url_path").unwrap(),
        ];
        let r = referenced(&v, &bag, &ids, 222);
        assert!(r.words.is_empty());
        assert_eq!(r.attribute_matches[0].name, 19);
        assert_eq!(r.attribute_matches[0].condition, Condition::Exact as i32);
        assert_eq!(r.attribute_matches[1].name, 203);
        assert_eq!(r.attribute_matches[1].condition, Condition::Absence as i32);
        // A client with 203 words does not know request.url_path by index.
        let r = referenced(&v, &bag, &ids, 203);
        assert_eq!(r.words, vec!["request.url_path".to_string()]);
        assert_eq!(r.attribute_matches[1].name, -1);
    }
}
