//! Helpers shared by the Pilot benchmarks (`xds`, `k8s`, `scale`, `compare`...).

use std::path::PathBuf;

/// The simulated ADS clients of `scale` and `compare`.
#[allow(dead_code)]
pub mod ads;
use std::time::{Duration, Instant};

/// `VmRSS` of process `pid` in KiB, from `/proc/PID/status` (0 when it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) however the benchmark ends, panics included.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until Pilot's `/ready` on `http` (host:port) answers 200; panics after `timeout`.
pub async fn wait_ready(http: &str, timeout: Duration) {
    let url = format!("http://{http}/ready");
    let deadline = Instant::now() + timeout;
    while !ready(&url).await {
        assert!(Instant::now() < deadline, "pilot did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let Some((addr, path)) = rest.split_once('/') else {
        return false;
    };
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    buf.starts_with(b"HTTP/1.1 200")
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Prints the report and writes it to `$BENCH_OUT` (default `../target/bench/<default_name>`).
pub fn write_report(report: &serde_json::Value, default_name: &str) {
    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../target/bench").join(default_name));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(report).unwrap()).unwrap();
}
