//! Kubernetes client setup: an explicit kubeconfig, `KUBECONFIG`, or in-cluster config.

use std::path::Path;

/// Errors creating a Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    /// The kubeconfig file cannot be read or parsed.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No usable configuration was found (no kubeconfig, not in a pod).
    #[error("no Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Builds a client from `kubeconfig` when given, else from `KUBECONFIG`, `~/.kube/config` or the
/// in-cluster service account.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeClientError> {
    install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Selects rustls' process-wide crypto provider (aws-lc-rs, as everywhere in this workspace)
/// before any TLS client is built. Idempotent.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
