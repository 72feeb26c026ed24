//! Secrets as files: `OUT/<namespace>/istio.<sa>/{cert-chain.pem,key.pem,root-cert.pem}`.
//!
//! Each secret directory is laid out as Kubernetes' atomic writer lays out a secret volume:
//!
//! ```text
//! OUT/default/istio.reviews/
//!   ..2026_01_02_03_04_05.123456789_7/   one version: the three files, written and synced
//!   ..data -> ..2026_01_02_03_04_05.123456789_7
//!   cert-chain.pem -> ..data/cert-chain.pem
//!   key.pem        -> ..data/key.pem
//!   root-cert.pem  -> ..data/root-cert.pem
//! ```
//!
//! A rotation writes a complete new version directory, then points `..data` at it with one
//! `rename(2)` of a new symlink over the old one, which is atomic: a reader that opens
//! `cert-chain.pem` and `key.pem` after the swap gets both from the new version, and Envoy's
//! `watched_directory` (which watches for that rename) reloads once everything is in place. The
//! previous version directory is kept until the next rotation, so a reader that resolved
//! `..data` just before the swap can still finish reading the old, consistent set. `key.pem`
//! is mode 0600, the certificates 0644.

use std::os::unix::fs::{OpenOptionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use futures::future::BoxFuture;

use super::{
    CERT_CHAIN, KEY, ROOT_CERT, SECRET_PREFIX, SecretKey, SecretSink, SinkError, StoredSecret,
    WorkloadSecret,
};

/// The symlink that points at the current version directory.
pub const DATA_LINK: &str = "..data";

/// Secrets written as files under a root directory.
#[derive(Debug)]
pub struct FileSink {
    root: PathBuf,
    counter: AtomicU64,
}

// === impl FileSink ===

impl FileSink {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            counter: AtomicU64::new(0),
        }
    }

    /// The directory of one secret.
    pub fn dir_of(&self, key: &SecretKey) -> Result<PathBuf, SinkError> {
        for part in [&key.namespace, &key.service_account] {
            if part.is_empty() || part.contains('/') || part.starts_with('.') || part.contains('\0')
            {
                return Err(SinkError::Backend {
                    what: key.to_string(),
                    message: format!("{part:?} cannot be used as a directory name"),
                });
            }
        }
        Ok(self.root.join(&key.namespace).join(key.secret_name()))
    }

    fn write(&self, secret: &WorkloadSecret) -> Result<(), SinkError> {
        let dir = self.dir_of(&secret.key)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SinkError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;

        // 1. A complete new version.
        let version = self.version_name();
        let vdir = dir.join(&version);
        std::fs::create_dir(&vdir).map_err(io(&vdir))?;
        for (name, data, mode) in [
            (CERT_CHAIN, &secret.cert_chain, 0o644),
            (KEY, &secret.private_key, 0o600),
            (ROOT_CERT, &secret.root_cert, 0o644),
        ] {
            let path = vdir.join(name);
            write_synced(&path, data.as_bytes(), mode).map_err(io(&path))?;
        }
        sync_dir(&vdir).map_err(io(&vdir))?;

        // 2. Swap `..data` to it in one rename.
        let previous = std::fs::read_link(dir.join(DATA_LINK)).ok();
        let tmp_link = dir.join(format!(
            "..data_tmp{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&tmp_link);
        symlink(&version, &tmp_link).map_err(io(&tmp_link))?;
        std::fs::rename(&tmp_link, dir.join(DATA_LINK)).map_err(io(&dir.join(DATA_LINK)))?;

        // 3. The user-visible names (created once; they never change).
        for name in [CERT_CHAIN, KEY, ROOT_CERT] {
            let path = dir.join(name);
            let target = Path::new(DATA_LINK).join(name);
            if std::fs::read_link(&path).ok().as_deref() != Some(target.as_path()) {
                let tmp = dir.join(format!(".{name}.tmp"));
                let _ = std::fs::remove_file(&tmp);
                symlink(&target, &tmp).map_err(io(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(io(&path))?;
            }
        }
        sync_dir(&dir).map_err(io(&dir))?;

        // 4. Drop versions older than the previous one.
        let keep: Vec<PathBuf> = [Some(PathBuf::from(&version)), previous]
            .into_iter()
            .flatten()
            .collect();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            let is_version = name_str.starts_with("..")
                && name_str != DATA_LINK
                && !name_str.starts_with("..data_tmp");
            if is_version && !keep.iter().any(|k| k.as_os_str() == name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn version_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "..{}.{:09}_{}",
            now.as_secs(),
            now.subsec_nanos(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn read(&self, key: &SecretKey) -> Result<Option<StoredSecret>, SinkError> {
        let data = self.dir_of(key)?.join(DATA_LINK);
        if std::fs::symlink_metadata(&data).is_err() {
            return Ok(None);
        }
        let read = |name: &str| std::fs::read_to_string(data.join(name)).unwrap_or_default();
        Ok(Some(StoredSecret {
            cert_chain: read(CERT_CHAIN),
            root_cert: read(ROOT_CERT),
            has_key: data.join(KEY).is_file(),
        }))
    }

    fn remove(&self, key: &SecretKey) -> Result<bool, SinkError> {
        let dir = self.dir_of(key)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                // The namespace directory goes when its last secret does.
                if let Some(ns) = dir.parent() {
                    let _ = std::fs::remove_dir(ns);
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(SinkError::Io { path: dir, source }),
        }
    }

    fn scan(&self) -> Result<Vec<SecretKey>, SinkError> {
        let mut out = Vec::new();
        let namespaces = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(SinkError::Io {
                    path: self.root.clone(),
                    source,
                });
            }
        };
        for ns in namespaces.flatten() {
            if !ns.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(sa) = name.strip_prefix(SECRET_PREFIX)
                    && entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
                {
                    out.push(SecretKey::new(
                        ns.file_name().to_string_lossy().into_owned(),
                        sa,
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl SecretSink for FileSink {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn get<'a>(
        &'a self,
        key: &'a SecretKey,
    ) -> BoxFuture<'a, Result<Option<StoredSecret>, SinkError>> {
        Box::pin(async move { self.read(key) })
    }

    fn put(&self, secret: WorkloadSecret) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move { self.write(&secret) })
    }

    fn delete<'a>(&'a self, key: &'a SecretKey) -> BoxFuture<'a, Result<bool, SinkError>> {
        Box::pin(async move { self.remove(key) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SecretKey>, SinkError>> {
        Box::pin(async move { self.scan() })
    }
}

fn write_synced(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(sa: &str, tag: &str) -> WorkloadSecret {
        WorkloadSecret {
            key: SecretKey::new("default", sa),
            cert_chain: format!("chain-{tag}"),
            private_key: format!("key-{tag}"),
            root_cert: format!("root-{tag}"),
        }
    }

    #[test]
    fn writes_swaps_and_removes() {
        let out = tempfile::tempdir().unwrap();
        let sink = FileSink::new(out.path());
        sink.write(&secret("reviews", "1")).unwrap();
        let dir = out.path().join("default/istio.reviews");
        assert_eq!(std::fs::read_to_string(dir.join(KEY)).unwrap(), "key-1");
        let first = std::fs::read_link(dir.join(DATA_LINK)).unwrap();

        sink.write(&secret("reviews", "2")).unwrap();
        sink.write(&secret("reviews", "3")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(CERT_CHAIN)).unwrap(),
            "chain-3"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(ROOT_CERT)).unwrap(),
            "root-3"
        );
        // The first version is gone; the current and the previous one remain.
        assert!(!dir.join(&first).exists());
        let versions = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != DATA_LINK
            })
            .count();
        assert_eq!(versions, 2);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join(KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        assert_eq!(
            sink.scan().unwrap(),
            vec![SecretKey::new("default", "reviews")]
        );
        let stored = sink
            .read(&SecretKey::new("default", "reviews"))
            .unwrap()
            .unwrap();
        assert_eq!(stored.root_cert, "root-3");
        assert!(sink.remove(&SecretKey::new("default", "reviews")).unwrap());
        assert!(!out.path().join("default").exists());
        assert!(!sink.remove(&SecretKey::new("default", "reviews")).unwrap());
        assert!(sink.scan().unwrap().is_empty());
    }

    #[test]
    fn refuses_path_tricks() {
        let out = tempfile::tempdir().unwrap();
        let sink = FileSink::new(out.path());
        let e = sink.dir_of(&SecretKey::new("..", "x")).unwrap_err();
        assert!(e.to_string().contains("directory name"), "{e}");
        assert!(sink.dir_of(&SecretKey::new("a", "b/c")).is_err());
    }
}
