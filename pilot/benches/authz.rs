//! Authorization benchmarks, written to `target/bench/pilot_authz.json` (or `$BENCH_OUT`):
//!
//! - `pilot_authz_push_context_ms_1000_policies`: building the push context (parsing aside)
//!   of bookinfo with 1,000 AuthorizationPolicies, which indexes and checks them.
//! - `pilot_authz_lds_us_per_proxy_1000_policies`: generating LDS for one sidecar of bookinfo
//!   (its inbound listener carrying the RBAC filters of the 250 policies that select it and
//!   the namespace-wide ones), uncached; `pilot_authz_lds_us_per_proxy_no_policies` is the
//!   same without any policy, side by side.
//!
//! `PILOT_BENCH_POLICIES` changes the number of policies (default 1000).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mesh_runtime::Snapshot;
use pilot::mesh::MeshConfig;
use pilot::model::{Proxy, PushContext};
use pilot::xds::Generation;
use pilot::xds::push::{Inputs, registry_from};
use pilot::xds::resource::LISTENER;

// Only some of the shared helpers are used here.
#[allow(dead_code)]
mod common;
use common::{round1, write_report};

const BOOKINFO: &str = include_str!("bookinfo.yaml");
/// The workloads: app and IP (their endpoints in bookinfo.yaml).
const WORKLOADS: [(&str, &str); 4] = [
    ("productpage", "127.3.0.1"),
    ("details", "127.3.0.2"),
    ("reviews", "127.3.0.3"),
    ("ratings", "127.3.0.6"),
];

/// Policy `i`: selects one app (in turn), ALLOW or DENY, with principals, paths, methods, a
/// namespace and a header condition; every tenth is namespace-wide.
fn policy(i: usize) -> String {
    let app = WORKLOADS[i % WORKLOADS.len()].0;
    let selector = if i % 10 == 9 {
        String::new()
    } else {
        format!("  selector: {{matchLabels: {{app: {app}}}}}\n")
    };
    let action = if i.is_multiple_of(3) { "DENY" } else { "ALLOW" };
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: policy-{i}, namespace: default}}
spec:
{selector}  action: {action}
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/caller-{i}, cluster.local/ns/team-{i}/sa/*]
        notNamespaces: [untrusted-{i}]
    to:
    - operation:
        methods: [GET, POST]
        paths: [/api/v{i}/*, /static/{i}.json]
        notPaths: [/api/v{i}/admin*]
    when:
    - {{key: 'request.headers[x-tenant]', values: [tenant-{i}]}}
    - {{key: source.ip, notValues: [10.{}.0.0/16]}}
",
        i % 256
    )
}

fn snapshot(text: &str) -> Arc<Snapshot> {
    let objects: BTreeMap<_, _> = mesh_runtime::config::parse_file(Path::new("b.yaml"), text)
        .into_iter()
        .map(|r| {
            let o = r.expect("the benchmark's config parses");
            (o.key.clone(), Arc::new(o))
        })
        .collect();
    Arc::new(Snapshot::new(1, true, objects, Vec::new()))
}

fn inputs(policies: usize) -> Inputs {
    let mut text = BOOKINFO.to_string();
    for i in 0..policies {
        text.push_str("\n---\n");
        text.push_str(&policy(i));
    }
    let config = snapshot(&text);
    Inputs {
        registry: registry_from(&config),
        config,
        mesh: Arc::new(MeshConfig::default()),
    }
}

fn push_context(inputs: &Inputs) -> PushContext {
    PushContext::new(
        "1".into(),
        &inputs.config,
        inputs.registry.clone(),
        inputs.mesh.clone(),
    )
}

/// Microseconds of LDS per proxy, over `n` proxies with distinct labels (no cache hits).
fn lds_us(ctx: Arc<PushContext>, n: usize) -> f64 {
    let generation = Generation::new(ctx);
    let proxies: Vec<Proxy> = (0..n)
        .map(|i| {
            let (app, ip) = WORKLOADS[i % WORKLOADS.len()];
            let meta = BTreeMap::from([(
                "LABELS".to_string(),
                serde_json::json!({"app": app, "pod": i.to_string()}),
            )]);
            let id = format!("sidecar~{ip}~{app}-{i}.default~default.svc.cluster.local");
            Proxy::from_node(&id, meta).expect("node id")
        })
        .collect();
    let none = BTreeSet::new();
    let start = Instant::now();
    for p in &proxies {
        let listeners = generation.resources(p, LISTENER, &none).unwrap();
        assert!(!listeners.is_empty());
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let policies: usize = std::env::var("PILOT_BENCH_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let with = inputs(policies);
    let without = inputs(0);

    let runs = 5;
    let mut build_ms = Vec::new();
    let mut ctx = None;
    for _ in 0..runs {
        let start = Instant::now();
        ctx = Some(push_context(&with));
        build_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    build_ms.sort_by(|a, b| a.total_cmp(b));
    let ctx = Arc::new(ctx.expect("at least one run"));
    assert_eq!(ctx.authz.len(), policies);

    let n = 200;
    let with_us = lds_us(ctx, n);
    let without_us = lds_us(Arc::new(push_context(&without)), n);
    let report = serde_json::json!({
        format!("pilot_authz_push_context_ms_{policies}_policies"): round1(build_ms[runs / 2]),
        format!("pilot_authz_lds_us_per_proxy_{policies}_policies"): round1(with_us),
        "pilot_authz_lds_us_per_proxy_no_policies": round1(without_us),
    });
    write_report(&report, "pilot_authz.json");
}
