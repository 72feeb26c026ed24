//! Envoy under the agent: started, restarted with exponential backoff when it exits on its
//! own, given up on after too many failures in a row, and drained on shutdown.
//!
//! - A start counts as a failure when Envoy exits (any status) without being asked to; the
//!   next start waits `initial_backoff`, doubling up to `max_backoff`. After `max_restarts`
//!   failures in a row, [`Supervisor::run`] returns [`SuperviseError::GaveUp`] (the agent
//!   exits non-zero and the kubelet restarts the container). An Envoy that ran for
//!   `stable_after` resets the count.
//! - Shutdown (SIGTERM): the state turns to draining (readiness 503), the agent asks Envoy's
//!   admin `POST /drain_listeners?graceful` (listeners keep accepting while telling clients to
//!   go away, for Envoy's `--drain-time-s`), waits `drain_duration` (less if Envoy exits),
//!   then `POST /quitquitquit` (Envoy exits cleanly) and, if Envoy is still there after
//!   `quit_timeout`, kills it.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mesh_runtime::Shutdown;
use tokio::process::{Child, Command};

use super::admin;

/// What the status server reads of the supervisor.
#[derive(Debug)]
pub struct AgentState {
    /// Envoy's admin address, `127.0.0.1:PORT`.
    pub admin: String,
    /// Set once shutdown started: readiness answers 503 from then on.
    pub draining: AtomicBool,
    /// The running Envoy's pid (0 when none runs).
    pub envoy_pid: AtomicU32,
    /// How many times Envoy was restarted after exiting on its own.
    pub restarts: AtomicU32,
}

// === impl AgentState ===

impl AgentState {
    /// A state for Envoy's admin on `127.0.0.1:admin_port`.
    pub fn new(admin_port: u16) -> AgentState {
        AgentState {
            admin: format!("127.0.0.1:{admin_port}"),
            draining: AtomicBool::new(false),
            envoy_pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
        }
    }
}

/// Why the supervisor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The Envoy binary is not there or not executable.
    #[error("cannot start Envoy {binary} (--binary-path): {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for Envoy failed.
    #[error("cannot wait for Envoy (pid {pid}): {source}")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// Envoy kept exiting.
    #[error(
        "Envoy exited {failures} times in a row (last: {last}); giving up (--max-restarts {max})"
    )]
    GaveUp {
        failures: u32,
        max: u32,
        last: String,
    },
}

/// How Envoy is run and restarted.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub binary: PathBuf,
    pub args: Vec<String>,
    /// Failures in a row before giving up.
    pub max_restarts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// An Envoy that ran this long resets the failure count.
    pub stable_after: Duration,
    /// How long to let Envoy drain on shutdown.
    pub drain_duration: Duration,
    /// How long Envoy gets to exit after `/quitquitquit` before it is killed.
    pub quit_timeout: Duration,
}

// === impl Supervisor ===

impl Supervisor {
    /// Runs Envoy until `shutdown` (then drains it and returns `Ok`) or until it failed too
    /// often.
    pub async fn run(
        &self,
        state: Arc<AgentState>,
        shutdown: Shutdown,
    ) -> Result<(), SuperviseError> {
        let mut failures = 0u32;
        let mut backoff = self.initial_backoff;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let mut child = self.spawn()?;
            let pid = child.id().unwrap_or(0);
            state.envoy_pid.store(pid, Ordering::SeqCst);
            tracing::info!(pid, binary = %self.binary.display(), args = ?self.args, "Envoy started");
            let started = Instant::now();
            tokio::select! {
                status = child.wait() => {
                    state.envoy_pid.store(0, Ordering::SeqCst);
                    let status = status.map_err(|source| SuperviseError::Wait { pid, source })?;
                    if shutdown.is_cancelled() {
                        tracing::info!(%status, "Envoy exited while shutting down");
                        return Ok(());
                    }
                    if started.elapsed() >= self.stable_after {
                        failures = 0;
                        backoff = self.initial_backoff;
                    }
                    failures += 1;
                    let last = describe(status);
                    if failures > self.max_restarts {
                        return Err(SuperviseError::GaveUp {
                            failures,
                            max: self.max_restarts,
                            last,
                        });
                    }
                    tracing::warn!(
                        pid,
                        status = %last,
                        failures,
                        max = self.max_restarts,
                        ?backoff,
                        "Envoy exited unexpectedly; restarting"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                    state.restarts.fetch_add(1, Ordering::SeqCst);
                }
                _ = shutdown.cancelled() => {
                    state.draining.store(true, Ordering::SeqCst);
                    self.drain(&state, &mut child, pid).await;
                    state.envoy_pid.store(0, Ordering::SeqCst);
                    return Ok(());
                }
            }
        }
    }

    fn spawn(&self) -> Result<Child, SuperviseError> {
        Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })
    }

    /// Drains Envoy, then stops it.
    async fn drain(&self, state: &AgentState, child: &mut Child, pid: u32) {
        const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
        match admin::post(&state.admin, "/drain_listeners?graceful", ADMIN_TIMEOUT).await {
            Ok(r) if r.status == 200 => {
                tracing::info!(pid, duration = ?self.drain_duration, "draining Envoy's listeners")
            }
            Ok(r) => {
                tracing::warn!(pid, status = r.status, body = %r.text().trim(), "Envoy refused to drain")
            }
            Err(e) => tracing::warn!(pid, error = %e, "cannot ask Envoy to drain"),
        }
        tokio::select! {
            _ = tokio::time::sleep(self.drain_duration) => {}
            status = child.wait() => {
                tracing::info!(pid, status = ?status.ok().map(describe), "Envoy exited while draining");
                return;
            }
        }
        if let Err(e) = admin::post(&state.admin, "/quitquitquit", ADMIN_TIMEOUT).await {
            tracing::warn!(pid, error = %e, "cannot ask Envoy to quit");
        }
        match tokio::time::timeout(self.quit_timeout, child.wait()).await {
            Ok(status) => {
                tracing::info!(pid, status = ?status.ok().map(describe), "Envoy stopped")
            }
            Err(_) => {
                tracing::warn!(pid, timeout = ?self.quit_timeout, "Envoy did not quit; killing it");
                if let Err(e) = child.kill().await {
                    tracing::warn!(pid, error = %e, "cannot kill Envoy");
                }
            }
        }
    }
}

/// An exit status in words: `exit code 1` or `killed by signal 9`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, max_restarts: u32) -> Supervisor {
        Supervisor {
            binary: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            max_restarts,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            stable_after: Duration::from_secs(60),
            drain_duration: Duration::from_millis(100),
            quit_timeout: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn gives_up_after_failures_in_a_row() {
        let state = Arc::new(AgentState::new(1));
        let err = sh("exit 3", 2)
            .run(state.clone(), Shutdown::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Envoy exited 3 times in a row (last: exit code 3); giving up (--max-restarts 2)"
        );
        assert_eq!(state.restarts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_clear_error() {
        let mut s = sh("", 5);
        s.binary = "/nonexistent/envoy".into();
        let err = s
            .run(Arc::new(AgentState::new(1)), Shutdown::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot start Envoy /nonexistent/envoy (--binary-path)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_a_running_envoy() {
        // Nothing answers the admin port: the drain is logged, the wait and the kill still
        // happen, and the result is Ok.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let state = Arc::new(AgentState::new(port));
        let shutdown = Shutdown::new();
        let s = sh("exec sleep 30", 5);
        let task = tokio::spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            async move { s.run(state, shutdown).await }
        });
        let started = Instant::now();
        while state.envoy_pid.load(Ordering::SeqCst) == 0 {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(state.draining.load(Ordering::SeqCst));
        assert_eq!(state.envoy_pid.load(Ordering::SeqCst), 0);
        assert_eq!(state.restarts.load(Ordering::SeqCst), 0);
    }
}
