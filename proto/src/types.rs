//! Value types that several API groups share: durations, free-form objects, workload selectors,
//! policy target references and the legacy service reference.
//!
//! Each type here serializes exactly as Istio writes it in YAML/JSON, and describes itself to
//! schemars so that the generated CRDs stay structural.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// === Duration ===

/// A length of time, written as a string: a decimal number and a unit, repeated, e.g. `7s`,
/// `1.5s`, `300ms` or `1h30m` (units `ns`, `us`, `ms`, `s`, `m`, `h`).
///
/// Istio reads durations both in protobuf's JSON form (`"1.500s"`) and in Go's form (`"1m30s"`);
/// both are accepted. Negative durations are refused. Serialized in protobuf's form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason}")]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

impl Duration {
    /// The duration as a [`std::time::Duration`].
    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text)
            .map(Duration)
            .map_err(|reason| DurationError {
                text: text.to_string(),
                reason,
            })
    }
}

const NANOS_PER_SEC: u128 = 1_000_000_000;
// Fraction digits beyond this many are ignored: they are below a nanosecond for every unit.
const MAX_FRACTION_DIGITS: usize = 20;

fn parse_duration(text: &str) -> Result<std::time::Duration, &'static str> {
    let s = text.strip_prefix('+').unwrap_or(text);
    if s.starts_with('-') {
        return Err("negative durations are not allowed");
    }
    if s.is_empty() {
        return Err("empty");
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(frac) => frac.split_at(
                frac.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(frac.len()),
            ),
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err("expected a number");
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "" => return Err("missing unit (one of ns, us, ms, s, m, h)"),
            _ => return Err("unknown unit (expected one of ns, us, ms, s, m, h)"),
        };
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| "out of range")?
        };
        let frac_digits = &frac_digits[..frac_digits.len().min(MAX_FRACTION_DIGITS)];
        let frac_nanos = if frac_digits.is_empty() {
            0
        } else {
            let frac: u128 = frac_digits.parse().map_err(|_| "out of range")?;
            frac * unit_nanos / 10u128.pow(frac_digits.len() as u32)
        };
        total = int
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or("out of range")?;
        rest = after;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| "out of range")?;
    Ok(std::time::Duration::new(
        secs,
        (total % NANOS_PER_SEC) as u32,
    ))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"1.5s\" or \"300ms\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl JsonSchema for Duration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a decimal number with a unit (ns, us, ms, s, m, h), e.g. 1.5s.",
        })
    }
}

// === Struct ===

/// A free-form JSON object, kept as written (protobuf's `Struct`, or a message whose schema
/// lives elsewhere, such as a Mixer adapter's params).
///
/// Its CRD schema is an object that preserves unknown fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Struct(pub serde_json::Map<String, serde_json::Value>);

impl Struct {
    /// The object's fields.
    pub fn fields(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }

    /// Whether the object has no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Struct {
    type Target = serde_json::Map<String, serde_json::Value>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl JsonSchema for Struct {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Struct".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// Schema of a map keyed by port numbers: JSON object keys are strings, so the schema is a plain
/// string-keyed map (schemars would otherwise emit `patternProperties`, which a structural
/// schema cannot carry).
pub(crate) fn port_keyed_map<V: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": generator.subschema_for::<V>(),
    })
}

// === istio.type.v1beta1 ===

/// Selects the workloads a policy applies to by their labels (`istio.type.v1beta1`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Names a resource a policy attaches to, such as a Kubernetes Service or Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (empty for the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target (defaults to the policy's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

// === IstioService ===

/// A service named the pre-1.0 way (legacy routing rules and Mixer client config): by short
/// name, namespace and domain, or by fully qualified `service`, optionally narrowed by labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioService {
    /// Short name of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// DNS domain suffix of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Fully qualified name of the service; wins over name/namespace/domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Labels selecting a subset of the service's instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn parses_durations() {
        use std::time::Duration as D;
        assert_eq!(d("7s"), D::from_secs(7));
        assert_eq!(d("1.5s"), D::from_millis(1500));
        assert_eq!(d("1.500s"), D::from_millis(1500));
        assert_eq!(d("300ms"), D::from_millis(300));
        assert_eq!(d("1h30m"), D::from_secs(5400));
        assert_eq!(d("2m0.5s"), D::from_millis(120_500));
        assert_eq!(d(".5s"), D::from_millis(500));
        assert_eq!(d("10us"), D::from_micros(10));
        assert_eq!(d("10\u{b5}s"), D::from_micros(10));
        assert_eq!(d("5ns"), D::from_nanos(5));
        assert_eq!(d("0"), D::ZERO);
        assert_eq!(d("0s"), D::ZERO);
        assert_eq!(d("+1s"), D::from_secs(1));
        assert_eq!(d("0.000000001s"), D::from_nanos(1));
    }

    #[test]
    fn refuses_bad_durations() {
        for bad in [
            "",
            "7",
            "-1s",
            "1x",
            "s",
            "1.s.",
            "1d",
            "99999999999999999999999h",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
        }
        let err = "7x".parse::<Duration>().unwrap_err().to_string();
        assert!(err.contains("\"7x\""), "{err}");
    }

    #[test]
    fn prints_durations_in_protobuf_form() {
        assert_eq!(
            Duration(std::time::Duration::from_secs(7)).to_string(),
            "7s"
        );
        assert_eq!(
            Duration(std::time::Duration::from_millis(1500)).to_string(),
            "1.5s"
        );
        assert_eq!(
            Duration(std::time::Duration::from_nanos(1)).to_string(),
            "0.000000001s"
        );
        let json = serde_json::to_value(Duration(std::time::Duration::from_millis(250))).unwrap();
        assert_eq!(json, serde_json::json!("0.25s"));
        let back: Duration = serde_json::from_value(json).unwrap();
        assert_eq!(back.as_std(), std::time::Duration::from_millis(250));
    }

    #[test]
    fn duration_refuses_numbers() {
        assert!(serde_json::from_value::<Duration>(serde_json::json!(5)).is_err());
    }
}
