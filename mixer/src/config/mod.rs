//! Mixer's config model: the `rule`, `handler`, `instance` and `attributemanifest` objects
//! of a config-store snapshot (plus Istio 1.0's per-adapter and per-template kinds, and
//! QuotaSpec/QuotaSpecBinding), compiled into a [`Resolved`] config the dispatcher serves.
//!
//! References are resolved as Istio does: `name` means `name.<kind>.<namespace of the
//! referrer>`, `name.kind` adds the referrer's namespace, `name.kind.namespace` is complete
//! (and `name.namespace` is tried for the `handler`/`instance` kinds). Rules in the default
//! config namespace (`istio-system`) apply to every request; rules elsewhere only to requests
//! whose identity namespace (the destination's for inbound reports, the source's for
//! outbound) is theirs.
//!
//! An object that does not compile is refused with a message naming it and the field; the
//! last good version of it keeps serving when there is one.

mod compile;
pub mod index;
pub mod templates;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use mesh_runtime::ConfigKey;
use tokio::sync::mpsc;

use crate::adapter::{Handler, OwnedInstance};
use crate::attribute::{AttrId, Vocabulary};
use crate::dispatch::metrics::HandlerMetrics;
use crate::expr::Expression;

pub use compile::{CompileOptions, Compiler, DEFAULT_CONFIG_NAMESPACE, is_mixer_kind};
pub use index::{RuleIndex, RuleList};
pub use templates::Variety;

/// A compiled instance: a template's fields, each an expression.
#[derive(Debug)]
pub struct Instance {
    /// The full name, `name.kind.namespace` (`name.instance.namespace` for `instance`).
    pub name: Arc<str>,
    /// The object name (what quota requests name).
    pub short_name: String,
    pub namespace: String,
    /// The template, e.g. `metric`.
    pub template: String,
    pub variety: Variety,
    /// Field paths, e.g. `value`, `dimensions.source_app`.
    pub fields: Vec<Arc<str>>,
    pub exprs: Vec<Expression>,
}

/// A built handler, with its report queue.
pub struct HandlerEntry {
    /// The full name, `name.kind.namespace`.
    pub name: Arc<str>,
    /// The adapter, e.g. `denier`.
    pub adapter: String,
    pub handler: Arc<dyn Handler>,
    pub metrics: HandlerMetrics,
    /// What it was built from (the adapter and its parameters), to reuse it across configs.
    pub(crate) fingerprint: String,
    pub(crate) report_tx: Option<mpsc::Sender<Vec<OwnedInstance>>>,
    pub(crate) _stop: tokio_util::sync::DropGuard,
}

/// One action of a rule: instances sent to a handler.
#[derive(Debug, Clone)]
pub struct Action {
    pub handler: usize,
    pub instances: Vec<usize>,
    pub name: Option<String>,
}

/// A header operation of a rule.
#[derive(Debug)]
pub struct HeaderOp {
    pub name: String,
    pub values: Vec<Expression>,
    /// `REPLACE` (default), `REMOVE` or `APPEND`.
    pub operation: HeaderOpKind,
}

/// What a header operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOpKind {
    Replace,
    Remove,
    Append,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    /// True for rules in the default config namespace.
    pub mesh_wide: bool,
    pub match_expr: Option<Expression>,
    pub actions: Vec<Action>,
    pub request_header_ops: Vec<HeaderOp>,
    pub response_header_ops: Vec<HeaderOp>,
}

/// A string match of a QuotaSpec clause.
#[derive(Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

/// One rule of a QuotaSpec: when any of `matches` holds (all clauses of it), charge `quotas`.
#[derive(Debug)]
pub struct QuotaRule {
    pub matches: Vec<Vec<(AttrId, StringMatch)>>,
    pub quotas: Vec<(String, i64)>,
}

/// A QuotaSpec.
#[derive(Debug)]
pub struct QuotaSpec {
    pub namespace: String,
    pub name: String,
    pub rules: Vec<QuotaRule>,
}

/// A service a QuotaSpecBinding names.
#[derive(Debug, Clone)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
    /// `*` binds every service.
    pub service: String,
}

/// A QuotaSpecBinding, with its specs resolved to indexes.
#[derive(Debug)]
pub struct QuotaBinding {
    pub id: String,
    pub services: Vec<ServiceRef>,
    pub specs: Vec<usize>,
}

/// An object that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// E.g. `rule istio-system/deny` (with origin when known).
    pub object: String,
    pub error: String,
}

/// Attribute ids the dispatcher and front doors use directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct KnownIds {
    pub reporter_kind: Option<AttrId>,
    pub destination_namespace: Option<AttrId>,
    pub source_namespace: Option<AttrId>,
    pub destination_service_name: Option<AttrId>,
    pub destination_service_namespace: Option<AttrId>,
    pub destination_service_host: Option<AttrId>,
}

/// The compiled config the dispatcher serves.
#[derive(Debug, Default)]
pub struct Resolved {
    /// The snapshot revision it was compiled from.
    pub revision: u64,
    pub default_namespace: String,
    pub vocab: Arc<Vocabulary>,
    pub known: KnownIds,
    pub instances: Vec<Arc<Instance>>,
    pub handlers: Vec<Arc<HandlerEntry>>,
    pub rules: Vec<Rule>,
    pub quota_specs: Vec<QuotaSpec>,
    pub quota_bindings: Vec<QuotaBinding>,
    pub refused: Vec<Refusal>,
    /// Every attribute the rules' match expressions read.
    pub match_attributes: Vec<AttrId>,
    /// The rules with check, report and quota instances (indexes into `rules`), so each
    /// kind of call evaluates only the rules that can matter to it; each list split by the
    /// value of [`Resolved::rule_index`]'s attribute the rules require.
    pub check_rules: RuleList,
    pub report_rules: RuleList,
    pub quota_rules: RuleList,
    /// The rules with attribute-generation instances (`kubernetes`), run before the others.
    pub generate_rules: RuleList,
    /// Which attribute the rule lists are split by (see [`index`]).
    pub rule_index: RuleIndex,
}

// === impl Instance ===

impl Instance {
    /// The index of field `name`.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| &**f == name)
    }
}

// === impl HandlerEntry ===

impl HandlerEntry {
    /// Queues a report batch for the handler's task; false (and counted) when the queue is
    /// full or the handler has no task.
    pub fn send_report(&self, batch: Vec<OwnedInstance>) -> bool {
        match &self.report_tx {
            Some(tx) => match tx.try_send(batch) {
                Ok(()) => true,
                Err(_) => {
                    self.metrics.dropped.inc();
                    false
                }
            },
            None => {
                // Validation-only configs have no tasks: report inline.
                self.handler.report(&batch);
                true
            }
        }
    }
}

impl fmt::Debug for HandlerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerEntry")
            .field("name", &self.name)
            .field("adapter", &self.adapter)
            .finish()
    }
}

// === impl Resolved ===

impl Resolved {
    /// The instance indexes named `name` (short name, case-insensitive), for quota requests.
    pub fn quota_instances<'a>(&'a self, name: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.instances
            .iter()
            .enumerate()
            .filter(move |(_, i)| {
                i.variety == Variety::Quota && i.short_name.eq_ignore_ascii_case(name)
            })
            .map(|(n, _)| n)
    }

    /// `/debug/configz`'s view of the resolved config.
    pub fn to_json(&self) -> serde_json::Value {
        let rules: Vec<_> = self
            .rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "rule": r.id,
                    "meshWide": r.mesh_wide,
                    "match": r.match_expr.as_ref().map(|e| e.text().to_string()).unwrap_or_default(),
                    "actions": r.actions.iter().map(|a| serde_json::json!({
                        "handler": self.handlers[a.handler].name.to_string(),
                        "adapter": self.handlers[a.handler].adapter,
                        "instances": a.instances.iter().map(|i| self.instances[*i].name.to_string()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "revision": self.revision,
            "defaultNamespace": self.default_namespace,
            "attributes": self.vocab.len(),
            "handlers": self.handlers.iter().map(|h| serde_json::json!({"name": h.name.to_string(), "adapter": h.adapter})).collect::<Vec<_>>(),
            "instances": self.instances.iter().map(|i| serde_json::json!({"name": i.name.to_string(), "template": i.template})).collect::<Vec<_>>(),
            "rules": rules,
            "quotaSpecs": self.quota_specs.iter().map(|q| format!("{}/{}", q.namespace, q.name)).collect::<Vec<_>>(),
            "quotaSpecBindings": self.quota_bindings.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
            "refused": self.refused,
        })
    }
}

/// How an object is named in messages.
pub(crate) fn describe(key: &ConfigKey) -> String {
    format!("{} {}/{}", key.kind.name(), key.namespace, key.name)
}

/// Map type used for lookups by full name.
pub(crate) type ByName = HashMap<String, usize>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::noop::Noop;

    #[test]
    fn a_full_report_queue_drops_instead_of_waiting() {
        let (tx, _rx) = mpsc::channel(2);
        let metrics = crate::dispatch::Metrics::default().for_handler("h.noop.ns", "noop");
        let entry = HandlerEntry {
            name: "h.noop.ns".into(),
            adapter: "noop".into(),
            handler: Arc::new(Noop),
            metrics: metrics.clone(),
            fingerprint: String::new(),
            report_tx: Some(tx),
            _stop: tokio_util::sync::CancellationToken::new().drop_guard(),
        };
        // Nobody drains the queue (a hung adapter): the third batch is dropped at once.
        assert!(entry.send_report(Vec::new()));
        assert!(entry.send_report(Vec::new()));
        let start = std::time::Instant::now();
        assert!(!entry.send_report(Vec::new()));
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
        assert_eq!(metrics.dropped.get(), 1);
    }
}
