//! Dispatch: which rules hold for a request, and what their handlers answer.
//!
//! - [`Dispatcher::check`]: every check instance of every matching rule goes to its handler
//!   (an instance that fails to evaluate fails the check with INTERNAL, uncached: as in
//!   Istio, a missing attribute never skips a check); the answers combine into the most restrictive status (the first non-OK one), the
//!   shortest valid duration and the smallest use count. With no answer at all, Istio's
//!   default: OK for one minute or 10,000 uses.
//! - [`Dispatcher::quota`]: a named quota goes to the quota instances of that name in
//!   matching rules, whose handlers answer concurrently (a future to await); a quota no rule
//!   applies to is granted in full.
//! - [`Dispatcher::report`]: report instances are evaluated here and queued, per handler, to
//!   the handler's task; a full queue drops the batch (counted) rather than wait.
//!
//! Before each, attribute-generation rules (`kubernetesenv`) add the attributes the request
//! lacks, when Mixer has a pod cache ([`Dispatcher::set_pod_cache`]); see [`generate`].

pub mod generate;
pub mod metrics;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::adapter::kubernetesenv::SharedPodCache;
use crate::adapter::{
    CheckResult, InstanceValues, OwnedInstance, QuotaArgs, QuotaResult, Status, code,
};
use crate::attribute::{AttrId, Bag, Value};
use crate::config::{HeaderOpKind, Instance, Resolved, Rule, RuleList, Variety};

pub use generate::Generated;
pub use metrics::Metrics;

/// Istio's default validity of a check answer.
pub const DEFAULT_VALID_DURATION: Duration = Duration::from_secs(60);
/// Istio's default use count of a check answer.
pub const DEFAULT_VALID_USE_COUNT: i32 = 10_000;

/// The combined answer to a check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    pub status: Status,
    pub valid_duration: Duration,
    pub valid_use_count: i32,
    /// Header changes of matching rules: (name, value, operation).
    pub request_headers: Vec<(String, String, HeaderOpKind)>,
    pub response_headers: Vec<(String, String, HeaderOpKind)>,
    /// The attributes the answer depends on (rule matches evaluated and instances sent), so
    /// a client may cache it for requests that agree on them.
    pub referenced: Vec<AttrId>,
}

/// Serves checks, quotas and reports against the current config.
#[derive(Debug)]
pub struct Dispatcher {
    config: RwLock<Arc<Resolved>>,
    pub metrics: Arc<Metrics>,
    /// Where `kubernetesenv` looks pods up; unset, nothing is generated.
    pods: OnceLock<SharedPodCache>,
}

/// Folds one handler's answer into `out`: the first non-OK status (named after `handler`),
/// the shortest validity, the smallest use count.
fn combine(out: &mut CheckOutcome, answered: &mut bool, handler: &str, result: CheckResult) {
    if !*answered {
        out.valid_duration = result.valid_duration;
        out.valid_use_count = result.valid_use_count;
        *answered = true;
    } else {
        out.valid_duration = out.valid_duration.min(result.valid_duration);
        out.valid_use_count = out.valid_use_count.min(result.valid_use_count);
    }
    if out.status.is_ok() && !result.status.is_ok() {
        let mut status = result.status;
        if status.message.is_empty() {
            status.message = format!("{handler}:{}", code::name(status.code));
        } else {
            status.message = format!("{handler}:{}", status.message);
        }
        out.status = status;
    }
}

// === impl Dispatcher ===

impl Dispatcher {
    pub fn new(config: Resolved, metrics: Arc<Metrics>) -> Self {
        Self {
            config: RwLock::new(Arc::new(config)),
            metrics,
            pods: OnceLock::new(),
        }
    }

    /// Gives `kubernetesenv` handlers their pod cache (once; later calls are ignored).
    pub fn set_pod_cache(&self, pods: SharedPodCache) {
        let _ = self.pods.set(pods);
    }

    /// The attributes generation adds to `bag` (`None` without a pod cache, or when the
    /// config has no attribute-generation rule).
    pub fn generate<'b>(&self, cfg: &Resolved, bag: &'b dyn Bag) -> Option<Generated<'b>> {
        let pods = self.pods.get()?;
        if cfg.generate_rules.is_empty() {
            return None;
        }
        let matching = self.rules_in(cfg, bag, &cfg.generate_rules);
        Some(generate::generate(cfg, matching, bag, pods.as_ref()))
    }

    /// The config being served.
    pub fn config(&self) -> Arc<Resolved> {
        self.config.read().clone()
    }

    /// Serves `config` from now on.
    pub fn update(&self, config: Resolved) {
        *self.config.write() = Arc::new(config);
    }

    /// The rules that apply to `bag`: mesh-wide ones, and those of its identity namespace.
    fn rules<'c>(
        &'c self,
        cfg: &'c Resolved,
        bag: &'c dyn Bag,
        variety: Variety,
    ) -> impl Iterator<Item = &'c Rule> + 'c {
        let list: &RuleList = match variety {
            Variety::Check => &cfg.check_rules,
            Variety::Quota => &cfg.quota_rules,
            _ => &cfg.report_rules,
        };
        self.rules_in(cfg, bag, list)
    }

    /// The rules of `list` that apply to `bag`: of those its value of the index attribute
    /// allows (all of them when it has none), the ones whose match holds.
    fn rules_in<'c>(
        &'c self,
        cfg: &'c Resolved,
        bag: &'c dyn Bag,
        list: &'c RuleList,
    ) -> impl Iterator<Item = &'c Rule> + 'c {
        let outbound = cfg
            .known
            .reporter_kind
            .and_then(|id| bag.get(id))
            .is_some_and(|v| v.as_str() == Some("outbound"));
        let ns_id = if outbound {
            cfg.known.source_namespace
        } else {
            cfg.known.destination_namespace
        };
        // Without workload attributes (no kubernetesenv), the destination service's
        // namespace identifies inbound requests.
        let namespace = ns_id.and_then(|id| bag.get(id)).or_else(|| {
            if outbound {
                None
            } else {
                cfg.known
                    .destination_service_namespace
                    .and_then(|id| bag.get(id))
            }
        });
        let metrics = &self.metrics;
        let key = cfg.rule_index.attribute.and_then(|id| match bag.get(id) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        });
        let candidates = list.candidates(key.as_deref());
        candidates.map(|i| &cfg.rules[i]).filter(move |r| {
            if !r.mesh_wide && namespace.as_ref().and_then(|n| n.as_str()) != Some(r.namespace.as_str()) {
                return false;
            }
            match &r.match_expr {
                None => true,
                Some(e) => match e.eval_bool(bag) {
                    Ok(b) => b,
                    Err(err) => {
                        metrics.rule_errors.inc();
                        tracing::debug!(rule = %r.id, error = %err, "rule match failed to evaluate");
                        false
                    }
                },
            }
        })
    }

    /// The values of `inst`'s fields for `bag`; `Err(why)` when one fails to evaluate (an
    /// attribute it needs is missing and has no fallback, say).
    fn eval_instance<'a>(
        &self,
        inst: &'a Instance,
        bag: &'a dyn Bag,
    ) -> Result<InstanceValues<'a>, String> {
        let mut values = Vec::with_capacity(inst.exprs.len());
        for e in &inst.exprs {
            match e.eval(bag) {
                Ok(v) => values.push(Some(v)),
                Err(err) => {
                    self.metrics.instance_errors.inc();
                    tracing::debug!(instance = %inst.name, error = %err, "instance not dispatched");
                    return Err(err.to_string());
                }
            }
        }
        Ok(InstanceValues {
            instance: inst,
            values,
        })
    }

    /// Evaluates instance `index` straight into an owned report record.
    fn eval_record(&self, cfg: &Resolved, index: usize, bag: &dyn Bag) -> Option<OwnedInstance> {
        let inst = &cfg.instances[index];
        let mut record = OwnedInstance::new(inst.clone());
        for e in &inst.exprs {
            match e.eval(bag) {
                Ok(v) => record.push(Some(&v)),
                Err(err) => {
                    self.metrics.instance_errors.inc();
                    tracing::debug!(instance = %inst.name, error = %err, "instance not dispatched");
                    return None;
                }
            }
        }
        Some(record)
    }

    /// Runs the checks of the rules that hold for `bag`.
    pub fn check(&self, cfg: &Resolved, bag: &dyn Bag) -> CheckOutcome {
        let generated = self.generate(cfg, bag);
        let bag: &dyn Bag = match &generated {
            Some(g) => g,
            None => bag,
        };
        let mut out = CheckOutcome {
            status: Status::default(),
            valid_duration: DEFAULT_VALID_DURATION,
            valid_use_count: DEFAULT_VALID_USE_COUNT,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            referenced: cfg.match_attributes.clone(),
        };
        if let Some(g) = &generated {
            reference(&mut out.referenced, &g.referenced);
        }
        let mut answered = false;
        for rule in self.rules(cfg, bag, Variety::Check) {
            for action in &rule.actions {
                let h = &cfg.handlers[action.handler];
                for &i in &action.instances {
                    let inst = &cfg.instances[i];
                    if inst.variety != Variety::Check {
                        continue;
                    }
                    for e in &inst.exprs {
                        reference(&mut out.referenced, e.attributes());
                    }
                    // An instance that cannot be made fails the check (as in Istio): a
                    // missing attribute must not skip an authorization handler.
                    let values = match self.eval_instance(inst, bag) {
                        Ok(values) => values,
                        Err(why) => {
                            let failed = CheckResult {
                                status: Status::new(
                                    code::INTERNAL,
                                    format!("instance {}: {why}", inst.name),
                                ),
                                valid_duration: Duration::ZERO,
                                valid_use_count: 0,
                            };
                            combine(&mut out, &mut answered, &h.name, failed);
                            continue;
                        }
                    };
                    let start = Instant::now();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        h.handler.check(&values)
                    }))
                    .unwrap_or_else(|_| {
                        h.metrics.errors.inc();
                        CheckResult {
                            status: Status::new(
                                code::INTERNAL,
                                format!("handler {} failed", h.name),
                            ),
                            valid_duration: Duration::ZERO,
                            valid_use_count: 0,
                        }
                    });
                    h.metrics
                        .check_latency
                        .observe(start.elapsed().as_secs_f64());
                    if code::is_failure(result.status.code) {
                        h.metrics.errors.inc();
                    }
                    combine(&mut out, &mut answered, &h.name, result);
                }
            }
            if out.status.is_ok() {
                for (ops, dst) in [
                    (&rule.request_header_ops, &mut out.request_headers),
                    (&rule.response_header_ops, &mut out.response_headers),
                ] {
                    for op in ops {
                        if op.operation == HeaderOpKind::Remove || op.values.is_empty() {
                            dst.push((op.name.clone(), String::new(), op.operation));
                        }
                        for v in &op.values {
                            if let Ok(val) = v.eval(bag) {
                                dst.push((op.name.clone(), val.to_string(), op.operation));
                            }
                        }
                    }
                }
            }
        }
        self.metrics.check(out.status.code);
        out
    }

    /// Runs quota `name` (matched against quota instances' names) for `bag`.
    ///
    /// The instances are evaluated and handed to their handlers now; the future awaits the
    /// handlers' answers (all at once) and borrows neither `bag` nor the request, so a caller
    /// need not keep them across the wait. Answers combine in config order: a failed one or a
    /// smaller grant replaces the one before.
    pub fn quota<'c>(
        &'c self,
        cfg: &'c Resolved,
        bag: &dyn Bag,
        name: &str,
        args: &QuotaArgs<'_>,
    ) -> impl Future<Output = QuotaResult> + Send + use<'c> {
        self.metrics.quotas.inc();
        let generated = self.generate(cfg, bag);
        let bag: &dyn Bag = match &generated {
            Some(g) => g,
            None => bag,
        };
        let mut pending = Vec::new();
        for rule in self.rules(cfg, bag, Variety::Quota) {
            for action in &rule.actions {
                let h = &cfg.handlers[action.handler];
                for &i in &action.instances {
                    let inst = &cfg.instances[i];
                    if inst.variety != Variety::Quota || !inst.short_name.eq_ignore_ascii_case(name)
                    {
                        continue;
                    }
                    let Ok(values) = self.eval_instance(inst, bag) else {
                        continue;
                    };
                    let start = Instant::now();
                    let answer = h.handler.quota(&values, args);
                    pending.push(async move {
                        let r = answer.await;
                        h.metrics
                            .check_latency
                            .observe(start.elapsed().as_secs_f64());
                        if code::is_failure(r.status.code) {
                            h.metrics.errors.inc();
                        }
                        r
                    });
                }
            }
        }
        let unclaimed = args.amount;
        async move {
            let answers = if pending.len() > 1 {
                futures::future::join_all(pending).await
            } else {
                // The common case, without join_all's bookkeeping.
                let mut one = Vec::with_capacity(1);
                for answer in pending {
                    one.push(answer.await);
                }
                one
            };
            let mut result: Option<QuotaResult> = None;
            for r in answers {
                result = Some(match result {
                    None => r,
                    Some(prev) if r.amount < prev.amount || !r.status.is_ok() => r,
                    Some(prev) => prev,
                });
            }
            result.unwrap_or(QuotaResult {
                status: Status::default(),
                amount: unclaimed,
                valid_duration: DEFAULT_VALID_DURATION,
            })
        }
    }

    /// The quotas the QuotaSpecs bound to the destination service ask for: (name, charge).
    pub fn bound_quotas(&self, cfg: &Resolved, bag: &dyn Bag) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        if cfg.quota_bindings.is_empty() {
            return out;
        }
        let get = |id: Option<AttrId>| {
            id.and_then(|id| bag.get(id))
                .and_then(|v| v.as_str().map(str::to_string))
        };
        let host = get(cfg.known.destination_service_host);
        let mut name = get(cfg.known.destination_service_name);
        let mut namespace = get(cfg.known.destination_service_namespace);
        if let Some(h) = &host {
            let mut parts = h.split('.');
            if name.is_none() {
                name = parts.next().map(str::to_string);
            } else {
                parts.next();
            }
            if namespace.is_none() {
                namespace = parts.next().map(str::to_string);
            }
        }
        for b in &cfg.quota_bindings {
            let bound = b.services.iter().any(|s| {
                s.service == "*"
                    || (!s.service.is_empty() && host.as_deref() == Some(s.service.as_str()))
                    || (!s.name.is_empty()
                        && name.as_deref() == Some(s.name.as_str())
                        && namespace.as_deref().is_none_or(|n| n == s.namespace))
            });
            if !bound {
                continue;
            }
            for &si in &b.specs {
                for rule in &cfg.quota_specs[si].rules {
                    let applies = rule.matches.is_empty()
                        || rule.matches.iter().any(|clauses| {
                            clauses.iter().all(|(id, m)| {
                                let Some(v) = bag.get(*id) else { return false };
                                let mut text = String::new();
                                v.write_text(&mut text);
                                match m {
                                    crate::config::StringMatch::Exact(e) => &text == e,
                                    crate::config::StringMatch::Prefix(p) => {
                                        text.starts_with(p.as_str())
                                    }
                                    crate::config::StringMatch::Regex(r) => r.is_match(&text),
                                }
                            })
                        });
                    if applies {
                        out.extend(rule.quotas.iter().cloned());
                    }
                }
            }
        }
        out
    }

    /// Dispatches report `bags`: instances are evaluated now and queued to each handler.
    pub fn report<'b>(&self, cfg: &Resolved, bags: impl IntoIterator<Item = &'b dyn Bag>) {
        let mut batches: Vec<Vec<OwnedInstance>> = Vec::new();
        let mut entries = 0u64;
        for bag in bags {
            entries += 1;
            let generated = self.generate(cfg, bag);
            let bag: &dyn Bag = match &generated {
                Some(g) => g,
                None => bag,
            };
            for rule in self.rules(cfg, bag, Variety::Report) {
                for action in &rule.actions {
                    for &i in &action.instances {
                        let inst = &cfg.instances[i];
                        if inst.variety != Variety::Report {
                            continue;
                        }
                        let Some(record) = self.eval_record(cfg, i, bag) else {
                            continue;
                        };
                        if batches.len() < cfg.handlers.len() {
                            batches.resize_with(cfg.handlers.len(), Vec::new);
                        }
                        batches[action.handler].push(record);
                    }
                }
            }
        }
        self.metrics.report_entries.inc_by(entries);
        for (h, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                cfg.handlers[h].send_report(batch);
            }
        }
    }
}

fn reference(out: &mut Vec<AttrId>, ids: &[AttrId]) {
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::attribute::DenseBag;
    use crate::server::bag::set_str;

    /// Three deniers: `first` and `third` for destination `a` (indexed), `second` for any
    /// destination with `x-user: bob`.
    const RULES: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {name: nothing, namespace: istio-system}
spec: {}
"#;

    fn config() -> String {
        let mut y = RULES.to_string();
        for (name, m) in [
            (
                "r1",
                r#"destination.service.name == "a" && request.method == "GET""#,
            ),
            ("r2", r#"request.method == "GET" && request.path == "/bob""#),
            ("r3", r#"destination.service.name == "a""#),
            (
                "r4",
                r#"destination.service.name == "b" && request.path == "/x""#,
            ),
        ] {
            y.push_str(&format!(
                "---\napiVersion: config.istio.io/v1alpha2\nkind: denier\nmetadata: {{name: {name}, namespace: istio-system}}\nspec: {{status: {{code: 7, message: {name}}}}}\n---\napiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  match: '{m}'\n  actions:\n  - {{handler: {name}.denier, instances: [nothing.checknothing]}}\n"
            ));
        }
        y
    }

    /// The message of the check of (destination, method, path); "" when allowed.
    fn denied_by(dest: Option<&str>, method: &str, path: &str) -> String {
        let d = crate::server::test_dispatcher(&config());
        let cfg = d.config();
        assert_eq!(
            cfg.rule_index.attribute,
            cfg.vocab.id("destination.service.name")
        );
        let mut bag = DenseBag::with_len(cfg.vocab.len());
        if let Some(dest) = dest {
            set_str(&mut bag, &cfg.vocab, "destination.service.name", dest);
        }
        set_str(&mut bag, &cfg.vocab, "request.method", method);
        set_str(&mut bag, &cfg.vocab, "request.path", path);
        d.check(&cfg, &bag).status.message
    }

    #[test]
    fn indexed_rules_keep_their_config_order_and_meaning() {
        // The first matching rule in config order answers, keyed or not.
        assert_eq!(
            denied_by(Some("a"), "GET", "/bob"),
            "r1.denier.istio-system:r1"
        );
        assert_eq!(
            denied_by(Some("a"), "POST", "/bob"),
            "r3.denier.istio-system:r3"
        );
        assert_eq!(
            denied_by(Some("b"), "GET", "/bob"),
            "r2.denier.istio-system:r2"
        );
        assert_eq!(
            denied_by(Some("b"), "GET", "/x"),
            "r4.denier.istio-system:r4"
        );
        assert_eq!(denied_by(Some("c"), "GET", "/x"), "");
        // Without the attribute, every rule is evaluated (the keyed ones fail to).
        assert_eq!(denied_by(None, "GET", "/bob"), "r2.denier.istio-system:r2");
        assert_eq!(denied_by(None, "GET", "/x"), "");
    }
}
