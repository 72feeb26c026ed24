//! The ADS server: connections, their push queues, and the state-of-the-world and delta
//! streams over gRPC.
//!
//! Both streams run one loop, generic over the [`Protocol`]. The gRPC service is written
//! against tonic's transport directly rather than through generated code: a response is sent
//! as its own few bytes followed by the shared, already encoded resources (see
//! [`super::resource`]), so a connection never copies or buffers the config it is sent, and
//! requests are read with a small buffer. That is most of what a connected proxy costs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, mpsc};
use tonic::codec::{BufferSettings, Streaming};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::cache::{Generation, Scope};
use super::metrics::XdsMetrics;
use super::protocol::{Action, Delta, Protocol, Sotw, TypeState};
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
    /// The proxy's scope when it last got a full push: when an endpoint-only change alters
    /// its own service instances, its inbound listeners and clusters change too.
    instances: Mutex<Scope>,
    /// The proxy's scope in the latest generation it was served from.
    scope: Mutex<Scope>,
    /// The stream's protocol state, shared with the stream (read by the debug pages).
    proto: Arc<dyn ProtocolState>,
}

/// A stream's protocol state as the debug pages read it.
trait ProtocolState: Send + Sync + std::fmt::Debug {
    fn status(&self) -> BTreeMap<String, TypeState>;
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    fn enqueue(&self, push: PushRequest) {
        let mut pending = lock(&self.pending);
        match pending.as_mut() {
            Some(p) => p.merge(push),
            None => *pending = Some(push),
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// The queued push, made full when the proxy's own instances changed under it.
    fn take(&self, generation: &Generation) -> Option<PushRequest> {
        let mut push = lock(&self.pending).take()?;
        let now = self.scope(generation);
        let mut known = lock(&self.instances);
        if known.instances() != now.instances() {
            *known = now;
            push.full = true;
        }
        Some(push)
    }

    /// The proxy's scope in `generation`, computed once per generation.
    fn scope(&self, generation: &Generation) -> Scope {
        let mut memo = lock(&self.scope);
        if !memo.is_of(generation) {
            *memo = generation.scope(&self.proxy);
        }
        memo.clone()
    }

    /// The per-type protocol state.
    pub fn status(&self) -> BTreeMap<String, TypeState> {
        self.proto.status()
    }
}

impl<P: Protocol> ProtocolState for Mutex<P>
where
    P: std::fmt::Debug + Sync,
{
    fn status(&self) -> BTreeMap<String, TypeState> {
        lock(self)
            .types()
            .iter()
            .map(|(k, v)| (k.clone(), v.summary()))
            .collect()
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

    fn register(
        &self,
        proxy: Proxy,
        delta: bool,
        proto: Arc<dyn ProtocolState>,
    ) -> Arc<Connection> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let scope = self.current().scope(&proxy);
        let conn = Arc::new(Connection {
            instances: Mutex::new(scope.clone()),
            scope: Mutex::new(scope),
            id,
            proxy,
            delta,
            connected_at: SystemTime::now(),
            pending: Mutex::new(None),
            notify: Notify::new(),
            proto,
        });
        let n = {
            let mut conns = lock(&self.inner.connections);
            conns.insert(id, conn.clone());
            conns.len()
        };
        self.inner.metrics.set_connected(n);
        tracing::info!(proxy = %conn.proxy, conn = id, delta, "proxy connected");
        conn
    }

    fn unregister(&self, conn: &Connection) {
        let n = {
            let mut conns = lock(&self.inner.connections);
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

/// The gRPC path of the state-of-the-world stream.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// The gRPC path of the delta stream.
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The largest request accepted (a proxy subscribing to many thousand names).
const MAX_REQUEST: usize = 16 << 20;
/// The initial size of a stream's request buffer: requests are small (ACKs, name lists); it
/// grows for a larger one.
const REQUEST_BUFFER: usize = 1024;
/// Responses a stream may have queued for sending. They share their resources' bytes, so a
/// queued response costs little; the bound keeps a slow proxy from piling them up.
const QUEUED_RESPONSES: usize = 4;

/// Chunks of a message shorter than this are copied together into body frames of about this
/// size; longer ones go out as they are. HTTP/2 queues every body frame a stream is given
/// (a proxy's receive window, 2 MiB for gRPC clients and 256 MiB for Envoy, lets it take a
/// whole response at once) in a per-connection slab that never shrinks: one frame per
/// resource left every connection holding thousands of slots after its first large push.
const FRAME_TARGET: usize = 16 * 1024;

/// The gRPC face of the server: `envoy.service.discovery.v3.AggregatedDiscoveryService`,
/// for tonic's router (`Server::builder().add_service(server.service())`).
#[derive(Debug, Clone)]
pub struct AdsService {
    server: XdsServer,
}

/// What a stream sends its proxy: a response, or the end of the stream. Kept small: the
/// channel allocates its slots in blocks of 32 whatever its capacity, and a `Status` inline
/// would make each slot ten times larger, in every connection.
#[derive(Debug)]
enum Outgoing {
    /// One gRPC message, in chunks (see [`Protocol::encode`]).
    Message(Vec<Bytes>),
    /// The stream is over; the status goes in the trailers.
    End(Box<Status>),
}

type Tx = mpsc::Sender<Outgoing>;

// === impl AdsService ===

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let compressed = req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|v| v != "identity");
        let resp = if compressed {
            Status::unimplemented("compressed requests are not supported").into_http()
        } else {
            match req.uri().path() {
                SOTW_PATH => self.open::<Sotw>(req.into_body()),
                DELTA_PATH => self.open::<Delta>(req.into_body()),
                path => Status::unimplemented(format!("no method {path}")).into_http(),
            }
        };
        std::future::ready(Ok(resp))
    }
}

impl AdsService {
    /// Starts a stream: its loop runs in a task of its own and sends into the response body.
    fn open<P>(&self, body: tonic::body::Body) -> http::Response<tonic::body::Body>
    where
        P: Protocol + std::fmt::Debug + Sync,
    {
        let decoder = tonic_prost::ProstDecoder::<P::Request>::new(BufferSettings::new(
            REQUEST_BUFFER,
            REQUEST_BUFFER,
        ));
        let requests = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST));
        let (tx, rx) = mpsc::channel(QUEUED_RESPONSES);
        let server = self.server.clone();
        tokio::spawn(async move {
            let end = match run_stream::<P>(&server, requests, &tx).await {
                Ok(()) => Status::new(Code::Ok, ""),
                Err(status) => status,
            };
            let _ = tx.send(Outgoing::End(Box::new(end))).await;
        });
        let mut resp = http::Response::new(tonic::body::Body::new(ResponseBody {
            rx,
            chunks: Vec::new().into_iter().peekable(),
            done: false,
        }));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        resp
    }
}

/// A stream's response body: the chunks of each message as they come (small ones joined, see
/// [`FRAME_TARGET`]), then the status as trailers.
#[derive(Debug)]
struct ResponseBody {
    rx: mpsc::Receiver<Outgoing>,
    chunks: std::iter::Peekable<std::vec::IntoIter<Bytes>>,
    done: bool,
}

/// The next body frame of `chunks`: a long chunk as it is, or the short ones that follow each
/// other, up to about [`FRAME_TARGET`] bytes, copied into one.
fn next_frame(chunks: &mut std::iter::Peekable<std::vec::IntoIter<Bytes>>) -> Option<Bytes> {
    let first = chunks.next()?;
    if first.len() >= FRAME_TARGET || chunks.peek().is_none_or(|next| next.len() >= FRAME_TARGET) {
        return Some(first);
    }
    let mut frame = bytes::BytesMut::with_capacity(2 * FRAME_TARGET);
    frame.extend_from_slice(&first);
    while frame.len() < FRAME_TARGET {
        match chunks.next_if(|next| next.len() < FRAME_TARGET) {
            Some(next) => frame.extend_from_slice(&next),
            None => break,
        }
    }
    Some(frame.freeze())
}

// === impl ResponseBody ===

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = next_frame(&mut this.chunks) {
                return Poll::Ready(Some(Ok(http_body::Frame::data(frame))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let status = match std::task::ready!(this.rx.poll_recv(cx)) {
                Some(Outgoing::Message(chunks)) => {
                    this.chunks = chunks.into_iter().peekable();
                    continue;
                }
                Some(Outgoing::End(status)) => *status,
                None => Status::unavailable("the stream ended"),
            };
            this.done = true;
            let mut trailers = http::HeaderMap::new();
            if let Err(e) = status.add_header(&mut trailers) {
                tracing::debug!(error = %e, "cannot encode the stream's status");
            }
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
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

/// Names of a type nobody subscribed to.
static NO_NAMES: BTreeSet<String> = BTreeSet::new();

/// One ADS stream, state-of-the-world or delta, from its first request to its end.
async fn run_stream<P>(
    server: &XdsServer,
    mut requests: Streaming<P::Request>,
    tx: &Tx,
) -> Result<(), Status>
where
    P: Protocol + std::fmt::Debug + Sync,
{
    let Some(first) = requests.message().await? else {
        return Ok(());
    };
    let proxy = proxy_of(server, P::node(&first))?;
    let proto = Arc::new(Mutex::new(P::default()));
    let conn = server.register(proxy, P::DELTA, proto.clone());
    let _registration = Registration {
        server,
        conn: conn.clone(),
    };
    let stream = Stream {
        server,
        conn: &conn,
        proto: &proto,
        tx,
    };
    let mut next = Some(first);
    let shutdown = server.inner.shutdown.clone();
    loop {
        if let Some(req) = next.take() {
            stream.on_request(req).await?;
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
                    stream.on_push(push).await?;
                }
            }
        }
    }
}

/// What a stream's handlers share.
struct Stream<'a, P> {
    server: &'a XdsServer,
    conn: &'a Connection,
    proto: &'a Mutex<P>,
    tx: &'a Tx,
}

// === impl Stream ===

impl<P: Protocol> Stream<'_, P> {
    async fn on_request(&self, req: P::Request) -> Result<(), Status> {
        let type_url = P::type_url(&req);
        let short = short_type(type_url);
        let nonce = P::nonce(&req);
        let proxy = &self.conn.proxy;
        let action = lock(self.proto).on_request(&req);
        match action {
            Action::Respond => self.send(type_url, None, true).await?,
            Action::Ack => tracing::trace!(%proxy, ty = short, nonce, "ACK"),
            Action::Nack(message) => {
                self.server.inner.metrics.rejected(short);
                tracing::warn!(%proxy, ty = short, nonce, error = %message, "proxy rejected config (NACK); it keeps its last accepted config");
            }
            Action::Stale => tracing::debug!(%proxy, ty = short, nonce, "stale nonce ignored"),
        }
        Ok(())
    }

    async fn on_push(&self, push: PushRequest) -> Result<(), Status> {
        let _permit = self.server.inner.push_limit.acquire().await;
        for type_url in PUSH_ORDER {
            let wanted = {
                let proto = lock(self.proto);
                proto.watches(type_url) && wanted_by(&push, type_url, proto.state(type_url))
            };
            if wanted {
                self.send(type_url, Some(push.start), false).await?;
            }
        }
        Ok(())
    }

    /// Generates (or finds cached) what the proxy should have of `type_url` and sends what
    /// it lacks. `force` answers a request even when nothing changed.
    async fn send(
        &self,
        type_url: &str,
        push_start: Option<Instant>,
        force: bool,
    ) -> Result<(), Status> {
        let generation = self.server.current();
        let scope = self.conn.scope(&generation);
        let proxy = &self.conn.proxy;
        let started = Instant::now();
        let resp = {
            let mut proto = lock(self.proto);
            let names = proto.state(type_url).map_or(&NO_NAMES, |s| &s.names);
            let resources = generation
                .resources_in(proxy, &scope, type_url, names)
                .unwrap_or_else(|| {
                    tracing::warn!(%proxy, %type_url, "unknown type requested; answering with no resources");
                    Vec::new()
                });
            proto.respond(type_url, generation.version(), &resources, force)
        };
        let Some(resp) = resp else { return Ok(()) };
        self.server
            .inner
            .metrics
            .pushed(short_type(type_url), started.elapsed(), push_start);
        self.tx
            .send(Outgoing::Message(P::encode(&resp)))
            .await
            .map_err(|_| Status::cancelled("the proxy went away"))
    }
}

/// The HTTP/2 server xDS is served on, with Pilot's settings: keepalive pings so dead proxies
/// are noticed, no Nagle delay on responses, and receive windows sized for what proxies send
/// (ACKs and name lists, not megabytes): the window bounds what a connection can make Pilot
/// buffer before the stream reads it, 1 MiB per stream by default.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .tcp_nodelay(true)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(512 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: Vec<Bytes>) -> Vec<Bytes> {
        let mut it = chunks.into_iter().peekable();
        std::iter::from_fn(|| next_frame(&mut it)).collect()
    }

    #[test]
    fn short_chunks_are_joined_and_long_ones_pass_as_they_are() {
        let small: Vec<Bytes> = (0..1000u32)
            .map(|i| Bytes::from(format!("<{i:04}>").repeat(10)))
            .collect();
        let long = Bytes::from(vec![7u8; 3 * FRAME_TARGET]);
        let mut chunks = small[..500].to_vec();
        chunks.push(long.clone());
        chunks.extend_from_slice(&small[500..]);
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();

        let out = frames(chunks);
        let joined: Vec<u8> = out.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(joined, expected, "the bytes and their order are kept");
        // 60 KB of 60-byte chunks on each side of the long one: a handful of frames.
        assert!(out.len() <= 11, "{} frames", out.len());
        assert!(
            out.iter()
                .all(|f| f.len() < 2 * FRAME_TARGET || f.len() == long.len())
        );
        let passed = out.iter().find(|f| f.len() == long.len()).unwrap();
        assert_eq!(
            passed.as_ptr(),
            long.as_ptr(),
            "the long chunk is not copied"
        );
    }

    #[test]
    fn a_lone_chunk_is_not_copied() {
        let head = Bytes::from_static(b"\0\0\0\0\x05hello");
        let out = frames(vec![head.clone()]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ptr(), head.as_ptr());
        assert!(frames(Vec::new()).is_empty());
    }
}
