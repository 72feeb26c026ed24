//! `DestinationPolicy` (Istio 0.2–0.8): load balancing and circuit breaking for a service's
//! instances. Replaced by DestinationRule.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{Duration, IstioService, Struct};

/// `config.istio.io/DestinationPolicy` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "DestinationPolicy",
    root = "DestinationPolicyResource",
    plural = "destinationpolicies",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    doc = "A destination policy of the pre-1.0 routing API."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationPolicy {
    /// The service (and instance labels) the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IstioService>,
    /// Limit the policy to calls from this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IstioService>,
    /// Load-balancing algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// Circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Proxy-specific policy (`google.protobuf.Any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Struct>,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancing {
    /// A simple algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<SimpleLbPolicy>,
    /// A proxy-specific algorithm (`google.protobuf.Any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Struct>,
}

/// Simple load-balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLbPolicy {
    /// Round robin.
    RoundRobin,
    /// Fewest active requests among two random choices.
    LeastConn,
    /// Random choice.
    Random,
}

/// Circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Connection limits and outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple_cb: Option<SimpleCircuitBreakerPolicy>,
    /// A proxy-specific policy (`google.protobuf.Any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Struct>,
}

/// Connection limits and outlier ejection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimpleCircuitBreakerPolicy {
    /// Maximum connections to the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    /// Maximum requests queued for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_pending_requests: Option<i32>,
    /// Maximum active requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_requests: Option<i32>,
    /// Minimum ejection time of a failing instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_window: Option<Duration>,
    /// Consecutive 5xx errors before ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_consecutive_errors: Option<i32>,
    /// Interval between ejection sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_detection_interval: Option<Duration>,
    /// Maximum requests per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_requests_per_connection: Option<i32>,
    /// Maximum share of instances ejected, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_ejection_percent: Option<i32>,
    /// Maximum concurrent retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_retries: Option<i32>,
}
