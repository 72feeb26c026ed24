//! Pilot's validating admission webhook on a real API server: with a
//! ValidatingWebhookConfiguration pointing at Pilot's `/validate` (HTTPS, a test CA), `kubectl
//! apply` of a VirtualService whose weights add up to 90 is refused with the message `pilot
//! validate` prints for it, and a valid one is accepted.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use mesh_tests::cluster::Cluster;
use mesh_tests::mesh::eventually;
use mesh_tests::{Service, free_port, workspace_binary};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const WAIT: Duration = Duration::from_secs(60);

fn virtual_service(name: &str, weights: (u32, u32)) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: {name}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {}
    - destination: {{host: reviews, subset: v2}}
      weight: {}
",
        weights.0, weights.1
    )
}

/// A CA, and a serving certificate for 127.0.0.1 it signed: (CA PEM, certificate PEM, key
/// PEM).
fn certificates() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mesh-tests webhook CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "pilot");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// What `pilot validate -f` says of `yaml` (written in namespace `ns`), each line without
/// the file it names.
fn pilot_validate(dir: &Path, ns: &str, yaml: &str) -> Vec<String> {
    let file = dir.join("vs.yaml");
    let with_ns = yaml.replacen("metadata:\n", &format!("metadata:\n  namespace: {ns}\n"), 1);
    std::fs::write(&file, with_ns).unwrap();
    let out = std::process::Command::new(workspace_binary("pilot").unwrap())
        .args(["validate", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "pilot validate accepted {yaml}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.find("VirtualService.").map_or(l, |i| &l[i..]).to_string())
        .collect()
}

/// Deletes the webhook configuration however the test ends.
struct WebhookGuard {
    api: Api<ValidatingWebhookConfiguration>,
    name: String,
    kubeconfig: std::path::PathBuf,
    deleted: bool,
}

impl WebhookGuard {
    async fn delete(mut self) {
        self.api
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap();
        self.deleted = true;
    }
}

impl Drop for WebhookGuard {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let _ = std::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "validatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
                "--request-timeout=10s",
            ])
            .status();
    }
}

#[tokio::test]
async fn the_api_server_refuses_invalid_config_through_pilots_webhook() {
    let Some(cluster) = Cluster::for_test().await.unwrap() else {
        return;
    };
    cluster.install_crds().await.unwrap();
    let ns = cluster.namespace("webhook").await.unwrap();
    let ns_name = ns.name().to_string();

    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let port = free_port();
    let grpc = format!("127.0.0.1:{}", free_port());
    let webhook_addr = format!("127.0.0.1:{port}");
    let kubeconfig = cluster.kubeconfig();
    let mut pilot = Service::start(
        "pilot",
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--grpc-addr",
            &grpc,
            "--webhook-addr",
            &webhook_addr,
            "--webhook-cert",
            cert_file.to_str().unwrap(),
            "--webhook-key",
            key_file.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    pilot.wait_ready(WAIT).await.unwrap();

    // Istio's rules, limited to this test's namespace so other tests are not affected.
    let name = format!("mesh-tests-{ns_name}");
    let config = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: "validation.istio.io".into(),
            client_config: WebhookClientConfig {
                url: Some(format!("https://{webhook_addr}/validate")),
                ca_bundle: Some(ByteString(ca.into_bytes())),
                ..Default::default()
            },
            rules: Some(vec![RuleWithOperations {
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                api_groups: Some(vec!["networking.istio.io".into()]),
                api_versions: Some(vec!["*".into()]),
                resources: Some(vec!["*".into()]),
                ..Default::default()
            }]),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [("kubernetes.io/metadata.name".to_string(), ns_name.clone())].into(),
                ),
                ..Default::default()
            }),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            timeout_seconds: Some(10),
            ..Default::default()
        }]),
    };
    let api: Api<ValidatingWebhookConfiguration> = Api::all(cluster.client().await.unwrap());
    api.create(&PostParams::default(), &config).await.unwrap();
    let guard = WebhookGuard {
        api,
        name,
        kubeconfig: kubeconfig.clone(),
        deleted: false,
    };

    // The API server picks the configuration up within moments: until then an invalid object
    // may still get in, so every attempt uses a new name.
    let mut attempt = 0;
    let refusal = std::cell::RefCell::new(String::new());
    let refused = eventually("the webhook refuses weights of 90", WAIT, || {
        attempt += 1;
        let yaml = virtual_service(&format!("bad-{attempt}"), (50, 40));
        let (ns_name, refusal) = (&ns_name, &refusal);
        async move {
            let out = cluster
                .kubectl_with_stdin(["apply", "-n", ns_name, "-f", "-"], Some(yaml.as_bytes()))
                .await?;
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            let denied = !out.status.success() && stderr.contains("denied the request");
            *refusal.borrow_mut() = stderr;
            Ok(denied)
        }
    })
    .await;
    assert!(refused.is_ok(), "{refused:?}\n{}", pilot.logs());
    let refusal = refusal.into_inner();

    // Refused with the words `pilot validate` uses for the same object.
    let expected = pilot_validate(
        dir.path(),
        &ns_name,
        &virtual_service(&format!("bad-{attempt}"), (50, 40)),
    );
    assert!(!expected.is_empty());
    for line in &expected {
        assert!(
            refusal.contains(&format!(
                "admission webhook \"validation.istio.io\" denied the request: {line}"
            )),
            "{line:?} not in kubectl's error: {refusal}"
        );
    }
    let stored = cluster
        .kubectl([
            "get",
            "virtualservice",
            "-n",
            &ns_name,
            &format!("bad-{attempt}"),
        ])
        .await
        .unwrap();
    assert!(!stored.status.success(), "the refused object was stored");

    // A valid one goes through the same webhook and is stored.
    let good = virtual_service("good", (50, 50));
    let out = cluster
        .kubectl_with_stdin(["apply", "-n", &ns_name, "-f", "-"], Some(good.as_bytes()))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .kubectl_ok(["get", "virtualservice", "-n", &ns_name, "good"])
        .await
        .unwrap();

    guard.delete().await;
    pilot.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}
