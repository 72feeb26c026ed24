//! Where the self-signed CA is kept so a restart keeps the root: the [`CaStore`] trait, its
//! file backend ([`DirCaStore`], a directory with `ca-cert.pem` and `ca-key.pem`), and the
//! startup logic ([`load_or_create`]) shared with the Kubernetes backend (secret
//! `istio-ca-secret`, in `crate::k8s`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use super::{CaBundle, CaError, KeyAlgorithm, root};

/// File name of the CA certificate, in a CA directory and in `istio-ca-secret`.
pub const CA_CERT: &str = "ca-cert.pem";
/// File name of the CA key.
pub const CA_KEY: &str = "ca-key.pem";
/// File name of the root certificate in a plugged-in CA (`cacerts`).
pub const ROOT_CERT: &str = "root-cert.pem";
/// File name of the chain above the signing certificate in a plugged-in CA (`cacerts`).
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Errors reading or writing stored CA material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The backend (e.g. the Kubernetes API) failed; `what` names the object.
    #[error("{what}: {message}")]
    Backend { what: String, message: String },
    /// Stored material is unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Persistent storage of a self-signed CA.
pub trait CaStore: Send + Sync + 'static {
    /// Where the CA lives, for messages (`CA directory /var/lib/citadel`,
    /// `secret istio-system/istio-ca-secret`).
    fn describe(&self) -> String;
    /// The stored CA, if any.
    fn load(&self) -> BoxFuture<'_, Result<Option<CaBundle>, StoreError>>;
    /// Stores `bundle` unless a CA is already stored; returns the CA that is stored afterwards
    /// (another replica may have won the race).
    fn create(&self, bundle: CaBundle) -> BoxFuture<'_, Result<CaBundle, StoreError>>;
    /// Replaces the stored CA (after a root rotation).
    fn update(&self, bundle: CaBundle) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// How to make a new self-signed root.
#[derive(Debug, Clone)]
pub struct SelfSignedOptions {
    pub algorithm: KeyAlgorithm,
    pub trust_domain: String,
    /// Validity of the root (`--self-signed-ca-cert-ttl`, 10 years as in Istio).
    pub ttl: Duration,
}

/// Loads the stored CA, or makes a new self-signed one and stores it. Returns the bundle and
/// whether it was created now.
pub async fn load_or_create(
    store: &dyn CaStore,
    options: &SelfSignedOptions,
    now: SystemTime,
) -> Result<(CaBundle, bool), StoreError> {
    if let Some(bundle) = store.load().await? {
        return Ok((bundle, false));
    }
    let bundle = root::self_signed(options.algorithm, &options.trust_domain, options.ttl, now)?;
    let stored = store.create(bundle.clone()).await?;
    let created = stored == bundle;
    Ok((stored, created))
}

/// A self-signed CA kept in a directory: `ca-cert.pem` and `ca-key.pem` (mode 0600), each
/// replaced atomically (written to a temporary file, synced, renamed).
#[derive(Debug, Clone)]
pub struct DirCaStore {
    dir: PathBuf,
}

// === impl DirCaStore ===

impl DirCaStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn read(&self) -> Result<Option<CaBundle>, StoreError> {
        let cert_path = self.dir.join(CA_CERT);
        let key_path = self.dir.join(CA_KEY);
        let cert = match std::fs::read_to_string(&cert_path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if key_path.exists() {
                    return Err(StoreError::Io {
                        path: cert_path,
                        source: e,
                    });
                }
                return Ok(None);
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: cert_path,
                    source,
                });
            }
        };
        let key = std::fs::read_to_string(&key_path).map_err(|source| StoreError::Io {
            path: key_path,
            source,
        })?;
        Ok(Some(CaBundle {
            signing_cert: cert.clone(),
            signing_key: key,
            cert_chain: String::new(),
            root_cert: cert,
        }))
    }

    fn write(&self, bundle: &CaBundle) -> Result<(), StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        // The key first: a crash in between leaves the old certificate with the (same, on
        // rotation) key, never a certificate without its key.
        write_atomic(&self.dir.join(CA_KEY), bundle.signing_key.as_bytes(), 0o600)
            .map_err(io(&self.dir.join(CA_KEY)))?;
        write_atomic(
            &self.dir.join(CA_CERT),
            bundle.signing_cert.as_bytes(),
            0o644,
        )
        .map_err(io(&self.dir.join(CA_CERT)))?;
        Ok(())
    }
}

impl CaStore for DirCaStore {
    fn describe(&self) -> String {
        format!("CA directory {}", self.dir.display())
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<CaBundle>, StoreError>> {
        Box::pin(async move { self.read() })
    }

    fn create(&self, bundle: CaBundle) -> BoxFuture<'_, Result<CaBundle, StoreError>> {
        Box::pin(async move {
            if let Some(existing) = self.read()? {
                return Ok(existing);
            }
            self.write(&bundle)?;
            Ok(bundle)
        })
    }

    fn update(&self, bundle: CaBundle) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.write(&bundle) })
    }
}

/// Reads a plugged-in CA from files (`--signing-cert`, `--signing-key`, `--root-cert`,
/// `--cert-chain`); the chain is optional.
pub fn read_plugged(
    signing_cert: &Path,
    signing_key: &Path,
    root_cert: &Path,
    cert_chain: Option<&Path>,
) -> Result<CaBundle, StoreError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| StoreError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok(CaBundle {
        signing_cert: read(signing_cert)?,
        signing_key: read(signing_key)?,
        root_cert: read(root_cert)?,
        cert_chain: match cert_chain {
            Some(p) => read(p)?,
            None => String::new(),
        },
    })
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path`.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restart_keeps_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirCaStore::new(dir.path().join("ca"));
        let opts = SelfSignedOptions {
            algorithm: KeyAlgorithm::EcdsaP256,
            trust_domain: "cluster.local".into(),
            ttl: Duration::from_secs(86400),
        };
        let (first, created) = load_or_create(&store, &opts, SystemTime::now())
            .await
            .unwrap();
        assert!(created);
        let (second, created) = load_or_create(&store, &opts, SystemTime::now())
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(first, second);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca").join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_plugged_file_is_named() {
        let e = read_plugged(
            Path::new("/nonexistent/ca-cert.pem"),
            Path::new("/nonexistent/ca-key.pem"),
            Path::new("/nonexistent/root-cert.pem"),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca-cert.pem"), "{e}");
    }
}
