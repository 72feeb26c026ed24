//! The Istio 1.0 templates: which fields an instance of each has and the type each field's
//! expression must have.

use crate::attribute::ValueType;

/// What a template field holds.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// One expression, of this type (any type when `None`).
    Expr(Option<ValueType>),
    /// A map of name to expression (dimensions, variables).
    Map,
    /// A nested message.
    Nested(&'static [(&'static str, Field)]),
    /// The `kubernetes` template's attribute bindings (attribute name to `$out` expression).
    Bindings,
}

/// How a template's instances are dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variety {
    Check,
    Report,
    Quota,
    AttributeGeneration,
}

use Field::*;
use ValueType as T;

const METRIC: &[(&str, Field)] = &[
    ("value", Expr(None)),
    ("dimensions", Map),
    ("monitored_resource_type", Expr(Some(T::String))),
    ("monitored_resource_dimensions", Map),
];
const LOGENTRY: &[(&str, Field)] = &[
    ("variables", Map),
    ("timestamp", Expr(Some(T::Timestamp))),
    ("severity", Expr(Some(T::String))),
    ("monitored_resource_type", Expr(Some(T::String))),
    ("monitored_resource_dimensions", Map),
];
const LISTENTRY: &[(&str, Field)] = &[("value", Expr(Some(T::String)))];
const QUOTA: &[(&str, Field)] = &[("dimensions", Map)];
const NOTHING: &[(&str, Field)] = &[];
const KUBERNETES: &[(&str, Field)] = &[
    ("source_uid", Expr(Some(T::String))),
    ("source_ip", Expr(Some(T::IpAddress))),
    ("destination_uid", Expr(Some(T::String))),
    ("destination_ip", Expr(Some(T::IpAddress))),
    ("origin_uid", Expr(Some(T::String))),
    ("origin_ip", Expr(Some(T::IpAddress))),
    ("destination_port", Expr(Some(T::Int64))),
    ("attribute_bindings", Bindings),
];
const APIKEY: &[(&str, Field)] = &[
    ("api", Expr(Some(T::String))),
    ("api_version", Expr(Some(T::String))),
    ("api_operation", Expr(Some(T::String))),
    ("api_key", Expr(Some(T::String))),
    ("timestamp", Expr(Some(T::Timestamp))),
];
const SUBJECT: &[(&str, Field)] = &[
    ("user", Expr(Some(T::String))),
    ("groups", Expr(Some(T::String))),
    ("properties", Map),
];
const ACTION: &[(&str, Field)] = &[
    ("namespace", Expr(Some(T::String))),
    ("service", Expr(Some(T::String))),
    ("method", Expr(Some(T::String))),
    ("path", Expr(Some(T::String))),
    ("properties", Map),
];
const AUTHORIZATION: &[(&str, Field)] = &[("subject", Nested(SUBJECT)), ("action", Nested(ACTION))];

/// The output fields of the `kubernetes` template, readable as `$out.<name>` in
/// `attribute_bindings`.
pub const KUBERNETES_OUTPUT: &[(&str, ValueType)] = &[
    ("source_pod_ip", T::IpAddress),
    ("source_pod_name", T::String),
    ("source_labels", T::StringMap),
    ("source_namespace", T::String),
    ("source_service_account_name", T::String),
    ("source_host_ip", T::IpAddress),
    ("source_workload_uid", T::String),
    ("source_workload_name", T::String),
    ("source_workload_namespace", T::String),
    ("source_owner", T::String),
    ("source_pod_uid", T::String),
    ("destination_pod_ip", T::IpAddress),
    ("destination_pod_name", T::String),
    ("destination_container_name", T::String),
    ("destination_labels", T::StringMap),
    ("destination_namespace", T::String),
    ("destination_service_account_name", T::String),
    ("destination_host_ip", T::IpAddress),
    ("destination_owner", T::String),
    ("destination_workload_uid", T::String),
    ("destination_workload_name", T::String),
    ("destination_workload_namespace", T::String),
    ("destination_pod_uid", T::String),
    ("origin_pod_ip", T::IpAddress),
    ("origin_pod_name", T::String),
    ("origin_labels", T::StringMap),
    ("origin_namespace", T::String),
    ("origin_service_account_name", T::String),
    ("origin_host_ip", T::IpAddress),
    ("origin_pod_uid", T::String),
];

/// A template's fields and their kinds.
pub type Schema = &'static [(&'static str, Field)];

/// The templates: name, schema (`None`: any field is an expression) and variety.
pub const TEMPLATES: &[(&str, Option<Schema>, Variety)] = &[
    ("metric", Some(METRIC), Variety::Report),
    ("logentry", Some(LOGENTRY), Variety::Report),
    ("listentry", Some(LISTENTRY), Variety::Check),
    ("quota", Some(QUOTA), Variety::Quota),
    ("checknothing", Some(NOTHING), Variety::Check),
    ("reportnothing", Some(NOTHING), Variety::Report),
    ("kubernetes", Some(KUBERNETES), Variety::AttributeGeneration),
    ("apikey", Some(APIKEY), Variety::Check),
    ("authorization", Some(AUTHORIZATION), Variety::Check),
    ("tracespan", None, Variety::Report),
    ("edge", None, Variety::Report),
    ("servicecontrolreport", None, Variety::Report),
];

/// The schema and variety of `template`.
pub fn template(name: &str) -> Option<(Option<Schema>, Variety)> {
    TEMPLATES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, s, v)| (*s, *v))
}

/// `camelCase` to `snake_case` (template fields are written either way).
pub fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
