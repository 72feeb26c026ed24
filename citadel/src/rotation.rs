//! The periodic root check: the root's expiry is exported as a metric, and a self-signed root
//! inside its grace window is rotated with the same key (see [`crate::ca::root`]), stored, and
//! swapped in; the secret controller then rewrites every workload secret with the new root.
//!
//! Only the leader rotates and stores. Other replicas re-read the store on every check and
//! pick up the leader's rotated root. A plugged-in CA is never rotated here (its owner does
//! that); a warning is logged when its root is inside the grace window.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_runtime::Shutdown;
use tokio::sync::watch;

use crate::ca::CertificateAuthority;
use crate::ca::root;
use crate::ca::store::CaStore;
use crate::metrics::Metrics;

/// The root checker task.
pub struct RootChecker {
    pub ca: Arc<CertificateAuthority>,
    /// Where the self-signed CA is stored; `None` for a plugged-in or in-memory CA.
    pub store: Option<Arc<dyn CaStore>>,
    pub interval: Duration,
    pub grace_percent: u32,
    /// Validity of a rotated root.
    pub ttl: Duration,
    pub metrics: Metrics,
    pub leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for RootChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootChecker")
            .field("interval", &self.interval)
            .field("grace_percent", &self.grace_percent)
            .finish_non_exhaustive()
    }
}

// === impl RootChecker ===

impl RootChecker {
    /// Checks every `interval` until `shutdown`; bumps `changed` whenever the root changes.
    pub async fn run(self, changed: watch::Sender<u64>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.check(SystemTime::now()).await {
                Ok(true) => {
                    changed.send_modify(|g| *g += 1);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "root check failed; retrying next interval"),
            }
            let info = self.ca.info();
            self.metrics.root_expiry.set(
                info.root_not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            );
        }
    }

    /// One check; returns whether the root in use changed.
    pub async fn check(&self, now: SystemTime) -> Result<bool, crate::ca::store::StoreError> {
        let info = self.ca.info();
        let Some(store) = &self.store else {
            if root::in_grace_window(
                info.root_not_before,
                info.root_not_after,
                self.grace_percent,
                now,
            ) {
                tracing::warn!(
                    not_after = ?info.root_not_after,
                    self_signed = info.self_signed,
                    "the root certificate is close to expiry and Citadel does not own it: replace it"
                );
            }
            return Ok(false);
        };
        // Pick up a root another replica stored.
        let bundle = self.ca.bundle();
        if let Some(stored) = store.load().await?
            && stored != bundle
        {
            self.ca.replace(stored, &store.describe())?;
            tracing::info!(store = %store.describe(), "loaded a newer root from the store");
            return Ok(true);
        }
        let info = self.ca.info();
        if !root::in_grace_window(
            info.root_not_before,
            info.root_not_after,
            self.grace_percent,
            now,
        ) {
            return Ok(false);
        }
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let rotated = root::rotate(&bundle, self.ttl, now)?;
        store.update(rotated.clone()).await?;
        self.ca.replace(rotated, &store.describe())?;
        self.metrics.root_rotations.inc();
        let new = self.ca.info();
        tracing::info!(
            old_not_after = ?info.root_not_after,
            new_not_after = ?new.root_not_after,
            "self-signed root rotated (same key)"
        );
        Ok(true)
    }
}
