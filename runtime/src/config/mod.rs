//! The config store: every configuration object a service acts on, as immutable snapshots.
//!
//! A [`ConfigStore`] publishes [`Snapshot`]s over a `tokio::sync::watch` channel. A snapshot
//! holds every valid object by [`ConfigKey`], and the [`LoadError`]s of what was refused.
//! Consumers hold on to the snapshot they last acted on and ask [`Snapshot::diff`] what changed,
//! so a burst of updates that coalesces into one snapshot loses nothing.
//!
//! Invalid input never removes good config: when an object that was valid becomes invalid, the
//! last good version keeps serving and the error is listed beside it.

pub mod directory;
mod document;
mod kube;
mod kube_status;
pub mod status;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use mesh_proto::{Kind, Spec, SpecError};
use tokio::sync::watch;

pub use self::directory::{DirectoryOptions, DirectoryStore};
pub use self::document::{parse_file, validate};
pub use self::kube::{KubeOptions, KubeStore};

/// The identity of a configuration object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigKey {
    /// What kind of object it is.
    pub kind: Kind,
    /// Its namespace (`default` when a file leaves it out; empty for cluster-scoped kinds).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Document `document` (1-based) of a file in the config directory.
    File { path: PathBuf, document: usize },
    /// The Kubernetes API server, at a resource version.
    Kube { resource_version: Option<String> },
}

/// A configuration object: identity, metadata and typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigObject {
    pub key: ConfigKey,
    /// The `apiVersion` it was written with, e.g. `networking.istio.io/v1alpha3`.
    pub api_version: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `metadata.generation`, when the API server set it.
    pub generation: Option<i64>,
    pub origin: Origin,
    pub spec: Spec,
}

/// Why some input was refused. The message names the file and document, or the object, and
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    /// A document is not a well-formed object (YAML syntax, or no `apiVersion`/`kind`/`name`).
    #[error("{path} document {document}: {message}")]
    Document {
        path: PathBuf,
        document: usize,
        message: String,
    },
    /// An object's spec does not match its kind's schema.
    #[error("{origin}: {key}: {error}")]
    Invalid {
        origin: String,
        key: ConfigKey,
        error: SpecError,
    },
    /// Two documents define the same object; the first one wins.
    #[error("{origin}: {key} is already defined by {first}")]
    Duplicate {
        origin: String,
        key: ConfigKey,
        first: String,
    },
}

/// A change between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(ConfigKey),
    Updated(ConfigKey),
    Removed(ConfigKey),
}

/// An immutable view of all configuration at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    revision: u64,
    synced: bool,
    objects: BTreeMap<ConfigKey, Arc<ConfigObject>>,
    errors: Vec<LoadError>,
}

/// Checks what a schema cannot: a service's semantic rules (weights sum to 100, regexes
/// compile, ...). Stores run it on every object they load; an object with problems is refused
/// like one that does not parse, and its last good version keeps serving.
pub trait Validator: Send + Sync + 'static {
    /// The problems of `obj`, each naming its field (empty when valid).
    fn validate(&self, obj: &ConfigObject) -> Vec<SpecError>;
}

/// A shared validator.
pub type SharedValidator = Arc<dyn Validator>;

/// A source of configuration snapshots.
pub trait ConfigStore: Send + Sync + 'static {
    /// A receiver that always holds the newest snapshot.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;
}

// === impl ConfigKey ===

impl ConfigKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

// === impl ConfigObject ===

impl ConfigObject {
    /// Equal in everything that configures the mesh: all but where it came from. A
    /// Kubernetes object's resourceVersion changes with every write, a status write too, and
    /// that alone must not look like new config (a push to every proxy).
    pub fn same_config(&self, other: &ConfigObject) -> bool {
        self.key == other.key
            && self.api_version == other.api_version
            && self.generation == other.generation
            && self.labels == other.labels
            && self.annotations == other.annotations
            && self.spec == other.spec
    }
}

// === impl Origin ===

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, document } => {
                write!(f, "{} document {}", path.display(), document)
            }
            Origin::Kube {
                resource_version: Some(rv),
            } => write!(f, "kubernetes (resourceVersion {rv})"),
            Origin::Kube {
                resource_version: None,
            } => f.write_str("kubernetes"),
        }
    }
}

// === impl LoadError ===

impl LoadError {
    /// The object this error is about, when it could be identified.
    pub fn key(&self) -> Option<&ConfigKey> {
        match self {
            LoadError::Invalid { key, .. } | LoadError::Duplicate { key, .. } => Some(key),
            _ => None,
        }
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds a snapshot; stores call this, tests may too.
    pub fn new(
        revision: u64,
        synced: bool,
        objects: BTreeMap<ConfigKey, Arc<ConfigObject>>,
        errors: Vec<LoadError>,
    ) -> Self {
        Self {
            revision,
            synced,
            objects,
            errors,
        }
    }

    /// Increases with every published change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// True once the store has loaded everything it watches at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Every valid object (and the last good version of objects now invalid).
    pub fn objects(&self) -> &BTreeMap<ConfigKey, Arc<ConfigObject>> {
        &self.objects
    }

    /// What was refused, and why.
    pub fn errors(&self) -> &[LoadError] {
        &self.errors
    }

    pub fn get(&self, key: &ConfigKey) -> Option<&Arc<ConfigObject>> {
        self.objects.get(key)
    }

    /// The objects of one kind, ordered by namespace and name.
    pub fn of_kind<'a>(&'a self, kind: &'a Kind) -> impl Iterator<Item = &'a Arc<ConfigObject>> {
        self.objects
            .iter()
            .filter(move |(k, _)| &k.kind == kind)
            .map(|(_, v)| v)
    }

    /// What changed from `old` to this snapshot.
    pub fn diff(&self, old: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        for (key, obj) in &self.objects {
            match old.objects.get(key) {
                None => changes.push(Change::Added(key.clone())),
                Some(prev) if !Arc::ptr_eq(prev, obj) && **prev != **obj => {
                    changes.push(Change::Updated(key.clone()))
                }
                Some(_) => {}
            }
        }
        for key in old.objects.keys() {
            if !self.objects.contains_key(key) {
                changes.push(Change::Removed(key.clone()));
            }
        }
        changes
    }

    /// True when `other` holds the same objects and errors (revision aside).
    fn same_content(&self, other: &Snapshot) -> bool {
        self.synced == other.synced
            && self.errors == other.errors
            && self.objects.len() == other.objects.len()
            && self
                .objects
                .iter()
                .zip(other.objects.iter())
                .all(|((ka, a), (kb, b))| ka == kb && (Arc::ptr_eq(a, b) || a == b))
    }
}

/// Publishes `next` unless it holds the same content as the current snapshot.
/// Returns whether it was published.
fn publish(tx: &watch::Sender<Arc<Snapshot>>, mut next: Snapshot) -> bool {
    let current = tx.borrow().clone();
    if next.same_content(&current) && current.revision > 0 {
        return false;
    }
    next.revision = current.revision + 1;
    for e in &next.errors {
        if !current.errors.contains(e) {
            tracing::warn!(error = %e, "config refused");
        }
    }
    tracing::debug!(
        revision = next.revision,
        objects = next.objects.len(),
        errors = next.errors.len(),
        "config snapshot published"
    );
    tx.send_replace(Arc::new(next));
    true
}
