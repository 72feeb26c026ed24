//! Citadel's command line and settings file.
//!
//! Flag names and defaults follow Istio's Citadel (`istio_ca`) where it had them:
//! `--workload-cert-ttl` 24h, `--max-workload-cert-ttl` 90 days (2160h),
//! `--workload-cert-grace-period-ratio` 0.5, `--workload-cert-min-grace-period` 10m,
//! `--trust-domain` cluster.local, `--self-signed-ca-cert-ttl` 10 years (87600h), root checked
//! every hour (`--root-cert-check-interval`) and rotated when 20% of its life is left
//! (`--root-cert-grace-period-percentile`), `--citadel-storage-namespace` istio-system.
//! Durations are written as Go writes them: `24h`, `10m`, `1h30m`, `500ms`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use mesh_proto::Kind;
use mesh_runtime::cli::{BinaryCli, CommonArgs};
use serde::Deserialize;

use crate::ca::KeyAlgorithm;
use crate::secrets::SecretKey;

/// Citadel: workload certificates (SPIFFE identities) for an Istio service mesh.
///
/// Reads ServiceAccounts from a directory of YAML (`--config-dir`, secrets written as files to
/// `--secret-dir`) or from Kubernetes (secrets `istio.<sa>`). Every flag can also be set by an
/// environment variable (shown below) or in the `--config` file.
#[derive(Debug, clap::Parser)]
#[command(name = "citadel", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Directory of YAML to read ServiceAccounts from instead of Kubernetes (watched for changes).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// Kubeconfig to use when no --config-dir is given (default: KUBECONFIG or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of the monitoring server (/ready, /metrics, /debug/*) [default: 0.0.0.0:15014].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Address of the CSR signing gRPC server (TLS) [default: 0.0.0.0:8060].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// DNS names in the gRPC serving certificate (comma-separated)
    /// [default: istio-ca,istio-citadel].
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub grpc_host_identities: Option<Vec<String>>,

    /// File mode: where workload secrets are written, as OUT/NAMESPACE/istio.SA/. Without
    /// it (and without Kubernetes) no secrets are written.
    #[arg(long, value_name = "OUT")]
    pub secret_dir: Option<PathBuf>,

    /// File mode: where the self-signed CA is kept (ca-cert.pem, ca-key.pem, the key mode 0600)
    /// so a restart keeps the root [default: OUT/<storage namespace>/istio-ca-secret of
    /// --secret-dir; in memory only when neither is given].
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Validity of workload certificates [default: 24h].
    #[arg(long, value_name = "DURATION")]
    pub workload_cert_ttl: Option<GoDuration>,

    /// The longest validity of any certificate Citadel issues [default: 2160h].
    #[arg(long, value_name = "DURATION")]
    pub max_workload_cert_ttl: Option<GoDuration>,

    /// Rotate a workload certificate when less than this fraction of its lifetime (its TTL) is
    /// left [default: 0.5].
    #[arg(long, value_name = "RATIO")]
    pub workload_cert_grace_period_ratio: Option<f64>,

    /// ... or less than this, whichever is longer [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub workload_cert_min_grace_period: Option<GoDuration>,

    /// The SPIFFE trust domain [default: cluster.local].
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,

    /// Use a self-signed root (persisted in istio-ca-secret or --ca-dir). This is the default
    /// when no --signing-cert is given.
    #[arg(long)]
    pub self_signed_ca: bool,

    /// Plugged-in CA: the signing (intermediate) certificate, like cacerts' ca-cert.pem.
    #[arg(long, value_name = "FILE")]
    pub signing_cert: Option<PathBuf>,

    /// Plugged-in CA: the signing key (ca-key.pem).
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Plugged-in CA: the root certificate (root-cert.pem).
    #[arg(long, value_name = "FILE")]
    pub root_cert: Option<PathBuf>,

    /// Plugged-in CA: the chain from the signing certificate up to the root (cert-chain.pem).
    #[arg(long, value_name = "FILE")]
    pub cert_chain: Option<PathBuf>,

    /// Algorithm of generated keys (self-signed root and workloads): ECDSA_P256, RSA_2048 or
    /// RSA_4096 [default: ECDSA_P256].
    #[arg(long, value_name = "ALG")]
    pub key_algorithm: Option<KeyAlgorithm>,

    /// Validity of a new self-signed root [default: 87600h].
    #[arg(long, value_name = "DURATION")]
    pub self_signed_ca_cert_ttl: Option<GoDuration>,

    /// How often the self-signed root is checked for rotation [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub root_cert_check_interval: Option<GoDuration>,

    /// Rotate the self-signed root when less than this percentage of its life is left
    /// [default: 20].
    #[arg(long, value_name = "PERCENT")]
    pub root_cert_grace_period_percentile: Option<u32>,

    /// Kubernetes: namespace of istio-ca-secret, cacerts and the leader Lease
    /// [default: istio-system].
    #[arg(long, value_name = "NS")]
    pub citadel_storage_namespace: Option<String>,

    /// Only these namespaces get secrets (comma-separated; default: all).
    #[arg(long, value_name = "NS,...", value_delimiter = ',')]
    pub listened_namespaces: Option<Vec<String>>,

    /// These namespaces get no secrets (comma-separated).
    #[arg(long, value_name = "NS,...", value_delimiter = ',')]
    pub excluded_namespaces: Option<Vec<String>>,

    /// Extra DNS SANs: `account.namespace:dns-name`, comma-separated, e.g.
    /// `istio-pilot-service-account.istio-system:pilot.example.com`.
    #[arg(long, value_name = "SA.NS:NAME,...", value_delimiter = ',')]
    pub custom_dns_names: Option<Vec<String>>,

    /// Give Istio's control-plane accounts their service DNS names (istio-pilot,
    /// istio-sidecar-injector, istio-galley in the storage namespace) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub append_dns_names: Option<bool>,

    /// Sustained secret writes per second [default: 50].
    #[arg(long, value_name = "QPS")]
    pub secret_write_qps: Option<f64>,

    /// Secret writes allowed in a burst [default: 100].
    #[arg(long, value_name = "N")]
    pub secret_write_burst: Option<u32>,

    /// How often every secret is re-checked and orphans are removed [default: 1m].
    #[arg(long, value_name = "DURATION")]
    pub secret_resync_period: Option<GoDuration>,

    /// After a root change, rewrites of all secrets are spread over this long [default: 1m].
    #[arg(long, value_name = "DURATION")]
    pub root_change_spread: Option<GoDuration>,

    /// Kubernetes: name of the coordination.k8s.io Lease for leader election
    /// [default: istio-citadel].
    #[arg(long, value_name = "NAME")]
    pub leader_lease_name: Option<String>,

    /// Kubernetes: how long a leader's Lease lasts without renewal [default: 15s].
    #[arg(long, value_name = "DURATION")]
    pub leader_lease_duration: Option<GoDuration>,
}

/// A duration written as Go writes it (`24h`, `1h30m`, `10s`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

/// The settings file: the same settings as the flags, in camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSettings {
    config_dir: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    grpc_host_identities: Option<Vec<String>>,
    secret_dir: Option<PathBuf>,
    ca_dir: Option<PathBuf>,
    workload_cert_ttl: Option<GoDuration>,
    max_workload_cert_ttl: Option<GoDuration>,
    workload_cert_grace_period_ratio: Option<f64>,
    workload_cert_min_grace_period: Option<GoDuration>,
    trust_domain: Option<String>,
    self_signed_ca: Option<bool>,
    signing_cert: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    root_cert: Option<PathBuf>,
    cert_chain: Option<PathBuf>,
    key_algorithm: Option<KeyAlgorithm>,
    self_signed_ca_cert_ttl: Option<GoDuration>,
    root_cert_check_interval: Option<GoDuration>,
    root_cert_grace_period_percentile: Option<u32>,
    citadel_storage_namespace: Option<String>,
    listened_namespaces: Option<Vec<String>>,
    excluded_namespaces: Option<Vec<String>>,
    custom_dns_names: Option<Vec<String>>,
    append_dns_names: Option<bool>,
    secret_write_qps: Option<f64>,
    secret_write_burst: Option<u32>,
    secret_resync_period: Option<GoDuration>,
    root_change_spread: Option<GoDuration>,
    leader_lease_name: Option<String>,
    leader_lease_duration: Option<GoDuration>,
}

/// A plugged-in CA's files.
#[derive(Debug, Clone)]
pub struct PluggedCa {
    pub signing_cert: PathBuf,
    pub signing_key: PathBuf,
    pub root_cert: PathBuf,
    pub cert_chain: Option<PathBuf>,
}

/// Citadel's settings, resolved from flags, environment, settings file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub grpc_host_identities: Vec<String>,
    pub secret_dir: Option<PathBuf>,
    pub ca_dir: Option<PathBuf>,
    pub workload_cert_ttl: Duration,
    pub max_workload_cert_ttl: Duration,
    pub grace_period_ratio: f64,
    pub min_grace_period: Duration,
    pub trust_domain: String,
    /// `None`: self-signed.
    pub plugged_ca: Option<PluggedCa>,
    pub key_algorithm: KeyAlgorithm,
    pub self_signed_ca_cert_ttl: Duration,
    pub root_cert_check_interval: Duration,
    pub root_cert_grace_period_percentile: u32,
    pub storage_namespace: String,
    pub listened_namespaces: Vec<String>,
    pub excluded_namespaces: Vec<String>,
    pub dns_names: BTreeMap<SecretKey, Vec<String>>,
    pub secret_write_qps: f64,
    pub secret_write_burst: u32,
    pub secret_resync_period: Duration,
    pub root_change_spread: Duration,
    pub leader_lease_name: String,
    pub leader_lease_duration: Duration,
}

/// Errors resolving settings: the settings file, or a value that makes no sense (named).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    File(#[from] mesh_runtime::settings::SettingsError),
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

impl BinaryCli for Cli {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

// === impl GoDuration ===

impl FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_go_duration(s).map(GoDuration)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `1h30m`, `10s`, `1.5h`, `500ms`, `0`: a sequence of decimal numbers with units
/// ns, us (µs), ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad =
        |why: &str| format!("invalid duration {s:?}: {why} (examples: 24h, 1h30m, 10s, 500ms)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit"))?;
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

// === impl Settings ===

impl Settings {
    /// Flags (and environment) win over the settings file, which wins over defaults.
    pub fn resolve(cli: Cli) -> Result<Self, SettingsError> {
        let file: FileSettings = mesh_runtime::settings::load(cli.common.config.as_deref())?;
        let d = |flag: Option<GoDuration>, file: Option<GoDuration>, default: Duration| {
            flag.or(file).map(|g| g.0).unwrap_or(default)
        };
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let trust_domain = cli
            .trust_domain
            .or(file.trust_domain)
            .unwrap_or_else(|| "cluster.local".into());
        let storage_namespace = cli
            .citadel_storage_namespace
            .or(file.citadel_storage_namespace)
            .unwrap_or_else(|| "istio-system".into());

        let signing_cert = cli.signing_cert.or(file.signing_cert);
        let signing_key = cli.signing_key.or(file.signing_key);
        let root_cert = cli.root_cert.or(file.root_cert);
        let cert_chain = cli.cert_chain.or(file.cert_chain);
        let self_signed = cli.self_signed_ca || file.self_signed_ca.unwrap_or(false);
        let plugged_ca = match (signing_cert, signing_key, root_cert) {
            (None, None, None) => {
                if cert_chain.is_some() {
                    return Err(invalid(
                        "--cert-chain",
                        "needs --signing-cert, --signing-key and --root-cert",
                    ));
                }
                None
            }
            (Some(signing_cert), Some(signing_key), Some(root_cert)) => {
                if self_signed {
                    return Err(invalid(
                        "--self-signed-ca",
                        "cannot be combined with a plugged-in CA (--signing-cert ...)",
                    ));
                }
                Some(PluggedCa {
                    signing_cert,
                    signing_key,
                    root_cert,
                    cert_chain,
                })
            }
            _ => {
                return Err(invalid(
                    "--signing-cert",
                    "a plugged-in CA needs all of --signing-cert, --signing-key and --root-cert",
                ));
            }
        };

        let workload_cert_ttl = d(cli.workload_cert_ttl, file.workload_cert_ttl, hours(24));
        let max_workload_cert_ttl = d(
            cli.max_workload_cert_ttl,
            file.max_workload_cert_ttl,
            hours(90 * 24),
        );
        if workload_cert_ttl.is_zero() {
            return Err(invalid("--workload-cert-ttl", "must be more than 0"));
        }
        if workload_cert_ttl > max_workload_cert_ttl {
            return Err(invalid(
                "--workload-cert-ttl",
                &format!(
                    "{workload_cert_ttl:?} is more than --max-workload-cert-ttl {max_workload_cert_ttl:?}"
                ),
            ));
        }
        let grace_period_ratio = cli
            .workload_cert_grace_period_ratio
            .or(file.workload_cert_grace_period_ratio)
            .unwrap_or(0.5);
        if !(0.0..=1.0).contains(&grace_period_ratio) {
            return Err(invalid(
                "--workload-cert-grace-period-ratio",
                &format!("{grace_period_ratio} is not within [0, 1]"),
            ));
        }
        if !(0.2..=0.8).contains(&grace_period_ratio) {
            tracing::warn!(
                ratio = grace_period_ratio,
                "workload cert grace period ratio is outside the recommended [0.2, 0.8]"
            );
        }
        let root_pct = cli
            .root_cert_grace_period_percentile
            .or(file.root_cert_grace_period_percentile)
            .unwrap_or(20);
        if root_pct > 100 {
            return Err(invalid(
                "--root-cert-grace-period-percentile",
                &format!("{root_pct} is more than 100"),
            ));
        }
        let qps = cli
            .secret_write_qps
            .or(file.secret_write_qps)
            .unwrap_or(50.0);
        if !(qps.is_finite() && qps > 0.0) {
            return Err(invalid("--secret-write-qps", "must be more than 0"));
        }

        let mut dns_names: BTreeMap<SecretKey, Vec<String>> = BTreeMap::new();
        if cli
            .append_dns_names
            .or(file.append_dns_names)
            .unwrap_or(true)
        {
            for (sa, names) in [
                (
                    "istio-pilot-service-account",
                    &["istio-pilot", "istio-pilot.NS", "istio-pilot.NS.svc"][..],
                ),
                (
                    "istio-sidecar-injector-service-account",
                    &["istio-sidecar-injector.NS.svc"][..],
                ),
                ("istio-galley-service-account", &["istio-galley.NS.svc"][..]),
            ] {
                dns_names.insert(
                    SecretKey::new(&storage_namespace, sa),
                    names
                        .iter()
                        .map(|n| n.replace("NS", &storage_namespace))
                        .collect(),
                );
            }
        }
        for entry in cli
            .custom_dns_names
            .or(file.custom_dns_names)
            .unwrap_or_default()
        {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let parsed = entry
                .split_once(':')
                .and_then(|(acct, name)| acct.split_once('.').map(|(sa, ns)| (sa, ns, name)));
            match parsed {
                Some((sa, ns, name)) if !sa.is_empty() && !ns.is_empty() && !name.is_empty() => {
                    dns_names
                        .entry(SecretKey::new(ns, sa))
                        .or_default()
                        .push(name.to_string());
                }
                _ => {
                    return Err(invalid(
                        "--custom-dns-names",
                        &format!("{entry:?} is not account.namespace:dns-name"),
                    ));
                }
            }
        }

        Ok(Self {
            config_dir: cli.config_dir.or(file.config_dir),
            kubeconfig: cli.kubeconfig.or(file.kubeconfig),
            http_addr: cli
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 15014).into()),
            grpc_addr: cli
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 8060).into()),
            grpc_host_identities: cli
                .grpc_host_identities
                .or(file.grpc_host_identities)
                .unwrap_or_else(|| vec!["istio-ca".into(), "istio-citadel".into()])
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            secret_dir: cli.secret_dir.or(file.secret_dir),
            ca_dir: cli.ca_dir.or(file.ca_dir),
            workload_cert_ttl,
            max_workload_cert_ttl,
            grace_period_ratio,
            min_grace_period: d(
                cli.workload_cert_min_grace_period,
                file.workload_cert_min_grace_period,
                Duration::from_secs(600),
            ),
            trust_domain,
            plugged_ca,
            key_algorithm: cli.key_algorithm.or(file.key_algorithm).unwrap_or_default(),
            self_signed_ca_cert_ttl: d(
                cli.self_signed_ca_cert_ttl,
                file.self_signed_ca_cert_ttl,
                hours(3650 * 24),
            ),
            root_cert_check_interval: d(
                cli.root_cert_check_interval,
                file.root_cert_check_interval,
                hours(1),
            )
            .max(Duration::from_millis(100)),
            root_cert_grace_period_percentile: root_pct,
            storage_namespace,
            listened_namespaces: cli
                .listened_namespaces
                .or(file.listened_namespaces)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
            excluded_namespaces: cli
                .excluded_namespaces
                .or(file.excluded_namespaces)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
            dns_names,
            secret_write_qps: qps,
            secret_write_burst: cli
                .secret_write_burst
                .or(file.secret_write_burst)
                .unwrap_or(100),
            secret_resync_period: d(
                cli.secret_resync_period,
                file.secret_resync_period,
                Duration::from_secs(60),
            )
            .max(Duration::from_millis(100)),
            root_change_spread: d(
                cli.root_change_spread,
                file.root_change_spread,
                Duration::from_secs(60),
            ),
            leader_lease_name: cli
                .leader_lease_name
                .or(file.leader_lease_name)
                .unwrap_or_else(|| "istio-citadel".into()),
            leader_lease_duration: d(
                cli.leader_lease_duration,
                file.leader_lease_duration,
                Duration::from_secs(15),
            )
            .max(Duration::from_secs(2)),
        })
    }
}

fn invalid(setting: &'static str, message: &str) -> SettingsError {
    SettingsError::Invalid {
        setting,
        message: message.to_string(),
    }
}

/// The kinds Citadel watches on Kubernetes, with the version it reads them at.
pub fn watched_kinds() -> Vec<(Kind, String)> {
    vec![(Kind::ServiceAccount, "v1".to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, SettingsError> {
        let mut all = vec!["citadel"];
        all.extend_from_slice(args);
        let cli: Cli = mesh_runtime::cli::try_parse_from("CITADEL_TEST", all).unwrap();
        Settings::resolve(cli)
    }

    #[test]
    fn the_install_settings_file_is_one_citadel_reads() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/install/citadel.yaml"
        );
        let s = parse(&["--config", file]).unwrap();
        assert_eq!(s.grpc_addr.port(), 8060);
        assert_eq!(s.http_addr.port(), 15014);
        assert_eq!(s.storage_namespace, "istio-system");
        assert!(
            s.grpc_host_identities
                .contains(&"istio-citadel.istio-system.svc".to_string())
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("24h").unwrap(),
            Duration::from_secs(86400)
        );
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(
            parse_go_duration("10")
                .unwrap_err()
                .contains("missing unit")
        );
        assert!(
            parse_go_duration("10d")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn defaults_follow_istio() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.workload_cert_ttl, Duration::from_secs(86400));
        assert_eq!(s.max_workload_cert_ttl, Duration::from_secs(90 * 86400));
        assert_eq!(s.grace_period_ratio, 0.5);
        assert_eq!(s.min_grace_period, Duration::from_secs(600));
        assert_eq!(s.trust_domain, "cluster.local");
        assert_eq!(s.grpc_addr, ([0, 0, 0, 0], 8060).into());
        assert_eq!(s.grpc_host_identities, ["istio-ca", "istio-citadel"]);
        assert_eq!(s.key_algorithm, KeyAlgorithm::EcdsaP256);
        assert!(s.plugged_ca.is_none());
        assert_eq!(
            s.dns_names[&SecretKey::new("istio-system", "istio-pilot-service-account")],
            [
                "istio-pilot",
                "istio-pilot.istio-system",
                "istio-pilot.istio-system.svc"
            ]
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["--workload-cert-grace-period-ratio", "1.5"]).unwrap_err();
        assert!(
            e.to_string().contains("--workload-cert-grace-period-ratio"),
            "{e}"
        );
        let e = parse(&[
            "--workload-cert-ttl",
            "100h",
            "--max-workload-cert-ttl",
            "10h",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--max-workload-cert-ttl"), "{e}");
        let e = parse(&["--signing-cert", "/x"]).unwrap_err();
        assert!(e.to_string().contains("--signing-key"), "{e}");
        let e = parse(&["--custom-dns-names", "nodots"]).unwrap_err();
        assert!(e.to_string().contains("--custom-dns-names"), "{e}");
        let s = parse(&[
            "--custom-dns-names",
            "a.ns:a.example.com",
            "--key-algorithm",
            "RSA_4096",
        ])
        .unwrap();
        assert_eq!(s.dns_names[&SecretKey::new("ns", "a")], ["a.example.com"]);
        assert_eq!(s.key_algorithm, KeyAlgorithm::Rsa4096);
    }

    #[test]
    fn settings_file_fills_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("citadel.yaml");
        std::fs::write(
            &path,
            "workloadCertTtl: 1h\ntrustDomain: example.org\nkeyAlgorithm: RSA_2048\n",
        )
        .unwrap();
        let s = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--trust-domain",
            "flag.org",
        ])
        .unwrap();
        assert_eq!(s.workload_cert_ttl, Duration::from_secs(3600));
        assert_eq!(s.trust_domain, "flag.org");
        assert_eq!(s.key_algorithm, KeyAlgorithm::Rsa2048);
        std::fs::write(&path, "workloadCertTTL: 1h\n").unwrap();
        let e = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("workloadCertTTL"), "{e}");
    }
}
