//! `kubernetesenv`: generates source/destination workload attributes from pods.
//!
//! The handler is an attribute generator, as in Istio 1.0: an instance of the `kubernetes`
//! template names the request's `source_uid` (`kubernetes://POD.NAMESPACE`), `source_ip`,
//! `destination_uid`, `destination_ip` and `destination_port`; [`generate`] looks the pods up
//! in a [`PodCache`] and fills the template's outputs (`source_pod_name`, `source_labels`,
//! `source_workload_name`, ..., see [`KUBERNETES_OUTPUT`]), which the instance's
//! `attribute_bindings` turn into attributes (`source.workload.name: $out.source_workload_name
//! | "unknown"`). A uid wins over an IP; the unspecified address (`0.0.0.0`, the default
//! config's fallback) looks nothing up.
//!
//! The logic here knows nothing of Kubernetes' API: a [`PodCache`] answers lookups. The one
//! Mixer uses on Kubernetes ([`pods::KubePodCache`]) watches Pods and ReplicaSets; without it
//! (file mode), nothing is generated and the default config's fallbacks stay in effect.
//!
//! Workloads follow Istio's: a pod's controller, or the Deployment of its ReplicaSet;
//! `*_workload_uid` is `istio://NS/workloads/NAME`, `*_owner` is
//! `kubernetes://apis/apps/v1/namespaces/NS/deployments/NAME` (for a Deployment).

pub mod pods;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::params;
use super::{AdapterError, Handler};
use crate::attribute::OwnedValue;
use crate::config::templates::KUBERNETES_OUTPUT;

/// The kubernetesenv handler.
#[derive(Debug, Clone)]
pub struct KubernetesEnv {
    #[allow(dead_code)]
    cache_refresh: Duration,
}

/// What a [`PodCache`] knows of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub ip: Option<IpAddr>,
    pub host_ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    /// Containers and the ports they declare.
    pub containers: Vec<(String, Vec<i64>)>,
    /// The workload the pod belongs to (itself when it has no controller).
    pub workload: Workload,
}

/// A workload: the controller of pods (a Deployment, a StatefulSet, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// Kubernetes kind, e.g. `Deployment` (empty: the pod itself).
    pub kind: String,
    /// API group/version of the kind, e.g. `apps/v1`.
    pub api_version: String,
}

/// Where pods are looked up.
pub trait PodCache: Send + Sync + fmt::Debug {
    /// The pod `name` in `namespace`.
    fn by_name(&self, namespace: &str, name: &str) -> Option<Arc<PodInfo>>;
    /// The pod with `ip`.
    fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodInfo>>;
}

/// A shared pod cache.
pub type SharedPodCache = Arc<dyn PodCache>;

/// The inputs of the `kubernetes` template, as evaluated for a request.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    pub source_uid: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    pub destination_uid: Option<&'a str>,
    pub destination_ip: Option<IpAddr>,
    pub origin_uid: Option<&'a str>,
    pub origin_ip: Option<IpAddr>,
    pub destination_port: Option<i64>,
}

/// The template's outputs, by [`KUBERNETES_OUTPUT`] index (`None`: not generated).
pub type Outputs = Vec<Option<OwnedValue>>;

// === impl KubernetesEnv ===

impl KubernetesEnv {
    /// Validates parameters and builds the handler.
    pub fn build(p: &Value) -> Result<Self, AdapterError> {
        params::only(
            p,
            "",
            &[
                "kubeconfig_path",
                "cache_refresh_duration",
                "cluster_domain_name",
                "pod_label_for_app",
                "pod_label_for_version",
                "pod_ip_label",
                "pod_name_label",
                "fully_qualified_name_suffix",
                "cluster_registries_namespace",
            ],
        )?;
        let cache_refresh = params::duration(p, "cache_refresh_duration", "cacheRefreshDuration")?
            .unwrap_or(Duration::from_secs(300));
        Ok(Self { cache_refresh })
    }
}

impl Handler for KubernetesEnv {}

// === impl Workload ===

impl Workload {
    /// Istio's workload uid: `istio://NS/workloads/NAME`.
    pub fn uid(&self) -> String {
        format!("istio://{}/workloads/{}", self.namespace, self.name)
    }

    /// Istio's owner: `kubernetes://apis/GROUP/VERSION/namespaces/NS/KINDS/NAME` (`api/v1`
    /// for core kinds).
    pub fn owner(&self) -> String {
        let (kind, api) = if self.kind.is_empty() {
            ("Pod", "v1")
        } else {
            (self.kind.as_str(), self.api_version.as_str())
        };
        let prefix = if api.contains('/') { "apis" } else { "api" };
        format!(
            "kubernetes://{prefix}/{api}/namespaces/{}/{}s/{}",
            self.namespace,
            kind.to_ascii_lowercase(),
            self.name
        )
    }
}

/// Istio's pod uid: `kubernetes://NAME.NAMESPACE`.
pub fn pod_uid(pod: &PodInfo) -> String {
    format!("kubernetes://{}.{}", pod.name, pod.namespace)
}

/// `(name, namespace)` of a `kubernetes://NAME.NAMESPACE` uid.
pub fn parse_uid(uid: &str) -> Option<(&str, &str)> {
    let rest = uid.strip_prefix("kubernetes://")?;
    let (name, namespace) = rest.split_once('.')?;
    // A uid may carry a cluster suffix in later Istio (`NAME.NS.svc...`): the namespace ends
    // at the next dot.
    let namespace = namespace.split('.').next().unwrap_or(namespace);
    (!name.is_empty() && !namespace.is_empty()).then_some((name, namespace))
}

/// Fills the template's outputs for `inputs` from `cache`. Nothing is filled for a side
/// whose pod is unknown (the bindings' defaults then apply).
pub fn generate(cache: &dyn PodCache, inputs: &Inputs<'_>) -> Outputs {
    let mut out: Outputs = vec![None; KUBERNETES_OUTPUT.len()];
    let find = |uid: Option<&str>, ip: Option<IpAddr>| -> Option<Arc<PodInfo>> {
        uid.and_then(parse_uid)
            .and_then(|(name, ns)| cache.by_name(ns, name))
            .or_else(|| {
                ip.filter(|ip| !ip.is_unspecified())
                    .and_then(|ip| cache.by_ip(ip))
            })
    };
    if let Some(pod) = find(inputs.source_uid, inputs.source_ip) {
        fill(&mut out, "source", &pod, None);
    }
    if let Some(pod) = find(inputs.destination_uid, inputs.destination_ip) {
        fill(&mut out, "destination", &pod, inputs.destination_port);
    }
    if let Some(pod) = find(inputs.origin_uid, inputs.origin_ip) {
        fill(&mut out, "origin", &pod, None);
    }
    out
}

/// Sets the outputs `SIDE_*` that exist in the template from `pod`.
fn fill(out: &mut Outputs, side: &str, pod: &PodInfo, port: Option<i64>) {
    let mut set = |field: &str, v: OwnedValue| {
        let name = format!("{side}_{field}");
        if let Some(i) = KUBERNETES_OUTPUT.iter().position(|(n, _)| *n == name) {
            out[i] = Some(v);
        }
    };
    if let Some(ip) = pod.ip {
        set("pod_ip", OwnedValue::IpAddress(ip));
    }
    if let Some(ip) = pod.host_ip {
        set("host_ip", OwnedValue::IpAddress(ip));
    }
    set("pod_name", OwnedValue::String(pod.name.clone()));
    set("pod_uid", OwnedValue::String(pod_uid(pod)));
    set("namespace", OwnedValue::String(pod.namespace.clone()));
    set("labels", OwnedValue::StringMap(pod.labels.clone()));
    if let Some(sa) = &pod.service_account {
        set("service_account_name", OwnedValue::String(sa.clone()));
    }
    set(
        "workload_name",
        OwnedValue::String(pod.workload.name.clone()),
    );
    set(
        "workload_namespace",
        OwnedValue::String(pod.workload.namespace.clone()),
    );
    set("workload_uid", OwnedValue::String(pod.workload.uid()));
    set("owner", OwnedValue::String(pod.workload.owner()));
    // The container serving the destination port (or the only one).
    let container = port
        .and_then(|p| pod.containers.iter().find(|(_, ports)| ports.contains(&p)))
        .or_else(|| (pod.containers.len() == 1).then(|| &pod.containers[0]));
    if let Some((name, _)) = container {
        set("container_name", OwnedValue::String(name.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Debug, Default)]
    struct Pods(HashMap<(String, String), Arc<PodInfo>>);

    impl PodCache for Pods {
        fn by_name(&self, namespace: &str, name: &str) -> Option<Arc<PodInfo>> {
            self.0.get(&(namespace.into(), name.into())).cloned()
        }
        fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodInfo>> {
            self.0.values().find(|p| p.ip == Some(ip)).cloned()
        }
    }

    fn reviews() -> PodInfo {
        PodInfo {
            name: "reviews-v2-5b4f8c9d7-x2x9z".into(),
            namespace: "bookinfo".into(),
            ip: Some("127.1.0.7".parse().unwrap()),
            host_ip: Some("10.0.0.1".parse().unwrap()),
            labels: [("app", "reviews"), ("version", "v2")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            service_account: Some("bookinfo-reviews".into()),
            containers: vec![
                ("reviews".into(), vec![9080]),
                ("sidecar".into(), vec![15090]),
            ],
            workload: Workload {
                name: "reviews-v2".into(),
                namespace: "bookinfo".into(),
                kind: "Deployment".into(),
                api_version: "apps/v1".into(),
            },
        }
    }

    fn cache() -> Pods {
        let p = reviews();
        Pods(HashMap::from([(
            (p.namespace.clone(), p.name.clone()),
            Arc::new(p),
        )]))
    }

    fn output(out: &Outputs, name: &str) -> Option<OwnedValue> {
        let i = KUBERNETES_OUTPUT.iter().position(|(n, _)| *n == name)?;
        out[i].clone()
    }

    fn s(v: &str) -> Option<OwnedValue> {
        Some(OwnedValue::String(v.into()))
    }

    #[test]
    fn a_source_ip_finds_its_pod_and_workload() {
        let out = generate(
            &cache(),
            &Inputs {
                source_ip: Some("127.1.0.7".parse().unwrap()),
                ..Default::default()
            },
        );
        assert_eq!(output(&out, "source_workload_name"), s("reviews-v2"));
        assert_eq!(output(&out, "source_workload_namespace"), s("bookinfo"));
        assert_eq!(
            output(&out, "source_workload_uid"),
            s("istio://bookinfo/workloads/reviews-v2")
        );
        assert_eq!(
            output(&out, "source_owner"),
            s("kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2")
        );
        assert_eq!(
            output(&out, "source_pod_uid"),
            s("kubernetes://reviews-v2-5b4f8c9d7-x2x9z.bookinfo")
        );
        assert_eq!(
            output(&out, "source_service_account_name"),
            s("bookinfo-reviews")
        );
        match output(&out, "source_labels") {
            Some(OwnedValue::StringMap(m)) => assert_eq!(m["version"], "v2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            output(&out, "source_host_ip"),
            Some(OwnedValue::IpAddress("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(output(&out, "destination_pod_name"), None);
    }

    #[test]
    fn a_uid_wins_and_the_port_picks_the_container() {
        let out = generate(
            &cache(),
            &Inputs {
                destination_uid: Some("kubernetes://reviews-v2-5b4f8c9d7-x2x9z.bookinfo"),
                destination_ip: Some("10.9.9.9".parse().unwrap()),
                destination_port: Some(9080),
                ..Default::default()
            },
        );
        assert_eq!(
            output(&out, "destination_pod_ip"),
            Some(OwnedValue::IpAddress("127.1.0.7".parse().unwrap()))
        );
        assert_eq!(output(&out, "destination_container_name"), s("reviews"));
    }

    #[test]
    fn unknown_or_unspecified_addresses_generate_nothing() {
        for ip in ["0.0.0.0", "127.9.9.9"] {
            let out = generate(
                &cache(),
                &Inputs {
                    source_ip: Some(ip.parse().unwrap()),
                    source_uid: Some("kubernetes://nope.bookinfo"),
                    ..Default::default()
                },
            );
            assert!(out.iter().all(Option::is_none), "{ip}");
        }
        assert_eq!(parse_uid("kubernetes://a.b"), Some(("a", "b")));
        assert_eq!(
            parse_uid("kubernetes://a.b.svc.cluster.local"),
            Some(("a", "b"))
        );
        assert_eq!(parse_uid("spiffe://a.b"), None);
        assert_eq!(parse_uid("kubernetes://nodot"), None);
    }

    #[test]
    fn owners_follow_istio() {
        let pod_only = Workload {
            name: "job-x".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        assert_eq!(
            pod_only.owner(),
            "kubernetes://api/v1/namespaces/ns/pods/job-x"
        );
    }
}
