//! The service registry: every service of the mesh with its endpoints by port.
//!
//! In file mode it is built from ServiceEntries (with inline `endpoints`, or WorkloadEntries
//! picked by `workloadSelector`); on Kubernetes it is fed from Services and EndpointSlices.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_proto::networking::{self as net, WorkloadEntrySpec};
use mesh_proto::{Kind, Spec};
use mesh_runtime::Snapshot;

use super::service::{Endpoint, Port, Protocol, Resolution, Service};

/// Services by hostname, and their endpoints by (hostname, service port).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    services: BTreeMap<String, Arc<Service>>,
    endpoints: BTreeMap<(String, u32), Arc<Vec<Endpoint>>>,
    /// Workloads (pods) by IP, where the platform knows them.
    workloads: BTreeMap<String, Arc<Workload>>,
}

/// A workload the platform knows by IP (a Kubernetes pod): what a proxy at that IP is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
}

/// What changed between two registries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryDiff {
    /// Services were added, removed or changed (ports, addresses, resolution...).
    pub services_changed: bool,
    /// Hostnames whose endpoints changed (and nothing else about them).
    pub endpoints_changed: BTreeSet<String>,
}

// === impl Registry ===

impl Registry {
    /// Builds the registry from the ServiceEntries and WorkloadEntries of a config snapshot.
    /// Returns a warning for each host defined twice (the first definition wins).
    pub fn from_config(snapshot: &Snapshot) -> (Registry, Vec<String>) {
        let mut reg = Registry::default();
        let mut warnings = Vec::new();
        let workloads: Vec<(&str, &WorkloadEntrySpec)> = snapshot
            .of_kind(&Kind::WorkloadEntry)
            .filter_map(|o| match &o.spec {
                Spec::WorkloadEntry(we) => Some((o.key.namespace.as_str(), we)),
                _ => None,
            })
            .collect();
        // ServiceEntries, then the legacy EgressRules of Istio 0.5-0.7 as the ServiceEntries
        // they stand for (a host a ServiceEntry defines wins).
        let mut entries: Vec<(String, String, std::borrow::Cow<'_, net::ServiceEntry>)> = snapshot
            .of_kind(&Kind::ServiceEntry)
            .filter_map(|obj| match &obj.spec {
                Spec::ServiceEntry(se) => Some((
                    obj.key.namespace.clone(),
                    obj.key.to_string(),
                    std::borrow::Cow::Borrowed(se),
                )),
                _ => None,
            })
            .collect();
        for (namespace, name, se) in crate::legacy::egress_service_entries(snapshot) {
            let label = format!("EgressRule {namespace}/{name}");
            entries.push((namespace, label, std::borrow::Cow::Owned(se)));
        }
        for (namespace, label, se) in &entries {
            let namespace = namespace.as_str();
            let selected: Vec<&WorkloadEntrySpec> = match &se.workload_selector {
                Some(sel) => workloads
                    .iter()
                    .filter(|(ns, we)| {
                        *ns == namespace
                            && sel
                                .labels
                                .iter()
                                .all(|(k, v)| we.labels.get(k).is_some_and(|l| l == v))
                    })
                    .map(|(_, we)| *we)
                    .collect(),
                None => se.endpoints.iter().collect(),
            };
            for host in &se.hosts {
                if reg.services.contains_key(host) {
                    warnings.push(format!(
                        "{label}: host {host} is already defined by another ServiceEntry; ignored"
                    ));
                    continue;
                }
                let service = service_from_entry(host, namespace, se);
                for port in &service.ports {
                    let eps = endpoints_for(&service, port, host, &selected);
                    reg.endpoints
                        .insert((host.clone(), port.number), Arc::new(eps));
                }
                reg.services.insert(host.clone(), Arc::new(service));
            }
        }
        (reg, warnings)
    }

    /// Adds a service and its endpoints by service port; a host already present is kept.
    pub fn add(&mut self, service: Service, endpoints: BTreeMap<u32, Vec<Endpoint>>) {
        if self.services.contains_key(&service.hostname) {
            return;
        }
        for port in &service.ports {
            let mut eps = endpoints.get(&port.number).cloned().unwrap_or_default();
            eps.sort();
            self.endpoints
                .insert((service.hostname.clone(), port.number), Arc::new(eps));
        }
        self.services
            .insert(service.hostname.clone(), Arc::new(service));
    }

    /// Records the workload at an IP.
    pub fn add_workload(&mut self, ip: String, workload: Workload) {
        self.workloads.insert(ip, Arc::new(workload));
    }

    /// The workload at an IP, if the platform knows one.
    pub fn workload(&self, ip: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(ip)
    }

    /// Every service, by hostname.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(hostname)
    }

    /// The endpoints of a service port (empty when unknown).
    pub fn endpoints(&self, hostname: &str, port: u32) -> &[Endpoint] {
        self.endpoints
            .get(&(hostname.to_string(), port))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// The service instances at an IP: what a proxy with that IP serves.
    pub fn instances_at<'a>(
        &'a self,
        ip: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<Service>, &'a Port, &'a Endpoint)> + 'a {
        self.services.values().flat_map(move |svc| {
            svc.ports.iter().flat_map(move |port| {
                self.endpoints(&svc.hostname, port.number)
                    .iter()
                    .filter(move |ep| ep.address == ip)
                    .map(move |ep| (svc, port, ep))
            })
        })
    }

    /// Merges `other` into this registry; hosts already present win.
    pub fn merge(&mut self, other: Registry) {
        for (host, svc) in other.services {
            if self.services.contains_key(&host) {
                continue;
            }
            self.services.insert(host.clone(), svc);
        }
        for (key, eps) in other.endpoints {
            self.endpoints.entry(key).or_insert(eps);
        }
        for (ip, w) in other.workloads {
            self.workloads.entry(ip).or_insert(w);
        }
    }

    /// What changed from `old` to this registry.
    pub fn diff(&self, old: &Registry) -> RegistryDiff {
        let mut diff = RegistryDiff {
            services_changed: self.services != old.services,
            ..Default::default()
        };
        let keys: BTreeSet<&(String, u32)> =
            self.endpoints.keys().chain(old.endpoints.keys()).collect();
        for key in keys {
            if self.endpoints.get(key) != old.endpoints.get(key) {
                diff.endpoints_changed.insert(key.0.clone());
            }
        }
        diff
    }
}

fn service_from_entry(host: &str, namespace: &str, se: &net::ServiceEntry) -> Service {
    let resolution = match se.resolution {
        Some(net::Resolution::Static) => Resolution::Static,
        Some(net::Resolution::Dns)
        | Some(net::Resolution::DnsRoundRobin)
        | Some(net::Resolution::DynamicDns) => Resolution::Dns,
        Some(net::Resolution::None) | None => Resolution::Passthrough,
    };
    let ports = se
        .ports
        .iter()
        .map(|p| Port {
            name: p.name.clone(),
            number: p.number,
            protocol: match &p.protocol {
                Some(proto) => Protocol::parse(proto),
                None => Protocol::from_port_name(&p.name),
            },
            target_port: p.target_port,
        })
        .collect();
    Service {
        hostname: host.to_string(),
        namespace: namespace.to_string(),
        addresses: se.addresses.clone(),
        ports,
        resolution,
        mesh_external: !matches!(se.location, Some(net::Location::MeshInternal)),
        export_to: se.export_to.clone(),
    }
}

fn endpoints_for(
    service: &Service,
    port: &Port,
    host: &str,
    workloads: &[&WorkloadEntrySpec],
) -> Vec<Endpoint> {
    let mut eps: Vec<Endpoint> = workloads
        .iter()
        .map(|we| Endpoint {
            address: we.address.clone(),
            port: we
                .ports
                .get(&port.name)
                .copied()
                .or(port.target_port)
                .unwrap_or(port.number),
            labels: we.labels.clone(),
            service_account: we.service_account.clone(),
            locality: we.locality.clone(),
            weight: we.weight,
        })
        .collect();
    if eps.is_empty() && service.resolution == Resolution::Dns {
        // A DNS ServiceEntry without endpoints resolves its own host.
        eps.push(Endpoint {
            address: host.to_string(),
            port: port.target_port.unwrap_or(port.number),
            labels: BTreeMap::new(),
            service_account: None,
            locality: None,
            weight: None,
        });
    }
    eps.sort();
    eps
}
