//! Dispatch semantics: Istio's defaults, how answers combine, namespace scoping of rules,
//! quotas (best effort, deduplication), and last-good config.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use mesh_runtime::Snapshot;
use mixer::adapter::{AdapterEnv, QuotaArgs, code};
use mixer::attribute::{DenseBag, Value};
use mixer::config::{CompileOptions, Compiler, Resolved};
use mixer::dispatch::{Dispatcher, Metrics};

fn snapshot(yaml: &str) -> Snapshot {
    let mut objects = std::collections::BTreeMap::new();
    for r in mesh_runtime::config::parse_file(Path::new("test.yaml"), yaml) {
        let o = r.unwrap();
        objects.insert(o.key.clone(), Arc::new(o));
    }
    Snapshot::new(1, true, objects, Vec::new())
}

fn compiler() -> Compiler {
    let env = AdapterEnv {
        prometheus: Default::default(),
        start_tasks: false,
        shutdown: Default::default(),
    };
    Compiler::new(CompileOptions::default(), env, Arc::new(Metrics::default()))
}

fn compile(yaml: &str) -> Resolved {
    let r = compiler().compile(&snapshot(yaml));
    assert!(r.refused.is_empty(), "{:#?}", r.refused);
    r
}

fn denier(name: &str, ns: &str, code: i32, duration: &str, uses: i32, matches: &str) -> String {
    format!(
        r#"---
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {{name: {name}, namespace: {ns}}}
spec: {{status: {{code: {code}, message: "{name} says no"}}, validDuration: {duration}, validUseCount: {uses}}}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {{name: {name}, namespace: {ns}}}
spec: {{}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  match: '{matches}'
  actions: [{{handler: {name}.denier, instances: [{name}.checknothing]}}]
"#
    )
}

fn bag<'a>(cfg: &Resolved, attrs: &[(&str, &'a str)]) -> DenseBag<'a> {
    let mut b = DenseBag::with_len(cfg.vocab.len());
    for (k, v) in attrs {
        assert!(
            b.set_named(&cfg.vocab, k, Value::String((*v).into())),
            "{k}"
        );
    }
    b
}

#[test]
fn defaults_when_no_adapter_answers() {
    let cfg = compile("");
    let d = Dispatcher::new(cfg, Arc::new(Metrics::default()));
    let cfg = d.config();
    let out = d.check(&cfg, &bag(&cfg, &[]));
    assert_eq!(out.status.code, code::OK);
    assert_eq!(out.valid_duration, Duration::from_secs(60));
    assert_eq!(out.valid_use_count, 10_000);
}

#[test]
fn answers_combine_to_the_most_restrictive() {
    let yaml = [
        denier("a", "istio-system", 0, "30s", 500, "true"),
        denier(
            "b",
            "istio-system",
            7,
            "10s",
            2000,
            r#"request.path == "/b""#,
        ),
        denier(
            "c",
            "istio-system",
            16,
            "20s",
            100,
            r#"request.path.startsWith("/b")"#,
        ),
    ]
    .concat();
    let d = Dispatcher::new(compile(&yaml), Arc::new(Metrics::default()));
    let cfg = d.config();
    let out = d.check(&cfg, &bag(&cfg, &[("request.path", "/x")]));
    assert_eq!(out.status.code, code::OK);
    assert_eq!(
        (out.valid_duration, out.valid_use_count),
        (Duration::from_secs(30), 500)
    );
    let out = d.check(&cfg, &bag(&cfg, &[("request.path", "/b")]));
    assert_eq!(out.status.code, code::PERMISSION_DENIED, "{out:?}");
    assert!(out.status.message.contains("b says no"), "{out:?}");
    assert_eq!(
        (out.valid_duration, out.valid_use_count),
        (Duration::from_secs(10), 100)
    );
    let names: Vec<&str> = out
        .referenced
        .iter()
        .map(|id| cfg.vocab.name(*id))
        .collect();
    assert_eq!(names, ["request.path"]);
    // A match that cannot be evaluated (attribute missing) does not apply.
    let out = d.check(&cfg, &bag(&cfg, &[]));
    assert_eq!(out.status.code, code::OK, "{out:?}");
}

#[test]
fn rules_outside_the_default_namespace_apply_to_their_namespace_only() {
    let yaml = denier("nsrule", "ns1", 7, "1s", 1, "true");
    let d = Dispatcher::new(compile(&yaml), Arc::new(Metrics::default()));
    let cfg = d.config();
    let code_for = |attrs: &[(&str, &str)]| d.check(&cfg, &bag(&cfg, attrs)).status.code;
    assert_eq!(
        code_for(&[("destination.namespace", "ns1")]),
        code::PERMISSION_DENIED
    );
    assert_eq!(code_for(&[("destination.namespace", "ns2")]), code::OK);
    assert_eq!(code_for(&[]), code::OK);
    // Outbound reports use the source's namespace.
    assert_eq!(
        code_for(&[
            ("context.reporter.kind", "outbound"),
            ("source.namespace", "ns1"),
            ("destination.namespace", "ns2")
        ]),
        code::PERMISSION_DENIED
    );
    // Without workload attributes, the destination service's namespace.
    assert_eq!(
        code_for(&[("destination.service.namespace", "ns1")]),
        code::PERMISSION_DENIED
    );
}

const QUOTA: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: memquota
metadata: {name: handler, namespace: istio-system}
spec:
  quotas:
  - name: rq.quota.istio-system
    maxAmount: 3
    validDuration: 60s
---
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata: {name: rq, namespace: istio-system}
spec:
  dimensions:
    path: request.path | "/"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: quota, namespace: istio-system}
spec:
  actions: [{handler: handler.memquota, instances: [rq.quota]}]
"#;

#[test]
fn quotas_best_effort_and_deduplication() {
    let d = Dispatcher::new(compile(QUOTA), Arc::new(Metrics::default()));
    let cfg = d.config();
    let b = bag(&cfg, &[("request.path", "/a")]);
    let q = |amount, best_effort, dedup| {
        d.quota(
            &cfg,
            &b,
            "RQ",
            &QuotaArgs {
                amount,
                best_effort,
                deduplication_id: dedup,
            },
        )
        .now_or_never()
        .expect("memquota answers at once")
        .amount
    };
    assert_eq!(q(2, false, "x"), 2);
    assert_eq!(q(2, false, "x"), 2, "same deduplication id, same answer");
    assert_eq!(q(2, false, ""), 0, "all or nothing");
    assert_eq!(q(2, true, ""), 1, "best effort takes what is left");
    assert_eq!(q(1, false, ""), 0);
    // Other dimensions have their own counters.
    let b2 = bag(&cfg, &[("request.path", "/b")]);
    assert_eq!(
        d.quota(
            &cfg,
            &b2,
            "rq",
            &QuotaArgs {
                amount: 3,
                best_effort: false,
                deduplication_id: ""
            }
        )
        .now_or_never()
        .expect("memquota answers at once")
        .amount,
        3
    );
    // A quota no rule defines is granted.
    assert_eq!(
        d.quota(
            &cfg,
            &b,
            "other",
            &QuotaArgs {
                amount: 5,
                best_effort: false,
                deduplication_id: ""
            }
        )
        .now_or_never()
        .expect("memquota answers at once")
        .amount,
        5
    );
}

#[test]
fn a_broken_update_keeps_the_last_good_version() {
    let mut c = compiler();
    let good = denier(
        "d",
        "istio-system",
        7,
        "1s",
        1,
        r#"request.path == "/deny""#,
    );
    let r = c.compile(&snapshot(&good));
    assert!(r.refused.is_empty());
    let bad = good.replace(r#"request.path == "/deny""#, r#"request.path == 42"#);
    let r = c.compile(&snapshot(&bad));
    assert_eq!(r.refused.len(), 1, "{:#?}", r.refused);
    let msg = &r.refused[0];
    assert!(msg.object.starts_with("rule istio-system/d"), "{msg:?}");
    assert!(
        msg.error.contains("spec.match: column 17")
            && msg.error.contains("last good version keeps serving"),
        "{msg:?}"
    );
    assert_eq!(r.rules.len(), 1);
    let d = Dispatcher::new(r, Arc::new(Metrics::default()));
    let cfg = d.config();
    assert_eq!(
        d.check(&cfg, &bag(&cfg, &[("request.path", "/deny")]))
            .status
            .code,
        code::PERMISSION_DENIED
    );
}

#[test]
fn header_operations_of_matching_rules_reach_the_answer() {
    let yaml = r#"
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: headers, namespace: istio-system}
spec:
  match: request.path.startsWith("/api")
  requestHeaderOperations:
  - name: x-path
    values: [request.path, '"fixed"']
    operation: APPEND
  - name: x-secret
    operation: REMOVE
  responseHeaderOperations:
  - name: x-served-by
    values: ['"mixer"']
"#;
    let d = Dispatcher::new(compile(yaml), Arc::new(Metrics::default()));
    let cfg = d.config();
    use mixer::config::HeaderOpKind::*;
    let out = d.check(&cfg, &bag(&cfg, &[("request.path", "/api/x")]));
    assert_eq!(
        out.request_headers,
        vec![
            ("x-path".to_string(), "/api/x".to_string(), Append),
            ("x-path".to_string(), "fixed".to_string(), Append),
            ("x-secret".to_string(), String::new(), Remove),
        ]
    );
    assert_eq!(
        out.response_headers,
        vec![("x-served-by".to_string(), "mixer".to_string(), Replace)]
    );
    let out = d.check(&cfg, &bag(&cfg, &[("request.path", "/other")]));
    assert!(out.request_headers.is_empty() && out.response_headers.is_empty());
}

#[test]
fn an_instance_that_cannot_be_made_fails_the_check() {
    // A whitelist of users: a request without `source.user` (the instance's one field, with
    // no fallback) must not slip past the handler.
    let yaml = r#"
apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata: {name: users, namespace: istio-system}
spec: {overrides: [alice], blacklist: false}
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata: {name: user, namespace: istio-system}
spec: {value: source.user}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: users, namespace: istio-system}
spec:
  actions: [{handler: users.listchecker, instances: [user.listentry]}]
"#;
    let d = Dispatcher::new(compile(yaml), Arc::new(Metrics::default()));
    let cfg = d.config();
    assert!(
        d.check(&cfg, &bag(&cfg, &[("source.user", "alice")]))
            .status
            .is_ok()
    );
    assert_eq!(
        d.check(&cfg, &bag(&cfg, &[("source.user", "mallory")]))
            .status
            .code,
        code::NOT_FOUND
    );
    let out = d.check(&cfg, &bag(&cfg, &[]));
    assert_eq!(out.status.code, code::INTERNAL, "{:?}", out.status);
    assert!(
        out.status.message.contains("user.listentry"),
        "{}",
        out.status.message
    );
    assert_eq!(out.valid_duration, Duration::ZERO, "never cached");
}
