//! The Kubernetes store's status writes: what each Istio object's `status` should say (see
//! [`status`](super::status)), kept for every object the store has seen, and written through
//! the `/status` subresource by one task, one patch at a time.
//!
//! An object's status is recomputed on each of its watch events (its refusal may have changed)
//! and, when the store follows a service's analysis ([`KubeOptions::findings`]), on each new
//! set of findings.
//!
//! [`KubeOptions::findings`]: super::KubeOptions::findings

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use mesh_proto::Kind;
use tokio::sync::{mpsc, watch};

use super::ConfigKey;
use super::status::{self, Findings};
use crate::Shutdown;

/// The field manager of the store's status writes.
const STATUS_FIELD_MANAGER: &str = "mesh-config-status";

/// A status write for the writer task: the object and the merge patch of its status.
#[derive(Debug)]
struct StatusWrite {
    kind: Kind,
    resource: ApiResource,
    namespace: String,
    name: String,
    patch: serde_json::Value,
}

/// Why a status write failed.
#[derive(Debug, thiserror::Error)]
enum StatusError {
    #[error("{kind} {namespace}/{name}: writing status: {source}")]
    Patch {
        kind: Kind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the store knows of one object's status.
#[derive(Debug)]
struct Tracked {
    resource: ApiResource,
    generation: Option<i64>,
    status: Option<serde_json::Value>,
    /// Why the store refuses the object, if it does.
    problem: Option<String>,
}

/// Keeps the status of the Istio objects a store watches saying what it should.
#[derive(Debug, Clone)]
pub(super) struct StatusKeeper {
    tx: mpsc::UnboundedSender<StatusWrite>,
    findings: Option<watch::Receiver<Arc<Findings>>>,
    tracked: Arc<Mutex<BTreeMap<ConfigKey, Tracked>>>,
}

// === impl StatusKeeper ===

impl StatusKeeper {
    /// Starts the writer task (and, with `findings`, the task following them).
    pub(super) fn start(
        client: kube::Client,
        findings: Option<watch::Receiver<Arc<Findings>>>,
        shutdown: Shutdown,
    ) -> StatusKeeper {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_statuses(client, rx, shutdown.clone()));
        let keeper = StatusKeeper {
            tx,
            findings,
            tracked: Arc::default(),
        };
        if keeper.findings.is_some() {
            tokio::spawn(keeper.clone().follow_findings(shutdown));
        }
        keeper
    }

    /// Records what a watch event says of an object (its generation and status) and why the
    /// store refuses it, if it does, and writes its status if that differs from what it
    /// should say.
    pub(super) fn observe(
        &self,
        key: &ConfigKey,
        resource: &ApiResource,
        generation: Option<i64>,
        status: Option<serde_json::Value>,
        problem: Option<String>,
    ) {
        if !has_status(&key.kind) {
            return;
        }
        let tracked = Tracked {
            resource: resource.clone(),
            generation,
            status,
            problem,
        };
        self.request(key, &tracked);
        self.lock().insert(key.clone(), tracked);
    }

    /// Forgets a deleted object.
    pub(super) fn forget(&self, key: &ConfigKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ConfigKey, Tracked>> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the write `tracked` needs, if any.
    fn request(&self, key: &ConfigKey, tracked: &Tracked) {
        let findings = self.findings.as_ref().map(|rx| rx.borrow().clone());
        let ours = findings
            .as_ref()
            .map(|f| f.get(key).map(Vec::as_slice).unwrap_or_default());
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let Some(patch) = status::patch(
            tracked.status.as_ref(),
            tracked.problem.as_deref(),
            ours,
            tracked.generation,
            &now,
        ) else {
            return;
        };
        let _ = self.tx.send(StatusWrite {
            kind: key.kind.clone(),
            resource: tracked.resource.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            patch,
        });
    }

    /// Rewrites the statuses each new set of findings changes, until `shutdown`.
    async fn follow_findings(self, shutdown: Shutdown) {
        let Some(mut rx) = self.findings.clone() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let tracked = self.lock();
            for (key, t) in tracked.iter() {
                self.request(key, t);
            }
        }
    }
}

/// Whether the store writes status on objects of `kind`: Istio's CRDs only.
fn has_status(kind: &Kind) -> bool {
    kind.group().ends_with("istio.io")
}

/// Writes status patches, one at a time, until `shutdown`. A failure is logged and not
/// retried: the next event of the object asks again.
async fn write_statuses(
    client: kube::Client,
    mut rx: mpsc::UnboundedReceiver<StatusWrite>,
    shutdown: Shutdown,
) {
    let mut missing_subresource: BTreeSet<Kind> = BTreeSet::new();
    loop {
        let write = tokio::select! {
            _ = shutdown.cancelled() => return,
            w = rx.recv() => match w { Some(w) => w, None => return },
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &write.namespace, &write.resource);
        let params = PatchParams::apply(STATUS_FIELD_MANAGER);
        match api
            .patch_status(&write.name, &params, &Patch::Merge(&write.patch))
            .await
        {
            Ok(_) => tracing::debug!(
                kind = %write.kind,
                namespace = %write.namespace,
                name = %write.name,
                "status written"
            ),
            // The object is gone, or its CRD has no status subresource (an older
            // manifests/crds.yaml): said once per kind.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if missing_subresource.insert(write.kind.clone()) {
                    tracing::info!(
                        kind = %write.kind,
                        "cannot write status (object gone, or CRD without a status subresource)"
                    );
                }
            }
            Err(source) => {
                let e = StatusError::Patch {
                    kind: write.kind,
                    namespace: write.namespace,
                    name: write.name,
                    source,
                };
                tracing::warn!(error = %e, "status not written");
            }
        }
    }
}
