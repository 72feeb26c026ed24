//! A generation: one push context and the resources generated from it, cached so proxies with
//! the same inputs share one generation and one encoding.
//!
//! What a proxy's CDS, LDS and RDS depend on besides the push context is its [`Scope`]:
//! proxies with equal scopes get identical config and share it. A connection computes its
//! scope once per generation and looks the cache up with it, without building keys.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::generate::{cds, eds, lds, rds};
use super::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SharedResource};
use crate::model::service::parse_cluster_name;
use crate::model::{Proxy, PushContext};

/// Resources generated once and shared.
type Shared = Arc<Vec<SharedResource>>;

/// Generated resources of one push context.
#[derive(Debug)]
pub struct Generation {
    pub ctx: Arc<PushContext>,
    /// Unique within the process: scopes are computed per generation.
    id: u64,
    cache: Mutex<Cache>,
}

/// The cache of a generation: CDS and LDS by scope, RDS by route name then scope, EDS by
/// cluster name (endpoints do not depend on the proxy).
#[derive(Debug, Default, Clone)]
struct Cache {
    cds: HashMap<Arc<str>, Shared>,
    lds: HashMap<Arc<str>, Shared>,
    rds: HashMap<String, HashMap<Arc<str>, Shared>>,
    eds: HashMap<String, Shared>,
}

/// What a proxy's CDS, LDS and RDS depend on besides the push context, as one string: its
/// node type, namespace, traffic capture, HTTP proxy port, labels and the service instances
/// at its IPs (the last part, also used on its own to see a proxy's instances change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    generation: u64,
    key: Arc<str>,
    instances_at: usize,
}

static GENERATIONS: AtomicU64 = AtomicU64::new(0);

// === impl Generation ===

impl Generation {
    pub fn new(ctx: Arc<PushContext>) -> Generation {
        Generation::with_cache(ctx, Cache::default())
    }

    fn with_cache(ctx: Arc<PushContext>, cache: Cache) -> Generation {
        Generation {
            ctx,
            id: GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1,
            cache: Mutex::new(cache),
        }
    }

    /// A generation for `ctx` that only differs from `self` in the endpoints of
    /// `changed_hosts`: everything else generated so far is kept.
    pub fn with_new_endpoints(
        &self,
        ctx: Arc<PushContext>,
        changed_hosts: &BTreeSet<String>,
    ) -> Generation {
        let mut cache = self.lock().clone();
        cache.eds.retain(|cluster, _| {
            parse_cluster_name(cluster).is_none_or(|(_, _, _, host)| !changed_hosts.contains(host))
        });
        Generation::with_cache(ctx, cache)
    }

    pub fn version(&self) -> &str {
        &self.ctx.version
    }

    /// This generation's number, unique within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scope of `proxy` in this generation.
    pub fn scope(&self, proxy: &Proxy) -> Scope {
        let ctx = &self.ctx;
        let mut s = format!(
            "{:?}|{}|{}|{}|",
            proxy.node_type,
            proxy.namespace,
            proxy.captures_traffic(),
            lds::http_proxy_port(ctx, proxy)
        );
        for (k, v) in &proxy.labels {
            let _ = write!(s, "{k}={v},");
        }
        s.push('|');
        let instances_at = s.len();
        let mut instances: Vec<String> = proxy
            .ips
            .iter()
            .flat_map(|ip| ctx.registry.instances_at(ip))
            .map(|(svc, port, ep)| {
                format!(
                    "{}:{}@{}:{}",
                    svc.hostname, port.number, ep.address, ep.port
                )
            })
            .collect();
        instances.sort();
        for (i, one) in instances.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(one);
        }
        Scope {
            generation: self.id,
            key: s.into(),
            instances_at,
        }
    }

    /// The resources of `type_url` for `proxy`: everything for wildcard types, the named ones
    /// that exist for named types. `None` for a type this server does not serve.
    pub fn resources(
        &self,
        proxy: &Proxy,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Option<Vec<SharedResource>> {
        self.resources_in(proxy, &self.scope(proxy), type_url, names)
    }

    /// [`Generation::resources`] with the proxy's scope already known (it must be this
    /// generation's: see [`Scope::is_of`]).
    pub fn resources_in(
        &self,
        proxy: &Proxy,
        scope: &Scope,
        type_url: &str,
        names: &BTreeSet<String>,
    ) -> Option<Vec<SharedResource>> {
        let ctx = &self.ctx;
        let key = &scope.key;
        Some(match type_url {
            CLUSTER => self
                .cached(
                    |c| c.cds.get(key).cloned(),
                    |c, made| c.cds.entry(key.clone()).or_insert(made).clone(),
                    || cds::clusters(ctx, proxy),
                )
                .to_vec(),
            LISTENER => self
                .cached(
                    |c| c.lds.get(key).cloned(),
                    |c, made| c.lds.entry(key.clone()).or_insert(made).clone(),
                    || lds::listeners(ctx, proxy),
                )
                .to_vec(),
            ROUTE => {
                let mut out = Vec::new();
                for name in names {
                    let one = self.cached(
                        |c| {
                            c.rds
                                .get(name)
                                .and_then(|by_scope| by_scope.get(key))
                                .cloned()
                        },
                        |c, made| {
                            let by_scope = c.rds.entry(name.clone()).or_default();
                            by_scope.entry(key.clone()).or_insert(made).clone()
                        },
                        || rds::routes(ctx, proxy, &BTreeSet::from([name.clone()])),
                    );
                    out.extend(one.iter().cloned());
                }
                out
            }
            ENDPOINT => {
                let mut out = Vec::new();
                for name in names {
                    let one = self.cached(
                        |c| c.eds.get(name).cloned(),
                        |c, made| c.eds.entry(name.clone()).or_insert(made).clone(),
                        || eds::load_assignment(ctx, name).into_iter().collect(),
                    );
                    out.extend(one.iter().cloned());
                }
                out
            }
            _ => return None,
        })
    }

    /// What `get` finds in the cache, or else what `make` generates, stored by `put`.
    /// Generated outside the lock: two proxies racing on one key both generate, one wins.
    fn cached(
        &self,
        get: impl FnOnce(&Cache) -> Option<Shared>,
        put: impl FnOnce(&mut Cache, Shared) -> Shared,
        make: impl FnOnce() -> Vec<SharedResource>,
    ) -> Shared {
        if let Some(hit) = get(&self.lock()) {
            return hit;
        }
        let made = Arc::new(make());
        put(&mut self.lock(), made)
    }
}

// === impl Scope ===

impl Scope {
    /// Whether this scope was computed in `generation`.
    pub fn is_of(&self, generation: &Generation) -> bool {
        self.generation == generation.id
    }

    /// The service instances at the proxy's IPs, as one comparable string.
    pub fn instances(&self) -> &str {
        &self.key[self.instances_at..]
    }
}
