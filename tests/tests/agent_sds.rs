//! The agent's certificate mode end to end: `pilot-agent`'s CSR client and SDS server
//! (`pilot::agent::{ca_client, sds}`, driven in-process) get each workload's certificate
//! from a real Citadel and serve it on a Unix socket to a real Envoy, whose TLS contexts
//! (node metadata `SDS: "true"`, bootstrap cluster `sds-grpc`) fetch `default` and `ROOTCA`
//! from it. A client sidecar (productpage) sends requests through ISTIO_MUTUAL to reviews'
//! STRICT sidecar.
//!
//! Citadel runs on files, where no TokenReview exists: it authenticates CSR callers by a
//! client certificate it issued, so each agent presents the mounted `istio.<sa>`
//! certificate as its credential ([`Credential::ClientCert`]), and gets a new certificate
//! for a key made in memory. Checked: openssl sees reviews' sidecar present a certificate
//! issued by Citadel's root with the SPIFFE URI of `reviews`, and not the mounted file's;
//! with 30 s certificates (`--workload-cert-ttl 30s`) each agent renews at half the
//! lifetime and both Envoys present the new certificates while requests go on, none failing.

mod pilot_traffic_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_runtime::Shutdown;
use mesh_tests::mesh::{Pilot, eventually, via_proxy};
use mesh_tests::{Envoy, Service, Upstream, free_port};
use pilot::agent::ca_client::{
    CaClientOptions, Credential, DEFAULT_GRACE_RATIO, DEFAULT_SERVER_NAME, KeyType,
};
use pilot::agent::sds::{self, CertSource};
use pilot_traffic_support::envoy_serials;

const CLIENT: &str = "sidecar~127.0.0.50~productpage-1.default~default.svc.cluster.local";
const SERVER_IP: &str = "127.0.0.52";
const SERVER: &str = "sidecar~127.0.0.52~reviews-v1-1.default~default.svc.cluster.local";
const HOST: &str = "reviews:9080";
const WAIT: Duration = Duration::from_secs(30);

fn config(inbound: u16, app: u16) -> Vec<(&'static str, String)> {
    pilot_traffic_support::strict_mtls_reviews(SERVER_IP, inbound, app)
}

/// Citadel on files with 30 s certificates (its CSR default too), its gRPC port, and the
/// secrets directory once both secrets exist.
async fn citadel(tmp: &Path) -> (Service, u16, PathBuf) {
    let port = free_port();
    let fast = [
        "--workload-cert-ttl",
        "30s",
        "--workload-cert-min-grace-period",
        "1s",
    ];
    let (svc, out) = pilot_traffic_support::citadel_at(tmp, port, &fast).await;
    (svc, port, out)
}

/// The agent of service account `sa`: CSR to Citadel, SDS on `socket`.
fn agent(
    ca_port: u16,
    secrets: &Path,
    sa: &str,
    socket: &Path,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<()> {
    let mounted = secrets.join(format!("default/istio.{sa}"));
    let opts = CaClientOptions {
        address: format!("127.0.0.1:{ca_port}"),
        server_name: DEFAULT_SERVER_NAME.into(),
        root_cert: mounted.join("root-cert.pem"),
        credential: Credential::ClientCert {
            chain: mounted.join("cert-chain.pem"),
            key: mounted.join("key.pem"),
        },
        identity: format!("spiffe://cluster.local/ns/default/sa/{sa}"),
        key_type: KeyType::EcdsaP256,
        ttl: None,
        grace_ratio: DEFAULT_GRACE_RATIO,
    };
    let socket = socket.to_path_buf();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        sds::serve(CertSource::Csr(opts), &socket, shutdown)
            .await
            .unwrap();
    })
}

/// A sidecar whose certificates come from the agent on `socket` (`pilot bootstrap
/// --sds-socket`).
async fn sidecar(pilot: &Pilot, node: &str, args: &[String], socket: &Path) -> Envoy {
    let socket = socket.display().to_string();
    let mut refs: Vec<&str> = args.iter().map(String::as_str).collect();
    refs.extend(["--sds-socket", &socket]);
    let bootstrap = pilot.bootstrap(node, &refs).unwrap();
    assert_eq!(bootstrap["node"]["metadata"]["SDS"], "true");
    let mut envoy = Envoy::start_not_ready(bootstrap).await.unwrap();
    if let Err(e) = envoy.wait_ready(WAIT).await {
        panic!("{e:#}\n{}", envoy.logs());
    }
    envoy
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The leaf serial of a PEM file, in Envoy's form.
fn file_serial(path: &Path) -> String {
    let (_, text) = openssl(
        &[
            "x509",
            "-noout",
            "-serial",
            "-in",
            &path.display().to_string(),
        ],
        None,
    );
    text.trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_ascii_lowercase()
}

/// The certificate the server at `addr` presents, per `openssl s_client` (PEM).
fn presented_cert(addr: &str) -> String {
    let (_, text) = openssl(&["s_client", "-connect", addr, "-showcerts"], Some(b""));
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate: {text}"));
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    text[start..end].to_string() + "\n"
}

async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).await.unwrap().unwrap_or(0)
}

#[tokio::test]
async fn agent_sds_certificates_from_citadel_rotate_without_a_failed_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (citadel, ca_port, secrets) = citadel(tmp.path()).await;
    let shutdown = Shutdown::new();
    let client_socket = tmp.path().join("productpage/SDS");
    let server_socket = tmp.path().join("reviews/SDS");
    let agents = [
        agent(ca_port, &secrets, "productpage", &client_socket, &shutdown),
        agent(ca_port, &secrets, "reviews", &server_socket, &shutdown),
    ];

    let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let inbound = free_port();
    let files = config(inbound, app.addr().port());
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let pilot = Pilot::start(&files, "", &[]).await.unwrap();
    let port = free_port();
    let client_args: Vec<String> = [
        "--meta",
        "INTERCEPTION_MODE=NONE",
        "--meta",
        &format!("PROXY_HTTP_PORT={port}"),
        "--label",
        "app=productpage",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let client = sidecar(&pilot, CLIENT, &client_args, &client_socket).await;
    let server_args: Vec<String> = ["--meta", "INTERCEPTION_MODE=NONE", "--label", "app=reviews"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let server = sidecar(&pilot, SERVER, &server_args, &server_socket).await;

    eventually("mutual TLS through both sidecars", WAIT, || async {
        let r = via_proxy(port, HOST, "/").await?;
        anyhow::ensure!(r.status == 200, "{} {:?}", r.status, r.body);
        Ok(true)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nclient:\n{}\nserver:\n{}\ncitadel:\n{}",
            client.logs(),
            server.logs(),
            citadel.logs()
        )
    });

    // The clusters name the agent's cluster, never a file; Pilot serves this proxy no secret.
    let dump = client.config_dump(false).await.unwrap().to_string();
    assert!(dump.contains("sds-grpc"), "{dump}");
    assert!(!dump.contains("cert-chain.pem"), "{dump}");

    // openssl: reviews' sidecar presents a Citadel-issued certificate for reviews' SPIFFE
    // identity, not the mounted file (the agent's key never left memory).
    let work = tmp.path().join("openssl");
    std::fs::create_dir_all(&work).unwrap();
    let leaf = work.join("leaf.pem");
    std::fs::write(&leaf, presented_cert(&format!("{SERVER_IP}:{inbound}"))).unwrap();
    let root = secrets.join("default/istio.reviews/root-cert.pem");
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            &root.display().to_string(),
            &leaf.display().to_string(),
        ],
        None,
    );
    assert!(ok, "not issued by Citadel's root: {text}");
    let (_, text) = openssl(
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            &leaf.display().to_string(),
        ],
        None,
    );
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/default/sa/reviews"),
        "{text}"
    );
    let first = file_serial(&leaf);
    let mounted = file_serial(&secrets.join("default/istio.reviews/cert-chain.pem"));
    assert_ne!(first, mounted, "the sidecar presents the mounted file");
    assert!(envoy_serials(&server).await.contains(&first));

    // Requests go on while both agents renew (30 s certificates, renewed at 15 s) twice.
    let (mut ok, mut failed) = (0u64, Vec::new());
    let (mut client_seen, mut server_seen) = (BTreeSet::new(), BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    while client_seen.len() < 3 || server_seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {}/{} certificates in 90 s; citadel:\n{}",
            client_seen.len(),
            server_seen.len(),
            citadel.logs()
        );
        match via_proxy(port, HOST, "/").await {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
            Err(e) => failed.push(e.to_string()),
        }
        client_seen.extend(envoy_serials(&client).await);
        server_seen.extend(envoy_serials(&server).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\nclient:\n{}\nserver:\n{}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)],
        client.logs(),
        server.logs()
    );
    assert!(
        ok > 100,
        "only {ok} requests: renewed too fast? {client_seen:?} {server_seen:?}"
    );
    // The last one, per openssl, is a renewed certificate with the same identity.
    std::fs::write(&leaf, presented_cert(&format!("{SERVER_IP}:{inbound}"))).unwrap();
    assert_ne!(file_serial(&leaf), first);
    let (_, text) = openssl(
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            &leaf.display().to_string(),
        ],
        None,
    );
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/default/sa/reviews"),
        "{text}"
    );

    for envoy in [&client, &server] {
        for s in ["sds.default.update_rejected", "sds.ROOTCA.update_rejected"] {
            assert_eq!(stat(envoy, s).await, 0, "{s}:\n{}", envoy.logs());
        }
        assert!(stat(envoy, "sds.default.update_success").await >= 3);
    }

    client.stop().await.unwrap();
    server.stop().await.unwrap();
    shutdown.cancel();
    for a in agents {
        tokio::time::timeout(Duration::from_secs(10), a)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(!client_socket.exists(), "socket removed on shutdown");
    pilot.service.stop().await.unwrap();
    citadel.stop().await.unwrap();
    app.stop().await;
}
