//! Attribute generation: before a check, quota or report is dispatched, the rules with
//! instances of an attribute-generation template (`kubernetes`, sent to a `kubernetesenv`
//! handler) add attributes to the request: the instance's inputs are evaluated, the handler's
//! pod cache fills the template's outputs, and the instance's `attribute_bindings` (which read
//! the outputs as `$out.<field>`) become attributes.
//!
//! As in Istio's Mixer, generated attributes only fill in what the request lacks: an attribute
//! the proxy sent keeps its value. Without a pod cache (Mixer not on Kubernetes) nothing is
//! generated, and requests are dispatched exactly as sent.

use std::net::IpAddr;

use crate::adapter::kubernetesenv::{self, Inputs, Outputs, PodCache};
use crate::attribute::{AttrId, Bag, OwnedValue, Value};
use crate::config::{Instance, Resolved, Rule, Variety};

/// The prefix of an instance's binding fields.
const BINDINGS: &str = "attribute_bindings.";

/// A request's attributes with generated ones behind them.
pub struct Generated<'b> {
    base: &'b dyn Bag,
    /// By attribute index.
    extra: Vec<Option<OwnedValue>>,
    /// The attributes generation read (the instances' inputs and rule matches).
    pub(crate) referenced: Vec<AttrId>,
}

/// The request's attributes with the template outputs behind them, for the bindings.
struct OutBag<'a> {
    base: &'a dyn Bag,
    /// Where `$out` ids start: the vocabulary's length.
    offset: usize,
    out: &'a Outputs,
}

// === impl Generated ===

impl Bag for Generated<'_> {
    fn get(&self, id: AttrId) -> Option<Value<'_>> {
        self.base.get(id).or_else(|| {
            self.extra
                .get(id.index())
                .and_then(Option::as_ref)
                .map(OwnedValue::as_value)
        })
    }
}

impl std::fmt::Debug for Generated<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated")
            .field("extra", &self.extra)
            .field("referenced", &self.referenced)
            .finish_non_exhaustive()
    }
}

impl Generated<'_> {
    /// How many attributes were generated.
    pub fn len(&self) -> usize {
        self.extra.iter().filter(|v| v.is_some()).count()
    }

    /// True when nothing was generated.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl OutBag ===

impl Bag for OutBag<'_> {
    fn get(&self, id: AttrId) -> Option<Value<'_>> {
        match id.index().checked_sub(self.offset) {
            Some(i) => self
                .out
                .get(i)
                .and_then(Option::as_ref)
                .map(OwnedValue::as_value),
            None => self.base.get(id),
        }
    }
}

/// Runs the attribute-generation actions of `rules` (already matched against `bag`) with
/// `pods`.
pub(crate) fn generate<'c, 'b>(
    cfg: &Resolved,
    rules: impl Iterator<Item = &'c Rule>,
    bag: &'b dyn Bag,
    pods: &dyn PodCache,
) -> Generated<'b> {
    let mut g = Generated {
        base: bag,
        extra: Vec::new(),
        referenced: Vec::new(),
    };
    for rule in rules {
        if let Some(m) = &rule.match_expr {
            add_refs(&mut g.referenced, m.attributes());
        }
        for action in &rule.actions {
            if cfg.handlers[action.handler].adapter != "kubernetesenv" {
                continue;
            }
            for &i in &action.instances {
                let inst = &cfg.instances[i];
                if inst.variety != Variety::AttributeGeneration || inst.template != "kubernetes" {
                    continue;
                }
                run_instance(cfg, inst, bag, pods, &mut g);
            }
        }
    }
    g
}

fn run_instance(
    cfg: &Resolved,
    inst: &Instance,
    bag: &dyn Bag,
    pods: &dyn PodCache,
    g: &mut Generated<'_>,
) {
    let input = |name: &str| -> Option<Value<'_>> {
        let e = &inst.exprs[inst.field_index(name)?];
        e.eval_opt(bag).ok().flatten()
    };
    for (field, e) in inst.fields.iter().zip(&inst.exprs) {
        if !field.starts_with(BINDINGS) {
            add_refs(&mut g.referenced, e.attributes());
        }
    }
    let text = |v: Option<Value<'_>>| v.and_then(|v| v.as_str().map(str::to_string));
    let ip = |v: Option<Value<'_>>| match v {
        Some(Value::IpAddress(ip)) => Some(ip),
        Some(v) => v.as_str().and_then(|s| s.parse::<IpAddr>().ok()),
        None => None,
    };
    let (source_uid, destination_uid, origin_uid) = (
        text(input("source_uid")),
        text(input("destination_uid")),
        text(input("origin_uid")),
    );
    let inputs = Inputs {
        source_uid: source_uid.as_deref(),
        source_ip: ip(input("source_ip")),
        destination_uid: destination_uid.as_deref(),
        destination_ip: ip(input("destination_ip")),
        origin_uid: origin_uid.as_deref(),
        origin_ip: ip(input("origin_ip")),
        destination_port: match input("destination_port") {
            Some(Value::Int64(p)) => Some(p),
            _ => None,
        },
    };
    let outputs = kubernetesenv::generate(pods, &inputs);
    let out_bag = OutBag {
        base: bag,
        offset: cfg.vocab.len(),
        out: &outputs,
    };
    for (field, e) in inst.fields.iter().zip(&inst.exprs) {
        let Some(attr) = field.strip_prefix(BINDINGS) else {
            continue;
        };
        let Some(id) = cfg.vocab.id(attr) else {
            continue;
        };
        let value = match e.eval_opt(&out_bag) {
            Ok(Some(v)) => v.to_owned_value(),
            Ok(None) => continue,
            Err(err) => {
                tracing::debug!(instance = %inst.name, attribute = attr, error = %err, "binding not evaluated");
                continue;
            }
        };
        if g.extra.len() <= id.index() {
            g.extra.resize(id.index() + 1, None);
        }
        // The first generator of an attribute wins, as the request's own values do.
        g.extra[id.index()].get_or_insert(value);
    }
}

fn add_refs(out: &mut Vec<AttrId>, ids: &[AttrId]) {
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    use mesh_runtime::Snapshot;

    use super::*;
    use crate::adapter::kubernetesenv::{PodInfo, Workload};
    use crate::adapter::{AdapterEnv, code};
    use crate::attribute::DenseBag;
    use crate::config::{CompileOptions, Compiler};
    use crate::dispatch::{Dispatcher, Metrics};

    /// An in-memory pod cache.
    #[derive(Debug, Default)]
    struct Pods(HashMap<IpAddr, Arc<PodInfo>>);

    impl PodCache for Pods {
        fn by_name(&self, namespace: &str, name: &str) -> Option<Arc<PodInfo>> {
            self.0
                .values()
                .find(|p| p.name == name && p.namespace == namespace)
                .cloned()
        }
        fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodInfo>> {
            self.0.get(&ip).cloned()
        }
    }

    /// Istio 1.0's generation rule and kubernetes instance, and a denier for one workload.
    const CONFIG: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: kubernetesenv
metadata: {name: handler, namespace: istio-system}
spec: {}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: kubeattrgenrulerule, namespace: istio-system}
spec:
  actions: [{handler: handler.kubernetesenv, instances: [attributes.kubernetes]}]
---
apiVersion: config.istio.io/v1alpha2
kind: kubernetes
metadata: {name: attributes, namespace: istio-system}
spec:
  source_uid: source.uid | ""
  source_ip: source.ip | ip("0.0.0.0")
  destination_uid: destination.uid | ""
  destination_port: destination.port | 0
  attribute_bindings:
    source.workload.name: $out.source_workload_name | "unknown"
    source.namespace: $out.source_namespace | "default"
    source.labels: $out.source_labels | emptyStringMap()
---
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {name: no-v2, namespace: istio-system}
spec: {status: {code: 7, message: "no v2"}}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {name: no-v2, namespace: istio-system}
spec: {}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: no-v2, namespace: istio-system}
spec:
  match: source.workload.name == "reviews-v2" && source.labels["version"] == "v2"
  actions: [{handler: no-v2.denier, instances: [no-v2.checknothing]}]
"#;

    fn dispatcher(pods: bool) -> Dispatcher {
        let mut objects = std::collections::BTreeMap::new();
        for r in mesh_runtime::config::parse_file(Path::new("test.yaml"), CONFIG) {
            let o = r.unwrap();
            objects.insert(o.key.clone(), Arc::new(o));
        }
        let snap = Snapshot::new(1, true, objects, Vec::new());
        let env = AdapterEnv {
            prometheus: Default::default(),
            start_tasks: false,
            shutdown: Default::default(),
        };
        let mut compiler =
            Compiler::new(CompileOptions::default(), env, Arc::new(Metrics::default()));
        let cfg = compiler.compile(&snap);
        assert!(cfg.refused.is_empty(), "{:#?}", cfg.refused);
        let d = Dispatcher::new(cfg, Arc::new(Metrics::default()));
        if pods {
            let ip: IpAddr = "127.1.0.7".parse().unwrap();
            let pod = PodInfo {
                name: "reviews-v2-abc-x".into(),
                namespace: "bookinfo".into(),
                ip: Some(ip),
                labels: [("version".to_string(), "v2".to_string())].into(),
                workload: Workload {
                    name: "reviews-v2".into(),
                    namespace: "bookinfo".into(),
                    kind: "Deployment".into(),
                    api_version: "apps/v1".into(),
                },
                ..Default::default()
            };
            d.set_pod_cache(Arc::new(Pods(HashMap::from([(ip, Arc::new(pod))]))));
        }
        d
    }

    fn bag<'a>(cfg: &Resolved, ip: &str, extra: &[(&str, &'a str)]) -> DenseBag<'a> {
        let mut b = DenseBag::with_len(cfg.vocab.len());
        assert!(b.set_named(
            &cfg.vocab,
            "source.ip",
            Value::IpAddress(ip.parse().unwrap())
        ));
        for (k, v) in extra {
            assert!(b.set_named(&cfg.vocab, k, Value::String((*v).into())));
        }
        b
    }

    #[test]
    fn generated_attributes_reach_rule_matches() {
        let d = dispatcher(true);
        let cfg = d.config();
        let out = d.check(&cfg, &bag(&cfg, "127.1.0.7", &[]));
        assert_eq!(out.status.code, code::PERMISSION_DENIED, "{out:?}");
        // What generation read is part of what the answer depends on.
        let source_ip = cfg.vocab.id("source.ip").unwrap();
        assert!(out.referenced.contains(&source_ip));
        // Another address: the bindings' defaults.
        let b = bag(&cfg, "127.1.0.8", &[]);
        let g = d.generate(&cfg, &b).unwrap();
        let name = cfg.vocab.id("source.workload.name").unwrap();
        assert_eq!(g.get(name).unwrap().as_str(), Some("unknown"));
        assert_eq!(d.check(&cfg, &b).status.code, code::OK);
    }

    #[test]
    fn attributes_the_request_has_are_kept() {
        let d = dispatcher(true);
        let cfg = d.config();
        let b = bag(&cfg, "127.1.0.7", &[("source.workload.name", "sent")]);
        let g = d.generate(&cfg, &b).unwrap();
        let name = cfg.vocab.id("source.workload.name").unwrap();
        let ns = cfg.vocab.id("source.namespace").unwrap();
        assert_eq!(g.get(name).unwrap().as_str(), Some("sent"));
        assert_eq!(g.get(ns).unwrap().as_str(), Some("bookinfo"));
        assert_eq!(d.check(&cfg, &b).status.code, code::OK);
    }

    #[test]
    fn without_a_pod_cache_nothing_is_generated() {
        let d = dispatcher(false);
        let cfg = d.config();
        let b = bag(&cfg, "127.1.0.7", &[]);
        assert!(d.generate(&cfg, &b).is_none());
        assert_eq!(d.check(&cfg, &b).status.code, code::OK);
    }
}
