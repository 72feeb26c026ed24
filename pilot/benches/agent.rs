//! `pilot-agent proxy` benchmarks, written to `target/bench/pilot_agent.json` (or
//! `$BENCH_OUT`):
//!
//! - `agent_ready_ms`: from starting `pilot-agent proxy sidecar` (release build) to its
//!   `/healthz/ready` answering 200, against a local Pilot serving the bookinfo mesh: the
//!   bootstrap written, Envoy started, and Envoy's first clusters and listeners from Pilot.
//!   The median of `AGENT_BENCH_RUNS` starts (default 5), each agent stopped (SIGTERM, drain)
//!   before the next.
//! - `sidecar_rss_kib`: what one sidecar costs in memory: the agent's `VmRSS` plus its
//!   Envoy's (`/proc/PID/status`), 1 s after ready, in the last run; `agent_rss_kib` and
//!   `envoy_rss_kib` are the two parts.
//!
//! The sidecar is productpage's without interception (`PROXY_HTTP_PORT`), one Envoy worker,
//! and `--cert-source files` with no files: no Citadel is involved (the certificate does not
//! gate readiness either way). Envoy is `$ENVOY_BIN`, else `tests/scripts/install-envoy.sh`'s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{KillOnDrop, free_port, percentile, round1, rss_kb, wait_ready, write_report};

const BOOKINFO: &str = include_str!("bookinfo.yaml");

fn envoy() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
        return bin.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/install-envoy.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run install-envoy.sh");
    assert!(out.status.success(), "install-envoy.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The status code of `GET http://addr/path`, if anything answers.
async fn status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(32)]).into_owned();
    head.split_whitespace().nth(1)?.parse().ok()
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

struct Run {
    ready_ms: f64,
    agent_rss: u64,
    envoy_rss: u64,
}

/// One agent: started, timed to ready, measured, stopped.
async fn run(envoy: &Path, xds: &str, dir: &Path, measure_rss: bool) -> Run {
    let status_addr = format!("127.0.0.1:{}", free_port());
    let status_port = status_addr.rsplit_once(':').unwrap().1.to_string();
    let admin = free_port().to_string();
    let http_port = free_port().to_string();
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_pilot-agent"))
        .args(["proxy", "sidecar", "--discovery-address", xds])
        .arg("--binary-path")
        .arg(envoy)
        .arg("--config-path")
        .arg(dir.join("proxy"))
        .arg("--certs-dir")
        .arg(dir.join("no-certs"))
        .args(["--cert-source", "files", "--concurrency", "1"])
        .args(["--proxy-admin-port", &admin, "--status-port", &status_port])
        .args(["--drain-duration", "1s", "--log-level", "warn"])
        .env("POD_NAME", "productpage-v1-1")
        .env("POD_NAMESPACE", "default")
        .env("INSTANCE_IP", "127.0.0.90")
        .env("ISTIO_META_INTERCEPTION_MODE", "NONE")
        .env("ISTIO_META_PROXY_HTTP_PORT", &http_port)
        .env(
            "ISTIO_METAJSON_LABELS",
            r#"{"app":"productpage","version":"v1"}"#,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start pilot-agent");
    let pid = child.id();
    let mut child = KillOnDrop(child);
    let deadline = start + Duration::from_secs(60);
    while status(&status_addr, "/healthz/ready").await != Some(200) {
        assert!(Instant::now() < deadline, "pilot-agent not ready in 60 s");
        assert!(child.0.try_wait().unwrap().is_none(), "pilot-agent exited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (mut agent_rss, mut envoy_rss) = (0, 0);
    if measure_rss {
        tokio::time::sleep(Duration::from_secs(1)).await;
        agent_rss = rss_kb(pid);
        envoy_rss = children(pid).into_iter().map(rss_kb).sum();
    }
    let envoys = children(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pilot-agent ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for e in envoys {
        // Reaped by the agent already; a leftover would be a bug, and is not left running.
        let _ = Command::new("kill")
            .args(["-KILL", &e.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    Run {
        ready_ms,
        agent_rss,
        envoy_rss,
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("AGENT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let envoy = tokio::task::spawn_blocking(envoy).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("bookinfo.yaml"), BOOKINFO).unwrap();
    let xds = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let pilot = Command::new(env!("CARGO_BIN_EXE_pilot"))
        .args(["--config-dir", config.to_str().unwrap()])
        .args(["--grpc-addr", &xds, "--http-addr", &http])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start pilot");
    let _pilot = KillOnDrop(pilot);
    wait_ready(&http, Duration::from_secs(30)).await;

    let mut ready = Vec::new();
    let mut last = None;
    for i in 0..runs {
        let r = run(&envoy, &xds, dir.path(), i + 1 == runs).await;
        eprintln!("run {i}: ready in {:.1} ms", r.ready_ms);
        ready.push(r.ready_ms);
        last = Some(r);
    }
    let last = last.unwrap();
    let report = serde_json::json!({
        "agent_ready_ms": round1(percentile(&mut ready, 0.5)),
        "sidecar_rss_kib": last.agent_rss + last.envoy_rss,
        "agent_rss_kib": last.agent_rss,
        "envoy_rss_kib": last.envoy_rss,
    });
    write_report(&report, "pilot_agent.json");
}
