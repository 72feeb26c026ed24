//! `mesh-pause`, the pod sandbox's process: it holds the pod's namespaces, sleeps until
//! SIGTERM or SIGINT (then exits 0), and reaps every zombie it inherits on SIGCHLD (as
//! PID 1 of a pod that shares its process namespace).

use rustix::process::{WaitOptions, wait};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::Error;

/// Waits for SIGTERM or SIGINT, reaping children on every SIGCHLD meanwhile.
pub async fn run() -> Result<(), Error> {
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Error::io(format!("listen for {name}"), e))
    };
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut child = listen(SignalKind::child(), "SIGCHLD")?;
    // Children that exited before the handler was in place.
    reap();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = child.recv() => { reap(); }
        }
    }
    reap();
    Ok(())
}

/// Reaps every child that has exited, without blocking; returns how many.
pub fn reap() -> usize {
    let mut reaped = 0;
    // Ok(None): children remain, none has exited; Err: no children (ECHILD).
    while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {
        reaped += 1;
    }
    reaped
}
