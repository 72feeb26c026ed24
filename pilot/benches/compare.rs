//! Our Pilot against a peer, in the same run, with the same ADS clients (`common::ads`, as
//! `scale` uses) and the same generated mesh (`pilot::testutil::meshgen`: `COMPARE_SERVICES`
//! services, 1,000 by default, 10 endpoints each, a fifth routed, no Sidecar). Run by
//! `tests/scripts/bench-compare.sh`, which builds the peers; `COMPARE_PEER` picks one:
//!
//! - `gcp` (default): go-control-plane's snapshot cache (`tests/peers/go-control-plane/`,
//!   the binary in `GCP_BIN`), serving what our Pilot generates for the mesh's first sidecar
//!   (dumped here as one binary `DiscoveryResponse` per type) to every client, as one
//!   snapshot group. The edit is a second snapshot (the VirtualService every proxy sees with
//!   another timeout: RDS changes), set through the peer's `POST /next`.
//! - `istiod`: istiod's `pilot-discovery` (`tests/peers/istiod/`, `ISTIOD_BIN`) without
//!   Kubernetes, reading the mesh's YAML from a directory (MeshConfig `configSources:
//!   fs:///DIR`), the edit that file rewritten, as for ours.
//!
//! Ours is the `pilot` binary in file mode (`--config-dir`, `--debounce-after 10ms`), the edit
//! `push.yaml` rewritten. For each of `COMPARE_STREAMS` (1,000 and 10,000) clients, each
//! server a fresh process: push fan-out (the edit to the last client's last response, median
//! of 3) and RSS per stream (RSS with the clients minus idle, over the clients). A size that
//! cannot fit (open files, `COMPARE_RSS_LIMIT_MB`, or a server that does not sync its clients
//! in `COMPARE_SYNC_S`, 300 s) is written as `{"skipped": reason}`, never as a partial figure.
//!
//! Writes `$BENCH_OUT` (default `target/bench/compare_pilot_<peer>.json`): per figure
//! `{"ours", "theirs", "ratio": theirs / ours, "unit"}`, and the curves
//! `compare_<peer>_push_ms` and `compare_<peer>_rss_kib_per_stream` for `plot.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use pilot::testutil::TestConfig;
use pilot::testutil::meshgen::{Form, MeshGen, write_atomic};
use pilot::xds::push::build;
use pilot::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use prost::Message;
use serde_json::{Value, json};

#[allow(dead_code)]
mod common;
use common::ads::{Fleet, mb, node};
use common::{KillOnDrop, free_port, percentile, round1, rss_kb, write_report};

const ENDPOINTS_PER_SERVICE: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The file rewritten for a push: a service in `istio-system` every proxy sees and its
/// VirtualService, whose timeout (`round + 1` seconds) changes every proxy's routes.
fn push_yaml(round: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: compare-push
  namespace: istio-system
spec:
  hosts: [compare-push.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
  endpoints:
  - {{address: 192.168.0.1}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: compare-push
  namespace: istio-system
spec:
  hosts: [compare-push.istio-system.svc.cluster.local]
  http:
  - route:
    - destination: {{host: compare-push.istio-system.svc.cluster.local}}
    timeout: {}s
",
        round + 1
    )
}

/// What our Pilot generates for the mesh's first sidecar with the push file at `round`,
/// written to `dir/<type>.pb` as one `DiscoveryResponse` per type (the go-control-plane
/// peer's snapshot). Returns the bytes written.
fn dump(m: &MeshGen, round: usize, dir: &Path) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!("{}---\n{}", m.yaml(Form::Files), push_yaml(round));
    let generation = build(&TestConfig::from_yaml(&yaml).inputs(), None);
    let proxy = m.proxy(0).build();
    let none = BTreeSet::new();
    let clusters = generation.resources(&proxy, CLUSTER, &none).unwrap();
    let eds: BTreeSet<String> = clusters
        .iter()
        .filter(|c| c.name.starts_with("outbound|"))
        .map(|c| c.name.clone())
        .collect();
    let routes = BTreeSet::from(["8080".to_string()]);
    let mut total = 0;
    for (file, ty, names) in [
        ("cds", CLUSTER, &none),
        ("eds", ENDPOINT, &eds),
        ("lds", LISTENER, &none),
        ("rds", ROUTE, &routes),
    ] {
        let resources = generation.resources(&proxy, ty, names).unwrap();
        let resp = DiscoveryResponse {
            type_url: ty.to_string(),
            resources: resources.iter().map(|r| r.any.clone()).collect(),
            ..Default::default()
        };
        let bytes = resp.encode_to_vec();
        total += bytes.len();
        std::fs::write(dir.join(format!("{file}.pb")), bytes).unwrap();
    }
    total
}

/// A plain HTTP request; whether the answer is a 200.
async fn http(addr: &str, method: &str, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    buf.starts_with(b"HTTP/1.1 200")
}

/// The panic (first line and the frames naming where) or last error of a server's log.
fn exit_reason(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with("panic:")) {
        let frames: Vec<&str> = lines[i + 1..]
            .iter()
            .filter(|l| l.starts_with("istio.io/"))
            .take(3)
            .map(|l| l.split('(').next().unwrap_or(l))
            .collect();
        return format!(": {} at {}", lines[i], frames.join(" <- "));
    }
    lines
        .iter()
        .rev()
        .find(|l| l.contains("error"))
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

/// How a server is edited.
enum Edit {
    /// A config directory whose `push.yaml` is rewritten.
    File(tempfile::TempDir),
    /// go-control-plane's admin: `POST /next`.
    Admin(String),
}

/// A server process and its clients.
struct Server {
    pid: u32,
    edit: Edit,
    round: usize,
    fleet: Fleet,
    // Killed after the clients are aborted, before the config directory goes.
    _child: KillOnDrop,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ours,
    Gcp,
    Istiod,
}

struct Setup {
    mesh: MeshGen,
    /// The go-control-plane peer's snapshots (`1/`, `2/`).
    snapshots: tempfile::TempDir,
    gcp_bin: Option<String>,
    istiod_bin: Option<String>,
    rss_limit_kb: u64,
}

impl Server {
    async fn start(kind: Kind, s: &Setup) -> Result<Server, String> {
        let grpc = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let (child, edit, ready) = match kind {
            Kind::Ours => {
                let dir = tempfile::tempdir().unwrap();
                s.mesh.write(dir.path(), Form::Files).unwrap();
                write_atomic(dir.path(), "push.yaml", &push_yaml(0)).unwrap();
                let mut cmd = match std::env::var("COMPARE_PILOT_WRAPPER") {
                    // e.g. `heaptrack -o /tmp/pilot`: RSS is then the wrapper's.
                    Ok(w) if !w.is_empty() => {
                        let mut words = w.split_whitespace();
                        let mut cmd = Command::new(words.next().unwrap());
                        cmd.args(words).arg(env!("CARGO_BIN_EXE_pilot"));
                        cmd
                    }
                    _ => Command::new(env!("CARGO_BIN_EXE_pilot")),
                };
                let child = cmd
                    .args(["--config-dir", dir.path().to_str().unwrap()])
                    .args(["--grpc-addr", &grpc, "--http-addr", &admin])
                    .args(["--debounce-after", "10ms", "--debounce-max", "1s"])
                    .args(["--log-level", "warn"])
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start pilot: {e}"))?;
                (child, Edit::File(dir), "ready")
            }
            Kind::Gcp => {
                let bin = s.gcp_bin.as_deref().ok_or("GCP_BIN is not set")?;
                let child = Command::new(bin)
                    .args(["-dir", s.snapshots.path().to_str().unwrap()])
                    .args(["-port", grpc.rsplit(':').next().unwrap()])
                    .args(["-admin", admin.rsplit(':').next().unwrap()])
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start {bin}: {e}"))?;
                (child, Edit::Admin(admin.clone()), "ready")
            }
            Kind::Istiod => {
                let bin = s.istiod_bin.as_deref().ok_or("ISTIOD_BIN is not set")?;
                let (child, dir) = istiod::start(bin, &s.mesh, &grpc, &admin)?;
                (child, Edit::File(dir), "ready")
            }
        };
        let pid = child.id();
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(180);
        while !http(&admin, "GET", ready).await {
            if let Ok(Some(status)) = child.0.try_wait() {
                let log = match &edit {
                    Edit::File(dir) => exit_reason(&dir.path().join("istiod.log")),
                    Edit::Admin(_) => String::new(),
                };
                return Err(format!("the server exited ({status}) before ready{log}"));
            }
            if Instant::now() > deadline {
                return Err("the server did not answer /ready in 180 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Server {
            pid,
            edit,
            round: 0,
            fleet: Fleet::new(&grpc, pid, 1, s.rss_limit_kb),
            _child: child,
        })
    }

    /// One edit; milliseconds to the last client's last response.
    async fn push(&mut self) -> Option<f64> {
        self.round += 1;
        let old = self.fleet.versions(false);
        let start = Instant::now();
        match &self.edit {
            Edit::File(dir) => {
                write_atomic(dir.path(), "push.yaml", &push_yaml(self.round)).unwrap()
            }
            Edit::Admin(addr) => {
                if !http(addr, "POST", "next").await {
                    eprintln!("  POST /next failed");
                    return None;
                }
            }
        }
        let ms = self.fleet.settle(start, &old, false).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ms
    }
}

mod istiod {
    //! istiod without Kubernetes: MeshConfig with a file config source.
    use super::*;

    pub fn start(
        bin: &str,
        mesh: &MeshGen,
        grpc: &str,
        admin: &str,
    ) -> Result<(std::process::Child, tempfile::TempDir), String> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        mesh.write(&config, Form::Files).unwrap();
        write_atomic(&config, "push.yaml", &push_yaml(0)).unwrap();
        let mesh_file = dir.path().join("mesh.yaml");
        std::fs::write(
            &mesh_file,
            format!(
                "configSources:\n- address: fs://{}\ndefaultConfig:\n  discoveryAddress: {grpc}\n",
                config.display()
            ),
        )
        .unwrap();
        let port = |a: &str| a.rsplit(':').next().unwrap().to_string();
        let child = Command::new(bin)
            .arg("discovery")
            .args(["--meshConfig", mesh_file.to_str().unwrap()])
            .args(["--registries", ""])
            .args(["--grpcAddr", grpc, "--httpAddr", admin])
            .args(["--httpsAddr", "", "--secureGRPCAddr", ""])
            .args(["--monitoringAddr", &format!("127.0.0.1:{}", free_port())])
            .args(["--log_output_level", "default:warn"])
            .env("PILOT_DEBOUNCE_AFTER", "10ms")
            .env("PILOT_DEBOUNCE_MAX", "1s")
            .env("ENABLE_CA_SERVER", "false")
            .env("ISTIOD_CUSTOM_HOST", "localhost")
            .env("POD_NAMESPACE", "istio-system")
            .env("INJECTION_WEBHOOK_CONFIG_NAME", "")
            .env("VALIDATION_WEBHOOK_CONFIG_NAME", "")
            .env("KUBECONFIG", "/nonexistent")
            .env("ISTIOD_HTTP_PORT", port(admin))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("istiod.log")).unwrap())
            .spawn()
            .map_err(|e| format!("start {bin}: {e}"))?;
        Ok((child, dir))
    }
}

/// A figure of ours against theirs.
fn versus(ours: Option<f64>, theirs: Option<f64>, unit: &str, why: &str) -> Value {
    match (ours, theirs) {
        (Some(o), Some(t)) => json!({
            "ours": round1(o), "theirs": round1(t),
            "ratio": (t / o * 100.0).round() / 100.0, "unit": unit,
        }),
        _ => json!({ "skipped": why }),
    }
}

/// Per size: push ms and RSS KiB per stream; or why it was not measured.
type Points = BTreeMap<usize, Result<(Option<f64>, f64), String>>;

async fn measure(kind: Kind, setup: &Setup, sizes: &[usize], sync: Duration) -> Points {
    let mut out = Points::new();
    let name = match kind {
        Kind::Ours => "ours",
        Kind::Gcp => "go-control-plane",
        Kind::Istiod => "istiod",
    };
    for &n in sizes {
        eprintln!("{name}: {n} ADS streams");
        let mut server = match Server::start(kind, setup).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("  {e}");
                out.insert(n, Err(e));
                continue;
            }
        };
        let idle = rss_kb(server.pid);
        let mesh = &setup.mesh;
        if !server
            .fleet
            .connect(n, |i| node(&mesh.proxy(i)), sync)
            .await
        {
            let why = format!(
                "{name} did not sync {n} streams within {}s or passed {} MiB",
                sync.as_secs(),
                setup.rss_limit_kb / 1024
            );
            out.insert(n, Err(why));
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kb(server.pid);
        let per_stream = rss.saturating_sub(idle) as f64 / n as f64;
        let mut pushes = Vec::new();
        for _ in 0..3 {
            pushes.extend(server.push().await);
        }
        let push = (!pushes.is_empty()).then(|| percentile(&mut pushes, 0.5));
        eprintln!(
            "  idle {:.0} MiB, {:.0} MiB with clients ({per_stream:.1} KiB per stream); push {:?} ms",
            mb(idle),
            mb(rss),
            push.map(round1)
        );
        out.insert(n, Ok((push, per_stream)));
    }
    out
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let peer = std::env::var("COMPARE_PEER").unwrap_or_else(|_| "gcp".into());
    let kind = match peer.as_str() {
        "gcp" => Kind::Gcp,
        "istiod" => Kind::Istiod,
        "ours" => Kind::Ours,
        other => panic!("COMPARE_PEER={other}: neither gcp, istiod nor ours"),
    };
    let services = env("COMPARE_SERVICES", 1000);
    let sizes: Vec<usize> = std::env::var("COMPARE_STREAMS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let sync = Duration::from_secs(env("COMPARE_SYNC_S", 300) as u64);
    let mesh = MeshGen::new(services, ENDPOINTS_PER_SERVICE).sidecar_share(0.0);
    let snapshots = tempfile::tempdir().unwrap();
    if kind == Kind::Gcp {
        for r in 0..2 {
            let bytes = dump(&mesh, r, &snapshots.path().join(format!("{}", r + 1)));
            eprintln!("snapshot {}: {:.0} KiB", r + 1, bytes as f64 / 1024.0);
        }
    }
    let setup = Setup {
        mesh,
        snapshots,
        gcp_bin: std::env::var("GCP_BIN").ok(),
        istiod_bin: std::env::var("ISTIOD_BIN").ok(),
        rss_limit_kb: env("COMPARE_RSS_LIMIT_MB", 12000) as u64 * 1024,
    };
    // Open files: a connection each here and in the server.
    let nofile = std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        .unwrap_or(1024);
    let (fit, refused): (Vec<usize>, Vec<usize>) = sizes.iter().partition(|&&n| n + 256 <= nofile);
    // Theirs first: ours is measured only at the sizes theirs was.
    let mut theirs = if kind == Kind::Ours {
        // Ours alone (profiling, or a size no peer reaches): no ratio is written.
        fit.iter()
            .map(|&n| (n, Err("ours alone (COMPARE_PEER=ours)".to_string())))
            .collect()
    } else {
        measure(kind, &setup, &fit, sync).await
    };
    let measured: Vec<usize> = fit
        .iter()
        .copied()
        .filter(|n| kind == Kind::Ours || theirs.get(n).is_some_and(|r| r.is_ok()))
        .collect();
    let mut ours = measure(Kind::Ours, &setup, &measured, sync).await;
    for n in &fit {
        if kind == Kind::Ours {
            continue;
        }
        if let Some(Err(e)) = theirs.get(n) {
            ours.insert(*n, Err(e.clone()));
        }
    }
    for n in &fit {
        let why = || {
            Err(format!(
                "{n} streams not measured: a smaller size already failed"
            ))
        };
        theirs.entry(*n).or_insert_with(why);
        ours.entry(*n).or_insert_with(why);
    }
    for n in refused {
        let why = format!("{n} streams need more than the {nofile} open files allowed");
        eprintln!("{why}");
        ours.insert(n, Err(why.clone()));
        theirs.insert(n, Err(why));
    }

    let (their_name, key) = match kind {
        Kind::Gcp => ("go-control-plane v0.14.0 snapshot cache", "gcp"),
        Kind::Istiod => ("istiod (pilot-discovery)", "istiod"),
        Kind::Ours => ("nobody", "ours"),
    };
    let mut report = serde_json::Map::new();
    let mut curves: [[Vec<Value>; 2]; 2] = Default::default();
    for (n, o) in &ours {
        let t = &theirs[n];
        let why = match (o, t) {
            (Err(e), _) | (_, Err(e)) => e.clone(),
            _ => "a push did not reach every client".into(),
        };
        let (op, or) = o.as_ref().map_or((None, None), |(p, r)| (*p, Some(*r)));
        let (tp, tr) = t.as_ref().map_or((None, None), |(p, r)| (*p, Some(*r)));
        report.insert(
            format!("compare_{key}_push_ms_{n}_streams"),
            versus(op, tp, "ms", &why),
        );
        report.insert(
            format!("compare_{key}_rss_kib_per_stream_{n}_streams"),
            versus(or, tr, "KiB", &why),
        );
        for (side, (p, r)) in [(op, or), (tp, tr)].into_iter().enumerate() {
            if let Some(p) = p {
                curves[0][side].push(json!([n, round1(p)]));
            }
            if let Some(r) = r {
                curves[1][side].push(json!([n, round1(r)]));
            }
        }
    }
    let [push, rss] = curves;
    let series = |[o, t]: [Vec<Value>; 2]| json!({"ours (pilot)": o, their_name: t});
    report.insert(
        format!("compare_{key}_push_ms"),
        json!({
            "title": format!("Push fan-out at {services} services: ours and {their_name}"),
            "x": "ADS streams", "y": "ms, edit to the last client's last response",
            "series": series(push),
        }),
    );
    report.insert(
        format!("compare_{key}_rss_kib_per_stream"),
        json!({
            "title": format!("Memory per ADS stream at {services} services: ours and {their_name}"),
            "x": "ADS streams", "y": "RSS KiB per stream",
            "series": series(rss),
        }),
    );
    eprintln!("compare benchmark: {:.0}s", started.elapsed().as_secs_f64());
    write_report(&Value::Object(report), &format!("compare_pilot_{key}.json"));
}
