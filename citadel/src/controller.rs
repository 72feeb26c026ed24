//! The secret controller: one secret per service account, created when the account appears,
//! deleted when it goes, recreated when someone deletes it, and rewritten before it expires or
//! when the CA's root changes.
//!
//! It knows neither Kubernetes nor files: service accounts come from the config store's
//! snapshots, secrets go to a [`SecretSink`]. Work is a queue of (due time, account); a
//! [`RateLimiter`] spaces writes (API server protection), and every rotation time is pulled
//! forward by a per-secret jitter (up to a quarter of the grace period, at most
//! [`ControllerOptions::max_jitter`]), so secrets created together do not all rotate in the same
//! second. After a root change every secret is rewritten at a random point within
//! [`ControllerOptions::root_change_spread`]; that is safe because rotated roots keep their key
//! (see [`crate::ca::root`]). Nothing is written until the config store has synced once (an
//! empty first snapshot must not delete every secret) and while this replica is not the leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh_proto::Kind;
use mesh_runtime::{Shutdown, Snapshot};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::ca::{
    CertificateAuthority, Identity, KeyAlgorithm, LeafRequest, asn1_time, parse_cert, pem_certs,
};
use crate::metrics::Metrics;
use crate::secrets::{SecretKey, SecretSink, StoredSecret, WorkloadSecret};

/// How the controller issues and paces.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub trust_domain: String,
    /// Validity of workload certificates (`--workload-cert-ttl`).
    pub ttl: Duration,
    /// Rotate when less than this fraction of the lifetime is left
    /// (`--workload-cert-grace-period-ratio`).
    pub grace_ratio: f64,
    /// ... or less than this (`--workload-cert-min-grace-period`), whichever is longer.
    pub min_grace: Duration,
    pub key_algorithm: KeyAlgorithm,
    /// DNS SANs for (control-plane) accounts.
    pub dns_names: BTreeMap<SecretKey, Vec<String>>,
    pub namespaces: NamespaceFilter,
    /// Sustained writes (creates, rotations, deletes) per second.
    pub write_qps: f64,
    /// Writes allowed in a burst above the sustained rate.
    pub write_burst: u32,
    /// How often every secret is re-read and orphans are looked for.
    pub resync: Duration,
    /// Rewrites after a root change are spread over this long.
    pub root_change_spread: Duration,
    /// The largest jitter pulled off a rotation time.
    pub max_jitter: Duration,
}

/// Which namespaces get secrets: all but `exclude` when `include` is empty, else only
/// `include` minus `exclude`.
#[derive(Debug, Clone, Default)]
pub struct NamespaceFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Why a secret is (re)written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// There is no secret.
    Missing,
    /// Less than the grace period is left.
    Expiring,
    /// `root-cert.pem` is not the CA's root.
    RootChanged,
    /// The certificate is for another identity (e.g. the trust domain changed).
    IdentityChanged,
    /// The secret is incomplete or does not parse.
    Invalid,
}

/// What to do with one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Write(Reason),
    /// Up to date; look again at `rotate_at` (`grace` is the grace period, for jitter).
    Keep {
        rotate_at: SystemTime,
        grace: Duration,
    },
}

/// One secret as shown on `/debug/certz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertStatus {
    pub namespace: String,
    pub service_account: String,
    pub identity: String,
    /// Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
    pub rotate_at: u64,
}

/// What the controller currently manages, for status pages.
pub type StatusMap = Arc<Mutex<BTreeMap<SecretKey, CertStatus>>>;

/// What the controller reacts to.
#[derive(Debug)]
pub struct Inputs {
    /// Config snapshots (ServiceAccounts).
    pub config: watch::Receiver<Arc<Snapshot>>,
    /// Secrets changed or deleted behind the controller's back (Kubernetes watch).
    pub secret_events: mpsc::Receiver<SecretKey>,
    /// Bumped whenever the CA's root changes.
    pub root_changed: watch::Receiver<u64>,
    /// Whether this replica is the leader (always true in file mode).
    pub leader: watch::Receiver<bool>,
}

/// The secret controller.
pub struct Controller {
    ca: Arc<CertificateAuthority>,
    sink: Arc<dyn SecretSink>,
    options: ControllerOptions,
    metrics: Metrics,
    status: StatusMap,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("sink", &self.sink.describe())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// When a workload certificate is due for rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GracePolicy {
    /// Rotate when less than this fraction of the lifetime is left ...
    pub ratio: f64,
    /// ... or less than this, whichever is longer.
    pub min: Duration,
    /// How far the CA backdates `notBefore` ([`crate::ca::CaOptions::backdate`]). It is not
    /// part of the lifetime: counting it would make the grace period of a short-lived
    /// certificate longer than its TTL, and the certificate would be rotated continuously.
    pub backdate: Duration,
}

impl GracePolicy {
    /// The grace period of a certificate valid from `not_before` to `not_after`: `ratio` of its
    /// requested lifetime (`notAfter` minus the issue time, i.e. without the backdate), but at
    /// least `min`.
    pub fn grace(&self, not_before: SystemTime, not_after: SystemTime) -> Duration {
        let lifetime = not_after
            .duration_since(not_before)
            .unwrap_or(Duration::ZERO)
            .saturating_sub(self.backdate);
        lifetime.mul_f64(self.ratio.clamp(0.0, 1.0)).max(self.min)
    }
}

/// Decides whether the stored secret of `identity` must be rewritten.
pub fn decide(
    stored: Option<&StoredSecret>,
    identity: &Identity,
    root_pem: &str,
    now: SystemTime,
    policy: &GracePolicy,
) -> Decision {
    let Some(stored) = stored else {
        return Decision::Write(Reason::Missing);
    };
    if !stored.has_key {
        return Decision::Write(Reason::Invalid);
    }
    let Some((uris, not_before, not_after)) = leaf_facts(&stored.cert_chain) else {
        return Decision::Write(Reason::Invalid);
    };
    if stored.root_cert.trim() != root_pem.trim() {
        return Decision::Write(Reason::RootChanged);
    }
    if uris != [identity.uri()] {
        return Decision::Write(Reason::IdentityChanged);
    }
    let grace = policy.grace(not_before, not_after);
    let rotate_at = not_after
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if now >= rotate_at {
        Decision::Write(Reason::Expiring)
    } else {
        Decision::Keep { rotate_at, grace }
    }
}

/// The URI SANs and validity of the first certificate of a PEM chain.
fn leaf_facts(chain_pem: &str) -> Option<(Vec<String>, SystemTime, SystemTime)> {
    let ders = pem_certs(chain_pem).ok()?;
    let cert = parse_cert(ders.first()?).ok()?;
    let uris = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((
        uris,
        asn1_time(cert.validity().not_before),
        asn1_time(cert.validity().not_after),
    ))
}

// === impl NamespaceFilter ===

impl NamespaceFilter {
    pub fn allows(&self, namespace: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|n| n == namespace))
            && !self.exclude.iter().any(|n| n == namespace)
    }
}

// === impl Reason ===

impl Reason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Expiring => "expiring",
            Reason::RootChanged => "root_changed",
            Reason::IdentityChanged => "identity_changed",
            Reason::Invalid => "invalid",
        }
    }
}

// === impl Controller ===

impl Controller {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        sink: Arc<dyn SecretSink>,
        options: ControllerOptions,
        metrics: Metrics,
    ) -> Self {
        Self {
            ca,
            sink,
            options,
            metrics,
            status: StatusMap::default(),
        }
    }

    /// The status map `/debug/certz` reads.
    pub fn status(&self) -> StatusMap {
        self.status.clone()
    }

    /// Runs until `shutdown`.
    pub async fn run(self, mut inputs: Inputs, shutdown: Shutdown) {
        let mut desired: BTreeSet<SecretKey> = BTreeSet::new();
        let mut synced = false;
        let mut queue = Queue::default();
        let mut failures: HashMap<SecretKey, u32> = HashMap::new();
        let mut limiter = RateLimiter::new(self.options.write_qps, self.options.write_burst);
        let mut resync = tokio::time::interval(self.options.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        // A closed leader or root channel only means nothing will change there any more.
        let (mut leader_open, mut root_open) = (true, true);
        let mut config_dirty = true;
        tracing::info!(sink = %self.sink.describe(), "secret controller started");

        loop {
            // Apply the newest config first, so work is never done on stale accounts.
            if config_dirty || !synced {
                config_dirty = false;
                let snap = inputs.config.borrow_and_update().clone();
                if snap.is_synced() {
                    let next = self.accounts(&snap);
                    for key in desired.symmetric_difference(&next) {
                        queue.schedule(key.clone(), Instant::now());
                    }
                    desired = next;
                    self.metrics.managed_secrets.set(desired.len() as i64);
                    if !synced {
                        synced = true;
                        tracing::info!(accounts = desired.len(), "service accounts synced");
                        self.resync(&desired, &mut queue).await;
                    }
                }
            }
            let leader = *inputs.leader.borrow_and_update();
            if leader && !was_leader && synced {
                tracing::info!("leading: reconciling every secret");
                self.resync(&desired, &mut queue).await;
            }
            was_leader = leader;
            let due = if leader && synced {
                queue.next_due()
            } else {
                None
            };

            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = inputs.config.changed() => {
                    if r.is_err() { break }
                    config_dirty = true;
                }
                r = inputs.leader.changed(), if leader_open => leader_open = r.is_ok(),
                Some(key) = inputs.secret_events.recv() => {
                    // Secrets of namespaces this replica does not manage are another
                    // Citadel's (or nobody's) business: never touch them.
                    if self.options.namespaces.allows(&key.namespace) {
                        queue.schedule(key, Instant::now());
                    }
                }
                r = inputs.root_changed.changed(), if root_open => {
                    if r.is_err() {
                        root_open = false;
                        continue;
                    }
                    tracing::info!(secrets = desired.len(), "root changed: rewriting every secret");
                    for key in &desired {
                        let delay = jitter(key, "root", self.options.root_change_spread);
                        queue.schedule(key.clone(), Instant::now() + delay);
                    }
                }
                _ = resync.tick() => {
                    if synced && leader {
                        self.resync(&desired, &mut queue).await;
                    }
                }
                _ = sleep_until_opt(due) => {
                    let Some(key) = queue.pop_due(Instant::now()) else { continue };
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = limiter.acquire_if_write(self.needs_write(&key, &desired)) => {}
                    }
                    match self.reconcile(&key, desired.contains(&key)).await {
                        Ok(Some(at)) => {
                            failures.remove(&key);
                            queue.set(key, at);
                        }
                        Ok(None) => {
                            failures.remove(&key);
                            queue.remove(&key);
                        }
                        Err(e) => {
                            self.metrics.write_errors.inc();
                            let n = failures.entry(key.clone()).or_insert(0);
                            *n += 1;
                            let backoff = Duration::from_millis(500)
                                .saturating_mul(1 << (*n).min(10))
                                .min(Duration::from_secs(300));
                            tracing::warn!(secret = %key, error = %e, retry_in = ?backoff, "secret not reconciled");
                            queue.set(key, Instant::now() + backoff);
                        }
                    }
                }
            }
        }
        tracing::info!("secret controller stopped");
    }

    /// The accounts that should have secrets.
    fn accounts(&self, snap: &Snapshot) -> BTreeSet<SecretKey> {
        snap.of_kind(&Kind::ServiceAccount)
            .filter(|o| self.options.namespaces.allows(&o.key.namespace))
            .filter_map(|o| {
                match Identity::new(&self.options.trust_domain, &o.key.namespace, &o.key.name) {
                    Ok(_) => Some(SecretKey::new(&o.key.namespace, &o.key.name)),
                    Err(e) => {
                        tracing::warn!(account = %o.key, error = %e, "service account skipped");
                        None
                    }
                }
            })
            .collect()
    }

    /// Schedules every desired secret for a look, and every orphan for deletion.
    async fn resync(&self, desired: &BTreeSet<SecretKey>, queue: &mut Queue) {
        let now = Instant::now();
        for key in desired {
            queue.schedule(key.clone(), now);
        }
        match self.sink.list().await {
            Ok(existing) => {
                for key in existing {
                    if !desired.contains(&key) && self.options.namespaces.allows(&key.namespace) {
                        queue.schedule(key, now);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list secrets"),
        }
    }

    /// Cheap guess whether reconciling `key` writes (deletes always do; a rate-limit token is
    /// taken for any work on a desired key whose status says it is due).
    fn needs_write(&self, key: &SecretKey, desired: &BTreeSet<SecretKey>) -> bool {
        if !desired.contains(key) {
            return true;
        }
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match status.get(key) {
            Some(s) => s.rotate_at <= unix(SystemTime::now()),
            None => true,
        }
    }

    /// Brings one secret in line; returns when to look at it next (`None`: forget it).
    async fn reconcile(
        &self,
        key: &SecretKey,
        wanted: bool,
    ) -> Result<Option<Instant>, crate::secrets::SinkError> {
        if !wanted {
            if !self.options.namespaces.allows(&key.namespace) {
                return Ok(None);
            }
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            if self.sink.delete(key).await? {
                self.metrics.secrets_deleted.inc();
                tracing::info!(secret = %key, "secret deleted");
            }
            return Ok(None);
        }
        let identity = match Identity::new(
            &self.options.trust_domain,
            &key.namespace,
            &key.service_account,
        ) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(secret = %key, error = %e, "not issuing");
                return Ok(None);
            }
        };
        let stored = self.sink.get(key).await?;
        let now = SystemTime::now();
        let root = self.ca.root_cert();
        let decision = decide(stored.as_ref(), &identity, &root, now, &self.grace_policy());
        let reason = match decision {
            Decision::Keep { rotate_at, grace } => {
                let at = rotate_at
                    .checked_sub(self.jitter_for(key, &stored, grace))
                    .unwrap_or(rotate_at);
                if let Some((_, nb, na)) = stored.as_ref().and_then(|s| leaf_facts(&s.cert_chain)) {
                    self.record(key, &identity, nb, na, at);
                }
                return Ok(Some(to_instant(at)));
            }
            Decision::Write(reason) => reason,
        };

        let ca = self.ca.clone();
        let dns = self.options.dns_names.get(key).cloned().unwrap_or_default();
        let (ttl, alg) = (self.options.ttl, self.options.key_algorithm);
        let id = identity.clone();
        let issued = tokio::task::spawn_blocking(move || {
            let req = LeafRequest {
                identity: &id,
                dns_names: &dns,
                ttl,
            };
            ca.issue(alg, &req, now)
        })
        .await;
        let issued = match issued {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                return Err(crate::secrets::SinkError::Backend {
                    what: key.to_string(),
                    message: format!("issuing certificate: {e}"),
                });
            }
            Err(e) => {
                return Err(crate::secrets::SinkError::Backend {
                    what: key.to_string(),
                    message: format!("issuing task failed: {e}"),
                });
            }
        };
        self.metrics.issued("secret");
        let not_before = issued.issued.not_before;
        let not_after = issued.issued.not_after;
        self.sink
            .put(WorkloadSecret {
                key: key.clone(),
                cert_chain: issued.issued.cert_chain,
                private_key: issued.key,
                root_cert: issued.issued.root_cert,
            })
            .await?;
        let operation = if reason == Reason::Missing {
            "create"
        } else {
            self.metrics
                .rotations
                .get_or_create(&vec![("reason", reason.label().to_string())])
                .inc();
            "rotate"
        };
        self.metrics
            .secrets_written
            .get_or_create(&vec![("operation", operation.to_string())])
            .inc();
        tracing::info!(secret = %key, identity = %identity, reason = reason.label(), not_after = unix(not_after), "secret written");

        let grace = self.grace_policy().grace(not_before, not_after);
        let rotate_at = not_after.checked_sub(grace).unwrap_or(now);
        let at = rotate_at
            .checked_sub(jitter(
                key,
                &unix(not_after).to_string(),
                self.jitter_window(grace),
            ))
            .unwrap_or(rotate_at)
            .max(now);
        self.record(key, &identity, not_before, not_after, at);
        Ok(Some(to_instant(at)))
    }

    fn grace_policy(&self) -> GracePolicy {
        GracePolicy {
            ratio: self.options.grace_ratio,
            min: self.options.min_grace,
            backdate: self.ca.options().backdate,
        }
    }

    fn jitter_window(&self, grace: Duration) -> Duration {
        (grace / 4).min(self.options.max_jitter)
    }

    fn jitter_for(
        &self,
        key: &SecretKey,
        stored: &Option<StoredSecret>,
        grace: Duration,
    ) -> Duration {
        let salt = stored
            .as_ref()
            .and_then(|s| leaf_facts(&s.cert_chain))
            .map(|(_, _, na)| unix(na).to_string())
            .unwrap_or_default();
        jitter(key, &salt, self.jitter_window(grace))
    }

    fn record(
        &self,
        key: &SecretKey,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
        rotate_at: SystemTime,
    ) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key.clone(),
                CertStatus {
                    namespace: key.namespace.clone(),
                    service_account: key.service_account.clone(),
                    identity: identity.uri(),
                    not_before: unix(not_before),
                    not_after: unix(not_after),
                    rotate_at: unix(rotate_at),
                },
            );
    }
}

/// A deterministic pseudo-random duration in `[0, window)` for `key` and `salt`: the same
/// certificate always gets the same jitter, different ones spread evenly.
fn jitter(key: &SecretKey, salt: &str, window: Duration) -> Duration {
    if window.is_zero() {
        return Duration::ZERO;
    }
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    salt.hash(&mut h);
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    window.mul_f64(fraction)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn to_instant(at: SystemTime) -> Instant {
    let now = SystemTime::now();
    match at.duration_since(now) {
        Ok(d) => Instant::now() + d,
        Err(_) => Instant::now(),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Work items by due time; one entry per secret.
#[derive(Debug, Default)]
struct Queue {
    by_key: HashMap<SecretKey, Instant>,
    by_time: BTreeSet<(Instant, SecretKey)>,
}

// === impl Queue ===

impl Queue {
    /// Schedules `key` at `at` unless it is already due earlier.
    fn schedule(&mut self, key: SecretKey, at: Instant) {
        match self.by_key.get(&key) {
            Some(existing) if *existing <= at => {}
            _ => self.set(key, at),
        }
    }

    /// Schedules `key` at `at`, replacing any earlier or later time.
    fn set(&mut self, key: SecretKey, at: Instant) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    fn remove(&mut self, key: &SecretKey) {
        if let Some(old) = self.by_key.remove(key) {
            self.by_time.remove(&(old, key.clone()));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<SecretKey> {
        let (at, key) = self.by_time.first()?.clone();
        if at > now {
            return None;
        }
        self.by_time.remove(&(at, key.clone()));
        self.by_key.remove(&key);
        Some(key)
    }
}

/// A token bucket: `qps` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: u32,
    tokens: f64,
    last: Instant,
}

// === impl RateLimiter ===

impl RateLimiter {
    pub fn new(qps: f64, burst: u32) -> Self {
        let qps = if qps.is_finite() && qps > 0.0 {
            qps
        } else {
            1e9
        };
        let burst = burst.max(1);
        Self {
            interval: Duration::from_secs_f64(1.0 / qps),
            burst,
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(self.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return;
        }
        let wait = self.interval.mul_f64(1.0 - self.tokens);
        tokio::time::sleep(wait).await;
        self.tokens = 0.0;
        self.last = Instant::now();
    }

    async fn acquire_if_write(&mut self, write: bool) {
        if write {
            self.acquire().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaOptions, root};

    fn ca() -> CertificateAuthority {
        let b = root::self_signed(
            KeyAlgorithm::EcdsaP256,
            "cluster.local",
            Duration::from_secs(86400 * 365),
            SystemTime::now(),
        )
        .unwrap();
        CertificateAuthority::new(b, "test", CaOptions::default()).unwrap()
    }

    fn stored_for(
        ca: &CertificateAuthority,
        id: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> StoredSecret {
        let i = ca
            .issue(
                KeyAlgorithm::EcdsaP256,
                &LeafRequest {
                    identity: id,
                    dns_names: &[],
                    ttl,
                },
                now,
            )
            .unwrap();
        StoredSecret {
            cert_chain: i.issued.cert_chain,
            root_cert: i.issued.root_cert,
            has_key: true,
        }
    }

    #[test]
    fn decides_by_grace_root_and_identity() {
        let ca = ca();
        let id = Identity::new("cluster.local", "default", "a").unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let s = stored_for(&ca, &id, day, now);
        let root = ca.root_cert();
        let policy = GracePolicy {
            ratio: 0.5,
            min: Duration::from_secs(600),
            backdate: ca.options().backdate,
        };
        assert_eq!(
            decide(None, &id, &root, now, &policy),
            Decision::Write(Reason::Missing)
        );
        // Fresh: keep until half the TTL is left (the one-minute backdate does not count).
        match decide(Some(&s), &id, &root, now, &policy) {
            Decision::Keep { rotate_at, .. } => {
                let d = rotate_at.duration_since(now).unwrap().as_secs();
                assert!((43_199..=43_200).contains(&d), "{d}");
            }
            other => panic!("{other:?}"),
        }
        let later = now + Duration::from_secs(43_300);
        assert_eq!(
            decide(Some(&s), &id, &root, later, &policy),
            Decision::Write(Reason::Expiring)
        );
        // The minimum grace period wins over a small ratio.
        let late = now + day - Duration::from_secs(500);
        assert_eq!(
            decide(
                Some(&s),
                &id,
                &root,
                late,
                &GracePolicy {
                    ratio: 0.0,
                    ..policy
                }
            ),
            Decision::Write(Reason::Expiring)
        );
        let other_root = root::self_signed(KeyAlgorithm::EcdsaP256, "x", day, now)
            .unwrap()
            .root_cert;
        assert_eq!(
            decide(Some(&s), &id, &other_root, now, &policy),
            Decision::Write(Reason::RootChanged)
        );
        let other = Identity::new("cluster.local", "default", "b").unwrap();
        assert_eq!(
            decide(Some(&s), &other, &root, now, &policy),
            Decision::Write(Reason::IdentityChanged)
        );
        let broken = StoredSecret {
            cert_chain: "x".into(),
            ..s.clone()
        };
        assert_eq!(
            decide(Some(&broken), &id, &root, now, &policy),
            Decision::Write(Reason::Invalid)
        );
        let keyless = StoredSecret {
            has_key: false,
            ..s
        };
        assert_eq!(
            decide(Some(&keyless), &id, &root, now, &policy),
            Decision::Write(Reason::Invalid)
        );
    }

    /// The backdate of `notBefore` is not part of the lifetime: a 4 s certificate with ratio 0.5
    /// is rotated when about 2 s are left, not right away (a 64 s "lifetime" would give a 32 s
    /// grace period, longer than the TTL, and a rotation on every look).
    #[test]
    fn short_ttl_rotates_at_half_the_ttl_not_continuously() {
        let ca = ca();
        assert_eq!(ca.options().backdate, Duration::from_secs(60));
        let id = Identity::new("cluster.local", "default", "a").unwrap();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(4);
        let s = stored_for(&ca, &id, ttl, now);
        let root = ca.root_cert();
        let policy = GracePolicy {
            ratio: 0.5,
            min: Duration::from_secs(1),
            backdate: ca.options().backdate,
        };
        let (_, not_before, not_after) = leaf_facts(&s.cert_chain).unwrap();
        assert_eq!(
            not_after.duration_since(not_before).unwrap(),
            ttl + Duration::from_secs(60)
        );
        assert_eq!(policy.grace(not_before, not_after), Duration::from_secs(2));
        // Just issued: kept, and due when 2 s are left (1-2 s from now; times are whole seconds).
        match decide(Some(&s), &id, &root, now, &policy) {
            Decision::Keep { rotate_at, grace } => {
                assert_eq!(grace, Duration::from_secs(2));
                assert_eq!(
                    not_after.duration_since(rotate_at).unwrap(),
                    Duration::from_secs(2)
                );
                let wait = rotate_at.duration_since(now).unwrap();
                assert!(
                    wait > Duration::from_secs(1) && wait <= Duration::from_secs(2),
                    "{wait:?}"
                );
            }
            other => panic!("rotates right away: {other:?}"),
        }
        // Still kept a little later; rotated once less than 2 s are left.
        assert!(matches!(
            decide(
                Some(&s),
                &id,
                &root,
                now + Duration::from_millis(900),
                &policy
            ),
            Decision::Keep { .. }
        ));
        assert_eq!(
            decide(
                Some(&s),
                &id,
                &root,
                now + Duration::from_millis(2100),
                &policy
            ),
            Decision::Write(Reason::Expiring)
        );
        // The minimum grace period still wins when it is longer.
        let long_min = GracePolicy {
            min: Duration::from_secs(3),
            ..policy
        };
        assert_eq!(
            long_min.grace(not_before, not_after),
            Duration::from_secs(3)
        );
    }

    /// The controller itself: a freshly written 4 s secret is next looked at about 2 s later
    /// (minus jitter), and looking at it again right away does not rewrite it.
    #[tokio::test]
    async fn short_ttl_secret_is_not_rewritten_on_every_look() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(crate::secrets::file::FileSink::new(dir.path()));
        let options = ControllerOptions {
            trust_domain: "cluster.local".into(),
            ttl: Duration::from_secs(4),
            grace_ratio: 0.5,
            min_grace: Duration::from_secs(1),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            dns_names: BTreeMap::new(),
            namespaces: NamespaceFilter::default(),
            write_qps: 100.0,
            write_burst: 10,
            resync: Duration::from_secs(60),
            root_change_spread: Duration::from_secs(1),
            max_jitter: Duration::from_secs(600),
        };
        let metrics = Metrics::default();
        let c = Controller::new(Arc::new(ca()), sink.clone(), options, metrics);
        let key = SecretKey::new("default", "a");
        let start = Instant::now();
        let next = c.reconcile(&key, true).await.unwrap().unwrap();
        let first = sink.get(&key).await.unwrap().unwrap();
        // Due when 2 s of the TTL are left, pulled forward by at most a quarter of the grace
        // period (0.5 s); whole-second times take up to another second off.
        let wait = next.duration_since(start);
        assert!(
            wait >= Duration::from_millis(400) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        let again = c.reconcile(&key, true).await.unwrap().unwrap();
        assert_eq!(sink.get(&key).await.unwrap().unwrap(), first, "rewritten");
        assert!(again > Instant::now(), "due right away");
    }

    /// A sink that remembers deletions.
    #[derive(Default)]
    struct DeletionsSink(std::sync::Mutex<Vec<SecretKey>>);

    impl SecretSink for DeletionsSink {
        fn describe(&self) -> String {
            "test sink".into()
        }
        fn get<'a>(
            &'a self,
            _: &'a SecretKey,
        ) -> futures::future::BoxFuture<'a, Result<Option<StoredSecret>, crate::secrets::SinkError>>
        {
            Box::pin(async { Ok(None) })
        }
        fn put(
            &self,
            _: WorkloadSecret,
        ) -> futures::future::BoxFuture<'_, Result<(), crate::secrets::SinkError>> {
            Box::pin(async { Ok(()) })
        }
        fn delete<'a>(
            &'a self,
            key: &'a SecretKey,
        ) -> futures::future::BoxFuture<'a, Result<bool, crate::secrets::SinkError>> {
            self.0.lock().unwrap().push(key.clone());
            Box::pin(async { Ok(true) })
        }
        fn list(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<Vec<SecretKey>, crate::secrets::SinkError>>
        {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    #[tokio::test]
    async fn never_deletes_secrets_of_namespaces_it_does_not_manage() {
        let sink = Arc::new(DeletionsSink::default());
        let options = ControllerOptions {
            trust_domain: "cluster.local".into(),
            ttl: Duration::from_secs(3600),
            grace_ratio: 0.5,
            min_grace: Duration::from_secs(60),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            dns_names: BTreeMap::new(),
            namespaces: NamespaceFilter {
                include: vec!["mine".into()],
                exclude: Vec::new(),
            },
            write_qps: 100.0,
            write_burst: 10,
            resync: Duration::from_secs(60),
            root_change_spread: Duration::from_secs(1),
            max_jitter: Duration::from_secs(1),
        };
        let c = Controller::new(Arc::new(ca()), sink.clone(), options, Metrics::default());
        // Another Citadel's namespace: an unwanted secret there is left alone.
        let theirs = SecretKey::new("theirs", "a");
        assert_eq!(c.reconcile(&theirs, false).await.unwrap(), None);
        assert!(sink.0.lock().unwrap().is_empty());
        let mine = SecretKey::new("mine", "a");
        assert_eq!(c.reconcile(&mine, false).await.unwrap(), None);
        assert_eq!(*sink.0.lock().unwrap(), [mine]);
    }

    #[test]
    fn jitter_spreads_within_the_window() {
        let w = Duration::from_secs(100);
        let js: Vec<Duration> = (0..200)
            .map(|i| jitter(&SecretKey::new("ns", format!("sa{i}")), "s", w))
            .collect();
        assert!(js.iter().all(|j| *j < w));
        let early = js.iter().filter(|j| j.as_secs() < 50).count();
        assert!((60..140).contains(&early), "{early}");
        assert_eq!(
            jitter(&SecretKey::new("a", "b"), "s", w),
            jitter(&SecretKey::new("a", "b"), "s", w)
        );
    }

    #[test]
    fn namespace_filter() {
        let f = NamespaceFilter {
            include: vec![],
            exclude: vec!["kube-system".into()],
        };
        assert!(f.allows("default") && !f.allows("kube-system"));
        let f = NamespaceFilter {
            include: vec!["a".into()],
            exclude: vec![],
        };
        assert!(f.allows("a") && !f.allows("b"));
    }

    #[test]
    fn queue_keeps_earliest_and_pops_in_order() {
        let mut q = Queue::default();
        let t = Instant::now();
        q.schedule(SecretKey::new("a", "1"), t + Duration::from_secs(10));
        q.schedule(SecretKey::new("a", "1"), t + Duration::from_secs(5));
        q.schedule(SecretKey::new("a", "1"), t + Duration::from_secs(20));
        q.schedule(SecretKey::new("a", "2"), t + Duration::from_secs(1));
        assert_eq!(q.next_due(), Some(t + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t), None);
        assert_eq!(
            q.pop_due(t + Duration::from_secs(30)),
            Some(SecretKey::new("a", "2"))
        );
        assert_eq!(
            q.pop_due(t + Duration::from_secs(30)),
            Some(SecretKey::new("a", "1"))
        );
        assert_eq!(q.pop_due(t + Duration::from_secs(30)), None);
    }

    #[tokio::test]
    async fn rate_limiter_allows_burst_then_paces() {
        let mut r = RateLimiter::new(100.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            r.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(20));
        for _ in 0..10 {
            r.acquire().await;
        }
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(95) && e < Duration::from_millis(600),
            "{e:?}"
        );
    }
}
