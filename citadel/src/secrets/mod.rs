//! Workload secrets: what Citadel delivers for each service account, and where.
//!
//! A [`SecretSink`] stores one secret per service account: `cert-chain.pem`, `key.pem` and
//! `root-cert.pem`. Two backends: files ([`file::FileSink`], `OUT/<ns>/istio.<sa>/`, swapped
//! atomically) and Kubernetes secrets `istio.<sa>` of type `istio.io/key-and-cert` (in
//! `crate::k8s`). The controller ([`crate::controller`]) decides what to write; sinks only
//! store.

pub mod file;

use std::fmt;
use std::path::PathBuf;

use futures::future::BoxFuture;

/// The prefix of secret names: the secret of account `sa` is `istio.sa`.
pub const SECRET_PREFIX: &str = "istio.";
/// Key (file name) of the certificate chain, leaf first.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// Key (file name) of the private key.
pub const KEY: &str = "key.pem";
/// Key (file name) of the root certificate.
pub const ROOT_CERT: &str = "root-cert.pem";

/// Which service account a secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey {
    pub namespace: String,
    pub service_account: String,
}

/// A secret to store.
#[derive(Clone)]
pub struct WorkloadSecret {
    pub key: SecretKey,
    pub cert_chain: String,
    pub private_key: String,
    pub root_cert: String,
}

/// What the controller needs to know about a stored secret to decide whether to rewrite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub cert_chain: String,
    pub root_cert: String,
    /// Whether a private key is present at all.
    pub has_key: bool,
}

/// Errors of a secret backend.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The backend (e.g. the Kubernetes API) refused or failed; `what` names the object.
    #[error("{what}: {message}")]
    Backend { what: String, message: String },
}

/// Where workload secrets are stored.
pub trait SecretSink: Send + Sync + 'static {
    /// For messages: `directory /var/run/secrets`, `Kubernetes secrets`.
    fn describe(&self) -> String;
    /// The stored secret of `key`, if any.
    fn get<'a>(
        &'a self,
        key: &'a SecretKey,
    ) -> BoxFuture<'a, Result<Option<StoredSecret>, SinkError>>;
    /// Creates or replaces the secret; a reader never sees a mix of old and new keys.
    fn put(&self, secret: WorkloadSecret) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Deletes the secret; `false` when there was none.
    fn delete<'a>(&'a self, key: &'a SecretKey) -> BoxFuture<'a, Result<bool, SinkError>>;
    /// Every secret this sink holds that Citadel manages.
    fn list(&self) -> BoxFuture<'_, Result<Vec<SecretKey>, SinkError>>;
}

// === impl SecretKey ===

impl SecretKey {
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The secret's name, `istio.<sa>`.
    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.service_account)
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}{}",
            self.namespace, SECRET_PREFIX, self.service_account
        )
    }
}

// === impl WorkloadSecret ===

impl fmt::Debug for WorkloadSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadSecret")
            .field("key", &self.key)
            .field("private_key", &"[elided]")
            .finish_non_exhaustive()
    }
}
