//! Mesh TLS through real Envoy with Citadel's certificates: Citadel (file mode) writes a
//! certificate per service account; a client sidecar (`productpage`) reaches `reviews`
//! through reviews' own sidecar, whose inbound listener a PeerAuthentication makes STRICT
//! or PERMISSIVE, and a DestinationRule with `ISTIO_MUTUAL` makes the client present its
//! certificate and check the server's SPIFFE identity.

mod pilot_traffic_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mesh_tests::mesh::{Pilot, eventually, via_proxy};
use mesh_tests::{Envoy, Service, Upstream, free_port, http_get};
use pilot_traffic_support::{WAIT, cert_meta, citadel, inbound_sidecar};

const CLIENT: &str = "sidecar~127.0.0.30~productpage-1.default~default.svc.cluster.local";
const SERVER_IP: &str = "127.0.0.32";
const SERVER: &str = "sidecar~127.0.0.32~reviews-v1-1.default~default.svc.cluster.local";
const HOST: &str = "reviews:9080";
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn service_entry(inbound: u16) -> String {
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
  - {{address: {SERVER_IP}, ports: {{http: {inbound}}}, labels: {{app: reviews}}, serviceAccount: reviews}}
"#
    )
}

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: reviews}}\nspec:\n  selector:\n    matchLabels: {{app: reviews}}\n  mtls: {{mode: {mode}}}\n"
    )
}

fn destination_rule(sans: &[&str]) -> String {
    let sans = if sans.is_empty() {
        String::new()
    } else {
        format!("\n      subjectAltNames: [{}]", sans.join(", "))
    };
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL{sans}\n"
    )
}

struct Setup {
    _tmp: tempfile::TempDir,
    citadel: Service,
    pilot: Pilot,
    client: Envoy,
    server: Envoy,
    app: Upstream,
    port: u16,
    inbound: u16,
}

// === impl Setup ===

impl Setup {
    async fn start(files: &[(&str, String)]) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let (citadel, secrets) = citadel(tmp.path()).await;
        let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let inbound = free_port();
        let mut all = vec![
            ("reviews.yaml", service_entry(inbound)),
            (
                "sidecar.yaml",
                inbound_sidecar(SERVER_IP, inbound, app.addr().port()),
            ),
        ];
        all.extend(files.iter().map(|(n, t)| (*n, t.clone())));
        let all: Vec<(&str, &str)> = all.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let pilot = Pilot::start(&all, "", &[]).await.unwrap();
        let port = free_port();
        let mut args = vec![
            "--meta".to_string(),
            "INTERCEPTION_MODE=NONE".into(),
            "--meta".into(),
            format!("PROXY_HTTP_PORT={port}"),
            "--label".into(),
            "app=productpage".into(),
        ];
        args.extend(cert_meta(&secrets, "productpage", "CLIENT"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let client = pilot.sidecar(CLIENT, &refs).await.unwrap();
        let mut args = vec![
            "--meta".to_string(),
            "INTERCEPTION_MODE=NONE".into(),
            "--label".into(),
            "app=reviews".into(),
        ];
        args.extend(cert_meta(&secrets, "reviews", "SERVER"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = pilot.sidecar(SERVER, &refs).await.unwrap();
        Setup {
            _tmp: tmp,
            citadel,
            pilot,
            client,
            server,
            app,
            port,
            inbound,
        }
    }

    /// Sends `n` requests through the client sidecar and counts them by status.
    async fn count(&self, n: usize) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let status = via_proxy(self.port, HOST, "/").await.unwrap().status;
            *out.entry(status.as_u16()).or_insert(0) += 1;
        }
        out
    }

    /// Waits until a request through the client sidecar answers `status`.
    async fn wait_for(&self, status: u16) {
        eventually(&format!("status {status}"), WAIT, || async {
            let r = via_proxy(self.port, HOST, "/").await?;
            if r.status == status {
                return Ok(true);
            }
            anyhow::bail!("{} {:?}", r.status, r.body)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nclient log:\n{}\nserver log:\n{}",
                self.client.logs(),
                self.server.logs()
            )
        });
    }

    /// A plain-text request straight to the server sidecar's inbound listener.
    async fn direct(&self) -> anyhow::Result<u16> {
        let url = format!("http://{SERVER_IP}:{}/", self.inbound);
        Ok(http_get(&url, &[]).await?.status.as_u16())
    }

    async fn stat(envoy: &Envoy, name: &str) -> u64 {
        envoy.stat(name).await.unwrap().unwrap_or(0)
    }

    async fn finish(self) {
        for envoy in [&self.client, &self.server] {
            for stat in [
                "cluster_manager.cds.update_rejected",
                "listener_manager.lds.update_rejected",
            ] {
                let n = envoy.stat(stat).await.unwrap().unwrap_or(0);
                assert_eq!(n, 0, "Envoy rejected config ({stat}):\n{}", envoy.logs());
            }
        }
        self.client.stop().await.unwrap();
        self.server.stop().await.unwrap();
        self.pilot.service.stop().await.unwrap();
        self.citadel.stop().await.unwrap();
        self.app.stop().await;
    }
}

#[tokio::test]
async fn istio_mutual_reaches_a_strict_server_and_checks_its_identity() {
    let s = Setup::start(&[("peer.yaml", peer_authentication("STRICT"))]).await;

    // Without ISTIO_MUTUAL the client speaks plain text, which a STRICT server refuses.
    s.wait_for(503).await;
    let before = s.app.requests();
    assert_eq!(s.count(5).await, BTreeMap::from([(503, 5)]));
    assert!(s.direct().await.is_err(), "STRICT accepted plain text");
    assert_eq!(s.app.requests(), before);

    // ISTIO_MUTUAL: the client presents productpage's certificate and accepts reviews' one
    // (the endpoint's service account).
    s.pilot.write("dr.yaml", &destination_rule(&[])).unwrap();
    s.wait_for(200).await;
    let before = s.app.requests();
    assert_eq!(s.count(10).await, BTreeMap::from([(200, 10)]));
    assert_eq!(s.app.requests() - before, 10);
    let handshakes = format!("cluster.{CLUSTER}.ssl.handshake");
    assert!(Setup::stat(&s.client, &handshakes).await >= 1);
    let server_handshakes = format!("listener.{SERVER_IP}_{}.ssl.handshake", s.inbound);
    assert!(Setup::stat(&s.server, &server_handshakes).await >= 1);
    let dump = s.client.config_dump(false).await.unwrap().to_string();
    assert!(
        dump.contains("spiffe://cluster.local/ns/default/sa/reviews"),
        "no SAN check in the client's cluster"
    );

    // A rule expecting another identity: the client refuses reviews' certificate.
    s.pilot
        .write(
            "dr.yaml",
            &destination_rule(&["spiffe://cluster.local/ns/default/sa/ratings"]),
        )
        .unwrap();
    s.wait_for(503).await;
    let before = s.app.requests();
    assert_eq!(s.count(5).await, BTreeMap::from([(503, 5)]));
    assert_eq!(s.app.requests(), before);
    let san_failures = format!("cluster.{CLUSTER}.ssl.fail_verify_san");
    assert!(Setup::stat(&s.client, &san_failures).await >= 1);
    s.finish().await;
}

#[tokio::test]
async fn a_permissive_server_takes_mutual_tls_and_plain_text() {
    let s = Setup::start(&[
        ("peer.yaml", peer_authentication("PERMISSIVE")),
        ("dr.yaml", destination_rule(&[])),
    ])
    .await;
    s.wait_for(200).await;
    assert_eq!(s.count(5).await, BTreeMap::from([(200, 5)]));
    let server_handshakes = format!("listener.{SERVER_IP}_{}.ssl.handshake", s.inbound);
    assert!(Setup::stat(&s.server, &server_handshakes).await >= 1);
    for _ in 0..5 {
        assert_eq!(s.direct().await.unwrap(), 200);
    }
    // DISABLE: plain text only, so the ISTIO_MUTUAL client fails.
    s.pilot
        .write("peer.yaml", &peer_authentication("DISABLE"))
        .unwrap();
    s.wait_for(503).await;
    assert_eq!(s.count(5).await, BTreeMap::from([(503, 5)]));
    assert_eq!(s.direct().await.unwrap(), 200);
    s.finish().await;
}

// === TLS routes ===

/// `openssl s_server -WWW` on 127.0.0.1:`port` with a self-signed certificate for `name`,
/// serving `/id.txt` = `name`. Killed on drop.
struct TlsServer {
    _child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

async fn tls_server(name: &str) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id.txt"), name).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", "key.pem",
            "-out", "cert.pem", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .current_dir(dir.path())
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{out:?}");
    let port = free_port();
    let child = tokio::process::Command::new("openssl")
        .args([
            "s_server", "-quiet", "-WWW", "-cert", "cert.pem", "-key", "key.pem",
        ])
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "s_server {name} not listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TlsServer {
        _child: child,
        port,
        _dir: dir,
    }
}

/// GET `https://HOST:PORT/id.txt` with SNI `host`, sent to `ip` (certificates not checked:
/// the test is about routing by SNI). The body, or curl's error.
async fn curl_sni(host: &str, ip: &str, port: u16) -> Result<String, String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sSk", "--max-time", "5", "--resolve"])
        .arg(format!("{host}:{port}:{ip}"))
        .arg(format!("https://{host}:{port}/id.txt"))
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const EGRESS_IP: &str = "127.0.0.33";

fn tls_entry(host: &str, port: u16, backend: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {backend}}}}}]
"#
    )
}

#[tokio::test]
async fn tls_routes_pick_clusters_by_sni() {
    let a = tls_server("backend-a").await;
    let b = tls_server("backend-b").await;
    let port = free_port();
    // No iptables: the Sidecar's egress listener binds the TLS port on 127.0.0.33.
    let sidecar = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: productpage}}
spec:
  workloadSelector:
    labels: {{app: productpage}}
  egress:
  - port: {{number: {port}, protocol: TLS, name: tls}}
    bind: {EGRESS_IP}
    captureMode: NONE
    hosts: ["*/*"]
"#
    );
    let files = [
        ("a.yaml", tls_entry("a.example.com", port, a.port)),
        ("b.yaml", tls_entry("b.example.com", port, b.port)),
        ("sidecar.yaml", sidecar),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let pilot = Pilot::start(&files, "", &[]).await.unwrap();
    let client = pilot
        .sidecar(
            CLIENT,
            &[
                "--meta",
                "INTERCEPTION_MODE=NONE",
                "--label",
                "app=productpage",
            ],
        )
        .await
        .unwrap();
    let count = |host: &'static str, n: usize| async move {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let key = curl_sni(host, EGRESS_IP, port)
                .await
                .unwrap_or_else(|_| "error".into());
            *out.entry(key).or_insert(0usize) += 1;
        }
        out
    };

    // Without VirtualServices each host's SNI goes to its own service.
    eventually("the egress listener", WAIT, || async {
        Ok(curl_sni("a.example.com", EGRESS_IP, port).await.is_ok())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", client.logs()));
    assert_eq!(
        count("a.example.com", 4).await,
        BTreeMap::from([("backend-a".to_string(), 4)])
    );
    assert_eq!(
        count("b.example.com", 4).await,
        BTreeMap::from([("backend-b".to_string(), 4)])
    );
    // An SNI no service has matches no chain: the connection is closed.
    assert_eq!(
        count("c.example.com", 2).await,
        BTreeMap::from([("error".to_string(), 2)])
    );

    // A tls route sends a.example.com's SNI to b, then splits it.
    let vs = |route: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: [a.example.com]\n  tls:\n  - match: [{{port: {port}, sniHosts: [a.example.com]}}]\n    route:\n{route}"
        )
    };
    let to = |host: &str, weight: u32| {
        format!(
            "    - {{destination: {{host: {host}, port: {{number: {port}}}}}, weight: {weight}}}\n"
        )
    };
    pilot
        .write("vs.yaml", &vs(&to("b.example.com", 100)))
        .unwrap();
    eventually("a.example.com routed to b", WAIT, || async {
        Ok(curl_sni("a.example.com", EGRESS_IP, port).await.as_deref() == Ok("backend-b"))
    })
    .await
    .unwrap();
    assert_eq!(
        count("a.example.com", 4).await,
        BTreeMap::from([("backend-b".to_string(), 4)])
    );
    pilot
        .write(
            "vs.yaml",
            &vs(&format!(
                "{}{}",
                to("a.example.com", 50),
                to("b.example.com", 50)
            )),
        )
        .unwrap();
    eventually("a.example.com split", WAIT, || async {
        Ok(curl_sni("a.example.com", EGRESS_IP, port).await.as_deref() == Ok("backend-a"))
    })
    .await
    .unwrap();
    let split = count("a.example.com", 20).await;
    assert!(
        split.get("backend-a").is_some_and(|n| *n > 0)
            && split.get("backend-b").is_some_and(|n| *n > 0)
            && split.len() == 2,
        "{split:?}"
    );
    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        let n = client.stat(stat).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "Envoy rejected config ({stat}):\n{}", client.logs());
    }
    client.stop().await.unwrap();
    pilot.service.stop().await.unwrap();
}
