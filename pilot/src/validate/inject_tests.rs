//! Tests of `/inject`: the review ([`super::inject_webhook::review`]), its patch applied by an
//! independent JSON-patch implementation, the policy's skips, the denials, random and broken
//! reviews, the config file's reloads, and the webhook over real HTTPS.

use std::path::Path;

use axum::http::StatusCode;
use k8s_openapi::ByteString;
use serde_json::{Value, json};

use super::inject_webhook::{self, Injector, Outcome, Reload, review};
use super::webhook::{Webhook, WebhookSettings};
use crate::inject::{InjectConfig, PodRef, SkipReason, default_config_yaml, inject};

const UID: &str = "d6a9b64c-0a47-4b0c-9d3c-4fbb3c1e6e01";

/// A pod as a Deployment's ReplicaSet creates it: no name yet, no namespace in the object.
pub(super) fn reviews_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-5b9b8f7d6c-",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "5b9b8f7d6c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "reviews-v1-5b9b8f7d6c", "uid": "1", "controller": true}],
        },
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "containers": [{
                "name": "reviews",
                "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
        "status": {},
    })
}

pub(super) fn pod_review(pod: &Value, namespace: &str, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "object": pod,
        },
    }))
    .unwrap()
}

/// The ops of an answer's patch, `None` without one.
pub(super) fn patch_ops(answer: &Value) -> Option<Vec<Value>> {
    let patch = answer["response"].get("patch")?;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let bytes: ByteString = serde_json::from_value(patch.clone()).expect("base64");
    Some(serde_json::from_slice(&bytes.0).expect("the patch is JSON"))
}

/// `doc` with the ops applied by the `json-patch` crate.
pub(super) fn apply(doc: &Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::from(ops.to_vec())).expect("an RFC 6902 patch");
    let mut doc = doc.clone();
    json_patch::patch(&mut doc, &patch).expect("the patch applies");
    doc
}

fn builtin() -> InjectConfig {
    InjectConfig::builtin()
}

fn with_annotations(pairs: &[(&str, &str)]) -> Value {
    let mut pod = reviews_pod();
    for (k, v) in pairs {
        pod["metadata"]["annotations"][*k] = json!(v);
    }
    pod
}

#[test]
fn a_plain_pod_is_allowed_with_a_patch_that_makes_the_injected_pod() {
    let config = builtin();
    let pod = reviews_pod();
    let (answer, outcome) = review(&config, &pod_review(&pod, "shop", "CREATE")).unwrap();
    assert_eq!(outcome, Outcome::Injected);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], UID);
    assert_eq!(answer["response"]["allowed"], true);
    let ops = patch_ops(&answer).expect("a patch");
    let want = inject(&config, &PodRef::new("shop", &pod["metadata"], None), &pod)
        .unwrap()
        .pod;
    assert_eq!(apply(&pod, &ops), want);
    // Only what injection changes is in the patch.
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/metadata/annotations"), "{paths:?}");
    assert!(paths.contains(&"/spec/initContainers"), "{paths:?}");
    assert!(paths.contains(&"/spec/volumes/-"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.starts_with("/spec/containers")),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.starts_with("/status")), "{paths:?}");
}

#[test]
fn annotations_already_there_get_the_status_key_escaped() {
    let config = builtin();
    let pod = with_annotations(&[("prometheus.io/scrape", "true")]);
    let (answer, _) = review(&config, &pod_review(&pod, "shop", "CREATE")).unwrap();
    let ops = patch_ops(&answer).unwrap();
    assert!(
        ops.iter()
            .any(|o| o["path"] == "/metadata/annotations/sidecar.istio.io~1status"),
        "{ops:?}"
    );
    let patched = apply(&pod, &ops);
    assert_eq!(
        patched["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    let status = patched["metadata"]["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .unwrap();
    assert!(status.contains("istio-proxy"), "{status}");
}

#[test]
fn pods_the_policy_skips_are_allowed_without_a_patch() {
    let config = builtin();
    let mut host = reviews_pod();
    host["spec"]["hostNetwork"] = json!(true);
    let mut labelled = reviews_pod();
    labelled["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    let injected = {
        let pod = reviews_pod();
        let (a, _) = review(&config, &pod_review(&pod, "shop", "CREATE")).unwrap();
        apply(&pod, &patch_ops(&a).unwrap())
    };
    for (pod, namespace, want) in [
        (
            with_annotations(&[("sidecar.istio.io/inject", "false")]),
            "shop",
            SkipReason::OptedOut {
                source: "annotation",
                value: "false".into(),
            },
        ),
        (
            labelled,
            "shop",
            SkipReason::OptedOut {
                source: "label",
                value: "false".into(),
            },
        ),
        (
            reviews_pod(),
            "kube-system",
            SkipReason::IgnoredNamespace("kube-system".into()),
        ),
        (
            reviews_pod(),
            "kube-public",
            SkipReason::IgnoredNamespace("kube-public".into()),
        ),
        (host, "shop", SkipReason::HostNetwork),
        (injected, "shop", SkipReason::AlreadyInjected),
    ] {
        let (answer, outcome) = review(&config, &pod_review(&pod, namespace, "CREATE")).unwrap();
        assert_eq!(outcome, Outcome::Skipped(want));
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(patch_ops(&answer), None);
        assert_eq!(answer["response"]["uid"], UID);
    }
}

#[test]
fn policy_disabled_injects_only_pods_that_opt_in() {
    let text = default_config_yaml().replace("policy: enabled", "policy: disabled");
    let config = InjectConfig::parse(&text).unwrap();
    let (answer, outcome) = review(&config, &pod_review(&reviews_pod(), "shop", "CREATE")).unwrap();
    assert_eq!(outcome, Outcome::Skipped(SkipReason::NotOptedIn));
    assert_eq!(patch_ops(&answer), None);
    let pod = with_annotations(&[("sidecar.istio.io/inject", "true")]);
    let (answer, outcome) = review(&config, &pod_review(&pod, "shop", "CREATE")).unwrap();
    assert_eq!(outcome, Outcome::Injected);
    assert!(patch_ops(&answer).is_some());
}

#[test]
fn a_malformed_annotation_is_denied_with_the_pod_and_the_annotation() {
    let config = builtin();
    for (annotation, value) in [
        ("sidecar.istio.io/proxyCPU", "banana"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "x"),
        ("sidecar.istio.io/inject", "maybe"),
        ("sidecar.istio.io/interceptionMode", "TPROXY"),
    ] {
        let pod = with_annotations(&[(annotation, value)]);
        let (answer, outcome) = review(&config, &pod_review(&pod, "shop", "CREATE")).unwrap();
        let response = &answer["response"];
        assert_eq!(response["allowed"], false, "{annotation}");
        assert_eq!(response["uid"], UID);
        assert_eq!(response["status"]["code"], 400);
        assert_eq!(patch_ops(&answer), None);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("shop/reviews-v1-5b9b8f7d6c-*"),
            "{message}"
        );
        assert!(message.contains(annotation), "{message}");
        assert!(message.contains(value), "{message}");
        assert_eq!(outcome, Outcome::Denied(message.to_string()));
    }
    // A pod named by its author is named so.
    let mut pod = with_annotations(&[("sidecar.istio.io/proxyMemory", "lots")]);
    pod["metadata"]["name"] = json!("reviews-debug");
    let (answer, _) = review(&config, &pod_review(&pod, "shop", "CREATE")).unwrap();
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("shop/reviews-debug:"), "{message}");
}

#[test]
fn other_kinds_and_operations_are_allowed_untouched() {
    let config = builtin();
    let pod = reviews_pod();
    for operation in ["UPDATE", "DELETE", "CONNECT"] {
        let (answer, outcome) = review(&config, &pod_review(&pod, "shop", operation)).unwrap();
        assert_eq!(outcome, Outcome::NotAPodCreate, "{operation}");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(patch_ops(&answer), None);
    }
    let deployment = json!({"request": {"uid": "7",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "namespace": "shop", "operation": "CREATE",
        "object": {"metadata": {"name": "reviews"}, "spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}}}});
    let (answer, outcome) = review(&config, &serde_json::to_vec(&deployment).unwrap()).unwrap();
    assert_eq!(outcome, Outcome::NotAPodCreate);
    assert_eq!(answer["response"], json!({"uid": "7", "allowed": true}));
}

pub(super) fn status_of(injector: &Injector, body: &[u8]) -> (StatusCode, String) {
    let response = inject_webhook::handle(injector, body);
    let status = response.status();
    let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn garbage_is_a_400_with_the_reason_and_counted() {
    let injector = Injector::fixed(builtin());
    for (body, want) in [
        (&b"not json"[..], "not an AdmissionReview"),
        (br#"{"kind": "AdmissionReview"}"#, "no request"),
        (
            br#"{"request": {"kind": {"version": "v1", "kind": "Pod"}}}"#,
            "uid",
        ),
        (br#"{"request": {"uid": "1"}}"#, "kind"),
        (br#"[1, 2]"#, "not an AdmissionReview"),
    ] {
        let (status, text) = status_of(&injector, body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(want), "{text:?} lacks {want:?}");
    }
    let (status, text) = status_of(&injector, &pod_review(&reviews_pod(), "shop", "CREATE"));
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(injector.metrics().counts(), (6, 1, 0, 5));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_config_file_is_reloaded_and_a_bad_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    write(&path, &default_config_yaml());
    let (injector, file) = Injector::load(Some(path.clone())).unwrap();
    let mut file = file.unwrap();
    let first = injector.served().config.version.clone();
    let status = injector.status();
    assert_eq!(status["file"], path.display().to_string());
    assert_eq!(status["config"]["source"], "file");
    assert_eq!(status["config"]["policy"], "enabled");
    assert_eq!(
        status["config"]["template"]["containers"],
        json!(["istio-proxy"])
    );
    assert_eq!(status["refused"], Value::Null);
    assert_eq!(file.reload(), Reload::Unchanged);

    // Invalid: refused with the field, the last good config serves.
    write(
        &path,
        &default_config_yaml().replace("proxyCPU: 10m", "proxyCPU: lots"),
    );
    assert_eq!(file.reload(), Reload::Refused);
    let refused = injector.status()["refused"].as_str().unwrap().to_string();
    assert!(refused.contains("values.proxyCPU"), "{refused}");
    assert!(refused.contains(&path.display().to_string()), "{refused}");
    assert_eq!(injector.served().config.version, first);
    assert_eq!(file.reload(), Reload::Unchanged, "refused once");

    // Valid again, and new: it serves.
    write(
        &path,
        &default_config_yaml().replace("policy: enabled", "policy: disabled"),
    );
    assert_eq!(file.reload(), Reload::Loaded);
    assert_eq!(injector.status()["refused"], Value::Null);
    assert_eq!(injector.status()["config"]["policy"], "disabled");
    assert_ne!(injector.served().config.version, first);

    // Gone: refused, the last good one serves.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(file.reload(), Reload::Refused);
    assert!(
        injector.status()["refused"]
            .as_str()
            .unwrap()
            .contains("cannot read")
    );
    assert_eq!(injector.status()["config"]["policy"], "disabled");

    // At start, a bad file is an error naming the field.
    write(&path, "policy: sometimes\ntemplate: {}\n");
    let e = Injector::load(Some(path)).unwrap_err().to_string();
    assert!(
        e.contains("policy") && e.contains("--injection-config"),
        "{e}"
    );
    let (builtin, none) = Injector::load(None).unwrap();
    assert!(none.is_none());
    assert_eq!(builtin.status()["config"]["source"], "built-in");
}

#[tokio::test]
async fn debug_injectz_shows_the_config_and_the_refusal() {
    use tower::ServiceExt as _;
    let get = |router: axum::Router| async move {
        let request = axum::http::Request::get("/debug/injectz")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let off = get(crate::debug::inject_routes(None)).await;
    assert_eq!(off["webhook"], false);
    let on = get(crate::debug::inject_routes(Some(
        Injector::fixed(builtin()),
    )))
    .await;
    assert_eq!(on["webhook"], true);
    assert_eq!(on["config"]["source"], "built-in");
    assert_eq!(on["config"]["sidecarMode"], "native");
    assert_eq!(on["refused"], Value::Null);
}

/// A serving certificate for `name` and its key, written to `dir`; the certificate's DER.
fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    cert.der().to_vec()
}

#[tokio::test]
async fn inject_over_https_answers_with_a_patch_that_applies() {
    const NAME: &str = "istio-pilot.istio-system.svc";
    let dir = tempfile::tempdir().unwrap();
    let der = write_pair(dir.path(), NAME);
    let settings = WebhookSettings {
        addr: ([127, 0, 0, 1], 0).into(),
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        keeper: None,
        injection_config: None,
    };
    let webhook = Webhook::bind(&settings).await.unwrap();
    let addr = webhook.local_addr().unwrap();
    let injector = Injector::fixed(builtin());
    let shutdown = mesh_runtime::Shutdown::new();
    let served = tokio::spawn(webhook.serve(injector.clone(), shutdown.clone()));

    let mut client = super::test_client::HttpsClient::connect(addr, der.into(), NAME)
        .await
        .unwrap();
    let pod = reviews_pod();
    let (status, body) = client
        .post("/inject", pod_review(&pod, "shop", "CREATE"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    let patched = apply(&pod, &patch_ops(&answer).unwrap());
    let want = inject(
        &builtin(),
        &PodRef::new("shop", &pod["metadata"], None),
        &pod,
    )
    .unwrap()
    .pod;
    assert_eq!(patched, want);

    // The same connection: garbage is a 400, and /validate still answers.
    let (status, body) = client.post("/inject", b"{".to_vec()).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not an AdmissionReview"));
    let vs = json!({"request": {"uid": "v", "operation": "CREATE",
        "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
        "object": {"metadata": {"name": "r", "namespace": "shop"}, "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]}}}});
    let (status, body) = client
        .post("/validate", serde_json::to_vec(&vs).unwrap())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(injector.metrics().counts(), (2, 1, 0, 1));

    shutdown.cancel();
    served.await.unwrap();
}
