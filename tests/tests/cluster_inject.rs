//! Sidecar injection in real pods: with the control plane installed from
//! manifests/install.yaml, a namespace labelled `istio-injection=enabled` gets, from Pilot's
//! mutating webhook, the `istio-init` init container (iptables) and the `istio-proxy`
//! native sidecar (`pilot-agent proxy sidecar` running Envoy) in every pod. The app's plain
//! HTTP call to `http://reviews:9080/` (no proxy settings) is captured by both sidecars
//! (Envoy's stats on both sides count it) and obeys VirtualServices, by counted requests;
//! the output of `pilot kube-inject` applied by hand behaves the same; an opted-out pod gets
//! nothing; a Job in the injected namespace completes; the proxy is never root and has no
//! NET_ADMIN; the proxy's certificate is its pod's SPIFFE identity.
//!
//! The apps run as uid 1000 (the `app` image's default is 65532): the proxy's uid (1337) is
//! what the capture rules let through uncaptured, so an app sharing it would bypass its
//! sidecar.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use mesh_tests::Cluster;
use mesh_tests::cluster::{real_node_image, retry, served_certificate};
use mesh_tests::workspace_binary;
use serde_json::Value;

const NS: &str = "istio-system";
/// How long the control plane and the workload may take to be ready.
const READY: Duration = Duration::from_secs(240);

/// The workload: reviews v1 and v2 behind Service `reviews`, ratings (which reviews v2
/// calls), and productpage as the client we `kubectl exec` in; `extra` is appended.
fn workload(ns: &str) -> String {
    let app = real_node_image("app");
    let mut out = String::new();
    for (name, version) in [
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("ratings", "v1"),
        ("productpage", "v1"),
    ] {
        // reviews v1's certificate lives 40s (proxy.istio.io/config sets its agent's
        // knob), so the test sees it rotated.
        let annotations: &[(&str, &str)] = if (name, version) == ("reviews", "v1") {
            &[(
                "proxy.istio.io/config",
                "proxyMetadata: {PILOT_AGENT_WORKLOAD_CERT_TTL: 40s}",
            )]
        } else {
            &[]
        };
        out.push_str(&deployment(ns, name, version, &app, annotations));
    }
    for name in ["reviews", "ratings", "productpage"] {
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {ns}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 9080, targetPort: 9080}}]
"#
        ));
    }
    out
}

/// A Deployment of the app image as `name` `version`, with these pod annotations.
fn deployment(
    ns: &str,
    name: &str,
    version: &str,
    image: &str,
    annotations: &[(&str, &str)],
) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}: {v:?}"))
        .collect();
    format!(
        r#"---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}-{version}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}, version: {version}}}}}
  template:
    metadata:
      labels: {{app: {name}, version: {version}}}
      annotations: {{{annotations}}}
    spec:
      serviceAccountName: {name}
      terminationGracePeriodSeconds: 5
      securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
      containers:
      - name: app
        image: {image}
        imagePullPolicy: Never
        env:
        - {{name: SERVICE_NAME, value: {name}}}
        - {{name: SERVICE_VERSION, value: {version}}}
        ports: [{{containerPort: 9080}}]
        readinessProbe: {{httpGet: {{path: /health, port: 9080}}, periodSeconds: 1}}
"#,
        annotations = annotations.join(", ")
    )
}

/// reviews' subsets and a VirtualService splitting by weight; with `mtls`, the subsets are
/// called with Istio's mutual TLS (ISTIO_MUTUAL).
fn routes(ns: &str, v1: u32, v2: u32, mtls: bool) -> String {
    let policy = if mtls {
        "\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}"
    } else {
        ""
    };
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {ns}}}
spec:
  host: reviews{policy}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {ns}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"#
    )
}

/// The pod (JSON) of one pod matching `selector`.
async fn pod(cluster: &Cluster, ns: &str, selector: &str) -> anyhow::Result<Value> {
    let out = cluster
        .kubectl_ok(["-n", ns, "get", "pods", "-l", selector, "-o", "json"])
        .await?;
    let list: Value = serde_json::from_str(&out)?;
    list["items"]
        .as_array()
        .and_then(|items| items.first())
        .cloned()
        .with_context(|| format!("no pod {selector} in {ns}"))
}

fn name_of(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Names of the pod's init containers and containers.
fn containers(pod: &Value) -> (Vec<String>, Vec<String>) {
    let names = |key: &str| {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    (names("initContainers"), names("containers"))
}

/// Calls `url` `count` times from the `app` container of `pod`; the versions that answered.
async fn calls(
    cluster: &Cluster,
    ns: &str,
    pod: &str,
    url: &str,
    count: u32,
) -> anyhow::Result<BTreeMap<String, u32>> {
    let out = cluster
        .kubectl_ok([
            "-n",
            ns,
            "exec",
            pod,
            "-c",
            "app",
            "--",
            "mesh-app",
            "get",
            url,
            "--count",
            &count.to_string(),
        ])
        .await?;
    let mut versions = BTreeMap::new();
    for line in out.lines() {
        let Some(start) = line.find('{') else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&line[start..]) else {
            continue;
        };
        let version = v["version"].as_str().unwrap_or("error").to_string();
        *versions.entry(version).or_insert(0) += 1;
    }
    anyhow::ensure!(
        versions.values().sum::<u32>() == count,
        "{count} calls, answers {versions:?}: {out}"
    );
    Ok(versions)
}

/// A counter of the Envoy in `pod`, read from its admin port through a port-forward.
async fn envoy_stat(cluster: &Cluster, ns: &str, pod: &str, name: &str) -> anyhow::Result<u64> {
    let pf = cluster
        .port_forward(ns, &format!("pod/{pod}"), 15000)
        .await?;
    let resp = mesh_tests::http_get(
        &format!(
            "http://127.0.0.1:{}/stats?filter=^{}$",
            pf.port,
            regex_escape(name)
        ),
        &[],
    )
    .await?;
    let value = resp
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .with_context(|| format!("no stat {name} in {pod}: {}", resp.body))?;
    Ok(value.trim().parse()?)
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '.' | '|' | '(' | ')' | '[' | ']' | '*' | '+' | '?' | '^' | '$' => vec!['\\', c],
            c => vec![c],
        })
        .collect::<String>()
        .replace('\\', "%5C")
        .replace('|', "%7C")
}

async fn wait_ready(cluster: &Cluster, ns: &str) -> anyhow::Result<()> {
    cluster.wait_pods_ready(ns, &["--all"], READY).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_are_injected_and_intercept_the_apps_traffic() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    if !cluster.has_real_node() {
        eprintln!("no real node (not root, or MESH_CLUSTER_REAL_NODE=0): skipping");
        return Ok(());
    }
    let _control_plane = cluster.control_plane();
    cluster.install_control_plane().await?;

    // The injected namespace: the webhook adds the sidecar to every pod.
    let ns = cluster
        .namespace_on_real_node("inject", &[("istio-injection", "enabled")])
        .await?;
    let n = ns.name().to_string();
    let mut yaml = workload(&n);
    yaml.push_str(&deployment(
        &n,
        "details",
        "v1",
        &real_node_image("app"),
        &[("sidecar.istio.io/inject", "false")],
    ));
    yaml.push_str(&format!(
        r#"---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: details, namespace: {n}}}
"#
    ));
    // The webhook may take a moment to be served after Available (its caBundle is written
    // by Pilot); an apply refused for that is retried.
    retry(Duration::from_secs(60), "applying the workload", || async {
        let out = cluster
            .kubectl_with_stdin(["apply", "-f", "-"], Some(yaml.as_bytes()))
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await?;
    wait_ready(cluster, &n).await?;

    // What the webhook added.
    let client = pod(cluster, &n, "app=productpage").await?;
    let (init, plain) = containers(&client);
    assert_eq!(init, ["istio-init", "istio-proxy"], "{client:#}");
    assert_eq!(plain, ["app"], "{client:#}");
    let proxy = client["spec"]["initContainers"][1].clone();
    assert_eq!(
        proxy["restartPolicy"], "Always",
        "a native sidecar: {proxy:#}"
    );
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 1337, "{sc:#}");
    assert_eq!(sc["runAsNonRoot"], true, "{sc:#}");
    let caps = sc["capabilities"]["add"].to_string();
    assert!(
        !caps.contains("NET_ADMIN"),
        "the proxy must not have NET_ADMIN: {caps}"
    );
    let status = client["metadata"]["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .unwrap_or_default();
    assert!(
        status.contains("istio-proxy"),
        "status annotation: {status:?}"
    );
    // The app's HTTP probe goes through the agent (STRICT mTLS below would refuse the
    // kubelet's own).
    let app = &client["spec"]["containers"][0];
    assert_eq!(
        app["readinessProbe"]["httpGet"]["path"], "/app-health/app/readyz",
        "{app:#}"
    );
    assert_eq!(app["readinessProbe"]["httpGet"]["port"], 15020, "{app:#}");
    let optout = pod(cluster, &n, "app=details").await?;
    assert_eq!(containers(&optout), (vec![], vec!["app".to_string()]));

    // A malformed annotation: the API server refuses the pod with the webhook's reason.
    let bad = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: badcpu\n  namespace: {n}\n  \
         annotations: {{sidecar.istio.io/proxyCPU: banana}}\nspec:\n  containers:\n  \
         - {{name: app, image: {}, imagePullPolicy: Never}}\n",
        real_node_image("app")
    );
    let refused = cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(bad.as_bytes()))
        .await?;
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && message.contains("badcpu")
            && message.contains("sidecar.istio.io/proxyCPU"),
        "a pod with proxyCPU: banana: {message}"
    );

    // The app's plain call goes through its sidecar and reviews' (stats on both sides), and
    // with no rule reaches both versions.
    let client_pod = name_of(&client);
    let reviews_url = "http://reviews:9080/reviews/0";
    let versions = retry(Duration::from_secs(60), "calls to reviews", || {
        calls(cluster, &n, &client_pod, reviews_url, 20)
    })
    .await?;
    assert!(
        versions.get("v1").copied().unwrap_or(0) > 0
            && versions.get("v2").copied().unwrap_or(0) > 0,
        "without rules both versions answer: {versions:?}"
    );
    let host = format!("reviews.{n}.svc.cluster.local");
    let out_rq = envoy_stat(
        cluster,
        &n,
        &client_pod,
        &format!("cluster.outbound|9080||{host}.upstream_rq_total"),
    )
    .await?;
    assert!(
        out_rq >= 20,
        "the client's sidecar counted {out_rq} requests to reviews"
    );
    let reviews_pod = name_of(&pod(cluster, &n, "app=reviews,version=v1").await?);
    let inbound = envoy_stat(
        cluster,
        &n,
        &reviews_pod,
        "listener.0.0.0.0_15006.downstream_cx_total",
    )
    .await?;
    assert!(inbound > 0, "reviews' sidecar took no inbound connection");

    // Routing by YAML, by counted requests.
    for (v1, v2, want) in [(0, 100, "v2"), (100, 0, "v1")] {
        let rules = routes(&n, v1, v2, false);
        cluster
            .kubectl_with_stdin(["apply", "-f", "-"], Some(rules.as_bytes()))
            .await?;
        retry(
            Duration::from_secs(60),
            &format!("all calls to {want}"),
            || async {
                let versions = calls(cluster, &n, &client_pod, reviews_url, 20).await?;
                anyhow::ensure!(versions.get(want) == Some(&20), "{versions:?}");
                Ok(())
            },
        )
        .await?;
    }

    // Mutual TLS, STRICT in the namespace: each sidecar's certificate comes from Citadel's
    // CSR API through its agent (the pod's projected token) over SDS. Calls go on, over
    // mTLS; a pod without a sidecar is refused.
    let strict = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: {n}}}\nspec: {{mtls: {{mode: STRICT}}}}\n---\n{}",
        routes(&n, 100, 0, true)
    );
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(strict.as_bytes()))
        .await?;
    let details_pod = name_of(&optout);
    retry(Duration::from_secs(90), "calls over mTLS", || async {
        let versions = calls(cluster, &n, &client_pod, reviews_url, 10).await?;
        anyhow::ensure!(versions.get("v1") == Some(&10), "{versions:?}");
        let plain = cluster
            .kubectl([
                "-n",
                &n,
                "exec",
                &details_pod,
                "-c",
                "app",
                "--",
                "mesh-app",
                "get",
                reviews_url,
            ])
            .await?;
        anyhow::ensure!(
            !plain.status.success(),
            "a pod without a sidecar still reaches reviews in plain text: {}",
            String::from_utf8_lossy(&plain.stdout)
        );
        Ok(())
    })
    .await?;
    // The apps' probes, through their agents, still pass.
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_ready(cluster, &n).await?;
    let pf = cluster
        .port_forward(&n, &format!("pod/{client_pod}"), 15000)
        .await?;
    let certs = mesh_tests::http_get(&format!("http://127.0.0.1:{}/certs", pf.port), &[])
        .await?
        .body;
    drop(pf);
    let spiffe = format!("spiffe://cluster.local/ns/{n}/sa/productpage");
    assert!(certs.contains(&spiffe), "Envoy's certificates: {certs}");
    // What reviews' sidecar presents, as openssl sees it from the node: its own identity,
    // issued by Citadel's root.
    let reviews = pod(cluster, &n, "app=reviews,version=v1").await?;
    let ip = reviews["status"]["podIP"].as_str().unwrap_or_default();
    let presented = served_certificate(&format!("{ip}:9080")).await?;
    let want = format!("URI:spiffe://cluster.local/ns/{n}/sa/reviews");
    assert!(presented.contains(&want), "reviews presents: {presented}");

    // Rotation: the agent renews reviews v1's certificate at half its 40s life, and Envoy
    // takes the new one over SDS without a failed request.
    let serial = |text: &str| {
        text.lines()
            .skip_while(|l| !l.contains("Serial Number"))
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let first = serial(&presented);
    anyhow::ensure!(!first.is_empty(), "no serial in {presented}");
    let mut served = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let versions = calls(cluster, &n, &client_pod, reviews_url, 5).await?;
        anyhow::ensure!(
            versions.get("v1") == Some(&5),
            "a call failed while certificates rotate: {versions:?}"
        );
        served += 5;
        let now = serial(&served_certificate(&format!("{ip}:9080")).await?);
        if !now.is_empty() && now != first {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reviews v1 still presents certificate {first} after 90s"
        );
    }
    eprintln!("reviews v1's certificate rotated; {served} calls, none failed");

    // A Job in the injected namespace completes: its native sidecar does not keep it alive.
    let job = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: caller, namespace: {n}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      serviceAccountName: productpage
      securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
      containers:
      - name: app
        image: {app}
        imagePullPolicy: Never
        command: [mesh-app, get, "{reviews_url}", --count, "3"]
"#,
        app = real_node_image("app")
    );
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(job.as_bytes()))
        .await?;
    cluster
        .kubectl_ok([
            "-n",
            &n,
            "wait",
            "--for=condition=Complete",
            "job/caller",
            "--timeout=180s",
        ])
        .await
        .context("the Job in the injected namespace")?;

    // kube-inject by hand in a namespace without the label: the same sidecar, the same
    // capture.
    let plain_ns = cluster.namespace_on_real_node("kubeinject", &[]).await?;
    let m = plain_ns.name().to_string();
    let by_hand = format!(
        "{}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: productpage, namespace: {m}}}\n",
        deployment(&m, "productpage", "v1", &real_node_image("app"), &[])
    );
    // The cluster's own injection config, as `istioctl kube-inject` reads it.
    let config = cluster
        .kubectl_ok([
            "-n",
            NS,
            "get",
            "configmap",
            "istio-sidecar-injector",
            "-o",
            "yaml",
        ])
        .await?;
    let dir = tempfile::tempdir()?;
    let config_file = dir.path().join("injector.yaml");
    std::fs::write(&config_file, config)?;
    let injected = tokio::process::Command::new(workspace_binary("pilot")?)
        .args(["kube-inject", "-f", "-", "--injection-config"])
        .arg(&config_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let output = {
        let mut child = injected;
        let mut stdin = child.stdin.take().context("stdin")?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, by_hand.as_bytes()).await?;
        drop(stdin);
        child.wait_with_output().await?
    };
    anyhow::ensure!(
        output.status.success(),
        "pilot kube-inject: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(&output.stdout))
        .await?;
    wait_ready(cluster, &m).await?;
    let by_hand_pod = pod(cluster, &m, "app=productpage").await?;
    assert_eq!(containers(&by_hand_pod).0, ["istio-init", "istio-proxy"]);
    let by_hand_name = name_of(&by_hand_pod);
    let url = format!("http://reviews.{n}:9080/reviews/0");
    retry(
        Duration::from_secs(60),
        "kube-injected calls to v1",
        || async {
            let versions = calls(cluster, &m, &by_hand_name, &url, 10).await?;
            anyhow::ensure!(versions.get("v1") == Some(&10), "{versions:?}");
            Ok(())
        },
    )
    .await?;
    let out_rq = envoy_stat(
        cluster,
        &m,
        &by_hand_name,
        &format!("cluster.outbound|9080|v1|{host}.upstream_rq_total"),
    )
    .await?;
    assert!(out_rq >= 10, "the kube-injected sidecar counted {out_rq}");

    plain_ns.cleanup().await?;
    ns.cleanup().await?;
    Ok(())
}
