//! Running `pilot-agent proxy` as a real process: the agent, and the Envoy it starts and
//! supervises.
//!
//! [`Agent::start`] fills in what a pod would give it: the Downward API environment
//! (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`), a temp `--config-path` (the SDS socket in
//! it), free admin and status ports, the Envoy of [`crate::envoy_binary`], one worker thread and a 1 s drain. Its stdout
//! and stderr (Envoy's too: Envoy inherits them) go to a log file ([`Agent::logs`], printed
//! when a test panics). Dropping it kills Envoy and then the agent, each by its pid.

use std::fs::File;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hyper::Method;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::free_port;
use crate::http::{HttpResponse, http_get, http_request};
use crate::service::workspace_binary;

/// How long [`Agent::stop`] waits for the agent to drain Envoy and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `pilot-agent proxy ROLE`.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    pid: u32,
    admin_port: u16,
    status_port: u16,
    node_id: String,
    dir: TempDir,
}

/// What an [`Agent`] is started with besides its defaults.
#[derive(Debug, Clone)]
pub struct AgentOptions<'a> {
    /// `sidecar` or `router`.
    pub role: &'a str,
    /// Pilot's xDS address (`--discovery-address`).
    pub discovery: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    /// `INSTANCE_IP`.
    pub ip: &'a str,
    /// More flags, e.g. `--cert-source files`; they come after the defaults, and clap takes
    /// the last of a repeated flag, so they can override them too.
    pub args: &'a [&'a str],
    /// More environment, e.g. `ISTIO_META_INTERCEPTION_MODE=NONE`.
    pub env: &'a [(&'a str, &'a str)],
}

// === impl Agent ===

impl Agent {
    /// Starts the agent; does not wait for anything.
    pub async fn start(opts: AgentOptions<'_>) -> anyhow::Result<Agent> {
        let (agent, envoy) = tokio::task::spawn_blocking(|| {
            Ok::<_, anyhow::Error>((workspace_binary("pilot-agent")?, crate::envoy_binary()?))
        })
        .await??;
        let dir = tempfile::Builder::new().prefix("pilot-agent-").tempdir()?;
        let admin_port = free_port();
        let status_port = free_port();
        let log = File::create(dir.path().join("agent.log"))?;
        let config = dir.path().join("proxy");
        let mut cmd = Command::new(&agent);
        cmd.args(["proxy", opts.role, "--discovery-address", opts.discovery])
            .arg("--binary-path")
            .arg(&envoy)
            .arg("--config-path")
            .arg(&config)
            .args(["--proxy-admin-port", &admin_port.to_string()])
            .args(["--status-port", &status_port.to_string()])
            .args(["--concurrency", "1", "--drain-duration", "1s"])
            .arg("--sds-socket")
            .arg(config.join("SDS"))
            .args(opts.args)
            .env("POD_NAME", opts.pod)
            .env("POD_NAMESPACE", opts.namespace)
            .env("INSTANCE_IP", opts.ip)
            .env(
                "PILOT_AGENT_LOG_LEVEL",
                std::env::var("SERVICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", agent.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("pilot-agent exited at once"))?;
        let node_id = format!(
            "{}~{}~{}.{}~{}.svc.cluster.local",
            opts.role, opts.ip, opts.pod, opts.namespace, opts.namespace
        );
        Ok(Agent {
            child,
            pid,
            admin_port,
            status_port,
            node_id,
            dir,
        })
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The node id the agent should give Envoy (`ROLE~IP~POD.NS~NS.svc.cluster.local`).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The status port (`/healthz/ready`).
    pub fn status_port(&self) -> u16 {
        self.status_port
    }

    /// Envoy's admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The SDS socket (`--sds-socket`, `proxy/SDS` in the temp dir unless overridden).
    pub fn sds_socket(&self) -> std::path::PathBuf {
        self.dir.path().join("proxy/SDS")
    }

    /// The temp dir (`proxy/envoy-rev0.json`, `proxy/SDS`, `agent.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the agent and Envoy wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The pid of the Envoy the agent runs now (its child process), if any.
    pub fn envoy_pid(&self) -> Option<u32> {
        children(self.pid).into_iter().next()
    }

    /// Whether the agent has exited, and how.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// `GET /healthz/ready` on the status port: its status and body.
    pub async fn readiness(&self) -> anyhow::Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}/healthz/ready", self.status_port);
        let r = http_get(&url, &[]).await?;
        Ok((r.status.as_u16(), r.body))
    }

    /// Polls readiness until 200; returns the statuses seen before (connection errors as 0).
    /// Fails with the log if the agent exits or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Vec<u16>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("pilot-agent exited ({status}); log:\n{}", self.logs());
            }
            let (status, last) = match self.readiness().await {
                Ok((200, _)) => return Ok(seen),
                Ok((s, body)) => (s, format!("{s} {}", body.trim())),
                Err(e) => (0, format!("{e:#}")),
            };
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "pilot-agent not ready after {timeout:?} (last: {last}); log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET` a path of Envoy's admin interface (any status).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        http_request(Method::GET, &url, &[], bytes::Bytes::new()).await
    }

    /// Sends SIGTERM and waits for the agent to exit (it drains Envoy first).
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.terminate();
        self.wait().await
    }

    /// Sends SIGTERM, once (the agent starts draining Envoy).
    pub fn terminate(&self) {
        signal(self.pid, "TERM");
    }

    /// Waits for the agent to exit (at most 30 s).
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "pilot-agent did not exit {STOP_TIMEOUT:?} after SIGTERM; log:\n{}",
                self.logs()
            ),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- pilot-agent (pid {}) log ----\n{}---- end of pilot-agent log ----",
                self.pid,
                self.logs()
            );
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            // Envoy first: killing the agent alone would leave it running.
            for pid in children(self.pid) {
                signal(pid, "KILL");
            }
        }
        // `kill_on_drop` kills the agent itself.
    }
}

/// Sends `sig` (e.g. `TERM`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether a process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The child processes of `pid` (from `/proc/PID/task/*/children`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `VmRSS` of `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
