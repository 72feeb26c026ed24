//! ISTIO_MUTUAL certificates that rotate in place: Citadel (file mode, 30 s certificates)
//! rotates the secrets of `productpage` and `reviews` while a client sidecar sends requests
//! to reviews' STRICT sidecar. Pilot serves the certificates as SDS secrets over ADS, each
//! naming the files and their directory as `watched_directory`, so both Envoys load every new
//! certificate without a config change: no request fails, and Envoy's `/certs` shows each new
//! serial while CDS and LDS stay as they were.

mod pilot_traffic_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mesh_tests::mesh::{Pilot, eventually, via_proxy};
use mesh_tests::{Envoy, Service, Upstream, free_port};
use pilot_traffic_support::{cert_meta, envoy_serials};
use serde_json::Value;

const CLIENT: &str = "sidecar~127.0.0.40~productpage-1.default~default.svc.cluster.local";
const SERVER_IP: &str = "127.0.0.42";
const SERVER: &str = "sidecar~127.0.0.42~reviews-v1-1.default~default.svc.cluster.local";
const HOST: &str = "reviews:9080";
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(30);

fn config(inbound: u16, app: u16) -> Vec<(&'static str, String)> {
    pilot_traffic_support::strict_mtls_reviews(SERVER_IP, inbound, app)
}

/// Citadel in file mode with 30 s certificates, rotated when less than half the TTL is left
/// (about every 11-15 s, as in `citadel_envoy_mtls`), and the secrets directory.
async fn citadel(tmp: &Path) -> (Service, PathBuf) {
    let fast = [
        "--workload-cert-ttl",
        "30s",
        "--workload-cert-min-grace-period",
        "1s",
        "--secret-resync-period",
        "1s",
    ];
    pilot_traffic_support::citadel_with(tmp, &fast).await
}

/// The serial of the leaf in `secret/cert-chain.pem`, per openssl, in the same form; `None`
/// while the file is being replaced.
fn file_serial(secret: &Path) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(secret.join("cert-chain.pem"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.trim()
            .trim_start_matches("serial=")
            .trim_start_matches('0')
            .to_ascii_lowercase(),
    )
}

/// What a side saw: the serials its files held, in order, and those its Envoy presented.
#[derive(Default)]
struct Seen {
    files: Vec<String>,
    envoy: BTreeSet<String>,
}

// === impl Seen ===

impl Seen {
    async fn poll(&mut self, secret: &Path, envoy: &Envoy) {
        if let Some(s) = file_serial(secret)
            && self.files.last() != Some(&s)
        {
            self.files.push(s);
        }
        self.envoy.extend(envoy_serials(envoy).await);
    }

    fn rotations(&self) -> usize {
        self.files.len().saturating_sub(1)
    }

    /// The file serials Envoy has not presented yet.
    fn missing(&self) -> Vec<&String> {
        self.files
            .iter()
            .filter(|s| !self.envoy.contains(*s))
            .collect()
    }
}

/// A counter of `envoy`, 0 when absent.
async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).await.unwrap().unwrap_or(0)
}

/// The counters that move when Envoy gets new clusters or listeners.
async fn config_updates(envoy: &Envoy) -> (u64, u64) {
    (
        stat(envoy, "cluster_manager.cds.update_attempt").await,
        stat(envoy, "listener_manager.lds.update_attempt").await,
    )
}

#[tokio::test]
async fn istio_mutual_certificates_rotate_in_place_over_sds() {
    rotate_in_place(false).await;
}

#[tokio::test]
async fn istio_mutual_certificates_rotate_in_place_over_delta_sds() {
    rotate_in_place(true).await;
}

/// Both sidecars on state-of-the-world or delta ADS.
async fn rotate_in_place(delta: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (citadel, secrets) = citadel(tmp.path()).await;
    let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let inbound = free_port();
    let files = config(inbound, app.addr().port());
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let pilot = Pilot::start(&files, "", &[]).await.unwrap();
    let port = free_port();
    let mut args = vec![
        "--meta".to_string(),
        "INTERCEPTION_MODE=NONE".into(),
        "--meta".into(),
        format!("PROXY_HTTP_PORT={port}"),
        "--label".into(),
        "app=productpage".into(),
    ];
    let protocol: &[String] = if delta { &["--delta".to_string()] } else { &[] };
    args.extend_from_slice(protocol);
    args.extend(cert_meta(&secrets, "productpage", "CLIENT"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = pilot.sidecar(CLIENT, &refs).await.unwrap();
    let mut args = vec![
        "--meta".to_string(),
        "INTERCEPTION_MODE=NONE".into(),
        "--label".into(),
        "app=reviews".into(),
    ];
    // The server's own files only for inbound: its secrets get Istio's file-mounted names.
    args.extend_from_slice(protocol);
    args.extend(cert_meta(&secrets, "reviews", "SERVER"));
    // Its Sidecar declares no egress, so it has outbound clusters (ISTIO_MUTUAL) too, whose
    // client files would be Istio's /etc/certs, absent here.
    args.extend(cert_meta(&secrets, "reviews", "CLIENT"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = pilot.sidecar(SERVER, &refs).await.unwrap();

    eventually("mutual TLS through both sidecars", WAIT, || async {
        let r = via_proxy(port, HOST, "/").await?;
        anyhow::ensure!(r.status == 200, "{} {:?}", r.status, r.body);
        Ok(true)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nclient:\n{}\nserver:\n{}",
            client.logs(),
            server.logs()
        )
    });

    // The TLS contexts name SDS secrets, not files; the secrets name the files and watch
    // their directory.
    let dump = client.config_dump(false).await.unwrap();
    let clusters = dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|s| s["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        })
        .map(Value::to_string)
        .unwrap_or_default();
    assert!(clusters.contains("\"ROOTCA\""), "{clusters}");
    assert!(!clusters.contains("cert-chain.pem"), "{clusters}");
    let secrets_dump = dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|s| s["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump")
        })
        .map(Value::to_string)
        .unwrap_or_default();
    let client_dir = secrets.join("default/istio.productpage");
    for want in [
        "\"default\"".to_string(),
        "\"ROOTCA\"".to_string(),
        format!("\"{}\"", client_dir.display()),
    ] {
        assert!(secrets_dump.contains(&want), "no {want} in {secrets_dump}");
    }
    // Pilot's view: secrets ACKed like the rest, and shown in its config dump.
    let syncz = pilot.debug("/debug/syncz").await.unwrap();
    let conns = syncz.as_array().unwrap();
    assert_eq!(conns.len(), 2, "{syncz}");
    for conn in conns {
        assert_eq!(conn["delta"], delta, "{syncz}");
        assert_eq!(conn["types"]["sds"]["status"], "SYNCED", "{syncz}");
    }
    let pilot_dump = pilot
        .debug(&format!("/debug/config_dump?proxyID={CLIENT}"))
        .await
        .unwrap()
        .to_string();
    assert!(
        pilot_dump.contains("SecretsConfigDump") && pilot_dump.contains("watchedDirectory"),
        "{pilot_dump}"
    );

    // Traffic while both secrets rotate at least twice.
    let server_secret = secrets.join("default/istio.reviews");
    let before = (config_updates(&client).await, config_updates(&server).await);
    let (mut client_seen, mut server_seen) = (Seen::default(), Seen::default());
    let (mut ok, mut failed) = (0u64, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while client_seen.rotations() < 2 || server_seen.rotations() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {}/{} rotations in 120 s; citadel log:\n{}",
            client_seen.rotations(),
            server_seen.rotations(),
            citadel.logs()
        );
        match via_proxy(port, HOST, "/").await {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
            Err(e) => failed.push(e.to_string()),
        }
        client_seen.poll(&client_dir, &client).await;
        server_seen.poll(&server_secret, &server).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The watch catches the last rotation within moments.
    let last = Instant::now() + WAIT;
    while !(client_seen.missing().is_empty() && server_seen.missing().is_empty())
        && Instant::now() < last
    {
        client_seen.envoy.extend(envoy_serials(&client).await);
        server_seen.envoy.extend(envoy_serials(&server).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    assert!(ok > 100, "only {ok} requests");
    assert_eq!(
        client_seen.missing(),
        Vec::<&String>::new(),
        "the client Envoy never presented these; it did {:?}",
        client_seen.envoy
    );
    assert_eq!(
        server_seen.missing(),
        Vec::<&String>::new(),
        "the server Envoy never presented these; it did {:?}",
        server_seen.envoy
    );
    // No config change brought them: neither Envoy got clusters or listeners meanwhile.
    let after = (config_updates(&client).await, config_updates(&server).await);
    assert_eq!(before, after, "CDS/LDS updates during the rotations");

    for (envoy, tls_stats) in [
        (&client, format!("cluster.{CLUSTER}.ssl")),
        (&server, format!("listener.{SERVER_IP}_{inbound}.ssl")),
    ] {
        assert!(stat(envoy, &format!("{tls_stats}.handshake")).await >= 1);
        for n in ["connection_error", "fail_verify_error", "fail_verify_san"] {
            assert_eq!(stat(envoy, &format!("{tls_stats}.{n}")).await, 0, "{n}");
        }
        for s in [
            "cluster_manager.cds.update_rejected",
            "listener_manager.lds.update_rejected",
        ] {
            assert_eq!(stat(envoy, s).await, 0, "{s}:\n{}", envoy.logs());
        }
    }
    assert_eq!(stat(&client, "sds.default.update_rejected").await, 0);
    assert_eq!(stat(&client, "sds.ROOTCA.update_rejected").await, 0);

    client.stop().await.unwrap();
    server.stop().await.unwrap();
    pilot.service.stop().await.unwrap();
    citadel.stop().await.unwrap();
    app.stop().await;
}
