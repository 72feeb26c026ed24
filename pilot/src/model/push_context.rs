//! The push context: an immutable, indexed view of everything a generation of Envoy config is
//! computed from (registry, traffic config, mesh config). A new one is built for every full
//! push; proxies generate from the one current when they are pushed.

use std::collections::BTreeMap;
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
    /// Every virtual service by (namespace, name), delegates (no hosts) included.
    all_virtual_services: BTreeMap<(String, String), Named<VirtualService>>,
    /// Virtual services bound to gateways: hosts (resolved) and gateways as `ns/name`.
    gateway_virtual_services: Vec<(Vec<String>, Vec<String>, Named<VirtualService>)>,
    /// Gateways, ordered by namespace and name.
    gateways: Vec<Named<Gateway>>,
    /// Sidecar resources, ordered by namespace and name.
    sidecars: Vec<Named<Sidecar>>,
    /// The cluster DNS suffix (`cluster.local`).
    pub domain_suffix: String,
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
        PushContext {
            version,
            mesh,
            registry,
            destination_rules,
            virtual_services,
            all_virtual_services,
            gateway_virtual_services,
            gateways,
            sidecars,
            domain_suffix,
        }
    }

    /// The services a proxy in `namespace` can see.
    pub fn services_for<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.registry
            .services()
            .filter(move |s| s.visible_to(namespace))
    }

    /// The destination rule that applies to `host` for a proxy in `namespace`: one in the
    /// proxy's namespace first, then the service's, then the root namespace, then any other
    /// exported one.
    pub fn destination_rule(
        &self,
        namespace: &str,
        service: &Service,
    ) -> Option<&Named<DestinationRule>> {
        let rules = self.destination_rules.get(&service.hostname)?;
        let visible = |r: &&Named<DestinationRule>| {
            r.namespace == namespace
                || r.spec.export_to.is_empty()
                || r.spec
                    .export_to
                    .iter()
                    .any(|e| e == "*" || (e == "." && r.namespace == namespace) || e == namespace)
        };
        let root = self.mesh.root_namespace.as_str();
        [namespace, service.namespace.as_str(), root]
            .iter()
            .find_map(|ns| rules.iter().filter(visible).find(|r| r.namespace == *ns))
            .or_else(|| rules.iter().find(visible))
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
        self.virtual_services
            .iter()
            .filter(|(_, vs)| exported_to(&vs.namespace, &vs.spec.export_to, namespace))
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
            .filter(|vs| exported_to(&vs.namespace, &vs.spec.export_to, from))
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

    /// The virtual services bound to gateway `ns/name`, with their resolved hosts.
    pub fn gateway_virtual_services<'a>(
        &'a self,
        gateway: &'a str,
    ) -> impl Iterator<Item = (&'a [String], &'a Named<VirtualService>)> + 'a {
        self.gateway_virtual_services
            .iter()
            .filter(move |(_, gws, _)| gws.iter().any(|g| g == gateway))
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
        let egress: Option<Vec<(String, String)>> = self.sidecar_for(proxy).map(|sc| {
            sc.spec
                .egress
                .iter()
                .flat_map(|l| l.hosts.iter())
                .filter_map(|h| {
                    let (ns, host) = h.split_once('/')?;
                    let ns = if ns == "." {
                        sc.namespace.clone()
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

/// Whether config in `owner` exported to `export_to` is visible from `namespace`.
fn exported_to(owner: &str, export_to: &[String], namespace: &str) -> bool {
    owner == namespace
        || export_to.is_empty()
        || export_to
            .iter()
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
