//! The runtime that pilot, mixer and citadel share, and nothing more.
//!
//! - [`config`]: the config store. One [`config::ConfigStore`] trait with two backends: a watched
//!   directory of YAML ([`config::DirectoryStore`], the embedded default) and the Kubernetes API
//!   ([`config::KubeStore`]). Both publish immutable [`config::Snapshot`]s.
//! - [`monitoring`]: the HTTP server every binary runs: `/ready`, `/metrics`, `/debug/*`.
//! - [`cli`], [`logging`], [`shutdown`], [`settings`] and [`kube_client`]: process plumbing.

pub mod cli;
pub mod config;
pub mod kube_client;
pub mod logging;
pub mod monitoring;
pub mod service;
pub mod settings;
pub mod shutdown;

pub use config::{ConfigKey, ConfigObject, ConfigStore, LoadError, Snapshot};
pub use monitoring::Readiness;
pub use shutdown::Shutdown;
