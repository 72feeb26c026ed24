//! The names `manifests/install.yaml` gives what it creates: one list, read by the generator
//! ([`super::manifest`]), by `pilot check` and by the webhook's caBundle keeper, so they
//! cannot drift apart. Istio 1.0's names where Istio had the object.

/// The control plane's namespace.
pub const NAMESPACE: &str = "istio-system";

/// Pilot: Deployment, Service and ConfigMap of its settings file.
pub const PILOT: &str = "istio-pilot";
/// Mixer's policy role (Check, Quota): Deployment and Service.
pub const POLICY: &str = "istio-policy";
/// Mixer's telemetry role (Report, Prometheus): Deployment and Service.
pub const TELEMETRY: &str = "istio-telemetry";
/// Citadel: Deployment, Service and ConfigMap of its settings file.
pub const CITADEL: &str = "istio-citadel";
/// The ingress gateway: Deployment and NodePort Service.
pub const INGRESS_GATEWAY: &str = "istio-ingressgateway";
/// The egress gateway: Deployment and Service.
pub const EGRESS_GATEWAY: &str = "istio-egressgateway";
/// Mixer's settings file (shared by both roles).
pub const MIXER_SETTINGS: &str = "istio-mixer";
/// The MeshConfig ConfigMap (key [`MESH_KEY`]).
pub const MESH_CONFIGMAP: &str = "istio";
/// The key of the MeshConfig in [`MESH_CONFIGMAP`].
pub const MESH_KEY: &str = "mesh";
/// The key of a component's settings file in its ConfigMap.
pub const SETTINGS_KEY: &str = "settings.yaml";

/// Every Deployment install.yaml creates, in the order `pilot check` reports them.
pub const DEPLOYMENTS: [&str; 6] = [
    CITADEL,
    PILOT,
    POLICY,
    TELEMETRY,
    INGRESS_GATEWAY,
    EGRESS_GATEWAY,
];

/// Service accounts (Istio 1.0's): Pilot's also names its webhook serving certificate, whose
/// secret Citadel writes as `istio.<account>` with the DNS names of Pilot's Service.
pub const PILOT_ACCOUNT: &str = "istio-pilot-service-account";
pub const MIXER_ACCOUNT: &str = "istio-mixer-service-account";
pub const CITADEL_ACCOUNT: &str = "istio-citadel-service-account";
pub const INGRESS_ACCOUNT: &str = "istio-ingressgateway-service-account";
pub const EGRESS_ACCOUNT: &str = "istio-egressgateway-service-account";

/// The ValidatingWebhookConfiguration of Pilot's `/validate` (its caBundle kept by Pilot).
pub const VALIDATING_WEBHOOK: &str = "istio-pilot";
/// The webhook's name inside it.
pub const VALIDATION_WEBHOOK_NAME: &str = "validation.istio.io";
/// ConfigMap `istio-sidecar-injector`: the injection config (key [`INJECTOR_KEY`]) of both
/// `pilot kube-inject` and Pilot's `/inject` webhook, which re-reads it when it changes.
pub const INJECTOR_CONFIGMAP: &str = "istio-sidecar-injector";
/// The key of the injection config in [`INJECTOR_CONFIGMAP`].
pub const INJECTOR_KEY: &str = "config";
/// The MutatingWebhookConfiguration of Pilot's `/inject` (its caBundle kept by Pilot).
pub const MUTATING_WEBHOOK: &str = "istio-sidecar-injector";
/// The webhook's name inside it.
pub const INJECTION_WEBHOOK_NAME: &str = "sidecar-injector.istio.io";
/// The namespace label that turns injection on (`enabled`) or off (`disabled`).
pub const INJECTION_LABEL: &str = "istio-injection";
/// Port names and numbers (Istio's).
pub const XDS_PORT: u16 = 15010;
pub const MONITORING_PORT: u16 = 15014;
pub const WEBHOOK_PORT: u16 = 15017;
pub const MIXER_GRPC_PORT: u16 = 9091;
pub const PROMETHEUS_PORT: u16 = 42422;
pub const CITADEL_GRPC_PORT: u16 = 8060;
/// The gateways' readiness port (`/healthz/ready`).
pub const STATUS_PORT: u16 = 15021;
/// Where Citadel keeps its self-signed root (key `ca-cert.pem`).
pub const CA_SECRET: &str = "istio-ca-secret";
/// The label every object install.yaml creates carries, and every secret Citadel writes, so
/// `kubectl delete secret -A -l app.kubernetes.io/part-of=istio` finds the workload secrets
/// that outlive the namespace.
pub const MANAGED_LABEL: (&str, &str) = ("app.kubernetes.io/part-of", "istio");
