//! Simulated proxies for the benchmarks that push to many (`scale`, `compare`): real gRPC ADS
//! streams, one HTTP/2 connection each (or several streams to a connection), each subscribing
//! to CDS, EDS (every `outbound|` cluster it gets), LDS and RDS (`8080`) and ACKing every
//! response, reconnecting as Envoy does when its stream breaks. They speak to any ADS server:
//! our Pilot, go-control-plane, istiod.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use pilot::testutil::ProxyBuilder;
use pilot::xds::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::rss_kb;

/// What one client has received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub route_version: String,
    pub eds_version: String,
    pub last: Instant,
}

pub type Slot = Arc<Mutex<Seen>>;

/// A cluster's name, its field 1, without decoding the rest.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

fn req(ty: &str, names: Vec<String>, version: String, nonce: String) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: ty.to_string(),
        resource_names: names,
        version_info: version,
        response_nonce: nonce,
        ..Default::default()
    }
}

fn pb_value(v: &serde_json::Value) -> PbValue {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: a.iter().map(pb_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

/// The Envoy node of a generated proxy, as an Istio sidecar sends it: the id, and the
/// metadata (`LABELS` and the rest) plus what istiod reads of every proxy (`NAMESPACE`,
/// `CLUSTER_ID`, `ISTIO_VERSION`, `NAME`).
pub fn node(p: &ProxyBuilder) -> Node {
    let id = p.node_id();
    let mut meta = p.node_metadata();
    let mut parts = id.split('~');
    let (_, _, pod_ns) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
    let (pod, ns) = pod_ns.split_once('.').unwrap_or((pod_ns, "default"));
    let (pod, ns) = (pod.to_string(), ns.to_string());
    for (k, v) in [
        ("NAMESPACE", ns.as_str()),
        ("NAME", pod.as_str()),
        ("CLUSTER_ID", "Kubernetes"),
        ("ISTIO_VERSION", "1.29.0"),
    ] {
        meta.entry(k.to_string())
            .or_insert_with(|| serde_json::Value::String(v.to_string()));
    }
    Node {
        id,
        cluster: format!("{pod}.{ns}"),
        metadata: Some(Struct {
            fields: meta.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
        }),
        ..Default::default()
    }
}

/// One simulated proxy, reconnecting (as Envoy does) when its stream breaks.
pub async fn client(channel: Channel, node: Node, slot: Slot) {
    loop {
        client_stream(channel.clone(), &node, &slot).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn client_stream(channel: Channel, node: &Node, slot: &Slot) {
    let mut ads = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let mut first = req(CLUSTER, vec![], String::new(), String::new());
    first.node = Some(node.clone());
    tx.send(first).await.unwrap();
    tx.send(req(LISTENER, vec![], String::new(), String::new()))
        .await
        .unwrap();
    let Ok(stream) = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    let mut eds_names: Vec<String> = Vec::new();
    let route_names = vec!["8080".to_string()];
    let (mut asked_eds, mut asked_rds) = (false, false);
    while let Ok(Some(resp)) = stream.message().await {
        let now = Instant::now();
        let ty = resp.type_url.as_str();
        {
            let mut seen = slot.lock().unwrap();
            seen.last = now;
            match ty {
                ROUTE => seen.route_version.clone_from(&resp.version_info),
                ENDPOINT => seen.eds_version.clone_from(&resp.version_info),
                _ => {}
            }
        }
        let names = match ty {
            CLUSTER => {
                use prost::Message;
                eds_names = resp
                    .resources
                    .iter()
                    .filter_map(|a| Named::decode(&a.value[..]).ok().map(|c| c.name))
                    .filter(|n| n.starts_with("outbound|"))
                    .collect();
                vec![]
            }
            ENDPOINT => eds_names.clone(),
            ROUTE => route_names.clone(),
            _ => vec![],
        };
        let ack = req(ty, names, resp.version_info.clone(), resp.nonce.clone());
        if tx.send(ack).await.is_err() {
            return;
        }
        if ty == CLUSTER && !asked_eds {
            asked_eds = true;
            let r = req(ENDPOINT, eds_names.clone(), String::new(), String::new());
            tx.send(r).await.ok();
        }
        if ty == LISTENER && !asked_rds {
            asked_rds = true;
            let r = req(ROUTE, route_names.clone(), String::new(), String::new());
            tx.send(r).await.ok();
        }
    }
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The clients of one server (`url`, `http://host:port`), whose process is `pid` (for RSS).
pub struct Fleet {
    url: String,
    pid: u32,
    clients: Vec<(Slot, JoinHandle<()>)>,
    channels: Vec<Channel>,
    pub streams_per_conn: usize,
    pub rss_limit_kb: u64,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, task) in &self.clients {
            task.abort();
        }
    }
}

impl Fleet {
    pub fn new(grpc: &str, pid: u32, streams_per_conn: usize, rss_limit_kb: u64) -> Fleet {
        Fleet {
            url: format!("http://{grpc}"),
            pid,
            clients: Vec::new(),
            channels: Vec::new(),
            streams_per_conn: streams_per_conn.max(1),
            rss_limit_kb,
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Connects clients (client `i` is `node(i)`) until there are `n`, and waits until all
    /// have routes and endpoints. `false` when the server outgrew the RSS limit or they did
    /// not sync within `within`.
    pub async fn connect(
        &mut self,
        n: usize,
        node: impl Fn(usize) -> Node,
        within: Duration,
    ) -> bool {
        let started = Instant::now();
        while self.clients.len() < n {
            let i = self.clients.len();
            if i.is_multiple_of(self.streams_per_conn) {
                let channel = Endpoint::from_shared(self.url.clone())
                    .unwrap()
                    .tcp_nodelay(true)
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(4 << 20)
                    .connect_lazy();
                self.channels.push(channel);
            }
            let channel = self.channels.last().unwrap().clone();
            let slot = Arc::new(Mutex::new(Seen {
                route_version: String::new(),
                eds_version: String::new(),
                last: Instant::now(),
            }));
            let task = tokio::spawn(client(channel, node(i), slot.clone()));
            self.clients.push((slot, task));
            if i % 100 == 99 {
                // Let connections open before piling on more.
                tokio::task::yield_now().await;
            }
        }
        let deadline = started + within;
        let mut said = Instant::now();
        loop {
            let synced = self
                .clients
                .iter()
                .filter(|(s, _)| {
                    let s = s.lock().unwrap();
                    !s.route_version.is_empty() && !s.eds_version.is_empty()
                })
                .count();
            if synced == n {
                eprintln!(
                    "  {n} clients synced in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return true;
            }
            let rss = rss_kb(self.pid);
            if rss > self.rss_limit_kb {
                eprintln!("  server at {:.0} MiB, past the limit: giving up", mb(rss));
                return false;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "  only {synced} of {n} clients synced in {:.0}s: giving up",
                    within.as_secs_f64()
                );
                return false;
            }
            if said.elapsed() > Duration::from_secs(10) {
                eprintln!("  {synced} of {n} synced, server at {:.0} MiB", mb(rss));
                said = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every client's route (or EDS) version.
    pub fn versions(&self, eds: bool) -> Vec<String> {
        self.clients
            .iter()
            .map(|(s, _)| {
                let s = s.lock().unwrap();
                if eds {
                    s.eds_version.clone()
                } else {
                    s.route_version.clone()
                }
            })
            .collect()
    }

    /// Waits until every client's route (or EDS) version differs from `old`, then until
    /// responses stop for 300 ms; milliseconds from `start` to the last response.
    pub async fn settle(&self, start: Instant, old: &[String], eds: bool) -> Option<f64> {
        let deadline = start + Duration::from_secs(120);
        while self
            .versions(eds)
            .iter()
            .zip(old)
            .any(|(new, old)| new == old)
        {
            if Instant::now() > deadline {
                eprintln!("  the push did not reach every client in 2 minutes");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = || {
            self.clients
                .iter()
                .map(|(s, _)| s.lock().unwrap().last)
                .max()
                .unwrap()
        };
        loop {
            let l = last();
            if l.elapsed() > Duration::from_millis(300) {
                return Some((l - start).as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
