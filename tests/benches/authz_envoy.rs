//! The latency an RBAC filter with 100 rules adds to a request in a real Envoy, written to
//! `target/bench/authz_envoy.json` (or `$BENCH_OUT`).
//!
//! Citadel (file mode) issues the certificates; Pilot (file mode, a temp config directory, the
//! release binaries) serves two Envoy 1.40 sidecars side by side, each the sidecar of one
//! workload whose inbound HTTP listener (STRICT mutual TLS) forwards to the same sample
//! upstream ([`mesh_tests::Upstream`]):
//!
//! - `open`: no policy, so no RBAC filter at all;
//! - `guarded`: 100 AuthorizationPolicies selecting it (`orders-000` .. `orders-099`, one ALLOW
//!   rule each, so 100 Envoy policies in one RBAC filter). Each rule allows a caller (a
//!   principal, or a namespace: a regex on the peer's URI SAN) to GET or POST
//!   `/api/v2/orders/*` or its own `/api/v2/TEAM/*`, not `/api/v2/orders/admin*`, with header
//!   `x-tenant` `acme` or its team. The caller here (productpage's certificate) is the
//!   principal of the last one only: Envoy evaluates the policies in name order and stops at
//!   the first match, so every request checks the method, path, not-path and the principals of
//!   all 99 others (which fail on the principal and namespace) before `orders-099` allows it.
//!
//! Before timing, it checks that the policy is there: the guarded sidecar's RBAC filter holds
//! 100 policies and the open one has none; `x-tenant: other` and `/api/v2/orders/admin/keys`
//! get 403 from `guarded` (200 from `open`), the measured request 200 from both.
//!
//! Then one kept-alive HTTP/1.1 connection over mutual TLS per sidecar (a rustls client with
//! productpage's certificate, not checking the server's name, as the traffic tests' `curl -k`)
//! sends `GET /api/v2/orders/42` sequentially: a warm-up, then rounds alternating the two
//! configurations (which one goes first alternates too) so machine noise falls on both. Each
//! latency is request sent to response body read, through Envoy (TLS, its filters, the router)
//! and the upstream; every measured response must be 200, and the guarded Envoy's
//! `rbac.allowed` counter must have counted them all.
//!
//! Figures: `envoy_no_policy_p50_us` / `_p99_us`, `envoy_rbac_100_rules_p50_us` / `_p99_us`,
//! `envoy_rbac_100_rules_added_p50_us` (the difference of the medians), and
//! `envoy_rbac_requests_per_config`. `AUTHZ_ENVOY_ROUNDS` (default 50) and
//! `AUTHZ_ENVOY_PER_ROUND` (default 200) set the number of requests; `AUTHZ_ENVOY_DUMP=FILE`
//! keeps the guarded sidecar's config dump (the RBAC filter as Envoy has it). Envoy is `$ENVOY_BIN` or
//! what `tests/scripts/install-envoy.sh` installs. Every process started here is killed when
//! the benchmark ends, panics included.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_tests::{Envoy, Upstream, free_port, http_get, repo_root};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;

const RULES: usize = 100;
const OPEN: (&str, &str) = ("open", "127.0.0.71");
const GUARDED: (&str, &str) = ("guarded", "127.0.0.72");
/// The caller: its certificate is the principal of the last policy only.
const CALLER: &str = "productpage";
const PATH: &str = "/api/v2/orders/42";
const WARMUP: usize = 500;

/// A child process killed (and reaped) however the benchmark ends, panics included; its
/// output is kept in `log` and printed when it is dropped during a panic.
struct KillOnDrop {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl KillOnDrop {
    fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> KillOnDrop {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        KillOnDrop { name, child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/ready` on `http` answers 200.
    async fn wait_ready(&mut self, http: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.logs());
            }
            if let Ok(resp) = http_get(&format!("http://{http}/ready"), &[]).await
                && resp.status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "{} is not ready", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.logs());
        }
    }
}

/// `target/release/{pilot,citadel}`, built first (a no-op when `make bench` built them for
/// the Pilot and Citadel benchmarks).
fn release_binaries() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo_root())
        .args(["build", "--release", "--locked", "--quiet"])
        .args([
            "-p", "pilot", "-p", "citadel", "--bin", "pilot", "--bin", "citadel",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build of pilot and citadel failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("release")
}

fn local() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// The workload `app` at `ip`: a service with one endpoint (service account `app`), its
/// sidecar's inbound HTTP port `port` forwarding to the upstream, STRICT mutual TLS.
fn workload((app, ip): (&str, &str), port: u16, upstream: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: {app}, namespace: default}}
spec:
  hosts: [{app}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {ip}, ports: {{http: {port}}}, labels: {{app: {app}}}, serviceAccount: {app}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: {app}, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: {app}}}}}
  ingress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: {ip}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{upstream}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: {app}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  mtls: {{mode: STRICT}}
"#
    )
}

/// Policy `i` of the guarded workload; only the last one names the caller.
fn policy(i: usize) -> String {
    let (principal, team) = if i == RULES - 1 {
        (
            format!("cluster.local/ns/default/sa/{CALLER}"),
            "default".into(),
        )
    } else {
        (
            format!("cluster.local/ns/team-{i}/sa/client-{i}"),
            format!("team-{i}"),
        )
    };
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-{i:03}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{principals: [{principal}]}}
    - source: {{namespaces: [{team}]}}
    to:
    - operation:
        methods: [GET, POST]
        paths: [/api/v2/orders/*, /api/v2/{team}/*]
        notPaths: [/api/v2/orders/admin*]
    when:
    - {{key: 'request.headers[x-tenant]', values: [acme, {team}]}}
"#,
        app = GUARDED.0
    )
}

/// Accepts any server certificate (as `curl -k`; the sidecars' carry only a SPIFFE URI)
/// while still checking the handshake's signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One kept-alive HTTP/1.1 connection over mutual TLS to a sidecar's inbound port.
struct Client {
    sender: SendRequest<Empty<Bytes>>,
    host: String,
    conn: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(addr: SocketAddr, host: &str, tls: &TlsConnector) -> Client {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from(host.to_string()).unwrap();
        let stream = tls.connect(name, tcp).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client {
            sender,
            host: host.to_string(),
            conn,
        }
    }

    /// `GET path` with `x-tenant: tenant`; the status once the body is read.
    async fn get(&mut self, path: &str, tenant: &str) -> StatusCode {
        let req = Request::get(path)
            .header("host", &self.host)
            .header("x-tenant", tenant)
            .body(Empty::new())
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        status
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn tls_connector(identity: &Path) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_file_iter(identity.join("cert-chain.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(identity.join("key.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// The number of Envoy policies in each HTTP RBAC filter of a config dump.
fn rbac_policies(dump: &Value, out: &mut Vec<usize>) {
    match dump {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")
            {
                let n = map
                    .get("rules")
                    .and_then(|r| r.get("policies"))
                    .and_then(Value::as_object)
                    .map_or(0, |p| p.len());
                out.push(n);
            }
            map.values().for_each(|v| rbac_policies(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| rbac_policies(v, out)),
        _ => {}
    }
}

/// The sum of the counters whose name ends with `suffix`.
async fn counter_sum(envoy: &Envoy, suffix: &str) -> u64 {
    envoy
        .stats()
        .await
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds = env_usize("AUTHZ_ENVOY_ROUNDS", 50);
    let per_round = env_usize("AUTHZ_ENVOY_PER_ROUND", 200);
    let started = Instant::now();
    let bin = tokio::task::spawn_blocking(release_binaries).await.unwrap();
    eprintln!(
        "authz_envoy: binaries built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("authz-envoy-")
        .tempdir()
        .unwrap();

    // Citadel: certificates for both workloads and the caller.
    let citadel_config = tmp.path().join("citadel-config");
    std::fs::create_dir(&citadel_config).unwrap();
    let accounts = [OPEN.0, GUARDED.0, CALLER];
    let yaml: Vec<String> = accounts
        .iter()
        .map(|sa| format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: default}}\n"))
        .collect();
    std::fs::write(citadel_config.join("accounts.yaml"), yaml.join("---\n")).unwrap();
    let secrets = tmp.path().join("secrets");
    let citadel_http = local();
    let args = [
        "--config-dir".to_string(),
        citadel_config.display().to_string(),
        "--secret-dir".into(),
        secrets.display().to_string(),
        "--grpc-addr".into(),
        local().to_string(),
        "--http-addr".into(),
        citadel_http.to_string(),
    ];
    let mut citadel = KillOnDrop::spawn("citadel", &bin.join("citadel"), &args, tmp.path());
    citadel.wait_ready(citadel_http).await;
    let identity = |sa: &str| secrets.join(format!("default/istio.{sa}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    for sa in accounts {
        while !identity(sa).join("key.pem").exists() {
            assert!(Instant::now() < deadline, "no secrets:\n{}", citadel.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The upstream, and Pilot on both workloads and the policies.
    let upstream = Upstream::start("app", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (open_port, guarded_port) = (free_port(), free_port());
    let config = tmp.path().join("pilot-config");
    std::fs::create_dir(&config).unwrap();
    let up = upstream.addr().port();
    std::fs::write(config.join("open.yaml"), workload(OPEN, open_port, up)).unwrap();
    std::fs::write(
        config.join("guarded.yaml"),
        workload(GUARDED, guarded_port, up),
    )
    .unwrap();
    let policies: Vec<String> = (0..RULES).map(policy).collect();
    std::fs::write(config.join("policies.yaml"), policies.join("---\n")).unwrap();
    let mesh = tmp.path().join("mesh.yaml");
    std::fs::write(&mesh, "").unwrap();
    let (pilot_grpc, pilot_http) = (local(), local());
    let args = [
        "--config-dir".to_string(),
        config.display().to_string(),
        "--mesh".into(),
        mesh.display().to_string(),
        "--grpc-addr".into(),
        pilot_grpc.to_string(),
        "--http-addr".into(),
        pilot_http.to_string(),
    ];
    let mut pilot = KillOnDrop::spawn("pilot", &bin.join("pilot"), &args, tmp.path());
    pilot.wait_ready(pilot_http).await;

    // The two sidecars, bootstrapped by `pilot bootstrap`.
    let mut envoys = Vec::new();
    for (app, ip) in [OPEN, GUARDED] {
        let dir = identity(app);
        let mut cmd = Command::new(bin.join("pilot"));
        cmd.args(["bootstrap", "--xds-address", &pilot_grpc.to_string()])
            .args([
                "--node",
                &format!("sidecar~{ip}~{app}-v1-1.default~default.svc.cluster.local"),
            ])
            .args(["--label", &format!("app={app}")])
            .args(["--meta", "INTERCEPTION_MODE=NONE"]);
        for (key, file) in [
            ("CERT_CHAIN", "cert-chain.pem"),
            ("KEY", "key.pem"),
            ("ROOT_CERT", "root-cert.pem"),
        ] {
            cmd.args([
                "--meta",
                &format!("TLS_SERVER_{key}={}", dir.join(file).display()),
            ]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "pilot bootstrap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut envoy = Envoy::start_not_ready(bootstrap).await.unwrap();
        envoy.wait_ready(Duration::from_secs(30)).await.unwrap();
        envoys.push(envoy);
    }
    let (open, guarded) = (&envoys[0], &envoys[1]);

    // The policy is there and applies, before anything is timed.
    let mut filters = Vec::new();
    rbac_policies(&open.config_dump(false).await.unwrap(), &mut filters);
    assert!(filters.is_empty(), "the open sidecar has RBAC filters");
    let dump = guarded.config_dump(false).await.unwrap();
    if let Some(path) = std::env::var_os("AUTHZ_ENVOY_DUMP") {
        std::fs::write(path, serde_json::to_string_pretty(&dump).unwrap()).unwrap();
    }
    rbac_policies(&dump, &mut filters);
    assert_eq!(filters, [RULES], "the guarded sidecar's RBAC filters");
    let tls = tls_connector(&identity(CALLER));
    let targets = [
        (
            open_port,
            OPEN.1,
            format!("{}.default.svc.cluster.local", OPEN.0),
        ),
        (
            guarded_port,
            GUARDED.1,
            format!("{}.default.svc.cluster.local", GUARDED.0),
        ),
    ];
    let mut clients = Vec::new();
    for (port, ip, host) in &targets {
        let addr = SocketAddr::new(ip.parse().unwrap(), *port);
        clients.push(Client::connect(addr, host, &tls).await);
    }
    for (path, tenant, want_guarded) in [
        (PATH, "acme", StatusCode::OK),
        (PATH, "other", StatusCode::FORBIDDEN),
        ("/api/v2/orders/admin/keys", "acme", StatusCode::FORBIDDEN),
    ] {
        let what = format!("GET {path} x-tenant: {tenant}");
        assert_eq!(clients[0].get(path, tenant).await, 200, "open: {what}");
        assert_eq!(
            clients[1].get(path, tenant).await,
            want_guarded,
            "guarded: {what}"
        );
    }
    let denied = counter_sum(guarded, "rbac.denied").await;
    assert_eq!(denied, 2, "the guarded sidecar's rbac.denied");
    let allowed_before = counter_sum(guarded, "rbac.allowed").await;

    // Warm-up, then the rounds.
    for client in &mut clients {
        for _ in 0..WARMUP {
            assert_eq!(client.get(PATH, "acme").await, 200);
        }
    }
    let mut samples = [
        Vec::with_capacity(rounds * per_round),
        Vec::with_capacity(rounds * per_round),
    ];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            for _ in 0..per_round {
                let t = Instant::now();
                let status = clients[k].get(PATH, "acme").await;
                samples[k].push(t.elapsed().as_secs_f64() * 1e6);
                assert_eq!(status, 200, "a measured request failed");
            }
        }
    }
    let allowed = counter_sum(guarded, "rbac.allowed").await - allowed_before;
    assert_eq!(
        allowed,
        (WARMUP + rounds * per_round) as u64,
        "the RBAC filter did not see every request"
    );
    assert_eq!(counter_sum(open, "rbac.allowed").await, 0);
    for s in &mut samples {
        s.sort_by(f64::total_cmp);
    }
    let [none, rbac] = &samples;
    let report = json!({
        "envoy_no_policy_p50_us": round1(percentile(none, 0.5)),
        "envoy_no_policy_p99_us": round1(percentile(none, 0.99)),
        "envoy_rbac_100_rules_p50_us": round1(percentile(rbac, 0.5)),
        "envoy_rbac_100_rules_p99_us": round1(percentile(rbac, 0.99)),
        "envoy_rbac_100_rules_added_p50_us":
            round1(percentile(rbac, 0.5) - percentile(none, 0.5)),
        "envoy_rbac_requests_per_config": rounds * per_round,
    });

    drop(clients);
    for envoy in envoys {
        envoy.stop().await.unwrap();
    }
    drop(pilot);
    drop(citadel);
    upstream.stop().await;
    eprintln!(
        "authz_envoy: ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    println!("{report:#}");
    let out = std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench/authz_envoy.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
}
