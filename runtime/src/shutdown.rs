//! Graceful shutdown: one token, cancelled on SIGTERM or SIGINT, handed to every task.

use tokio_util::sync::CancellationToken;

/// The shutdown signal. Clone it into every task; `cancelled().await` resolves once the process
/// is asked to stop.
pub type Shutdown = CancellationToken;

/// Returns a token that is cancelled when the process receives SIGTERM or SIGINT (Ctrl-C).
///
/// Must be called from within a tokio runtime. A second signal while shutting down exits at
/// once, so a stuck task can never keep an operator waiting.
pub fn on_signals() -> Shutdown {
    on_signals_after(std::time::Duration::ZERO)
}

/// [`on_signals`], but the token is cancelled `delay` after the first signal: the process
/// keeps serving meanwhile (`--shutdown-delay`, so that clients stop sending to it before it
/// stops answering). A second signal exits at once.
pub fn on_signals_after(delay: std::time::Duration) -> Shutdown {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        if !delay.is_zero() {
            tracing::info!(
                delay = ?delay,
                "shutdown signal received; serving on until --shutdown-delay is over"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wait_for_signal() => {
                    tracing::warn!("second signal received, exiting now");
                    std::process::exit(130);
                }
            }
        }
        tracing::info!("shutdown signal received, draining");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal received, exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            // Without signal handlers there is nothing to wait for but Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
