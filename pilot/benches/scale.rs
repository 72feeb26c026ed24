//! Pilot at scale, on meshes from `pilot::testutil::meshgen` (10 endpoints per service, a
//! fifth of the services with a VirtualService and a DestinationRule with 2 subsets, 20
//! services to a namespace), each without Sidecar resources and with a Sidecar in every
//! namespace keeping its proxies to it (`./*`, `istio-system/*`). Written to
//! `target/bench/pilot_scale.json` (or `$BENCH_OUT`), each figure a curve per case,
//! `{"title", "x", "y", "series": {"no Sidecar": [[x, y], ...], ...}}`, which
//! `tests/scripts/plot.py` draws:
//!
//! - `pilot_scale_gen_us_per_proxy`, `pilot_scale_config_kib_per_proxy`: CDS+LDS+RDS+EDS for
//!   one proxy, in process, uncached but for EDS (which proxies share), and its encoded size,
//!   versus services (10, 100, 1,000, 5,000).
//! - `pilot_scale_push_ms`, `pilot_scale_rss_mb`: a real `pilot` process with 1,000 ADS
//!   clients, versus services: a full push (a VirtualService every proxy sees edited, from
//!   the file written to the last response of the last client; median of 3 when under 5 s)
//!   and RSS (also idle, before any client).
//! - `pilot_scale_rss_mb_vs_proxies`, `pilot_scale_push_ms_vs_proxies`,
//!   `pilot_scale_eds_ms_vs_proxies`: at 1,000 services, with 1,000, 5,000 and 10,000 ADS
//!   clients: RSS, full push, and one endpoint of a service every proxy watches moved (file
//!   written to the last client's EDS update; median of 5).
//!
//! A point that would not fit is left out and said so on stderr: when syncing its clients
//! would take longer than `PILOT_SCALE_SYNC_BUDGET_S` (150) by the generation time measured
//! first, or Pilot would grow (by the RSS per client at 1,000) past `PILOT_SCALE_RSS_LIMIT_MB`
//! (16000; also checked while clients sync).
//!
//! The clients are gRPC ADS streams in this process, on the same two cores as Pilot, one
//! HTTP/2 connection each (`PILOT_SCALE_STREAMS_PER_CONN` multiplexes several on one): each
//! subscribes to CDS, EDS (every cluster it gets), LDS and RDS (`8080`) and ACKs every
//! response. Pilot runs with `--debounce-after 10ms`; the file store adds its 20 ms debounce.
//!
//! Sizes: `PILOT_SCALE_MAX_SERVICES` (5000), `PILOT_SCALE_MAX_PROXIES` (10000),
//! `PILOT_SCALE_PROXIES` (the clients of the services series, 1000).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use pilot::testutil::TestConfig;
use pilot::testutil::meshgen::{Form, MeshGen, write_atomic};
use pilot::xds::push::build;
use pilot::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use serde_json::{Value, json};

mod common;
use common::ads::{Fleet, mb};
use common::{KillOnDrop, free_port, percentile, round1, rss_kb, wait_ready, write_report};

const ENDPOINTS_PER_SERVICE: usize = 10;
const SERVICE_SIZES: [usize; 4] = [10, 100, 1000, 5000];
const PROXY_SIZES: [usize; 3] = [1000, 5000, 10000];
/// The services of the proxies series.
const PROXIES_AT_SERVICES: usize = 1000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mesh(services: usize, scoped: bool) -> MeshGen {
    MeshGen::new(services, ENDPOINTS_PER_SERVICE).sidecar_share(if scoped { 1.0 } else { 0.0 })
}

fn point(x: usize, y: f64) -> Value {
    json!([x, round1(y)])
}

// === generation, in process ===

/// Microseconds per proxy and encoded KiB per proxy, over as many proxies as fit in about
/// two seconds (at least 5, at most 200).
fn generation(m: &MeshGen) -> (f64, f64) {
    let inputs = TestConfig::from_yaml(&m.yaml(Form::Files)).inputs();
    let generation = build(&inputs, None);
    let none = BTreeSet::new();
    let routes = BTreeSet::from(["8080".to_string()]);
    let one = |i: usize| -> usize {
        let p = m.proxy(i).build();
        let clusters = generation.resources(&p, CLUSTER, &none).unwrap();
        let eds: BTreeSet<String> = clusters
            .iter()
            .filter(|c| c.name.starts_with("outbound|"))
            .map(|c| c.name.clone())
            .collect();
        let listeners = generation.resources(&p, LISTENER, &none).unwrap();
        let routes = generation.resources(&p, ROUTE, &routes).unwrap();
        let endpoints = generation.resources(&p, ENDPOINT, &eds).unwrap();
        [clusters, listeners, routes, endpoints]
            .iter()
            .flatten()
            .map(|r| r.any.value.len())
            .sum()
    };
    // The shared EDS assignments are made once, by a proxy not counted.
    one(m.services * ENDPOINTS_PER_SERVICE + 1);
    let start = Instant::now();
    let (mut n, mut bytes) = (0, 0);
    while n < 200 && (n < 5 || start.elapsed() < Duration::from_secs(2)) {
        bytes += one(n);
        n += 1;
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    (us, bytes as f64 / 1024.0 / n as f64)
}

/// A `pilot` process serving a generated mesh from files, and its clients.
struct Pilot {
    mesh: MeshGen,
    pid: u32,
    fleet: Fleet,
    push_round: usize,
    eds_round: usize,
    // Killed after the clients are aborted (`Drop`), before its config directory goes.
    _child: KillOnDrop,
    dir: tempfile::TempDir,
}

impl Pilot {
    async fn start(mesh: MeshGen) -> Pilot {
        let dir = tempfile::tempdir().unwrap();
        mesh.write(dir.path(), Form::Files).unwrap();
        write_atomic(dir.path(), "push.yaml", &push_config(0, 0)).unwrap();
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pilot"))
            .args(["--config-dir", dir.path().to_str().unwrap()])
            .args(["--grpc-addr", &grpc, "--http-addr", &http])
            .args(["--debounce-after", "10ms", "--debounce-max", "1s"])
            .args(["--log-level", "warn"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start pilot");
        let pid = child.id();
        let child = KillOnDrop(child);
        wait_ready(&http, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        Pilot {
            mesh,
            dir,
            fleet: Fleet::new(
                &grpc,
                pid,
                env("PILOT_SCALE_STREAMS_PER_CONN", 1),
                env("PILOT_SCALE_RSS_LIMIT_MB", 16000) as u64 * 1024,
            ),
            pid,
            push_round: 0,
            eds_round: 0,
            _child: child,
        }
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    /// Connects clients until there are `n`, and waits until all have routes and endpoints.
    /// `false` when Pilot outgrew the RSS limit or they did not sync in 5 minutes. The clients
    /// send only their node id, as this benchmark's figures always have.
    async fn connect(&mut self, n: usize) -> bool {
        let mesh = &self.mesh;
        let node = |i: usize| Node {
            id: mesh.proxy(i).node_id(),
            ..Default::default()
        };
        self.fleet.connect(n, node, Duration::from_secs(300)).await
    }

    /// A full push: the VirtualService of `push.yaml` edited.
    async fn full_push(&mut self) -> Option<f64> {
        self.push_round += 1;
        self.rewrite_push_file(false).await
    }

    /// An EDS push: the endpoint of `push.yaml`'s service moved to another address.
    async fn eds_push(&mut self) -> Option<f64> {
        self.eds_round += 1;
        self.rewrite_push_file(true).await
    }

    async fn rewrite_push_file(&mut self, eds: bool) -> Option<f64> {
        let old = self.fleet.versions(eds);
        let text = push_config(self.push_round, self.eds_round);
        let start = Instant::now();
        write_atomic(self.dir.path(), "push.yaml", &text).unwrap();
        let ms = self.fleet.settle(start, &old, eds).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ms
    }
}

/// The config rewritten for pushes: a service in `istio-system`, which every proxy sees
/// (Sidecar or not), and its VirtualService. A new timeout (`round`) changes every proxy's
/// routes while Pilot regenerates everything; a new endpoint address (`eds_round`) is an EDS
/// push of that service's cluster, which every proxy watches.
fn push_config(round: usize, eds_round: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: bench-push
  namespace: istio-system
spec:
  hosts: [bench-push.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
  endpoints:
  - {{address: 192.168.{}.{}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: bench-push
  namespace: istio-system
spec:
  hosts: [bench-push.istio-system.svc.cluster.local]
  http:
  - route:
    - destination: {{host: bench-push.istio-system.svc.cluster.local}}
    timeout: {}s
",
        eds_round / 250,
        eds_round % 250 + 1,
        round + 1,
    )
}

fn show(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.0} ms"))
}

const SCOPES: [(bool, &str); 2] = [(false, "no Sidecar"), (true, "Sidecar ./* per namespace")];

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let max_services = env("PILOT_SCALE_MAX_SERVICES", 5000);
    let max_proxies = env("PILOT_SCALE_MAX_PROXIES", 10000);
    let base = env("PILOT_SCALE_PROXIES", 1000).min(max_proxies);
    let budget_s = env("PILOT_SCALE_SYNC_BUDGET_S", 150) as f64;
    let services: Vec<usize> = SERVICE_SIZES
        .into_iter()
        .filter(|&s| s <= max_services)
        .collect();
    let mut proxies: Vec<usize> = PROXY_SIZES
        .into_iter()
        .filter(|&p| p <= max_proxies)
        .collect();
    if proxies.is_empty() {
        proxies.push(max_proxies);
    }
    // The proxies series is taken at 1,000 services, or the largest size there is.
    let proxies_at = services
        .iter()
        .copied()
        .filter(|&s| s <= PROXIES_AT_SERVICES)
        .max()
        .unwrap_or(services[0]);

    // Per figure, per scope: the points.
    let mut figures: BTreeMap<&str, [Vec<Value>; 2]> = BTreeMap::new();
    let mut add = |figure: &'static str, scoped: bool, x: usize, y: Option<f64>| {
        if let Some(y) = y {
            figures.entry(figure).or_default()[scoped as usize].push(point(x, y));
        }
    };

    // Generation in process.
    let mut gen_us = BTreeMap::new();
    for &s in &services {
        for (scoped, name) in SCOPES {
            let (us, kib) = generation(&mesh(s, scoped));
            eprintln!("generation at {s} services, {name}: {us:.0} us per proxy, {kib:.0} KiB");
            gen_us.insert((s, scoped), us);
            add("gen", scoped, s, Some(us));
            add("kib", scoped, s, Some(kib));
        }
    }

    // A real Pilot per mesh size and scope with `base` clients; at `proxies_at` services,
    // more. A point whose syncing would take longer than the budget (by the generation time
    // above) is left out, as are those past the RSS limit.
    let mut rss_idle = BTreeMap::new();
    let rss_limit_mb = env("PILOT_SCALE_RSS_LIMIT_MB", 16000) as f64;
    for &s in &services {
        for (scoped, name) in SCOPES {
            let predicted = gen_us[&(s, scoped)] * base as f64 / 1e6;
            if predicted > budget_s {
                eprintln!(
                    "pilot at {s} services, {name}: skipped ({base} clients would take {predicted:.0}s to generate for, past the {budget_s:.0}s budget)"
                );
                continue;
            }
            eprintln!("pilot at {s} services, {name}, {base} clients");
            let mut pilot = Pilot::start(mesh(s, scoped)).await;
            let idle = pilot.rss_kb();
            rss_idle.entry(s).or_insert_with(|| point(s, mb(idle)));
            if !pilot.connect(base).await {
                continue;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = pilot.rss_kb();
            let first = pilot.full_push().await;
            // Three when they are quick, the median.
            let full = if first.is_some_and(|ms| ms < 5000.0) {
                let mut v = vec![first.unwrap()];
                for _ in 0..2 {
                    v.extend(pilot.full_push().await);
                }
                Some(percentile(&mut v, 0.5))
            } else {
                first
            };
            eprintln!(
                "  rss {:.0} MiB idle, {:.0} MiB with clients; full push {}",
                mb(idle),
                mb(rss),
                show(full)
            );
            add("rss", scoped, s, Some(mb(rss)));
            add("push", scoped, s, full);
            if s != proxies_at {
                continue;
            }
            let per_client_mb = mb(rss.saturating_sub(idle)) / base as f64;
            for &p in &proxies {
                let (mem, time) = (
                    per_client_mb * p as f64,
                    gen_us[&(s, scoped)] * p as f64 / 1e6,
                );
                if mem > rss_limit_mb || time > budget_s {
                    eprintln!(
                        "  {p} clients skipped: would need about {mem:.0} MiB and {time:.0}s to sync (limits {rss_limit_mb:.0} MiB, {budget_s:.0}s)"
                    );
                    break;
                }
                let full = if p == base {
                    full
                } else {
                    if !pilot.connect(p).await {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    pilot.full_push().await
                };
                let rss = pilot.rss_kb();
                let mut eds = Vec::new();
                for _ in 0..5 {
                    eds.extend(pilot.eds_push().await);
                }
                let eds = (!eds.is_empty()).then(|| percentile(&mut eds, 0.5));
                eprintln!(
                    "  {p} clients: rss {:.0} MiB, full push {}, EDS push {}",
                    mb(rss),
                    show(full),
                    show(eds)
                );
                add("rss_p", scoped, p, Some(mb(rss)));
                add("push_p", scoped, p, full);
                add("eds_p", scoped, p, eds);
            }
        }
    }
    let streams = env("PILOT_SCALE_STREAMS_PER_CONN", 1).max(1);
    let conns = if streams == 1 {
        "one connection each".to_string()
    } else {
        format!("{streams} streams per connection")
    };
    let at = format!("{proxies_at} services");
    let mut series = |figure: &str| -> Value {
        let [open, scoped] = figures.remove(figure).unwrap_or_default();
        json!({SCOPES[0].1: open, SCOPES[1].1: scoped})
    };
    let rss = series("rss");
    let report = json!({
        "pilot_scale_gen_us_per_proxy": {
            "title": "Pilot: generation per proxy (CDS+LDS+RDS+EDS, in process)",
            "x": "services", "y": "µs per proxy", "series": series("gen"),
        },
        "pilot_scale_config_kib_per_proxy": {
            "title": "Pilot: config sent to one proxy",
            "x": "services", "y": "KiB per proxy", "series": series("kib"),
        },
        "pilot_scale_push_ms": {
            "title": format!("Pilot: full push to {base} ADS clients"),
            "x": "services", "y": "ms to the last client's last response",
            "series": series("push"),
        },
        "pilot_scale_rss_mb": {
            "title": format!("Pilot: memory with {base} ADS clients ({conns})"),
            "x": "services", "y": "RSS, MiB",
            "series": {
                format!("{} ({base} clients)", SCOPES[0].1): rss[SCOPES[0].1],
                format!("{} ({base} clients)", SCOPES[1].1): rss[SCOPES[1].1],
                "idle (no client)": rss_idle.into_values().collect::<Vec<_>>(),
            },
        },
        "pilot_scale_rss_mb_vs_proxies": {
            "title": format!("Pilot: memory versus proxies ({at}, {conns})"),
            "x": "ADS clients", "y": "RSS, MiB", "series": series("rss_p"),
        },
        "pilot_scale_push_ms_vs_proxies": {
            "title": format!("Pilot: full push versus proxies ({at})"),
            "x": "ADS clients", "y": "ms to the last client's last response",
            "series": series("push_p"),
        },
        "pilot_scale_eds_ms_vs_proxies": {
            "title": format!("Pilot: EDS push, one endpoint moved ({at})"),
            "x": "ADS clients", "y": "ms to the last client's EDS update (median of 5)",
            "series": series("eds_p"),
        },
    });
    eprintln!("scale benchmark: {:.0}s", started.elapsed().as_secs_f64());
    write_report(&report, "pilot_scale.json");
}
