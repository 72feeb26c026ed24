//! Shared helpers of the `pilot_traffic_*` tests: a mesh of Pilot and one Envoy sidecar with an
//! HTTP proxy port, services as ServiceEntries, request counting, and upstreams that misbehave
//! on purpose (slow, flaky, always failing).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::path::{Path, PathBuf};
use std::time::Instant;

use mesh_tests::mesh::{Pilot, eventually};
use mesh_tests::{Envoy, HttpResponse, Service, Upstream, free_port, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const NODE: &str = "sidecar~127.0.0.30~productpage-1.default~default.svc.cluster.local";
pub const WAIT: Duration = Duration::from_secs(20);

/// A ServiceEntry for `name.default.svc.cluster.local:9080` (HTTP) with one endpoint per
/// `(address, version)`.
pub fn service_entry(name: &str, endpoints: &[(SocketAddr, &str)]) -> String {
    let mut eps = String::new();
    for (addr, version) in endpoints {
        eps.push_str(&format!(
            "  - address: {}\n    ports: {{http: {}}}\n    labels: {{app: {name}, version: {version}}}\n",
            addr.ip(),
            addr.port()
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - number: 9080\n    name: http\n    protocol: HTTP\n  endpoints:\n{eps}"
    )
}

/// A DestinationRule with subsets `v1`, `v2`, `v3` by `version` label for `host`.
pub fn subsets(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: {host}\nspec:\n  host: {host}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n  - name: v2\n    labels: {{version: v2}}\n  - name: v3\n    labels: {{version: v3}}\n"
    )
}

pub async fn upstream(name: &str) -> Upstream {
    Upstream::start(name, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Pilot serving `files`, and one sidecar with an HTTP proxy port.
pub struct Mesh {
    pub pilot: Pilot,
    pub envoy: Envoy,
    pub port: u16,
}

// === impl Mesh ===

impl Mesh {
    pub async fn start(files: &[(&str, &str)]) -> Mesh {
        Mesh::start_with(files, "", &[]).await
    }

    pub async fn start_with(files: &[(&str, &str)], mesh: &str, labels: &[&str]) -> Mesh {
        let pilot = Pilot::start(files, mesh, &[]).await.unwrap();
        let port = free_port();
        let meta_port = format!("PROXY_HTTP_PORT={port}");
        let mut args = vec!["--meta", "INTERCEPTION_MODE=NONE", "--meta", &meta_port];
        for l in labels {
            args.push("--label");
            args.push(l);
        }
        let envoy = pilot.sidecar(NODE, &args).await.unwrap();
        Mesh { pilot, envoy, port }
    }

    /// GET `path` for `host` through the proxy port, with extra headers.
    pub async fn get(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpResponse> {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        http_get(&format!("http://127.0.0.1:{}{path}", self.port), &all).await
    }

    /// Sends `n` requests and counts the answers by `"STATUS BODY"` (body trimmed).
    pub async fn count(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let r = self.get(host, path, headers).await?;
            *out.entry(format!("{} {}", r.status.as_u16(), r.body.trim()))
                .or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Waits until `n` requests all answer `expect` (`"STATUS BODY"`).
    pub async fn wait_for(&self, host: &str, path: &str, headers: &[(&str, &str)], expect: &str) {
        eventually(expect, WAIT, || async {
            let c = self.count(host, path, headers, 3).await?;
            Ok(c.len() == 1 && c.contains_key(expect))
        })
        .await
        .unwrap();
    }

    /// Asserts Envoy accepted all config, then stops it.
    pub async fn finish(self) {
        for stat in [
            "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_rejected",
        ] {
            let n = self.envoy.stat(stat).await.unwrap().unwrap_or(0);
            assert_eq!(
                n,
                0,
                "Envoy rejected config ({stat}):\n{}",
                self.envoy.logs()
            );
        }
        let syncz = self.pilot.debug("/debug/syncz").await.unwrap();
        assert_ne!(syncz[0]["types"]["rds"]["status"], "NACKED", "{syncz}");
        self.envoy.stop().await.unwrap();
    }
}

/// How a [`RawServer`] answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Waits this long, then answers 200 `<name>`.
    Slow(Duration),
    /// Answers 503 to the first `n` requests of every `n + 1`, then 200.
    Flaky(u64),
    /// Always answers 503.
    Failing,
}

/// A tiny HTTP/1.1 server with a deliberate misbehaviour; one request per connection.
pub struct RawServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

// === impl RawServer ===

impl RawServer {
    pub async fn start(name: &str, behaviour: Behaviour) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let name = name.to_string();
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let seq = counter.fetch_add(1, Ordering::SeqCst);
                    let status = match behaviour {
                        Behaviour::Slow(d) => {
                            tokio::time::sleep(d).await;
                            200
                        }
                        Behaviour::Flaky(n) if seq % (n + 1) < n => 503,
                        Behaviour::Flaky(_) => 200,
                        Behaviour::Failing => 503,
                    };
                    let body = format!("{name}\n");
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawServer {
            addr,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Sidecar for the `app: reviews` workload without iptables: its inbound listener binds
/// `ip:inbound` and hands requests to the application on `127.0.0.1:app_port`.
pub fn inbound_sidecar(ip: &str, inbound: u16, app_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: reviews}}
spec:
  workloadSelector:
    labels: {{app: reviews}}
  ingress:
  - port: {{number: {inbound}, protocol: HTTP, name: http}}
    bind: {ip}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{app_port}
"#
    )
}

// === Citadel ===

/// Citadel in file mode with service accounts `productpage` and `reviews`; returns it with
/// the secret directory once both secrets exist.
pub async fn citadel(tmp: &Path) -> (Service, PathBuf) {
    citadel_with(tmp, &[]).await
}

/// [`citadel`] with `extra` flags (e.g. a short `--workload-cert-ttl`).
pub async fn citadel_with(tmp: &Path, extra: &[&str]) -> (Service, PathBuf) {
    citadel_at(tmp, free_port(), extra).await
}

/// [`citadel_with`], its CSR API (`--grpc-addr`) on 127.0.0.1:`grpc_port`.
pub async fn citadel_at(tmp: &Path, grpc_port: u16, extra: &[&str]) -> (Service, PathBuf) {
    let config = tmp.join("citadel-config");
    std::fs::create_dir_all(&config).unwrap();
    let yaml = ["productpage", "reviews"]
        .iter()
        .map(|sa| {
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: default\n")
        })
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(config.join("accounts.yaml"), yaml).unwrap();
    let out = tmp.join("secrets");
    let args = [
        "--config-dir".to_string(),
        config.display().to_string(),
        "--secret-dir".into(),
        out.display().to_string(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc_port}"),
    ];
    let mut refs: Vec<&str> = args.iter().map(String::as_str).collect();
    refs.extend_from_slice(extra);
    let mut svc = Service::start("citadel", &refs).await.unwrap();
    svc.wait_ready(Duration::from_secs(60)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for sa in ["productpage", "reviews"] {
        while !out.join(format!("default/istio.{sa}/key.pem")).exists() {
            assert!(Instant::now() < deadline, "no secrets:\n{}", svc.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (svc, out)
}

/// `--meta` flags pointing a proxy's `TLS_{side}_*` files at a Citadel secret directory.
pub fn cert_meta(secrets: &Path, sa: &str, side: &str) -> Vec<String> {
    let dir = secrets.join(format!("default/istio.{sa}"));
    [
        ("CERT_CHAIN", "cert-chain.pem"),
        ("KEY", "key.pem"),
        ("ROOT_CERT", "root-cert.pem"),
    ]
    .iter()
    .flat_map(|(key, file)| {
        [
            "--meta".to_string(),
            format!("TLS_{side}_{key}={}", dir.join(file).display()),
        ]
    })
    .collect()
}

/// The mesh of the mutual-TLS tests: `reviews` (service account `reviews`) at `server_ip`
/// behind its sidecar's inbound port `inbound` (app on `app`), a STRICT PeerAuthentication
/// for it, and a DestinationRule asking ISTIO_MUTUAL.
pub fn strict_mtls_reviews(server_ip: &str, inbound: u16, app: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "reviews.yaml",
            format!(
                r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {server_ip}, ports: {{http: {inbound}}}, labels: {{app: reviews}}, serviceAccount: reviews}}
"#
            ),
        ),
        ("sidecar.yaml", inbound_sidecar(server_ip, inbound, app)),
        (
            "peer.yaml",
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: reviews}\nspec:\n  selector:\n    matchLabels: {app: reviews}\n  mtls: {mode: STRICT}\n".into(),
        ),
        (
            "dr.yaml",
            "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n".into(),
        ),
    ]
}

/// The serials of the certificates Envoy presents (`/certs`), lower-case hex without leading
/// zeros.
pub async fn envoy_serials(envoy: &Envoy) -> std::collections::BTreeSet<String> {
    let certs: serde_json::Value = envoy.admin_get("/certs").await.unwrap().json().unwrap();
    let mut serials = std::collections::BTreeSet::new();
    for c in certs["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for chain in c["cert_chain"].as_array().cloned().unwrap_or_default() {
            if let Some(s) = chain["serial_number"].as_str() {
                serials.insert(s.trim_start_matches('0').to_ascii_lowercase());
            }
        }
    }
    serials
}
