//! The Kubernetes install on the real node, as a platform team runs it: `kubectl apply -f
//! manifests/crds.yaml -f manifests/install.yaml` works the first time; every Deployment
//! becomes Available, running under its own ServiceAccount with only install.yaml's RBAC
//! rules; each component answers `/ready` and `/metrics` through `kubectl port-forward`;
//! Citadel writes `istio.<account>` secrets (a SPIFFE certificate openssl verifies against
//! its root) for a new namespace; the in-cluster webhook refuses an invalid VirtualService
//! at `kubectl apply` (its caBundle written by Pilot); `pilot check` passes, and fails
//! naming the reason when Pilot is scaled to 0 and the caBundle wiped, which comes back by
//! itself once Pilot runs again; re-applying changes nothing; `kubectl delete -f` and the
//! labelled secrets leave nothing behind.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use mesh_tests::Cluster;
use mesh_tests::cluster::retry as eventually;
use mesh_tests::workspace_binary;

const NS: &str = "istio-system";
const DEPLOYMENTS: [&str; 6] = [
    "istio-citadel",
    "istio-pilot",
    "istio-policy",
    "istio-telemetry",
    "istio-ingressgateway",
    "istio-egressgateway",
];

/// `kubectl port-forward` in istio-system: the local port, and the forwarder (stopped on drop).
async fn port_forward(
    cluster: &Cluster,
    target: &str,
    port: u16,
) -> anyhow::Result<(u16, mesh_tests::cluster::PortForward)> {
    let pf = cluster.port_forward(NS, target, port).await?;
    Ok((pf.port, pf))
}

async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let resp = mesh_tests::http_get(&format!("http://127.0.0.1:{port}{path}"), &[]).await?;
    Ok((resp.status.as_u16(), resp.body))
}

async fn pilot_check(cluster: &Cluster) -> anyhow::Result<(bool, String)> {
    pilot_check_args(cluster, &[]).await
}

async fn pilot_check_args(cluster: &Cluster, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new(workspace_binary("pilot")?)
        .arg("check")
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Runs `pilot check` until its outcome is `passes` and its report contains `naming` (or
/// `within` is over): the last report.
async fn check_until(
    cluster: &Cluster,
    within: Duration,
    passes: bool,
    naming: &str,
) -> anyhow::Result<String> {
    let what = match (passes, naming) {
        (true, _) => "pilot check to pass".to_string(),
        (false, n) => format!("pilot check to fail naming {n:?}"),
    };
    eventually(within, &what, || async {
        let (ok, report) = pilot_check(cluster).await?;
        anyhow::ensure!(ok == passes && report.contains(naming), "{report}");
        Ok(report)
    })
    .await
}

fn virtual_service(name: &str, weights: (u32, u32)) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: {name}}}
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

#[tokio::test]
async fn install_check_and_remove_the_control_plane() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    if !cluster.has_real_node() {
        eprintln!("no real node (not root, or MESH_CLUSTER_REAL_NODE=0): skipping");
        return Ok(());
    }
    let root = cluster.repo_root().to_path_buf();
    let install = root.join("manifests/install.yaml");
    let path = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let mut control_plane = cluster.control_plane();

    // Before the install, `pilot check --pre` finds the cluster ready for it.
    let (ok, report) = pilot_check_args(cluster, &["--pre"]).await?;
    assert!(ok, "pilot check --pre before the install: {report}");

    // One apply, the first time.
    cluster
        .install_control_plane()
        .await
        .context("the first kubectl apply")?;
    // Installed, the namespace is taken: --pre says so.
    let (ok, report) = pilot_check_args(cluster, &["--pre"]).await?;
    assert!(
        !ok,
        "pilot check --pre passed with the mesh installed: {report}"
    );
    assert!(report.contains(NS), "{report}");
    for d in DEPLOYMENTS {
        let account = cluster
            .kubectl_ok([
                "-n",
                NS,
                "get",
                "deployment",
                d,
                "-o",
                "jsonpath={.spec.template.spec.serviceAccountName}",
            ])
            .await?;
        let want = match d {
            "istio-policy" | "istio-telemetry" => "istio-mixer-service-account".to_string(),
            _ => format!("{d}-service-account"),
        };
        assert_eq!(account, want, "{d}'s ServiceAccount");
    }

    // Each component's /ready and /metrics through a port-forward.
    for (target, port) in [
        ("deploy/istio-pilot", 15014),
        ("deploy/istio-policy", 15014),
        ("deploy/istio-telemetry", 15014),
        ("deploy/istio-citadel", 15014),
    ] {
        let (local, _child) = port_forward(cluster, target, port).await?;
        let (status, body) = get(local, "/ready").await?;
        assert_eq!(status, 200, "{target} /ready: {body}");
        let (status, body) = get(local, "/metrics").await?;
        assert_eq!(status, 200, "{target} /metrics");
        assert!(body.contains("istio_build"), "{target} /metrics: {body}");
    }
    let (local, _child) = port_forward(cluster, "deploy/istio-ingressgateway", 15021).await?;
    let (status, body) = get(local, "/healthz/ready").await?;
    assert_eq!(status, 200, "ingress gateway readiness: {body}");

    // Citadel: istio.<account> for a new namespace's accounts, labelled for removal.
    let ns = cluster.namespace_on_real_node("install", &[]).await?;
    cluster
        .kubectl_ok([
            "-n",
            ns.name(),
            "create",
            "serviceaccount",
            "bookinfo-reviews",
        ])
        .await?;
    let dir = tempfile::tempdir()?;
    for account in ["default", "bookinfo-reviews"] {
        let secret = format!("istio.{account}");
        let cert = eventually(Duration::from_secs(60), &secret, || async {
            let out = cluster
                .kubectl_ok([
                    "-n",
                    ns.name(),
                    "get",
                    "secret",
                    &secret,
                    "-o",
                    "jsonpath={.data.cert-chain\\.pem}",
                ])
                .await?;
            anyhow::ensure!(!out.is_empty(), "no cert-chain.pem yet");
            Ok(out)
        })
        .await?;
        let label = cluster
            .kubectl_ok([
                "-n",
                ns.name(),
                "get",
                "secret",
                &secret,
                "-o",
                "jsonpath={.metadata.labels.app\\.kubernetes\\.io/part-of}",
            ])
            .await?;
        assert_eq!(label, "istio", "{secret} is labelled");
        let pem = decode_base64(&cert)?;
        let cert_file = dir.path().join(format!("{account}.pem"));
        std::fs::write(&cert_file, pem)?;
        let root_b64 = cluster
            .kubectl_ok([
                "-n",
                NS,
                "get",
                "secret",
                "istio-ca-secret",
                "-o",
                "jsonpath={.data.ca-cert\\.pem}",
            ])
            .await?;
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, decode_base64(&root_b64)?)?;
        let verify = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&root_file)
            .arg(&cert_file)
            .output()?;
        assert!(
            verify.status.success(),
            "openssl verify {account}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&cert_file)
            .output()?;
        let sans = String::from_utf8_lossy(&text.stdout);
        let want = format!("URI:spiffe://cluster.local/ns/{}/sa/{account}", ns.name());
        assert!(sans.contains(&want), "{account}: {sans}");
    }

    // The webhook, through its Service, with the caBundle Pilot wrote.
    let invalid = virtual_service("reviews-bad", (90, 0));
    let refused = eventually(Duration::from_secs(90), "webhook refusal", || async {
        let out = cluster
            .kubectl_with_stdin(
                ["-n", ns.name(), "apply", "-f", "-"],
                Some(invalid.as_bytes()),
            )
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        anyhow::ensure!(
            !out.status.success(),
            "an invalid VirtualService was accepted"
        );
        // Until the caBundle is written, the API server cannot call the webhook.
        anyhow::ensure!(stderr.contains("denied the request"), "{stderr}");
        Ok(stderr)
    })
    .await?;
    assert!(
        refused.contains("validation.istio.io") && refused.contains("weight"),
        "{refused}"
    );
    let valid = virtual_service("reviews", (50, 50));
    cluster
        .kubectl_with_stdin(
            ["-n", ns.name(), "apply", "-f", "-"],
            Some(valid.as_bytes()),
        )
        .await
        .and_then(|o| {
            anyhow::ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            Ok(())
        })?;

    // pilot check passes on a healthy install.
    check_until(cluster, Duration::from_secs(60), true, "").await?;

    // Pilot gone and the caBundle wiped: check names both; Pilot back: the caBundle too.
    cluster
        .kubectl_ok([
            "-n",
            NS,
            "scale",
            "deployment",
            "istio-pilot",
            "--replicas=0",
        ])
        .await?;
    cluster
        .kubectl_ok([
            "-n",
            NS,
            "wait",
            "--for=delete",
            "pod",
            "-l",
            "app=istio-pilot",
            "--timeout=60s",
        ])
        .await?;
    cluster
        .kubectl_ok([
            "patch",
            "validatingwebhookconfiguration",
            "istio-pilot",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/webhooks/0/clientConfig/caBundle"}]"#,
        ])
        .await?;
    let (ok, report) = pilot_check(cluster).await?;
    assert!(!ok, "pilot check passed with Pilot at 0 replicas: {report}");
    assert!(report.contains("istio-pilot"), "{report}");
    assert!(report.to_lowercase().contains("cabundle"), "{report}");
    cluster
        .kubectl_ok([
            "-n",
            NS,
            "scale",
            "deployment",
            "istio-pilot",
            "--replicas=2",
        ])
        .await?;
    eventually(Duration::from_secs(120), "the caBundle back", || async {
        let bundle = cluster
            .kubectl_ok([
                "get",
                "validatingwebhookconfiguration",
                "istio-pilot",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .await?;
        anyhow::ensure!(!bundle.is_empty(), "still empty");
        Ok(())
    })
    .await?;
    check_until(cluster, Duration::from_secs(120), true, "")
        .await
        .context("after recovery")?;

    // Bad input keeps the last good config serving, and `pilot check` names it. The
    // MeshConfig: Pilot refuses a change it cannot parse and keeps the one in force.
    cluster
        .kubectl_ok([
            "-n",
            NS,
            "patch",
            "configmap",
            "istio",
            "--type=merge",
            "-p",
            r#"{"data":{"mesh":"connectTimeout: banana\n"}}"#,
        ])
        .await?;
    // The kubelet refreshes a ConfigMap volume within its sync period plus cache TTL.
    let report = check_until(cluster, Duration::from_secs(180), false, "connectTimeout").await?;
    assert!(report.contains("MeshConfig"), "{report}");
    assert!(
        report.contains("istio-pilot is ready"),
        "Pilot must stay ready on its last good MeshConfig: {report}"
    );
    // A settings file a new Pilot pod cannot start with: the rollout stops at that pod
    // (maxUnavailable 0), the old pods keep serving, and check names the field.
    cluster
        .kubectl_ok([
            "-n",
            NS,
            "patch",
            "configmap",
            "istio-pilot",
            "--type=merge",
            "-p",
            r#"{"data":{"settings.yaml":"pushConcurrency: lots\n"}}"#,
        ])
        .await?;
    cluster
        .kubectl_ok(["-n", NS, "rollout", "restart", "deployment", "istio-pilot"])
        .await?;
    let report = check_until(cluster, Duration::from_secs(180), false, "pushConcurrency").await?;
    assert!(report.contains("istio-pilot"), "{report}");
    let ready = cluster
        .kubectl_ok([
            "-n",
            NS,
            "get",
            "deployment",
            "istio-pilot",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .await?;
    assert_eq!(ready.trim(), "2", "the old Pilot pods must keep serving");
    // Re-applying install.yaml restores both ConfigMaps; a restart picks the settings up.
    cluster.kubectl_ok(["apply", "-f", &path(&install)]).await?;
    cluster
        .kubectl_ok(["-n", NS, "rollout", "restart", "deployment", "istio-pilot"])
        .await?;
    cluster
        .kubectl_ok([
            "-n",
            NS,
            "rollout",
            "status",
            "deployment",
            "istio-pilot",
            "--timeout=240s",
        ])
        .await
        .context("Pilot's rollout after restoring its settings")?;
    check_until(cluster, Duration::from_secs(180), true, "")
        .await
        .context("after restoring the config")?;

    // Re-applying the same file changes nothing: no object's spec generation (or, for
    // objects without one, version) moves. (kubectl still prints "configured" for the
    // PodDisruptionBudgets: their selector is a replace-strategy field, which client-side
    // apply always sends; the server finds nothing to change.)
    let versions = || async {
        cluster
            .kubectl_ok([
                "get",
                "-f",
                &path(&install),
                "-o",
                "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.generation}/{.metadata.resourceVersion}{\"\\n\"}{end}",
            ])
            .await
            .map(|out| {
                out.lines()
                    .map(|l| match l.split_once('=') {
                        // With a generation, only it: status writes move the version.
                        Some((k, v)) if !v.starts_with('/') => {
                            (k.to_string(), v.split('/').next().unwrap_or_default().to_string())
                        }
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (l.to_string(), String::new()),
                    })
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
    };
    let before = versions().await?;
    cluster.kubectl_ok(["apply", "-f", &path(&install)]).await?;
    let after = versions().await?;
    assert!(before.len() > 30, "{before:?}");
    let moved: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .collect();
    assert!(moved.is_empty(), "re-apply changed {moved:?}");

    // Removal: everything install.yaml made, then the secrets Citadel wrote, by label.
    cluster
        .kubectl_ok([
            "delete",
            "--wait=true",
            "--timeout=180s",
            "-f",
            &path(&install),
        ])
        .await?;
    control_plane.removed();
    cluster
        .kubectl_ok([
            "delete",
            "secret",
            "-A",
            "-l",
            "app.kubernetes.io/part-of=istio",
        ])
        .await?;
    let left = cluster
        .kubectl_ok([
            "get",
            "clusterroles,clusterrolebindings,validatingwebhookconfigurations,namespaces",
            "-l",
            "app.kubernetes.io/part-of=istio",
            "-o",
            "name",
        ])
        .await?;
    assert!(left.trim().is_empty(), "left after delete: {left}");
    let secrets = cluster
        .kubectl_ok([
            "get",
            "secrets",
            "-A",
            "-l",
            "app.kubernetes.io/part-of=istio",
            "-o",
            "name",
        ])
        .await?;
    assert!(secrets.trim().is_empty(), "secrets left: {secrets}");
    ns.cleanup().await?;
    Ok(())
}

fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .map(|mut s| s.write_all(text.as_bytes()))
                .transpose()?;
            child.wait_with_output()
        })?;
    anyhow::ensure!(out.status.success(), "not base64");
    Ok(out.stdout)
}
