//! The push context: an immutable, indexed view of everything a generation of Envoy config is
//! computed from (registry, traffic config, mesh config). A new one is built for every full
//! push; proxies generate from the one current when they are pushed.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_proto::networking::{DestinationRule, Subset, VirtualService};
use mesh_proto::{Kind, Spec};
use mesh_runtime::Snapshot;

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
    /// Virtual services bound to sidecars (`mesh` gateway), hosts resolved to FQDNs.
    virtual_services: Vec<(Vec<String>, Named<VirtualService>)>,
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
        for obj in config.of_kind(&Kind::VirtualService) {
            if let Spec::VirtualService(vs) = &obj.spec {
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
        PushContext {
            version,
            mesh,
            registry,
            destination_rules,
            virtual_services,
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

    /// The virtual service that routes `host` for a proxy in `namespace`, if any: the first
    /// visible one (ordered by namespace and name) that names the host.
    pub fn virtual_service(&self, namespace: &str, host: &str) -> Option<&Named<VirtualService>> {
        self.virtual_services
            .iter()
            .filter(|(_, vs)| {
                vs.namespace == namespace
                    || vs.spec.export_to.is_empty()
                    || vs.spec.export_to.iter().any(|e| {
                        e == "*" || e == namespace || (e == "." && vs.namespace == namespace)
                    })
            })
            .find(|(hosts, _)| hosts.iter().any(|h| host_matches(h, host)))
            .map(|(_, vs)| vs)
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
