//! The pod cache on Kubernetes: Pods and ReplicaSets watched with kube-rs (relisting after a
//! 410 Gone or a broken connection, with backoff), indexed by name and by IP.
//!
//! A pod's workload is its controller; a ReplicaSet controlled by a Deployment stands for
//! that Deployment (as in Istio). When the ReplicaSet is not known (yet), the pod's
//! `pod-template-hash` label is cut from the ReplicaSet's name, which gives the Deployment's
//! name the way the Deployment controller builds it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use mesh_runtime::Shutdown;
use mesh_runtime::monitoring::Condition;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;

use super::{PodCache, PodInfo, Workload};

/// A [`PodCache`] fed by watches on the API server.
#[derive(Debug, Default)]
pub struct KubePodCache {
    state: RwLock<State>,
    /// Met once Pods and ReplicaSets have both been listed.
    listed: Option<Condition>,
}

#[derive(Debug, Default)]
struct State {
    pods: HashMap<(String, String), Arc<PodInfo>>,
    /// The raw controller of each pod, to re-resolve workloads when ReplicaSets change.
    controllers: HashMap<(String, String), OwnerReference>,
    by_ip: HashMap<IpAddr, (String, String)>,
    /// The controller of each ReplicaSet.
    replica_sets: HashMap<(String, String), OwnerReference>,
    /// The kinds listed at least once.
    listed: std::collections::BTreeSet<&'static str>,
}

type Key = (String, String);

// === impl KubePodCache ===

impl KubePodCache {
    /// Starts watching Pods and ReplicaSets of every namespace until `shutdown`; `listed`
    /// is set once both have been listed (Mixer's readiness waits for it).
    pub fn start(client: kube::Client, listed: Option<Condition>, shutdown: Shutdown) -> Arc<Self> {
        let cache = Arc::new(Self {
            listed,
            ..Self::default()
        });
        tokio::spawn(watch::<Pod>(
            Api::all(client.clone()),
            cache.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(watch::<ReplicaSet>(
            Api::all(client),
            cache.clone(),
            shutdown,
        ));
        cache
    }

    /// How many pods it knows.
    pub fn len(&self) -> usize {
        self.state.read().pods.len()
    }

    /// True when it knows no pod.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PodCache for KubePodCache {
    fn by_name(&self, namespace: &str, name: &str) -> Option<Arc<PodInfo>> {
        self.state
            .read()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodInfo>> {
        let s = self.state.read();
        s.by_ip.get(&ip).and_then(|k| s.pods.get(k)).cloned()
    }
}

/// What the cache does with objects of a kind.
trait Cached: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static {
    const KIND: &'static str;
    fn apply(self, state: &mut State);
    fn delete(&self, state: &mut State);
    fn clear(state: &mut State);
}

impl Cached for Pod {
    const KIND: &'static str = "Pod";

    fn apply(self, state: &mut State) {
        let key = key_of(&self);
        state.remove_pod(&key);
        let controller = controller_of(self.owner_references());
        let info = pod_info(&self, controller.as_ref(), state);
        // A pod being deleted, or whose containers have all ended, no longer owns its IP:
        // the node hands it to a new pod while the old object still shows it, and events of
        // the two come in any order. Only a live pod is found by IP (as Istio's cache does).
        if let Some(ip) = info.ip.filter(|_| owns_ip(&self)) {
            state.by_ip.insert(ip, key.clone());
        }
        if let Some(c) = controller {
            state.controllers.insert(key.clone(), c);
        }
        state.pods.insert(key, Arc::new(info));
    }

    fn delete(&self, state: &mut State) {
        state.remove_pod(&key_of(self));
    }

    fn clear(state: &mut State) {
        state.pods.clear();
        state.controllers.clear();
        state.by_ip.clear();
    }
}

impl Cached for ReplicaSet {
    const KIND: &'static str = "ReplicaSet";

    fn apply(self, state: &mut State) {
        let key = key_of(&self);
        match controller_of(self.owner_references()) {
            Some(c) => {
                state.replica_sets.insert(key.clone(), c);
            }
            None => {
                state.replica_sets.remove(&key);
            }
        }
        state.refresh_workloads(&key);
    }

    fn delete(&self, state: &mut State) {
        let key = key_of(self);
        state.replica_sets.remove(&key);
        state.refresh_workloads(&key);
    }

    fn clear(state: &mut State) {
        state.replica_sets.clear();
    }
}

// === impl State ===

impl State {
    fn remove_pod(&mut self, key: &Key) {
        if let Some(old) = self.pods.remove(key)
            && let Some(ip) = old.ip
            && self.by_ip.get(&ip) == Some(key)
        {
            self.by_ip.remove(&ip);
        }
        self.controllers.remove(key);
    }

    /// Recomputes the workload of the pods controlled by ReplicaSet `rs`.
    fn refresh_workloads(&mut self, rs: &Key) {
        let pods: Vec<Key> = self
            .controllers
            .iter()
            .filter(|((ns, _), c)| ns == &rs.0 && c.kind == "ReplicaSet" && c.name == rs.1)
            .map(|(k, _)| k.clone())
            .collect();
        for key in pods {
            let Some(pod) = self.pods.get(&key) else {
                continue;
            };
            let controller = self.controllers.get(&key);
            let workload = workload_of(&key, &pod.labels, controller, &self.replica_sets);
            if workload != pod.workload {
                let mut updated = (**pod).clone();
                updated.workload = workload;
                self.pods.insert(key, Arc::new(updated));
            }
        }
    }
}

async fn watch<K: Cached>(api: Api<K>, cache: Arc<KubePodCache>, shutdown: Shutdown) {
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
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => buffer.push(o),
            Ok(watcher::Event::InitDone) => {
                let mut s = cache.state.write();
                K::clear(&mut s);
                for o in buffer.drain(..) {
                    o.apply(&mut s);
                }
                s.listed.insert(K::KIND);
                if s.listed.len() == 2
                    && let Some(c) = &cache.listed
                {
                    c.set(true);
                }
                tracing::debug!(kind = K::KIND, pods = s.pods.len(), "pod cache listed");
            }
            Ok(watcher::Event::Apply(o)) => o.apply(&mut cache.state.write()),
            Ok(watcher::Event::Delete(o)) => o.delete(&mut cache.state.write()),
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %e, "pod cache watch failed; relisting with backoff")
            }
        }
    }
}

fn key_of<K: Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn controller_of(owners: &[OwnerReference]) -> Option<OwnerReference> {
    owners.iter().find(|o| o.controller == Some(true)).cloned()
}

/// Whether `pod` still holds its `status.podIP`: not being deleted, not Succeeded or Failed.
fn owns_ip(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn pod_info(pod: &Pod, controller: Option<&OwnerReference>, state: &State) -> PodInfo {
    let key = key_of(pod);
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let labels: std::collections::BTreeMap<String, String> = pod.labels().clone();
    let workload = workload_of(&key, &labels, controller, &state.replica_sets);
    PodInfo {
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        host_ip: status
            .and_then(|s| s.host_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        service_account: spec.and_then(|s| s.service_account_name.clone()),
        containers: spec
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| {
                        let ports = c
                            .ports
                            .iter()
                            .flatten()
                            .map(|p| i64::from(p.container_port))
                            .collect();
                        (c.name.clone(), ports)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        name: key.1,
        namespace: key.0,
        labels,
        workload,
    }
}

/// The workload of pod `key`: its controller, the Deployment over its ReplicaSet, or itself.
fn workload_of(
    key: &Key,
    labels: &std::collections::BTreeMap<String, String>,
    controller: Option<&OwnerReference>,
    replica_sets: &HashMap<Key, OwnerReference>,
) -> Workload {
    let (ns, name) = key;
    let Some(c) = controller else {
        return Workload {
            name: name.clone(),
            namespace: ns.clone(),
            ..Default::default()
        };
    };
    if c.kind == "ReplicaSet" {
        if let Some(d) = replica_sets.get(&(ns.clone(), c.name.clone())) {
            return Workload {
                name: d.name.clone(),
                namespace: ns.clone(),
                kind: d.kind.clone(),
                api_version: d.api_version.clone(),
            };
        }
        // Not seen yet: a Deployment's ReplicaSet is `DEPLOYMENT-HASH`.
        if let Some(hash) = labels.get("pod-template-hash")
            && let Some(deployment) = c.name.strip_suffix(&format!("-{hash}"))
        {
            return Workload {
                name: deployment.to_string(),
                namespace: ns.clone(),
                kind: "Deployment".into(),
                api_version: "apps/v1".into(),
            };
        }
    }
    Workload {
        name: c.name.clone(),
        namespace: ns.clone(),
        kind: c.kind.clone(),
        api_version: c.api_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, rs: &str, hash: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "ns",
                "labels": {"app": "reviews", "pod-template-hash": hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": rs, "uid": "u1", "controller": true}],
            },
            "spec": {"serviceAccountName": "sa",
                     "containers": [{"name": "app", "ports": [{"containerPort": 9080}]}]},
            "status": {"podIP": ip, "hostIP": "10.0.0.1"},
        }))
        .unwrap()
    }

    fn replica_set(name: &str, deployment: &str) -> ReplicaSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "ns",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment, "uid": "u2", "controller": true}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn pods_are_found_by_name_and_ip_with_their_deployment() {
        let cache = KubePodCache::default();
        pod("reviews-v1-abc-x", "127.1.0.3", "reviews-v1-abc", "abc")
            .apply(&mut cache.state.write());
        // The hash label gives the Deployment before its ReplicaSet is seen.
        let p = cache.by_ip("127.1.0.3".parse().unwrap()).unwrap();
        assert_eq!(p.workload.name, "reviews-v1");
        assert_eq!(p.workload.kind, "Deployment");
        assert_eq!(p.service_account.as_deref(), Some("sa"));
        assert_eq!(p.containers, [("app".to_string(), vec![9080])]);
        // The ReplicaSet's real controller wins.
        replica_set("reviews-v1-abc", "reviews").apply(&mut cache.state.write());
        let p = cache.by_name("ns", "reviews-v1-abc-x").unwrap();
        assert_eq!(p.workload.name, "reviews");
        // A pod that moves IP is found at the new one only; a deleted one is gone.
        pod("reviews-v1-abc-x", "127.1.0.4", "reviews-v1-abc", "abc")
            .apply(&mut cache.state.write());
        assert!(cache.by_ip("127.1.0.3".parse().unwrap()).is_none());
        let moved = pod("reviews-v1-abc-x", "127.1.0.4", "reviews-v1-abc", "abc");
        assert!(cache.by_ip("127.1.0.4".parse().unwrap()).is_some());
        moved.delete(&mut cache.state.write());
        assert!(cache.is_empty());
        assert!(cache.by_ip("127.1.0.4".parse().unwrap()).is_none());
    }

    #[test]
    fn an_ip_belongs_to_the_live_pod_not_the_one_going_away() {
        let cache = KubePodCache::default();
        let ip: IpAddr = "10.244.0.16".parse().unwrap();
        // The new pod has the IP; then the old pod, being deleted, reports it too.
        pod("ratings-v1-new", "10.244.0.16", "ratings-v1-abc", "abc")
            .apply(&mut cache.state.write());
        let mut old = pod("ratings-v1-old", "10.244.0.16", "ratings-v1-abc", "abc");
        old.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        old.clone().apply(&mut cache.state.write());
        assert_eq!(cache.by_ip(ip).unwrap().name, "ratings-v1-new");
        // The old one's deletion leaves the new one found.
        old.delete(&mut cache.state.write());
        assert_eq!(cache.by_ip(ip).unwrap().name, "ratings-v1-new");
        // A finished pod does not own its IP either.
        let mut done = pod("job-1", "10.244.0.17", "job-rs", "x");
        done.status.get_or_insert_with(Default::default).phase = Some("Succeeded".into());
        done.apply(&mut cache.state.write());
        assert!(cache.by_ip("10.244.0.17".parse().unwrap()).is_none());
        assert!(cache.by_name("ns", "job-1").is_some());
    }
}
