//! Mixer's own series (`mixer_*`), on the monitoring server's `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
}

/// Every Mixer series.
#[derive(Debug)]
pub struct Metrics {
    /// Checks by resulting code, pre-created for codes 0-16.
    checks: Vec<Counter>,
    checks_family: Family<Labels, Counter>,
    pub quotas: Counter,
    pub report_entries: Counter,
    pub rule_errors: Counter,
    pub instance_errors: Counter,
    pub malformed: Family<Labels, Counter>,
    pub config_errors: Gauge,
    pub config_rules: Gauge,
    dispatch_latency: HistogramFamily,
    dispatch_errors: Family<Labels, Counter>,
    report_dropped: Family<Labels, Counter>,
}

/// The series of one handler.
#[derive(Debug, Clone)]
pub struct HandlerMetrics {
    pub check_latency: Histogram,
    pub report_latency: Histogram,
    pub errors: Counter,
    pub dropped: Counter,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every series in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let checks_family = Family::<Labels, Counter>::default();
        let checks = (0..=16)
            .map(|c| {
                checks_family
                    .get_or_create(&vec![("code".into(), crate::adapter::code::name(c).into())])
                    .clone()
            })
            .collect();
        let m = Self {
            checks,
            checks_family,
            quotas: Counter::default(),
            report_entries: Counter::default(),
            rule_errors: Counter::default(),
            instance_errors: Counter::default(),
            malformed: Family::default(),
            config_errors: Gauge::default(),
            config_rules: Gauge::default(),
            dispatch_latency: HistogramFamily::new_with_constructor(latency),
            dispatch_errors: Family::default(),
            report_dropped: Family::default(),
        };
        registry.register(
            "mixer_checks",
            "Checks answered, by status code",
            m.checks_family.clone(),
        );
        registry.register("mixer_quotas", "Quota requests answered", m.quotas.clone());
        registry.register(
            "mixer_report_entries",
            "Report entries (attribute bags) dispatched",
            m.report_entries.clone(),
        );
        registry.register(
            "mixer_rule_match_errors",
            "Rule match expressions that failed to evaluate",
            m.rule_errors.clone(),
        );
        registry.register(
            "mixer_instance_errors",
            "Instances that failed to evaluate and were not dispatched",
            m.instance_errors.clone(),
        );
        registry.register(
            "mixer_malformed_requests",
            "Requests refused as malformed, by API",
            m.malformed.clone(),
        );
        registry.register(
            "mixer_config_errors",
            "Config objects currently refused",
            m.config_errors.clone(),
        );
        registry.register(
            "mixer_config_rules",
            "Rules in the serving config",
            m.config_rules.clone(),
        );
        registry.register(
            "mixer_dispatch_duration_seconds",
            "Adapter dispatch latency, by handler and variety",
            m.dispatch_latency.clone(),
        );
        registry.register(
            "mixer_dispatch_errors",
            "Adapter dispatch errors, by handler",
            m.dispatch_errors.clone(),
        );
        registry.register(
            "mixer_report_dropped_batches",
            "Report batches dropped because a handler's queue was full",
            m.report_dropped.clone(),
        );
        m
    }

    /// Counts a check answered with `code`.
    pub fn check(&self, code: i32) {
        match self.checks.get(code as usize) {
            Some(c) => {
                c.inc();
            }
            None => {
                self.checks[2].inc();
            }
        }
    }

    /// The series of handler `name`.
    pub fn for_handler(&self, name: &str, adapter: &str) -> HandlerMetrics {
        let labels = |variety: &str| -> Labels {
            vec![
                ("handler".into(), name.into()),
                ("adapter".into(), adapter.into()),
                ("variety".into(), variety.into()),
            ]
        };
        let base: Labels = vec![
            ("handler".into(), name.into()),
            ("adapter".into(), adapter.into()),
        ];
        // One statement each: a family's read guard must be gone before the next
        // get_or_create on it takes the write lock.
        let check_latency = self
            .dispatch_latency
            .get_or_create(&labels("check"))
            .clone();
        let report_latency = self
            .dispatch_latency
            .get_or_create(&labels("report"))
            .clone();
        let errors = self.dispatch_errors.get_or_create(&base).clone();
        let dropped = self.report_dropped.get_or_create(&base).clone();
        HandlerMetrics {
            check_latency,
            report_latency,
            errors,
            dropped,
        }
    }

    /// Counts a malformed request to `api`.
    pub fn malformed(&self, api: &str) {
        self.malformed
            .get_or_create(&vec![("api".into(), api.into())])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&mut Registry::default())
    }
}
