//! Request authentication through real Envoy: Pilot in file mode, the `reviews` workload
//! behind its sidecar's bound inbound listener, and JWTs signed here (ES256, keys made by
//! rcgen) whose key set a small local server publishes at the `jwksUri` Pilot fetches
//! itself (every second here: `--jwt-pub-key-refresh-interval 1s`). The sidecar has no route
//! to that server: the keys reach it inline.
//!
//! RequestAuthentication: a valid token passes, an expired one, one of another issuer or
//! with a bad signature is 401 (for another audience 403: Envoy's answer, hence Istio's), no
//! token passes; key rotation at the
//! issuer is picked up after a refresh and an unreachable issuer keeps the last good keys; an
//! issuer whose keys were never fetched refuses every token. Istio 1.0's Policy with
//! `origins` and USE_ORIGIN requires a token. Policy edits and invalid policies take effect
//! (or are refused) without restarting anything. The request principal reaches
//! AuthorizationPolicy's `requestPrincipals` and `request.auth.claims` through the metadata
//! contract of `pilot::xds::generate::authn`. An ingress gateway picked by a root-namespace
//! policy checks tokens on its own HTTP listener.
//!
//! Istio 1.0's MeshPolicy `peers` (no JWT there) make the workload's inbound STRICT or
//! PERMISSIVE mutual TLS with Citadel's certificates, like a PeerAuthentication.

mod pilot_traffic_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_tests::jwt::{self, Signer, jwks_of, now};
use mesh_tests::mesh::{Pilot, eventually};
use mesh_tests::{Envoy, HttpResponse, Upstream, free_port, http_get};
use pilot_traffic_support::{
    cert_meta, citadel, inbound_sidecar, service_entry, strict_mtls_reviews,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SERVER_IP: &str = "127.0.0.71";
const SERVER: &str = "sidecar~127.0.0.71~reviews-v1-1.default~default.svc.cluster.local";
const ISSUER: &str = "https://issuer.mesh.test";
const WAIT: Duration = Duration::from_secs(20);

// === tokens ===

/// Claims of a token for `sub`, valid for an hour, overridden by `extra`.
fn claims(sub: &str, extra: Value) -> Value {
    jwt::claims(ISSUER, sub, "reviews", extra)
}

// === the issuer's key server ===

/// Serves the key set it holds at any path (503 while it holds none), and at
/// `/.well-known/openid-configuration` a discovery document naming `/jwks`; counts requests.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: Option<String>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let fetches = Arc::new(AtomicU64::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (b, f) = (b.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    let request = String::from_utf8_lossy(&buf);
                    let path = request.split_whitespace().nth(1).unwrap_or("/");
                    let current = if path.ends_with("/.well-known/openid-configuration") {
                        Some(json!({"issuer": format!("http://{addr}"), "jwks_uri": format!("http://{addr}/jwks")}).to_string())
                    } else {
                        b.lock().unwrap().clone()
                    };
                    let (status, text) = match current {
                        Some(t) => ("200 OK", t),
                        None => ("503 Service Unavailable", "down".to_string()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        JwksServer {
            addr,
            body,
            fetches,
            task,
        }
    }

    fn uri(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn set(&self, body: Option<String>) {
        *self.body.lock().unwrap() = body;
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === config ===

fn request_authentication(uri: &str, audience: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [{audience}]
    jwksUri: {uri}
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
"#
    )
}

/// A RequestAuthentication for `issuer` with neither `jwks` nor `jwksUri`.
fn discovered(issuer: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {{name: discovered, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {issuer}
"#
    )
}

fn legacy_policy(uri: &str) -> String {
    format!(
        r#"apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {{name: reviews, namespace: default}}
spec:
  targets: [{{name: reviews}}]
  origins:
  - jwt:
      issuer: {ISSUER}
      audiences: [reviews]
      jwksUri: {uri}
  principalBinding: USE_ORIGIN
"#
    )
}

/// Pilot (refreshing keys every second), the app, and reviews' sidecar.
struct Setup {
    pilot: Pilot,
    envoy: Envoy,
    _app: Upstream,
    inbound: u16,
}

impl Setup {
    async fn start(files: &[(&str, String)]) -> Setup {
        let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let inbound = free_port();
        let entry = format!(
            r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {SERVER_IP}, ports: {{http: {inbound}}}, labels: {{app: reviews, version: v1}}}}
"#
        );
        let mut all = vec![
            ("reviews.yaml", entry),
            (
                "sidecar.yaml",
                inbound_sidecar(SERVER_IP, inbound, app.addr().port()),
            ),
        ];
        all.extend(files.iter().map(|(n, t)| (*n, t.clone())));
        let refs: Vec<(&str, &str)> = all.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let pilot = Pilot::start(&refs, "", &["--jwt-pub-key-refresh-interval", "1s"])
            .await
            .unwrap();
        let envoy = pilot
            .sidecar(
                SERVER,
                &[
                    "--meta",
                    "INTERCEPTION_MODE=NONE",
                    "--label",
                    "app=reviews",
                    "--label",
                    "version=v1",
                ],
            )
            .await
            .unwrap();
        let s = Setup {
            pilot,
            envoy,
            _app: app,
            inbound,
        };
        // Any answer of the sidecar's own (some tests' policies refuse requests without
        // a token).
        eventually("reviews' sidecar", WAIT, || async {
            Ok(s.get("/", None).await?.status.as_u16() < 500)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", s.envoy.logs()));
        s
    }

    async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<HttpResponse> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("host", "reviews:9080")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        http_get(
            &format!("http://{SERVER_IP}:{}{path}", self.inbound),
            &headers,
        )
        .await
    }

    async fn status(&self, token: Option<&str>) -> u16 {
        self.get("/", token).await.unwrap().status.as_u16()
    }

    /// Waits until every `(name, token, status)` answers as said.
    async fn wait_for(&self, what: &str, cases: &[(&str, Option<&str>, u16)]) {
        let last = std::cell::RefCell::new(String::new());
        let r = eventually(what, WAIT, || {
            let last = &last;
            async move {
                let mut ok = true;
                let mut seen = Vec::new();
                for (name, token, want) in cases {
                    let got = self.get("/", *token).await?.status.as_u16();
                    ok &= got == *want;
                    seen.push(format!("{name}: {got} (want {want})"));
                }
                *last.borrow_mut() = seen.join(", ");
                Ok(ok)
            }
        })
        .await;
        if let Err(e) = r {
            panic!("{e:#}\nlast: {}\n{}", last.borrow(), self.envoy.logs());
        }
    }

    /// Asserts Envoy took every config and its Lua filter never failed, then stops it.
    async fn finish(self) {
        for stat in [
            "listener_manager.lds.update_rejected",
            "cluster_manager.cds.update_rejected",
        ] {
            let n = self.envoy.stat(stat).await.unwrap().unwrap_or(0);
            assert_eq!(
                n,
                0,
                "Envoy rejected config ({stat}):\n{}",
                self.envoy.logs()
            );
        }
        let stats = self.envoy.stats().await.unwrap();
        for line in stats.lines().filter(|l| l.contains("lua.errors")) {
            assert!(line.ends_with(": 0"), "{line}\n{}", self.envoy.logs());
        }
        self.envoy.stop().await.unwrap();
    }
}

#[tokio::test]
async fn tokens_are_checked_by_the_workload_sidecar() {
    let key = Signer::new("k1");
    let other = Signer::new("other");
    let jwks = JwksServer::start(Some(jwks_of(&[&key]))).await;
    let s = Setup::start(&[("ra.yaml", request_authentication(&jwks.uri(), "reviews"))]).await;
    assert!(jwks.fetches() >= 1, "Pilot fetched the keys");

    let valid = key.token(&claims("alice", json!({})));
    let expired = key.token(&claims(
        "alice",
        json!({"exp": now() - 3600, "iat": now() - 7200}),
    ));
    let wrong_issuer = key.token(&claims("alice", json!({"iss": "https://evil.example"})));
    let wrong_audience = key.token(&claims("alice", json!({"aud": "ratings"})));
    let bad_signature = other.token(&claims("alice", json!({})));
    assert_eq!(s.status(Some(&valid)).await, 200, "{}", s.envoy.logs());
    assert_eq!(s.status(Some(&expired)).await, 401);
    assert_eq!(s.status(Some(&wrong_issuer)).await, 401);
    // A verified token for another audience is forbidden rather than unauthenticated: Envoy's
    // jwt_authn answers 403 there (envoyproxy/envoy#7679), so Istio does too.
    assert_eq!(s.status(Some(&wrong_audience)).await, 403);
    assert_eq!(s.status(Some(&bad_signature)).await, 401);
    assert_eq!(s.status(Some("not-a-jwt")).await, 401);
    assert_eq!(s.status(None).await, 200, "no token passes");

    // The workload sees the claim header and not the token (forwardOriginalToken unset).
    let echo = s.get("/echo", Some(&valid)).await.unwrap().json().unwrap();
    assert_eq!(echo["headers"]["x-jwt-sub"], "alice", "{echo}");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    s.finish().await;
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_an_unreachable_issuer_keeps_the_last_good_ones() {
    let old = Signer::new("old");
    let new = Signer::new("new");
    let jwks = JwksServer::start(Some(jwks_of(&[&old]))).await;
    let s = Setup::start(&[("ra.yaml", request_authentication(&jwks.uri(), "reviews"))]).await;
    let old_token = old.token(&claims("alice", json!({})));
    let new_token = new.token(&claims("alice", json!({})));
    s.wait_for(
        "the first keys",
        &[
            ("old", Some(&old_token), 200),
            ("new", Some(&new_token), 401),
        ],
    )
    .await;

    // The issuer rotates: after a refresh the new key verifies and the old one no more.
    jwks.set(Some(jwks_of(&[&new])));
    s.wait_for(
        "the rotated keys",
        &[
            ("old", Some(&old_token), 401),
            ("new", Some(&new_token), 200),
        ],
    )
    .await;

    // The issuer goes down: refreshes fail, and the last good keys stay.
    jwks.set(None);
    let before = jwks.fetches();
    eventually("failed refreshes", WAIT, || async {
        Ok(jwks.fetches() >= before + 3)
    })
    .await
    .unwrap();
    assert_eq!(s.status(Some(&new_token)).await, 200, "{}", s.envoy.logs());
    assert_eq!(s.status(Some(&old_token)).await, 401);
    // /debug/jwksz says which keys proxies have and why the last fetch failed.
    let jwksz = s.pilot.debug("/debug/jwksz").await.unwrap();
    assert_eq!(jwksz["uris"][0]["uri"], jwks.uri(), "{jwksz}");
    assert_eq!(jwksz["uris"][0]["kids"], json!(["new"]), "{jwksz}");
    assert!(
        jwksz["uris"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{jwksz}"
    );
    // Counted as Istio counts them.
    let metrics = http_get(&format!("{}/metrics", s.pilot.http_base()), &[])
        .await
        .unwrap()
        .body;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        value("pilot_jwks_resolver_network_fetch_success_total") >= 2,
        "{metrics}"
    );
    assert!(
        value("pilot_jwks_resolver_network_fetch_fail_total") >= 3,
        "{metrics}"
    );
    s.finish().await;
}

#[tokio::test]
async fn keys_never_fetched_refuse_every_token_until_the_issuer_answers() {
    let key = Signer::new("k1");
    let jwks = JwksServer::start(None).await;
    let s = Setup::start(&[("ra.yaml", request_authentication(&jwks.uri(), "reviews"))]).await;
    let valid = key.token(&claims("alice", json!({})));
    // Fail closed for bearers of tokens; requests without one still pass.
    assert_eq!(s.status(Some(&valid)).await, 401);
    assert_eq!(s.status(None).await, 200);
    jwks.set(Some(jwks_of(&[&key])));
    s.wait_for(
        "the keys once the issuer answers",
        &[("valid", Some(&valid), 200), ("none", None, 200)],
    )
    .await;
    s.finish().await;
}

#[tokio::test]
async fn policy_changes_take_effect_and_invalid_ones_are_refused() {
    let key = Signer::new("k1");
    let jwks = JwksServer::start(Some(jwks_of(&[&key]))).await;
    let s = Setup::start(&[("ra.yaml", request_authentication(&jwks.uri(), "reviews"))]).await;
    let valid = key.token(&claims("alice", json!({})));
    let expired = key.token(&claims(
        "alice",
        json!({"exp": now() - 3600, "iat": now() - 7200}),
    ));
    s.wait_for(
        "the first policy",
        &[
            ("valid", Some(&valid), 200),
            ("expired", Some(&expired), 401),
        ],
    )
    .await;

    // An invalid edit is refused, naming the field; the last good policy keeps enforcing.
    let bad = request_authentication(&jwks.uri(), "reviews")
        .replace("    jwksUri:", "    jwks: '{not json'\n    jwksUri:");
    s.pilot.write("ra.yaml", &bad).unwrap();
    eventually("the refusal is reported", WAIT, || async {
        let configz = s.pilot.debug("/debug/configz").await?;
        Ok(configz["errors"].as_array().is_some_and(|errors| {
            errors.iter().any(|e| {
                let e = e.as_str().unwrap_or("");
                e.contains("ra.yaml") && e.contains("spec.jwtRules[0].jwks")
            })
        }))
    })
    .await
    .unwrap();
    assert_eq!(s.status(Some(&valid)).await, 200);
    assert_eq!(s.status(Some(&expired)).await, 401);

    // Another audience: the token for reviews is refused now.
    s.pilot
        .write("ra.yaml", &request_authentication(&jwks.uri(), "ratings"))
        .unwrap();
    s.wait_for("the new audience", &[("valid", Some(&valid), 403)])
        .await;

    // No policy: nothing is checked.
    s.pilot.remove("ra.yaml").unwrap();
    s.wait_for(
        "no policy",
        &[
            ("valid", Some(&valid), 200),
            ("expired", Some(&expired), 200),
        ],
    )
    .await;

    // Istio 1.0's origins with USE_ORIGIN: a token is required.
    s.pilot
        .write("policy.yaml", &legacy_policy(&jwks.uri()))
        .unwrap();
    s.wait_for(
        "the Istio 1.0 policy",
        &[
            ("none", None, 401),
            ("valid", Some(&valid), 200),
            ("expired", Some(&expired), 401),
        ],
    )
    .await;

    // Its trigger rule: /health needs no token (one that is sent is still checked).
    let triggered = legacy_policy(&jwks.uri()).replace(
        "      jwksUri:",
        "      triggerRules: [{excludedPaths: [{exact: /health}]}]\n      jwksUri:",
    );
    s.pilot.write("policy.yaml", &triggered).unwrap();
    eventually("the trigger rule", WAIT, || async {
        Ok(s.get("/health", None).await?.status == 200)
    })
    .await
    .unwrap();
    assert_eq!(s.status(None).await, 401);
    assert_eq!(s.get("/health", Some(&expired)).await.unwrap().status, 401);
    s.finish().await;
}

#[tokio::test]
async fn the_request_principal_and_claims_reach_authorization() {
    let key = Signer::new("k1");
    let jwks = JwksServer::start(Some(jwks_of(&[&key]))).await;
    let authz = format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice"]}}}}]
  - when: [{{key: "request.auth.claims[groups]", values: [admins]}}]
"#
    );
    let s = Setup::start(&[
        ("ra.yaml", request_authentication(&jwks.uri(), "reviews")),
        ("authz.yaml", authz),
    ])
    .await;
    let alice = key.token(&claims("alice", json!({})));
    let bob = key.token(&claims("bob", json!({})));
    let admin = key.token(&claims("carol", json!({"groups": ["staff", "admins"]})));
    s.wait_for(
        "principals and claims",
        &[
            ("alice", Some(&alice), 200),
            ("bob", Some(&bob), 403),
            ("carol (admins)", Some(&admin), 200),
            ("none", None, 403),
        ],
    )
    .await;
    s.finish().await;
}

#[tokio::test]
async fn an_issuer_without_a_jwks_uri_has_its_keys_discovered() {
    let key = Signer::new("k1");
    let other = Signer::new("other");
    let jwks = JwksServer::start(Some(jwks_of(&[&key]))).await;
    let issuer = format!("http://{}", jwks.addr);
    let s = Setup::start(&[("ra.yaml", discovered(&issuer))]).await;
    let valid = key.token(&claims("alice", json!({"iss": issuer})));
    let forged = other.token(&claims("alice", json!({"iss": issuer})));
    assert_eq!(s.status(Some(&valid)).await, 200, "{}", s.envoy.logs());
    assert_eq!(s.status(Some(&forged)).await, 401);
    assert_eq!(s.status(None).await, 200);
    s.finish().await;
}

#[tokio::test]
async fn the_ingress_gateway_checks_tokens() {
    const ROUTER: &str =
        "router~127.0.0.72~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local";
    let key = Signer::new("k1");
    let jwks = JwksServer::start(Some(jwks_of(&[&key]))).await;
    let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = free_port();
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: ingress}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: ["*"]
  gateways: [ingress]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]
"#
    );
    let ra = request_authentication(&jwks.uri(), "reviews")
        .replace("namespace: default", "namespace: istio-system")
        .replace("app: reviews", "istio: ingressgateway");
    let pilot = Pilot::start(
        &[
            (
                "reviews.yaml",
                &service_entry("reviews", &[(app.addr(), "v1")]),
            ),
            ("gateway.yaml", &gateway),
            ("ra.yaml", &ra),
        ],
        "",
        &["--jwt-pub-key-refresh-interval", "1s"],
    )
    .await
    .unwrap();
    let envoy = pilot
        .sidecar(ROUTER, &["--label", "istio=ingressgateway"])
        .await
        .unwrap();
    let get = |token: Option<String>| async move {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("host", "bookinfo.example.com")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        http_get(&format!("http://127.0.0.1:{port}/"), &headers)
            .await
            .map(|r| r.status.as_u16())
    };
    let valid = key.token(&claims("alice", json!({})));
    let expired = key.token(&claims(
        "alice",
        json!({"exp": now() - 3600, "iat": now() - 7200}),
    ));
    eventually("the gateway routes", WAIT, || async {
        Ok(get(None).await? == 200)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.logs()));
    assert_eq!(get(Some(valid)).await.unwrap(), 200, "{}", envoy.logs());
    assert_eq!(get(Some(expired)).await.unwrap(), 401);
    envoy.stop().await.unwrap();
}

#[tokio::test]
async fn an_istio_1_0_mesh_policy_sets_mutual_tls() {
    const SERVER_IP: &str = "127.0.0.73";
    const SERVER: &str = "sidecar~127.0.0.73~reviews-v1-1.default~default.svc.cluster.local";
    const CLIENT: &str = "sidecar~127.0.0.74~productpage-1.default~default.svc.cluster.local";
    let mesh_policy = |mtls: &str| {
        format!(
            "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: default}}\nspec:\n  peers: [{{mtls: {mtls}}}]\n"
        )
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_citadel, secrets) = citadel(tmp.path()).await;
    let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let inbound = free_port();
    // The mutual TLS mesh of the PeerAuthentication tests, the MeshPolicy instead.
    let mut files: Vec<(&str, String)> = strict_mtls_reviews(SERVER_IP, inbound, app.addr().port())
        .into_iter()
        .filter(|(name, _)| *name != "peer.yaml")
        .collect();
    files.push(("mesh-policy.yaml", mesh_policy("{}")));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let pilot = Pilot::start(&refs, "", &[]).await.unwrap();
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
    args.extend(cert_meta(&secrets, "productpage", "CLIENT"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = pilot.sidecar(CLIENT, &refs).await.unwrap();
    let mut args: Vec<String> = ["--meta", "INTERCEPTION_MODE=NONE", "--label", "app=reviews"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(cert_meta(&secrets, "reviews", "SERVER"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = pilot.sidecar(SERVER, &refs).await.unwrap();

    let through_mesh = || async {
        http_get(
            &format!("http://127.0.0.1:{port}/"),
            &[("host", "reviews:9080")],
        )
        .await
    };
    let plain = || async {
        http_get(
            &format!("http://{SERVER_IP}:{inbound}/"),
            &[("host", "reviews:9080")],
        )
        .await
    };
    eventually("mutual TLS through both sidecars", WAIT, || async {
        Ok(through_mesh().await?.status == 200)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nclient:\n{}\nserver:\n{}",
            client.logs(),
            server.logs()
        )
    });
    // STRICT: plain text to the workload's port is refused.
    assert!(
        plain().await.is_err(),
        "plain text passed a STRICT MeshPolicy"
    );

    // PERMISSIVE: both.
    pilot
        .write("mesh-policy.yaml", &mesh_policy("{mode: PERMISSIVE}"))
        .unwrap();
    eventually("plain text under PERMISSIVE", WAIT, || async {
        Ok(plain().await?.status == 200)
    })
    .await
    .unwrap();
    assert_eq!(through_mesh().await.unwrap().status, 200);
    client.stop().await.unwrap();
    server.stop().await.unwrap();
}
