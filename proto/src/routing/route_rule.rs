//! `RouteRule` (Istio 0.2–0.8): routes requests for one service by labels of its instances,
//! with precedence ordering, fault injection, retries and timeouts. Replaced by VirtualService.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::networking::{CorsPolicy, HttpRedirect, HttpRewrite, StringMatch};
use crate::types::{Duration, IstioService, Struct};

/// `config.istio.io/RouteRule` spec.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "config.istio.io",
    version = "v1alpha2",
    kind = "RouteRule",
    root = "RouteRuleResource",
    plural = "routerules",
    namespaced,
    derive = "PartialEq",
    category = "istio-io",
    doc = "A routing rule of the pre-1.0 routing API."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// The service whose requests are routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IstioService>,
    /// Order among the service's rules; the highest applies first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precedence: Option<i32>,
    /// Conditions on the request and its source.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_condition: Option<MatchCondition>,
    /// Weighted destinations, by instance labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<DestinationWeight>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Rewrite the path or authority before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Allow WebSocket upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_upgrade: Option<bool>,
    /// Request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_req_timeout: Option<HttpTimeout>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_req_retries: Option<HttpRetry>,
    /// HTTP faults to inject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_fault: Option<HttpFaultInjection>,
    /// TCP faults to inject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4_fault: Option<L4FaultInjection>,
    /// Copy requests to this service too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<IstioService>,
    /// Cross-origin resource sharing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Request headers to add.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append_headers: BTreeMap<String, String>,
}

/// Conditions of a route rule; all the given ones must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchCondition {
    /// The calling service (and labels of its instances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IstioService>,
    /// Conditions on TCP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<L4MatchAttributes>,
    /// Conditions on UDP traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<L4MatchAttributes>,
    /// Conditions on HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<MatchRequest>,
}

/// Conditions on an HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchRequest {
    /// Request headers by name; `uri`, `scheme`, `method` and `authority` name those parts
    /// of the request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

/// Conditions on layer-4 addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Source IP addresses or subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_subnet: Vec<String>,
    /// Destination IP addresses or subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnet: Vec<String>,
}

/// A weighted destination: a set of instances chosen by labels, optionally of another service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationWeight {
    /// Another service to send to, instead of the rule's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IstioService>,
    /// Labels of the instances traffic goes to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Share of the traffic, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Request timeout policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTimeout {
    /// A fixed timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple_timeout: Option<SimpleTimeoutPolicy>,
    /// A proxy-specific policy (`google.protobuf.Any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Struct>,
}

/// A fixed request timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimpleTimeoutPolicy {
    /// The timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Request header by which callers may override the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// Retry policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// A fixed number of attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple_retry: Option<SimpleRetryPolicy>,
    /// A proxy-specific policy (`google.protobuf.Any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Struct>,
}

/// A fixed number of retry attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimpleRetryPolicy {
    /// Number of retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Timeout of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Request header by which callers may override the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// HTTP faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Fail requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Share of requests delayed, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Fixed delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Exponentially distributed delay with this mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// Request header by which callers may override the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// An abort fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// Share of requests aborted, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// gRPC status returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// HTTP/2 error returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// HTTP status returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// Request header by which callers may override the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_header_name: Option<String>,
}

/// TCP faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4FaultInjection {
    /// Slow connections down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Close connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate: Option<Terminate>,
}

/// Bandwidth throttling of connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Throttle {
    /// Share of connections throttled, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Bandwidth towards the caller, in bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_limit_bps: Option<i64>,
    /// Bandwidth towards the service, in bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_limit_bps: Option<i64>,
    /// Start throttling after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_after_period: Option<Duration>,
    /// Start throttling after this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_after_bytes: Option<f64>,
    /// Stop throttling after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_for_period: Option<Duration>,
}

/// Abrupt termination of connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Terminate {
    /// Share of connections terminated, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Terminate after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminate_after_period: Option<Duration>,
}
