//! MeshConfig: the mesh-wide settings (Istio's `mesh` key of the `istio` ConfigMap), read from
//! the `--mesh` file and reloaded when it changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::types::Duration as IstioDuration;
use serde::Deserialize;
use tokio::sync::watch;

use mesh_runtime::Shutdown;

pub mod providers;
pub mod tracing;
pub use providers::ExtensionProvider;
pub use tracing::{ProxyConfig, Tracing};

/// What a sidecar does with traffic to hosts not in the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Forward it to where the client meant (Istio's default since 1.1).
    #[default]
    AllowAny,
    /// Refuse it.
    RegistryOnly,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundMode,
}

/// The mesh-wide settings Pilot acts on. Fields keep Istio's names; unknown fields are kept in
/// `other` and reported, not refused, so a full Istio MeshConfig loads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    /// When set, sidecars get an HTTP proxy listener on 127.0.0.1:PORT that routes every
    /// outbound HTTP service by Host (for workloads without iptables capture).
    pub proxy_http_port: u32,
    /// Port of the sidecars' `virtualOutbound` listener, where iptables redirects captured
    /// outbound traffic (Istio's default 15001; `pilot-agent iptables -p`).
    pub proxy_listen_port: u32,
    /// Port of the sidecars' `virtualInbound` listener, where iptables redirects captured
    /// inbound traffic (Istio's default 15006; `pilot-agent iptables -z`).
    pub proxy_inbound_listen_port: u32,
    /// Connect timeout of upstream connections (Istio's default 10s).
    pub connect_timeout: IstioDuration,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Istio's root namespace: config there applies to the whole mesh.
    pub root_namespace: String,
    pub trust_domain: String,
    /// Other trust domains the mesh's identities may carry (a migration from an old trust
    /// domain, or several meshes sharing a root): an authorization principal in any of them,
    /// or in `cluster.local`, matches the same identity in every one.
    pub trust_domain_aliases: Vec<String>,
    /// Mixer's policy endpoint (`host:port`); sidecars call it before each request.
    pub mixer_check_server: String,
    /// Mixer's telemetry endpoint (`host:port`).
    pub mixer_report_server: String,
    pub disable_policy_checks: bool,
    /// Let requests through when Mixer cannot be reached.
    pub policy_check_fail_open: bool,
    /// Envoy access log path (e.g. `/dev/stdout`); empty disables it.
    pub access_log_file: String,
    /// External authorizers (and other providers) that policies name.
    pub extension_providers: Vec<ExtensionProvider>,
    /// Whether proxies report spans (to `defaultConfig.tracing`'s collector; on by default,
    /// as in Istio).
    pub enable_tracing: bool,
    /// The settings of every proxy (Istio's ProxyConfig); `tracing` is acted on.
    pub default_config: ProxyConfig,
    /// Fields this version does not act on.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            proxy_http_port: 0,
            proxy_listen_port: 15001,
            proxy_inbound_listen_port: 15006,
            connect_timeout: Duration::from_secs(10).into(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            mixer_check_server: String::new(),
            mixer_report_server: String::new(),
            disable_policy_checks: true,
            policy_check_fail_open: false,
            access_log_file: String::new(),
            extension_providers: Vec::new(),
            enable_tracing: true,
            default_config: ProxyConfig::default(),
            other: BTreeMap::new(),
        }
    }
}

/// Errors reading the mesh config.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot read mesh config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mesh config {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

// === impl MeshConfig ===

impl MeshConfig {
    /// Parses MeshConfig YAML. `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<MeshConfig, MeshError> {
        if text.trim().is_empty() {
            return Ok(MeshConfig::default());
        }
        let de = yaml_serde::Deserializer::from_str(text);
        let mesh: MeshConfig =
            serde_path_to_error::deserialize(de).map_err(|e| MeshError::Invalid {
                path: path.to_path_buf(),
                field: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        for (field, value) in [
            ("mixerCheckServer", &mesh.mixer_check_server),
            ("mixerReportServer", &mesh.mixer_report_server),
        ] {
            if !value.is_empty() && host_port(value).is_none() {
                return Err(MeshError::Invalid {
                    path: path.to_path_buf(),
                    field: field.into(),
                    message: format!("{value:?}: expected HOST:PORT"),
                });
            }
        }
        for (field, port) in [
            ("proxyListenPort", mesh.proxy_listen_port),
            ("proxyInboundListenPort", mesh.proxy_inbound_listen_port),
        ] {
            if !(1..=65535).contains(&port) {
                return Err(MeshError::Invalid {
                    path: path.to_path_buf(),
                    field: field.into(),
                    message: format!("{port}: expected a port number (1-65535)"),
                });
            }
        }
        if mesh.proxy_listen_port == mesh.proxy_inbound_listen_port {
            return Err(MeshError::Invalid {
                path: path.to_path_buf(),
                field: "proxyInboundListenPort".into(),
                message: format!(
                    "{}: the same port as proxyListenPort (inbound and outbound capture need \
                     their own)",
                    mesh.proxy_inbound_listen_port
                ),
            });
        }
        let domains = std::iter::once(("trustDomain".to_string(), &mesh.trust_domain)).chain(
            mesh.trust_domain_aliases
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("trustDomainAliases[{i}]"), a)),
        );
        for (field, domain) in domains {
            if let Err(message) = check_trust_domain(domain) {
                return Err(MeshError::Invalid {
                    path: path.to_path_buf(),
                    field,
                    message,
                });
            }
        }
        providers::validate(&mesh.extension_providers).map_err(|(field, message)| {
            MeshError::Invalid {
                path: path.to_path_buf(),
                field,
                message,
            }
        })?;
        if let Some(t) = &mesh.default_config.tracing {
            tracing::validate(t).map_err(|(field, message)| MeshError::Invalid {
                path: path.to_path_buf(),
                field,
                message,
            })?;
            if let Some(other) = t.other_tracer() {
                ::tracing::warn!(
                    tracer = other,
                    "defaultConfig.tracing: only zipkin is supported; proxies report no spans"
                );
            }
        }
        if !mesh.other.is_empty() {
            let keys: Vec<_> = mesh.other.keys().cloned().collect();
            ::tracing::info!(fields = ?keys, "mesh config fields not acted on by this version");
        }
        Ok(mesh)
    }

    pub fn load(path: &Path) -> Result<MeshConfig, MeshError> {
        let text = std::fs::read_to_string(path).map_err(|source| MeshError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        MeshConfig::parse(path, &text)
    }

    /// Whether sidecars should call Mixer for policy.
    pub fn policy_checks_enabled(&self) -> bool {
        !self.disable_policy_checks && !self.mixer_check_server.is_empty()
    }

    /// Mixer's policy endpoint as (host, port), when sidecars should call it.
    pub fn mixer_check_address(&self) -> Option<(&str, u32)> {
        if !self.policy_checks_enabled() {
            return None;
        }
        host_port(&self.mixer_check_server)
    }

    /// The trust domain and its aliases, the trust domain first.
    pub fn trust_domains(&self) -> Vec<&str> {
        let mut out = vec![self.trust_domain.as_str()];
        for a in &self.trust_domain_aliases {
            if !out.contains(&a.as_str()) {
                out.push(a);
            }
        }
        out
    }

    /// The extension provider named `name`.
    pub fn extension_provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }

    /// The tracing proxies get (`enableTracing` and `defaultConfig.tracing` with Istio's
    /// defaults), or `None` when they report no spans.
    pub fn tracing(&self) -> Option<Tracing> {
        tracing::resolve(self.enable_tracing, self.default_config.tracing.as_ref())
    }

    /// Mixer's telemetry endpoint as (host, port), when set.
    pub fn mixer_report_address(&self) -> Option<(&str, u32)> {
        host_port(&self.mixer_report_server)
    }
}

/// Splits `HOST:PORT` (`[IPv6]:PORT` too); `None` unless the port is a valid port number and
/// the host is not empty.
pub fn host_port(s: &str) -> Option<(&str, u32)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u32 = port.parse().ok()?;
    (!host.is_empty() && (1..=65535).contains(&port)).then_some((host, port))
}

/// Loads the mesh config (defaults when `path` is `None`) and reloads it when the file changes
/// (checked every second). A file that becomes invalid is reported and the last good config
/// keeps serving.
pub fn watch_mesh(
    path: Option<PathBuf>,
    shutdown: Shutdown,
) -> Result<watch::Receiver<Arc<MeshConfig>>, MeshError> {
    watch_mesh_with_status(path, shutdown).map(|(rx, _)| rx)
}

/// [`watch_mesh`], and the refusal of the file as it is now: `Some(why)` while the file on
/// disk is invalid and an older config serves (`/debug/meshz`, which `pilot check` reads).
#[allow(clippy::type_complexity)]
pub fn watch_mesh_with_status(
    path: Option<PathBuf>,
    shutdown: Shutdown,
) -> Result<
    (
        watch::Receiver<Arc<MeshConfig>>,
        watch::Receiver<Option<String>>,
    ),
    MeshError,
> {
    let (refused_tx, refused_rx) = watch::channel(None);
    let Some(path) = path else {
        // Defaults that never change; the senders live as long as the process serves.
        let (tx, rx) = watch::channel(Arc::new(MeshConfig::default()));
        tokio::spawn(async move {
            shutdown.cancelled().await;
            drop((tx, refused_tx));
        });
        return Ok((rx, refused_rx));
    };
    let initial = MeshConfig::load(&path)?;
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(async move {
        let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if text == last_text {
                continue;
            }
            last_text = text;
            match MeshConfig::parse(&path, &last_text) {
                Ok(mesh) => {
                    ::tracing::info!(path = %path.display(), "mesh config reloaded");
                    tx.send_replace(Arc::new(mesh));
                    refused_tx.send_replace(None);
                }
                Err(e) => {
                    ::tracing::warn!(error = %e, "mesh config refused; keeping the last good one");
                    refused_tx.send_replace(Some(e.to_string()));
                }
            }
        }
    });
    Ok((rx, refused_rx))
}

/// Whether `domain` can be a SPIFFE trust domain: letters, digits, `.`, `-` and `_`, and
/// not empty.
fn check_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty: a trust domain is required".into());
    }
    match domain
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(format!(
            "{domain:?}: {c:?} cannot be in a trust domain (letters, digits, '.', '-', '_')"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_mesh_config() {
        let m = MeshConfig::parse(
            Path::new("mesh"),
            "proxyHttpPort: 15080\nconnectTimeout: 1s\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\nenableTracing: true\n",
        )
        .unwrap();
        assert_eq!(m.proxy_http_port, 15080);
        assert_eq!(m.connect_timeout.as_std(), Duration::from_secs(1));
        assert_eq!(m.outbound_traffic_policy.mode, OutboundMode::RegistryOnly);
        assert!(m.enable_tracing && m.other.is_empty(), "{:?}", m.other);
        let e = MeshConfig::parse(Path::new("mesh"), "proxyHttpPort: lots\n").unwrap_err();
        assert!(e.to_string().contains("proxyHttpPort"), "{e}");
        assert_eq!(
            (m.proxy_listen_port, m.proxy_inbound_listen_port),
            (15001, 15006)
        );
        let m = MeshConfig::parse(
            Path::new("mesh"),
            "proxyListenPort: 16001\nproxyInboundListenPort: 16006\n",
        )
        .unwrap();
        assert_eq!(
            (m.proxy_listen_port, m.proxy_inbound_listen_port),
            (16001, 16006)
        );
        for bad in [
            "proxyInboundListenPort: 0\n",
            "proxyListenPort: 70000\n",
            "proxyInboundListenPort: 15001\n",
        ] {
            let e = MeshConfig::parse(Path::new("mesh"), bad).unwrap_err();
            assert!(e.to_string().contains("ListenPort"), "{bad}: {e}");
        }
    }

    #[test]
    fn mixer_addresses() {
        let m = MeshConfig::parse(
            Path::new("mesh"),
            "mixerCheckServer: istio-policy.istio-system.svc.cluster.local:9091\nmixerReportServer: 127.0.0.1:9092\ndisablePolicyChecks: false\n",
        )
        .unwrap();
        assert_eq!(
            m.mixer_check_address(),
            Some(("istio-policy.istio-system.svc.cluster.local", 9091))
        );
        assert_eq!(m.mixer_report_address(), Some(("127.0.0.1", 9092)));
        // Checks are off by default, as in Istio.
        let m = MeshConfig::parse(Path::new("mesh"), "mixerCheckServer: policy:9091\n").unwrap();
        assert_eq!(m.mixer_check_address(), None);
        let e = MeshConfig::parse(Path::new("mesh"), "mixerCheckServer: policy\n").unwrap_err();
        assert!(e.to_string().contains("mixerCheckServer"), "{e}");
        assert_eq!(host_port("[::1]:9091"), Some(("::1", 9091)));
        assert_eq!(host_port("a:0"), None);
    }

    #[test]
    fn trust_domain_aliases() {
        let m = MeshConfig::parse(
            Path::new("mesh"),
            "trustDomain: new.td\ntrustDomainAliases: [old.td, new.td, legacy-td]\n",
        )
        .unwrap();
        assert_eq!(m.trust_domains(), ["new.td", "old.td", "legacy-td"]);
        assert_eq!(MeshConfig::default().trust_domains(), ["cluster.local"]);
        for (bad, field) in [
            (
                "trustDomainAliases: [ok.td, 'spiffe://x']\n",
                "trustDomainAliases[1]",
            ),
            ("trustDomain: ''\n", "trustDomain"),
            ("trustDomainAliases: ['a/b']\n", "trustDomainAliases[0]"),
        ] {
            let e = MeshConfig::parse(Path::new("mesh"), bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{field}: ")), "{bad}: {e}");
        }
    }

    #[test]
    fn tracing_defaults_and_fields() {
        // Istio's defaults: on, zipkin.istio-system:9411, 1%.
        let t = MeshConfig::default().tracing().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("zipkin.istio-system", 9411));
        assert_eq!(t.sampling, 1.0);
        assert_eq!(t.max_path_tag_length, 256);
        let m = MeshConfig::parse(
            Path::new("mesh"),
            "enableTracing: true\ndefaultConfig:\n  discoveryAddress: istiod:15012\n  tracing:\n    sampling: 100\n    maxPathTagLength: 99\n    zipkin:\n      address: 127.0.0.1:9411\n    customTags:\n      team: {literal: {value: books}}\n      zone: {environment: {name: ZONE, defaultValue: unknown}}\n",
        )
        .unwrap();
        let t = m.tracing().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.sampling),
            ("127.0.0.1", 9411, 100.0)
        );
        assert_eq!(t.max_path_tag_length, 99);
        assert_eq!(t.custom_tags.len(), 2);
        assert!(m.default_config.other.contains_key("discoveryAddress"));
        // Sampling alone keeps the default collector; 0 is 0 (Istio would read 1%).
        let m = MeshConfig::parse(
            Path::new("mesh"),
            "defaultConfig:\n  tracing:\n    sampling: 0\n",
        )
        .unwrap();
        let t = m.tracing().unwrap();
        assert_eq!((t.host.as_str(), t.sampling), ("zipkin.istio-system", 0.0));
        // Off, or another tracer: no spans.
        let m = MeshConfig::parse(Path::new("mesh"), "enableTracing: false\n").unwrap();
        assert_eq!(m.tracing(), None);
        let m = MeshConfig::parse(
            Path::new("mesh"),
            "defaultConfig:\n  tracing:\n    lightstep: {address: ls:8080}\n",
        )
        .unwrap();
        assert_eq!(m.tracing(), None);
        for (bad, field) in [
            (
                "defaultConfig:\n  tracing:\n    sampling: 101\n",
                "defaultConfig.tracing.sampling",
            ),
            (
                "defaultConfig:\n  tracing:\n    sampling: -1\n",
                "defaultConfig.tracing.sampling",
            ),
            (
                "defaultConfig:\n  tracing:\n    zipkin: {address: zipkin}\n",
                "defaultConfig.tracing.zipkin.address",
            ),
            (
                "defaultConfig:\n  tracing:\n    zipkin: {address: 'z:9411'}\n    datadog: {address: 'd:8126'}\n",
                "defaultConfig.tracing.datadog",
            ),
            (
                "defaultConfig:\n  tracing:\n    customTags:\n      t: {}\n",
                "defaultConfig.tracing.customTags.t",
            ),
            (
                "defaultConfig:\n  tracing:\n    customTags:\n      t: {header: {name: ''}}\n",
                "defaultConfig.tracing.customTags.t.header.name",
            ),
            (
                "defaultConfig:\n  tracing:\n    sampling: lots\n",
                "defaultConfig.tracing.sampling",
            ),
            ("enableTracing: maybe\n", "enableTracing"),
        ] {
            let e = MeshConfig::parse(Path::new("mesh"), bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{field}: ")), "{bad}: {e}");
        }
    }
}
