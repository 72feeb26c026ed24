//! `prometheus`: turns `metric` instances into Prometheus series, served in the Prometheus
//! text format on `--prometheus-addr` (`/metrics`).
//!
//! Each entry of `metrics` names the instance it takes (`instance_name`), a kind (`COUNTER`
//! adds the value, `GAUGE` sets it, `DISTRIBUTION` observes it into `buckets`), and the
//! `label_names` taken from the instance's dimensions. Names get the `namespace` prefix
//! (default `istio`), so `requests_total` is served as `istio_requests_total`.
//!
//! Families live in a [`PrometheusEnv`] shared by every handler, so series survive config
//! changes that rebuild a handler with the same metric definition.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use serde_json::Value;

use super::params::{self, bad};
use super::{AdapterEnv, AdapterError, Handler, OwnedInstance};
use crate::attribute::Value as AttrValue;
use crate::config::Instance;

const KINDS: &[&str] = &["UNSPECIFIED", "GAUGE", "COUNTER", "DISTRIBUTION"];

/// What a metric does with values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Distribution,
}

/// One Prometheus metric family and its series.
#[derive(Debug)]
pub struct Family {
    name: String,
    help: String,
    kind: Kind,
    label_names: Vec<String>,
    buckets: Vec<f64>,
    series: RwLock<HashMap<Box<str>, Arc<Series>>>,
}

/// One series.
#[derive(Debug)]
struct Series {
    labels: Vec<(String, String)>,
    /// f64 bits: the counter or gauge value.
    value: AtomicU64,
    hist: Mutex<Hist>,
}

#[derive(Debug, Default)]
struct Hist {
    sum: f64,
    count: u64,
    counts: Vec<u64>,
}

/// The families of every prometheus handler; registered as a collector on the registry that
/// `--prometheus-addr` serves.
#[derive(Debug, Default)]
pub struct PrometheusEnv {
    families: Mutex<HashMap<String, Arc<Family>>>,
}

#[derive(Debug)]
struct Metric {
    family: Arc<Family>,
    /// The instances seen, with the field index of each label.
    layouts: Mutex<Vec<Layout>>,
}

/// Where an instance keeps a metric's labels and value: (instance, field index of each label,
/// field index of the value).
type Layout = (Arc<Instance>, Arc<[Option<usize>]>, Option<usize>);

/// The prometheus handler.
#[derive(Debug)]
pub struct Prometheus {
    by_instance: HashMap<String, Metric>,
}

// === impl PrometheusEnv ===

impl PrometheusEnv {
    /// The family named `name`, reused when its definition is unchanged.
    fn family(&self, def: Family) -> Arc<Family> {
        let mut families = self.families.lock();
        if let Some(f) = families.get(&def.name)
            && f.kind == def.kind
            && f.label_names == def.label_names
            && f.buckets == def.buckets
        {
            return f.clone();
        }
        let f = Arc::new(def);
        families.insert(f.name.clone(), f.clone());
        f
    }

    /// A registry serving these families.
    pub fn registry(self: &Arc<Self>) -> prometheus_client::registry::Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        registry
    }
}

impl Collector for PrometheusEnv {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut families: Vec<Arc<Family>> = self.families.lock().values().cloned().collect();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        for f in families {
            let series: Vec<Arc<Series>> = f.series.read().values().cloned().collect();
            let (name, ty) = match f.kind {
                Kind::Counter => (
                    f.name.strip_suffix("_total").unwrap_or(&f.name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (f.name.as_str(), MetricType::Gauge),
                Kind::Distribution => (f.name.as_str(), MetricType::Histogram),
            };
            let mut me = encoder.encode_descriptor(name, &f.help, None, ty)?;
            for s in series {
                let mut fe = me.encode_family(&s.labels)?;
                let v = f64::from_bits(s.value.load(Ordering::Relaxed));
                match f.kind {
                    Kind::Counter => fe.encode_counter::<NoLabelSet, _, f64>(&v, None)?,
                    Kind::Gauge => fe.encode_gauge(&v)?,
                    Kind::Distribution => {
                        let h = s.hist.lock();
                        let mut cumulative = 0;
                        let mut buckets: Vec<(f64, u64)> = f
                            .buckets
                            .iter()
                            .zip(&h.counts)
                            .map(|(b, c)| {
                                cumulative += c;
                                (*b, cumulative)
                            })
                            .collect();
                        buckets.push((f64::INFINITY, h.count));
                        fe.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn buckets(p: Option<&Value>, field: &str) -> Result<Vec<f64>, AdapterError> {
    let default = || {
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]
    };
    let Some(p) = p.filter(|p| !p.is_null()) else {
        return Ok(default());
    };
    params::only(
        p,
        &format!("{field}."),
        &["explicitBuckets", "linearBuckets", "exponentialBuckets"],
    )?;
    let num = |v: &Value, n: &str, f: &str| -> Result<f64, AdapterError> {
        match params::get(v, n) {
            Some(Value::Number(x)) => x.as_f64().ok_or_else(|| bad(f, "must be a number")),
            None | Some(Value::Null) => Ok(0.0),
            Some(_) => Err(bad(f, "must be a number")),
        }
    };
    let out: Vec<f64> = if let Some(e) = params::get(p, "explicitBuckets") {
        match params::get(e, "bounds") {
            Some(Value::Array(b)) => b
                .iter()
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        bad(
                            &format!("{field}.explicitBuckets.bounds"),
                            "must be numbers",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(bad(
                    &format!("{field}.explicitBuckets.bounds"),
                    "must be a list of numbers",
                ));
            }
        }
    } else if let Some(l) = params::get(p, "linearBuckets") {
        let f = format!("{field}.linearBuckets");
        let n = num(l, "numFiniteBuckets", &f)? as usize;
        let (width, offset) = (num(l, "width", &f)?, num(l, "offset", &f)?);
        if n == 0 || n > 1000 || width <= 0.0 {
            return Err(bad(&f, "needs numFiniteBuckets in 1..1000 and width > 0"));
        }
        (0..n).map(|i| offset + width * i as f64).collect()
    } else if let Some(x) = params::get(p, "exponentialBuckets") {
        let f = format!("{field}.exponentialBuckets");
        let n = num(x, "numFiniteBuckets", &f)? as usize;
        let (scale, growth) = (num(x, "scale", &f)?, num(x, "growthFactor", &f)?);
        if n == 0 || n > 1000 || scale <= 0.0 || growth <= 1.0 {
            return Err(bad(
                &f,
                "needs numFiniteBuckets in 1..1000, scale > 0 and growthFactor > 1",
            ));
        }
        (0..n).map(|i| scale * growth.powi(i as i32)).collect()
    } else {
        default()
    };
    if out.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad(field, "bucket bounds must increase"));
    }
    Ok(out)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

// === impl Prometheus ===

impl Prometheus {
    /// Validates parameters and builds the handler.
    pub fn build(p: &Value, env: &AdapterEnv) -> Result<Self, AdapterError> {
        params::only(p, "", &["metrics", "metricsExpirationPolicy"])?;
        let list = match params::get(p, "metrics") {
            None | Some(Value::Null) => &Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(bad("metrics", "must be a list")),
        };
        let mut by_instance = HashMap::new();
        let mut names = HashMap::new();
        for (i, m) in list.iter().enumerate() {
            let f = format!("metrics[{i}]");
            params::only(
                m,
                &format!("{f}."),
                &[
                    "name",
                    "namespace",
                    "instanceName",
                    "description",
                    "kind",
                    "labelNames",
                    "buckets",
                ],
            )?;
            let name = params::string(m, "name", &format!("{f}.name"))?.unwrap_or_default();
            let namespace = params::string(m, "namespace", &format!("{f}.namespace"))?
                .unwrap_or_else(|| "istio".into());
            let full = if namespace.is_empty() {
                name.clone()
            } else {
                format!("{namespace}_{name}")
            };
            if !valid_name(&name) || !valid_name(&full) {
                return Err(bad(
                    &format!("{f}.name"),
                    format!("{name:?} is not a valid Prometheus metric name"),
                ));
            }
            if let Some(j) = names.insert(full.clone(), i) {
                return Err(bad(
                    &format!("{f}.name"),
                    format!("{full} is already defined by metrics[{j}]"),
                ));
            }
            let instance = params::string(m, "instanceName", &format!("{f}.instanceName"))?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    bad(
                        &format!("{f}.instance_name"),
                        "required: the full name of a metric instance",
                    )
                })?;
            let kind = match params::enumeration(m, "kind", &format!("{f}.kind"), KINDS)? {
                Some(1) => Kind::Gauge,
                Some(2) => Kind::Counter,
                Some(3) => Kind::Distribution,
                _ => {
                    return Err(bad(
                        &format!("{f}.kind"),
                        "must be one of GAUGE, COUNTER, DISTRIBUTION",
                    ));
                }
            };
            let label_names = params::strings(m, "labelNames", &format!("{f}.label_names"))?;
            for (j, l) in label_names.iter().enumerate() {
                if !valid_name(l) {
                    return Err(bad(
                        &format!("{f}.label_names[{j}]"),
                        format!("{l:?} is not a valid label name"),
                    ));
                }
            }
            let buckets = if kind == Kind::Distribution {
                buckets(params::get(m, "buckets"), &format!("{f}.buckets"))?
            } else {
                Vec::new()
            };
            let help = params::string(m, "description", &format!("{f}.description"))?
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| name.clone());
            let family = env.prometheus.family(Family {
                name: full,
                help,
                kind,
                label_names,
                buckets,
                series: RwLock::new(HashMap::new()),
            });
            if by_instance
                .insert(
                    instance.clone(),
                    Metric {
                        family,
                        layouts: Mutex::new(Vec::new()),
                    },
                )
                .is_some()
            {
                return Err(bad(
                    &format!("{f}.instance_name"),
                    format!("instance {instance} feeds two metrics"),
                ));
            }
        }
        Ok(Self { by_instance })
    }
}

fn numeric(v: &AttrValue<'_>) -> Option<f64> {
    match v {
        AttrValue::Int64(i) => Some(*i as f64),
        AttrValue::Double(d) => Some(*d),
        AttrValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        AttrValue::Duration(d) => Some(d.as_secs_f64()),
        AttrValue::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl Handler for Prometheus {
    fn report(&self, batch: &[OwnedInstance]) {
        let mut key = String::with_capacity(256);
        for inst in batch {
            let Some(metric) = self.by_instance.get(&*inst.instance.name) else {
                continue;
            };
            let family = &metric.family;
            let (labels, value_index) = {
                let mut layouts = metric.layouts.lock();
                match layouts
                    .iter()
                    .find(|(i, _, _)| Arc::ptr_eq(i, &inst.instance))
                {
                    Some((_, l, v)) => (l.clone(), *v),
                    None => {
                        let l: Arc<[Option<usize>]> = family
                            .label_names
                            .iter()
                            .map(|n| inst.instance.field_index(&format!("dimensions.{n}")))
                            .collect();
                        let v = inst.instance.field_index("value");
                        layouts.retain(|(i, _, _)| Arc::strong_count(i) > 1);
                        layouts.push((inst.instance.clone(), l.clone(), v));
                        (l, v)
                    }
                }
            };
            let Some(value) = value_index
                .and_then(|i| inst.value(i))
                .as_ref()
                .and_then(numeric)
            else {
                continue;
            };
            key.clear();
            for idx in labels.iter() {
                if let Some(v) = idx.and_then(|i| inst.value(i)) {
                    v.write_text(&mut key);
                }
                key.push('\u{1}');
            }
            let existing = family.series.read().get(key.as_str()).cloned();
            let series = match existing {
                Some(s) => s,
                None => {
                    let values: Vec<&str> = key.split('\u{1}').collect();
                    let labels = family
                        .label_names
                        .iter()
                        .zip(values)
                        .map(|(n, v)| (n.clone(), v.to_string()))
                        .collect();
                    let s = Arc::new(Series {
                        labels,
                        value: AtomicU64::new(0f64.to_bits()),
                        hist: Mutex::new(Hist {
                            counts: vec![0; family.buckets.len()],
                            ..Hist::default()
                        }),
                    });
                    family
                        .series
                        .write()
                        .entry(key.as_str().into())
                        .or_insert(s)
                        .clone()
                }
            };
            match family.kind {
                Kind::Counter => {
                    let _ =
                        series
                            .value
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                                Some((f64::from_bits(bits) + value).to_bits())
                            });
                }
                Kind::Gauge => series.value.store(value.to_bits(), Ordering::Relaxed),
                Kind::Distribution => {
                    let mut h = series.hist.lock();
                    h.sum += value;
                    h.count += 1;
                    if let Some(i) = family.buckets.iter().position(|b| value <= *b) {
                        h.counts[i] += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> AdapterEnv {
        AdapterEnv {
            prometheus: Default::default(),
            start_tasks: false,
            shutdown: Default::default(),
        }
    }

    #[test]
    fn buckets_and_validation() {
        assert_eq!(
            buckets(Some(&json!({"exponentialBuckets": {"numFiniteBuckets": 3, "scale": 1, "growthFactor": 10}})), "b").unwrap(),
            vec![1.0, 10.0, 100.0]
        );
        assert_eq!(
            buckets(
                Some(
                    &json!({"linear_buckets": {"num_finite_buckets": 3, "width": 2, "offset": 1}})
                ),
                "b"
            )
            .unwrap(),
            vec![1.0, 3.0, 5.0]
        );
        assert_eq!(
            buckets(Some(&json!({"explicit_buckets": {"bounds": [1, 2]}})), "b").unwrap(),
            vec![1.0, 2.0]
        );
        let e = Prometheus::build(&json!({"metrics": [{"name": "x", "instance_name": "a.metric.ns", "kind": "HISTOGRAM"}]}), &env()).unwrap_err();
        assert_eq!(e.field, "metrics[0].kind");
        let e = Prometheus::build(
            &json!({"metrics": [{"name": "x-y", "instance_name": "a", "kind": "COUNTER"}]}),
            &env(),
        )
        .unwrap_err();
        assert_eq!(e.field, "metrics[0].name");
        let e = Prometheus::build(
            &json!({"metrics": [{"name": "x", "kind": "COUNTER"}]}),
            &env(),
        )
        .unwrap_err();
        assert_eq!(e.field, "metrics[0].instance_name");
        let e = Prometheus::build(&json!({"metrics": [{"name": "x", "instance_name": "a", "kind": "COUNTER", "label_names": ["ok", "not ok"]}]}), &env()).unwrap_err();
        assert_eq!(e.field, "metrics[0].label_names[1]");
    }
}
