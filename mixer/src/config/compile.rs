//! Compiling a config-store snapshot into a [`Resolved`] config.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_proto::Spec;
use mesh_runtime::{ConfigKey, ConfigObject, LoadError, Snapshot};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::templates::{self, Field, KUBERNETES_OUTPUT, Variety};
use super::{
    Action, ByName, HandlerEntry, HeaderOp, HeaderOpKind, Instance, KnownIds, QuotaBinding,
    QuotaRule, QuotaSpec, Refusal, Resolved, Rule, RuleIndex, RuleList, ServiceRef, StringMatch,
    describe,
};
use crate::adapter::{self, AdapterEnv, OwnedInstance};
use crate::attribute::{AttrId, ValueType, Vocabulary};
use crate::dispatch::metrics::Metrics;
use crate::expr::{AttributeFinder, Expression};

/// Istio's default config namespace: rules here apply mesh-wide.
pub const DEFAULT_CONFIG_NAMESPACE: &str = "istio-system";

/// How many report batches may wait for one handler before new ones are dropped.
const REPORT_QUEUE: usize = 1024;

/// Compile settings.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Rules in this namespace apply to every request.
    pub default_namespace: String,
    /// Ignore references to objects that are not in the snapshot (for `mixer validate` of
    /// files meant to be applied on top of other config, as `istioctl validate` does).
    pub lenient_references: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            default_namespace: DEFAULT_CONFIG_NAMESPACE.to_string(),
            lenient_references: false,
        }
    }
}

/// Compiles snapshots, remembering the last good version of each object and the handlers
/// built so far (so unchanged handlers, and their state, survive config changes).
#[derive(Debug)]
pub struct Compiler {
    options: CompileOptions,
    env: AdapterEnv,
    metrics: Arc<Metrics>,
    last_good: HashMap<ConfigKey, Arc<ConfigObject>>,
    handlers: HashMap<String, Arc<HandlerEntry>>,
    /// Where the `rbac.istio.io` kinds come from when the compiled store does not watch
    /// them (on Kubernetes, a store of their own).
    rbac_store: Option<watch::Receiver<Arc<Snapshot>>>,
}

/// True for the kinds Mixer reads.
pub fn is_mixer_kind(key: &ConfigKey) -> bool {
    key.kind.group() == "config.istio.io"
}

/// The spec as JSON (typed specs are turned back into Istio's JSON form).
fn spec(obj: &ConfigObject) -> Result<Value, String> {
    Ok(match &obj.spec {
        Spec::Other(v) => v.clone(),
        typed => typed.to_json(),
    })
}

/// Text of a template field leaf (YAML may give numbers and booleans unquoted).
fn leaf_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `$out.<field>` of the kubernetes template, on top of the vocabulary.
struct OutFinder<'a>(&'a Vocabulary);

impl AttributeFinder for OutFinder<'_> {
    fn find(&self, name: &str) -> Option<(AttrId, ValueType)> {
        if let Some(field) = name.strip_prefix("$out.") {
            let i = KUBERNETES_OUTPUT.iter().position(|(n, _)| *n == field)?;
            return Some((AttrId::from_index(self.0.len() + i), KUBERNETES_OUTPUT[i].1));
        }
        self.0.lookup(name)
    }
}

/// Istio's `canonicalize`: the full names a reference may mean, in the referrer's
/// namespace; then, for short references, the same in the default config namespace (so
/// Istio's samples that put a rule in `default` next to handlers in `istio-system` load).
fn candidates(reference: &str, kind: &str, namespace: &str, default_ns: &str) -> Vec<String> {
    let parts: Vec<&str> = reference.split('.').collect();
    let mut out = Vec::new();
    for ns in [namespace, default_ns] {
        match parts.len() {
            1 => out.push(format!("{reference}.{kind}.{ns}")),
            2 => {
                out.push(format!("{}.{}.{ns}", parts[0], parts[1]));
                if ns == namespace {
                    out.push(format!("{}.{kind}.{}", parts[0], parts[1]));
                }
            }
            _ => {
                if ns == namespace {
                    out.push(reference.to_string());
                }
            }
        }
        if ns == default_ns {
            break;
        }
    }
    out.dedup();
    out
}

fn only(v: &Value, prefix: &str, known: &[&str]) -> Result<(), String> {
    let Some(m) = v.as_object() else {
        return Err(format!(
            "{}: must be a mapping",
            prefix.trim_end_matches('.')
        ));
    };
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            return Err(format!("{prefix}{k}: unknown field"));
        }
    }
    Ok(())
}

// === impl Compiler ===

impl Compiler {
    pub fn new(options: CompileOptions, env: AdapterEnv, metrics: Arc<Metrics>) -> Self {
        Self {
            options,
            env,
            metrics,
            last_good: HashMap::new(),
            handlers: HashMap::new(),
            rbac_store: None,
        }
    }

    /// Hands handlers ([`Handler::observe_config`](crate::adapter::Handler::observe_config))
    /// the snapshots of `rx` instead of the compiled ones: the store that holds the
    /// `rbac.istio.io` kinds, when it is not the one compiled.
    pub fn set_rbac_store(&mut self, rx: watch::Receiver<Arc<Snapshot>>) {
        self.rbac_store = Some(rx);
    }

    /// Compiles `snap`.
    pub fn compile(&mut self, snap: &Snapshot) -> Resolved {
        let mut refused: Vec<Refusal> = Vec::new();
        for e in snap.errors() {
            if let Some(key) = e.key().filter(|k| is_mixer_kind(k)) {
                refused.push(Refusal {
                    object: describe(key),
                    error: e.to_string(),
                });
            } else if let LoadError::Document { .. } | LoadError::Read { .. } = e {
                refused.push(Refusal {
                    object: "config".into(),
                    error: e.to_string(),
                });
            }
        }
        let objects: Vec<&Arc<ConfigObject>> = snap
            .objects()
            .values()
            .filter(|o| is_mixer_kind(&o.key))
            .collect();
        fn by_kind<'a>(
            objects: &'a [&'a Arc<ConfigObject>],
            k: &'a str,
        ) -> impl Iterator<Item = &'a Arc<ConfigObject>> + 'a {
            objects
                .iter()
                .filter(move |o| o.key.kind.name() == k)
                .copied()
        }
        let mut last_good = std::mem::take(&mut self.last_good);

        // Attribute manifests.
        let mut vocab = Vocabulary::builtin();
        for obj in by_kind(&objects, "attributemanifest") {
            match spec(obj) {
                Ok(s) => {
                    for e in vocab.add_manifest(&describe(&obj.key), &s) {
                        refused.push(Refusal {
                            object: format!("{} ({})", describe(&obj.key), obj.origin),
                            error: e.to_string(),
                        });
                    }
                }
                Err(e) => refused.push(refusal(obj, e)),
            }
        }
        let vocab = Arc::new(vocab);

        // Instances.
        let mut instances: Vec<Arc<Instance>> = Vec::new();
        let mut instance_names: ByName = HashMap::new();
        for obj in objects.iter().copied() {
            let kind = obj.key.kind.name();
            if kind != "instance" && templates::template(kind).is_none() {
                continue;
            }
            if let Some(inst) = with_last_good(&mut last_good, obj, &mut refused, |o| {
                compile_instance(o, &vocab)
            }) {
                instance_names.insert(inst.name.to_string(), instances.len());
                instances.push(Arc::new(inst));
            }
        }

        // Handlers.
        let mut handlers: Vec<Arc<HandlerEntry>> = Vec::new();
        let mut handler_names: ByName = HashMap::new();
        let mut kept = HashMap::new();
        for obj in objects.iter().copied() {
            let kind = obj.key.kind.name();
            if kind != "handler"
                && adapter::supported_templates(kind).is_none()
                && !adapter::UNSUPPORTED_ADAPTERS.contains(&kind)
            {
                continue;
            }
            if let Some(h) =
                with_last_good(&mut last_good, obj, &mut refused, |o| self.build_handler(o))
            {
                kept.insert(h.name.to_string(), h.clone());
                handler_names.insert(h.name.to_string(), handlers.len());
                handlers.push(h);
            }
        }
        // Handlers no longer in config are retired (their tasks stop once unused).
        self.handlers = kept;
        // Adapters that read other kinds of the store (rbac) see it before this config serves.
        let rbac_snapshot = self.rbac_store.as_ref().map(|rx| rx.borrow().clone());
        let view: &Snapshot = rbac_snapshot.as_deref().unwrap_or(snap);
        for h in &handlers {
            h.handler.observe_config(view);
        }

        // Rules.
        let mut rules = Vec::new();
        for obj in by_kind(&objects, "rule") {
            let ctx = RuleCtx {
                vocab: &vocab,
                instances: &instances,
                instance_names: &instance_names,
                handlers: &handlers,
                handler_names: &handler_names,
                default_namespace: &self.options.default_namespace,
                lenient: self.options.lenient_references,
            };
            if let Some(rule) =
                with_last_good(&mut last_good, obj, &mut refused, |o| ctx.compile(o))
            {
                rules.push(rule);
            }
        }

        // QuotaSpecs and their bindings.
        let mut quota_specs = Vec::new();
        for obj in by_kind(&objects, "QuotaSpec") {
            if let Some(q) = with_last_good(&mut last_good, obj, &mut refused, |o| {
                compile_quota_spec(o, &vocab)
            }) {
                quota_specs.push(q);
            }
        }
        let mut quota_bindings = Vec::new();
        for obj in by_kind(&objects, "QuotaSpecBinding") {
            if let Some(b) = with_last_good(&mut last_good, obj, &mut refused, |o| {
                compile_binding(o, &quota_specs, self.options.lenient_references)
            }) {
                quota_bindings.push(b);
            }
        }

        // Forget last-good versions of objects that are gone.
        last_good.retain(|k, _| snap.get(k).is_some());
        self.last_good = last_good;

        self.metrics.config_errors.set(refused.len() as i64);
        self.metrics.config_rules.set(rules.len() as i64);
        let known = KnownIds {
            reporter_kind: vocab.id("context.reporter.kind"),
            destination_namespace: vocab.id("destination.namespace"),
            source_namespace: vocab.id("source.namespace"),
            destination_service_name: vocab.id("destination.service.name"),
            destination_service_namespace: vocab.id("destination.service.namespace"),
            destination_service_host: vocab.id("destination.service.host"),
        };
        let mut match_attributes: Vec<AttrId> = Vec::new();
        for r in &rules {
            for id in r.match_expr.iter().flat_map(|e| e.attributes()) {
                if !match_attributes.contains(id) {
                    match_attributes.push(*id);
                }
            }
        }
        let with = |v: Variety| -> Vec<usize> {
            rules
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    // Header operations are applied with check answers.
                    (v == Variety::Check
                        && !(r.request_header_ops.is_empty() && r.response_header_ops.is_empty()))
                        || r.actions
                            .iter()
                            .any(|a| a.instances.iter().any(|i| instances[*i].variety == v))
                })
                .map(|(i, _)| i)
                .collect()
        };
        let rule_index = RuleIndex::build(rules.iter().map(|r| r.match_expr.as_ref()));
        let list = |v: Variety| RuleList::new(with(v), &rule_index);
        let (check_rules, report_rules, quota_rules, generate_rules) = (
            list(Variety::Check),
            list(Variety::Report),
            list(Variety::Quota),
            list(Variety::AttributeGeneration),
        );
        Resolved {
            rule_index,
            check_rules,
            report_rules,
            quota_rules,
            generate_rules,
            match_attributes,
            revision: snap.revision(),
            default_namespace: self.options.default_namespace.clone(),
            vocab,
            known,
            instances,
            handlers,
            rules,
            quota_specs,
            quota_bindings,
            refused,
        }
    }

    fn build_handler(&self, obj: &ConfigObject) -> Result<Arc<HandlerEntry>, String> {
        let s = &spec(obj)?;
        let (adapter_name, params) = if obj.key.kind.name() == "handler" {
            only(
                s,
                "spec.",
                &["adapter", "compiledAdapter", "params", "connection"],
            )?;
            let a = s
                .get("compiledAdapter")
                .or_else(|| s.get("adapter"))
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .ok_or("spec.compiledAdapter: required (the adapter to use, e.g. prometheus)")?;
            (
                a.to_string(),
                s.get("params").cloned().unwrap_or(Value::Null),
            )
        } else {
            (obj.key.kind.name().to_string(), s.clone())
        };
        let name = format!(
            "{}.{}.{}",
            obj.key.name,
            obj.key.kind.name(),
            obj.key.namespace
        );
        let fingerprint = format!("{adapter_name}\n{params}");
        if let Some(h) = self
            .handlers
            .get(&name)
            .filter(|h| h.fingerprint == fingerprint)
        {
            return Ok(h.clone());
        }
        let stop = self.env.shutdown.child_token();
        let env = AdapterEnv {
            shutdown: stop.clone(),
            ..self.env.clone()
        };
        let handler = adapter::build(&adapter_name, &params, &env).map_err(|e| {
            if obj.key.kind.name() == "handler" {
                format!("spec.params.{}: {}", e.field, e.message)
            } else {
                e.to_string()
            }
        })?;
        let metrics = self.metrics.for_handler(&name, &adapter_name);
        let report_tx = if self.env.start_tasks {
            let (tx, rx) = mpsc::channel::<Vec<OwnedInstance>>(REPORT_QUEUE);
            tokio::spawn(report_worker(
                handler.clone(),
                metrics.clone(),
                rx,
                stop.clone(),
            ));
            Some(tx)
        } else {
            None
        };
        Ok(Arc::new(HandlerEntry {
            name: name.into(),
            adapter: adapter_name,
            handler,
            metrics,
            fingerprint,
            report_tx,
            _stop: stop.drop_guard(),
        }))
    }
}

fn refusal(obj: &ConfigObject, error: String) -> Refusal {
    Refusal {
        object: format!("{} ({})", describe(&obj.key), obj.origin),
        error,
    }
}

/// Compiles `obj`; when refused, records why and falls back to its last good version.
fn with_last_good<T>(
    last_good: &mut HashMap<ConfigKey, Arc<ConfigObject>>,
    obj: &Arc<ConfigObject>,
    refused: &mut Vec<Refusal>,
    f: impl Fn(&ConfigObject) -> Result<T, String>,
) -> Option<T> {
    match f(obj) {
        Ok(t) => {
            last_good.insert(obj.key.clone(), obj.clone());
            Some(t)
        }
        Err(e) => {
            let previous = last_good.get(&obj.key).filter(|p| ***p != **obj).cloned();
            let fallback = previous.and_then(|p| f(&p).ok());
            let note = if fallback.is_some() {
                " (the last good version keeps serving)"
            } else {
                ""
            };
            refused.push(refusal(obj, format!("{e}{note}")));
            fallback
        }
    }
}

async fn report_worker(
    handler: Arc<dyn adapter::Handler>,
    metrics: crate::dispatch::metrics::HandlerMetrics,
    mut rx: mpsc::Receiver<Vec<OwnedInstance>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => return,
            b = rx.recv() => match b { Some(b) => b, None => return },
        };
        let start = std::time::Instant::now();
        let h = handler.clone();
        // A panicking adapter must not take the worker down with it.
        let ok =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.report(&batch))).is_ok();
        if !ok {
            metrics.errors.inc();
            tracing::error!("adapter panicked while handling a report batch");
        }
        metrics
            .report_latency
            .observe(start.elapsed().as_secs_f64());
    }
}

fn compile_instance(obj: &ConfigObject, vocab: &Vocabulary) -> Result<Instance, String> {
    let s = &spec(obj)?;
    let kind = obj.key.kind.name();
    let (template, params, prefix) = if kind == "instance" {
        only(
            s,
            "spec.",
            &[
                "template",
                "compiledTemplate",
                "params",
                "attributeBindings",
                "attribute_bindings",
            ],
        )?;
        let t = s
            .get("compiledTemplate")
            .or_else(|| s.get("template"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("spec.compiledTemplate: required (the template, e.g. metric)")?;
        let mut params = s
            .get("params")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        if let (Some(b), Value::Object(p)) = (
            s.get("attributeBindings")
                .or_else(|| s.get("attribute_bindings")),
            &mut params,
        ) {
            p.insert("attribute_bindings".into(), b.clone());
        }
        (t.to_string(), params, "spec.params.")
    } else {
        (kind.to_string(), s.clone(), "spec.")
    };
    let (schema, variety) = templates::template(&template).ok_or_else(|| {
        format!(
            "{}template: unknown template {template}",
            if kind == "instance" {
                "spec.compiled"
            } else {
                ""
            }
        )
    })?;
    let mut fields = Vec::new();
    let mut exprs = Vec::new();
    let out = OutFinder(vocab);
    let mut add = |path: String,
                   text: &str,
                   ty: Option<ValueType>,
                   finder: &dyn AttributeFinder|
     -> Result<(), String> {
        let e = match ty {
            Some(t) => Expression::compile_typed(text, finder, t),
            None => Expression::compile(text, finder),
        }
        .map_err(|e| format!("{prefix}{path}: {e}"))?;
        fields.push(Arc::<str>::from(path.as_str()));
        exprs.push(e);
        Ok(())
    };
    match schema {
        Some(schema) => walk(&params, schema, "", prefix, vocab, &out, &mut add)?,
        None => walk_generic(&params, "", vocab, &mut add)?,
    }
    Ok(Instance {
        name: format!("{}.{}.{}", obj.key.name, kind, obj.key.namespace).into(),
        short_name: obj.key.name.clone(),
        namespace: obj.key.namespace.clone(),
        template,
        variety,
        fields,
        exprs,
    })
}

type AddFn<'a> =
    dyn FnMut(String, &str, Option<ValueType>, &dyn AttributeFinder) -> Result<(), String> + 'a;

fn walk(
    params: &Value,
    schema: &[(&str, Field)],
    path: &str,
    prefix: &str,
    vocab: &Vocabulary,
    out: &OutFinder<'_>,
    add: &mut AddFn<'_>,
) -> Result<(), String> {
    let Some(map) = params.as_object() else {
        if params.is_null() {
            return Ok(());
        }
        return Err(format!(
            "{prefix}{}: must be a mapping",
            path.trim_end_matches('.')
        ));
    };
    for (key, value) in map {
        let name = templates::snake(key);
        let full = format!("{path}{name}");
        let Some((_, field)) = schema.iter().find(|(n, _)| *n == name) else {
            return Err(format!(
                "{prefix}{path}{key}: unknown field of this template"
            ));
        };
        if value.is_null() {
            continue;
        }
        match field {
            Field::Expr(ty) => {
                let text = leaf_text(value)
                    .ok_or_else(|| format!("{prefix}{full}: must be an expression"))?;
                add(full, &text, *ty, vocab)?;
            }
            Field::Map => {
                let m = value
                    .as_object()
                    .ok_or_else(|| format!("{prefix}{full}: must be a mapping"))?;
                for (k, v) in m {
                    let text = leaf_text(v)
                        .ok_or_else(|| format!("{prefix}{full}.{k}: must be an expression"))?;
                    add(format!("{full}.{k}"), &text, None, vocab)?;
                }
            }
            Field::Nested(inner) => {
                walk(value, inner, &format!("{full}."), prefix, vocab, out, add)?
            }
            Field::Bindings => {
                let m = value
                    .as_object()
                    .ok_or_else(|| format!("{prefix}{full}: must be a mapping"))?;
                for (attr, v) in m {
                    let Some((_, ty)) = vocab.lookup(attr) else {
                        return Err(format!("{prefix}{full}.{attr}: unknown attribute {attr}"));
                    };
                    let text = leaf_text(v)
                        .ok_or_else(|| format!("{prefix}{full}.{attr}: must be an expression"))?;
                    add(format!("{full}.{attr}"), &text, Some(ty), out)?;
                }
            }
        }
    }
    Ok(())
}

fn walk_generic(
    params: &Value,
    path: &str,
    vocab: &Vocabulary,
    add: &mut AddFn<'_>,
) -> Result<(), String> {
    match params {
        Value::Object(m) => {
            for (k, v) in m {
                walk_generic(v, &format!("{path}{}.", templates::snake(k)), vocab, add)?;
            }
            Ok(())
        }
        Value::Null | Value::Array(_) => Ok(()),
        leaf => {
            let text = leaf_text(leaf).unwrap_or_default();
            add(path.trim_end_matches('.').to_string(), &text, None, vocab)
        }
    }
}

struct RuleCtx<'a> {
    vocab: &'a Vocabulary,
    instances: &'a [Arc<Instance>],
    instance_names: &'a ByName,
    handlers: &'a [Arc<HandlerEntry>],
    handler_names: &'a ByName,
    default_namespace: &'a str,
    lenient: bool,
}

impl RuleCtx<'_> {
    fn compile(&self, obj: &ConfigObject) -> Result<Rule, String> {
        let s = &spec(obj)?;
        only(
            s,
            "spec.",
            &[
                "match",
                "actions",
                "requestHeaderOperations",
                "responseHeaderOperations",
                "sampling",
            ],
        )?;
        let ns = &obj.key.namespace;
        let match_expr = match s.get("match") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if t.trim().is_empty() => None,
            Some(Value::String(t)) => Some(
                Expression::compile_typed(t, self.vocab, ValueType::Bool)
                    .map_err(|e| format!("spec.match: {e}"))?,
            ),
            Some(Value::Bool(b)) => Some(
                Expression::compile_typed(&b.to_string(), self.vocab, ValueType::Bool)
                    .map_err(|e| format!("spec.match: {e}"))?,
            ),
            Some(_) => return Err("spec.match: must be an expression string".into()),
        };
        let mut actions = Vec::new();
        let list = match s.get("actions") {
            None | Some(Value::Null) => &Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("spec.actions: must be a list".into()),
        };
        for (i, a) in list.iter().enumerate() {
            let f = format!("spec.actions[{i}]");
            only(a, &format!("{f}."), &["handler", "instances", "name"])?;
            let href = a
                .get("handler")
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("{f}.handler: required"))?;
            let found = candidates(href, "handler", ns, self.default_namespace)
                .iter()
                .find_map(|c| self.handler_names.get(c).copied());
            if found.is_none() && self.lenient {
                continue;
            }
            let handler = found.ok_or_else(|| {
                format!(
                    "{f}.handler: handler {href} not found (looked for {})",
                    candidates(href, "handler", ns, self.default_namespace).join(", ")
                )
            })?;
            let h = &self.handlers[handler];
            let supported = adapter::supported_templates(&h.adapter).unwrap_or(&[]);
            let mut insts = Vec::new();
            let refs = match a.get("instances") {
                None | Some(Value::Null) => &Vec::new(),
                Some(Value::Array(r)) => r,
                Some(_) => return Err(format!("{f}.instances: must be a list")),
            };
            for (j, r) in refs.iter().enumerate() {
                let r = r
                    .as_str()
                    .ok_or_else(|| format!("{f}.instances[{j}]: must be a string"))?;
                let found = candidates(r, "instance", ns, self.default_namespace)
                    .iter()
                    .find_map(|c| self.instance_names.get(c).copied());
                if found.is_none() && self.lenient {
                    continue;
                }
                let idx = found.ok_or_else(|| {
                    format!(
                        "{f}.instances[{j}]: instance {r} not found (looked for {})",
                        candidates(r, "instance", ns, self.default_namespace).join(", ")
                    )
                })?;
                let inst = &self.instances[idx];
                if !supported.contains(&inst.template.as_str()) {
                    return Err(format!(
                        "{f}.instances[{j}]: handler {} ({}) does not support template {} of instance {}",
                        h.name, h.adapter, inst.template, inst.name
                    ));
                }
                insts.push(idx);
            }
            actions.push(Action {
                handler,
                instances: insts,
                name: a.get("name").and_then(Value::as_str).map(str::to_string),
            });
        }
        let header_ops = |field: &str| -> Result<Vec<HeaderOp>, String> {
            let mut out = Vec::new();
            let Some(Value::Array(ops)) = s.get(field) else {
                return Ok(out);
            };
            for (i, op) in ops.iter().enumerate() {
                let f = format!("spec.{field}[{i}]");
                only(op, &format!("{f}."), &["name", "values", "operation"])?;
                let name = op
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if name.is_empty() {
                    return Err(format!("{f}.name: required"));
                }
                let operation = match op
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("REPLACE")
                {
                    "REPLACE" => HeaderOpKind::Replace,
                    "REMOVE" => HeaderOpKind::Remove,
                    "APPEND" => HeaderOpKind::Append,
                    other => {
                        return Err(format!(
                            "{f}.operation: {other} is not REPLACE, REMOVE or APPEND"
                        ));
                    }
                };
                let mut values = Vec::new();
                if let Some(Value::Array(vs)) = op.get("values") {
                    for (j, v) in vs.iter().enumerate() {
                        let text = leaf_text(v)
                            .ok_or_else(|| format!("{f}.values[{j}]: must be an expression"))?;
                        values.push(
                            Expression::compile_typed(&text, self.vocab, ValueType::String)
                                .map_err(|e| format!("{f}.values[{j}]: {e}"))?,
                        );
                    }
                }
                out.push(HeaderOp {
                    name,
                    values,
                    operation,
                });
            }
            Ok(out)
        };
        Ok(Rule {
            id: format!("{ns}/{}", obj.key.name),
            namespace: ns.clone(),
            mesh_wide: ns == self.default_namespace,
            match_expr,
            actions,
            request_header_ops: header_ops("requestHeaderOperations")?,
            response_header_ops: header_ops("responseHeaderOperations")?,
        })
    }
}

fn compile_quota_spec(obj: &ConfigObject, vocab: &Vocabulary) -> Result<QuotaSpec, String> {
    let s = &spec(obj)?;
    only(s, "spec.", &["rules"])?;
    let mut rules = Vec::new();
    if let Some(Value::Array(rs)) = s.get("rules") {
        for (i, r) in rs.iter().enumerate() {
            let f = format!("spec.rules[{i}]");
            only(r, &format!("{f}."), &["match", "quotas"])?;
            let mut matches = Vec::new();
            if let Some(Value::Array(ms)) = r.get("match") {
                for (j, m) in ms.iter().enumerate() {
                    let mf = format!("{f}.match[{j}]");
                    only(m, &format!("{mf}."), &["clause"])?;
                    let mut clauses = Vec::new();
                    if let Some(Value::Object(cs)) = m.get("clause") {
                        for (attr, cond) in cs {
                            let cf = format!("{mf}.clause.{attr}");
                            let Some((id, _)) = vocab.lookup(attr) else {
                                return Err(format!("{cf}: unknown attribute {attr}"));
                            };
                            let sm = if let Some(v) = cond.get("exact").and_then(Value::as_str) {
                                StringMatch::Exact(v.to_string())
                            } else if let Some(v) = cond.get("prefix").and_then(Value::as_str) {
                                StringMatch::Prefix(v.to_string())
                            } else if let Some(v) = cond.get("regex").and_then(Value::as_str) {
                                StringMatch::Regex(
                                    regex::Regex::new(v).map_err(|e| format!("{cf}.regex: {e}"))?,
                                )
                            } else {
                                return Err(format!("{cf}: needs exact, prefix or regex"));
                            };
                            clauses.push((id, sm));
                        }
                    }
                    matches.push(clauses);
                }
            }
            let mut quotas = Vec::new();
            if let Some(Value::Array(qs)) = r.get("quotas") {
                for (j, q) in qs.iter().enumerate() {
                    let qf = format!("{f}.quotas[{j}]");
                    only(q, &format!("{qf}."), &["quota", "charge"])?;
                    let name = q
                        .get("quota")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| format!("{qf}.quota: required"))?;
                    let charge = match q.get("charge") {
                        None | Some(Value::Null) => 1,
                        Some(c) => c
                            .as_i64()
                            .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
                            .filter(|c| *c > 0)
                            .ok_or_else(|| format!("{qf}.charge: must be a positive integer"))?,
                    };
                    quotas.push((name.to_string(), charge));
                }
            }
            rules.push(QuotaRule { matches, quotas });
        }
    }
    Ok(QuotaSpec {
        namespace: obj.key.namespace.clone(),
        name: obj.key.name.clone(),
        rules,
    })
}

fn compile_binding(
    obj: &ConfigObject,
    specs: &[QuotaSpec],
    lenient: bool,
) -> Result<QuotaBinding, String> {
    let s = &spec(obj)?;
    only(s, "spec.", &["services", "quotaSpecs"])?;
    let ns = &obj.key.namespace;
    let mut services = Vec::new();
    if let Some(Value::Array(svcs)) = s.get("services") {
        for (i, svc) in svcs.iter().enumerate() {
            let f = format!("spec.services[{i}]");
            only(
                svc,
                &format!("{f}."),
                &["name", "namespace", "domain", "service", "labels"],
            )?;
            let get = |k: &str| {
                svc.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let r = ServiceRef {
                name: get("name"),
                namespace: Some(get("namespace"))
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| ns.clone()),
                service: get("service"),
            };
            if r.name.is_empty() && r.service.is_empty() {
                return Err(format!("{f}: needs name or service"));
            }
            services.push(r);
        }
    }
    let mut idx = Vec::new();
    if let Some(Value::Array(refs)) = s.get("quotaSpecs") {
        for (i, r) in refs.iter().enumerate() {
            let f = format!("spec.quotaSpecs[{i}]");
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            let rns = r
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(ns);
            let found = specs
                .iter()
                .position(|q| q.name == name && q.namespace == rns);
            if found.is_none() && lenient {
                continue;
            }
            let j = found.ok_or_else(|| format!("{f}: QuotaSpec {rns}/{name} not found"))?;
            idx.push(j);
        }
    }
    Ok(QuotaBinding {
        id: format!("{ns}/{}", obj.key.name),
        services,
        specs: idx,
    })
}
