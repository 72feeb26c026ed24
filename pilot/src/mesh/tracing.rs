//! Tracing settings of MeshConfig: `enableTracing` and `defaultConfig.tracing` (Istio's
//! ProxyConfig `tracing`), which make sidecars and gateways report spans to a Zipkin
//! collector (Zipkin, or Jaeger's and the OpenTelemetry collector's Zipkin receivers).
//!
//! Istio's defaults: tracing on, the collector at `zipkin.istio-system:9411`, 1% of requests
//! sampled. One difference: Istio reads a `sampling` of 0 as "unset" (and so 1%); here an
//! explicit `sampling: 0` samples no request (clients may still force a trace with
//! `x-b3-sampled: 1` or `x-client-trace-id`, as Envoy allows), and a `sampling` outside
//! 0-100 is refused rather than replaced by the default.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Istio's default Zipkin collector address.
pub const DEFAULT_ZIPKIN_ADDRESS: &str = "zipkin.istio-system:9411";
/// Istio's default sampling (percent of requests).
pub const DEFAULT_SAMPLING: f64 = 1.0;
/// Istio's default longest `http.url` tag.
pub const DEFAULT_MAX_PATH_TAG_LENGTH: u32 = 256;

/// `defaultConfig`: the proxy settings of every proxy (Istio's ProxyConfig). Only `tracing`
/// is acted on; the rest is kept as read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    pub tracing: Option<TracingConfig>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `defaultConfig.tracing`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TracingConfig {
    pub zipkin: Option<Zipkin>,
    /// Percent of requests traced (0.0-100.0), when the client did not decide.
    pub sampling: Option<f64>,
    /// The longest `http.url` tag (default 256).
    pub max_path_tag_length: Option<u32>,
    /// Tags added to every span, by name.
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Other tracers (`lightstep`, `datadog`, `stackdriver`, `openCensusAgent`) and settings
    /// this version does not act on.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `tracing.zipkin`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Zipkin {
    /// `HOST:PORT` of the collector.
    pub address: String,
}

/// One of `tracing.customTags`: a literal value, an environment variable of the proxy or a
/// request header.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CustomTag {
    pub literal: Option<Literal>,
    pub environment: Option<FromName>,
    pub header: Option<FromName>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Literal {
    pub value: String,
}

/// A tag read from a named environment variable or header, `defaultValue` when absent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FromName {
    pub name: String,
    pub default_value: String,
}

/// The tracing a proxy gets, resolved from MeshConfig with Istio's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector, `(host, port)`.
    pub host: String,
    pub port: u32,
    /// Percent of requests sampled (0.0-100.0).
    pub sampling: f64,
    pub max_path_tag_length: u32,
    pub custom_tags: BTreeMap<String, CustomTag>,
}

/// The tracers of `tracing` other than Zipkin that Istio knows (none is acted on here).
const OTHER_TRACERS: [&str; 4] = ["lightstep", "datadog", "stackdriver", "openCensusAgent"];

// === impl TracingConfig ===

impl TracingConfig {
    /// Whether another tracer than Zipkin is chosen (Istio's `tracer` is one of them).
    pub fn other_tracer(&self) -> Option<&str> {
        OTHER_TRACERS
            .into_iter()
            .find(|t| self.other.contains_key(*t))
    }
}

/// The tracing of the mesh: `None` when `enableTracing` is false or another tracer than
/// Zipkin is chosen. `config` must have passed [`validate`].
pub fn resolve(enabled: bool, config: Option<&TracingConfig>) -> Option<Tracing> {
    if !enabled {
        return None;
    }
    let default = TracingConfig::default();
    let config = config.unwrap_or(&default);
    if config.zipkin.is_none() && config.other_tracer().is_some() {
        return None;
    }
    let address = config
        .zipkin
        .as_ref()
        .map(|z| z.address.as_str())
        .filter(|a| !a.is_empty())
        .unwrap_or(DEFAULT_ZIPKIN_ADDRESS);
    let (host, port) = super::host_port(address)?;
    Some(Tracing {
        host: host.to_string(),
        port,
        sampling: config.sampling.unwrap_or(DEFAULT_SAMPLING),
        max_path_tag_length: config
            .max_path_tag_length
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_PATH_TAG_LENGTH),
        custom_tags: config.custom_tags.clone(),
    })
}

/// Checks `defaultConfig.tracing`: `Err((field, message))` naming the first bad field.
pub fn validate(config: &TracingConfig) -> Result<(), (String, String)> {
    const AT: &str = "defaultConfig.tracing";
    if let Some(z) = &config.zipkin
        && !z.address.is_empty()
        && super::host_port(&z.address).is_none()
    {
        return Err((
            format!("{AT}.zipkin.address"),
            format!("{:?}: expected HOST:PORT", z.address),
        ));
    }
    if config.zipkin.is_some()
        && let Some(other) = config.other_tracer()
    {
        return Err((
            format!("{AT}.{other}"),
            "only one tracer can be set, and zipkin is".into(),
        ));
    }
    if let Some(s) = config.sampling
        && !(0.0..=100.0).contains(&s)
    {
        return Err((
            format!("{AT}.sampling"),
            format!("{s}: expected a percentage from 0.0 to 100.0"),
        ));
    }
    for (name, tag) in &config.custom_tags {
        let field = format!("{AT}.customTags.{name}");
        if name.is_empty() {
            return Err((field, "a tag needs a name".into()));
        }
        let kinds = [
            tag.literal.is_some(),
            tag.environment.is_some(),
            tag.header.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => {
                return Err((
                    field,
                    "expected one of literal, environment or header".into(),
                ));
            }
            _ => {
                return Err((
                    field,
                    "only one of literal, environment or header can be set".into(),
                ));
            }
        }
        for (kind, from) in [("environment", &tag.environment), ("header", &tag.header)] {
            if let Some(from) = from
                && from.name.is_empty()
            {
                return Err((
                    format!("{field}.{kind}.name"),
                    "empty: a name is required".into(),
                ));
            }
        }
    }
    Ok(())
}
