//! Pilot wiring sidecars to Mixer, through real Envoy: a client sidecar (HTTP proxy port)
//! calls `reviews`, whose own sidecar (a bound inbound listener from a Sidecar resource)
//! checks every request with Mixer before the workload sees it, and both sidecars report
//! telemetry. Mixer runs Istio 1.0's default config plus the test policy
//! (`mixer/tests/fixtures/policy.yaml`: a denier for `x-user: john`, a blacklist of `/admin`
//! and `/secret`) and a rule that denies `/private` to `productpage`'s mesh identity.

mod mixer_support;
mod pilot_traffic_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::mesh::{Pilot, eventually, via_proxy};
use mesh_tests::{Envoy, Service, Upstream, free_port, http_get};
use mixer_support::{Mixer, start_mixer, test_policy};
use pilot_traffic_support::{cert_meta, citadel, inbound_sidecar};

const CLIENT: &str = "sidecar~127.0.0.30~productpage-1.default~default.svc.cluster.local";
const SERVER_IP: &str = "127.0.0.31";
const SERVER: &str = "sidecar~127.0.0.31~reviews-v1-1.default~default.svc.cluster.local";
const HOST: &str = "reviews:9080";
const FQDN: &str = "reviews.default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(20);

/// Denies `/private` to callers with productpage's SPIFFE identity (only known over mTLS).
const PRIVATE_RULE: &str = r#"apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: denyprivate, namespace: istio-system}
spec:
  match: source.principal == "cluster.local/ns/default/sa/productpage" && request.url_path == "/private"
  actions:
  - handler: denyjohn.denier
    instances: [denyrequest.checknothing]
"#;

/// What a [`Setup`] adds to the plain mesh.
#[derive(Default)]
struct Options {
    fail_open: bool,
    files: Vec<(&'static str, String)>,
    client: Vec<String>,
    server: Vec<String>,
}

fn mesh_config(mixer: SocketAddr, fail_open: bool) -> String {
    format!(
        "mixerCheckServer: {mixer}\nmixerReportServer: {mixer}\ndisablePolicyChecks: false\npolicyCheckFailOpen: {fail_open}\n"
    )
}

/// `reviews` served at the server sidecar's inbound port, and the Sidecar resource that
/// binds that port (no iptables here) and forwards it to the workload.
fn config(inbound: u16, app: SocketAddr) -> Vec<(&'static str, String)> {
    let entry = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [{FQDN}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {SERVER_IP}, ports: {{http: {inbound}}}, labels: {{app: reviews, version: v1}}}}
"#
    );
    let sidecar = inbound_sidecar(SERVER_IP, inbound, app.port());
    vec![("reviews.yaml", entry), ("sidecar.yaml", sidecar)]
}

struct Setup {
    mixer: Option<Mixer>,
    pilot: Pilot,
    client: Envoy,
    server: Envoy,
    app: Upstream,
    port: u16,
    inbound: u16,
    citadel: Option<(Service, tempfile::TempDir)>,
}

// === impl Setup ===

impl Setup {
    async fn start(fail_open: bool) -> Setup {
        Setup::start_with(Options {
            fail_open,
            ..Default::default()
        })
        .await
    }

    /// Like [`Setup::start`], with both sidecars on Citadel's certificates, reviews STRICT
    /// and ISTIO_MUTUAL to it.
    async fn start_mtls() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let (citadel, secrets) = citadel(tmp.path()).await;
        let mut s = Setup::start_with(Options {
            fail_open: false,
            files: vec![
                (
                    "peer.yaml",
                    "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: reviews}\nspec:\n  selector:\n    matchLabels: {app: reviews}\n  mtls: {mode: STRICT}\n".into(),
                ),
                (
                    "dr.yaml",
                    "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n".into(),
                ),
            ],
            client: cert_meta(&secrets, "productpage", "CLIENT"),
            server: cert_meta(&secrets, "reviews", "SERVER"),
        })
        .await;
        s.citadel = Some((citadel, tmp));
        s
    }

    async fn start_with(opts: Options) -> Setup {
        let mixer = start_mixer(&[test_policy(), ("private.yaml", PRIVATE_RULE.into())]).await;
        let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let inbound = free_port();
        let mut files = config(inbound, app.addr());
        files.extend(opts.files);
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let pilot = Pilot::start(&files, &mesh_config(mixer.grpc, opts.fail_open), &[])
            .await
            .unwrap();
        let port = free_port();
        let mut args: Vec<String> = [
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
        args.extend(opts.client);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let client = pilot.sidecar(CLIENT, &refs).await.unwrap();
        let mut args: Vec<String> = [
            "--meta",
            "INTERCEPTION_MODE=NONE",
            "--label",
            "app=reviews",
            "--label",
            "version=v1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(opts.server);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = pilot.sidecar(SERVER, &refs).await.unwrap();
        let s = Setup {
            mixer: Some(mixer),
            pilot,
            client,
            server,
            app,
            port,
            inbound,
            citadel: None,
        };
        eventually("reviews through both sidecars", WAIT, || async {
            let r = via_proxy(s.port, HOST, "/").await?;
            if r.status == 200 && r.body == "reviews-v1\n" {
                return Ok(true);
            }
            anyhow::bail!("{} {:?}", r.status, r.body)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nserver sidecar log:\n{}\nmixer log:\n{}",
                s.server.logs(),
                s.mixer().svc.logs()
            )
        });
        s
    }

    /// Sends `n` requests for `path` with `headers` and counts them by status.
    async fn count(&self, path: &str, headers: &[(&str, &str)], n: usize) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let mut all = vec![("host", HOST)];
            all.extend_from_slice(headers);
            let r = http_get(&format!("http://127.0.0.1:{}{path}", self.port), &all)
                .await
                .unwrap();
            *out.entry(r.status.as_u16()).or_insert(0) += 1;
        }
        out
    }

    fn mixer(&self) -> &Mixer {
        self.mixer.as_ref().expect("mixer running")
    }

    /// Asserts both Envoys accepted all config, then stops everything.
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
        if let Some(m) = self.mixer {
            m.svc.stop().await.unwrap();
        }
        if let Some((citadel, _tmp)) = self.citadel {
            citadel.stop().await.unwrap();
        }
        self.app.stop().await;
    }
}

/// The sum of `istio_requests_total` series for reviews with `reporter` and `code`.
fn requests_total(metrics: &str, reporter: &str, code: u16) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains(&format!("reporter=\"{reporter}\"")))
        .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
        .filter(|l| l.contains(&format!("destination_service=\"{FQDN}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_server_sidecar_checks_with_mixer_and_both_sidecars_report() {
    let s = Setup::start(false).await;
    let before = s.app.requests();

    let ok = s.count("/", &[("x-user", "jane")], 5).await;
    assert_eq!(ok, BTreeMap::from([(200, 5)]), "{}", s.mixer().svc.logs());
    let denied = s.count("/", &[("x-user", "john")], 3).await;
    assert_eq!(denied, BTreeMap::from([(403, 3)]));
    let blacklisted = s.count("/admin", &[], 2).await;
    assert_eq!(blacklisted, BTreeMap::from([(403, 2)]));
    // Denied requests never reached the workload.
    assert_eq!(s.app.requests() - before, 5);
    // Without mutual TLS Mixer does not know who calls: the identity rule does not apply.
    assert_eq!(
        s.count("/private", &[], 2).await,
        BTreeMap::from([(200, 2)])
    );

    // The denial is Mixer's, made at the server sidecar; the client sidecar does not check.
    let r = via_proxy(s.port, HOST, "/").await.unwrap();
    assert_eq!(r.status, 200);
    let denied = http_get(
        &format!("http://127.0.0.1:{}/", s.port),
        &[("host", HOST), ("x-user", "john")],
    )
    .await
    .unwrap();
    assert!(
        denied.body.contains("Not allowed"),
        "not Mixer's denial: {denied:?}"
    );
    let server_denied = format!("http.inbound_{SERVER_IP}_{}.ext_authz.denied", s.inbound);
    assert_eq!(s.server.stat(&server_denied).await.unwrap(), Some(6));
    let client_stats = s.client.stats().await.unwrap();
    assert!(
        !client_stats.contains("ext_authz"),
        "the client sidecar checked too"
    );

    // Telemetry from both sides reaches Mixer's Prometheus adapter.
    let url = format!("http://{}/metrics", s.mixer().prometheus);
    eventually("istio_requests_total from both reporters", WAIT, || async {
        let body = http_get(&url, &[]).await?.body;
        Ok(requests_total(&body, "destination", 200) >= 6.0
            && requests_total(&body, "destination", 403) >= 6.0
            && requests_total(&body, "source", 200) >= 6.0
            && requests_total(&body, "source", 403) >= 6.0)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nmixer log:\n{}",
            s.mixer.as_ref().unwrap().svc.logs()
        )
    });
    let body = http_get(&url, &[]).await.unwrap().body;
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("response_code=\"200\"")
        })
        .unwrap();
    assert!(
        line.contains("destination_service_name=\"reviews\"")
            && line.contains("destination_service_namespace=\"default\""),
        "{line}"
    );
    s.finish().await;
}

#[tokio::test]
async fn policy_check_fail_open_decides_what_happens_when_mixer_is_down() {
    let mut s = Setup::start(false).await;
    let mixer = s.mixer.take().unwrap();
    let grpc = mixer.grpc;
    mixer.svc.stop().await.unwrap();

    // Fail closed (Istio's default): Envoy answers 403 when the check cannot be made.
    let before = s.app.requests();
    let closed = s.count("/", &[], 5).await;
    assert_eq!(closed, BTreeMap::from([(403, 5)]));
    assert_eq!(s.app.requests(), before);
    let errors = format!("http.inbound_{SERVER_IP}_{}.ext_authz.error", s.inbound);
    assert!(s.server.stat(&errors).await.unwrap().unwrap_or(0) >= 5);

    // policyCheckFailOpen: true lets requests through while Mixer is away.
    let mesh = s.pilot.config_dir().parent().unwrap().join("mesh.yaml");
    std::fs::write(&mesh, mesh_config(grpc, true)).unwrap();
    eventually("requests to pass with Mixer down", WAIT, || async {
        let r = via_proxy(s.port, HOST, "/").await?;
        Ok(r.status == 200)
    })
    .await
    .unwrap();
    let before = s.app.requests();
    let open = s.count("/", &[("x-user", "john")], 5).await;
    assert_eq!(open, BTreeMap::from([(200, 5)]));
    assert_eq!(s.app.requests() - before, 5);
    s.finish().await;
}

const ROUTER: &str =
    "router~127.0.0.40~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local";

#[tokio::test]
async fn the_ingress_gateway_checks_the_requests_it_routes() {
    let s = Setup::start(false).await;
    let gw_port = free_port();
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: ingress}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: ingress}}
spec:
  hosts: ["*"]
  gateways: [ingress]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
"#
    );
    s.pilot.write("gateway.yaml", &gateway).unwrap();
    let router = s
        .pilot
        .sidecar(
            ROUTER,
            &[
                "--meta",
                "INTERCEPTION_MODE=NONE",
                "--label",
                "istio=ingressgateway",
            ],
        )
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{gw_port}/");
    eventually("the gateway routes to reviews", WAIT, || async {
        Ok(http_get(&url, &[("host", "shop.example.com")])
            .await?
            .status
            == 200)
    })
    .await
    .unwrap();
    let server_denied = format!("http.inbound_{SERVER_IP}_{}.ext_authz.denied", s.inbound);
    let server_before = s.server.stat(&server_denied).await.unwrap().unwrap_or(0);
    let before = s.app.requests();
    let mut statuses = BTreeMap::new();
    for user in ["john", "jane", "john", "jane", "john"] {
        let r = http_get(&url, &[("host", "shop.example.com"), ("x-user", user)])
            .await
            .unwrap();
        *statuses.entry(r.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 2), (403, 3)]));
    assert_eq!(s.app.requests() - before, 2);
    // The gateway denied them itself: the server sidecar never saw them.
    let stats = router.stats().await.unwrap();
    let denied: u64 = stats
        .lines()
        .filter(|l| l.starts_with("http.") && l.contains(".ext_authz.denied:"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(denied, 3, "{stats}");
    assert_eq!(
        s.server.stat(&server_denied).await.unwrap().unwrap_or(0),
        server_before
    );
    router.stop().await.unwrap();
    s.finish().await;
}

#[tokio::test]
async fn mixer_knows_the_caller_by_its_certificate_over_mutual_tls() {
    let s = Setup::start_mtls().await;
    let before = s.app.requests();
    assert_eq!(s.count("/", &[], 4).await, BTreeMap::from([(200, 4)]));
    // The rule on productpage's identity applies: Envoy passed the peer's SPIFFE id.
    assert_eq!(
        s.count("/private", &[], 3).await,
        BTreeMap::from([(403, 3)])
    );
    assert_eq!(s.app.requests() - before, 4);

    // Reports carry the identity and the mutual TLS of the connection.
    let url = format!("http://{}/metrics", s.mixer().prometheus);
    eventually("mutual TLS telemetry", WAIT, || async {
        let body = http_get(&url, &[]).await?.body;
        let n: f64 = body
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| l.contains("reporter=\"destination\""))
            .filter(|l| l.contains("connection_security_policy=\"mutual_tls\""))
            .filter(|l| l.contains("source_principal=\"cluster.local/ns/default/sa/productpage\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Ok(n >= 7.0)
    })
    .await
    .unwrap();
    s.finish().await;
}

#[tokio::test]
async fn tcp_connections_are_checked_and_reported_at_the_server_sidecar() {
    let (allowed, denied) = (free_port(), free_port());
    let rule = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: denytcp, namespace: istio-system}}\nspec:\n  match: destination.port == {denied}\n  actions:\n  - handler: denyjohn.denier\n    instances: [denyrequest.checknothing]\n"
    );
    let mixer = start_mixer(&[test_policy(), ("tcp.yaml", rule)]).await;
    let app = Upstream::start("db", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  endpoints: [{{address: {SERVER_IP}, ports: {{tcp: {allowed}}}, labels: {{app: db}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: db}}
spec:
  workloadSelector:
    labels: {{app: db}}
  ingress:
  - port: {{number: {allowed}, protocol: TCP, name: tcp}}
    bind: {SERVER_IP}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{app_port}
  - port: {{number: {denied}, protocol: TCP, name: tcp-denied}}
    bind: {SERVER_IP}
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{app_port}
"#,
        app_port = app.addr().port()
    );
    let pilot = Pilot::start(
        &[("db.yaml", &config)],
        &mesh_config(mixer.grpc, false),
        &[],
    )
    .await
    .unwrap();
    let server = pilot
        .sidecar(
            "sidecar~127.0.0.31~db-1.default~default.svc.cluster.local",
            &["--meta", "INTERCEPTION_MODE=NONE", "--label", "app=db"],
        )
        .await
        .unwrap();
    // HTTP over the TCP listeners, one connection per request.
    let get =
        |port: u16| async move { http_get(&format!("http://{SERVER_IP}:{port}/"), &[]).await };
    eventually("the allowed port", WAIT, || async {
        Ok(get(allowed).await?.status == 200)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", server.logs()));
    let before = app.requests();
    for _ in 0..5 {
        assert_eq!(get(allowed).await.unwrap().status, 200);
    }
    for _ in 0..3 {
        assert!(
            get(denied).await.is_err(),
            "Mixer's TCP denial let a connection through"
        );
    }
    assert_eq!(app.requests() - before, 5);
    let stats = server.stats().await.unwrap();
    let denials: u64 = stats
        .lines()
        .filter(|l| l.contains("ext_authz") && l.contains(".denied:"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(denials >= 3, "{stats}");

    // Reports of the connections, as the server's sidecar saw them.
    let url = format!("http://{}/metrics", mixer.prometheus);
    eventually("istio_tcp_sent_bytes_total", WAIT, || async {
        let body = http_get(&url, &[]).await?.body;
        let sent: f64 = body
            .lines()
            .filter(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .filter(|l| l.contains("reporter=\"destination\""))
            .filter(|l| l.contains("destination_service=\"db\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if sent > 0.0 {
            return Ok(true);
        }
        anyhow::bail!("no TCP bytes reported yet")
    })
    .await
    .unwrap_or_else(|e| {
        let body = std::process::Command::new("curl")
            .arg("-s")
            .arg(&url)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("{e:#}\n{}\n{}", body, mixer.svc.logs())
    });
    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        assert_eq!(server.stat(stat).await.unwrap().unwrap_or(0), 0, "{stat}");
    }
    server.stop().await.unwrap();
    pilot.service.stop().await.unwrap();
    mixer.svc.stop().await.unwrap();
    app.stop().await;
}
