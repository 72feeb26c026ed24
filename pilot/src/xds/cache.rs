//! A generation: one push context and the resources generated from it, cached so proxies with
//! the same inputs share one generation and one encoding.
//!
//! A proxy's CDS and LDS come in two parts, cached apart and merged by name when served
//! (see [`cds::Ranked`]):
//!
//! - the outbound part (outbound clusters, the black hole and passthroughs, Mixer's clusters;
//!   `virtualOutbound`, the outbound and egress listeners, the HTTP proxy listener), by the
//!   [`Scope`]'s shared key: what that part reads of the proxy, its node type, namespace,
//!   traffic capture, HTTP proxy port, certificate files (`TLS_CLIENT_*`, `TLS_SERVER_*`) and
//!   SDS mode, the Sidecar resource that applies to it (by namespace and name: its workload
//!   selector is the only reason its labels would matter), which VirtualService
//!   `sourceLabels` pick it, and its pod id when MeshConfig names a Mixer report address (the
//!   outbound reports name their source). Every sidecar of one namespace and Sidecar scope
//!   shares one copy, whatever its labels and instances. RDS and SDS depend on nothing
//!   more, and are cached by that key too;
//! - its own part (inbound clusters, the inbound listeners and `virtualInbound`, with the
//!   authentication and authorization filters that read its labels), by the scope's own key:
//!   the shared key's fields but the Sidecar, its locality, labels and the service instances
//!   at its IPs (the last part, also used on its own to see a proxy's instances change).
//!
//! A gateway's config is chosen by its labels (Gateway selectors): its shared key is its own.
//!
//! EDS depends on the proxy's locality only (locality failover priorities), and only for
//! clusters whose DestinationRule asks for failover: the others share one assignment across
//! localities. A connection computes its scope once per generation, with its locality
//! interned in the generation, and looks the cache up with it, without building keys.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::generate::cds::Ranked;
use super::generate::mtls::CertFiles;
use super::generate::{cds, eds, lds, mixer, mtls, rds};
use super::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SharedResource};
use crate::model::service::parse_cluster_name;
use crate::model::{NodeType, Proxy, PushContext};

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

/// A proxy locality, interned per generation: proxies in one locality share one string.
type Locality = Option<Arc<str>>;

/// One part of a proxy's CDS or LDS, sorted by name.
type Part = Arc<Vec<Ranked>>;

/// The cache of a generation: the outbound parts of CDS and LDS, RDS (by route name) and SDS
/// by shared key; the own parts of CDS and LDS by own key; EDS by cluster name then proxy
/// locality. A cluster whose assignment does not depend on the locality has it generated
/// once, under `None`, and shared by every locality's entry.
///
/// Each entry is a slot filled once: the first proxy to need it generates it, and proxies of
/// the same scope asking meanwhile wait for that one instead of generating it again (after a
/// config change every connection asks at once, a hundred of them at a time).
#[derive(Debug, Default, Clone)]
struct Cache {
    cds: HashMap<Arc<str>, Slot<Part>>,
    own_cds: HashMap<Arc<str>, Slot<Part>>,
    lds: HashMap<Arc<str>, Slot<Part>>,
    own_lds: HashMap<Arc<str>, Slot<Part>>,
    rds: HashMap<String, HashMap<Arc<str>, Slot<Shared>>>,
    /// Every SDS secret a scope may ask for (they depend on its certificate files only).
    sds: HashMap<Arc<str>, Slot<Shared>>,
    eds: HashMap<String, HashMap<Locality, Slot<Shared>>>,
    /// The proxy localities seen in this generation.
    localities: HashSet<Arc<str>>,
}

/// A cache entry, generated once by whoever comes first.
type Slot<T> = Arc<OnceLock<T>>;

/// What a proxy's config depends on besides the push context (see the module's doc): the
/// shared key of its outbound CDS and LDS, RDS and SDS; the own key of the rest of its CDS
/// and LDS; its locality for EDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    generation: u64,
    shared: Arc<str>,
    key: Arc<str>,
    instances_at: usize,
    locality: Locality,
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
    /// `changed_hosts`: their assignments, for every locality, are dropped (and regenerated
    /// per locality as proxies ask); everything else generated so far is kept.
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

    /// `locality` as this generation's shared string.
    fn intern(&self, locality: &str) -> Arc<str> {
        let mut cache = self.lock();
        if let Some(l) = cache.localities.get(locality) {
            return l.clone();
        }
        let l: Arc<str> = locality.into();
        cache.localities.insert(l.clone());
        l
    }

    /// The scope of `proxy` in this generation.
    pub fn scope(&self, proxy: &Proxy) -> Scope {
        let ctx = &self.ctx;
        let locality = proxy.locality().map(|l| self.intern(&l));
        let mut s = format!(
            "{:?}|{}|{:?}|{}|",
            proxy.node_type,
            proxy.namespace,
            proxy.interception_mode(),
            lds::http_proxy_port(ctx, proxy)
        );
        // Free-form values are written with their length, so no two scopes share a key.
        // The agent's SDS changes every TLS context (and the secrets Pilot serves).
        field(&mut s, if mtls::agent_sds(proxy) { "sds" } else { "" });
        for files in [CertFiles::client(proxy), CertFiles::server(proxy)] {
            field(&mut s, &files.cert_chain);
            field(&mut s, &files.key);
            field(&mut s, &files.root_cert);
        }
        let common = s.len();
        // Locality, labels and instances: the own key.
        field(&mut s, locality.as_deref().unwrap_or(""));
        for (k, v) in &proxy.labels {
            field(&mut s, k);
            field(&mut s, v);
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
        let key: Arc<str> = s.as_str().into();
        let shared = if proxy.node_type == NodeType::Router {
            // Gateway selectors read every label.
            key.clone()
        } else {
            s.truncate(common);
            match ctx.sidecar_for(proxy) {
                Some(sc) => {
                    field(&mut s, &sc.namespace);
                    field(&mut s, &sc.name);
                }
                None => s.push('|'),
            }
            field(&mut s, &ctx.source_label_matches(proxy));
            if ctx.mesh.mixer_report_address().is_some() {
                field(&mut s, &mixer::pod_uid(proxy).unwrap_or_default());
            }
            s.into()
        };
        Scope {
            generation: self.id,
            shared,
            key,
            instances_at,
            locality,
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
        let (shared, own) = (&scope.shared, &scope.key);
        Some(match type_url {
            CLUSTER => cds::merge(
                &self.cached(
                    |c| slot(&mut c.cds, shared),
                    || Arc::new(cds::outbound_clusters(ctx, proxy)),
                ),
                &self.cached(
                    |c| slot(&mut c.own_cds, own),
                    || Arc::new(cds::own_clusters(ctx, proxy)),
                ),
            ),
            LISTENER => cds::merge(
                &self.cached(
                    |c| slot(&mut c.lds, shared),
                    || Arc::new(lds::outbound_listeners(ctx, proxy)),
                ),
                &self.cached(
                    |c| slot(&mut c.own_lds, own),
                    || Arc::new(lds::own_listeners(ctx, proxy)),
                ),
            ),
            ROUTE => {
                let mut out = Vec::new();
                for name in names {
                    let one = self.cached(
                        |c| match c.rds.get_mut(name) {
                            Some(by_scope) => slot(by_scope, shared),
                            None => slot(c.rds.entry(name.clone()).or_default(), shared),
                        },
                        || Arc::new(rds::routes(ctx, proxy, &BTreeSet::from([name.clone()]))),
                    );
                    out.extend(one.iter().cloned());
                }
                out
            }
            SECRET => self
                .cached(
                    |c| slot(&mut c.sds, shared),
                    || Arc::new(mtls::secrets(proxy)),
                )
                .iter()
                .filter(|r| names.contains(&r.name))
                .cloned()
                .collect(),
            ENDPOINT => {
                let mut out = Vec::new();
                for name in names {
                    out.extend(self.endpoints(name, &scope.locality).iter().cloned());
                }
                out
            }
            _ => return None,
        })
    }

    /// The assignment of `cluster` for a proxy in `locality`: generated for that locality
    /// when the cluster has failover priorities, else the locality-less one, shared.
    fn endpoints(&self, cluster: &str, locality: &Locality) -> Shared {
        let ctx = &self.ctx;
        self.cached(
            |c| eds_slot(c, cluster, locality),
            || match locality {
                Some(_) if !eds::depends_on_locality(ctx, cluster) => {
                    self.endpoints(cluster, &None)
                }
                _ => Arc::new(
                    eds::load_assignment_for(ctx, cluster, locality.as_deref())
                        .into_iter()
                        .collect(),
                ),
            },
        )
    }

    /// The entry `slot` picks (adding it if new), generated by `make` unless it already was.
    /// Generated outside the cache's lock; a proxy that finds the entry being generated by
    /// another waits for it (generation is synchronous, so the one generating is running and
    /// never waits on the waiters: it can only ask for other entries).
    fn cached<T: Clone>(
        &self,
        slot: impl FnOnce(&mut Cache) -> Slot<T>,
        make: impl FnOnce() -> T,
    ) -> T {
        let slot = slot(&mut self.lock());
        slot.get_or_init(make).clone()
    }
}

/// The slot of `key` in `map`, added if new (the key is copied only then).
fn slot<K, Q, T>(map: &mut HashMap<K, Slot<T>>, key: &Q) -> Slot<T>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq + for<'a> From<&'a Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(s) = map.get(key) {
        return s.clone();
    }
    map.entry(K::from(key)).or_default().clone()
}

/// The slot of the assignment of `cluster` for `locality`; the cluster's name is copied only
/// for its first entry.
fn eds_slot(cache: &mut Cache, cluster: &str, locality: &Locality) -> Slot<Shared> {
    let by_locality = match cache.eds.get_mut(cluster) {
        Some(by) => by,
        None => cache.eds.entry(cluster.to_string()).or_default(),
    };
    by_locality.entry(locality.clone()).or_default().clone()
}

/// Appends a free-form scope value as `LEN:VALUE|`.
fn field(s: &mut String, value: &str) {
    let _ = write!(s, "{}:{value}|", value.len());
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

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;

    use super::*;
    use crate::testutil::{ProxyBuilder, TestConfig, mk_sidecar};
    const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
    const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";

    /// `reviews` fails over by locality (outlier detection) over ISTIO_MUTUAL; `ratings` has
    /// localities but no DestinationRule; the proxy is a `productpage` instance whose inbound
    /// listener a namespace-wide PeerAuthentication makes STRICT.
    fn config(reviews_endpoints: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
{reviews_endpoints}---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
    outlierDetection: {{consecutive5xxErrors: 1}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 10.0.1.1, locality: us/east/a}}
  - {{address: 10.0.1.2, locality: us/west/a}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: productpage}}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.9, labels: {{app: productpage}}}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: STRICT}}
"
        )
    }

    const TWO_ZONES: &str = "  - {address: 10.0.0.1, locality: us/east/a}
  - {address: 10.0.0.2, locality: us/west/a}
";

    fn context(text: &str) -> Arc<PushContext> {
        Arc::new(TestConfig::from_yaml(text).push_context())
    }

    /// The `productpage` instance at 127.0.0.9.
    fn sidecar() -> ProxyBuilder {
        mk_sidecar("default", "127.0.0.9")
            .pod("productpage-1")
            .labels(&[("app", "productpage")])
    }

    fn proxy(meta: &[(&str, serde_json::Value)]) -> Proxy {
        meta.iter()
            .fold(sidecar(), |p, (k, v)| p.meta(k, v.clone()))
            .build()
    }

    fn at(locality: &str) -> Proxy {
        proxy(&[("ISTIO_LOCALITY", serde_json::json!(locality))])
    }

    fn all(g: &Generation, p: &Proxy, type_url: &str) -> Vec<SharedResource> {
        g.resources(p, type_url, &BTreeSet::new()).unwrap()
    }

    fn mentions(resources: &[SharedResource], text: &str) -> bool {
        resources.iter().any(|r| {
            r.any
                .value
                .windows(text.len())
                .any(|w| w == text.as_bytes())
        })
    }

    fn shared(a: &[SharedResource], b: &[SharedResource]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
    }

    fn eds(g: &Generation, p: &Proxy, cluster: &str) -> Vec<SharedResource> {
        g.resources(p, ENDPOINT, &BTreeSet::from([cluster.to_string()]))
            .unwrap()
    }

    /// `(locality, priority, endpoints)` of the one assignment in `resources`.
    fn priorities(resources: &[SharedResource]) -> Vec<(String, u32, usize)> {
        assert_eq!(resources.len(), 1);
        let cla = ClusterLoadAssignment::decode(&resources[0].any.value[..]).unwrap();
        let mut out: Vec<_> = cla
            .endpoints
            .iter()
            .map(|l| {
                let name = l
                    .locality
                    .as_ref()
                    .map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone))
                    .unwrap_or_default();
                (name, l.priority, l.lb_endpoints.len())
            })
            .collect();
        out.sort();
        out
    }

    fn own(v: &[(&str, u32, usize)]) -> Vec<(String, u32, usize)> {
        v.iter().map(|(l, p, n)| (l.to_string(), *p, *n)).collect()
    }

    #[test]
    fn cert_files_and_locality_are_part_of_the_scope() {
        let g = Generation::new(context(&config(TWO_ZONES)));
        let plain = proxy(&[]);
        let client = proxy(&[("TLS_CLIENT_CERT_CHAIN", serde_json::json!("/a/cert.pem"))]);
        let server = proxy(&[("TLS_SERVER_KEY", serde_json::json!("/b/key.pem"))]);
        let root = proxy(&[("TLS_CLIENT_ROOT_CERT", serde_json::json!("/c/root.pem"))]);
        let east = at("us/east/a");
        // Istio's default paths spelled out: the same files, so the same config.
        let explicit = proxy(&[(
            "TLS_CLIENT_CERT_CHAIN",
            serde_json::json!("/etc/certs/cert-chain.pem"),
        )]);
        let scopes: Vec<Scope> = [&plain, &client, &server, &root, &east]
            .iter()
            .map(|p| g.scope(p))
            .collect();
        for (i, a) in scopes.iter().enumerate() {
            for b in &scopes[i + 1..] {
                assert_ne!(a.key, b.key);
                // The instances are the same: only the config differs.
                assert_eq!(a.instances(), b.instances());
            }
        }
        assert_eq!(g.scope(&explicit), scopes[0]);

        // Each proxy gets its own files, not those of whoever asked first: clusters and
        // listeners name SDS secrets, the secrets name the files.
        let cds_plain = all(&g, &plain, CLUSTER);
        assert!(mentions(&cds_plain, "default") && mentions(&cds_plain, "ROOTCA"));
        assert!(!mentions(&cds_plain, "/etc/certs/"));
        assert!(shared(&all(&g, &explicit, CLUSTER), &cds_plain));
        let sds = |p: &Proxy, names: &[&str]| {
            let names = names.iter().map(|n| n.to_string()).collect();
            g.resources(p, SECRET, &names).unwrap()
        };
        let both = ["default", "ROOTCA"];
        let sds_plain = sds(&plain, &both);
        assert_eq!(sds_plain.len(), 2);
        assert!(mentions(&sds_plain, "/etc/certs/cert-chain.pem"));
        assert!(!mentions(&sds_plain, "/a/cert.pem"));
        let sds_client = sds(&client, &both);
        assert!(mentions(&sds_client, "/a/cert.pem"));
        assert!(!mentions(&sds_client, "/etc/certs/cert-chain.pem"));
        assert!(mentions(&sds(&root, &both), "/c/root.pem"));
        assert!(shared(&sds(&explicit, &both), &sds_plain));
        // Names the proxy's files do not give are not served.
        assert!(sds(&plain, &["file-cert:/x~/y", "nope"]).is_empty());

        // Server files other than the client's: Istio's file-mounted names.
        let lds_plain = all(&g, &plain, LISTENER);
        let lds_server = all(&g, &server, LISTENER);
        assert!(mentions(&lds_plain, "default"));
        assert!(!mentions(&lds_plain, "file-cert:"));
        let server_cert = "file-cert:/etc/certs/cert-chain.pem~/b/key.pem";
        assert!(mentions(&lds_server, server_cert));
        let sds_server = sds(&server, &[server_cert, "ROOTCA"]);
        assert_eq!(sds_server.len(), 2);
        assert!(mentions(&sds_server, "/b/key.pem"));
        assert!(shared(&all(&g, &explicit, LISTENER), &lds_plain));
        // A locality alone is an own scope of its own too, but changes no outbound cluster.
        assert_ne!(g.scope(&east).key, scopes[0].key);
        assert_eq!(g.scope(&east).shared, scopes[0].shared);
    }

    fn named<'a>(resources: &'a [SharedResource], name: &str) -> &'a SharedResource {
        resources
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn outbound_config_is_shared_across_labels_and_instances() {
        let g = Generation::new(context(&config(TWO_ZONES)));
        // The productpage instance, and a pod of no service with other labels at 127.0.0.10.
        let page = proxy(&[]);
        let other = mk_sidecar("default", "127.0.0.10")
            .pod("other-1")
            .labels(&[("app", "other"), ("version", "v2")])
            .build();
        let (s1, s2) = (g.scope(&page), g.scope(&other));
        assert_ne!(s1.key, s2.key);
        assert_ne!(s1.instances(), s2.instances());
        assert_eq!(s1.shared, s2.shared);

        let (c1, c2) = (all(&g, &page, CLUSTER), all(&g, &other, CLUSTER));
        for name in [REVIEWS, RATINGS, "BlackHoleCluster", "PassthroughCluster"] {
            assert!(Arc::ptr_eq(named(&c1, name), named(&c2, name)), "{name}");
        }
        // Inbound clusters are each proxy's own.
        let inbound = "inbound|9080||productpage.default.svc.cluster.local";
        named(&c1, inbound);
        assert!(!c2.iter().any(|r| r.name == inbound));
        assert_eq!(c1.len(), c2.len() + 1);

        let (l1, l2) = (all(&g, &page, LISTENER), all(&g, &other, LISTENER));
        for name in ["virtualOutbound", "0.0.0.0_9080"] {
            assert!(Arc::ptr_eq(named(&l1, name), named(&l2, name)), "{name}");
        }
        // virtualInbound holds the proxy's inbound chains (STRICT for productpage's port).
        assert!(!Arc::ptr_eq(
            named(&l1, "virtualInbound"),
            named(&l2, "virtualInbound")
        ));
        named(&l1, "127.0.0.9_9080");
        assert!(!l2.iter().any(|r| r.name == "127.0.0.9_9080"));

        let routes = BTreeSet::from(["9080".to_string()]);
        let (r1, r2) = (
            g.resources(&page, ROUTE, &routes).unwrap(),
            g.resources(&other, ROUTE, &routes).unwrap(),
        );
        assert_eq!(r1.len(), 1);
        assert!(shared(&r1, &r2));

        // Served as generated in one piece.
        for (p, c, l) in [(&page, &c1, &l1), (&other, &c2, &l2)] {
            let whole = |v: Vec<SharedResource>| -> Vec<(String, String)> {
                v.iter()
                    .map(|r| (r.name.clone(), r.version.clone()))
                    .collect()
            };
            assert_eq!(whole(c.clone()), whole(cds::clusters(&g.ctx, p)));
            assert_eq!(whole(l.clone()), whole(lds::listeners(&g.ctx, p)));
        }
    }

    #[test]
    fn source_labels_and_workload_selectors_split_the_shared_scope() {
        let text = format!(
            "{}---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
  - match: [{{sourceLabels: {{app: productpage}}}}]
    route: [{{destination: {{host: reviews}}}}]
  - route: [{{destination: {{host: ratings}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: narrow}}
spec:
  workloadSelector: {{labels: {{app: narrow}}}}
  egress: [{{hosts: [./reviews.default.svc.cluster.local]}}]
",
            config(TWO_ZONES)
        );
        let g = Generation::new(context(&text));
        let at = |ip: &str, app: &str| {
            mk_sidecar("default", ip)
                .pod(&format!("{app}-1"))
                .labels(&[("app", app)])
                .build()
        };
        let (page, plain, plain2, narrow) = (
            at("127.0.0.9", "productpage"),
            at("127.0.0.10", "a"),
            at("127.0.0.11", "b"),
            at("127.0.0.12", "narrow"),
        );
        let shared = |p: &Proxy| g.scope(p).shared;
        assert_ne!(shared(&page), shared(&plain));
        assert_eq!(shared(&plain), shared(&plain2));
        assert_ne!(shared(&narrow), shared(&plain));
        let routes = BTreeSet::from(["9080".to_string()]);
        let rds = |p: &Proxy| g.resources(p, ROUTE, &routes).unwrap();
        assert_ne!(rds(&page)[0].version, rds(&plain)[0].version);
        assert!(!mentions(&all(&g, &narrow, CLUSTER), RATINGS));
        assert!(mentions(&all(&g, &plain, CLUSTER), RATINGS));
    }

    #[test]
    fn eds_is_per_locality_where_failover_applies() {
        let g = Generation::new(context(&config(TWO_ZONES)));
        let east = at("us/east/a");
        // Same locality through the label: other labels, so another CDS scope, same EDS.
        let east_label = sidecar().labels(&[("istio-locality", "us.east.a")]).build();
        let west = at("us/west/a");
        let nowhere = proxy(&[]);

        let (s1, s2) = (g.scope(&east), g.scope(&east_label));
        assert_ne!(s1.key, s2.key);
        let (Some(l1), Some(l2)) = (&s1.locality, &s2.locality) else {
            panic!("no locality: {s1:?} {s2:?}");
        };
        assert!(Arc::ptr_eq(l1, l2), "the locality is not interned");
        assert_eq!(g.scope(&nowhere).locality, None);

        let e = eds(&g, &east, REVIEWS);
        let w = eds(&g, &west, REVIEWS);
        let n = eds(&g, &nowhere, REVIEWS);
        assert_eq!(
            priorities(&e),
            own(&[("us/east/a", 0, 1), ("us/west/a", 1, 1)])
        );
        assert_eq!(
            priorities(&w),
            own(&[("us/east/a", 1, 1), ("us/west/a", 0, 1)])
        );
        assert_eq!(
            priorities(&n),
            own(&[("us/east/a", 0, 1), ("us/west/a", 0, 1)])
        );
        assert!(shared(&eds(&g, &east_label, REVIEWS), &e));
        assert!(shared(&eds(&g, &east, REVIEWS), &e));

        // Without failover the assignment is generated once for every locality.
        let r = eds(&g, &east, RATINGS);
        assert_eq!(
            priorities(&r),
            own(&[("us/east/a", 0, 1), ("us/west/a", 0, 1)])
        );
        assert!(shared(&eds(&g, &west, RATINGS), &r));
        assert!(shared(&eds(&g, &nowhere, RATINGS), &r));
        // Unknown clusters: nothing, whatever the locality.
        assert!(eds(&g, &east, "outbound|1||nope").is_empty());
    }

    #[test]
    fn endpoint_changes_reach_every_locality() {
        let g1 = Generation::new(context(&config(TWO_ZONES)));
        let (east, west, nowhere) = (at("us/east/a"), at("us/west/a"), proxy(&[]));
        let cds1 = all(&g1, &east, CLUSTER);
        let ratings1 = eds(&g1, &east, RATINGS);
        for p in [&east, &west, &nowhere] {
            eds(&g1, p, REVIEWS);
        }

        let three = format!("{TWO_ZONES}  - {{address: 10.0.0.3, locality: us/east/a}}\n");
        let changed = BTreeSet::from(["reviews.default.svc.cluster.local".to_string()]);
        let g2 = g1.with_new_endpoints(context(&config(&three)), &changed);
        assert_eq!(
            priorities(&eds(&g2, &east, REVIEWS)),
            own(&[("us/east/a", 0, 2), ("us/west/a", 1, 1)])
        );
        assert_eq!(
            priorities(&eds(&g2, &west, REVIEWS)),
            own(&[("us/east/a", 1, 2), ("us/west/a", 0, 1)])
        );
        assert_eq!(
            priorities(&eds(&g2, &nowhere, REVIEWS)),
            own(&[("us/east/a", 0, 2), ("us/west/a", 0, 1)])
        );
        // What did not change is kept.
        assert!(shared(&eds(&g2, &west, RATINGS), &ratings1));
        assert!(shared(&all(&g2, &east, CLUSTER), &cds1));
    }
}
