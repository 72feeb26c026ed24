//! A small mesh for tests: Pilot serving a temp config directory, and Envoy sidecars
//! bootstrapped from `pilot bootstrap`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::http::{HttpResponse, http_get};
use crate::service::{Service, workspace_binary};
use crate::{Envoy, free_port};

/// Pilot running on a config directory the test writes to.
#[derive(Debug)]
pub struct Pilot {
    dir: TempDir,
    pub service: Service,
    grpc: SocketAddr,
}

// === impl Pilot ===

impl Pilot {
    /// Starts Pilot on a fresh config directory holding `files` (name, YAML), with `mesh` as
    /// its MeshConfig, and waits until it is ready. `extra` flags are passed through.
    pub async fn start(
        files: &[(&str, &str)],
        mesh: &str,
        extra: &[&str],
    ) -> anyhow::Result<Pilot> {
        let dir = tempfile::Builder::new().prefix("pilot-config-").tempdir()?;
        let config = dir.path().join("config");
        std::fs::create_dir(&config)?;
        for (name, text) in files {
            std::fs::write(config.join(name), text)?;
        }
        std::fs::write(dir.path().join("mesh.yaml"), mesh)?;
        Pilot::start_in(dir, extra).await
    }

    async fn start_in(dir: TempDir, extra: &[&str]) -> anyhow::Result<Pilot> {
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config = dir.path().join("config");
        let mesh = dir.path().join("mesh.yaml");
        let mut args: Vec<String> = vec![
            "--config-dir".into(),
            config.display().to_string(),
            "--mesh".into(),
            mesh.display().to_string(),
            "--grpc-addr".into(),
            grpc.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut service = Service::start("pilot", &argv).await?;
        service.wait_ready(Duration::from_secs(30)).await?;
        Ok(Pilot { dir, service, grpc })
    }

    /// Stops Pilot and starts a new one on the same directory and ports.
    pub async fn restart(self) -> anyhow::Result<Pilot> {
        let Pilot { dir, service, grpc } = self;
        let http = service.http_addr();
        service.stop().await?;
        let config = dir.path().join("config");
        let mesh = dir.path().join("mesh.yaml");
        let args: Vec<String> = vec![
            "--config-dir".into(),
            config.display().to_string(),
            "--mesh".into(),
            mesh.display().to_string(),
            "--grpc-addr".into(),
            grpc.to_string(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut service = Service::start_at("pilot", &argv, http).await?;
        service.wait_ready(Duration::from_secs(30)).await?;
        Ok(Pilot { dir, service, grpc })
    }

    /// The config directory.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Writes (atomically) or replaces a config file.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        write_atomic(&self.config_dir(), name, text)
    }

    /// Removes a config file.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        Ok(std::fs::remove_file(self.config_dir().join(name))?)
    }

    /// The xDS address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The monitoring base URL, `http://127.0.0.1:PORT`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.service.http_addr())
    }

    /// A bootstrap from `pilot bootstrap` for `node`, with extra flags
    /// (`--delta`, `--label k=v`, `--meta K=V`).
    pub fn bootstrap(&self, node: &str, extra: &[&str]) -> anyhow::Result<Value> {
        let pilot = workspace_binary("pilot")?;
        let out = std::process::Command::new(&pilot)
            .args(["bootstrap", "--node", node, "--xds-address"])
            .arg(self.grpc.to_string())
            .args(extra)
            .output()
            .context("run pilot bootstrap")?;
        if !out.status.success() {
            bail!(
                "pilot bootstrap failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Starts an Envoy sidecar for `node` and waits until it is ready (has its config).
    pub async fn sidecar(&self, node: &str, extra: &[&str]) -> anyhow::Result<Envoy> {
        let bootstrap = self.bootstrap(node, extra)?;
        let mut envoy = Envoy::start_not_ready(bootstrap).await?;
        envoy.wait_ready(Duration::from_secs(30)).await?;
        Ok(envoy)
    }

    /// GETs a monitoring path as JSON.
    pub async fn debug(&self, path: &str) -> anyhow::Result<Value> {
        http_get(&format!("{}{path}", self.http_base()), &[])
            .await?
            .json()
    }
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Sends a GET for `host` (the Host header, e.g. `reviews:9080`) and `path` through an HTTP
/// proxy listener on 127.0.0.1:`port`.
pub async fn via_proxy(port: u16, host: &str, path: &str) -> anyhow::Result<HttpResponse> {
    http_get(&format!("http://127.0.0.1:{port}{path}"), &[("host", host)]).await
}

/// Polls `f` until it returns `Ok(true)` or `timeout` passes; the error names `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
