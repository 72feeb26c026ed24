//! `pilot-agent proxy sidecar` as a real process, with the real Envoy it runs and a real Pilot
//! (file mode): readiness (503 until Envoy has clusters and listeners from Pilot, then 200),
//! the node id from the Downward API environment, a request routed through the sidecar,
//! Envoy killed and restarted, SIGTERM drained to exit 0 with Envoy gone, Pilot and Citadel
//! unreachable without the agent failing, and the default certificate mode: a CSR to a real
//! Citadel, served over SDS to Envoy, carrying mutual TLS between two agent-run sidecars.
//!
//! No interception: the sidecars say `INTERCEPTION_MODE=NONE`; the client gets an HTTP proxy
//! port (`PROXY_HTTP_PORT`) and the server an inbound listener from a `Sidecar` resource.

mod pilot_traffic_support;

use std::time::{Duration, Instant};

use mesh_tests::agent::{alive, signal};
use mesh_tests::mesh::{Pilot, eventually, via_proxy};
use mesh_tests::{Agent, AgentOptions, Upstream, free_port};
use pilot_traffic_support::{service_entry, strict_mtls_reviews, upstream};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const LABELS: &str = r#"{"app":"productpage"}"#;

/// The client sidecar of `productpage`, with an HTTP proxy port.
async fn client(discovery: &str, ip: &str, port: u16, args: &[&str]) -> Agent {
    let port = port.to_string();
    Agent::start(AgentOptions {
        role: "sidecar",
        discovery,
        pod: "productpage-1",
        namespace: "default",
        ip,
        args,
        env: &[
            ("ISTIO_META_INTERCEPTION_MODE", "NONE"),
            ("ISTIO_META_PROXY_HTTP_PORT", &port),
            ("ISTIO_METAJSON_LABELS", LABELS),
            ("SERVICE_ACCOUNT", "productpage"),
        ],
    })
    .await
    .unwrap()
}

/// Polls `f` until it holds, failing with `agent`'s log.
async fn until<F, Fut>(agent: &Agent, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    if let Err(e) = eventually(what, WAIT, f).await {
        panic!("{e:#}\nlog:\n{}", agent.logs());
    }
}

#[tokio::test]
async fn ready_after_pilot_config_routes_restarts_envoy_and_drains_on_sigterm() {
    let reviews = upstream("reviews-v1").await;
    let se = service_entry("reviews", &[(reviews.addr(), "v1")]);
    let pilot = Pilot::start(&[("reviews.yaml", &se)], "", &[])
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().display().to_string();
    let port = free_port();
    let xds = pilot.grpc_addr().to_string();
    let mut agent = client(
        &xds,
        "127.0.0.60",
        port,
        &["--cert-source", "files", "--certs-dir", &certs_dir],
    )
    .await;

    // 503 while Envoy has nothing from Pilot, then 200.
    let started = Instant::now();
    let seen = agent.wait_ready(WAIT).await.unwrap();
    let answered: Vec<u16> = seen.iter().copied().filter(|s| *s != 0).collect();
    assert_eq!(
        answered,
        [503],
        "readiness before 200 ({:?}):\n{}",
        started.elapsed(),
        agent.logs()
    );
    for stat in [
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
    ] {
        let stats = agent
            .admin_get("/stats?filter=update_success")
            .await
            .unwrap();
        assert!(
            stats
                .body
                .lines()
                .any(|l| l.starts_with(stat) && !l.ends_with(": 0")),
            "{stat}: {}",
            stats.body
        );
    }

    // The node is the pod's: Envoy's server_info and its bootstrap say so.
    let expected = "sidecar~127.0.0.60~productpage-1.default~default.svc.cluster.local";
    assert_eq!(agent.node_id(), expected);
    let info: Value = agent
        .admin_get("/server_info")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["node"]["id"], expected, "{info}");
    assert_eq!(info["command_line_options"]["service_node"], expected);
    assert_eq!(info["node"]["metadata"]["LABELS"]["app"], "productpage");
    assert_eq!(info["node"]["metadata"]["INTERCEPTION_MODE"], "NONE");
    assert!(info["node"]["metadata"].get("SDS").is_none(), "{info}");
    assert!(agent.dir().join("proxy/envoy-rev0.json").is_file());

    // A request through the sidecar reaches the backend.
    until(&agent, "reviews through the sidecar", || async {
        let r = via_proxy(port, "reviews:9080", "/").await?;
        Ok(r.status == 200 && r.body == "reviews-v1\n")
    })
    .await;
    let before = reviews.requests();
    for _ in 0..3 {
        let r = via_proxy(port, "reviews:9080", "/").await.unwrap();
        assert_eq!(r.body, "reviews-v1\n");
    }
    assert_eq!(reviews.requests() - before, 3);

    // Envoy killed: the agent starts a new one, which gets ready and routes again.
    let first = agent.envoy_pid().expect("an Envoy child");
    signal(first, "KILL");
    until(&agent, "a new Envoy", || async {
        Ok(agent.envoy_pid().is_some_and(|p| p != first))
    })
    .await;
    let second = agent.envoy_pid().unwrap();
    assert!(!alive(first), "the killed Envoy {first} is still there");
    agent.wait_ready(WAIT).await.unwrap();
    assert_eq!(agent.try_wait().unwrap(), None, "the agent survives");
    until(&agent, "reviews through the new Envoy", || async {
        let r = via_proxy(port, "reviews:9080", "/").await?;
        Ok(r.status == 200)
    })
    .await;
    assert!(agent.logs().contains("Envoy started"));

    // SIGTERM: readiness turns 503 while Envoy drains, then the agent exits 0 and Envoy
    // is gone.
    agent.terminate();
    let mut draining = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match agent.readiness().await {
            Ok((503, body)) => {
                assert!(body.contains("shutting down"), "{body}");
                draining = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    assert!(draining, "no 503 while draining:\n{}", agent.logs());
    let status = agent.wait().await.unwrap();
    assert!(status.success(), "{status}:\n{}", agent.logs());
    assert!(!alive(second), "Envoy {second} outlived the agent");
    assert!(agent.logs().contains("Envoy drained and stopped"));
    drop(agent);
    pilot.service.stop().await.unwrap();
    reviews.stop().await;
}

#[tokio::test]
async fn unreachable_pilot_and_citadel_leave_the_agent_up_and_not_ready() {
    // Nothing listens on either address (ports just freed).
    let pilot = format!("127.0.0.1:{}", free_port());
    let ca = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let mut agent = client(&pilot, "127.0.0.61", port, &["--ca-address", &ca]).await;

    until(&agent, "the status port", || async {
        Ok(agent.readiness().await.is_ok())
    })
    .await;
    until(&agent, "Envoy", || async {
        Ok(agent.envoy_pid().is_some())
    })
    .await;
    let envoy = agent.envoy_pid().unwrap();
    // For 4 s (no config can come), the agent and its Envoy stay up and not ready.
    let until_time = Instant::now() + Duration::from_secs(4);
    let mut polls = 0;
    while Instant::now() < until_time {
        let (status, body) = agent.readiness().await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(agent.try_wait().unwrap(), None, "{}", agent.logs());
        assert_eq!(agent.envoy_pid(), Some(envoy), "{}", agent.logs());
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(polls > 10);
    let logs = agent.logs();
    // The certificate is retried with backoff, each failure logged (no token, no CA).
    assert!(
        logs.matches("cannot get the workload certificate").count() >= 2,
        "{logs}"
    );
    assert!(
        agent.sds_socket().exists(),
        "the SDS socket is served meanwhile"
    );
    let info: Value = agent
        .admin_get("/server_info")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["node"]["metadata"]["SDS"], "true");

    let socket = agent.sds_socket();
    let status = agent.stop().await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!alive(envoy));
    assert!(!socket.exists(), "the SDS socket is removed on exit");
}

#[tokio::test]
async fn certificates_from_citadel_over_sds_carry_mutual_tls_between_two_agents() {
    const SERVER_IP: &str = "127.0.0.72";
    let tmp = tempfile::tempdir().unwrap();
    let app = Upstream::start("reviews-v1", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let inbound = free_port();
    let files = strict_mtls_reviews(SERVER_IP, inbound, app.addr().port());
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let pilot = Pilot::start(&files, "", &[]).await.unwrap();
    let xds = pilot.grpc_addr().to_string();

    // Citadel (file mode) does not run yet: the agents start without it, and authenticate
    // with the istio.<sa> secret it will write (it has no TokenReview without Kubernetes).
    let ca_port = free_port();
    let ca = format!("127.0.0.1:{ca_port}");
    let secrets = tmp.path().join("secrets");
    let flags = |sa: &str| -> Vec<String> {
        let dir = secrets.join(format!("default/istio.{sa}"));
        vec![
            "--ca-address".into(),
            ca.clone(),
            "--ca-client-cert-dir".into(),
            dir.display().to_string(),
            "--ca-root-cert".into(),
            dir.join("root-cert.pem").display().to_string(),
        ]
    };
    let client_flags = flags("productpage");
    let client_refs: Vec<&str> = client_flags.iter().map(String::as_str).collect();
    let port = free_port();
    let mut client = client(&xds, "127.0.0.70", port, &client_refs).await;
    let server_flags = flags("reviews");
    let server_refs: Vec<&str> = server_flags.iter().map(String::as_str).collect();
    let mut server = Agent::start(AgentOptions {
        role: "sidecar",
        discovery: &xds,
        pod: "reviews-v1-1",
        namespace: "default",
        ip: SERVER_IP,
        args: &server_refs,
        env: &[
            ("ISTIO_META_INTERCEPTION_MODE", "NONE"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"reviews"}"#),
            ("SERVICE_ACCOUNT", "reviews"),
        ],
    })
    .await
    .unwrap();
    for a in [&client, &server] {
        until(a, "a failed CSR, retried", || async {
            Ok(a.logs().contains("cannot get the workload certificate"))
        })
        .await;
    }

    let (citadel, _) = pilot_traffic_support::citadel_at(tmp.path(), ca_port, &[]).await;
    client.wait_ready(WAIT).await.unwrap();
    server.wait_ready(WAIT).await.unwrap();
    until(&client, "mutual TLS through both sidecars", || async {
        let r = via_proxy(port, "reviews:9080", "/").await?;
        anyhow::ensure!(r.status == 200, "{} {:?}", r.status, r.body);
        Ok(r.body == "reviews-v1\n")
    })
    .await;
    assert!(client.logs().contains("workload certificate ready"));

    // Each Envoy presents the identity of its service account, from SDS (inline), not a file.
    for (agent, sa) in [(&client, "productpage"), (&server, "reviews")] {
        let certs: Value = agent.admin_get("/certs").await.unwrap().json().unwrap();
        let chains: Vec<&Value> = certs["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["cert_chain"].as_array().unwrap())
            .collect();
        let uri = format!("spiffe://cluster.local/ns/default/sa/{sa}");
        let leaf = chains
            .iter()
            .find(|c| {
                c["subject_alt_names"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n["uri"] == uri.as_str()))
            })
            .unwrap_or_else(|| panic!("no certificate for {uri}: {certs}"));
        assert_eq!(leaf["path"], "<inline>", "{leaf}");
        let dump = agent.admin_get("/config_dump").await.unwrap().body;
        assert!(dump.contains("sds-grpc"));
        assert!(!dump.contains("cert-chain.pem"), "a file in the config");
    }
    // The server refuses plain text (STRICT): its certificate is what let the client in.
    let plain = mesh_tests::http_get(&format!("http://{SERVER_IP}:{inbound}/"), &[]).await;
    assert!(
        plain.map(|r| r.status != 200).unwrap_or(true),
        "plain text got through"
    );
    let stats = server
        .admin_get("/stats?filter=ssl.handshake")
        .await
        .unwrap();
    assert!(
        stats
            .body
            .lines()
            .any(|l| l.contains("ssl.handshake") && !l.ends_with(": 0")),
        "{}",
        stats.body
    );

    for a in [client, server] {
        let status = a.stop().await.unwrap();
        assert!(status.success(), "{status}");
    }
    citadel.stop().await.unwrap();
    pilot.service.stop().await.unwrap();
    app.stop().await;
}
