//! A generation: one push context and the resources generated from it, cached so proxies with
//! the same inputs share one generation and one encoding.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use super::generate::{cds, eds, lds, rds};
use super::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SharedResource};
use crate::model::service::parse_cluster_name;
use crate::model::{Proxy, PushContext};

/// Generated resources of one push context.
#[derive(Debug)]
pub struct Generation {
    pub ctx: Arc<PushContext>,
    cache: Mutex<HashMap<String, Arc<Vec<SharedResource>>>>,
}

// === impl Generation ===

impl Generation {
    pub fn new(ctx: Arc<PushContext>) -> Generation {
        Generation {
            ctx,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A generation for `ctx` that only differs from `self` in the endpoints of
    /// `changed_hosts`: everything else generated so far is kept.
    pub fn with_new_endpoints(
        &self,
        ctx: Arc<PushContext>,
        changed_hosts: &std::collections::BTreeSet<String>,
    ) -> Generation {
        let cache = self.lock().clone();
        let cache = cache
            .into_iter()
            .filter(|(k, _)| match k.strip_prefix("eds|") {
                Some(cluster) => parse_cluster_name(cluster)
                    .is_none_or(|(_, _, _, host)| !changed_hosts.contains(host)),
                None => true,
            })
            .collect();
        Generation {
            ctx,
            cache: Mutex::new(cache),
        }
    }

    pub fn version(&self) -> &str {
        &self.ctx.version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<SharedResource>>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(
        &self,
        key: String,
        make: impl FnOnce() -> Vec<SharedResource>,
    ) -> Arc<Vec<SharedResource>> {
        if let Some(hit) = self.lock().get(&key) {
            return hit.clone();
        }
        // Generate outside the lock; two proxies racing on one key both generate, one wins.
        let made = Arc::new(make());
        self.lock().entry(key).or_insert(made).clone()
    }

    /// The resources of `type_url` for `proxy`: everything for wildcard types, the named ones
    /// that exist for named types. `None` for a type this server does not serve.
    pub fn resources(
        &self,
        proxy: &Proxy,
        type_url: &str,
        names: &std::collections::BTreeSet<String>,
    ) -> Option<Vec<SharedResource>> {
        let ctx = &self.ctx;
        Some(match type_url {
            CLUSTER => {
                let key = format!("cds|{}", scope(ctx, proxy));
                self.cached(key, || cds::clusters(ctx, proxy)).to_vec()
            }
            LISTENER => {
                let key = format!("lds|{}", scope(ctx, proxy));
                self.cached(key, || lds::listeners(ctx, proxy)).to_vec()
            }
            ROUTE => {
                let mut out = Vec::new();
                for name in names {
                    let key = format!("rds|{name}|{}", scope(ctx, proxy));
                    let one = std::collections::BTreeSet::from([name.clone()]);
                    out.extend(
                        self.cached(key, || rds::routes(ctx, proxy, &one))
                            .iter()
                            .cloned(),
                    );
                }
                out
            }
            ENDPOINT => {
                let mut out = Vec::new();
                for name in names {
                    let key = format!("eds|{name}");
                    out.extend(
                        self.cached(key, || {
                            eds::load_assignment(ctx, name).into_iter().collect()
                        })
                        .iter()
                        .cloned(),
                    );
                }
                out
            }
            _ => return None,
        })
    }
}

/// What a proxy's CDS, LDS and RDS depend on besides the push context: proxies with equal
/// scopes get identical config and share it.
fn scope(ctx: &PushContext, proxy: &Proxy) -> String {
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
    s.push_str(&instances.join(","));
    s
}
