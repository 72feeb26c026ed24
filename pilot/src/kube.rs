//! The Kubernetes service registry: Services, EndpointSlices and Pods from the API server,
//! turned into Istio's service model (`NAME.NAMESPACE.svc.cluster.local`, ports with protocols
//! from `appProtocol` or the port-name prefix, endpoints with pod labels and identities).
//! Headless Services (`clusterIP: None`) are passthrough services (resolution NONE), as in
//! Istio; ExternalName Services are mesh-external DNS services of their `externalName`; the
//! `networking.istio.io/exportTo` annotation sets a Service's `exportTo`.
//!
//! Each kind is listed and watched with kube-rs (relisting after a 410 Gone or a broken
//! connection, with backoff); the registry is rebuilt from the watched objects after each
//! burst of events and published as a whole. A registry is published only once every kind has
//! been listed, so proxies never see a half-synced cluster, and the last published registry
//! keeps serving while the API server is away.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use mesh_runtime::Shutdown;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use crate::model::registry::Workload;
use crate::model::{Endpoint, Port, Protocol, Registry, Resolution, Service};

/// The watched objects, by namespace/name.
#[derive(Debug, Default)]
struct Objects {
    services: BTreeMap<(String, String), KubeService>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    pods: BTreeMap<(String, String), Pod>,
    synced: BTreeSet<&'static str>,
}

const KINDS: [&str; 3] = ["Service", "EndpointSlice", "Pod"];

/// Starts watching the cluster. The receiver holds `None` until every kind has been listed,
/// then the newest registry.
pub fn watch_registry(
    client: kube::Client,
    domain: String,
    shutdown: Shutdown,
) -> watch::Receiver<Option<Arc<Registry>>> {
    let objects = Arc::new(Mutex::new(Objects::default()));
    let changed = Arc::new(Notify::new());
    let (tx, rx) = watch::channel(None);
    tokio::spawn(watch_kind::<KubeService>(
        Api::all(client.clone()),
        "Service",
        objects.clone(),
        changed.clone(),
        shutdown.clone(),
        |o| &mut o.services,
    ));
    tokio::spawn(watch_kind::<EndpointSlice>(
        Api::all(client.clone()),
        "EndpointSlice",
        objects.clone(),
        changed.clone(),
        shutdown.clone(),
        |o| &mut o.slices,
    ));
    tokio::spawn(watch_kind::<Pod>(
        Api::all(client),
        "Pod",
        objects.clone(),
        changed.clone(),
        shutdown.clone(),
        |o| &mut o.pods,
    ));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.notified() => {}
            }
            // Coalesce a burst (a relist, a rollout) into one registry.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let registry = {
                let o = objects.lock().unwrap_or_else(|p| p.into_inner());
                if o.synced.len() < KINDS.len() {
                    continue;
                }
                build(&o, &domain)
            };
            let changed = tx.borrow().as_deref() != Some(&registry);
            tracing::debug!(
                changed,
                services = registry.services().count(),
                "registry rebuilt"
            );
            if changed {
                tx.send_replace(Some(Arc::new(registry)));
            }
        }
    });
    rx
}

async fn watch_kind<K>(
    api: Api<K>,
    kind: &'static str,
    objects: Arc<Mutex<Objects>>,
    changed: Arc<Notify>,
    shutdown: Shutdown,
    map: fn(&mut Objects) -> &mut BTreeMap<(String, String), K>,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer: Vec<K> = Vec::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => buffer.push(o),
            Ok(watcher::Event::InitDone) => {
                let mut all = objects.lock().unwrap_or_else(|p| p.into_inner());
                let m = map(&mut all);
                m.clear();
                for o in buffer.drain(..) {
                    m.insert(key(&o), o);
                }
                all.synced.insert(kind);
                tracing::debug!(kind, "listed");
                drop(all);
                changed.notify_one();
            }
            Ok(watcher::Event::Apply(o)) => {
                tracing::trace!(kind, name = %o.name_any(), "applied");
                let mut all = objects.lock().unwrap_or_else(|p| p.into_inner());
                map(&mut all).insert(key(&o), o);
                drop(all);
                changed.notify_one();
            }
            Ok(watcher::Event::Delete(o)) => {
                let mut all = objects.lock().unwrap_or_else(|p| p.into_inner());
                map(&mut all).remove(&key(&o));
                drop(all);
                changed.notify_one();
            }
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; relisting with backoff"),
        }
    }
}

/// Istio's protocol of a Kubernetes service port: `appProtocol` first, then the name prefix.
pub fn port_protocol(name: Option<&str>, app_protocol: Option<&str>, l4: Option<&str>) -> Protocol {
    if l4 == Some("UDP") {
        return Protocol::Udp;
    }
    if let Some(p) = app_protocol {
        let p = p.rsplit('/').next().unwrap_or(p);
        let parsed = match p {
            "kubernetes.io/h2c" | "h2c" => Protocol::Http2,
            other => Protocol::parse(other),
        };
        if parsed != Protocol::Unsupported {
            return parsed;
        }
    }
    name.map(Protocol::from_port_name)
        .unwrap_or(Protocol::Unsupported)
}

fn build(o: &Objects, domain: &str) -> Registry {
    let mut registry = Registry::default();
    let mut pods_by_name: BTreeMap<(&str, &str), &Pod> = BTreeMap::new();
    for ((ns, name), pod) in &o.pods {
        pods_by_name.insert((ns, name), pod);
        let Some(status) = &pod.status else { continue };
        let spec = pod.spec.as_ref();
        let workload = Workload {
            name: name.clone(),
            namespace: ns.clone(),
            labels: pod.labels().clone(),
            service_account: spec.and_then(|s| s.service_account_name.clone()),
        };
        for ip in status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.clone())
            .chain(status.pod_ip.clone())
        {
            if !ip.is_empty() {
                registry.add_workload(ip, workload.clone());
            }
        }
    }

    // Slices by the service they belong to.
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for ((ns, _), slice) in &o.slices {
        if let Some(svc) = slice.labels().get("kubernetes.io/service-name") {
            slices.entry((ns, svc)).or_default().push(slice);
        }
    }

    for ((ns, name), svc) in &o.services {
        let Some(spec) = &svc.spec else { continue };
        let hostname = format!("{name}.{ns}.svc.{domain}");
        let external = spec.type_.as_deref() == Some("ExternalName");
        // A headless service (`clusterIP: None`) has no virtual IP: clients connect to pod
        // IPs themselves, and Istio passes the connection through to the address they chose
        // (resolution NONE: an ORIGINAL_DST cluster). Its endpoints are kept for the
        // proxies' inbound side and per-endpoint listeners.
        let headless = !external && spec.cluster_ip.as_deref() == Some("None");
        let ports: Vec<Port> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| Port {
                name: p.name.clone().unwrap_or_default(),
                number: p.port as u32,
                protocol: port_protocol(
                    p.name.as_deref(),
                    p.app_protocol.as_deref(),
                    p.protocol.as_deref(),
                ),
                target_port: match &p.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        Some(*n as u32)
                    }
                    _ => None,
                },
            })
            .collect();
        let addresses = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut endpoints: BTreeMap<u32, Vec<Endpoint>> = BTreeMap::new();
        if external {
            if let Some(host) = &spec.external_name {
                for p in &ports {
                    endpoints.entry(p.number).or_default().push(Endpoint {
                        address: host.clone(),
                        port: p.number,
                        labels: BTreeMap::new(),
                        service_account: None,
                        locality: None,
                        weight: None,
                    });
                }
            }
        } else {
            for slice in slices
                .get(&(ns.as_str(), name.as_str()))
                .into_iter()
                .flatten()
            {
                add_slice_endpoints(slice, &ports, &pods_by_name, domain, &mut endpoints);
            }
        }
        let service = Service {
            hostname,
            namespace: ns.clone(),
            addresses,
            ports,
            resolution: if external {
                Resolution::Dns
            } else if headless {
                Resolution::Passthrough
            } else {
                Resolution::Static
            },
            mesh_external: external,
            export_to: svc
                .annotations()
                .get("networking.istio.io/exportTo")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
        };
        registry.add(service, endpoints);
    }
    registry
}

fn add_slice_endpoints(
    slice: &EndpointSlice,
    ports: &[Port],
    pods: &BTreeMap<(&str, &str), &Pod>,
    domain: &str,
    out: &mut BTreeMap<u32, Vec<Endpoint>>,
) {
    for ep in &slice.endpoints {
        // Istio sends only ready endpoints (terminating ones drain on their own).
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let pod = ep.target_ref.as_ref().and_then(|r| {
            (r.kind.as_deref() == Some("Pod"))
                .then(|| pods.get(&(r.namespace.as_deref()?, r.name.as_deref()?)))
                .flatten()
        });
        let labels = pod.map(|p| p.labels().clone()).unwrap_or_default();
        let service_account = pod.and_then(|p| {
            let sa = p.spec.as_ref()?.service_account_name.clone()?;
            Some(format!(
                "spiffe://{domain}/ns/{}/sa/{sa}",
                p.namespace().unwrap_or_default()
            ))
        });
        let locality = ep.zone.clone();
        for slice_port in slice.ports.iter().flatten() {
            let Some(number) = slice_port.port else {
                continue;
            };
            // A slice port matches the service port of the same name.
            let name = slice_port.name.clone().unwrap_or_default();
            let Some(svc_port) = ports.iter().find(|p| p.name == name) else {
                continue;
            };
            for address in &ep.addresses {
                out.entry(svc_port.number).or_default().push(Endpoint {
                    address: address.clone(),
                    port: number as u32,
                    labels: labels.clone(),
                    service_account: service_account.clone(),
                    locality: locality.clone(),
                    weight: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(services: serde_json::Value, slices: serde_json::Value) -> Objects {
        let mut o = Objects::default();
        for svc in services.as_array().unwrap() {
            let svc: KubeService = serde_json::from_value(svc.clone()).unwrap();
            o.services
                .insert((svc.namespace().unwrap(), svc.name_any()), svc);
        }
        for slice in slices.as_array().unwrap() {
            let slice: EndpointSlice = serde_json::from_value(slice.clone()).unwrap();
            o.slices
                .insert((slice.namespace().unwrap(), slice.name_any()), slice);
        }
        o
    }

    #[test]
    fn headless_services_pass_through_to_their_endpoints() {
        let o = objects(
            serde_json::json!([{
                "metadata": {"name": "db", "namespace": "ns"},
                "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                         "ports": [{"name": "tcp-db", "port": 5432}]},
            }, {
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80}]},
            }]),
            serde_json::json!([{
                "metadata": {"name": "db-1", "namespace": "ns",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.1.0.5"], "conditions": {"ready": true}}],
                "ports": [{"name": "tcp-db", "port": 5432}],
            }]),
        );
        let reg = build(&o, "cluster.local");
        let db = reg.service("db.ns.svc.cluster.local").unwrap();
        assert_eq!(db.resolution, Resolution::Passthrough);
        assert!(db.addresses.is_empty(), "{:?}", db.addresses);
        assert_eq!(
            reg.endpoints("db.ns.svc.cluster.local", 5432)[0].address,
            "127.1.0.5"
        );
        let web = reg.service("web.ns.svc.cluster.local").unwrap();
        assert_eq!(web.resolution, Resolution::Static);
        assert_eq!(web.addresses, ["10.96.0.9"]);
    }

    #[test]
    fn external_name_services_resolve_their_name() {
        let o = objects(
            serde_json::json!([{
                "metadata": {"name": "ext", "namespace": "ns"},
                "spec": {"type": "ExternalName", "externalName": "httpbin.org",
                         "ports": [{"name": "http", "port": 80}]},
            }]),
            serde_json::json!([]),
        );
        let reg = build(&o, "cluster.local");
        let ext = reg.service("ext.ns.svc.cluster.local").unwrap();
        assert_eq!(ext.resolution, Resolution::Dns);
        assert!(ext.mesh_external);
        let eps = reg.endpoints("ext.ns.svc.cluster.local", 80);
        assert_eq!(eps.len(), 1);
        assert_eq!((eps[0].address.as_str(), eps[0].port), ("httpbin.org", 80));
    }

    #[test]
    fn the_export_annotation_limits_a_service() {
        let o = objects(
            serde_json::json!([{
                "metadata": {"name": "web", "namespace": "ns",
                             "annotations": {"networking.istio.io/exportTo": ". , other"}},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80}]},
            }]),
            serde_json::json!([]),
        );
        let reg = build(&o, "cluster.local");
        let web = reg.service("web.ns.svc.cluster.local").unwrap();
        assert_eq!(web.export_to, [".", "other"]);
    }

    #[test]
    fn protocols_follow_istio() {
        assert_eq!(port_protocol(Some("http-web"), None, None), Protocol::Http);
        assert_eq!(
            port_protocol(Some("web"), Some("http"), None),
            Protocol::Http
        );
        assert_eq!(
            port_protocol(Some("x"), Some("kubernetes.io/h2c"), None),
            Protocol::Http2
        );
        assert_eq!(port_protocol(Some("grpc"), None, None), Protocol::Grpc);
        assert_eq!(port_protocol(Some("dns"), None, Some("UDP")), Protocol::Udp);
        assert_eq!(port_protocol(None, None, None), Protocol::Unsupported);
    }
}
