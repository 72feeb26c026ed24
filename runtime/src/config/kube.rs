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
use super::{ConfigKey, ConfigObject, ConfigStore, LoadError, Origin, Snapshot, publish};
use crate::Shutdown;

/// A config store fed by watches on the Kubernetes API server.
///
/// Every kind is listed and watched (relisting after a 410 Gone or a broken connection, with
/// backoff). A kind whose CRD is not installed counts as synced and empty, as in Istio, and is
/// retried in the background.
#[derive(Debug)]
pub struct KubeStore {
    rx: watch::Receiver<Arc<Snapshot>>,
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
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let total = kinds.len();
        for (kind, version) in kinds {
            tokio::spawn(watch_kind(
                client.clone(),
                kind,
                version,
                state.clone(),
                changed.clone(),
                validator.clone(),
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

async fn watch_kind(
    client: kube::Client,
    kind: Kind,
    version: String,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    validator: Option<SharedValidator>,
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
                    apply(&mut s, &kind, &resource, validator, obj);
                }
                s.synced.insert(kind.clone());
                tracing::debug!(%kind, "initial list done");
                s
            }
            Ok(watcher::Event::Apply(obj)) => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                apply(&mut s, &kind, &resource, validator, obj);
                s
            }
            Ok(watcher::Event::Delete(obj)) => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                let key = key_of(&kind, &obj);
                s.objects.remove(&key);
                s.errors.remove(&key);
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

fn key_of(kind: &Kind, obj: &DynamicObject) -> ConfigKey {
    ConfigKey::new(
        kind.clone(),
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

fn apply(
    state: &mut State,
    kind: &Kind,
    resource: &ApiResource,
    validator: Option<&dyn super::Validator>,
    obj: DynamicObject,
) {
    let key = key_of(kind, &obj);
    let origin = Origin::Kube {
        resource_version: obj.metadata.resource_version.clone(),
    };
    let mut value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(%key, error = %e, "cannot encode object");
            return;
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
                let e = ObjectError::Invalid(key.clone(), problem);
                state.errors.insert(key, to_load_error(e, &origin));
                return;
            }
            state.errors.remove(&obj.key);
            let obj = match state.objects.get(&obj.key) {
                Some(prev) if **prev == obj => prev.clone(),
                _ => Arc::new(obj),
            };
            state.objects.insert(key, obj);
        }
        Ok(None) => {}
        Err(e) => {
            let e = match e {
                ObjectError::Invalid(_, err) => ObjectError::Invalid(key.clone(), err),
                other => other,
            };
            // The last good version (if any) stays in `objects`.
            state.errors.insert(key, to_load_error(e, &origin));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
