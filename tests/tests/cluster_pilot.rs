//! Pilot on a real Kubernetes API server: bookinfo applied with kubectl becomes Envoy config
//! (subset clusters with the pods' IPs, the `end-user: jason` route), requests through a real
//! Envoy reach servers bound on the pod IPs, scaling reaches EDS, deleting a VirtualService
//! removes its routes, and an API server restart leaves Pilot serving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::cluster::Cluster;
use mesh_tests::mesh::{eventually, via_proxy};
use mesh_tests::{Envoy, Service, Upstream, free_port, repo_root};

const WAIT: Duration = Duration::from_secs(60);

/// One test at a time: one of them kills the API server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RULES: &str = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
  - name: v3
    labels: {version: v3}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
";

fn bookinfo() -> String {
    let shared = repo_root().join("../shared/conformance/istio-current/platform/bookinfo.yaml");
    std::fs::read_to_string(shared).unwrap_or_else(|_| {
        std::fs::read_to_string(repo_root().join("tests/fixtures/bookinfo.yaml")).unwrap()
    })
}

/// `version=ip` of the running pods of an app.
async fn pod_ips(cluster: &Cluster, ns: &str, app: &str) -> Vec<(String, String)> {
    let out = cluster
        .kubectl_ok([
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={range .items[*]}{.metadata.labels.version}={.status.podIP}={.metadata.name}{\"\\n\"}{end}",
        ])
        .await
        .unwrap();
    out.lines()
        .filter_map(|l| {
            let mut parts = l.split('=');
            let version = parts.next()?.to_string();
            let ip = parts.next()?.to_string();
            (!ip.is_empty()).then_some((version, ip))
        })
        .collect()
}

/// The endpoint addresses Envoy holds for a cluster.
async fn envoy_endpoints(envoy: &Envoy, cluster: &str) -> BTreeSet<String> {
    envoy
        .clusters()
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{cluster}::")))
        .filter_map(|rest| rest.split("::").next())
        .filter(|addr| {
            addr.contains(':') && addr.chars().next().is_some_and(|c| c.is_ascii_digit())
        })
        .map(|addr| {
            addr.rsplit_once(':')
                .map(|(ip, _)| ip.to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn bookinfo_on_kubernetes_reaches_envoy() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::for_test().await.unwrap() else {
        return;
    };
    cluster.install_crds().await.unwrap();
    let ns = cluster.namespace("pilot").await.unwrap();
    let ns_name = ns.name().to_string();
    cluster.apply(&ns_name, &bookinfo()).await.unwrap();
    cluster.apply(&ns_name, RULES).await.unwrap();

    // Wait for the pods: kwok gives them 127.1.x IPs.
    eventually("bookinfo pods running", WAIT, || async {
        let reviews = pod_ips(cluster, &ns_name, "reviews").await;
        let pp = pod_ips(cluster, &ns_name, "productpage").await;
        Ok(reviews.len() == 3 && pp.len() == 1)
    })
    .await
    .unwrap();
    let reviews = pod_ips(cluster, &ns_name, "reviews").await;
    let productpage_ip = pod_ips(cluster, &ns_name, "productpage").await[0].1.clone();

    // Servers on the pods' IPs stand in for the workloads.
    let mut upstreams = Vec::new();
    for (version, ip) in &reviews {
        let addr: SocketAddr = format!("{ip}:9080").parse().unwrap();
        upstreams.push(
            Upstream::start(&format!("reviews-{version}"), addr)
                .await
                .unwrap(),
        );
    }

    let grpc = format!("127.0.0.1:{}", free_port());
    let kubeconfig = cluster.kubeconfig();
    let mut pilot = Service::start(
        "pilot",
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--grpc-addr",
            &grpc,
        ],
    )
    .await
    .unwrap();
    pilot.wait_ready(WAIT).await.unwrap();

    let proxy_port = free_port();
    let node =
        format!("sidecar~{productpage_ip}~productpage.{ns_name}~{ns_name}.svc.cluster.local");
    let bootstrap = pilot_bootstrap(&node, &grpc, proxy_port);
    let mut envoy = Envoy::start_not_ready(bootstrap).await.unwrap();
    envoy.wait_ready(WAIT).await.unwrap();

    // Subset clusters hold exactly the pods of each version.
    let host = format!("reviews.{ns_name}.svc.cluster.local");
    for (version, ip) in &reviews {
        let cluster_name = format!("outbound|9080|{version}|{host}");
        eventually(&format!("{cluster_name} has {ip}"), WAIT, || async {
            Ok(envoy_endpoints(&envoy, &cluster_name).await == BTreeSet::from([ip.clone()]))
        })
        .await
        .unwrap();
    }

    // Requests through Envoy reach the servers Kubernetes says back the service.
    let target = format!("reviews.{ns_name}:9080");
    eventually("jason is routed to v2", WAIT, || async {
        let r = mesh_tests::http_get(
            &format!("http://127.0.0.1:{proxy_port}/"),
            &[("host", &target), ("end-user", "jason")],
        )
        .await?;
        Ok(r.body == "reviews-v2\n")
    })
    .await
    .unwrap();
    for _ in 0..5 {
        let r = via_proxy(proxy_port, &target, "/").await.unwrap();
        assert_eq!(r.body, "reviews-v1\n");
    }

    // Scaling reviews-v2 reaches Envoy's EDS.
    cluster
        .kubectl_ok([
            "-n",
            &ns_name,
            "scale",
            "deployment/reviews-v2",
            "--replicas=2",
        ])
        .await
        .unwrap();
    let v2 = format!("outbound|9080|v2|{host}");
    eventually("a second v2 endpoint", WAIT, || async {
        Ok(envoy_endpoints(&envoy, &v2).await.len() == 2)
    })
    .await
    .unwrap();

    // The API server dies: Pilot keeps serving, then resyncs once it is back.
    let pid_file = repo_root().join("target/cluster/kube-apiserver.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    eventually("the API server is gone", WAIT, || async {
        let alive = std::process::Command::new("kill")
            .args(["-0", &pid])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        Ok(!alive)
    })
    .await
    .unwrap();
    for _ in 0..3 {
        let r = via_proxy(proxy_port, &target, "/").await.unwrap();
        assert_eq!(
            r.body, "reviews-v1\n",
            "served while the API server is down"
        );
    }
    let up = tokio::task::spawn_blocking(|| {
        std::process::Command::new("bash")
            .arg(repo_root().join("tests/cluster/cluster.sh"))
            .arg("up")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    // After the restart, deleting the VirtualService removes its routes: v2 and v3 now share
    // the traffic with v1.
    cluster
        .kubectl_ok(["-n", &ns_name, "delete", "virtualservice", "reviews"])
        .await
        .unwrap();
    eventually(
        "the default route spreads over every version",
        WAIT,
        || async {
            let mut seen = BTreeSet::new();
            for _ in 0..20 {
                seen.insert(via_proxy(proxy_port, &target, "/").await?.body);
            }
            Ok(seen.len() == 3)
        },
    )
    .await
    .unwrap();
    // Scaling back also reaches EDS after the restart.
    cluster
        .kubectl_ok([
            "-n",
            &ns_name,
            "scale",
            "deployment/reviews-v2",
            "--replicas=1",
        ])
        .await
        .unwrap();
    eventually("back to one v2 endpoint", WAIT, || async {
        Ok(envoy_endpoints(&envoy, &v2).await.len() == 1)
    })
    .await
    .unwrap();

    envoy.stop().await.unwrap();
    pilot.stop().await.unwrap();
    for u in upstreams {
        u.stop().await;
    }
    ns.cleanup().await.unwrap();
}

fn pilot_bootstrap(node: &str, grpc: &str, proxy_port: u16) -> serde_json::Value {
    let pilot = mesh_tests::workspace_binary("pilot").unwrap();
    let out = std::process::Command::new(pilot)
        .args(["bootstrap", "--node", node, "--xds-address", grpc])
        .args(["--meta", "INTERCEPTION_MODE=NONE"])
        .args(["--meta", &format!("PROXY_HTTP_PORT={proxy_port}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sum of a Prometheus series (all label sets matching `prefix`) on a metrics page.
fn metric(page: &str, prefix: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Istio's push-storm bug: a pod flapping between ready and not ready is pushed as EDS. (That
/// it never causes a full push is checked by `readiness_flaps_are_eds_pushes` in
/// `pilot::xds::push`: on a shared cluster, other tests' cleanups cause full pushes of their
/// own at any time.)
#[tokio::test]
async fn a_flapping_pod_is_pushed_as_eds() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::for_test().await.unwrap() else {
        return;
    };
    cluster.install_crds().await.unwrap();
    let ns = cluster.namespace("flap").await.unwrap();
    let ns_name = ns.name().to_string();
    cluster.apply(&ns_name, &bookinfo()).await.unwrap();
    eventually("ratings running", WAIT, || async {
        Ok(pod_ips(cluster, &ns_name, "ratings").await.len() == 1)
    })
    .await
    .unwrap();
    let pod = cluster
        .kubectl_ok([
            "-n",
            &ns_name,
            "get",
            "pods",
            "-l",
            "app=ratings",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await
        .unwrap();

    let grpc = format!("127.0.0.1:{}", free_port());
    let kubeconfig = cluster.kubeconfig();
    let mut pilot = Service::start(
        "pilot",
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--grpc-addr",
            &grpc,
        ],
    )
    .await
    .unwrap();
    pilot.wait_ready(WAIT).await.unwrap();
    let metrics_url = format!("http://{}/metrics", pilot.http_addr());
    let ratings = format!("ratings.{ns_name}.svc.cluster.local");
    // Settle: the registry of this namespace is complete and pushed.
    eventually("ratings has its endpoint", WAIT, || async {
        let reg = mesh_tests::http_get(
            &format!("http://{}/debug/registryz", pilot.http_addr()),
            &[],
        )
        .await?
        .body;
        Ok(reg.contains(&ratings) && reg.contains("127.1."))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let page = mesh_tests::http_get(&metrics_url, &[]).await.unwrap().body;
    let full_before = metric(&page, "pilot_push_triggers_total{type=\"full\"}");
    let eds_before = metric(&page, "pilot_push_triggers_total{type=\"eds\"}");

    for ready in ["False", "True", "False", "True"] {
        let patch = format!(
            "{{\"status\":{{\"conditions\":[{{\"type\":\"Ready\",\"status\":\"{ready}\"}}]}}}}"
        );
        cluster
            .kubectl_ok([
                "-n",
                &ns_name,
                "patch",
                "pod",
                pod.trim(),
                "--subresource=status",
                "--type=strategic",
                "-p",
                &patch,
            ])
            .await
            .unwrap();
        // Each state lasts long enough to be pushed on its own.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    eventually("the flaps were pushed", WAIT, || async {
        let page = mesh_tests::http_get(&metrics_url, &[]).await?.body;
        Ok(metric(&page, "pilot_push_triggers_total{type=\"eds\"}") >= eds_before + 2)
    })
    .await
    .unwrap();
    let page = mesh_tests::http_get(&metrics_url, &[]).await.unwrap().body;
    let full_after = metric(&page, "pilot_push_triggers_total{type=\"full\"}");
    eprintln!(
        "full pushes during the flaps (other tests' cleanups included): {}",
        full_after - full_before
    );
    pilot.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}

/// `exportTo: ["."]` on Kubernetes: a VirtualService that sends every request for reviews to
/// v2 routes the proxies of its own namespace only; a proxy in another namespace gets the
/// default route over every version. And a headless Service (`clusterIP: None`) becomes a
/// passthrough (ORIGINAL_DST) cluster that keeps its pods as endpoints.
#[tokio::test]
async fn a_dot_exported_virtual_service_stays_in_its_namespace() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::for_test().await.unwrap() else {
        return;
    };
    cluster.install_crds().await.unwrap();
    let ns = cluster.namespace("export").await.unwrap();
    let other = cluster.namespace("export-other").await.unwrap();
    let ns_name = ns.name().to_string();
    cluster.apply(&ns_name, &bookinfo()).await.unwrap();
    cluster
        .apply(
            &ns_name,
            "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  exportTo: [\".\"]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews-headless
spec:
  clusterIP: None
  selector: {app: reviews}
  ports:
  - {name: http, port: 9080}
",
        )
        .await
        .unwrap();
    eventually("reviews and productpage running", WAIT, || async {
        let reviews = pod_ips(cluster, &ns_name, "reviews").await;
        let pp = pod_ips(cluster, &ns_name, "productpage").await;
        Ok(reviews.len() == 3 && pp.len() == 1)
    })
    .await
    .unwrap();
    let reviews = pod_ips(cluster, &ns_name, "reviews").await;
    let productpage_ip = pod_ips(cluster, &ns_name, "productpage").await[0].1.clone();
    let mut upstreams = Vec::new();
    for (version, ip) in &reviews {
        let addr: SocketAddr = format!("{ip}:9080").parse().unwrap();
        upstreams.push(
            Upstream::start(&format!("reviews-{version}"), addr)
                .await
                .unwrap(),
        );
    }

    let grpc = format!("127.0.0.1:{}", free_port());
    let kubeconfig = cluster.kubeconfig();
    let mut pilot = Service::start(
        "pilot",
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--grpc-addr",
            &grpc,
        ],
    )
    .await
    .unwrap();
    pilot.wait_ready(WAIT).await.unwrap();

    // A proxy in the VirtualService's namespace, and one in another namespace.
    let own_port = free_port();
    let own_node =
        format!("sidecar~{productpage_ip}~productpage.{ns_name}~{ns_name}.svc.cluster.local");
    let mut own = Envoy::start_not_ready(pilot_bootstrap(&own_node, &grpc, own_port))
        .await
        .unwrap();
    own.wait_ready(WAIT).await.unwrap();
    let other_name = other.name().to_string();
    let other_port = free_port();
    let other_node =
        format!("sidecar~10.255.0.9~client.{other_name}~{other_name}.svc.cluster.local");
    let mut stranger = Envoy::start_not_ready(pilot_bootstrap(&other_node, &grpc, other_port))
        .await
        .unwrap();
    stranger.wait_ready(WAIT).await.unwrap();

    let target = format!("reviews.{ns_name}:9080");
    eventually("its own namespace is routed to v2", WAIT, || async {
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            seen.insert(via_proxy(own_port, &target, "/").await?.body);
        }
        Ok(seen == BTreeSet::from(["reviews-v2\n".to_string()]))
    })
    .await
    .unwrap();
    eventually(
        "another namespace gets the default route over every version",
        WAIT,
        || async {
            let mut seen = BTreeSet::new();
            for _ in 0..30 {
                seen.insert(via_proxy(other_port, &target, "/").await?.body);
            }
            Ok(seen.len() == 3)
        },
    )
    .await
    .unwrap();

    // The headless service: an ORIGINAL_DST cluster (no EDS), its pods still its endpoints.
    let headless = format!("reviews-headless.{ns_name}.svc.cluster.local");
    let cluster_name = format!("outbound|9080||{headless}");
    eventually(
        "the headless service is a passthrough cluster",
        WAIT,
        || async {
            let dump = own.config_dump(false).await?;
            let text = dump.to_string();
            let Some(at) = text.find(&format!("\"name\":\"{cluster_name}\"")) else {
                return Ok(false);
            };
            // The cluster's own object: up to the next dynamic cluster entry.
            let rest = &text[at..];
            let end = rest.find("\"version_info\"").unwrap_or(rest.len());
            Ok(rest[..end].contains("\"type\":\"ORIGINAL_DST\""))
        },
    )
    .await
    .unwrap();
    let registry = mesh_tests::http_get(
        &format!("http://{}/debug/registryz", pilot.http_addr()),
        &[],
    )
    .await
    .unwrap()
    .json()
    .unwrap();
    let svc = registry
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostname"] == headless.as_str())
        .unwrap_or_else(|| panic!("{headless} not in {registry}"));
    assert_eq!(svc["resolution"], "Passthrough", "{svc}");
    assert_eq!(svc["addresses"], serde_json::json!([]), "{svc}");
    let addresses: BTreeSet<String> = svc["ports"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect();
    let ips: BTreeSet<String> = reviews.iter().map(|(_, ip)| ip.clone()).collect();
    assert_eq!(addresses, ips, "{svc}");
    // Through the HTTP proxy port, a client names the pod it wants.
    for (version, ip) in &reviews {
        let pod = format!("{ip}:9080");
        let reply = mesh_tests::http_get(
            &format!("http://127.0.0.1:{own_port}/"),
            &[
                ("host", &format!("reviews-headless.{ns_name}:9080")),
                ("x-envoy-original-dst-host", &pod),
            ],
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200, "{pod}: {}", reply.body);
        assert_eq!(reply.body, format!("reviews-{version}\n"), "{pod}");
    }

    own.stop().await.unwrap();
    stranger.stop().await.unwrap();
    pilot.stop().await.unwrap();
    for u in upstreams {
        u.stop().await;
    }
    other.cleanup().await.unwrap();
    ns.cleanup().await.unwrap();
}
