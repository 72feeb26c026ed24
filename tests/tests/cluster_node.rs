//! The local cluster's real node (`mesh-node-0`, see `tests/cluster/node.sh`): the mesh's
//! own images run as real containers, pods reach each other over the pod network and through
//! ClusterIP Services by DNS name, `kubectl exec` and `kubectl logs` work, an init container
//! with NET_ADMIN installs REDIRECT rules that the app's own traffic then obeys, and the
//! egress guard on the machine's outward interfaces never counted a packet.

use std::time::Duration;

use mesh_tests::Cluster;
use mesh_tests::cluster::real_node_image;

/// How long pods may take to be Ready (images are loaded, never pulled).
const READY: &str = "--timeout=120s";

fn workload(ns: &str) -> String {
    let app = real_node_image("app");
    let proxy = real_node_image("proxy");
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: ratings-v1, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: ratings, version: v1}}}}
  template:
    metadata: {{labels: {{app: ratings, version: v1}}}}
    spec:
      containers:
      - name: ratings
        image: {app}
        imagePullPolicy: Never
        env:
        - {{name: SERVICE_NAME, value: ratings}}
        - {{name: SERVICE_VERSION, value: v1}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        ports: [{{containerPort: 9080, name: http}}]
        readinessProbe: {{httpGet: {{path: /health, port: 9080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: {ns}}}
spec:
  selector: {{app: ratings}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: reviews-v2, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: reviews, version: v2}}}}
  template:
    metadata: {{labels: {{app: reviews, version: v2}}}}
    spec:
      containers:
      - name: reviews
        image: {app}
        imagePullPolicy: Never
        env:
        - {{name: SERVICE_NAME, value: reviews}}
        - {{name: SERVICE_VERSION, value: v2}}
        ports: [{{containerPort: 9080, name: http}}]
        readinessProbe: {{httpGet: {{path: /health, port: 9080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: {ns}}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080}}]
---
# Init containers with NET_ADMIN (as a sidecar's would; the images have no shell): one
# redirects the pod's own outbound 127.0.0.1:9999 to the app's 9080, the next prints the
# pod's nat table.
apiVersion: v1
kind: Pod
metadata: {{name: redirected, namespace: {ns}, labels: {{app: redirected}}}}
spec:
  initContainers:
  - name: redirect
    image: {proxy}
    imagePullPolicy: Never
    command: [iptables, -t, nat, -A, OUTPUT, -p, tcp, -d, 127.0.0.1, --dport, "9999", -j, REDIRECT, --to-ports, "9080"]
    securityContext: &netadmin
      runAsUser: 0
      runAsNonRoot: false
      capabilities: {{add: [NET_ADMIN, NET_RAW], drop: [ALL]}}
  - name: show
    image: {proxy}
    imagePullPolicy: Never
    command: [iptables-save, -t, nat]
    securityContext: *netadmin
  containers:
  - name: app
    image: {app}
    imagePullPolicy: Never
    env:
    - {{name: SERVICE_NAME, value: details}}
    - {{name: SERVICE_VERSION, value: v1}}
    readinessProbe: {{httpGet: {{path: /health, port: 9080}}, periodSeconds: 1}}
"#
    )
}

#[tokio::test]
async fn pods_on_the_real_node_talk_over_the_pod_network_and_services() {
    let Some(cluster) = Cluster::for_test().await.unwrap() else {
        return;
    };
    if !cluster.has_real_node() {
        panic!(
            "the cluster has no real node (not root, or MESH_CLUSTER_REAL_NODE=0); \
             see tests/cluster/README.md"
        );
    }
    let ns = cluster.namespace_on_real_node("node", &[]).await.unwrap();
    let name = ns.name().to_string();
    let yaml = workload(&name);
    let out = cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(yaml.as_bytes()))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for selector in ["app=ratings", "app=reviews", "app=redirected"] {
        cluster
            .kubectl_ok([
                "-n",
                &name,
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                selector,
                READY,
            ])
            .await
            .unwrap_or_else(|e| panic!("pods {selector} not Ready: {e:#}"));
    }

    // Every pod is on the real node, with an IP of its pod network.
    let pods: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl_ok(["-n", &name, "get", "pods", "-o", "json"])
            .await
            .unwrap(),
    )
    .unwrap();
    let mut ratings_ips = Vec::new();
    for pod in pods["items"].as_array().unwrap() {
        let pod_name = pod["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            pod["spec"]["nodeName"], "mesh-node-0",
            "{pod_name} is not on the real node"
        );
        let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.244."), "{pod_name} has IP {ip}");
        if pod["metadata"]["labels"]["app"] == "ratings" {
            ratings_ips.push(ip);
        }
    }
    assert_eq!(ratings_ips.len(), 2);

    let reviews = pod_of(cluster, &name, "app=reviews").await;
    // kubectl exec, and pod to pod by IP over the pod network.
    for ip in &ratings_ips {
        let out = exec(
            cluster,
            &name,
            &reviews,
            &["mesh-app", "get", &format!("http://{ip}:9080/ratings/0")],
        )
        .await;
        assert!(out.contains("\"ratings\""), "ratings at {ip}: {out}");
    }
    // Through the ClusterIP Service by its DNS names (CoreDNS, kube-proxy): both ratings
    // pods answer in 20 calls, and reviews-v2 itself calls ratings by name.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let out = exec(
            cluster,
            &name,
            &reviews,
            &["mesh-app", "get", "http://ratings:9080/ratings/0"],
        )
        .await;
        seen.insert(pod_name_in(&out));
    }
    assert_eq!(
        seen.len(),
        2,
        "calls to the ratings Service reached {seen:?}"
    );
    let fqdn = format!("http://ratings.{name}.svc.cluster.local:9080/ratings/0");
    exec(cluster, &name, &reviews, &["mesh-app", "get", &fqdn]).await;
    let redirected = "redirected".to_string();
    let out = exec(
        cluster,
        &name,
        &redirected,
        &[
            "mesh-app",
            "get",
            &format!("http://reviews.{name}:9080/reviews/0"),
        ],
    )
    .await;
    assert!(
        out.contains("\"reviews\"") && out.contains("\"ratings\""),
        "reviews-v2 through its Service, with its call to ratings: {out}"
    );

    // The init container's REDIRECT rule is in force in the pod: its own call to port
    // 9999 lands on the app's 9080.
    let logs = cluster
        .kubectl_ok(["-n", &name, "logs", "redirected", "-c", "show"])
        .await
        .unwrap();
    assert!(
        logs.contains("-A OUTPUT") && logs.contains("REDIRECT --to-ports 9080"),
        "the init container printed: {logs}"
    );
    let out = exec(
        cluster,
        &name,
        &redirected,
        &["mesh-app", "get", "http://127.0.0.1:9999/health"],
    )
    .await;
    assert!(!out.is_empty(), "redirected call answered: {out}");

    // Nothing tried to leave the machine.
    assert_eq!(
        cluster.egress_guard_drops().unwrap(),
        0,
        "the egress guard dropped packets"
    );
    ns.cleanup().await.unwrap();
}

/// The name of one pod matching `selector`.
async fn pod_of(cluster: &Cluster, ns: &str, selector: &str) -> String {
    cluster
        .kubectl_ok([
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await
        .unwrap()
        .trim()
        .to_string()
}

/// `kubectl exec POD -- ARGS`, its stdout; panics (with stderr) when it fails.
async fn exec(cluster: &Cluster, ns: &str, pod: &str, args: &[&str]) -> String {
    let mut argv = vec!["-n", ns, "exec", pod, "--"];
    argv.extend_from_slice(args);
    for attempt in 0.. {
        match cluster.kubectl_ok(argv.clone()).await {
            Ok(out) => return out,
            // A just-Ready pod's DNS name can take a moment to appear in CoreDNS.
            Err(e) if attempt < 10 => {
                eprintln!("exec {args:?} in {pod} failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("exec {args:?} in {pod}: {e:#}"),
        }
    }
    unreachable!()
}

/// The `pod` field of an app's JSON answer.
fn pod_name_in(out: &str) -> String {
    let body = out.find('{').map_or(out, |i| &out[i..]);
    let v: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("not an app answer ({e}): {out}"));
    v["pod"].as_str().unwrap_or_default().to_string()
}
