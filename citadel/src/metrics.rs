//! Citadel's metrics (`citadel_*`), registered in the service's prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric Citadel exports. Cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `citadel_certs_issued_total{source="secret"|"csr"}`.
    pub certs_issued: Family<Labels, Counter>,
    /// `citadel_secrets_written_total{operation="create"|"rotate"}`.
    pub secrets_written: Family<Labels, Counter>,
    /// `citadel_secrets_deleted_total`.
    pub secrets_deleted: Counter,
    /// `citadel_secret_rotations_total{reason}`: expiring, root_changed, identity_changed,
    /// invalid.
    pub rotations: Family<Labels, Counter>,
    /// `citadel_secret_write_errors_total`.
    pub write_errors: Counter,
    /// `citadel_csr_successes_total`.
    pub csr_successes: Counter,
    /// `citadel_csr_failures_total{reason}`.
    pub csr_failures: Family<Labels, Counter>,
    /// `citadel_server_root_cert_expiry_timestamp`: the root's notAfter, Unix seconds
    /// (Istio's name).
    pub root_expiry: Gauge,
    /// `citadel_root_rotations_total`.
    pub root_rotations: Counter,
    /// `citadel_managed_secrets`: secrets the controller keeps up to date.
    pub managed_secrets: Gauge,
}

// === impl Metrics ===

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "citadel_certs_issued",
            "Workload certificates issued, by source (secret controller or CSR API)",
            m.certs_issued.clone(),
        );
        registry.register(
            "citadel_secrets_written",
            "Workload secrets written, by operation (create or rotate)",
            m.secrets_written.clone(),
        );
        registry.register(
            "citadel_secrets_deleted",
            "Workload secrets deleted because their service account went away",
            m.secrets_deleted.clone(),
        );
        registry.register(
            "citadel_secret_rotations",
            "Workload secrets rewritten, by reason",
            m.rotations.clone(),
        );
        registry.register(
            "citadel_secret_write_errors",
            "Failed writes or deletes of workload secrets (retried)",
            m.write_errors.clone(),
        );
        registry.register(
            "citadel_csr_successes",
            "CSRs signed over the gRPC API",
            m.csr_successes.clone(),
        );
        registry.register(
            "citadel_csr_failures",
            "CSRs refused over the gRPC API, by reason",
            m.csr_failures.clone(),
        );
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "The root certificate's expiry, in Unix seconds",
            m.root_expiry.clone(),
        );
        registry.register(
            "citadel_root_rotations",
            "Self-signed root certificates rotated",
            m.root_rotations.clone(),
        );
        registry.register(
            "citadel_managed_secrets",
            "Workload secrets the controller keeps up to date",
            m.managed_secrets.clone(),
        );
        m
    }

    pub(crate) fn issued(&self, source: &'static str) {
        self.certs_issued
            .get_or_create(&vec![("source", source.to_string())])
            .inc();
    }

    /// Counts a refused CSR (for the gRPC API, not wired yet).
    pub fn csr_failed(&self, reason: &str) {
        self.csr_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}
