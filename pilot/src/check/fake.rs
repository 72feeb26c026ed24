//! `pilot check` end to end against a fake API server: a healthy install passes every check,
//! and a broken one fails the right checks with the right reasons.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus,
};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Namespace,
    Pod, PodStatus, Secret,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};

use super::cluster::Ctx;
use super::{Group, GroupKind, Outcome, run_groups};
use crate::install::names;

/// GET answers by path (query ignored); anything else is a 404 `Status`. POSTs of
/// SelfSubjectAccessReviews are allowed unless their resource is in `denied`.
#[derive(Clone, Default)]
struct Fake {
    get: BTreeMap<String, Value>,
    denied: Vec<&'static str>,
}

// === impl Fake ===

impl Fake {
    fn put(&mut self, path: impl Into<String>, v: impl serde::Serialize) {
        self.get
            .insert(path.into(), serde_json::to_value(v).unwrap());
    }

    fn answer(&self, method: &http::Method, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        if method == http::Method::POST
            && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        {
            let mut review: Value = serde_json::from_slice(body).unwrap();
            let resource = review["spec"]["resourceAttributes"]["resource"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let allowed = !self.denied.contains(&resource.as_str());
            review["status"] =
                json!({"allowed": allowed, "reason": if allowed { "" } else { "RBAC: no" }});
            return (201, serde_json::to_vec(&review).unwrap());
        }
        match self.get.get(path) {
            Some(Value::String(text)) => (200, text.clone().into_bytes()),
            Some(v) => (200, serde_json::to_vec(v).unwrap()),
            None => (
                404,
                serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status":
                    "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}))
                .unwrap(),
            ),
        }
    }

    fn client(self) -> kube::Client {
        let fake = Arc::new(self);
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = Arc::clone(&fake);
            async move {
                let (parts, body) = req.into_parts();
                let body = http_body_util_collect(body).await;
                let (status, bytes) = fake.answer(&parts.method, parts.uri.path(), &body);
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(bytes))
                        .unwrap(),
                )
            }
        });
        kube::Client::new(svc, names::NAMESPACE)
    }
}

/// The bytes of a request body.
async fn http_body_util_collect(body: kube::client::Body) -> Vec<u8> {
    use http_body::Body as _;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

const NS: &str = names::NAMESPACE;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items})
}

fn deployment(name: &str, ready: i32) -> Deployment {
    Deployment {
        metadata: meta(name),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some([("app".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }),
        status: Some(DeploymentStatus {
            ready_replicas: Some(ready),
            conditions: Some(vec![DeploymentCondition {
                type_: "Available".into(),
                status: if ready > 0 { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: meta(name),
        data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

/// A healthy install: everything in place, a CA, and Pilot's serving certificate from it.
fn healthy() -> Fake {
    let mut f = Fake::default();
    f.put(
        "/version",
        json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "",
               "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "",
               "platform": ""}),
    );
    f.put(
        format!("/api/v1/namespaces/{NS}"),
        Namespace {
            metadata: meta(NS),
            ..Default::default()
        },
    );
    let crds: Vec<Value> = mesh_proto::crd::crds()
        .into_iter()
        .map(|mut c| {
            c.status = Some(CustomResourceDefinitionStatus {
                conditions: Some(vec![CustomResourceDefinitionCondition {
                    type_: "Established".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            serde_json::to_value(c).unwrap()
        })
        .collect();
    f.put(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        list(crds),
    );
    for d in names::DEPLOYMENTS {
        f.put(
            format!("/apis/apps/v1/namespaces/{NS}/deployments/{d}"),
            deployment(d, 1),
        );
    }

    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "cluster.local");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::DnsName(
        format!("{}.{NS}.svc", names::PILOT).try_into().unwrap(),
    )];
    let leaf_pem = leaf
        .signed_by(&KeyPair::generate().unwrap(), &issuer)
        .unwrap()
        .pem();

    f.put(
        format!(
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{}",
            names::VALIDATING_WEBHOOK
        ),
        ValidatingWebhookConfiguration {
            metadata: meta(names::VALIDATING_WEBHOOK),
            webhooks: Some(vec![ValidatingWebhook {
                name: names::VALIDATION_WEBHOOK_NAME.into(),
                client_config: WebhookClientConfig {
                    ca_bundle: Some(ByteString(ca_pem.clone().into_bytes())),
                    ..Default::default()
                },
                ..Default::default()
            }]),
        },
    );
    f.put(
        format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{}",
            names::MUTATING_WEBHOOK
        ),
        MutatingWebhookConfiguration {
            metadata: meta(names::MUTATING_WEBHOOK),
            webhooks: Some(vec![MutatingWebhook {
                name: names::INJECTION_WEBHOOK_NAME.into(),
                client_config: WebhookClientConfig {
                    ca_bundle: Some(ByteString(ca_pem.clone().into_bytes())),
                    ..Default::default()
                },
                ..Default::default()
            }]),
        },
    );
    let pilot_secret = format!("istio.{}", names::PILOT_ACCOUNT);
    f.put(
        format!("/api/v1/namespaces/{NS}/secrets/{pilot_secret}"),
        secret(&pilot_secret, "cert-chain.pem", &leaf_pem),
    );
    f.put(
        format!("/api/v1/namespaces/{NS}/secrets/{}", names::CA_SECRET),
        secret(names::CA_SECRET, "ca-cert.pem", &ca_pem),
    );
    for svc in [names::PILOT, names::POLICY, names::TELEMETRY] {
        f.put(
            format!("/api/v1/namespaces/{NS}/services/http:{svc}:15014/proxy/ready"),
            Value::String("ok\n".into()),
        );
    }
    for svc in [names::POLICY, names::TELEMETRY] {
        f.put(
            format!("/api/v1/namespaces/{NS}/services/http:{svc}:15014/proxy/live"),
            json!({"addr": "127.0.0.1:9091", "code": 0, "millis": 3}),
        );
    }
    f.put(
        format!(
            "/api/v1/namespaces/{NS}/services/http:{}:15014/proxy/debug/syncz",
            names::PILOT
        ),
        json!([{"proxy": "router~10.0.0.5~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
                "connection": 1, "delta": false,
                "types": {"cds": {"status": "SYNCED"}, "lds": {"status": "SYNCED"}}}]),
    );
    f.put(
        format!(
            "/api/v1/namespaces/{NS}/services/http:{}:15014/proxy/debug/meshz",
            names::PILOT
        ),
        json!({"file": "/etc/istio/config/mesh", "refused": null}),
    );
    f.put(analyzez(), json!({"version": "7", "messages": []}));
    f
}

fn analyzez() -> String {
    format!(
        "/api/v1/namespaces/{NS}/services/http:{}:15014/proxy/debug/analyzez",
        names::PILOT
    )
}

#[tokio::test]
async fn a_route_to_a_missing_subset_is_a_warning_naming_it() {
    let mut f = healthy();
    f.put(
        analyzez(),
        json!({"version": "8", "messages": [{
            "level": "Error", "code": "IST0101", "name": "ReferencedResourceNotFound",
            "kind": "VirtualService", "namespace": "default", "object": "reviews",
            "field": "spec.http[0].route[0].destination",
            "message": "Referenced host+subset in destinationrule not found: \"reviews+v9\""}]}),
    );
    let out = text(&run(f, GroupKind::POST).await);
    assert!(
        out.contains(
            "⚠ the config in force has no broken references (IST0101): 1 problem(s): Error \
             [IST0101] (VirtualService default/reviews) spec.http[0].route[0].destination: \
             Referenced host+subset in destinationrule not found: \"reviews+v9\""
        ),
        "{out}"
    );
    assert!(out.contains("Status check results are ✔ ("), "{out}");
}

async fn run(fake: Fake, plan: &[GroupKind]) -> Vec<Group> {
    let ctx = Ctx::new(fake.client(), NS);
    run_groups(&ctx, plan, tokio::time::Instant::now(), false, |_| {}).await
}

fn text(groups: &[Group]) -> String {
    super::report::render_text(groups)
}

#[tokio::test]
async fn a_healthy_install_passes() {
    let groups = run(healthy(), GroupKind::POST).await;
    let out = text(&groups);
    assert!(
        out.ends_with("Status check results are ✔ (25 passed)\n"),
        "{out}"
    );
    for line in [
        "✔ Kubernetes version 1.33 is supported (>= 1.29)",
        "✔ deployment istio-pilot is available",
        "✔ the caBundle of webhook validation.istio.io verifies Pilot's serving certificate for istio-pilot.istio-system.svc",
        "✔ istio-telemetry is ready (/ready)",
        "✔ istio-policy answers a Check (/live): code 0 in 3 ms",
        "✔ proxies are in sync with Pilot (1 connected, all synced)",
    ] {
        assert!(out.contains(line), "{line:?} not in\n{out}");
    }
    assert!(
        out.contains("✔ Citadel's root certificate is valid ("),
        "{out}"
    );
}

#[tokio::test]
async fn a_crash_looping_pilot_and_a_wrong_ca_bundle_fail_with_reasons() {
    let mut f = healthy();
    f.put(
        format!("/apis/apps/v1/namespaces/{NS}/deployments/{}", names::PILOT),
        deployment(names::PILOT, 0),
    );
    let pod = Pod {
        metadata: meta("istio-pilot-7d9f-x2"),
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "discovery".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: None,
                    }),
                    ..Default::default()
                }),
                last_state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 2,
                        message: Some("Error: settings.yaml: unknown field `grpcAdr`\n".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    f.put(
        format!("/api/v1/namespaces/{NS}/pods"),
        list(vec![serde_json::to_value(pod).unwrap()]),
    );
    // A caBundle of another CA.
    let other_key = KeyPair::generate().unwrap();
    let other = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&other_key)
        .unwrap()
        .pem();
    let path = format!(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{}",
        names::VALIDATING_WEBHOOK
    );
    let mut vwc = f.get[&path].clone();
    vwc["webhooks"][0]["clientConfig"]["caBundle"] = json!(ByteString(other.into_bytes()));
    f.put(path, vwc);
    // Pilot is not ready.
    f.get.remove(&format!(
        "/api/v1/namespaces/{NS}/services/http:{}:15014/proxy/ready",
        names::PILOT
    ));

    let out = text(&run(f, GroupKind::POST).await);
    assert!(
        out.contains(
            "✖ deployment istio-pilot is available: 0/1 replicas ready; pod istio-pilot-7d9f-x2 \
             container discovery: CrashLoopBackOff (exit code 2): Error: settings.yaml: unknown \
             field `grpcAdr`\n  hint: kubectl -n istio-system describe deployment istio-pilot; \
             kubectl -n istio-system logs deployment/istio-pilot --previous\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("✖ the caBundle of webhook validation.istio.io verifies Pilot's serving certificate for istio-pilot.istio-system.svc: secret istio.istio-pilot-service-account: "),
        "{out}"
    );
    assert!(out.contains("✖ istio-pilot is ready (/ready): "), "{out}");
    assert!(
        out.contains("Status check results are ✖ (3 failed, "),
        "{out}"
    );
}

#[tokio::test]
async fn missing_objects_fail_instead_of_panicking() {
    let mut f = Fake::default();
    f.put(
        "/version",
        json!({"major": "1", "minor": "28", "gitVersion": "v1.28.0"}),
    );
    let groups = run(f, GroupKind::POST).await;
    let out = text(&groups);
    assert!(
        out.contains("✖ Kubernetes version is supported (>= 1.29): the API server is 1.28"),
        "{out}"
    );
    assert!(
        out.contains("✖ namespace istio-system exists: not found"),
        "{out}"
    );
    assert!(
        out.contains("✖ ValidatingWebhookConfiguration istio-pilot exists: not found"),
        "{out}"
    );
    assert!(
        out.contains("✖ Citadel's root certificate is valid: secret istio-ca-secret not found"),
        "{out}"
    );
    // Every group ran, each with a hint per failure.
    assert_eq!(groups.len(), GroupKind::POST.len());
    for r in groups.iter().flat_map(|g| &g.results) {
        if let Outcome::Fail { hint, .. } = &r.outcome {
            assert!(!hint.is_empty(), "{r:?}");
        }
    }
}

#[tokio::test]
async fn pre_install() {
    let mut f = healthy();
    f.get.remove(&format!("/api/v1/namespaces/{NS}"));
    let out = text(&run(f.clone(), GroupKind::PRE).await);
    assert!(
        out.contains("✔ can create customresourcedefinitions\n"),
        "{out}"
    );
    assert!(
        out.contains("✔ can create deployments in istio-system\n"),
        "{out}"
    );
    assert!(
        out.contains("✔ namespace istio-system does not exist yet"),
        "{out}"
    );
    assert!(
        out.ends_with("Status check results are ✔ (13 passed)\n"),
        "{out}"
    );

    // Not a cluster admin, and the control plane is there already.
    f.denied = vec!["clusterroles", "mutatingwebhookconfigurations"];
    f.put(
        format!("/api/v1/namespaces/{NS}"),
        Namespace {
            metadata: meta(NS),
            ..Default::default()
        },
    );
    f.put(
        format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        list(vec![
            serde_json::to_value(deployment(names::PILOT, 1)).unwrap(),
        ]),
    );
    let out = text(&run(f, GroupKind::PRE).await);
    assert!(out.contains("✖ can create clusterroles: not allowed: RBAC: no\n  hint: install as a cluster admin, or get `create` on clusterroles.rbac.authorization.k8s.io granted"), "{out}");
    assert!(
        out.contains(
            "✖ no control plane in namespace istio-system yet: it holds Deployment(s) istio-pilot\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("Status check results are ✖ (3 failed, 10 passed)"),
        "{out}"
    );
}

#[tokio::test]
async fn a_mixer_that_does_not_answer_checks_fails() {
    let mut f = healthy();
    f.put(
        format!(
            "/api/v1/namespaces/{NS}/services/http:{}:15014/proxy/live",
            names::POLICY
        ),
        Value::String("Check to 127.0.0.1:9091 failed: status: Unavailable\n".into()),
    );
    let out = text(&run(f, GroupKind::POST).await);
    assert!(
        out.contains(
            "✖ istio-policy answers a Check (/live): Check to 127.0.0.1:9091 failed: status: \
             Unavailable"
        ),
        "{out}"
    );
}
