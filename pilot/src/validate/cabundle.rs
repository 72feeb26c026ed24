//! The caBundle keeper: on Kubernetes, Pilot keeps the `caBundle` of its webhook
//! configurations (the ValidatingWebhookConfiguration of `/validate`, the
//! MutatingWebhookConfiguration of `/inject`) equal to the roots of the certificate its
//! webhook serves. One [`Keeper`] per configuration, generic over its kind
//! ([`WebhookConfiguration`]).
//!
//! Istio's installs broke admission in several ways this prevents: a re-applied manifest
//! wiping the caBundle (Istio #5828), a root that changed under a configuration nobody
//! updated (#6186), and a caBundle patched by a one-off job that never ran again (#16363).
//! Here the component that serves the webhook owns the field: it watches the configuration
//! (by name: its RBAC allows no other) and the roots file (Citadel's `root-cert.pem`, which
//! the kubelet updates in the mounted secret), and writes every webhook's caBundle whenever
//! it differs, with an optimistic update that is retried on conflict.

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use mesh_runtime::Shutdown;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How often the roots file is looked at, and the wait after a failed write.
const EVERY: Duration = Duration::from_secs(5);

/// Why a round of the keeper did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("cannot read the webhook's roots {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NotPem { path: PathBuf },
    #[error("{kind} {name}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
}

/// A kind of admission webhook configuration: a list of webhooks, each with a caBundle.
pub trait WebhookConfiguration:
    kube::Resource<DynamicType = ()>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The kind, in messages.
    const KIND: &'static str;

    /// The client configuration of each webhook.
    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig>;

    /// Sets every webhook's caBundle to `roots`; true if any changed.
    fn set_ca_bundle(&mut self, roots: &[u8]) -> bool {
        let mut changed = false;
        for client in self.client_configs() {
            let bundle = &mut client.ca_bundle;
            if bundle.as_ref().map(|b| b.0.as_slice()) != Some(roots) {
                *bundle = Some(ByteString(roots.to_vec()));
                changed = true;
            }
        }
        changed
    }
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    const KIND: &'static str = "ValidatingWebhookConfiguration";

    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig> {
        self.webhooks
            .iter_mut()
            .flatten()
            .map(|w| &mut w.client_config)
            .collect()
    }
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    const KIND: &'static str = "MutatingWebhookConfiguration";

    fn client_configs(&mut self) -> Vec<&mut WebhookClientConfig> {
        self.webhooks
            .iter_mut()
            .flatten()
            .map(|w| &mut w.client_config)
            .collect()
    }
}

/// Keeps the caBundle of the `K` named `name` equal to the file `roots` until `shutdown`.
#[derive(Debug, Clone)]
pub struct Keeper<K: WebhookConfiguration> {
    pub api: Api<K>,
    pub name: String,
    pub roots: PathBuf,
}

// === impl Keeper ===

impl<K: WebhookConfiguration> Keeper<K> {
    /// Runs until `shutdown`: a round on every change of the configuration and every
    /// [`EVERY`], logging what it wrote and why a round failed.
    pub async fn run(self, shutdown: Shutdown) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher(self.api.clone(), config).boxed();
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                event = events.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, name = %self.name, "webhook configuration watch failed; retrying");
                        continue;
                    }
                    None => return,
                },
            }
            match self.round().await {
                Ok(true) => {
                    tracing::info!(kind = K::KIND, name = %self.name, "webhook configuration: caBundle written")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "webhook caBundle not kept"),
            }
        }
    }

    /// One round: reads the roots and the configuration, writes it if any webhook's caBundle
    /// differs. True if it wrote. A configuration that does not exist is not created (it is
    /// install.yaml's, and someone may have removed it on purpose).
    pub async fn round(&self) -> Result<bool, CaBundleError> {
        let roots = std::fs::read(&self.roots).map_err(|source| CaBundleError::Read {
            path: self.roots.clone(),
            source,
        })?;
        if !String::from_utf8_lossy(&roots).contains("-----BEGIN CERTIFICATE-----") {
            return Err(CaBundleError::NotPem {
                path: self.roots.clone(),
            });
        }
        let api_err = |source| CaBundleError::Api {
            kind: K::KIND,
            name: self.name.clone(),
            source,
        };
        for _attempt in 0..3 {
            let Some(mut config) = self.api.get_opt(&self.name).await.map_err(api_err)? else {
                return Ok(false);
            };
            if !config.set_ca_bundle(&roots) {
                return Ok(false);
            }
            match self
                .api
                .replace(&self.name, &PostParams::default(), &config)
                .await
            {
                Ok(_) => return Ok(true),
                // Someone else wrote in between: read it again.
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(api_err(e)),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, ValidatingWebhook};

    #[test]
    fn every_webhook_gets_the_roots_once() {
        let mut config = ValidatingWebhookConfiguration {
            webhooks: Some(vec![
                ValidatingWebhook {
                    name: "a.istio.io".into(),
                    ..Default::default()
                },
                ValidatingWebhook {
                    name: "b.istio.io".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        assert!(config.set_ca_bundle(b"roots"));
        for w in config.webhooks.as_ref().unwrap() {
            assert_eq!(w.client_config.ca_bundle.as_ref().unwrap().0, b"roots");
        }
        assert!(!config.set_ca_bundle(b"roots"), "nothing to write");
        assert!(config.set_ca_bundle(b"new roots"));
    }

    #[test]
    fn the_injectors_configuration_is_kept_the_same_way() {
        let mut config = MutatingWebhookConfiguration {
            webhooks: Some(vec![MutatingWebhook {
                name: "sidecar-injector.istio.io".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(config.set_ca_bundle(b"roots"));
        let w = &config.webhooks.as_ref().unwrap()[0];
        assert_eq!(w.client_config.ca_bundle.as_ref().unwrap().0, b"roots");
        assert!(!config.set_ca_bundle(b"roots"));
        assert!(
            MutatingWebhookConfiguration::default()
                .client_configs()
                .is_empty()
        );
    }
}
