//! The Kubernetes install: `manifests/install.yaml`, what `kubectl apply` takes to run the
//! control plane in namespace `istio-system` (`pilot manifest` prints it; `make manifests`
//! regenerates the checked-in copy, and a test fails when the two differ).
//!
//! One source of truth: the objects are built here, from [`names`] (which `pilot check` and
//! the webhook's caBundle keeper read too), the settings files of `manifests/install/` (put
//! in ConfigMaps as they are) and the kinds each binary watches (for its RBAC rules).
//!
//! - [`names`]: the names, ports and labels of what is installed.
//! - [`manifest`]: the objects, and the YAML file.
//! - [`mixer_config`]: the default Mixer config (Istio 1.0's telemetry: Prometheus metrics,
//!   access log, workload attributes from Kubernetes), from `manifests/install/mixer-config.yaml`.

pub mod manifest;
pub mod mixer_config;
pub mod names;

pub use manifest::{InstallOptions, install_yaml, objects};
