//! Builders for tests of the translation: a push context from the same YAML a user would
//! `kubectl apply` (ServiceEntries as the registry, Istio config beside them), and proxies of
//! each kind. Used by the crate's unit tests and by `tests/golden.rs`; nothing here talks to
//! Kubernetes or the network.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_runtime::Snapshot;

use crate::mesh::MeshConfig;
use crate::model::{Proxy, PushContext, Registry};

/// The push context of `text` (YAML documents, `---`-separated) under `mesh`.
///
/// Panics, naming the problem, if a document does not load: tests give valid config.
pub fn context_from_yaml(text: &str, mesh: MeshConfig) -> PushContext {
    let objects: BTreeMap<_, _> = mesh_runtime::config::parse_file("test.yaml".as_ref(), text)
        .into_iter()
        .map(|r| {
            let o = r.unwrap_or_else(|e| panic!("test config does not load: {e}"));
            (o.key.clone(), Arc::new(o))
        })
        .collect();
    let snap = Snapshot::new(1, true, objects, Vec::new());
    let (registry, _) = Registry::from_config(&snap);
    PushContext::new("1".into(), &snap, Arc::new(registry), Arc::new(mesh))
}

/// A sidecar `POD.NAMESPACE` at `ip` with these labels (Istio's node id
/// `sidecar~IP~POD.NS~NS.svc.cluster.local`).
pub fn mk_sidecar(pod: &str, namespace: &str, ip: &str, labels: &[(&str, &str)]) -> Proxy {
    mk_proxy("sidecar", pod, namespace, ip, labels)
}

/// A gateway (`router~...`) `POD.NAMESPACE` at `ip` with these labels, e.g.
/// `istio=ingressgateway`.
pub fn mk_router(pod: &str, namespace: &str, ip: &str, labels: &[(&str, &str)]) -> Proxy {
    mk_proxy("router", pod, namespace, ip, labels)
}

fn mk_proxy(kind: &str, pod: &str, namespace: &str, ip: &str, labels: &[(&str, &str)]) -> Proxy {
    let node = format!("{kind}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local");
    let mut proxy = Proxy::from_node(&node, BTreeMap::new())
        .unwrap_or_else(|e| panic!("{node} is no node id: {e}"));
    proxy.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    proxy
}
