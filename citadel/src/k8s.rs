//! The Kubernetes backends: the self-signed CA in secret `istio-ca-secret` (type
//! `istio.io/ca-root`), a plugged-in CA from secret `cacerts`, workload secrets `istio.<sa>`
//! (type `istio.io/key-and-cert`), leader election on a `coordination.k8s.io` Lease, and the
//! TokenReview authenticator of the CSR API.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use mesh_runtime::Shutdown;
use tokio::sync::{mpsc, watch};

use crate::auth::{AuthError, Authenticator, Credentials};
use crate::ca::store::{CA_CERT, CA_KEY, CERT_CHAIN, CaStore, ROOT_CERT, StoreError};
use crate::ca::{CaBundle, Identity};
use crate::secrets::{self, SecretKey, SecretSink, SinkError, StoredSecret, WorkloadSecret};

/// Type of workload secrets.
pub const WORKLOAD_SECRET_TYPE: &str = "istio.io/key-and-cert";
/// Annotation naming the service account of a workload secret.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "istio.io/service-account.name";
/// Name of the secret holding the self-signed CA.
pub const CA_SECRET: &str = "istio-ca-secret";
/// The label on every secret Citadel writes (and on everything install.yaml creates), so
/// `kubectl delete secret -A -l app.kubernetes.io/part-of=istio` removes what outlives an
/// uninstall.
pub const MANAGED_LABEL: (&str, &str) = ("app.kubernetes.io/part-of", "istio");
/// Type of the CA secret.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";
/// Name of the secret holding a plugged-in CA.
pub const PLUGGED_SECRET: &str = "cacerts";

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
        })
}

/// Reads secret `cacerts` (ca-cert.pem, ca-key.pem, root-cert.pem, optional cert-chain.pem) in
/// `namespace`, if it exists.
pub async fn read_cacerts(
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<CaBundle>, StoreError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("secret {namespace}/{PLUGGED_SECRET}");
    let secret = api
        .get_opt(PLUGGED_SECRET)
        .await
        .map_err(|e| StoreError::Backend {
            what: what.clone(),
            message: e.to_string(),
        })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    let need = |key: &str| {
        text(&secret, key).ok_or_else(|| StoreError::Backend {
            what: what.clone(),
            message: format!("key {key} is missing"),
        })
    };
    Ok(Some(CaBundle {
        signing_cert: need(CA_CERT)?,
        signing_key: need(CA_KEY)?,
        root_cert: need(ROOT_CERT)?,
        cert_chain: text(&secret, CERT_CHAIN).unwrap_or_default(),
    }))
}

/// The self-signed CA in secret `istio-ca-secret`.
#[derive(Debug, Clone)]
pub struct KubeCaStore {
    api: Api<Secret>,
    namespace: String,
}

// === impl KubeCaStore ===

impl KubeCaStore {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            what: self.describe(),
            message: e.to_string(),
        }
    }

    fn secret(&self, bundle: &CaBundle) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_LABEL.0.to_string(),
                    MANAGED_LABEL.1.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some(CA_SECRET_TYPE.into()),
            data: Some(BTreeMap::from([
                (
                    CA_CERT.to_string(),
                    ByteString(bundle.signing_cert.clone().into_bytes()),
                ),
                (
                    CA_KEY.to_string(),
                    ByteString(bundle.signing_key.clone().into_bytes()),
                ),
            ])),
            ..Default::default()
        }
    }

    async fn read(&self) -> Result<Option<CaBundle>, StoreError> {
        let Some(secret) = self.api.get_opt(CA_SECRET).await.map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let need =
            |key: &str| text(&secret, key).ok_or_else(|| self.err(format!("key {key} is missing")));
        let cert = need(CA_CERT)?;
        Ok(Some(CaBundle {
            signing_key: need(CA_KEY)?,
            root_cert: cert.clone(),
            signing_cert: cert,
            cert_chain: String::new(),
        }))
    }
}

impl CaStore for KubeCaStore {
    fn describe(&self) -> String {
        format!("secret {}/{CA_SECRET}", self.namespace)
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<CaBundle>, StoreError>> {
        Box::pin(self.read())
    }

    fn create(&self, bundle: CaBundle) -> BoxFuture<'_, Result<CaBundle, StoreError>> {
        Box::pin(async move {
            match self
                .api
                .create(&PostParams::default(), &self.secret(&bundle))
                .await
            {
                Ok(_) => Ok(bundle),
                // Another replica created it first: use theirs.
                Err(e) if is_status(&e, 409) => self
                    .read()
                    .await?
                    .ok_or_else(|| self.err("created concurrently, then gone")),
                Err(e) => Err(self.err(e)),
            }
        })
    }

    fn update(&self, bundle: CaBundle) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let current = self.api.get(CA_SECRET).await.map_err(|e| self.err(e))?;
            let mut next = self.secret(&bundle);
            next.metadata.resource_version = current.metadata.resource_version;
            self.api
                .replace(CA_SECRET, &PostParams::default(), &next)
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }
}

/// Workload secrets `istio.<sa>` of type `istio.io/key-and-cert`, read from a watch cache (so
/// periodic resyncs cost the API server nothing) and written through the API.
pub struct KubeSecretSink {
    client: kube::Client,
    cache: Arc<Mutex<HashMap<SecretKey, StoredSecret>>>,
}

impl std::fmt::Debug for KubeSecretSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecretSink").finish_non_exhaustive()
    }
}

// === impl KubeSecretSink ===

impl KubeSecretSink {
    /// Starts the watch of workload secrets in every namespace and returns once the first list
    /// is in (or on shutdown). Deletions and changes not made by Citadel are sent to `events`.
    pub async fn start(
        client: kube::Client,
        events: mpsc::Sender<SecretKey>,
        shutdown: Shutdown,
    ) -> Self {
        let cache: Arc<Mutex<HashMap<SecretKey, StoredSecret>>> = Arc::default();
        let (synced_tx, mut synced_rx) = watch::channel(false);
        tokio::spawn(watch_secrets(
            client.clone(),
            cache.clone(),
            events,
            synced_tx,
            shutdown.clone(),
        ));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = synced_rx.wait_for(|s| *s) => {}
        }
        Self { client, cache }
    }

    fn err(key: &SecretKey, e: impl std::fmt::Display) -> SinkError {
        SinkError::Backend {
            what: format!("secret {key}"),
            message: e.to_string(),
        }
    }
}

fn key_of(secret: &Secret) -> Option<SecretKey> {
    let ns = secret.metadata.namespace.clone()?;
    let name = secret.metadata.name.as_deref()?;
    let sa = name.strip_prefix(secrets::SECRET_PREFIX)?;
    Some(SecretKey::new(ns, sa))
}

fn stored_of(secret: &Secret) -> StoredSecret {
    StoredSecret {
        cert_chain: text(secret, secrets::CERT_CHAIN).unwrap_or_default(),
        root_cert: text(secret, secrets::ROOT_CERT).unwrap_or_default(),
        has_key: text(secret, secrets::KEY).is_some_and(|k| !k.is_empty()),
    }
}

async fn watch_secrets(
    client: kube::Client,
    cache: Arc<Mutex<HashMap<SecretKey, StoredSecret>>>,
    events: mpsc::Sender<SecretKey>,
    synced: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let api: Api<Secret> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("type={WORKLOAD_SECRET_TYPE}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut initial: Option<HashMap<SecretKey, StoredSecret>> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        let mut notify = Vec::new();
        match event {
            Ok(watcher::Event::Init) => initial = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(k) = key_of(&s) {
                    initial
                        .get_or_insert_with(HashMap::new)
                        .insert(k, stored_of(&s));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let fresh = initial.take().unwrap_or_default();
                let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                // Anything that vanished while the watch was down is a deletion.
                notify.extend(c.keys().filter(|k| !fresh.contains_key(*k)).cloned());
                *c = fresh;
                drop(c);
                synced.send_replace(true);
            }
            Ok(watcher::Event::Apply(s)) => {
                if let Some(k) = key_of(&s) {
                    let new = stored_of(&s);
                    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                    if c.get(&k) != Some(&new) {
                        notify.push(k.clone());
                    }
                    c.insert(k, new);
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if let Some(k) = key_of(&s) {
                    cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                    notify.push(k);
                }
            }
            Err(e) => tracing::warn!(error = %e, "secret watch failed; retrying with backoff"),
        }
        for k in notify {
            if events.send(k).await.is_err() {
                return;
            }
        }
    }
}

impl SecretSink for KubeSecretSink {
    fn describe(&self) -> String {
        format!("Kubernetes secrets of type {WORKLOAD_SECRET_TYPE}")
    }

    fn get<'a>(
        &'a self,
        key: &'a SecretKey,
    ) -> BoxFuture<'a, Result<Option<StoredSecret>, SinkError>> {
        Box::pin(async move {
            Ok(self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .cloned())
        })
    }

    fn put(&self, secret: WorkloadSecret) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let key = secret.key.clone();
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
            let name = key.secret_name();
            let obj = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(key.namespace.clone()),
                    annotations: Some(BTreeMap::from([(
                        SERVICE_ACCOUNT_ANNOTATION.to_string(),
                        key.service_account.clone(),
                    )])),
                    labels: Some(BTreeMap::from([(
                        MANAGED_LABEL.0.to_string(),
                        MANAGED_LABEL.1.to_string(),
                    )])),
                    ..Default::default()
                },
                type_: Some(WORKLOAD_SECRET_TYPE.into()),
                data: Some(BTreeMap::from([
                    (
                        secrets::CERT_CHAIN.to_string(),
                        ByteString(secret.cert_chain.clone().into_bytes()),
                    ),
                    (
                        secrets::KEY.to_string(),
                        ByteString(secret.private_key.clone().into_bytes()),
                    ),
                    (
                        secrets::ROOT_CERT.to_string(),
                        ByteString(secret.root_cert.clone().into_bytes()),
                    ),
                ])),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) => {
                    // Exists: replace it whole (unconditional update; Citadel owns it).
                    api.replace(&name, &PostParams::default(), &obj)
                        .await
                        .map_err(|e| Self::err(&key, e))?;
                }
                Err(e) => return Err(Self::err(&key, e)),
            }
            // The watch will say the same soon; until then, don't act on the old content.
            self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
                key,
                StoredSecret {
                    cert_chain: secret.cert_chain,
                    root_cert: secret.root_cert,
                    has_key: !secret.private_key.is_empty(),
                },
            );
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a SecretKey) -> BoxFuture<'a, Result<bool, SinkError>> {
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            match api
                .delete(&key.secret_name(), &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_status(&e, 404) => Ok(false),
                Err(e) => Err(Self::err(key, e)),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SecretKey>, SinkError>> {
        Box::pin(async move {
            Ok(self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect())
        })
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease: take it when free or expired, renew it
/// every third of its duration, give it up on shutdown.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

// === impl LeaderElector ===

impl LeaderElector {
    pub fn new(client: kube::Client, namespace: &str, name: &str, duration: Duration) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "citadel".into());
        let mut nonce = [0u8; 4];
        let _ = getrandom::fill(&mut nonce);
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: format!("{host}_{}_{nonce}", std::process::id()),
            duration,
        }
    }

    /// Runs until `shutdown`, publishing whether this replica leads.
    pub async fn run(self, leader: watch::Sender<bool>, shutdown: Shutdown) {
        let retry = self.duration / 3;
        let mut last_renew: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renew = Some(tokio::time::Instant::now());
                    if !*leader.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                        leader.send_replace(true);
                    }
                }
                Ok(false) => {
                    if *leader.borrow() {
                        tracing::warn!(lease = %self.name, "lost leadership");
                    }
                    last_renew = None;
                    leader.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease update failed");
                    // Keep leading only while the lease we hold cannot have expired.
                    let expired = last_renew.is_none_or(|t| t.elapsed() >= self.duration - retry);
                    if expired && *leader.borrow() {
                        tracing::warn!(lease = %self.name, "lost leadership (cannot renew)");
                        leader.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "cannot release the lease");
            }
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_status(&e, 409) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(&self.identity);
        if !mine {
            let held = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty());
            let renewed = spec
                .renew_time
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or(0);
            let their = i64::from(spec.lease_duration_seconds.unwrap_or(secs)) * 1000;
            let expired = Timestamp::now().as_millisecond() > renewed + their;
            if held && !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(secs);
        // resourceVersion is kept: a concurrent update by another replica makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// The audience Citadel requires of service-account tokens.
pub const TOKEN_AUDIENCE: &str = "istio-ca";

/// Authenticates a Bearer service-account JWT with a `authentication.k8s.io/v1` TokenReview:
/// the API server checks signature, expiry, audience `istio-ca` and that the account (and a
/// bound pod) still exists; the identity is the account of `system:serviceaccount:NS:SA`.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    api: Api<TokenReview>,
    trust_domain: String,
    audience: String,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("trust_domain", &self.trust_domain)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

// === impl TokenReviewAuthenticator ===

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, trust_domain: &str) -> Self {
        Self {
            api: Api::all(client),
            trust_domain: trust_domain.to_string(),
            audience: TOKEN_AUDIENCE.to_string(),
        }
    }

    async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            status: None,
        };
        let out = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable {
                what: "TokenReview".into(),
                message: e.to_string(),
            })?;
        let status = out.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".into());
            return Err(AuthError::Token(why));
        }
        // The API server echoes the audiences the token was valid for.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(AuthError::Token(format!(
                "not valid for audience {} (valid for {audiences:?})",
                self.audience
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let Some((ns, sa)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(AuthError::Token(format!(
                "{username:?} is not a service account"
            )));
        };
        Identity::new(&self.trust_domain, ns, sa).map_err(|e| AuthError::Token(e.to_string()))
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn name(&self) -> &'static str {
        "Kubernetes TokenReview"
    }

    fn authenticate<'a>(
        &'a self,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<Option<Identity>, AuthError>> {
        Box::pin(async move {
            match &credentials.bearer {
                None => Ok(None),
                Some(token) => self.review(token).await.map(Some),
            }
        })
    }
}
