//! Gateways and Sidecar scoping through real Envoy: an ingress gateway (a `router` proxy picked
//! by its labels) routes external HTTP and HTTPS requests and redirects to HTTPS; a Sidecar
//! resource narrows what a proxy can reach and sets its outbound traffic policy.

mod pilot_traffic_support;

use std::path::Path;
use std::process::Command;

use mesh_tests::free_port;
use mesh_tests::mesh::{Pilot, eventually};
use pilot_traffic_support::{Mesh, WAIT, service_entry, upstream};

const ROUTER: &str =
    "router~127.0.0.40~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local";

/// A self-signed certificate for `host`, as (cert, key) files in `dir`.
fn certificate(dir: &Path, host: &str) -> (String, String) {
    let cert = dir.join(format!("{host}.pem"));
    let key = dir.join(format!("{host}-key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .output()
        .expect("run openssl");
    assert!(status.status.success(), "{status:?}");
    (cert.display().to_string(), key.display().to_string())
}

/// GET over HTTPS with curl: (status, body), or curl's error.
fn curl_https(host: &str, port: u16, ca: &str, path: &str) -> Result<(u16, String), String> {
    curl_https_as(host, port, ca, path, None)
}

/// Like [`curl_https`], presenting a client certificate `(cert, key)` when given.
fn curl_https_as(
    host: &str,
    port: u16,
    ca: &str,
    path: &str,
    client: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    let mut cmd = Command::new("curl");
    if let Some((cert, key)) = client {
        cmd.args(["--cert", cert, "--key", key]);
    }
    let out = cmd
        .args(["-sS", "--max-time", "5", "--cacert", ca, "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or("no status")?;
    Ok((
        code.trim().parse().map_err(|_| text.clone())?,
        body.to_string(),
    ))
}

#[tokio::test]
async fn the_ingress_gateway_routes_external_requests() {
    let reviews = upstream("reviews-v1").await;
    let ratings = upstream("ratings-v1").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "secure.example.com");
    let (client_cert, client_key) = certificate(dir.path(), "client.example.com");
    let (http, redirect, https, passthrough, mutual) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {redirect}, name: http-redirect, protocol: HTTP}}
    hosts: [secure.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: {https}, name: https, protocol: HTTPS}}
    hosts: [secure.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {passthrough}, name: tls, protocol: TLS}}
    hosts: [secure.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {mutual}, name: https-mutual, protocol: HTTPS}}
    hosts: [secure.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {client_cert}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: other-gateway
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {http}, name: http, protocol: HTTP}}
    hosts: ["*"]
"#
    );
    let backend = format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: backend\nspec:\n  hosts: [backend.tls.internal]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: 8443, name: tls, protocol: TLS}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tls: {https}}}}}]\n"
    );
    let routes = r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: secure
spec:
  hosts: [secure.example.com]
  gateways: [bookinfo-gateway]
  http:
  - route: [{destination: {host: ratings}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: passthrough
spec:
  hosts: [secure.example.com]
  gateways: [bookinfo-gateway]
  tls:
  - match: [{sniHosts: [secure.example.com]}]
    route: [{destination: {host: backend.tls.internal, port: {number: 8443}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: mesh-only
spec:
  hosts: [ratings]
  http:
  - directResponse: {status: 418}
"#;
    let pilot = Pilot::start(
        &[
            (
                "reviews.yaml",
                &service_entry("reviews", &[(reviews.addr(), "v1")]),
            ),
            (
                "ratings.yaml",
                &service_entry("ratings", &[(ratings.addr(), "v1")]),
            ),
            ("gateway.yaml", &gateway),
            // The passthrough server's backend: the gateway's own HTTPS port, so the TLS
            // that passes through is terminated there.
            ("backend.yaml", &backend),
            ("vs.yaml", routes),
        ],
        "",
        &[],
    )
    .await
    .unwrap();
    let envoy = pilot
        .sidecar(ROUTER, &["--label", "istio=ingressgateway"])
        .await
        .unwrap();
    let get = |port: u16, host: &'static str, path: &'static str| async move {
        mesh_tests::http_get(&format!("http://127.0.0.1:{port}{path}"), &[("host", host)]).await
    };
    eventually("the gateway routes", WAIT, || async {
        Ok(get(http, "bookinfo.example.com", "/reviews").await?.status == 200)
    })
    .await
    .unwrap();
    let r = get(http, "bookinfo.example.com", "/reviews/1")
        .await
        .unwrap();
    assert_eq!(r.body, "reviews-v1\n");
    // Only routes bound to the gateway: the mesh-only VirtualService does not apply, and a
    // path without a route is a 404.
    let r = get(http, "bookinfo.example.com", "/other").await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");

    // httpsRedirect: a redirect to the same host over HTTPS.
    let r = get(redirect, "secure.example.com", "/x").await.unwrap();
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("https://secure.example.com/x"));

    // TLS SIMPLE with the certificate from files: the secure host's own route.
    // curl blocks: off the runtime, which also serves the upstreams.
    let ca = cert.clone();
    let (code, body) =
        tokio::task::spawn_blocking(move || curl_https("secure.example.com", https, &ca, "/"))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("curl: {e}\n{}", envoy.logs()));
    assert_eq!((code, body.as_str()), (200, "ratings-v1\n"));

    // TLS PASSTHROUGH: routed by SNI, untouched, to the backend (which terminates it).
    let ca = cert.clone();
    let (code, body) = tokio::task::spawn_blocking(move || {
        curl_https("secure.example.com", passthrough, &ca, "/")
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("curl: {e}\n{}", envoy.logs()));
    assert_eq!((code, body.as_str()), (200, "ratings-v1\n"));

    // TLS MUTUAL: only a client with a certificate the CA file trusts gets through.
    let (ca, cc, ck) = (cert.clone(), client_cert.clone(), client_key.clone());
    let with_cert = tokio::task::spawn_blocking(move || {
        curl_https_as("secure.example.com", mutual, &ca, "/", Some((&cc, &ck)))
    })
    .await
    .unwrap();
    assert_eq!(with_cert, Ok((200, "ratings-v1\n".to_string())));
    let ca = cert.clone();
    let without =
        tokio::task::spawn_blocking(move || curl_https("secure.example.com", mutual, &ca, "/"))
            .await
            .unwrap();
    assert!(without.is_err(), "no client certificate, yet {without:?}");

    let rejected = envoy
        .stat("listener_manager.lds.update_rejected")
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(rejected, 0, "{}", envoy.logs());
    envoy.stop().await.unwrap();
}

#[tokio::test]
async fn a_sidecar_resource_scopes_egress_and_sets_registry_only() {
    let reviews = upstream("reviews-v1").await;
    let ratings = upstream("ratings-v1").await;
    let sidecar = r#"apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata:
  name: productpage
spec:
  workloadSelector:
    labels: {app: productpage}
  egress:
  - hosts: ["./reviews.default.svc.cluster.local"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;
    let mesh = Mesh::start_with(
        &[
            (
                "reviews.yaml",
                &service_entry("reviews", &[(reviews.addr(), "v1")]),
            ),
            (
                "ratings.yaml",
                &service_entry("ratings", &[(ratings.addr(), "v1")]),
            ),
        ],
        "",
        &["app=productpage"],
    )
    .await;
    mesh.wait_for("ratings:9080", "/", &[], "200 ratings-v1")
        .await;

    mesh.pilot.write("sidecar.yaml", sidecar).unwrap();
    // Out of scope and REGISTRY_ONLY: blocked (the black hole answers 502), as is a host
    // outside the registry.
    eventually("ratings is out of scope", WAIT, || async {
        Ok(mesh.get("ratings:9080", "/", &[]).await?.status == 502)
    })
    .await
    .unwrap();
    let before = ratings.requests();
    let c = mesh.count("ratings:9080", "/", &[], 5).await.unwrap();
    assert_eq!(c.get("502 "), Some(&5), "{c:?}");
    assert_eq!(
        ratings.requests(),
        before,
        "blocked requests reached ratings"
    );
    let r = mesh.get("unknown.example.com", "/", &[]).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    let c = mesh.count("reviews:9080", "/", &[], 5).await.unwrap();
    assert_eq!(c.get("200 reviews-v1"), Some(&5), "{c:?}");
    // Only what is in scope is in Envoy's config, and unknown hosts go to the black hole.
    let dump = mesh.envoy.config_dump(false).await.unwrap().to_string();
    assert!(!dump.contains("outbound|9080||ratings.default.svc.cluster.local"));
    assert!(
        dump.contains("block_all"),
        "REGISTRY_ONLY catch-all missing"
    );
    mesh.finish().await;
}

#[tokio::test]
async fn a_mesh_external_dns_service_entry_reaches_its_endpoint() {
    let ext = upstream("external").await;
    let entry = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: external
spec:
  hosts: [external.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {}}}}}]
"#,
        ext.addr().port()
    );
    let mesh = Mesh::start(&[("external.yaml", &entry)]).await;
    mesh.wait_for("external.example.com", "/", &[], "200 external")
        .await;
    let c = mesh
        .count("external.example.com", "/", &[], 5)
        .await
        .unwrap();
    assert_eq!(c.get("200 external"), Some(&5), "{c:?}");
    mesh.finish().await;
}

#[tokio::test]
async fn sidecar_ingress_listeners_forward_to_their_default_endpoint() {
    let app = upstream("productpage-app").await;
    let port = free_port();
    let sidecar = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata:
  name: productpage
spec:
  workloadSelector:
    labels: {{app: productpage}}
  ingress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    defaultEndpoint: 127.0.0.1:{}
"#,
        app.addr().port()
    );
    let mesh = Mesh::start_with(&[("sidecar.yaml", &sidecar)], "", &["app=productpage"]).await;
    eventually("the ingress listener forwards", WAIT, || async {
        let r = mesh_tests::http_get(&format!("http://127.0.0.1:{port}/"), &[]).await?;
        Ok(r.status == 200 && r.body == "productpage-app\n")
    })
    .await
    .unwrap();
    let r = mesh_tests::http_get(&format!("http://127.0.0.1:{port}/echo"), &[])
        .await
        .unwrap();
    assert_eq!(r.json().unwrap()["upstream"], "productpage-app");
    mesh.finish().await;
}

const EGRESS: &str =
    "router~127.0.0.41~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local";

/// Istio's egress gateway pattern: a ServiceEntry for an external host, a Gateway on the
/// egress gateway for it, and a VirtualService that sends the mesh's requests for the host to
/// the gateway and the gateway's to the host.
#[tokio::test]
async fn an_egress_gateway_carries_the_mesh_traffic_to_an_external_host() {
    let ext = upstream("external").await;
    let gw_port = free_port();
    let config = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: external}}
spec:
  hosts: [external.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {ext}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.41, ports: {{http: {gw_port}}}, labels: {{istio: egressgateway}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {gw_port}, name: http, protocol: HTTP}}
    hosts: [external.example.com]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: external-through-egress}}
spec:
  hosts: [external.example.com]
  gateways: [mesh, istio-system/istio-egressgateway]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}
  - match: [{{gateways: [istio-system/istio-egressgateway], port: {gw_port}}}]
    route:
    - destination: {{host: external.example.com, port: {{number: 80}}}}
"#,
        ext = ext.addr().port()
    );
    let mesh = Mesh::start(&[("egress.yaml", &config)]).await;
    let gateway = mesh
        .pilot
        .sidecar(
            EGRESS,
            &[
                "--meta",
                "INTERCEPTION_MODE=NONE",
                "--label",
                "istio=egressgateway",
            ],
        )
        .await
        .unwrap();
    mesh.wait_for("external.example.com", "/", &[], "200 external")
        .await;
    let before = ext.requests();
    let c = mesh
        .count("external.example.com", "/", &[], 10)
        .await
        .unwrap();
    assert_eq!(c.get("200 external"), Some(&10), "{c:?}");
    assert_eq!(ext.requests() - before, 10);
    // Every request went sidecar -> egress gateway -> external host.
    let via_gateway = mesh
        .envoy
        .stat("cluster.outbound|80||istio-egressgateway.istio-system.svc.cluster.local.upstream_rq_total")
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        via_gateway >= 10,
        "sidecar sent {via_gateway} to the gateway"
    );
    let to_external = gateway
        .stat("cluster.outbound|80||external.example.com.upstream_rq_total")
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(to_external >= 10, "gateway sent {to_external} to the host");
    let direct = mesh
        .envoy
        .stat("cluster.outbound|80||external.example.com.upstream_rq_total")
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(direct, 0, "the sidecar went to the external host itself");

    // Without the gateway there is no way out.
    gateway.stop().await.unwrap();
    let c = mesh
        .count("external.example.com", "/", &[], 3)
        .await
        .unwrap();
    assert!(
        c.keys().all(|k| k.starts_with("503")),
        "reached the host without the gateway: {c:?}"
    );
    assert_eq!(ext.requests() - before, 10);
    mesh.finish().await;
}
