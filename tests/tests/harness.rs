//! Proves the harness against a real Envoy: static routing to two sample upstreams, admin
//! accessors, shutdown, several Envoys at once, and the not-ready / failed-start paths.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_tests::{Envoy, Method, Upstream, free_port, http_get, http_request};
use serde_json::{Value, json};

/// A STATIC cluster `name` with the one endpoint `addr`.
fn static_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": addr.ip().to_string(),
                "port_value": addr.port(),
            }}}}]}],
        },
    })
}

/// A bootstrap with an HTTP listener on `127.0.0.1:listener_port` that routes `Host: <name>`
/// to the cluster `<name>` of each upstream.
fn static_bootstrap(listener_port: u16, upstreams: &[&Upstream]) -> Value {
    let virtual_hosts: Vec<Value> = upstreams
        .iter()
        .map(|u| {
            json!({
                "name": u.name(),
                "domains": [u.name()],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": u.name() } }],
            })
        })
        .collect();
    let clusters: Vec<Value> = upstreams
        .iter()
        .map(|u| static_cluster(u.name(), u.addr()))
        .collect();
    json!({
        "static_resources": {
            "listeners": [{
                "name": "http",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": listener_port } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "http",
                        "route_config": { "name": "local", "virtual_hosts": virtual_hosts },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                            },
                        }],
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    })
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Whether a process with this pid exists (`kill -0`).
fn process_exists(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn envoy_routes_by_host_to_static_upstreams() {
    let a = Upstream::start("a", any_port()).await.unwrap();
    let b = Upstream::start("b", any_port()).await.unwrap();
    let port = free_port();
    let envoy = Envoy::start(static_bootstrap(port, &[&a, &b]))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");

    for _ in 0..3 {
        let resp = http_get(&url, &[("host", "a")]).await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body, "a\n");
        assert_eq!(resp.header("x-upstream"), Some("a"));
    }
    let resp = http_get(&url, &[("host", "b")]).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "b\n");
    let resp = http_get(&url, &[("host", "nowhere")]).await.unwrap();
    assert_eq!(resp.status, 404, "{resp:?}");
    assert_eq!((a.requests(), b.requests()), (3, 1));

    // The echo endpoint sees the request as Envoy forwarded it.
    let resp = http_request(
        Method::POST,
        &format!("{url}echo/x?q=1"),
        &[("host", "b"), ("x-test", "1")],
        "hi",
    )
    .await
    .unwrap();
    let echo = resp.json().unwrap();
    assert_eq!(echo["upstream"], "b");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/x");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["body"], "hi");
    assert_eq!(echo["headers"]["x-test"], "1");
    assert_eq!(echo["headers"]["host"], "b");
    assert!(echo["headers"]["x-request-id"].is_string(), "{echo}");
    assert_eq!(b.requests(), 2);

    let dump = envoy.config_dump(false).await.unwrap();
    let static_clusters: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["static_clusters"].as_array())
        .flatten()
        .filter_map(|c| c["cluster"]["name"].as_str())
        .collect();
    assert!(static_clusters.contains(&"a"), "{static_clusters:?}");
    assert!(static_clusters.contains(&"b"), "{static_clusters:?}");
    assert!(envoy.config_dump(true).await.unwrap()["configs"].is_array());

    assert!(
        envoy
            .clusters()
            .await
            .unwrap()
            .contains(&format!("a::{}::", a.addr()))
    );
    let clusters = envoy.clusters_json().await.unwrap();
    assert!(clusters["cluster_statuses"].as_array().unwrap().len() >= 2);

    assert_eq!(
        envoy.stat("cluster.a.upstream_rq_total").await.unwrap(),
        Some(3)
    );
    assert_eq!(
        envoy.stat("cluster.b.upstream_rq_total").await.unwrap(),
        Some(2)
    );
    assert_eq!(envoy.stat("no.such.stat").await.unwrap(), None);
    assert!(
        envoy
            .stats()
            .await
            .unwrap()
            .contains("cluster.a.upstream_rq_200: 3")
    );

    // A stopped upstream closes its listener and its keep-alive connections from Envoy.
    let a_addr = a.addr();
    a.stop().await;
    assert!(http_get(&format!("http://{a_addr}/"), &[]).await.is_err());
    let resp = http_get(&url, &[("host", "a")]).await.unwrap();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(http_get(&url, &[("host", "b")]).await.unwrap().body, "b\n");

    let pid = envoy.pid();
    assert!(process_exists(pid));
    envoy.stop().await.unwrap();
    assert!(!process_exists(pid), "envoy {pid} still running after stop");
    assert!(http_get(&url, &[("host", "b")]).await.is_err());
    assert_eq!(b.requests(), 3);
}

#[tokio::test]
async fn two_envoys_run_at_once() {
    let a = Upstream::start("a", "127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let b = Upstream::start("b", "127.0.0.3:0".parse().unwrap())
        .await
        .unwrap();
    let (port1, port2) = (free_port(), free_port());
    let (one, two) = tokio::try_join!(
        Envoy::start(static_bootstrap(port1, &[&a])),
        Envoy::start(static_bootstrap(port2, &[&b])),
    )
    .unwrap();
    assert_ne!(one.admin_addr(), two.admin_addr());
    assert_ne!(one.pid(), two.pid());

    let resp = http_get(&format!("http://127.0.0.1:{port1}/"), &[("host", "a")])
        .await
        .unwrap();
    assert_eq!(resp.body, "a\n");
    let resp = http_get(&format!("http://127.0.0.1:{port2}/"), &[("host", "b")])
        .await
        .unwrap();
    assert_eq!(resp.body, "b\n");
    assert_eq!(
        one.stat("cluster.a.upstream_rq_total").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        two.stat("cluster.b.upstream_rq_total").await.unwrap(),
        Some(1)
    );

    // Dropping an Envoy kills it.
    let pid = one.pid();
    drop(one);
    let gone = async {
        while process_exists(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .unwrap();
    two.stop().await.unwrap();
}

#[tokio::test]
async fn xds_envoy_is_not_ready_without_config() {
    // LDS from an xDS cluster that nobody serves: Envoy answers on admin but stays not ready.
    let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut xds_cluster = static_cluster("xds", xds);
    xds_cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        },
    });
    let bootstrap = json!({
        "node": { "id": "sidecar~127.0.0.1~test~default", "cluster": "test" },
        "dynamic_resources": { "lds_config": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds" } }],
            },
        }},
        "static_resources": { "clusters": [xds_cluster] },
    });
    let mut envoy = Envoy::start_not_ready(bootstrap).await.unwrap();
    let err = envoy
        .wait_ready(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("not ready"), "{err:#}");
    assert_eq!(envoy.admin_get("/ready").await.unwrap().status, 503);
    envoy.stop().await.unwrap();
}

#[tokio::test]
async fn bad_bootstrap_fails_with_the_log() {
    let bootstrap =
        json!({ "static_resources": { "clusters": [{ "name": "x", "type": "NOPE" }] } });
    let err = Envoy::start(bootstrap).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("exited early") && err.contains("NOPE"),
        "{err}"
    );
}
