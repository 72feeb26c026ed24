//! Builders for Pilot's tests: proxies of each kind ([`mk_sidecar`], [`mk_router`]) and the
//! push context of a mesh written as the YAML a user would `kubectl apply` ([`TestConfig`]),
//! plus the comparison with checked-in files ([`golden`]). Nothing here talks to Kubernetes
//! or the network.
//!
//! Compiled for the crate's own tests and, with the `testutil` feature (which Pilot's
//! dev-dependency on itself turns on), for `pilot/tests/*.rs` and the benchmarks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_runtime::Snapshot;
use serde_json::Value;

use crate::mesh::MeshConfig;
use crate::model::{NodeType, Proxy, PushContext, Registry};
use crate::xds::Generation;
use crate::xds::push::Inputs;

pub mod golden;
pub mod meshgen;

/// `pilot/tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

// === proxies ===

/// A proxy being described; [`ProxyBuilder::build`] parses it as Pilot parses a node.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    node_type: NodeType,
    namespace: String,
    ip: String,
    pod: String,
    labels: BTreeMap<String, String>,
    metadata: BTreeMap<String, Value>,
}

/// A sidecar in `namespace` at `ip` (pod `app-1` unless [`ProxyBuilder::pod`] says).
pub fn mk_sidecar(namespace: &str, ip: &str) -> ProxyBuilder {
    ProxyBuilder::new(NodeType::Sidecar, namespace, ip, "app-1")
}

/// A gateway (`router`) in `namespace` at `ip` (pod `istio-ingressgateway-1` unless
/// [`ProxyBuilder::pod`] says).
pub fn mk_router(namespace: &str, ip: &str) -> ProxyBuilder {
    ProxyBuilder::new(NodeType::Router, namespace, ip, "istio-ingressgateway-1")
}

impl ProxyBuilder {
    fn new(node_type: NodeType, namespace: &str, ip: &str, pod: &str) -> Self {
        Self {
            node_type,
            namespace: namespace.to_string(),
            ip: ip.to_string(),
            pod: pod.to_string(),
            labels: BTreeMap::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// The pod name (the node id's `POD.NAMESPACE` part).
    pub fn pod(mut self, name: &str) -> Self {
        self.pod = name.to_string();
        self
    }

    /// Workload labels, sent as the `LABELS` metadata.
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        for (k, v) in labels {
            self.labels.insert(k.to_string(), v.to_string());
        }
        self
    }

    /// One node metadata field (`ISTIO_LOCALITY`, `INTERCEPTION_MODE`, `TLS_CLIENT_*`...).
    /// `LABELS` is what [`ProxyBuilder::labels`] gave, when it gave any.
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// The Envoy node id, `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        let kind = match self.node_type {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        };
        let ns = &self.namespace;
        format!(
            "{kind}~{}~{}.{ns}~{ns}.svc.cluster.local",
            self.ip, self.pod
        )
    }

    /// The node metadata as sent: the fields given, with `LABELS` when there are labels.
    pub fn node_metadata(&self) -> BTreeMap<String, Value> {
        let mut metadata = self.metadata.clone();
        if !self.labels.is_empty() {
            let labels = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            metadata.insert("LABELS".into(), Value::Object(labels));
        }
        metadata
    }

    /// The proxy, parsed from the node id and metadata. Panics on a bad IP.
    pub fn build(&self) -> Proxy {
        Proxy::from_node(&self.node_id(), self.node_metadata())
            .unwrap_or_else(|e| panic!("test proxy: {e}"))
    }
}

// === config ===

/// The config of a test mesh: YAML documents (ServiceEntries and WorkloadEntries as the
/// registry, VirtualServices, DestinationRules, Gateways, Sidecars, PeerAuthentications,
/// legacy RouteRules and EgressRules...) and the MeshConfig. Documents are applied in order,
/// as `kubectl apply` would: a later object with the same kind, namespace and name replaces
/// an earlier one. A document that does not load, or a host defined twice, panics.
#[derive(Debug, Clone, Default)]
pub struct TestConfig {
    files: Vec<(PathBuf, String)>,
    mesh: MeshConfig,
}

/// The push context of `yaml` with the default MeshConfig.
pub fn push_context(yaml: &str) -> PushContext {
    TestConfig::from_yaml(yaml).push_context()
}

impl TestConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_yaml(text: &str) -> Self {
        Self::new().yaml(text)
    }

    /// More documents, given inline.
    pub fn yaml(mut self, text: &str) -> Self {
        let name = format!("inline-{}.yaml", self.files.len() + 1);
        self.files.push((PathBuf::from(name), text.to_string()));
        self
    }

    /// The documents of a file.
    pub fn file(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        self.files.push((path.to_path_buf(), text));
        self
    }

    /// The documents of `pilot/tests/fixtures/NAME`.
    pub fn fixture(self, name: &str) -> Self {
        self.file(fixture(name))
    }

    pub fn mesh(mut self, mesh: MeshConfig) -> Self {
        self.mesh = mesh;
        self
    }

    /// The MeshConfig, as YAML (what the `mesh` key of the `istio` ConfigMap holds).
    pub fn mesh_yaml(self, text: &str) -> Self {
        let mesh = MeshConfig::parse(Path::new("mesh.yaml"), text)
            .unwrap_or_else(|e| panic!("test mesh config: {e}"));
        self.mesh(mesh)
    }

    /// The config store's snapshot of the documents.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let mut objects = BTreeMap::new();
        for (path, text) in &self.files {
            for result in mesh_runtime::config::parse_file(path, text) {
                let obj = result.unwrap_or_else(|e| panic!("test config: {e}"));
                objects.insert(obj.key.clone(), Arc::new(obj));
            }
        }
        Arc::new(Snapshot::new(1, true, objects, Vec::new()))
    }

    /// What a generation is built from: the snapshot, its registry and the mesh config.
    pub fn inputs(&self) -> Inputs {
        let config = self.snapshot();
        let (registry, warnings) = Registry::from_config(&config);
        assert!(warnings.is_empty(), "test registry: {warnings:?}");
        Inputs {
            config,
            mesh: Arc::new(self.mesh.clone()),
            registry: Arc::new(registry),
        }
    }

    /// The push context, at version `1`.
    pub fn push_context(&self) -> PushContext {
        let inputs = self.inputs();
        PushContext::new("1".into(), &inputs.config, inputs.registry, inputs.mesh)
    }

    /// A generation of the push context (with its cache), at version `1`.
    pub fn generation(&self) -> Generation {
        Generation::new(Arc::new(self.push_context()))
    }
}
