//! The ADS server over real gRPC streams, driven by a scripted client: stale nonces, ACKs,
//! unknown types, bad node ids and clients that vanish mid-push.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use mesh_runtime::Shutdown;
use pilot::testutil::TestConfig;
use pilot::xds::push::{Inputs, build};
use pilot::xds::resource::{CLUSTER, ENDPOINT};
use pilot::xds::{PushRequest, XdsMetrics, XdsServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const NODE: &str = "sidecar~127.0.0.9~app-1.default~default.svc.cluster.local";

/// A ServiceEntry on port 80 for each host, all at 127.0.0.10.
fn inputs(hosts: &[&str]) -> Inputs {
    let mut text = String::new();
    for h in hosts {
        text.push_str(&format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: {h}\nspec:\n  hosts: [{h}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http}}]\n  endpoints: [{{address: 127.0.0.10}}]\n---\n"
        ));
    }
    TestConfig::from_yaml(&text).inputs()
}

async fn start(hosts: &[&str]) -> (XdsServer, String, Shutdown) {
    let shutdown = Shutdown::new();
    let server = XdsServer::new(
        build(&inputs(hosts), None),
        10,
        XdsMetrics::unregistered(),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = server.service();
    let stop = shutdown.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { stop.cancelled().await },
            ),
    );
    (server, format!("http://{addr}"), shutdown)
}

fn push(server: &XdsServer, hosts: &[&str]) {
    server.push(
        build(&inputs(hosts), None),
        PushRequest {
            full: true,
            eds_hosts: BTreeSet::new(),
            start: Instant::now(),
        },
    );
}

struct Client {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Client {
    async fn connect(url: &str) -> Client {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, rx }
    }

    async fn send(&self, type_url: &str, names: &[&str], nonce: &str, node: Option<&str>) {
        self.tx
            .send(DiscoveryRequest {
                node: node.map(|id| Node {
                    id: id.into(),
                    ..Default::default()
                }),
                type_url: type_url.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                response_nonce: nonce.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response")
            .unwrap()
            .expect("stream open")
    }

    /// Asserts nothing arrives for a while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
        assert!(got.is_err(), "unexpected message: {got:?}");
    }
}

#[tokio::test]
async fn acks_are_not_answered_and_stale_nonces_are_ignored() {
    let (server, url, shutdown) = start(&["a"]).await;
    let mut c = Client::connect(&url).await;
    c.send(CLUSTER, &[], "", Some(NODE)).await;
    let r1 = c.recv().await;
    assert_eq!(r1.type_url, CLUSTER);
    // The node sends no metadata: a captured sidecar, with the inbound passthrough too; and
    // the tracing collector's (tracing is on by default).
    assert_eq!(
        r1.resources.len(),
        5,
        "a, BlackHole, Passthrough, InboundPassthrough, zipkin"
    );
    c.send(CLUSTER, &[], &r1.nonce, None).await;
    c.quiet().await;

    push(&server, &["a", "b"]);
    let r2 = c.recv().await;
    assert_eq!(r2.resources.len(), 6);
    // An ACK of the older response is stale: ignored, even with a changed subscription.
    c.send(CLUSTER, &["whatever"], &r1.nonce, None).await;
    c.quiet().await;
    c.send(CLUSTER, &[], &r2.nonce, None).await;
    c.quiet().await;

    // A push that changes nothing for this proxy sends nothing.
    push(&server, &["a", "b"]);
    c.quiet().await;
    shutdown.cancel();
}

#[tokio::test]
async fn unknown_types_get_an_empty_answer_and_the_stream_lives_on() {
    let (_server, url, shutdown) = start(&["a"]).await;
    let mut c = Client::connect(&url).await;
    c.send(
        "type.googleapis.com/example.Unknown",
        &["x"],
        "",
        Some(NODE),
    )
    .await;
    let r = c.recv().await;
    assert_eq!(r.type_url, "type.googleapis.com/example.Unknown");
    assert!(r.resources.is_empty());
    c.send(
        ENDPOINT,
        &[
            "outbound|80||a.default.svc.cluster.local",
            "outbound|80||nope",
        ],
        "",
        None,
    )
    .await;
    let r = c.recv().await;
    assert_eq!(r.resources.len(), 1, "the unknown cluster is simply absent");
    shutdown.cancel();
}

#[tokio::test]
async fn a_bad_node_id_ends_the_stream_with_invalid_argument() {
    let (server, url, shutdown) = start(&["a"]).await;
    let mut c = Client::connect(&url).await;
    c.send(CLUSTER, &[], "", Some("not-a-node-id")).await;
    let err = tokio::time::timeout(Duration::from_secs(5), c.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not-a-node-id"), "{err}");
    assert!(server.connections().is_empty());
    shutdown.cancel();
}

#[tokio::test]
async fn clients_vanishing_mid_push_do_not_disturb_the_others() {
    let (server, url, shutdown) = start(&["a"]).await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut c = Client::connect(&url).await;
        c.send(CLUSTER, &[], "", Some(NODE)).await;
        let r = c.recv().await;
        c.send(CLUSTER, &[], &r.nonce, None).await;
        clients.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.connections().len() < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.connections().len(), 40);

    push(&server, &["a", "b"]);
    // Half of them go away while the push is under way.
    let survivors: Vec<Client> = clients.into_iter().skip(20).collect();
    for mut c in survivors {
        let r = c.recv().await;
        assert_eq!(r.resources.len(), 6);
        c.send(CLUSTER, &[], &r.nonce, None).await;
        drop(c);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.connections().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.connections().is_empty(),
        "every stream was cleaned up"
    );
    shutdown.cancel();
}
