//! Two real Envoys doing mutual TLS with Citadel's certificates, loaded from the secret files
//! Citadel writes in file mode (`OUT/<ns>/istio.<sa>/`) through file-based SDS with a
//! `watched_directory`, keep serving traffic across several rotations with zero failed
//! handshakes.
//!
//! ```text
//! http_get -> client Envoy :C --(mTLS, a new connection per request)--> server Envoy :S -> upstream
//!             cert of sa/client, expects sa/server           cert of sa/server, expects sa/client
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_tests::{Envoy, Service, Upstream, free_port, http_get};
use serde_json::{Value, json};

const TD: &str = "cluster.local";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// Writes the file-based SDS resources of one secret directory: `cert` (chain and key, read
/// together when Citadel swaps `..data`) and `ca` (the root, and the peer's SPIFFE id to
/// expect). Returns the two SDS config sources.
fn sds_files(dir: &Path, secret: &Path, peer: &str) -> (Value, Value) {
    let file = |f: &str| secret.join(f).display().to_string();
    let watched = json!({ "path": secret.display().to_string() });
    let cert = json!({ "resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "cert",
        "tls_certificate": {
            "certificate_chain": { "filename": file("cert-chain.pem") },
            "private_key": { "filename": file("key.pem") },
            "watched_directory": watched,
        },
    }]});
    let ca = json!({ "resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "ca",
        "validation_context": {
            "trusted_ca": { "filename": file("root-cert.pem") },
            "watched_directory": watched,
            "match_typed_subject_alt_names": [{
                "san_type": "URI",
                "matcher": { "exact": peer },
            }],
        },
    }]});
    let cert_path = dir.join("sds-cert.json");
    let ca_path = dir.join("sds-ca.json");
    std::fs::write(&cert_path, cert.to_string()).unwrap();
    std::fs::write(&ca_path, ca.to_string()).unwrap();
    let source = |p: &Path| {
        json!({
            "resource_api_version": "V3",
            "path_config_source": { "path": p.display().to_string() },
        })
    };
    (source(&cert_path), source(&ca_path))
}

fn common_tls(cert: Value, ca: Value) -> Value {
    json!({
        "tls_certificate_sds_secret_configs": [{ "name": "cert", "sds_config": cert }],
        "validation_context_sds_secret_config": { "name": "ca", "sds_config": ca },
    })
}

fn hcm(route_cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http",
            "route_config": { "name": "local", "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": route_cluster } }],
            }]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
            }],
        },
    })
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": port,
            }}}}]}],
        },
    })
}

/// The server side: mTLS listener on `port` (client certificate required, SAN sa/client).
fn server_bootstrap(dir: &Path, secret: &Path, port: u16, upstream: u16) -> Value {
    let (cert, ca) = sds_files(dir, secret, &spiffe("client"));
    json!({
        "node": { "id": "server", "cluster": "server" },
        "static_resources": {
            "listeners": [{
                "name": "mtls",
                "stat_prefix": "mtls",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                "filter_chains": [{
                    "filters": [hcm("backend")],
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": common_tls(cert, ca),
                        },
                    },
                }],
            }],
            "clusters": [static_cluster("backend", upstream)],
        },
    })
}

/// The client side: plain HTTP on `port`, to the server over mTLS (SAN sa/server), one
/// request per connection so that every request is a fresh handshake.
fn client_bootstrap(dir: &Path, secret: &Path, port: u16, server: u16) -> Value {
    let (cert, ca) = sds_files(dir, secret, &spiffe("server"));
    let mut cluster = static_cluster("server", server);
    cluster["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "server.default",
            "common_tls_context": common_tls(cert, ca),
        },
    });
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": { "max_requests_per_connection": 1 },
            "explicit_http_config": { "http_protocol_options": {} },
        },
    });
    json!({
        "node": { "id": "client", "cluster": "client" },
        "static_resources": {
            "listeners": [{
                "name": "http",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                "filter_chains": [{ "filters": [hcm("server")] }],
            }],
            "clusters": [cluster],
        },
    })
}

/// The serial of the certificate Envoy uses for `cert`, from `/certs`.
async fn envoy_serials(envoy: &Envoy) -> Vec<String> {
    let certs = envoy.admin_get("/certs").await.unwrap().json().unwrap();
    let mut serials = Vec::new();
    for c in certs["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for chain in c["cert_chain"].as_array().cloned().unwrap_or_default() {
            if let Some(s) = chain["serial_number"].as_str() {
                serials.push(s.to_ascii_lowercase());
            }
        }
    }
    serials
}

/// The serial of the leaf in `dir/cert-chain.pem`, per openssl, lower-case hex.
fn file_serial(secret: &Path) -> String {
    let out = std::process::Command::new("/usr/bin/openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(secret.join("cert-chain.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_ascii_lowercase()
}

#[tokio::test]
async fn envoys_keep_mtls_across_rotations_without_failed_handshakes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let yaml = ["client", "server"]
        .iter()
        .map(|sa| {
            format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: default\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(config.join("accounts.yaml"), yaml).unwrap();
    let out = tmp.path().join("out");
    // 30 s certificates rotated when less than half the TTL is left (the default ratio; the
    // one-minute notBefore backdate does not count): about every 11-15 s.
    let args = [
        "--config-dir".to_string(),
        config.display().to_string(),
        "--secret-dir".into(),
        out.display().to_string(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--workload-cert-ttl".into(),
        "30s".into(),
        "--workload-cert-min-grace-period".into(),
        "1s".into(),
        "--secret-resync-period".into(),
        "1s".into(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut citadel = Service::start("citadel", &refs).await.unwrap();
    citadel.wait_ready(Duration::from_secs(60)).await.unwrap();
    let client_secret = out.join("default/istio.client");
    let server_secret = out.join("default/istio.server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(client_secret.join("key.pem").exists() && server_secret.join("key.pem").exists()) {
        assert!(Instant::now() < deadline, "no secrets:\n{}", citadel.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let upstream = Upstream::start("backend", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (server_port, client_port) = (free_port(), free_port());
    let server = Envoy::start(server_bootstrap(
        tmp.path(),
        &server_secret,
        server_port,
        upstream.addr().port(),
    ))
    .await
    .unwrap();
    let sds_dir = tmp.path().join("client-sds");
    std::fs::create_dir_all(&sds_dir).unwrap();
    let client = Envoy::start(client_bootstrap(
        &sds_dir,
        &client_secret,
        client_port,
        server_port,
    ))
    .await
    .unwrap();

    // Traffic until both secrets have rotated at least three times.
    let chain = |p: &Path| std::fs::read_to_string(p.join("cert-chain.pem")).unwrap_or_default();
    let (mut last_client, mut last_server) = (chain(&client_secret), chain(&server_secret));
    let (mut client_rotations, mut server_rotations) = (0, 0);
    let (mut ok, mut failed) = (0u64, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    while client_rotations < 3 || server_rotations < 3 {
        assert!(
            Instant::now() < deadline,
            "only {client_rotations}/{server_rotations} rotations in 90 s; citadel log:\n{}",
            citadel.logs()
        );
        match http_get(&format!("http://127.0.0.1:{client_port}/"), &[]).await {
            Ok(r) if r.status.is_success() && r.body == "backend\n" => ok += 1,
            Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
            Err(e) => failed.push(e.to_string()),
        }
        let (c, s) = (chain(&client_secret), chain(&server_secret));
        if !c.is_empty() && c != last_client {
            client_rotations += 1;
            last_client = c;
        }
        if !s.is_empty() && s != last_server {
            server_rotations += 1;
            last_server = s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\nserver envoy:\n{}\nclient envoy:\n{}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)],
        server.logs(),
        client.logs()
    );
    assert!(ok > 100, "only {ok} requests");

    // Every request was a fresh, successful mutual TLS handshake; none failed.
    let server_stat = |n: &str| format!("listener.mtls.ssl.{n}");
    let handshakes = server.stat(&server_stat("handshake")).await.unwrap();
    assert!(handshakes.unwrap_or(0) >= ok, "{handshakes:?} handshakes");
    let client_handshakes = client.stat("cluster.server.ssl.handshake").await.unwrap();
    assert!(
        client_handshakes.unwrap_or(0) >= ok,
        "{client_handshakes:?}"
    );
    for n in [
        "connection_error",
        "fail_verify_error",
        "fail_verify_san",
        "fail_verify_no_cert",
        "fail_verify_cert_hash",
    ] {
        assert_eq!(
            server.stat(&server_stat(n)).await.unwrap().unwrap_or(0),
            0,
            "server {n}"
        );
        assert_eq!(
            client
                .stat(&format!("cluster.server.ssl.{n}"))
                .await
                .unwrap()
                .unwrap_or(0),
            0,
            "client {n}"
        );
    }

    // Both Envoys picked up the rotated certificates: what they serve is what is on disk now
    // (give the watch a moment to catch the very last rotation).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let server_serials = envoy_serials(&server).await;
        let client_serials = envoy_serials(&client).await;
        let (s, c) = (file_serial(&server_secret), file_serial(&client_secret));
        if server_serials
            .iter()
            .any(|x| x.trim_start_matches('0') == s)
            && client_serials
                .iter()
                .any(|x| x.trim_start_matches('0') == c)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy serves {server_serials:?} / {client_serials:?}, files hold {s} / {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    client.stop().await.unwrap();
    server.stop().await.unwrap();
    upstream.stop().await;
    citadel.stop().await.unwrap();
}
