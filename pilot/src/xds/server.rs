//! The ADS server: connections, their push queues, and the state-of-the-world and delta
//! streams over gRPC.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::AggregatedDiscoveryService,
};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::cache::Generation;
use super::metrics::XdsMetrics;
use super::protocol::{Action, Delta, Sotw, TypeState};
use super::resource::{ENDPOINT, PUSH_ORDER, short_type};
use crate::model::Proxy;
use crate::model::service::parse_cluster_name;
use mesh_runtime::Shutdown;

/// What a push must bring to a connection; pushes queued while one is under way merge.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// Everything may have changed.
    pub full: bool,
    /// Only the endpoints of these hosts changed.
    pub eds_hosts: BTreeSet<String>,
    /// When the change that caused the push was first seen.
    pub start: Instant,
}

/// A connected proxy.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub proxy: Proxy,
    pub delta: bool,
    pub connected_at: SystemTime,
    pending: Mutex<Option<PushRequest>>,
    notify: Notify,
    /// The proxy's own service instances when it last got a full push: when an endpoint-only
    /// change alters them, its inbound listeners and clusters change too.
    instances: Mutex<String>,
    /// The per-type protocol state, copied out after every event, for the debug pages.
    status: Mutex<BTreeMap<String, TypeState>>,
}

/// The xDS server's shared state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    generation: RwLock<Arc<Generation>>,
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    push_limit: Semaphore,
    metrics: XdsMetrics,
    shutdown: Shutdown,
}

// === impl PushRequest ===

impl PushRequest {
    fn merge(&mut self, other: PushRequest) {
        self.full |= other.full;
        self.eds_hosts.extend(other.eds_hosts);
        self.start = self.start.min(other.start);
    }
}

// === impl Connection ===

impl Connection {
    fn enqueue(&self, push: PushRequest) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.as_mut() {
            Some(p) => p.merge(push),
            None => *pending = Some(push),
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// The queued push, made full when the proxy's own instances changed under it.
    fn take(&self, generation: &Generation) -> Option<PushRequest> {
        let mut push = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let now = instances_signature(generation, &self.proxy);
        let mut known = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        if *known != now {
            *known = now;
            push.full = true;
        }
        Some(push)
    }

    fn set_status<'a>(&self, states: impl Iterator<Item = (&'a String, &'a TypeState)>) {
        let copy = states.map(|(k, v)| (k.clone(), v.summary())).collect();
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = copy;
    }

    /// The per-type protocol state.
    pub fn status(&self) -> BTreeMap<String, TypeState> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

// === impl XdsServer ===

impl XdsServer {
    /// A server serving `generation` until told otherwise. At most `push_concurrency`
    /// connections generate and send a push at once, so a burst cannot exhaust memory.
    pub fn new(
        generation: Generation,
        push_concurrency: usize,
        metrics: XdsMetrics,
        shutdown: Shutdown,
    ) -> XdsServer {
        XdsServer {
            inner: Arc::new(Inner {
                generation: RwLock::new(Arc::new(generation)),
                connections: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                push_limit: Semaphore::new(push_concurrency.max(1)),
                metrics,
                shutdown,
            }),
        }
    }

    /// The generation proxies are served from now.
    pub fn current(&self) -> Arc<Generation> {
        self.inner
            .generation
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a new generation and queues the push to every connection.
    pub fn push(&self, generation: Generation, push: PushRequest) {
        *self
            .inner
            .generation
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(generation);
        let kind = if push.full { "full" } else { "eds" };
        self.inner.metrics.push_triggers(kind);
        for conn in self.connections() {
            conn.enqueue(push.clone());
        }
    }

    /// Every connected proxy.
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        let mut conns: Vec<_> = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        conns.sort_by_key(|c| c.id);
        conns
    }

    pub fn metrics(&self) -> &XdsMetrics {
        &self.inner.metrics
    }

    fn register(&self, proxy: Proxy, delta: bool) -> Arc<Connection> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let instances = Mutex::new(instances_signature(&self.current(), &proxy));
        let conn = Arc::new(Connection {
            instances,
            id,
            proxy,
            delta,
            connected_at: SystemTime::now(),
            pending: Mutex::new(None),
            notify: Notify::new(),
            status: Mutex::new(BTreeMap::new()),
        });
        let n = {
            let mut conns = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            conns.insert(id, conn.clone());
            conns.len()
        };
        self.inner.metrics.set_connected(n);
        tracing::info!(proxy = %conn.proxy, conn = id, delta, "proxy connected");
        conn
    }

    fn unregister(&self, conn: &Connection) {
        let n = {
            let mut conns = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            conns.remove(&conn.id);
            conns.len()
        };
        self.inner.metrics.set_connected(n);
        tracing::info!(proxy = %conn.proxy, conn = conn.id, "proxy disconnected");
    }

    /// The tonic service for this server.
    pub fn service(&self) -> AdsService {
        AdsService {
            server: self.clone(),
        }
    }
}

/// The node's metadata as JSON values.
pub fn node_metadata(node: &Node) -> BTreeMap<String, Value> {
    node.metadata
        .as_ref()
        .map(|s| {
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), super::pbjson::value_to_json(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The proxy a stream's first request names, completed from the platform: a proxy that
/// sends no labels gets those of the workload (pod) at its IP.
fn proxy_of(server: &XdsServer, node: Option<&Node>) -> Result<Proxy, Status> {
    let node =
        node.ok_or_else(|| Status::invalid_argument("the first request must carry a node"))?;
    let mut proxy = Proxy::from_node(&node.id, node_metadata(node))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let generation = server.current();
    if let Some(w) = generation.ctx.registry.workload(proxy.ip()) {
        if proxy.labels.is_empty() {
            proxy.labels = w.labels.clone();
        }
        if !proxy.metadata.contains_key("NAMESPACE") {
            proxy.namespace = w.namespace.clone();
        }
    }
    Ok(proxy)
}

/// The service instances at a proxy's IPs, as one comparable string.
fn instances_signature(generation: &Generation, proxy: &Proxy) -> String {
    let mut all: Vec<String> = proxy
        .ips
        .iter()
        .flat_map(|ip| generation.ctx.registry.instances_at(ip))
        .map(|(svc, port, ep)| {
            format!(
                "{}:{}@{}:{}",
                svc.hostname, port.number, ep.address, ep.port
            )
        })
        .collect();
    all.sort();
    all.join(",")
}

/// Whether a push concerns this type of a connection: everything on a full push, endpoints
/// the connection watches on an EDS push.
fn wanted_by(push: &PushRequest, type_url: &str, state: Option<&TypeState>) -> bool {
    push.full || (type_url == ENDPOINT && eds_affected(push, state))
}

/// Whether a push touches the endpoints a connection watches.
fn eds_affected(push: &PushRequest, state: Option<&TypeState>) -> bool {
    let Some(state) = state else { return false };
    state
        .names
        .iter()
        .any(|n| parse_cluster_name(n).is_some_and(|(_, _, _, host)| push.eds_hosts.contains(host)))
}

/// The gRPC face of the server.
#[derive(Debug, Clone)]
pub struct AdsService {
    server: XdsServer,
}

type SotwTx = mpsc::Sender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        let server = self.server.clone();
        let requests = request.into_inner();
        tokio::spawn(async move {
            if let Err(status) = sotw_stream(&server, requests, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        let server = self.server.clone();
        let requests = request.into_inner();
        tokio::spawn(async move {
            if let Err(status) = delta_stream(&server, requests, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Unregisters the connection however the stream ends.
struct Registration<'a> {
    server: &'a XdsServer,
    conn: Arc<Connection>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.server.unregister(&self.conn);
    }
}

async fn sotw_stream(
    server: &XdsServer,
    mut requests: Streaming<DiscoveryRequest>,
    tx: &SotwTx,
) -> Result<(), Status> {
    let Some(first) = requests.message().await? else {
        return Ok(());
    };
    let proxy = proxy_of(server, first.node.as_ref())?;
    let conn = server.register(proxy, false);
    let _registration = Registration {
        server,
        conn: conn.clone(),
    };
    let mut proto = Sotw::default();
    let mut next = Some(first);
    let shutdown = server.inner.shutdown.clone();
    loop {
        if let Some(req) = next.take() {
            sotw_request(server, &conn, &mut proto, req, tx).await?;
            conn.set_status(proto.states());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = requests.message() => match msg {
                Ok(Some(req)) => next = Some(req),
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(proxy = %conn.proxy, error = %e, "stream ended");
                    return Ok(());
                }
            },
            _ = conn.notify.notified() => {
                if let Some(push) = conn.take(&server.current()) {
                    sotw_push(server, &conn, &mut proto, push, tx).await?;
                    conn.set_status(proto.states());
                }
            }
        }
    }
}

async fn sotw_request(
    server: &XdsServer,
    conn: &Connection,
    proto: &mut Sotw,
    req: DiscoveryRequest,
    tx: &SotwTx,
) -> Result<(), Status> {
    let type_url = req.type_url.clone();
    let short = short_type(&type_url);
    match proto.on_request(&req) {
        Action::Respond => {
            let generation = server.current();
            let names = proto
                .state(&type_url)
                .map(|s| s.names.clone())
                .unwrap_or_default();
            let started = Instant::now();
            let resources = generation
                .resources(&conn.proxy, &type_url, &names)
                .unwrap_or_else(|| {
                    tracing::warn!(proxy = %conn.proxy, %type_url, "unknown type requested; answering with no resources");
                    Vec::new()
                });
            if let Some(resp) = proto.respond(&type_url, generation.version(), &resources, true) {
                server.inner.metrics.pushed(short, started.elapsed(), None);
                send(tx, resp).await?;
            }
        }
        Action::Ack => {
            tracing::trace!(proxy = %conn.proxy, ty = short, version = %req.version_info, "ACK");
        }
        Action::Nack(message) => {
            server.inner.metrics.rejected(short);
            tracing::warn!(proxy = %conn.proxy, ty = short, version = %req.version_info, nonce = %req.response_nonce, error = %message, "proxy rejected config (NACK); it keeps its last accepted config");
        }
        Action::Stale => {
            tracing::debug!(proxy = %conn.proxy, ty = short, nonce = %req.response_nonce, "stale nonce ignored");
        }
    }
    Ok(())
}

async fn sotw_push(
    server: &XdsServer,
    conn: &Connection,
    proto: &mut Sotw,
    push: PushRequest,
    tx: &SotwTx,
) -> Result<(), Status> {
    let _permit = server.inner.push_limit.acquire().await;
    let generation = server.current();
    for type_url in PUSH_ORDER {
        if !proto.watches(type_url) {
            continue;
        }
        let state = proto.state(type_url);
        if !wanted_by(&push, type_url, state) {
            continue;
        }
        let names = state.map(|s| s.names.clone()).unwrap_or_default();
        let started = Instant::now();
        let Some(resources) = generation.resources(&conn.proxy, type_url, &names) else {
            continue;
        };
        if let Some(resp) = proto.respond(type_url, generation.version(), &resources, false) {
            server
                .inner
                .metrics
                .pushed(short_type(type_url), started.elapsed(), Some(push.start));
            send(tx, resp).await?;
        }
    }
    Ok(())
}

async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, msg: T) -> Result<(), Status> {
    tx.send(Ok(msg))
        .await
        .map_err(|_| Status::cancelled("the proxy went away"))
}

async fn delta_stream(
    server: &XdsServer,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: &DeltaTx,
) -> Result<(), Status> {
    let Some(first) = requests.message().await? else {
        return Ok(());
    };
    let proxy = proxy_of(server, first.node.as_ref())?;
    let conn = server.register(proxy, true);
    let _registration = Registration {
        server,
        conn: conn.clone(),
    };
    let mut proto = Delta::default();
    let mut next = Some(first);
    let shutdown = server.inner.shutdown.clone();
    loop {
        if let Some(req) = next.take() {
            delta_request(server, &conn, &mut proto, req, tx).await?;
            conn.set_status(proto.states());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = requests.message() => match msg {
                Ok(Some(req)) => next = Some(req),
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(proxy = %conn.proxy, error = %e, "stream ended");
                    return Ok(());
                }
            },
            _ = conn.notify.notified() => {
                if let Some(push) = conn.take(&server.current()) {
                    let _permit = server.inner.push_limit.acquire().await;
                    for type_url in PUSH_ORDER {
                        if !proto.watches(type_url) {
                            continue;
                        }
                        if !wanted_by(&push, type_url, proto.state(type_url)) {
                            continue;
                        }
                        delta_send(server, &conn, &mut proto, type_url, Some(push.start), tx).await?;
                    }
                    conn.set_status(proto.states());
                }
            }
        }
    }
}

async fn delta_request(
    server: &XdsServer,
    conn: &Connection,
    proto: &mut Delta,
    req: DeltaDiscoveryRequest,
    tx: &DeltaTx,
) -> Result<(), Status> {
    let short = short_type(&req.type_url);
    match proto.on_request(&req) {
        Action::Respond => delta_send(server, conn, proto, &req.type_url, None, tx).await?,
        Action::Ack => tracing::trace!(proxy = %conn.proxy, ty = short, "ACK"),
        Action::Nack(message) => {
            server.inner.metrics.rejected(short);
            tracing::warn!(proxy = %conn.proxy, ty = short, nonce = %req.response_nonce, error = %message, "proxy rejected config (NACK); it keeps its last accepted config");
        }
        Action::Stale => {
            tracing::debug!(proxy = %conn.proxy, ty = short, nonce = %req.response_nonce, "stale nonce ignored");
        }
    }
    Ok(())
}

async fn delta_send(
    server: &XdsServer,
    conn: &Connection,
    proto: &mut Delta,
    type_url: &str,
    push_start: Option<Instant>,
    tx: &DeltaTx,
) -> Result<(), Status> {
    let generation = server.current();
    let names = proto
        .state(type_url)
        .map(|s| s.names.clone())
        .unwrap_or_default();
    let started = Instant::now();
    let resources = generation
        .resources(&conn.proxy, type_url, &names)
        .unwrap_or_default();
    if let Some(resp) = proto.respond(type_url, generation.version(), &resources) {
        server
            .inner
            .metrics
            .pushed(short_type(type_url), started.elapsed(), push_start);
        send(tx, resp).await?;
    }
    Ok(())
}
