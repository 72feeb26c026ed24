//! Pilot's xDS metrics, with Istio's series names where they exist.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

/// The metrics of the xDS server.
#[derive(Clone, Debug)]
pub struct XdsMetrics {
    connected: Gauge,
    pushes: Family<TypeLabel, Counter>,
    rejects: Family<TypeLabel, Counter>,
    triggers: Family<TypeLabel, Counter>,
    push_time: Family<TypeLabel, Histogram, fn() -> Histogram>,
    convergence: Histogram,
    context_build: Histogram,
}

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

// === impl XdsMetrics ===

impl XdsMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> XdsMetrics {
        let m = XdsMetrics {
            connected: Gauge::default(),
            pushes: Family::default(),
            rejects: Family::default(),
            triggers: Family::default(),
            push_time: Family::new_with_constructor(seconds_buckets),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            context_build: seconds_buckets(),
        };
        registry.register(
            "pilot_xds",
            "Number of connected proxies",
            m.connected.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "Responses sent to proxies, by type (cds, eds, lds, rds)",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Responses proxies rejected (NACK), by type",
            m.rejects.clone(),
        );
        registry.register(
            "pilot_push_triggers",
            "Pushes started, by kind (full, eds)",
            m.triggers.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Seconds to generate and queue one response, by type",
            m.push_time.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a config change to the response that carries it",
            m.convergence.clone(),
        );
        registry.register(
            "pilot_push_context_build_time",
            "Seconds to build the push context of a full push",
            m.context_build.clone(),
        );
        m
    }

    /// Metrics not registered anywhere (tests, tools).
    pub fn unregistered() -> XdsMetrics {
        XdsMetrics::register(&mut Registry::default())
    }

    pub(crate) fn set_connected(&self, n: usize) {
        self.connected.set(n as i64);
    }

    pub(crate) fn pushed(&self, ty: &str, took: Duration, since: Option<Instant>) {
        let label = TypeLabel {
            r#type: ty.to_string(),
        };
        self.pushes.get_or_create(&label).inc();
        self.push_time
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let Some(start) = since {
            self.convergence.observe(start.elapsed().as_secs_f64());
        }
    }

    pub(crate) fn rejected(&self, ty: &str) {
        self.rejects
            .get_or_create(&TypeLabel {
                r#type: ty.to_string(),
            })
            .inc();
    }

    pub(crate) fn push_triggers(&self, kind: &str) {
        self.triggers
            .get_or_create(&TypeLabel {
                r#type: kind.to_string(),
            })
            .inc();
    }

    pub(crate) fn context_built(&self, took: Duration) {
        self.context_build.observe(took.as_secs_f64());
    }

    /// Rejections counted so far, over all types.
    pub fn total_rejects(&self) -> u64 {
        ["cds", "eds", "sds", "lds", "rds", "unknown"]
            .iter()
            .map(|t| {
                self.rejects
                    .get_or_create(&TypeLabel {
                        r#type: t.to_string(),
                    })
                    .get()
            })
            .sum()
    }
}
