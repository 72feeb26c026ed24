//! The directory backend: multi-document YAML files, watched for changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::document::{parse_file, validate};
use super::{
    ConfigKey, ConfigObject, ConfigStore, LoadError, Origin, SharedValidator, Snapshot, publish,
};
use crate::Shutdown;

/// Errors starting the directory store.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The directory does not exist or is not a directory.
    #[error("config directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    /// The file watcher could not be set up.
    #[error("cannot watch config directory {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Tuning of the directory store.
#[derive(Clone)]
pub struct DirectoryOptions {
    /// How long the directory must be quiet before a change is loaded.
    pub debounce: Duration,
    /// The longest a change waits while edits keep coming.
    pub max_delay: Duration,
    /// A full rescan at this interval, in case a file-system event was missed.
    pub resync: Duration,
    /// Semantic checks run on every object loaded.
    pub validator: Option<SharedValidator>,
}

impl std::fmt::Debug for DirectoryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryOptions")
            .field("debounce", &self.debounce)
            .field("max_delay", &self.max_delay)
            .field("resync", &self.resync)
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

impl Default for DirectoryOptions {
    fn default() -> Self {
        Self {
            // Short: writers that matter (kubectl, ConfigMap updates, editors) replace files
            // atomically; the services debounce their own work on top of this.
            debounce: Duration::from_millis(20),
            max_delay: Duration::from_secs(1),
            resync: Duration::from_secs(30),
            validator: None,
        }
    }
}

/// A config store over a directory of YAML files (`*.yaml`, `*.yml`, `*.json`, recursively;
/// hidden entries are skipped except Kubernetes' `..data` ConfigMap links, which are followed).
#[derive(Debug)]
pub struct DirectoryStore {
    dir: PathBuf,
    rx: watch::Receiver<Arc<Snapshot>>,
}

/// What is remembered of each file between scans, so unchanged files are not parsed again.
#[derive(Debug)]
struct FileState {
    text: String,
    results: Vec<Result<Arc<ConfigObject>, LoadError>>,
}

#[derive(Default)]
struct Loader {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    validator: Option<SharedValidator>,
}

// === impl DirectoryStore ===

impl DirectoryStore {
    /// Loads `dir` once (so the first snapshot is complete when this returns) and keeps
    /// watching it until `shutdown`.
    pub fn start(
        dir: impl Into<PathBuf>,
        options: DirectoryOptions,
        shutdown: Shutdown,
    ) -> Result<Self, DirectoryError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(DirectoryError::NotADirectory(dir));
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Any event, or a watcher error, means "look again".
            let _ = events_tx.send(res.is_ok());
        })
        .map_err(|source| DirectoryError::Watch {
            path: dir.clone(),
            source,
        })?;
        use notify::Watcher as _;
        watcher
            .watch(&dir, notify::RecursiveMode::Recursive)
            .map_err(|source| DirectoryError::Watch {
                path: dir.clone(),
                source,
            })?;

        let mut loader = Loader {
            dir: dir.clone(),
            files: BTreeMap::new(),
            validator: options.validator.clone(),
        };
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        publish(&tx, loader.scan(&Snapshot::default()));
        tracing::info!(
            dir = %dir.display(),
            objects = tx.borrow().objects().len(),
            errors = tx.borrow().errors().len(),
            "config directory loaded"
        );

        tokio::spawn(watch_loop(
            loader, watcher, events_rx, tx, options, shutdown,
        ));
        Ok(Self { dir, rx })
    }

    /// The directory being watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl ConfigStore for DirectoryStore {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

async fn watch_loop(
    mut loader: Loader,
    watcher: notify::RecommendedWatcher,
    mut events: mpsc::UnboundedReceiver<bool>,
    tx: watch::Sender<Arc<Snapshot>>,
    options: DirectoryOptions,
    shutdown: Shutdown,
) {
    // The watcher stops when dropped; keep it for the life of this task.
    let _watcher = watcher;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => if ev.is_none() { return },
            _ = tokio::time::sleep(options.resync) => {},
        }
        // Debounce: wait for a quiet period, but never longer than max_delay in all.
        let deadline = Instant::now() + options.max_delay;
        loop {
            let quiet = tokio::time::sleep(options.debounce);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = quiet => break,
                ev = events.recv() => {
                    if ev.is_none() { return }
                    if Instant::now() >= deadline { break }
                }
            }
        }
        let current = tx.borrow().clone();
        let next = loader.scan(&current);
        if publish(&tx, next) {
            let snap = tx.borrow().clone();
            tracing::info!(
                revision = snap.revision(),
                changes = snap.diff(&current).len(),
                errors = snap.errors().len(),
                "config directory changed"
            );
        }
    }
}

// === impl Loader ===

impl Loader {
    /// Reads the directory and builds the next snapshot from it, keeping the last good version
    /// (from `current`) of any object that is now refused.
    fn scan(&mut self, current: &Snapshot) -> Snapshot {
        let mut errors = Vec::new();
        let mut paths = Vec::new();
        list_files(&self.dir, &mut paths, &mut errors);
        paths.sort();

        let mut files = BTreeMap::new();
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(LoadError::Read {
                        path: path.clone(),
                        message: e.to_string(),
                    });
                    // Keep what this file gave before rather than dropping it.
                    if let Some(prev) = self.files.remove(&path) {
                        files.insert(path, prev);
                    }
                    continue;
                }
            };
            let state = match self.files.remove(&path) {
                Some(prev) if prev.text == text => prev,
                _ => FileState {
                    results: validate(parse_file(&path, &text), self.validator.as_deref())
                        .into_iter()
                        .map(|r| r.map(Arc::new))
                        .collect(),
                    text,
                },
            };
            files.insert(path, state);
        }
        self.files = files;

        let mut objects: BTreeMap<ConfigKey, Arc<ConfigObject>> = BTreeMap::new();
        let mut refused_keys = Vec::new();
        let mut broken_docs: Vec<(PathBuf, usize)> = Vec::new();
        for state in self.files.values() {
            for result in &state.results {
                match result {
                    Ok(obj) => match objects.get(&obj.key) {
                        Some(first) => errors.push(LoadError::Duplicate {
                            origin: obj.origin.to_string(),
                            key: obj.key.clone(),
                            first: first.origin.to_string(),
                        }),
                        None => {
                            // Reuse the current Arc when nothing changed, so diffs stay exact.
                            let obj = match current.get(&obj.key) {
                                Some(prev) if **prev == **obj => prev.clone(),
                                _ => obj.clone(),
                            };
                            objects.insert(obj.key.clone(), obj);
                        }
                    },
                    Err(e) => {
                        if let Some(key) = e.key() {
                            refused_keys.push(key.clone());
                        }
                        if let LoadError::Document { path, document, .. } = e {
                            broken_docs.push((path.clone(), *document));
                        }
                        errors.push(e.clone());
                    }
                }
            }
        }

        // Last good versions: objects refused by name, and objects that came from a document
        // that no longer parses at all.
        for key in refused_keys {
            if let Some(prev) = current.get(&key) {
                objects.entry(key).or_insert_with(|| prev.clone());
            }
        }
        if !broken_docs.is_empty() {
            for (key, prev) in current.objects() {
                if let Origin::File { path, document } = &prev.origin
                    && broken_docs.iter().any(|(p, d)| p == path && d == document)
                {
                    objects.entry(key.clone()).or_insert_with(|| prev.clone());
                }
            }
        }

        let mut by_key: HashMap<String, usize> = HashMap::new();
        errors.retain(|e| {
            let n = by_key.entry(e.to_string()).or_default();
            *n += 1;
            *n == 1
        });
        Snapshot::new(0, true, objects, errors)
    }
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(LoadError::Read {
                path: dir.to_path_buf(),
                message: e.to_string(),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            // Editors' swap files, and ConfigMap mounts' `..data` (reached via its links).
            continue;
        }
        if path.is_dir() {
            list_files(&path, out, errors);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
            out.push(path);
        }
    }
}
