//! `listchecker`: checks a `listentry` instance's `value` against a list (a whitelist, or a
//! blacklist with `blacklist: true`).
//!
//! The list is the `overrides` plus, with `providerUrl`, the lines of a document fetched
//! every `refreshInterval` (dropped after `ttl` without a successful fetch). Entries are
//! `STRINGS`, `CASE_INSENSITIVE_STRINGS`, `IP_ADDRESSES` (addresses or CIDR ranges) or
//! `REGEX` (unanchored, as in Istio).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use regex::RegexSet;
use serde_json::Value;

use super::params::{self, bad};
use super::{AdapterEnv, AdapterError, CheckResult, Handler, InstanceValues, Status, code};

const ENTRY_TYPES: &[&str] = &[
    "STRINGS",
    "CASE_INSENSITIVE_STRINGS",
    "IP_ADDRESSES",
    "REGEX",
];

/// How list entries are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Strings,
    CaseInsensitiveStrings,
    IpAddresses,
    Regex,
}

/// A compiled list.
#[derive(Debug)]
enum List {
    Strings(HashSet<String>),
    Networks(Vec<(IpAddr, u8)>),
    Regex(RegexSet),
}

#[derive(Debug)]
struct State {
    list: Option<Arc<List>>,
    last_success: Option<Instant>,
    last_error: Option<String>,
}

/// The listchecker handler.
#[derive(Debug)]
pub struct ListChecker {
    entry_type: EntryType,
    blacklist: bool,
    caching_interval: Duration,
    caching_use_count: i32,
    overrides: Vec<String>,
    /// With `providerUrl`: how long a fetched list serves after its last successful fetch.
    ttl: Option<Duration>,
    state: Arc<RwLock<State>>,
}

/// Why a list could not be built.
fn compile(entry_type: EntryType, entries: &[String]) -> Result<List, String> {
    Ok(match entry_type {
        EntryType::Strings => List::Strings(entries.iter().cloned().collect()),
        EntryType::CaseInsensitiveStrings => {
            List::Strings(entries.iter().map(|e| e.to_lowercase()).collect())
        }
        EntryType::IpAddresses => List::Networks(
            entries
                .iter()
                .map(|e| parse_network(e).ok_or_else(|| format!("could not parse ip address {e}")))
                .collect::<Result<_, _>>()?,
        ),
        EntryType::Regex => List::Regex(RegexSet::new(entries).map_err(|e| e.to_string())?),
    })
}

fn parse_network(s: &str) -> Option<(IpAddr, u8)> {
    match s.split_once('/') {
        Some((ip, len)) => {
            let ip: IpAddr = ip.trim().parse().ok()?;
            let len: u8 = len.trim().parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (len <= max).then_some((ip, len))
        }
        None => {
            let ip: IpAddr = s.trim().parse().ok()?;
            Some((ip, if ip.is_ipv4() { 32 } else { 128 }))
        }
    }
}

fn in_network(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip.to_canonical(), net.to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

// === impl ListChecker ===

impl ListChecker {
    /// Validates parameters, builds the handler and (with `providerUrl`) starts fetching.
    pub fn build(p: &Value, env: &AdapterEnv) -> Result<Self, AdapterError> {
        params::only(
            p,
            "",
            &[
                "providerUrl",
                "refreshInterval",
                "ttl",
                "cachingInterval",
                "cachingUseCount",
                "overrides",
                "entryType",
                "blacklist",
            ],
        )?;
        let entry_type = match params::enumeration(p, "entryType", "entryType", ENTRY_TYPES)? {
            None | Some(0) => EntryType::Strings,
            Some(1) => EntryType::CaseInsensitiveStrings,
            Some(2) => EntryType::IpAddresses,
            _ => EntryType::Regex,
        };
        let provider_url =
            params::string(p, "providerUrl", "providerUrl")?.filter(|u| !u.is_empty());
        let refresh = params::duration(p, "refreshInterval", "refreshInterval")?
            .unwrap_or(Duration::from_secs(60));
        let ttl = params::duration(p, "ttl", "ttl")?.unwrap_or(Duration::from_secs(300));
        if let Some(url) = &provider_url {
            let Some(rest) = url.strip_prefix("http://") else {
                return Err(bad(
                    "providerUrl",
                    format!("{url}: only http:// URLs are supported"),
                ));
            };
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("providerUrl", "URL scheme and host cannot be empty"));
            }
            if refresh < Duration::from_secs(1) {
                return Err(bad(
                    "refreshInterval",
                    format!("refresh interval must be at least 1 second, it is {refresh:?}"),
                ));
            }
            if ttl < refresh {
                return Err(bad(
                    "ttl",
                    format!(
                        "ttl must be > refreshInterval, ttl is {ttl:?} and refreshInterval is {refresh:?}"
                    ),
                ));
            }
        }
        let caching_interval = params::duration(p, "cachingInterval", "cachingInterval")?
            .unwrap_or(Duration::from_secs(300));
        let caching_use_count =
            params::int(p, "cachingUseCount", "cachingUseCount")?.unwrap_or(10_000);
        if caching_use_count < 0 {
            return Err(bad(
                "cachingUseCount",
                format!("caching use count must be >= 0, it is {caching_use_count}"),
            ));
        }
        let overrides = params::strings(p, "overrides", "overrides")?;
        let list = compile(entry_type, &overrides).map_err(|e| bad("overrides", e))?;
        let blacklist = params::boolean(p, "blacklist", "blacklist")?.unwrap_or(false);
        let state = Arc::new(RwLock::new(State {
            list: if provider_url.is_none() {
                Some(Arc::new(list))
            } else {
                None
            },
            last_success: None,
            last_error: None,
        }));
        let handler = Self {
            entry_type,
            blacklist,
            caching_interval,
            caching_use_count: caching_use_count.min(i64::from(i32::MAX)) as i32,
            overrides,
            ttl: provider_url.as_ref().map(|_| ttl),
            state,
        };
        if let (Some(url), true) = (provider_url, env.start_tasks) {
            tokio::spawn(refresh_loop(
                url,
                refresh,
                ttl,
                entry_type,
                handler.overrides.clone(),
                handler.state.clone(),
                env.shutdown.clone(),
            ));
        }
        Ok(handler)
    }

    fn contains(&self, list: &List, value: &str) -> Result<bool, String> {
        Ok(match list {
            List::Strings(set) => {
                if self.entry_type == EntryType::CaseInsensitiveStrings {
                    set.contains(&value.to_lowercase())
                } else {
                    set.contains(value)
                }
            }
            List::Networks(nets) => {
                let ip: IpAddr = value
                    .parse()
                    .map_err(|_| format!("{value} is not a valid IP address"))?;
                nets.iter().any(|n| in_network(ip, *n))
            }
            List::Regex(set) => set.is_match(value),
        })
    }
}

impl Handler for ListChecker {
    fn check(&self, instance: &InstanceValues<'_>) -> CheckResult {
        let (list, error) = {
            let s = self.state.read();
            // A list not refreshed within its ttl is gone, even before the next refresh.
            let expired = self
                .ttl
                .zip(s.last_success)
                .is_some_and(|(ttl, t)| t.elapsed() > ttl);
            let list = if expired { None } else { s.list.clone() };
            (list, s.last_error.clone())
        };
        let mut text = String::new();
        if let Some(v) = instance.get("value") {
            v.write_text(&mut text);
        }
        let status = match list {
            None => Status::new(
                code::UNAVAILABLE,
                format!(
                    "list not available: {}",
                    error.unwrap_or_else(|| "not fetched yet".into())
                ),
            ),
            Some(list) => match self.contains(&list, &text) {
                Err(e) => Status::new(code::INVALID_ARGUMENT, e),
                Ok(true) if self.blacklist => {
                    Status::new(code::PERMISSION_DENIED, format!("{text} is blacklisted"))
                }
                Ok(false) if !self.blacklist => {
                    Status::new(code::NOT_FOUND, format!("{text} is not whitelisted"))
                }
                Ok(_) => Status::default(),
            },
        };
        CheckResult {
            status,
            valid_duration: self.caching_interval,
            valid_use_count: self.caching_use_count,
        }
    }
}

async fn refresh_loop(
    url: String,
    refresh: Duration,
    ttl: Duration,
    entry_type: EntryType,
    overrides: Vec<String>,
    state: Arc<RwLock<State>>,
    shutdown: mesh_runtime::Shutdown,
) {
    loop {
        let result = match fetch(&url).await {
            Ok(body) => {
                let mut entries = overrides.clone();
                entries.extend(
                    body.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string),
                );
                compile(entry_type, &entries)
                    .map_err(|e| format!("could not parse data from {url}: {e}"))
            }
            Err(e) => Err(format!("could not fetch list from {url}: {e}")),
        };
        {
            let mut s = state.write();
            match result {
                Ok(list) => {
                    s.list = Some(Arc::new(list));
                    s.last_success = Some(Instant::now());
                    s.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listchecker refresh failed");
                    let expired = s.last_success.is_none_or(|t| t.elapsed() > ttl);
                    if expired {
                        s.list = None;
                    }
                    s.last_error = Some(e);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(refresh) => {}
        }
    }
}

/// GETs an http:// URL, with a timeout.
async fn fetch(url: &str) -> Result<String, String> {
    let body = http_get(url, Duration::from_secs(10)).await?;
    String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".to_string())
}

/// GETs an http:// URL within `timeout`: the body of a 2xx answer, else why not (also for
/// the topology page's reads of Pilot).
pub(crate) async fn http_get(url: &str, timeout: Duration) -> Result<bytes::Bytes, String> {
    use http_body_util::{BodyExt, Empty};
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad address: {e}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let fut = async {
        let resp = client.get(uri).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> AdapterEnv {
        AdapterEnv {
            prometheus: Default::default(),
            start_tasks: false,
            shutdown: Default::default(),
        }
    }

    fn check(h: &ListChecker, value: &str) -> i32 {
        let list = h.state.read().list.clone().unwrap();
        match h.contains(&list, value) {
            Err(_) => code::INVALID_ARGUMENT,
            Ok(true) if h.blacklist => code::PERMISSION_DENIED,
            Ok(false) if !h.blacklist => code::NOT_FOUND,
            Ok(_) => code::OK,
        }
    }

    #[test]
    fn entry_types() {
        let h = ListChecker::build(&json!({"overrides": ["a", "B"]}), &env()).unwrap();
        assert_eq!(check(&h, "a"), code::OK);
        assert_eq!(check(&h, "b"), code::NOT_FOUND);
        let h = ListChecker::build(&json!({"overrides": ["a", "B"], "entryType": "CASE_INSENSITIVE_STRINGS", "blacklist": true}), &env()).unwrap();
        assert_eq!(check(&h, "b"), code::PERMISSION_DENIED);
        assert_eq!(check(&h, "c"), code::OK);
        let h = ListChecker::build(
            &json!({"overrides": ["10.0.0.0/8", "192.168.1.1"], "entry_type": "IP_ADDRESSES"}),
            &env(),
        )
        .unwrap();
        assert_eq!(check(&h, "10.1.2.3"), code::OK);
        assert_eq!(check(&h, "192.168.1.1"), code::OK);
        assert_eq!(check(&h, "192.168.1.2"), code::NOT_FOUND);
        assert_eq!(check(&h, "nope"), code::INVALID_ARGUMENT);
        let h = ListChecker::build(
            &json!({"overrides": ["^/admin", "secret"], "entryType": "REGEX", "blacklist": true}),
            &env(),
        )
        .unwrap();
        assert_eq!(check(&h, "/admin/x"), code::PERMISSION_DENIED);
        assert_eq!(check(&h, "/a/secret/b"), code::PERMISSION_DENIED);
        assert_eq!(check(&h, "/public"), code::OK);
    }

    #[test]
    fn validation_names_fields() {
        let e = ListChecker::build(
            &json!({"overrides": ["10.0.0.0/99"], "entryType": "IP_ADDRESSES"}),
            &env(),
        )
        .unwrap_err();
        assert_eq!(e.field, "overrides");
        let e = ListChecker::build(&json!({"overrides": ["("], "entryType": "REGEX"}), &env())
            .unwrap_err();
        assert_eq!(e.field, "overrides");
        let e = ListChecker::build(&json!({"entryType": "WORDS"}), &env()).unwrap_err();
        assert_eq!(e.field, "entryType");
        let e = ListChecker::build(
            &json!({"providerUrl": "http://x/list", "refreshInterval": "10s", "ttl": "5s"}),
            &env(),
        )
        .unwrap_err();
        assert_eq!(e.field, "ttl");
    }

    #[test]
    fn a_fetched_list_expires_ttl_after_its_last_successful_fetch() {
        use crate::attribute::Value as Attr;
        use crate::config::{Instance, Variety};
        let h = ListChecker::build(
            &json!({"providerUrl": "http://127.0.0.1:1/list", "refreshInterval": "1s", "ttl": "2s", "blacklist": true}),
            &env(),
        )
        .unwrap();
        let instance = Instance {
            name: "user.listentry.istio-system".into(),
            short_name: "user".into(),
            namespace: "istio-system".into(),
            template: "listentry".into(),
            variety: Variety::Check,
            fields: vec!["value".into()],
            exprs: Vec::new(),
        };
        let check = |user: &'static str| {
            h.check(&InstanceValues {
                instance: &instance,
                values: vec![Some(Attr::String(user.into()))],
            })
            .status
        };
        // Not fetched yet.
        assert_eq!(check("mallory").code, code::UNAVAILABLE);
        let fetched = |ago: Duration| {
            let mut s = h.state.write();
            s.list = Some(Arc::new(
                compile(EntryType::Strings, &["mallory".to_string()]).unwrap(),
            ));
            s.last_success = Some(Instant::now() - ago);
            s.last_error = Some("connection refused".into());
        };
        fetched(Duration::from_secs(1));
        assert_eq!(check("mallory").code, code::PERMISSION_DENIED);
        assert_eq!(check("carol").code, code::OK);
        fetched(Duration::from_millis(2100));
        let status = check("carol");
        assert_eq!(status.code, code::UNAVAILABLE);
        assert_eq!(status.message, "list not available: connection refused");
    }
}
