//! The push context: an immutable, indexed view of everything a generation of Envoy config is
//! computed from (registry, traffic config, mesh config). A new one is built for every full
//! push; proxies generate from the one current when they are pushed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mesh_proto::networking::{DestinationRule, Gateway, Sidecar, Subset, VirtualService};
use mesh_proto::{Kind, Spec};
use mesh_runtime::Snapshot;

use super::proxy::Proxy;
use super::registry::Registry;
use super::service::Service;
use crate::mesh::MeshConfig;

/// A config object of one kind, with where it lives.
#[derive(Debug, Clone)]
pub struct Named<T> {
    pub namespace: String,
    pub name: String,
    pub spec: Arc<T>,
}

/// Everything generation needs, indexed.
#[derive(Debug)]
pub struct PushContext {
    /// Identifies this generation of config (`version_info` of SotW responses).
    pub version: String,
    pub mesh: Arc<MeshConfig>,
    pub registry: Arc<Registry>,
    /// Destination rules by the FQDN of their host.
    destination_rules: BTreeMap<String, Vec<Named<DestinationRule>>>,
    /// Virtual services bound to sidecars (`mesh` gateway), hosts resolved to FQDNs, ordered
    /// by namespace and name.
    virtual_services: Vec<(Vec<String>, Named<VirtualService>)>,
    /// Indexes into `virtual_services` by exact (non-wildcard) host, ascending: the
    /// candidates for a host besides `wildcard_virtual_services`, so a lookup does not scan
    /// every VirtualService (which made generation quadratic in the services).
    virtual_services_by_host: HashMap<String, Vec<usize>>,
    /// Indexes into `virtual_services` of those with a wildcard host, ascending.
    wildcard_virtual_services: Vec<usize>,
    /// Every distinct `sourceLabels` of the mesh's VirtualService HTTP, TLS and TCP matches:
    /// what of a sidecar's labels its outbound listeners and routes depend on (see
    /// [`PushContext::source_label_matches`]).
    source_label_selectors: Vec<BTreeMap<String, String>>,
    /// Every virtual service by (namespace, name), delegates (no hosts) included.
    all_virtual_services: BTreeMap<(String, String), Named<VirtualService>>,
    /// Virtual services bound to gateways: hosts (resolved) and gateways as `ns/name`.
    gateway_virtual_services: Vec<(Vec<String>, Vec<String>, Named<VirtualService>)>,
    /// Gateways, ordered by namespace and name.
    gateways: Vec<Named<Gateway>>,
    /// Sidecar resources, ordered by namespace and name.
    sidecars: Vec<Named<Sidecar>>,
    /// PeerAuthentications, ordered by namespace and name.
    peer_authentications: Vec<Named<mesh_proto::security::PeerAuthentication>>,
    /// RequestAuthentications and Istio 1.0 authentication Policies, with fetched JWKS.
    pub authn: super::authn::AuthnIndex,
    /// Authorization: AuthorizationPolicies and Istio 1.0 RBAC.
    pub authz: Arc<super::authz::Authz>,
    /// The cluster DNS suffix (`cluster.local`).
    pub domain_suffix: String,
    /// Where config that does not say (`exportTo` empty) is exported: MeshConfig's
    /// `defaultServiceExportTo`, `defaultVirtualServiceExportTo` and
    /// `defaultDestinationRuleExportTo`, `*` when unset (Istio's defaults).
    default_export: DefaultExportTo,
}

/// The mesh's default `exportTo` per kind of config.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DefaultExportTo {
    services: Vec<String>,
    virtual_services: Vec<String>,
    destination_rules: Vec<String>,
}

// === impl PushContext ===

impl PushContext {
    /// Builds a push context from a config snapshot, a registry and the mesh config.
    pub fn new(
        version: String,
        config: &Snapshot,
        registry: Arc<Registry>,
        mesh: Arc<MeshConfig>,
    ) -> PushContext {
        let domain_suffix = "cluster.local".to_string();
        let default_export = DefaultExportTo::from_mesh(&mesh);
        let mut destination_rules: BTreeMap<String, Vec<Named<DestinationRule>>> = BTreeMap::new();
        for obj in config.of_kind(&Kind::DestinationRule) {
            if let Spec::DestinationRule(dr) = &obj.spec {
                let host = resolve_host(&dr.host, &obj.key.namespace, &domain_suffix);
                destination_rules.entry(host).or_default().push(Named {
                    namespace: obj.key.namespace.clone(),
                    name: obj.key.name.clone(),
                    spec: Arc::new(dr.clone()),
                });
            }
        }
        let mut virtual_services = Vec::new();
        let mut all_virtual_services = BTreeMap::new();
        let mut gateway_virtual_services = Vec::new();
        let gateways = named(config, &Kind::Gateway, |s| match s {
            Spec::Gateway(g) => Some(g),
            _ => None,
        });
        let sidecars = named(config, &Kind::Sidecar, |s| match s {
            Spec::Sidecar(g) => Some(g),
            _ => None,
        });
        let peer_authentications = named(config, &Kind::PeerAuthentication, |s| match s {
            Spec::PeerAuthentication(p) => Some(p),
            _ => None,
        });
        for obj in config.of_kind(&Kind::VirtualService) {
            if let Spec::VirtualService(vs) = &obj.spec {
                all_virtual_services.insert(
                    (obj.key.namespace.clone(), obj.key.name.clone()),
                    Named {
                        namespace: obj.key.namespace.clone(),
                        name: obj.key.name.clone(),
                        spec: Arc::new(vs.clone()),
                    },
                );
                // A VirtualService without hosts is a delegate: only reachable from a root.
                if vs.hosts.is_empty() {
                    continue;
                }
                let bound: Vec<String> = vs
                    .gateways
                    .iter()
                    .filter(|g| *g != "mesh")
                    .map(|g| gateway_name(g, &obj.key.namespace))
                    .collect();
                if !bound.is_empty() {
                    gateway_virtual_services.push((
                        vs.hosts
                            .iter()
                            .map(|h| resolve_host(h, &obj.key.namespace, &domain_suffix))
                            .collect(),
                        bound,
                        Named {
                            namespace: obj.key.namespace.clone(),
                            name: obj.key.name.clone(),
                            spec: Arc::new(vs.clone()),
                        },
                    ));
                }
                let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
                if !for_mesh {
                    continue;
                }
                let hosts = vs
                    .hosts
                    .iter()
                    .map(|h| resolve_host(h, &obj.key.namespace, &domain_suffix))
                    .collect();
                virtual_services.push((
                    hosts,
                    Named {
                        namespace: obj.key.namespace.clone(),
                        name: obj.key.name.clone(),
                        spec: Arc::new(vs.clone()),
                    },
                ));
            }
        }
        // Legacy (v1alpha2) rules, converted: after the v1alpha3 config, which wins.
        let legacy = crate::legacy::convert(config, &domain_suffix);
        for (host, (namespace, dr)) in legacy.destination_rules {
            let rules = destination_rules.entry(host.clone()).or_default();
            match rules.first_mut() {
                Some(existing) => {
                    let mut merged = (*existing.spec).clone();
                    for subset in dr.subsets {
                        if !merged.subsets.iter().any(|s| s.name == subset.name) {
                            merged.subsets.push(subset);
                        }
                    }
                    if merged.traffic_policy.is_none() {
                        merged.traffic_policy = dr.traffic_policy;
                    }
                    existing.spec = Arc::new(merged);
                }
                None => rules.push(Named {
                    name: format!("legacy-{host}"),
                    namespace,
                    spec: Arc::new(dr),
                }),
            }
        }
        for (host, (namespace, vs)) in legacy.virtual_services {
            virtual_services.push((
                vec![host.clone()],
                Named {
                    name: format!("legacy-{host}"),
                    namespace,
                    spec: Arc::new(vs),
                },
            ));
        }
        let mut virtual_services_by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard_virtual_services = Vec::new();
        let mut selectors = BTreeSet::new();
        for (i, (hosts, vs)) in virtual_services.iter().enumerate() {
            for h in hosts {
                if h.starts_with('*') {
                    if wildcard_virtual_services.last() != Some(&i) {
                        wildcard_virtual_services.push(i);
                    }
                } else {
                    let at = virtual_services_by_host.entry(h.clone()).or_default();
                    if at.last() != Some(&i) {
                        at.push(i);
                    }
                }
            }
            source_labels_of(&vs.spec, &mut selectors);
        }
        for vs in all_virtual_services.values() {
            source_labels_of(&vs.spec, &mut selectors);
        }
        let authz = Arc::new(super::authz::Authz::from_config(config, &mesh));
        PushContext {
            virtual_services_by_host,
            wildcard_virtual_services,
            source_label_selectors: selectors.into_iter().collect(),
            version,
            authz,
            mesh,
            registry,
            destination_rules,
            virtual_services,
            all_virtual_services,
            gateway_virtual_services,
            gateways,
            sidecars,
            peer_authentications,
            authn: super::authn::AuthnIndex::from_config(config),
            domain_suffix,
            default_export,
        }
    }

    /// The services a proxy in `namespace` can see: those exported to it (a Service's
    /// `networking.istio.io/exportTo` annotation, a ServiceEntry's `exportTo`, else the mesh's
    /// `defaultServiceExportTo`).
    pub fn services_for<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.registry.services().filter(move |s| {
            exported_to(
                &s.namespace,
                &s.export_to,
                &self.default_export.services,
                namespace,
            )
        })
    }

    /// The destination rule that applies to `host` for a proxy in `namespace`, among those
    /// exported to it: one in the proxy's namespace first, then the service's, then the root
    /// namespace (mesh-wide defaults), then any other.
    pub fn destination_rule(
        &self,
        namespace: &str,
        service: &Service,
    ) -> Option<&Named<DestinationRule>> {
        let rules = self.destination_rules.get(&service.hostname)?;
        let visible = |r: &&Named<DestinationRule>| {
            exported_to(
                &r.namespace,
                &r.spec.export_to,
                &self.default_export.destination_rules,
                namespace,
            )
        };
        let root = self.mesh.root_namespace.as_str();
        [namespace, service.namespace.as_str(), root]
            .iter()
            .find_map(|ns| rules.iter().filter(visible).find(|r| r.namespace == *ns))
            .or_else(|| rules.iter().find(visible))
    }

    /// Every VirtualService, delegates included, by namespace and name.
    pub fn all_virtual_services(&self) -> impl Iterator<Item = &Named<VirtualService>> {
        self.all_virtual_services.values()
    }

    /// The subset of `service` named `subset`, for a proxy in `namespace`.
    pub fn subset(&self, namespace: &str, service: &Service, subset: &str) -> Option<&Subset> {
        self.destination_rule(namespace, service)?
            .spec
            .subsets
            .iter()
            .find(|s| s.name == subset)
    }

    /// The virtual service that routes `host` for a proxy in `namespace`, if any. Istio's
    /// precedence when several name the host: an exact host beats a wildcard, a longer
    /// wildcard beats a shorter one, then the first by namespace and name.
    pub fn virtual_service(&self, namespace: &str, host: &str) -> Option<&Named<VirtualService>> {
        // Only these can match: those naming `host` exactly and those with a wildcard, in
        // their order (an exact pattern matches its own host only).
        let exact = self
            .virtual_services_by_host
            .get(host)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut candidates = Vec::with_capacity(exact.len() + self.wildcard_virtual_services.len());
        candidates.extend_from_slice(exact);
        candidates.extend_from_slice(&self.wildcard_virtual_services);
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .map(|i| &self.virtual_services[i])
            .filter(|(_, vs)| self.vs_exported_to(vs, namespace))
            .filter_map(|(hosts, vs)| {
                let best = hosts
                    .iter()
                    .filter(|h| host_matches(h, host))
                    .map(|h| host_specificity(h))
                    .max()?;
                Some((best, vs))
            })
            // `max_by_key` keeps the last of equals: reverse so the first in order wins.
            .rev()
            .max_by_key(|(best, _)| *best)
            .map(|(_, vs)| vs)
    }

    /// The delegate virtual service `name` in `namespace`, if it exists and is visible to
    /// the delegating one's namespace.
    pub fn delegate(
        &self,
        namespace: &str,
        name: &str,
        from: &str,
    ) -> Option<&Named<VirtualService>> {
        self.all_virtual_services
            .get(&(namespace.to_string(), name.to_string()))
            .filter(|vs| vs.spec.hosts.is_empty())
            .filter(|vs| self.vs_exported_to(vs, from))
    }

    /// Whether a virtual service is exported to `namespace` (its `exportTo`, else the mesh's
    /// `defaultVirtualServiceExportTo`).
    fn vs_exported_to(&self, vs: &Named<VirtualService>, namespace: &str) -> bool {
        exported_to(
            &vs.namespace,
            &vs.spec.export_to,
            &self.default_export.virtual_services,
            namespace,
        )
    }

    /// The gateways whose selector picks `proxy` (an empty selector picks every gateway).
    pub fn gateways_for<'a>(
        &'a self,
        proxy: &'a Proxy,
    ) -> impl Iterator<Item = &'a Named<Gateway>> {
        self.gateways.iter().filter(move |g| {
            g.spec
                .selector
                .iter()
                .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
        })
    }

    /// The virtual services bound to gateway `ns/name` and exported to its namespace, with
    /// their resolved hosts.
    pub fn gateway_virtual_services<'a>(
        &'a self,
        gateway: &'a str,
    ) -> impl Iterator<Item = (&'a [String], &'a Named<VirtualService>)> + 'a {
        let gateway_ns = gateway.split_once('/').map_or("", |(ns, _)| ns);
        self.gateway_virtual_services
            .iter()
            .filter(move |(_, gws, _)| gws.iter().any(|g| g == gateway))
            .filter(move |(_, _, vs)| self.vs_exported_to(vs, gateway_ns))
            .map(|(hosts, _, vs)| (hosts.as_slice(), vs))
    }

    /// The Sidecar resource that applies to `proxy`: one in its namespace whose workload
    /// selector picks it, else the one without selector in its namespace, else the one without
    /// selector in the root namespace.
    pub fn sidecar_for(&self, proxy: &Proxy) -> Option<&Named<Sidecar>> {
        let selects = |s: &Named<Sidecar>| {
            s.spec.workload_selector.as_ref().is_some_and(|ws| {
                ws.labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
            })
        };
        let own = || {
            self.sidecars
                .iter()
                .filter(|s| s.namespace == proxy.namespace)
        };
        own()
            .find(|s| selects(s))
            .or_else(|| own().find(|s| s.spec.workload_selector.is_none()))
            .or_else(|| {
                self.sidecars.iter().find(|s| {
                    s.namespace == self.mesh.root_namespace && s.spec.workload_selector.is_none()
                })
            })
    }

    /// The services `proxy` gets config for: those visible to its namespace, narrowed to
    /// the egress hosts of its Sidecar resource when one applies (`ns/host`, where `ns` may be
    /// `*`, `.` for the proxy's own, `~` for none, and `host` may be `*` or `*.suffix`).
    pub fn services_for_proxy<'a>(
        &'a self,
        proxy: &'a Proxy,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        // A Sidecar without egress listeners narrows nothing (Istio's: it inherits the
        // defaults, every visible service).
        let sidecar = self
            .sidecar_for(proxy)
            .filter(|sc| !sc.spec.egress.is_empty());
        let egress: Option<Vec<(String, String)>> = sidecar.map(|sc| {
            sc.spec
                .egress
                .iter()
                .flat_map(|l| l.hosts.iter())
                .filter_map(|h| {
                    let (ns, host) = h.split_once('/')?;
                    // `.` is the proxy's namespace: a root-namespace Sidecar's `./*` keeps
                    // every proxy to its own namespace, as Istio's docs show.
                    let ns = if ns == "." {
                        proxy.namespace.clone()
                    } else {
                        ns.to_string()
                    };
                    Some((ns, host.to_string()))
                })
                .collect()
        });
        self.services_for(&proxy.namespace).filter(move |svc| {
            let Some(egress) = &egress else {
                return true;
            };
            egress.iter().any(|(ns, host)| {
                ns != "~"
                    && (ns == "*" || *ns == svc.namespace)
                    && (host == "*" || host_matches(host, &svc.hostname))
            })
        })
    }

    /// The mutual TLS mode of `proxy`'s inbound `port` (a workload port), as Istio resolves
    /// PeerAuthentications: the port-level mode, else the mode of the policy whose selector
    /// picks the workload, else the namespace's policy without selector, else the root
    /// namespace's; `UNSET` inherits from the next; then Istio 1.0's authentication Policy
    /// (see [`super::authn`]). `None` when nothing sets it.
    pub fn peer_authentication_mode(
        &self,
        proxy: &Proxy,
        port: u32,
    ) -> Option<mesh_proto::security::MtlsMode> {
        use mesh_proto::security::MtlsMode;
        let selects = |p: &Named<mesh_proto::security::PeerAuthentication>| {
            p.spec.selector.as_ref().is_some_and(|sel| {
                sel.match_labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v))
            })
        };
        let find = |ns: &str, selected: bool| {
            self.peer_authentications.iter().find(|p| {
                p.namespace == ns
                    && if selected {
                        selects(p)
                    } else {
                        p.spec.selector.is_none()
                    }
            })
        };
        let workload = find(&proxy.namespace, true);
        let namespace = find(&proxy.namespace, false);
        let root = find(&self.mesh.root_namespace, false);
        let set = |m: Option<MtlsMode>| m.filter(|m| *m != MtlsMode::Unset);
        workload
            .and_then(|p| set(p.spec.port_level_mtls.get(&port).and_then(|m| m.mode)))
            .or_else(|| workload.and_then(|p| set(p.spec.mtls.as_ref().and_then(|m| m.mode))))
            .or_else(|| namespace.and_then(|p| set(p.spec.mtls.as_ref().and_then(|m| m.mode))))
            .or_else(|| root.and_then(|p| set(p.spec.mtls.as_ref().and_then(|m| m.mode))))
            // Istio 1.0's authentication Policy / MeshPolicy, when no PeerAuthentication says.
            .or_else(|| self.authn.legacy_mtls_mode(&self.registry, proxy, port))
    }

    /// Which of the mesh's VirtualService `sourceLabels` selectors pick `proxy`, one
    /// character each (`1` or `0`): all that its labels change in its outbound listeners and
    /// routes (empty when no VirtualService matches on source labels).
    pub fn source_label_matches(&self, proxy: &Proxy) -> String {
        self.source_label_selectors
            .iter()
            .map(|sel| {
                let picks = sel
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k).is_some_and(|l| l == v));
                if picks { '1' } else { '0' }
            })
            .collect()
    }

    /// The outbound traffic policy of `proxy`: its Sidecar's, else the mesh's.
    pub fn outbound_mode(&self, proxy: &Proxy) -> crate::mesh::OutboundMode {
        use mesh_proto::networking::OutboundMode as SidecarMode;
        match self
            .sidecar_for(proxy)
            .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
            .and_then(|p| p.mode)
        {
            Some(SidecarMode::RegistryOnly) => crate::mesh::OutboundMode::RegistryOnly,
            Some(SidecarMode::AllowAny) => crate::mesh::OutboundMode::AllowAny,
            None => self.mesh.outbound_traffic_policy.mode,
        }
    }

    /// Resolves a host as written in config in `namespace` to a FQDN.
    pub fn resolve(&self, host: &str, namespace: &str) -> String {
        resolve_host(host, namespace, &self.domain_suffix)
    }
}

/// Adds the `sourceLabels` of every match of `vs` (HTTP, TLS, TCP) to `into`.
fn source_labels_of(vs: &VirtualService, into: &mut BTreeSet<BTreeMap<String, String>>) {
    let http = vs
        .http
        .iter()
        .flat_map(|r| r.matches.iter())
        .map(|m| &m.source_labels);
    let tls = vs
        .tls
        .iter()
        .flat_map(|r| r.matches.iter())
        .map(|m| &m.source_labels);
    let tcp = vs
        .tcp
        .iter()
        .flat_map(|r| r.matches.iter())
        .map(|m| &m.source_labels);
    for labels in http.chain(tls).chain(tcp) {
        if !labels.is_empty() {
            into.insert(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        }
    }
}

/// Istio's short-name rule: a host without dots is a service in the rule's namespace.
pub fn resolve_host(host: &str, namespace: &str, suffix: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{suffix}")
    }
}

/// `ns/name` of a gateway as a VirtualService in `namespace` names it (`name` or `ns/name`).
pub fn gateway_name(gateway: &str, namespace: &str) -> String {
    if gateway.contains('/') {
        gateway.to_string()
    } else {
        format!("{namespace}/{gateway}")
    }
}

fn named<T: Clone>(
    config: &Snapshot,
    kind: &Kind,
    get: impl Fn(&Spec) -> Option<&T>,
) -> Vec<Named<T>> {
    config
        .of_kind(kind)
        .filter_map(|obj| {
            Some(Named {
                namespace: obj.key.namespace.clone(),
                name: obj.key.name.clone(),
                spec: Arc::new(get(&obj.spec)?.clone()),
            })
        })
        .collect()
}

// === impl DefaultExportTo ===

impl DefaultExportTo {
    /// Reads MeshConfig's `default*ExportTo` lists (`*` when unset or not a list of strings).
    fn from_mesh(mesh: &MeshConfig) -> Self {
        let list = |field: &str| -> Vec<String> {
            mesh.other
                .get(field)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(|s| s.trim().to_string()))
                        .collect::<Vec<_>>()
                })
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| vec!["*".to_string()])
        };
        Self {
            services: list("defaultServiceExportTo"),
            virtual_services: list("defaultVirtualServiceExportTo"),
            destination_rules: list("defaultDestinationRuleExportTo"),
        }
    }
}

/// Whether config in namespace `owner` with `export_to` (`default` when empty) is visible
/// from `namespace`, with Istio's values: `*` every namespace, `.` the owner's, `~` none, or
/// a namespace name. As in Istio, a list of other namespaces does not include the owner's.
pub fn exported_to(owner: &str, export_to: &[String], default: &[String], namespace: &str) -> bool {
    let list = if export_to.is_empty() {
        default
    } else {
        export_to
    };
    list.iter()
        .any(|e| e == "*" || e == namespace || (e == "." && owner == namespace))
}

/// How specific a host pattern is: exact hosts first, then wildcards by length.
fn host_specificity(pattern: &str) -> (bool, usize) {
    (!pattern.starts_with('*'), pattern.len())
}

/// Whether a (possibly wildcarded, `*.example.com`) pattern matches a host.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{TestConfig, mk_sidecar, push_context as context};

    fn context_with(text: &str, mesh: MeshConfig) -> PushContext {
        TestConfig::from_yaml(text).mesh(mesh).push_context()
    }

    fn proxy(namespace: &str, labels: &[(&str, &str)]) -> Proxy {
        mk_sidecar(namespace, "127.0.0.9").labels(labels).build()
    }

    /// `web` in `a`, a ServiceEntry per export, and rules per export.
    const EXPORTS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: web, namespace: a}
spec:
  hosts: [web.a.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: private, namespace: a}
spec:
  hosts: [private.a.svc.cluster.local]
  exportTo: [.]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: to-b, namespace: a}
spec:
  hosts: [to-b.a.svc.cluster.local]
  exportTo: [b]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: hidden, namespace: a}
spec:
  hosts: [hidden.a.svc.cluster.local]
  exportTo: [\"~\"]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.4}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: web-private, namespace: a}
spec:
  hosts: [web.a.svc.cluster.local]
  exportTo: [.]
  http: [{route: [{destination: {host: web.a.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: web-private, namespace: a}
spec:
  host: web.a.svc.cluster.local
  exportTo: [.]
  subsets: [{name: own, labels: {v: own}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: web-default, namespace: istio-system}
spec:
  host: web.a.svc.cluster.local
  subsets: [{name: mesh, labels: {v: mesh}}]
";

    fn hosts(ctx: &PushContext, namespace: &str) -> Vec<String> {
        ctx.services_for(namespace)
            .map(|s| s.hostname.split('.').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn service_entries_are_seen_where_they_are_exported() {
        let ctx = context(EXPORTS);
        assert_eq!(hosts(&ctx, "a"), ["private", "web"]);
        assert_eq!(hosts(&ctx, "b"), ["to-b", "web"]);
        assert_eq!(hosts(&ctx, "c"), ["web"]);
    }

    #[test]
    fn a_dot_exported_virtual_service_routes_only_its_namespace() {
        let ctx = context(EXPORTS);
        let host = "web.a.svc.cluster.local";
        assert_eq!(
            ctx.virtual_service("a", host).map(|v| v.name.as_str()),
            Some("web-private")
        );
        assert!(ctx.virtual_service("b", host).is_none());
    }

    #[test]
    fn destination_rules_fall_back_to_the_root_namespace() {
        let ctx = context(EXPORTS);
        let svc = ctx
            .registry
            .service("web.a.svc.cluster.local")
            .unwrap()
            .clone();
        // Its own namespace sees the private rule first.
        assert_eq!(ctx.destination_rule("a", &svc).unwrap().name, "web-private");
        // Elsewhere the private rule is invisible: the root namespace's applies mesh-wide.
        assert_eq!(ctx.destination_rule("b", &svc).unwrap().name, "web-default");
        assert!(ctx.subset("b", &svc, "mesh").is_some());
        assert!(ctx.subset("b", &svc, "own").is_none());
    }

    #[test]
    fn the_mesh_default_export_applies_to_config_that_does_not_say() {
        let mut mesh = MeshConfig::default();
        for field in [
            "defaultServiceExportTo",
            "defaultVirtualServiceExportTo",
            "defaultDestinationRuleExportTo",
        ] {
            mesh.other.insert(field.into(), serde_json::json!(["."]));
        }
        let ctx = context_with(EXPORTS, mesh);
        assert_eq!(hosts(&ctx, "c"), Vec::<String>::new());
        assert_eq!(hosts(&ctx, "b"), ["to-b"]);
        let svc = ctx
            .registry
            .service("web.a.svc.cluster.local")
            .unwrap()
            .clone();
        // The root namespace's rule is now only for the root namespace.
        assert!(ctx.destination_rule("b", &svc).is_none());
        assert!(ctx.destination_rule("istio-system", &svc).is_some());
    }

    #[test]
    fn explicit_namespaces_exclude_the_owner_as_in_istio() {
        let only_b = vec!["b".to_string()];
        assert!(exported_to("a", &only_b, &[], "b"));
        assert!(!exported_to("a", &only_b, &[], "a"));
        let star = vec!["*".to_string()];
        assert!(exported_to("a", &[], &star, "z"));
        let none = vec!["~".to_string()];
        assert!(!exported_to("a", &none, &star, "a"));
        let both = vec![".".to_string(), "c".to_string()];
        assert!(exported_to("a", &both, &star, "a"));
        assert!(exported_to("a", &both, &star, "c"));
        assert!(!exported_to("a", &both, &star, "b"));
    }

    #[test]
    fn the_root_namespace_sidecar_is_the_mesh_default() {
        let ctx = context(
            "apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  egress: [{hosts: [\"./*\"]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: own, namespace: a}
spec:
  egress: [{hosts: [\"*/*\"]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: picky, namespace: a}
spec:
  workloadSelector: {labels: {app: picky}}
  egress: [{hosts: [\"~/*\"]}]
",
        );
        let name = |p: &Proxy| ctx.sidecar_for(p).map(|s| s.name.clone());
        assert_eq!(name(&proxy("b", &[])).as_deref(), Some("default"));
        assert_eq!(name(&proxy("a", &[])).as_deref(), Some("own"));
        assert_eq!(
            name(&proxy("a", &[("app", "picky")])).as_deref(),
            Some("picky")
        );
    }

    #[test]
    fn a_root_namespace_sidecar_keeps_each_proxy_to_its_own_namespace() {
        let text = format!(
            "{EXPORTS}---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: default, namespace: istio-system}}
spec:
  egress: [{{hosts: [\"./*\"]}}]
"
        );
        let ctx = context(&text);
        let seen = |ns: &str| -> Vec<String> {
            let p = proxy(ns, &[]);
            ctx.services_for_proxy(&p)
                .map(|s| s.hostname.clone())
                .collect()
        };
        assert_eq!(
            seen("a"),
            ["private.a.svc.cluster.local", "web.a.svc.cluster.local"]
        );
        assert_eq!(seen("b"), Vec::<String>::new());
    }

    #[test]
    fn a_sidecar_with_ingress_only_narrows_no_egress() {
        let text = format!(
            "{EXPORTS}---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: default, namespace: a}}
spec:
  ingress: [{{port: {{number: 9080, name: http, protocol: HTTP}}, defaultEndpoint: 127.0.0.1:8080}}]
"
        );
        let ctx = context(&text);
        let p = proxy("a", &[]);
        assert!(ctx.sidecar_for(&p).is_some());
        let with: Vec<String> = ctx
            .services_for_proxy(&p)
            .map(|s| s.hostname.clone())
            .collect();
        let without = context(EXPORTS);
        let all: Vec<String> = without
            .services_for_proxy(&p)
            .map(|s| s.hostname.clone())
            .collect();
        assert!(!all.is_empty());
        assert_eq!(with, all);
    }

    #[test]
    fn short_names_resolve_in_the_rule_namespace() {
        assert_eq!(
            resolve_host("reviews", "default", "cluster.local"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("httpbin.org", "default", "cluster.local"),
            "httpbin.org"
        );
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.org"));
    }
}
