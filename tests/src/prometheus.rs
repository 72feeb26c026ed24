//! A real `prometheus` server (Debian's package, from `make deps`) for tests: it scrapes
//! what it is told every second, keeps its storage in a temp dir, and answers PromQL.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{free_port, http_get, require, wait_port};

/// How long Prometheus may take to listen.
const START: Duration = Duration::from_secs(20);

/// A `prometheus` server, stopped by pid on [`Prometheus::stop`] (or killed when dropped).
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

// === impl Prometheus ===

impl Prometheus {
    /// Scrapes the static `targets` (job `istio-mesh`, as Istio's add-on names Mixer's).
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        Self::with_scrape_configs(&format!(
            "- job_name: istio-mesh\n  static_configs:\n  - targets: [{}]\n",
            targets.join(", ")
        ))
        .await
    }

    /// Scrapes what `scrape_configs` (the YAML list under `scrape_configs:`) says.
    pub async fn with_scrape_configs(scrape_configs: &str) -> Prometheus {
        require("prometheus");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.path().join("prometheus.log");
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("prometheus.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        wait_port(port, "prometheus", &mut child, &log, START).await;
        Prometheus { child, addr, dir }
    }

    /// Prometheus's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query: the `data.result` array.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let mut url = format!("http://{}/api/v1/query?query=", self.addr);
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
        let r = http_get(&url, &[]).await?;
        let v = r.json()?;
        anyhow::ensure!(v["status"] == "success", "query {promql}: {}", r.body);
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The sum of the values a query returns (0 for none).
    pub async fn sum(&self, promql: &str) -> anyhow::Result<f64> {
        Ok(self
            .query(promql)
            .await?
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .sum())
    }

    /// The health of its scrape targets (`/api/v1/targets`): (url, health, last error).
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let v = http_get(&format!("http://{}/api/v1/targets", self.addr), &[])
            .await?
            .json()?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Stops it by pid (SIGKILL) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
