//! Running a real Envoy process.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hyper::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::free_port;
use crate::http::{HttpResponse, http_request};

/// How long [`Envoy::start`] waits for `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Envoy::stop`] waits after SIGTERM before it kills the process.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Envoy binary to run: `$ENVOY_BIN` if set, else the output of
/// `tests/scripts/install-envoy.sh` (run at most once per process; it downloads Envoy on
/// first use). Blocking: call it from `spawn_blocking` in async code (as [`Envoy::start`] does).
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
        return Ok(bin.into());
    }
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| install_envoy().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn install_envoy() -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-envoy.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), out.status);
    }
    let path = String::from_utf8(out.stdout)?.trim().to_owned();
    if path.is_empty() {
        bail!("{} printed no path", script.display());
    }
    Ok(path.into())
}

/// A running Envoy process, admin on `127.0.0.1:<free port>`.
///
/// Its stdout and stderr go to a log file in a temp dir ([`Envoy::logs`]); the log is printed
/// to stderr if the Envoy is dropped while the thread panics (a failing test). Dropping it
/// kills the process; [`Envoy::stop`] shuts it down with SIGTERM.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    pid: u32,
    admin: SocketAddr,
    dir: TempDir,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (a v3 `Bootstrap` as JSON; `admin.address` is set here)
    /// and waits until `/ready` answers 200 (at most [`READY_TIMEOUT`]).
    pub async fn start(bootstrap: Value) -> anyhow::Result<Envoy> {
        let mut envoy = Envoy::start_not_ready(bootstrap).await?;
        envoy.wait_ready(READY_TIMEOUT).await?;
        Ok(envoy)
    }

    /// Like [`Envoy::start`], but returns once the admin endpoint answers at all, ready or
    /// not (an xDS-driven Envoy becomes ready only once it has its config; see
    /// [`Envoy::wait_ready`]).
    pub async fn start_not_ready(mut bootstrap: Value) -> anyhow::Result<Envoy> {
        let bin = tokio::task::spawn_blocking(envoy_binary).await??;
        let admin_port = free_port();
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port));
        let root = bootstrap
            .as_object_mut()
            .ok_or_else(|| anyhow!("the bootstrap must be a JSON object"))?;
        let admin_config = root.entry("admin").or_insert_with(|| json!({}));
        admin_config
            .as_object_mut()
            .ok_or_else(|| anyhow!("bootstrap `admin` must be an object"))?
            .insert(
                "address".into(),
                json!({ "socket_address": { "address": "127.0.0.1", "port_value": admin_port } }),
            );

        let dir = tempfile::Builder::new().prefix("envoy-").tempdir()?;
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap)?)?;
        let log = File::create(dir.path().join("envoy.log"))?;
        let log_level = std::env::var("ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warn".into());

        let child = Command::new(&bin)
            .arg("--disable-hot-restart")
            .args(["--base-id", &admin_port.to_string()])
            .arg("-c")
            .arg(&config)
            .args(["--log-level", &log_level])
            .args(["--concurrency", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("envoy exited at once"))?;
        let mut envoy = Envoy {
            child,
            pid,
            admin,
            dir,
        };
        tracing::debug!(pid, %admin, dir = %envoy.dir.path().display(), "envoy started");
        envoy.wait_for(READY_TIMEOUT, false).await?;
        Ok(envoy)
    }

    /// Waits until `/ready` answers 200. Fails with the log if the process exits or the
    /// time runs out.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(timeout, true).await
    }

    /// Polls `/ready` until it answers (200 only, if `ready`).
    async fn wait_for(&mut self, timeout: Duration, ready: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("envoy exited early ({status}); log:\n{}", self.logs());
            }
            let last = match tokio::time::timeout(Duration::from_secs(1), self.admin_get("/ready"))
                .await
            {
                Ok(Ok(resp)) if resp.status == 200 || !ready => return Ok(()),
                Ok(Ok(resp)) => format!("{} {}", resp.status, resp.body.trim()),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "timed out".into(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "envoy not {} after {timeout:?} (last /ready: {last}); log:\n{}",
                    if ready { "ready" } else { "answering" },
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The temp dir holding `bootstrap.json` and `envoy.log` (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything Envoy has written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read(self.dir.path().join("envoy.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read envoy.log: {e}>"))
    }

    /// `GET` an admin path such as `/stats?filter=http` (any status).
    pub async fn admin_get(&self, path_and_query: &str) -> anyhow::Result<HttpResponse> {
        self.admin_request(Method::GET, path_and_query).await
    }

    /// `POST` an admin path such as `/healthcheck/fail` or `/logging?level=debug` (any status).
    pub async fn admin_post(&self, path_and_query: &str) -> anyhow::Result<HttpResponse> {
        self.admin_request(Method::POST, path_and_query).await
    }

    async fn admin_request(&self, method: Method, path: &str) -> anyhow::Result<HttpResponse> {
        let url = format!("http://{}{path}", self.admin);
        http_request(method, &url, &[], bytes::Bytes::new()).await
    }

    /// `GET` an admin path, failing unless it answers 200; returns the body.
    async fn admin_ok(&self, path_and_query: &str) -> anyhow::Result<String> {
        let resp = self.admin_get(path_and_query).await?;
        if resp.status != 200 {
            bail!(
                "admin {path_and_query}: {} {}",
                resp.status,
                resp.body.trim()
            );
        }
        Ok(resp.body)
    }

    /// `/config_dump`; with `include_eds`, endpoint configs too.
    pub async fn config_dump(&self, include_eds: bool) -> anyhow::Result<Value> {
        let path = if include_eds {
            "/config_dump?include_eds"
        } else {
            "/config_dump"
        };
        Ok(serde_json::from_str(&self.admin_ok(path).await?)?)
    }

    /// `/clusters` as text (`cluster::host::stat::value` lines).
    pub async fn clusters(&self) -> anyhow::Result<String> {
        self.admin_ok("/clusters").await
    }

    /// `/clusters?format=json`.
    pub async fn clusters_json(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(
            &self.admin_ok("/clusters?format=json").await?,
        )?)
    }

    /// `/stats` as text (`name: value` lines).
    pub async fn stats(&self) -> anyhow::Result<String> {
        self.admin_ok("/stats").await
    }

    /// The value of counter or gauge `name` (e.g. `cluster.a.upstream_rq_total`) from
    /// `/stats`; `None` if there is no such stat (or it is a histogram).
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let stats = self.stats().await?;
        Ok(stats.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            (key == name).then(|| value.trim().parse().ok()).flatten()
        }))
    }

    /// Sends SIGTERM and waits for the process to exit (SIGKILL after 10 s).
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        if term.success() {
            if let Ok(status) = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                return Ok(status?);
            }
            tracing::warn!(pid = self.pid, "envoy ignored SIGTERM; killing it");
        }
        self.child.kill().await?;
        Ok(self.child.wait().await?)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- envoy (pid {}, admin {}) log ----\n{}---- end of envoy log ----",
                self.pid,
                self.admin,
                self.logs()
            );
        }
        // `kill_on_drop` kills the process if it is still running.
    }
}
