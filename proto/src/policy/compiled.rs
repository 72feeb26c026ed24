//! The per-adapter and per-template kinds of Istio 1.0/1.1 Mixer (`kind: prometheus`,
//! `kind: metric`, …): a handler or instance written as an object of the adapter's or template's
//! own kind, with the params as the spec.
//!
//! Each adapter validates its own params when Mixer loads it, so their specs are kept here as
//! free-form objects ([`Struct`](crate::types::Struct)), and their CRDs preserve unknown fields.

use std::fmt;

macro_rules! named_kinds {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every value, in the order declared.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The kind name, as written in documents (lower case).
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// The value whose kind name is `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $text => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_kinds! {
    /// Adapters compiled into Mixer, each with a kind of its own for its handlers.
    pub enum CompiledAdapter {
        /// Forwards to a remote Mixer (`bypass`).
        Bypass => "bypass",
        /// Circonus metrics (`circonus`).
        Circonus => "circonus",
        /// AWS CloudWatch metrics and logs (`cloudwatch`).
        Cloudwatch => "cloudwatch",
        /// Always denies (`denier`).
        Denier => "denier",
        /// Datadog DogStatsD metrics (`dogstatsd`).
        Dogstatsd => "dogstatsd",
        /// Fluentd logs (`fluentd`).
        Fluentd => "fluentd",
        /// Kubernetes workload attributes (`kubernetesenv`).
        Kubernetesenv => "kubernetesenv",
        /// Allow or deny lists (`listchecker`).
        Listchecker => "listchecker",
        /// In-memory quotas (`memquota`).
        Memquota => "memquota",
        /// Does nothing (`noop`).
        Noop => "noop",
        /// Open Policy Agent policies (`opa`).
        Opa => "opa",
        /// Prometheus metrics (`prometheus`).
        Prometheus => "prometheus",
        /// Mixer-side RBAC (`rbac`).
        Rbac => "rbac",
        /// Redis-backed quotas (`redisquota`).
        Redisquota => "redisquota",
        /// Google Service Control (`servicecontrol`).
        Servicecontrol => "servicecontrol",
        /// SignalFx metrics and traces (`signalfx`).
        Signalfx => "signalfx",
        /// SolarWinds metrics and logs (`solarwinds`).
        Solarwinds => "solarwinds",
        /// Stackdriver metrics, logs and traces (`stackdriver`).
        Stackdriver => "stackdriver",
        /// StatsD metrics (`statsd`).
        Statsd => "statsd",
        /// Logs and metrics to standard output (`stdio`).
        Stdio => "stdio",
        /// Zipkin traces (`zipkin`).
        Zipkin => "zipkin",
    }
}

named_kinds! {
    /// Templates compiled into Mixer, each with a kind of its own for its instances.
    pub enum CompiledTemplate {
        /// API key check (`apikey`).
        Apikey => "apikey",
        /// Authorization check (`authorization`).
        Authorization => "authorization",
        /// A check with no data (`checknothing`).
        Checknothing => "checknothing",
        /// A service-graph edge (`edge`).
        Edge => "edge",
        /// Kubernetes attribute generation (`kubernetes`).
        Kubernetes => "kubernetes",
        /// List membership check (`listentry`).
        Listentry => "listentry",
        /// A log entry (`logentry`).
        Logentry => "logentry",
        /// A metric value (`metric`).
        Metric => "metric",
        /// A quota request (`quota`).
        Quota => "quota",
        /// A report with no data (`reportnothing`).
        Reportnothing => "reportnothing",
        /// Google Service Control report (`servicecontrolreport`).
        Servicecontrolreport => "servicecontrolreport",
        /// A trace span (`tracespan`).
        Tracespan => "tracespan",
    }
}
