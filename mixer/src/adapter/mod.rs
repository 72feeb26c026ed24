//! In-process adapters: the [`Handler`] trait the dispatcher calls, and one module per
//! adapter, each validating its own parameters.
//!
//! A handler answers checks ([`Handler::check`]) inline (they must be fast) and quotas
//! ([`Handler::quota`]) with a [`QuotaFuture`]: ready at once for in-memory adapters
//! (`memquota`, no allocation), pending for one that asks a server (`redisquota`, which waits
//! a bounded time without holding a runtime worker). It receives report batches on its own
//! task ([`Handler::report`]), fed by a bounded queue so a slow adapter never holds up a
//! caller.

pub mod denier;
pub mod kubernetesenv;
pub mod listchecker;
pub mod memquota;
pub mod noop;
pub mod opa;
pub mod prometheus;
pub mod rbac;
mod record;
pub mod redisquota;
pub mod stdio;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either};

use crate::attribute::Value;
use crate::config::Instance;

pub use record::OwnedInstance;

/// google.rpc status codes used by Mixer.
pub mod code {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const DATA_LOSS: i32 = 15;
    pub const UNAUTHENTICATED: i32 = 16;

    /// The name of a code, as gRPC spells it.
    pub fn name(code: i32) -> &'static str {
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
        .get(code as usize)
        .copied()
        .unwrap_or("UNKNOWN")
    }

    /// Whether a handler answering `code` failed (rather than decided): its dispatch is
    /// counted as an error (`mixer_dispatch_errors`).
    pub fn is_failure(code: i32) -> bool {
        matches!(
            code,
            UNKNOWN | DEADLINE_EXCEEDED | INTERNAL | UNAVAILABLE | DATA_LOSS
        )
    }

    /// The HTTP status a proxy answers for a denied request (Istio's mapping).
    pub fn http_status(code: i32) -> u16 {
        match code {
            OK => 200,
            CANCELLED => 499,
            INVALID_ARGUMENT | FAILED_PRECONDITION | OUT_OF_RANGE => 400,
            DEADLINE_EXCEEDED => 504,
            NOT_FOUND => 404,
            ALREADY_EXISTS | ABORTED => 409,
            PERMISSION_DENIED => 403,
            RESOURCE_EXHAUSTED => 429,
            UNIMPLEMENTED => 501,
            UNAVAILABLE => 503,
            UNAUTHENTICATED => 401,
            _ => 500,
        }
    }
}

/// A status: a google.rpc code and a message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub code: i32,
    pub message: String,
}

/// What a handler says about a check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub status: Status,
    /// How long the answer may be cached.
    pub valid_duration: Duration,
    /// How many times the answer may be used.
    pub valid_use_count: i32,
}

/// A quota request.
#[derive(Debug, Clone, Copy)]
pub struct QuotaArgs<'a> {
    /// How much is asked for.
    pub amount: i64,
    /// Grant what is available rather than nothing.
    pub best_effort: bool,
    /// Requests with the same id within the deduplication window get the same answer.
    pub deduplication_id: &'a str,
}

/// What a handler grants.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaResult {
    pub status: Status,
    pub amount: i64,
    pub valid_duration: Duration,
}

/// A handler's answer to a quota request, to await. It borrows the handler only, never the
/// request: a handler reads what it needs from the instance and the arguments when
/// [`Handler::quota`] is called, so the caller may drop them (and its attribute bag) before
/// awaiting.
#[must_use = "a quota is only allocated when its future is awaited"]
pub struct QuotaFuture<'h>(Either<std::future::Ready<QuotaResult>, BoxFuture<'h, QuotaResult>>);

/// An instance evaluated for one request: its fields, in [`Instance::fields`] order (`None`
/// when the field's expression produced nothing).
#[derive(Debug)]
pub struct InstanceValues<'a> {
    pub instance: &'a Instance,
    pub values: Vec<Option<Value<'a>>>,
}

/// Why a handler's parameters were refused: the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct AdapterError {
    pub field: String,
    pub message: String,
}

/// What adapters may use when they are built.
#[derive(Debug, Clone)]
pub struct AdapterEnv {
    /// The prometheus adapter's shared registry, served on `--prometheus-addr`.
    pub prometheus: Arc<prometheus::PrometheusEnv>,
    /// Whether background tasks (list refresh, ...) may start (not when only validating).
    pub start_tasks: bool,
    /// Cancelled when the handler is retired or Mixer stops.
    pub shutdown: mesh_runtime::Shutdown,
}

/// A configured adapter.
pub trait Handler: Send + Sync + fmt::Debug {
    /// Answers a check for an instance of a check template.
    fn check(&self, _instance: &InstanceValues<'_>) -> CheckResult {
        CheckResult::ok()
    }

    /// Answers a quota request for an instance of the quota template (see [`QuotaFuture`]).
    fn quota(&self, _instance: &InstanceValues<'_>, args: &QuotaArgs<'_>) -> QuotaFuture<'_> {
        QuotaFuture::ready(QuotaResult {
            status: Status::default(),
            amount: args.amount,
            valid_duration: Duration::ZERO,
        })
    }

    /// Handles a batch of report instances (on the handler's own task).
    fn report(&self, _batch: &[OwnedInstance]) {}

    /// Sees the config-store snapshot of each config Mixer compiles (before that config
    /// serves), for adapters that read other kinds of the store (`rbac`).
    fn observe_config(&self, _snapshot: &mesh_runtime::Snapshot) {}
}

/// The adapters this Mixer has, and the templates each supports.
pub const ADAPTERS: &[(&str, &[&str])] = &[
    ("denier", &["checknothing", "listentry", "quota"]),
    ("listchecker", &["listentry"]),
    ("memquota", &["quota"]),
    ("redisquota", &["quota"]),
    ("opa", &["authorization"]),
    ("rbac", &["authorization"]),
    ("prometheus", &["metric"]),
    ("stdio", &["logentry", "metric"]),
    ("kubernetesenv", &["kubernetes"]),
    (
        "noop",
        &[
            "checknothing",
            "reportnothing",
            "listentry",
            "logentry",
            "metric",
            "quota",
            "authorization",
            "apikey",
            "tracespan",
        ],
    ),
];

/// Istio 1.0 adapters that exist but that this Mixer does not implement.
pub const UNSUPPORTED_ADAPTERS: &[&str] = &[
    "bypass",
    "circonus",
    "cloudwatch",
    "dogstatsd",
    "fluentd",
    "servicecontrol",
    "signalfx",
    "solarwinds",
    "stackdriver",
    "statsd",
    "zipkin",
];

/// The templates the named adapter supports, if it is one of ours.
pub fn supported_templates(adapter: &str) -> Option<&'static [&'static str]> {
    ADAPTERS
        .iter()
        .find(|(a, _)| *a == adapter)
        .map(|(_, t)| *t)
}

/// Builds a handler of `adapter` from its parameters.
pub fn build(
    adapter: &str,
    params: &serde_json::Value,
    env: &AdapterEnv,
) -> Result<Arc<dyn Handler>, AdapterError> {
    let params = match params {
        serde_json::Value::Null => &serde_json::Value::Object(Default::default()),
        p => p,
    };
    Ok(match adapter {
        "denier" => Arc::new(denier::Denier::build(params)?),
        "listchecker" => Arc::new(listchecker::ListChecker::build(params, env)?),
        "memquota" => Arc::new(memquota::MemQuota::build(params)?),
        "redisquota" => Arc::new(redisquota::RedisQuota::build(params, env)?),
        "opa" => Arc::new(opa::Opa::build(params)?),
        "rbac" => Arc::new(rbac::Rbac::build(params)?),
        "prometheus" => Arc::new(prometheus::Prometheus::build(params, env)?),
        "stdio" => Arc::new(stdio::Stdio::build(params)?),
        "kubernetesenv" => Arc::new(kubernetesenv::KubernetesEnv::build(params)?),
        "noop" => Arc::new(noop::Noop),
        other => {
            return Err(AdapterError {
                field: "compiledAdapter".into(),
                message: if UNSUPPORTED_ADAPTERS.contains(&other) {
                    format!("adapter {other} is not supported by this Mixer")
                } else {
                    format!("unknown adapter {other}")
                },
            });
        }
    })
}

// === impl CheckResult ===

impl CheckResult {
    /// OK, cacheable for Istio's default of one minute or 10,000 uses.
    pub fn ok() -> Self {
        Self {
            status: Status::default(),
            valid_duration: Duration::from_secs(60),
            valid_use_count: 10_000,
        }
    }
}

// === impl QuotaFuture ===

impl<'h> QuotaFuture<'h> {
    /// An answer known now.
    pub fn ready(result: QuotaResult) -> Self {
        Self(Either::Left(std::future::ready(result)))
    }

    /// An answer that comes later.
    pub fn pending(answer: impl Future<Output = QuotaResult> + Send + 'h) -> Self {
        Self(Either::Right(Box::pin(answer)))
    }
}

impl Future for QuotaFuture<'_> {
    type Output = QuotaResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<QuotaResult> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl fmt::Debug for QuotaFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Either::Left(_) => "QuotaFuture::Ready",
            Either::Right(_) => "QuotaFuture::Pending",
        })
    }
}

// === impl Status ===

impl Status {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.code == code::OK
    }
}

// === impl InstanceValues ===

impl<'a> InstanceValues<'a> {
    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        let i = self.instance.field_index(name)?;
        self.values.get(i)?.as_ref()
    }
}

/// Helpers for reading adapter parameters out of JSON with errors that name the field.
pub(crate) mod params {
    use std::time::Duration;

    use serde_json::Value;

    use super::AdapterError;
    use crate::attribute::time::parse_duration;

    pub(crate) fn bad(field: &str, message: impl Into<String>) -> AdapterError {
        AdapterError {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Looks up `name` or its snake_case/camelCase twin (Istio accepts both).
    pub(crate) fn get<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
        if let Some(v) = obj.get(name) {
            return Some(v);
        }
        let alt: String = if name.contains('_') {
            let mut out = String::new();
            let mut up = false;
            for c in name.chars() {
                if c == '_' {
                    up = true;
                } else if up {
                    out.extend(c.to_uppercase());
                    up = false;
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            let mut out = String::new();
            for c in name.chars() {
                if c.is_uppercase() {
                    out.push('_');
                    out.extend(c.to_lowercase());
                } else {
                    out.push(c);
                }
            }
            out
        };
        obj.get(alt.as_str())
    }

    /// Refuses fields other than `known` (in either spelling).
    pub(crate) fn only(obj: &Value, prefix: &str, known: &[&str]) -> Result<(), AdapterError> {
        let Some(map) = obj.as_object() else {
            return Err(bad(prefix.trim_end_matches('.'), "must be a mapping"));
        };
        for key in map.keys() {
            let norm: String = key
                .chars()
                .filter(|c| *c != '_')
                .collect::<String>()
                .to_lowercase();
            if !known.iter().any(|k| {
                k.chars()
                    .filter(|c| *c != '_')
                    .collect::<String>()
                    .to_lowercase()
                    == norm
            }) {
                return Err(bad(&format!("{prefix}{key}"), "unknown field"));
            }
        }
        Ok(())
    }

    pub(crate) fn duration(
        obj: &Value,
        name: &str,
        field: &str,
    ) -> Result<Option<Duration>, AdapterError> {
        match get(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => parse_duration(s).map(Some).ok_or_else(|| {
                bad(
                    field,
                    format!("invalid duration {s:?} (e.g. \"10s\", \"500ms\")"),
                )
            }),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|v| *v >= 0.0)
                .map(|v| Some(Duration::from_secs_f64(v)))
                .ok_or_else(|| bad(field, "invalid duration")),
            Some(_) => Err(bad(field, "must be a duration string such as \"10s\"")),
        }
    }

    pub(crate) fn int(obj: &Value, name: &str, field: &str) -> Result<Option<i64>, AdapterError> {
        match get(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| bad(field, "must be an integer")),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| bad(field, "must be an integer")),
            Some(_) => Err(bad(field, "must be an integer")),
        }
    }

    pub(crate) fn boolean(
        obj: &Value,
        name: &str,
        field: &str,
    ) -> Result<Option<bool>, AdapterError> {
        match get(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(field, "must be true or false")),
        }
    }

    pub(crate) fn string(
        obj: &Value,
        name: &str,
        field: &str,
    ) -> Result<Option<String>, AdapterError> {
        match get(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(field, "must be a string")),
        }
    }

    pub(crate) fn strings(
        obj: &Value,
        name: &str,
        field: &str,
    ) -> Result<Vec<String>, AdapterError> {
        match get(obj, name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(bad(&format!("{field}[{i}]"), "must be a string")),
                })
                .collect(),
            Some(_) => Err(bad(field, "must be a list of strings")),
        }
    }

    /// An enum given by name or number.
    pub(crate) fn enumeration(
        obj: &Value,
        name: &str,
        field: &str,
        names: &[&str],
    ) -> Result<Option<usize>, AdapterError> {
        match get(obj, name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(s))
                .map(Some)
                .ok_or_else(|| bad(field, format!("must be one of {}", names.join(", ")))),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|v| v as usize)
                .filter(|v| *v < names.len())
                .map(Some)
                .ok_or_else(|| bad(field, format!("must be one of {}", names.join(", ")))),
            Some(_) => Err(bad(field, format!("must be one of {}", names.join(", ")))),
        }
    }
}
