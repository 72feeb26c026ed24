//! The JWKS of `jwksUri`s, fetched by Pilot itself and inlined into the proxies' `jwt_authn`
//! config, as Istio does: proxies never need a route to an issuer.
//!
//! [`JwksResolver`] keeps the last good key set of every URI the config names. A URI seen for
//! the first time is fetched before the push that needs it ([`JwksResolver::resolve`]); all
//! are fetched again every refresh interval (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`,
//! 20 minutes by default), and a changed key set makes a new push
//! ([`JwksResolver::subscribe`]). A fetch that fails keeps the last good keys; a URI that has
//! never been fetched gets [`FAKE_JWKS`], a key nobody holds, so tokens of that issuer are
//! refused (fail closed) rather than accepted unchecked, and that is logged.
//!
//! A rule that names neither `jwks` nor `jwksUri` has its keys found as Istio finds them, by
//! OpenID discovery: the issuer's [`discovery_uri`] is fetched (its key in the set is that
//! URI) and the `jwks_uri` it names is fetched in turn.
//!
//! The resolver knows no HTTP client: it fetches through a [`JwksFetcher`]
//! ([`super::jwks_fetch::HttpFetcher`] in Pilot, a fake in tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_runtime::Shutdown;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

/// Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL` default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(20 * 60);

/// The first retry of a failed fetch, between refreshes (then doubling up to the interval).
pub const RETRY_FIRST: Duration = Duration::from_secs(1);

/// How long a fetch may take when the rule gives no `timeout` (Istio's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A JWKS with one RSA key whose modulus is a number nobody knows the factors of: it parses,
/// so Envoy takes the config, and no token verifies against it. What a provider gets when
/// its keys could never be fetched.
pub const FAKE_JWKS: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"mesh-unfetched","e":"AQAB","n":"rDz0PF3Mga5JiQ21lulydXQJ9g8aetp_IStG5toCXqVNtmKGesr6OHgInACuaLoh5iQHNT_nXokR2ju61bF1ujYSwIa_ThH5xxXKy4YqGd2kY3nvUA09dXh16Z1TJlx9ikvvZ7fc1641c1yXnMTnigP8VHTQo-S53CwjXU4CL_8CUTTz_SKDrPRaWbBk1D6K0LF7y-8PurVOtu_KweMQwXQE404Iq2l0JlsEXsr5J0DHRQx0mOchA2TVG4mF-jZNe37_nNrLE-YgtuMH_ZzHw0MqsTxRkk9huK4f34ofyPFQD_Ol-QN4aqa54CkvXOz-LwJ0kB7Ki_c9be41xH8tZQ"}]}"#;

/// What an OpenID discovery document's URI ends with.
pub const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";

/// The OpenID discovery document of `issuer` (an `http(s)` URL), where its `jwks_uri` is
/// found; `None` for an issuer that is not a URL.
pub fn discovery_uri(issuer: &str) -> Option<String> {
    let base = issuer.trim_end_matches('/');
    let host = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))?;
    (!host.is_empty() && !host.contains(char::is_whitespace))
        .then(|| format!("{base}{DISCOVERY_SUFFIX}"))
}

/// Why a key set could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The URI does not parse or is not `http`/`https`.
    #[error("invalid JWKS URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// Connecting or reading failed.
    #[error("fetching {uri}: {reason}")]
    Fetch { uri: String, reason: String },
    /// The server answered with a status other than 2xx.
    #[error("fetching {uri}: HTTP status {status}")]
    Status { uri: String, status: u16 },
    /// No complete answer within the timeout.
    #[error("fetching {uri}: no answer within {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
    /// The HTTP client could not be built.
    #[error("JWKS client: {0}")]
    Client(String),
    /// An OpenID discovery document without a `jwks_uri`.
    #[error("{uri}: not an OpenID discovery document with a jwks_uri")]
    NotDiscovery { uri: String },
    /// The body is not a JSON Web Key Set.
    #[error("{uri}: not a JWKS: {reason}")]
    NotJwks { uri: String, reason: String },
}

/// Gets the body of a JWKS URI. Implementations do the transport; checking that the body is
/// a JWKS is the resolver's.
pub trait JwksFetcher: Send + Sync + fmt::Debug + 'static {
    /// GETs `uri`, answering within `timeout`.
    fn fetch<'a>(
        &'a self,
        uri: &'a str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<String, JwksError>> + Send + 'a>>;
}

/// Checks that `text` is a JSON Web Key Set as Envoy reads one: an object whose `keys` is a
/// non-empty array of objects, each with a string `kty`. The reason names the first problem.
pub fn check_jwks(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    if keys.is_empty() {
        return Err("\"keys\" is empty".into());
    }
    for (i, key) in keys.iter().enumerate() {
        if key.get("kty").and_then(|k| k.as_str()).is_none() {
            return Err(format!("keys[{i}] has no \"kty\""));
        }
    }
    Ok(())
}

/// The key sets of a generation: JWKS text by URI. A URI not in it has never been fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksSet {
    keys: BTreeMap<String, Arc<str>>,
}

// === impl JwksSet ===

impl JwksSet {
    /// A set of the given keys (tests, and the resolver).
    pub fn from_keys(keys: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            keys: keys.into_iter().map(|(u, k)| (u, Arc::from(k))).collect(),
        }
    }

    /// The last good JWKS of `uri`, if it was ever fetched.
    pub fn get(&self, uri: &str) -> Option<&str> {
        self.keys.get(uri).map(|k| &**k)
    }

    /// The URIs it has keys for.
    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

/// A URI the config uses and what is known of it.
#[derive(Debug, Clone)]
struct Entry {
    /// The fetch timeout (the shortest any rule naming the URI asks for).
    timeout: Duration,
    /// The last good key set.
    keys: Option<Arc<str>>,
    /// Why the last fetch failed, if it did.
    error: Option<JwksError>,
}

/// Fetches, caches and refreshes the key sets of the config's `jwksUri`s.
pub struct JwksResolver {
    fetcher: Arc<dyn JwksFetcher>,
    refresh: Duration,
    /// The first retry of a failed fetch between refreshes.
    retry: Duration,
    entries: Mutex<BTreeMap<String, Entry>>,
    published: watch::Sender<Arc<JwksSet>>,
    fetched: Counter,
    failed: Counter,
}

impl fmt::Debug for JwksResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksResolver")
            .field("fetcher", &self.fetcher)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

// === impl JwksResolver ===

impl JwksResolver {
    /// A resolver fetching through `fetcher`, refreshing every `refresh`.
    pub fn new(fetcher: Arc<dyn JwksFetcher>, refresh: Duration) -> Arc<Self> {
        Self::with_retry(fetcher, refresh, RETRY_FIRST)
    }

    /// A resolver whose first retry of a failed fetch comes after `retry` (tests).
    pub fn with_retry(
        fetcher: Arc<dyn JwksFetcher>,
        refresh: Duration,
        retry: Duration,
    ) -> Arc<Self> {
        let (published, _) = watch::channel(Arc::new(JwksSet::default()));
        Arc::new(Self {
            fetcher,
            refresh,
            retry,
            entries: Mutex::new(BTreeMap::new()),
            published,
            fetched: Counter::default(),
            failed: Counter::default(),
        })
    }

    /// Registers Istio's fetch counters, `pilot_jwks_resolver_network_fetch_success_total`
    /// and `pilot_jwks_resolver_network_fetch_fail_total`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pilot_jwks_resolver_network_fetch_success",
            "JWKS fetches that got a key set",
            self.fetched.clone(),
        );
        registry.register(
            "pilot_jwks_resolver_network_fetch_fail",
            "JWKS fetches that failed (the last good keys stay)",
            self.failed.clone(),
        );
    }

    /// The key sets as last published.
    pub fn current(&self) -> Arc<JwksSet> {
        self.published.borrow().clone()
    }

    /// Changes of the published key sets (a refresh that found new keys).
    pub fn subscribe(&self) -> watch::Receiver<Arc<JwksSet>> {
        self.published.subscribe()
    }

    /// Makes the resolver follow `wanted` (URI and fetch timeout, as the config names them):
    /// URIs it did not know are fetched now, URIs no longer named are forgotten. Returns the
    /// key sets for the config (and publishes them when they changed).
    pub async fn resolve(&self, wanted: &BTreeMap<String, Duration>) -> Arc<JwksSet> {
        let new: Vec<(String, Duration)> = {
            let mut entries = self.lock();
            entries.retain(|uri, _| wanted.contains_key(uri));
            for (uri, timeout) in wanted {
                if let Some(e) = entries.get_mut(uri) {
                    e.timeout = *timeout;
                }
            }
            wanted
                .iter()
                .filter(|(uri, _)| !entries.contains_key(*uri))
                .map(|(u, t)| (u.clone(), *t))
                .collect()
        };
        let fetched = futures::future::join_all(
            new.iter()
                .map(|(uri, timeout)| self.fetch_checked(uri, *timeout)),
        )
        .await;
        {
            let mut entries = self.lock();
            for ((uri, timeout), result) in new.into_iter().zip(fetched) {
                let entry = entries.entry(uri.clone()).or_insert(Entry {
                    timeout,
                    keys: None,
                    error: None,
                });
                record(&uri, entry, result);
            }
        }
        self.publish()
    }

    /// Fetches every known URI again: a new key set replaces the old one, a failure keeps it.
    /// Publishes when anything changed.
    pub async fn refresh_now(&self) -> Arc<JwksSet> {
        let known: Vec<(String, Duration)> = self
            .lock()
            .iter()
            .map(|(u, e)| (u.clone(), e.timeout))
            .collect();
        let fetched = futures::future::join_all(
            known
                .iter()
                .map(|(uri, timeout)| self.fetch_checked(uri, *timeout)),
        )
        .await;
        {
            let mut entries = self.lock();
            for ((uri, _), result) in known.into_iter().zip(fetched) {
                // Forgotten while fetching: the config no longer names it.
                if let Some(entry) = entries.get_mut(&uri) {
                    record(&uri, entry, result);
                }
            }
        }
        self.publish()
    }

    /// Refreshes every interval until `shutdown`. Between refreshes, URIs whose last fetch
    /// failed are tried again after [`RETRY_FIRST`] (1s), doubling up to the interval, so an
    /// issuer that was down (its tokens refused, or its old keys kept) is caught up with soon
    /// after it answers rather than a whole interval later.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut next_refresh = tokio::time::Instant::now() + self.refresh;
        let mut retry = self.retry;
        loop {
            let failing = self.lock().values().any(|e| e.error.is_some());
            if !failing {
                retry = self.retry;
            }
            let wake = if failing {
                next_refresh.min(tokio::time::Instant::now() + retry)
            } else {
                next_refresh
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= next_refresh {
                self.refresh_now().await;
                next_refresh = tokio::time::Instant::now() + self.refresh;
                retry = self.retry;
            } else {
                self.refresh_failed().await;
                retry = (retry * 2).min(self.refresh);
            }
        }
    }

    /// Fetches again the URIs whose last fetch failed.
    pub async fn refresh_failed(&self) -> Arc<JwksSet> {
        let failed: Vec<(String, Duration)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.error.is_some())
            .map(|(u, e)| (u.clone(), e.timeout))
            .collect();
        let fetched = futures::future::join_all(
            failed
                .iter()
                .map(|(uri, timeout)| self.fetch_checked(uri, *timeout)),
        )
        .await;
        {
            let mut entries = self.lock();
            for ((uri, _), result) in failed.into_iter().zip(fetched) {
                if let Some(entry) = entries.get_mut(&uri) {
                    record(&uri, entry, result);
                }
            }
        }
        self.publish()
    }

    /// What `/debug/jwksz` shows: the refresh interval, and for each URI the config names the
    /// key ids of the keys held (what proxies get inline; none: they get [`FAKE_JWKS`]) and
    /// why the last fetch failed (`null` when it did not).
    pub fn status(&self) -> serde_json::Value {
        let uris: Vec<serde_json::Value> = self
            .lock()
            .iter()
            .map(|(uri, e)| {
                let kids: Option<Vec<String>> = e.keys.as_ref().map(|k| {
                    serde_json::from_str::<serde_json::Value>(k)
                        .ok()
                        .and_then(|v| v.get("keys")?.as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .map(|key| {
                            key.get("kid")
                                .and_then(|k| k.as_str())
                                .unwrap_or("")
                                .to_string()
                        })
                        .collect()
                });
                serde_json::json!({
                    "uri": uri,
                    "kids": kids,
                    "error": e.error.as_ref().map(|e| e.to_string()),
                })
            })
            .collect();
        serde_json::json!({"refreshIntervalSeconds": self.refresh.as_secs(), "uris": uris})
    }

    /// Why the last fetch of each URI failed (those whose last fetch failed).
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.lock()
            .iter()
            .filter_map(|(u, e)| Some((u.clone(), e.error.as_ref()?.to_string())))
            .collect()
    }

    /// Fetches a JWKS URI, or a discovery document and then the JWKS it names.
    async fn fetch_checked(&self, uri: &str, timeout: Duration) -> Result<String, JwksError> {
        let result = self.fetch_checked_once(uri, timeout).await;
        match &result {
            Ok(_) => self.fetched.inc(),
            Err(_) => self.failed.inc(),
        };
        result
    }

    async fn fetch_checked_once(&self, uri: &str, timeout: Duration) -> Result<String, JwksError> {
        let mut body = self.fetcher.fetch(uri, timeout).await?;
        let mut from = uri.to_string();
        if uri.ends_with(DISCOVERY_SUFFIX) {
            let jwks_uri = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|doc| Some(doc.get("jwks_uri")?.as_str()?.to_string()))
                .ok_or_else(|| JwksError::NotDiscovery {
                    uri: uri.to_string(),
                })?;
            body = self.fetcher.fetch(&jwks_uri, timeout).await?;
            from = jwks_uri;
        }
        check_jwks(&body).map_err(|reason| JwksError::NotJwks { uri: from, reason })?;
        Ok(body)
    }

    /// Publishes the current key sets when they differ from the published ones.
    fn publish(&self) -> Arc<JwksSet> {
        let set = JwksSet {
            keys: self
                .lock()
                .iter()
                .filter_map(|(u, e)| Some((u.clone(), e.keys.clone()?)))
                .collect(),
        };
        self.published.send_if_modified(|old| {
            if **old == set {
                return false;
            }
            *old = Arc::new(set);
            true
        });
        self.current()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records a fetch result in an entry, logging what it means for the proxies.
fn record(uri: &str, entry: &mut Entry, result: Result<String, JwksError>) {
    match result {
        Ok(body) => {
            if entry.keys.as_deref() != Some(body.as_str()) {
                tracing::info!(%uri, "JWKS fetched");
                entry.keys = Some(Arc::from(body));
            }
            entry.error = None;
        }
        Err(e) => {
            if entry.keys.is_some() {
                tracing::warn!(%uri, error = %e, "JWKS fetch failed; keeping the last good keys");
            } else {
                tracing::error!(
                    %uri,
                    error = %e,
                    "JWKS fetch failed and no keys were ever fetched; tokens of its issuer are refused"
                );
            }
            entry.error = Some(e);
        }
    }
}

/// Every URI in `uris` with the default timeout (tests).
pub fn wanted<'a>(uris: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Duration> {
    uris.into_iter()
        .map(|u| (u.to_string(), DEFAULT_TIMEOUT))
        .collect()
}

/// The URIs of a set, for logs and debug pages.
pub fn uri_list(set: &JwksSet) -> BTreeSet<String> {
    set.uris().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a table a test edits; counts fetches.
    #[derive(Debug, Default)]
    struct Table {
        answers: Mutex<BTreeMap<String, Result<String, JwksError>>>,
        fetches: Mutex<Vec<String>>,
    }

    impl Table {
        fn set(&self, uri: &str, answer: Result<&str, &str>) {
            let answer = answer.map(str::to_string).map_err(|r| JwksError::Fetch {
                uri: uri.into(),
                reason: r.into(),
            });
            self.answers.lock().unwrap().insert(uri.into(), answer);
        }
    }

    impl JwksFetcher for Table {
        fn fetch<'a>(
            &'a self,
            uri: &'a str,
            _timeout: Duration,
        ) -> Pin<Box<dyn Future<Output = Result<String, JwksError>> + Send + 'a>> {
            self.fetches.lock().unwrap().push(uri.to_string());
            let answer = self
                .answers
                .lock()
                .unwrap()
                .get(uri)
                .cloned()
                .unwrap_or_else(|| {
                    Err(JwksError::Fetch {
                        uri: uri.into(),
                        reason: "unreachable".into(),
                    })
                });
            Box::pin(async move { answer })
        }
    }

    const A: &str = r#"{"keys":[{"kty":"EC","kid":"a"}]}"#;
    const B: &str = r#"{"keys":[{"kty":"EC","kid":"b"}]}"#;

    fn setup() -> (Arc<Table>, Arc<JwksResolver>) {
        let table = Arc::new(Table::default());
        let resolver = JwksResolver::new(table.clone(), Duration::from_secs(3600));
        (table, resolver)
    }

    #[test]
    fn a_jwks_needs_keys_with_a_type() {
        assert!(check_jwks(A).is_ok());
        assert!(check_jwks(FAKE_JWKS).is_ok());
        assert_eq!(check_jwks("{}").unwrap_err(), "no \"keys\" array");
        assert_eq!(
            check_jwks(r#"{"keys":[]}"#).unwrap_err(),
            "\"keys\" is empty"
        );
        assert_eq!(
            check_jwks(r#"{"keys":[{"kid":"x"}]}"#).unwrap_err(),
            "keys[0] has no \"kty\""
        );
        assert!(check_jwks("<html>").unwrap_err().starts_with("not JSON"));
    }

    #[tokio::test]
    async fn new_uris_are_fetched_once_and_refreshed() {
        let (table, resolver) = setup();
        table.set("http://a/jwks", Ok(A));
        let set = resolver.resolve(&wanted(["http://a/jwks"])).await;
        assert_eq!(set.get("http://a/jwks"), Some(A));
        // Known: not fetched again by the next config.
        resolver.resolve(&wanted(["http://a/jwks"])).await;
        assert_eq!(table.fetches.lock().unwrap().len(), 1);

        let mut changes = resolver.subscribe();
        changes.borrow_and_update();
        table.set("http://a/jwks", Ok(B));
        let set = resolver.refresh_now().await;
        assert_eq!(set.get("http://a/jwks"), Some(B));
        assert!(changes.has_changed().unwrap(), "a rotation is published");
        changes.borrow_and_update();
        resolver.refresh_now().await;
        assert!(
            !changes.has_changed().unwrap(),
            "same keys: nothing to push"
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_good_keys() {
        let (table, resolver) = setup();
        table.set("http://a/jwks", Ok(A));
        resolver.resolve(&wanted(["http://a/jwks"])).await;
        table.set("http://a/jwks", Err("connection refused"));
        let set = resolver.refresh_now().await;
        assert_eq!((resolver.fetched.get(), resolver.failed.get()), (1, 1));
        assert_eq!(set.get("http://a/jwks"), Some(A));
        assert!(resolver.errors()["http://a/jwks"].contains("connection refused"));
        // Not a JWKS any more: also a failure.
        table.set("http://a/jwks", Ok("<html>"));
        let set = resolver.refresh_now().await;
        assert_eq!(set.get("http://a/jwks"), Some(A));
        assert!(resolver.errors()["http://a/jwks"].contains("not a JWKS"));
        let status = resolver.status();
        assert_eq!(
            status["uris"][0]["kids"],
            serde_json::json!(["a"]),
            "{status}"
        );
        assert!(
            status["uris"][0]["error"]
                .as_str()
                .unwrap()
                .contains("not a JWKS")
        );
    }

    #[tokio::test]
    async fn a_uri_never_fetched_has_no_keys_until_it_answers() {
        let (table, resolver) = setup();
        let set = resolver.resolve(&wanted(["http://down/jwks"])).await;
        assert_eq!(set.get("http://down/jwks"), None);
        table.set("http://down/jwks", Ok(A));
        let set = resolver.refresh_now().await;
        assert_eq!(set.get("http://down/jwks"), Some(A));
    }

    #[tokio::test]
    async fn discovery_documents_lead_to_the_keys() {
        let (table, resolver) = setup();
        let doc = discovery_uri("https://issuer.example/").unwrap();
        assert_eq!(
            doc,
            "https://issuer.example/.well-known/openid-configuration"
        );
        assert_eq!(discovery_uri("accounts"), None);
        table.set(&doc, Ok(r#"{"jwks_uri": "https://issuer.example/keys"}"#));
        table.set("https://issuer.example/keys", Ok(A));
        let set = resolver.resolve(&wanted([doc.as_str()])).await;
        assert_eq!(set.get(&doc), Some(A));
        table.set(&doc, Ok(r#"{"issuer": "x"}"#));
        resolver.refresh_now().await;
        assert!(resolver.errors()[&doc].contains("jwks_uri"));
    }

    #[tokio::test]
    async fn failed_fetches_are_retried_before_the_next_refresh() {
        let table = Arc::new(Table::default());
        let resolver = JwksResolver::with_retry(
            table.clone(),
            Duration::from_secs(3600),
            Duration::from_millis(10),
        );
        table.set("http://a/jwks", Ok(A));
        resolver
            .resolve(&wanted(["http://a/jwks", "http://down/jwks"]))
            .await;
        let shutdown = Shutdown::default();
        let task = tokio::spawn(resolver.clone().run(shutdown.clone()));
        table.fetches.lock().unwrap().clear();
        // Retries after 10ms, 20ms, 40ms...: only the failing URI, long before the hour.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fetches = table.fetches.lock().unwrap().clone();
        assert!(fetches.len() >= 3, "{fetches:?}");
        assert!(
            fetches.iter().all(|u| u == "http://down/jwks"),
            "{fetches:?}"
        );
        table.set("http://down/jwks", Ok(B));
        for _ in 0..100 {
            if resolver.current().get("http://down/jwks").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(resolver.current().get("http://down/jwks"), Some(B));
        // Nothing fails any more: quiet until the refresh.
        let n = table.fetches.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(table.fetches.lock().unwrap().len(), n);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn uris_the_config_drops_are_forgotten() {
        let (table, resolver) = setup();
        table.set("http://a/jwks", Ok(A));
        table.set("http://b/jwks", Ok(B));
        resolver
            .resolve(&wanted(["http://a/jwks", "http://b/jwks"]))
            .await;
        let set = resolver.resolve(&wanted(["http://b/jwks"])).await;
        assert_eq!(
            uri_list(&set),
            BTreeSet::from(["http://b/jwks".to_string()])
        );
        table.fetches.lock().unwrap().clear();
        resolver.refresh_now().await;
        assert_eq!(*table.fetches.lock().unwrap(), ["http://b/jwks"]);
    }
}
