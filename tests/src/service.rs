//! Running this project's own binaries (pilot, mixer, citadel) as real processes.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::free_port;
use crate::http::http_get;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The path of a workspace binary, built first with `cargo build` (a no-op when fresh).
///
/// Blocking; builds are serialised within the process.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(repo_root())
        .args(["build", "--quiet", "--bin", name])
        .status()
        .with_context(|| format!("cargo build --bin {name}"))?;
    if !status.success() {
        bail!("cargo build --bin {name} failed: {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("debug").join(name))
}

/// One of our services running as a process, its monitoring server on a free port.
/// Dropping it kills the process.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    http: SocketAddr,
    dir: TempDir,
}

// === impl Service ===

impl Service {
    /// Starts `binary` with `args` plus `--http-addr 127.0.0.1:<free>`; does not wait.
    pub async fn start(binary: &str, args: &[&str]) -> anyhow::Result<Service> {
        Service::start_at(binary, args, ([127, 0, 0, 1], free_port()).into()).await
    }

    /// Starts `binary` with `args` plus `--http-addr HTTP`; does not wait.
    pub async fn start_at(
        binary: &str,
        args: &[&str],
        http: SocketAddr,
    ) -> anyhow::Result<Service> {
        let name = binary.to_string();
        let path = tokio::task::spawn_blocking(move || workspace_binary(&name)).await??;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{binary}-"))
            .tempdir()?;
        let log = File::create(dir.path().join("log"))?;
        let child = Command::new(&path)
            .args(args)
            .arg("--http-addr")
            .arg(http.to_string())
            .env("RUST_LOG", std::env::var("SERVICE_LOG").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", path.display()))?;
        Ok(Service {
            name: binary.to_string(),
            child,
            http,
            dir,
        })
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}; log:\n{}", self.name, self.logs());
            }
            if let Ok(resp) = http_get(&format!("http://{}/ready", self.http), &[]).await
                && resp.status.is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The monitoring server's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Stops the process with SIGTERM and returns whether it exited cleanly in time.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "{} ignored SIGTERM for 10 s; log:\n{}",
                    self.name,
                    self.logs()
                )
            }
        }
    }
}
