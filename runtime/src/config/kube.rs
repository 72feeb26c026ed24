//! The Kubernetes backend: one watch per kind on the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use mesh_proto::Kind;
use tokio::sync::{Notify, watch};

use super::SharedValidator;
use super::document::{ObjectError, object_from_value, to_load_error};
use super::kube_status::StatusKeeper;
use super::status::Findings;
use super::{ConfigKey, ConfigObject, ConfigStore, LoadError, Origin, Snapshot, publish};
use crate::Shutdown;

/// A config store fed by watches on the Kubernetes API server.
///
/// Every kind is listed and watched (relisting after a 410 Gone or a broken connection, with
/// backoff). A kind whose CRD is not installed counts as synced and empty, as in Istio, and is
/// retried in the background.
///
/// With [`KubeOptions::write_status`], an Istio object the store refuses gets a status
/// condition saying why (see [`status`](super::status)), cleared once it is valid again.
#[derive(Debug)]
pub struct KubeStore {
    rx: watch::Receiver<Arc<Snapshot>>,
}

/// How a [`KubeStore`] behaves beyond watching.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// Write a status condition on refused Istio objects (through their `/status`
    /// subresource), and clear it when they become valid.
    pub write_status: bool,
    /// With `write_status`: the findings of the service's analysis, which the store then
    /// writes as each object's analysis messages (and clears when they go).
    pub findings: Option<watch::Receiver<Arc<Findings>>>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<ConfigKey, Arc<ConfigObject>>,
    errors: BTreeMap<ConfigKey, LoadError>,
    synced: BTreeSet<Kind>,
}

// === impl KubeStore ===

impl KubeStore {
    /// Starts watching `kinds` (`version` is the API version to watch each at). The first
    /// snapshot with [`Snapshot::is_synced`] comes once every kind has been listed.
    pub fn start(
        client: kube::Client,
        kinds: Vec<(Kind, String)>,
        validator: Option<SharedValidator>,
        shutdown: Shutdown,
    ) -> Self {
        Self::start_with(client, kinds, validator, KubeOptions::default(), shutdown)
    }

    /// [`KubeStore::start`] with options.
    pub fn start_with(
        client: kube::Client,
        kinds: Vec<(Kind, String)>,
        validator: Option<SharedValidator>,
        options: KubeOptions,
        shutdown: Shutdown,
    ) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let total = kinds.len();
        let keeper = options
            .write_status
            .then(|| StatusKeeper::start(client.clone(), options.findings, shutdown.clone()));
        for (kind, version) in kinds {
            tokio::spawn(watch_kind(
                client.clone(),
                kind,
                version,
                state.clone(),
                changed.clone(),
                validator.clone(),
                keeper.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(publish_loop(state, changed, tx, total, shutdown));
        Self { rx }
    }
}

impl ConfigStore for KubeStore {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

/// The resource of a kind at a version.
pub(crate) fn api_resource(kind: &Kind, version: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk(kind.group(), version, kind.name());
    ApiResource::from_gvk_with_plural(&gvk, &kind.plural())
}

async fn publish_loop(
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    tx: watch::Sender<Arc<Snapshot>>,
    total: usize,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {},
        }
        // Coalesce bursts (a relist delivers many events at once).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let next = {
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            Snapshot::new(
                0,
                s.synced.len() >= total,
                s.objects.clone(),
                s.errors.values().cloned().collect(),
            )
        };
        publish(&tx, next);
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_kind(
    client: kube::Client,
    kind: Kind,
    version: String,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    validator: Option<SharedValidator>,
    keeper: Option<StatusKeeper>,
    shutdown: Shutdown,
) {
    let validator = validator.as_deref();
    let resource = api_resource(&kind, &version);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer: Option<Vec<DynamicObject>> = None;
    let mut missing_logged = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let s = match event {
            Ok(watcher::Event::Init) => {
                buffer = Some(Vec::new());
                continue;
            }
            Ok(watcher::Event::InitApply(obj)) => {
                buffer.get_or_insert_with(Vec::new).push(obj);
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let objs = buffer.take().unwrap_or_default();
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.objects.retain(|k, _| k.kind != kind);
                s.errors.retain(|k, _| k.kind != kind);
                for obj in objs {
                    observe(&mut s, &kind, &resource, validator, keeper.as_ref(), obj);
                }
                s.synced.insert(kind.clone());
                tracing::debug!(%kind, "initial list done");
                s
            }
            Ok(watcher::Event::Apply(obj)) => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                observe(&mut s, &kind, &resource, validator, keeper.as_ref(), obj);
                s
            }
            Ok(watcher::Event::Delete(obj)) => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                let key = key_of(&kind, &obj);
                s.objects.remove(&key);
                s.errors.remove(&key);
                if let Some(keeper) = &keeper {
                    keeper.forget(&key);
                }
                s
            }
            Err(e) => {
                if is_not_found(&e) {
                    if !missing_logged {
                        tracing::warn!(%kind, %version, "kind not served by the API server (CRD missing?); treating it as empty");
                        missing_logged = true;
                    }
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    if !s.synced.insert(kind.clone()) {
                        continue;
                    }
                    s
                } else {
                    tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            }
        };
        drop(s);
        changed.notify_one();
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

/// Loads `obj` into `state` and has `keeper` (if any) bring its status up to date.
fn observe(
    state: &mut State,
    kind: &Kind,
    resource: &ApiResource,
    validator: Option<&dyn super::Validator>,
    keeper: Option<&StatusKeeper>,
    obj: DynamicObject,
) {
    match keeper {
        Some(keeper) => {
            let key = key_of(kind, &obj);
            let generation = obj.metadata.generation;
            let status = obj.data.get("status").cloned();
            let problem = apply(state, kind, resource, validator, obj);
            keeper.observe(&key, resource, generation, status, problem);
        }
        None => {
            apply(state, kind, resource, validator, obj);
        }
    }
}

fn key_of(kind: &Kind, obj: &DynamicObject) -> ConfigKey {
    ConfigKey::new(
        kind.clone(),
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// Loads `obj` into `state`; returns why it was refused (field and reason, without the
/// resource version, so that it only changes when the problem does), or `None` when it
/// loaded.
fn apply(
    state: &mut State,
    kind: &Kind,
    resource: &ApiResource,
    validator: Option<&dyn super::Validator>,
    obj: DynamicObject,
) -> Option<String> {
    let key = key_of(kind, &obj);
    let origin = Origin::Kube {
        resource_version: obj.metadata.resource_version.clone(),
    };
    let mut value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(%key, error = %e, "cannot encode object");
            return None;
        }
    };
    if let Some(map) = value.as_object_mut() {
        // List items may come without their type; the watch knows it.
        map.entry("apiVersion")
            .or_insert_with(|| resource.api_version.clone().into());
        map.entry("kind")
            .or_insert_with(|| resource.kind.clone().into());
    }
    match object_from_value(value, origin.clone()) {
        Ok(Some(mut obj)) => {
            // Cluster-scoped objects have no namespace; the file default does not apply.
            obj.key.namespace = key.namespace.clone();
            if let Some(problem) = validator.and_then(|v| v.validate(&obj).into_iter().next()) {
                // The last good version (if any) stays in `objects`.
                let message = problem.to_string();
                let e = ObjectError::Invalid(key.clone(), problem);
                state.errors.insert(key, to_load_error(e, &origin));
                return Some(message);
            }
            state.errors.remove(&obj.key);
            // A write that changed nothing of the config (a status write, a managed-fields
            // update) keeps the object as it was, so nothing is pushed for it.
            let obj = match state.objects.get(&obj.key) {
                Some(prev) if prev.same_config(&obj) => prev.clone(),
                _ => Arc::new(obj),
            };
            state.objects.insert(key, obj);
            None
        }
        Ok(None) => None,
        Err(e) => {
            let (e, message) = match e {
                ObjectError::Invalid(_, err) => {
                    let message = err.to_string();
                    (ObjectError::Invalid(key.clone(), err), message)
                }
                ObjectError::Malformed(m) => (ObjectError::Malformed(m.clone()), m),
            };
            // The last good version (if any) stays in `objects`.
            state.errors.insert(key, to_load_error(e, &origin));
            Some(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_status_write_is_not_new_config() {
        let resource = api_resource(&Kind::VirtualService, "v1");
        let object = |rv: &str, generation: i64, host: &str, status: serde_json::Value| {
            let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {
                    "name": "r", "namespace": "ns",
                    "resourceVersion": rv, "generation": generation,
                },
                "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]},
                "status": status,
            }))
            .unwrap();
            obj
        };
        let vs = Kind::VirtualService;
        let mut state = State::default();
        let key = ConfigKey::new(vs.clone(), "ns", "r");
        let loaded = apply(
            &mut state,
            &vs,
            &resource,
            None,
            object("1", 1, "r", json!({})),
        );
        assert_eq!(loaded, None);
        let first = state.objects[&key].clone();
        // Only the status and the resourceVersion changed: the same object stays.
        let status = json!({"conditions": [{"type": "Reconciled", "status": "False"}]});
        apply(
            &mut state,
            &vs,
            &resource,
            None,
            object("2", 1, "r", status),
        );
        assert!(Arc::ptr_eq(&first, &state.objects[&key]));
        // A spec change is new config.
        apply(
            &mut state,
            &vs,
            &resource,
            None,
            object("3", 2, "s", json!({})),
        );
        assert!(!Arc::ptr_eq(&first, &state.objects[&key]));
    }

    #[test]
    fn plurals() {
        let r = api_resource(&Kind::Gateway, "v1alpha3");
        assert_eq!(r.plural, "gateways");
        assert_eq!(r.api_version, "networking.istio.io/v1alpha3");
        let r = api_resource(&Kind::ServiceAccount, "v1");
        assert_eq!(r.plural, "serviceaccounts");
        assert_eq!(r.api_version, "v1");
    }
}
