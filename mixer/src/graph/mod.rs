//! The mesh's topology, from the reports Mixer takes in: who calls whom, how often, how fast,
//! how many fail and whether over mutual TLS.
//!
//! Every report entry (an Envoy access-log entry or an `istio.mixer.v1` Report bag) is one
//! request (or TCP connection) on an edge keyed by its source workload (name, namespace,
//! version), destination service (host) and destination workload. Each edge keeps, per
//! reporter (the destination's sidecar, `context.reporter.kind: inbound`, or the source's),
//! time buckets ([`GraphSettings::bucket`] wide over [`GraphSettings::retention`]) of request,
//! error (5xx, or no response at all) and mTLS counts, response classes and a latency
//! histogram for p50/p99; and a bounded ring of its recent requests (method, path, code,
//! latency). The store is bounded: beyond [`GraphSettings::max_edges`] edges or
//! [`GraphSettings::max_nodes`] nodes, new edges are refused and counted
//! (`mixer_graph_dropped_entries_total`); edges silent for the whole retention are evicted.
//!
//! - [`view`]: a time window of the store as nodes and edges (our JSON, Istio servicegraph's
//!   `d3` and `dot` shapes).
//! - [`http`]: the monitoring-port routes (`/graph`, `/graph.json`, `/graph/edge`) and the
//!   routing config fetched from Pilot.

pub mod http;
pub mod view;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::attribute::{AttrId, Bag, DenseBag, Value, Vocabulary};
use crate::config::Resolved;
use crate::dispatch::Dispatcher;

/// Upper bounds of the latency histogram's buckets, in microseconds (the last is open).
pub const LATENCY_BOUNDS_US: [u64; 22] = [
    250,
    500,
    1_000,
    2_000,
    3_000,
    5_000,
    7_500,
    10_000,
    15_000,
    25_000,
    50_000,
    75_000,
    100_000,
    150_000,
    250_000,
    500_000,
    750_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    u64::MAX,
];
const HIST: usize = LATENCY_BOUNDS_US.len();

/// Response classes counted per bucket: `0` (no response), 1xx-2xx, 3xx, 4xx, 5xx.
pub const CLASSES: [&str; 5] = ["none", "2xx", "3xx", "4xx", "5xx"];

/// Who reported an entry: the destination's sidecar (inbound) or the source's (outbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Destination = 0,
    Source = 1,
}

/// Settings of the graph store.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphSettings {
    /// Off: reports are not looked at and the routes say the graph is off.
    pub enabled: bool,
    /// Width of a time bucket.
    pub bucket: Duration,
    /// How far back the store keeps buckets (the longest window).
    pub retention: Duration,
    /// Most edges kept.
    pub max_edges: usize,
    /// Most nodes (workloads and services) kept.
    pub max_nodes: usize,
    /// Recent requests kept per edge.
    pub recent: usize,
}

/// Errors of the graph: bad settings, bad queries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("{field}: {message}")]
    Settings {
        field: &'static str,
        message: String,
    },
    #[error("query parameter {param}: {message}")]
    Query {
        param: &'static str,
        message: String,
    },
}

/// A workload as the graph names it; empty fields are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub version: Box<str>,
}

/// The identity of an edge of the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EdgeKey {
    pub source: Workload,
    /// The destination service's host (`reviews.default.svc.cluster.local`), or empty.
    pub service: Box<str>,
    pub service_namespace: Box<str>,
    pub destination: Workload,
    /// `http`, `grpc` or `tcp`.
    pub protocol: Box<str>,
}

/// Counts of one bucket (or of a window, summed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub mtls: u64,
    pub classes: [u64; 5],
    pub latency: [u64; HIST],
}

#[derive(Debug, Clone)]
struct Bucket {
    index: u64,
    requests: u32,
    errors: u32,
    mtls: u32,
    classes: [u32; 5],
    latency: [u32; HIST],
}

/// One request of an edge's recent ring.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recent {
    /// When Mixer took it in, milliseconds since the epoch.
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    /// `0` when there was no response (or a TCP connection).
    pub code: i64,
    pub latency_us: u64,
    pub mtls: bool,
    pub reporter: Option<Reporter>,
}

#[derive(Debug)]
struct Edge {
    key: EdgeKey,
    series: [VecDeque<Bucket>; 2],
    recent: VecDeque<Recent>,
    last_index: u64,
}

/// The attribute ids the graph reads, for one vocabulary.
#[derive(Debug, Clone)]
struct Ids {
    vocab: Arc<Vocabulary>,
    src_name: Option<AttrId>,
    src_ns: Option<AttrId>,
    src_ns_fallback: Option<AttrId>,
    src_labels: Option<AttrId>,
    src_version: Option<AttrId>,
    dst_name: Option<AttrId>,
    dst_ns: Option<AttrId>,
    dst_ns_fallback: Option<AttrId>,
    dst_labels: Option<AttrId>,
    dst_version: Option<AttrId>,
    svc_host: Option<AttrId>,
    svc_name: Option<AttrId>,
    svc_ns: Option<AttrId>,
    code: Option<AttrId>,
    duration: Option<AttrId>,
    conn_duration: Option<AttrId>,
    mtls: Option<AttrId>,
    principal: Option<AttrId>,
    method: Option<AttrId>,
    path: Option<AttrId>,
    reporter: Option<AttrId>,
    protocol: Option<AttrId>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: Option<Ids>,
    index: HashMap<u64, Vec<u32>, BuildHasherDefault<Prehashed>>,
    edges: Vec<Option<Edge>>,
    free: Vec<u32>,
    live_edges: usize,
    nodes: HashMap<NodeId, u32>,
    last_sweep: u64,
}

/// A node of the graph: a workload or a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeId {
    Workload(Workload),
    Service { host: Box<str>, namespace: Box<str> },
}

/// The graph's own metrics.
#[derive(Debug, Clone, Default)]
pub struct GraphMetrics {
    /// Entries refused because a cap was reached.
    pub dropped: Counter,
    /// Entries with neither a destination service nor workload.
    pub unattributed: Counter,
    pub edges: Gauge,
    pub nodes: Gauge,
}

/// The graph store. Cheap to share (`Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct Graph {
    settings: GraphSettings,
    inner: Mutex<Inner>,
    pub metrics: GraphMetrics,
}

/// What the graph reads of one entry.
struct Entry<'a> {
    key: KeyRef<'a>,
    reporter: Reporter,
    code: Option<i64>,
    latency_us: Option<u64>,
    mtls: bool,
    method: &'a str,
    path: &'a str,
}

struct KeyRef<'a> {
    src: [&'a str; 3],
    service: &'a str,
    service_namespace: &'a str,
    dst: [&'a str; 3],
    protocol: &'a str,
}

// === impl GraphSettings ===

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            bucket: Duration::from_secs(10),
            retention: Duration::from_secs(600),
            max_edges: 10_000,
            max_nodes: 5_000,
            recent: 20,
        }
    }
}

impl GraphSettings {
    /// Checks the settings; the error names the setting.
    pub fn validate(&self) -> Result<(), GraphError> {
        let bad = |field, message: &str| {
            Err(GraphError::Settings {
                field,
                message: message.to_string(),
            })
        };
        if self.bucket < Duration::from_secs(1) {
            return bad("graphBucket", "must be at least 1s");
        }
        if self.retention < self.bucket || self.retention > Duration::from_secs(24 * 3600) {
            return bad(
                "graphRetention",
                &format!(
                    "{:?} is outside {:?}..24h (one bucket to a day)",
                    self.retention, self.bucket
                ),
            );
        }
        if self.max_edges == 0 {
            return bad("graphMaxEdges", "must be at least 1");
        }
        if self.max_nodes < 2 {
            return bad("graphMaxNodes", "must be at least 2");
        }
        Ok(())
    }

    fn buckets(&self) -> u64 {
        (self.retention.as_secs() / self.bucket.as_secs().max(1)).max(1)
    }
}

// === impl Stats ===

impl Stats {
    fn add_bucket(&mut self, b: &Bucket) {
        self.requests += u64::from(b.requests);
        self.errors += u64::from(b.errors);
        self.mtls += u64::from(b.mtls);
        for (o, i) in self.classes.iter_mut().zip(b.classes) {
            *o += u64::from(i);
        }
        for (o, i) in self.latency.iter_mut().zip(b.latency) {
            *o += u64::from(i);
        }
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Stats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.mtls += other.mtls;
        for (o, i) in self.classes.iter_mut().zip(other.classes) {
            *o += i;
        }
        for (o, i) in self.latency.iter_mut().zip(other.latency) {
            *o += i;
        }
    }

    /// The `q` quantile (0..1) of latency, in milliseconds, interpolated inside its bucket;
    /// `None` without latencies.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.latency.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
                // The open bucket reports its lower bound.
                let upper = if LATENCY_BOUNDS_US[i] == u64::MAX {
                    lower
                } else {
                    LATENCY_BOUNDS_US[i]
                };
                let frac = (rank - seen as f64) / n as f64;
                let us = lower as f64 + (upper - lower) as f64 * frac;
                return Some(us / 1000.0);
            }
            seen += n;
        }
        None
    }
}

// === impl Bucket ===

impl Bucket {
    fn new(index: u64) -> Self {
        Self {
            index,
            requests: 0,
            errors: 0,
            mtls: 0,
            classes: [0; 5],
            latency: [0; HIST],
        }
    }
}

/// The histogram bucket of a latency.
fn latency_slot(us: u64) -> usize {
    LATENCY_BOUNDS_US
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(HIST - 1)
}

fn class(code: i64) -> usize {
    match code {
        100..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500.. => 4,
        _ => 0,
    }
}

// === impl Ids ===

impl Ids {
    fn new(vocab: Arc<Vocabulary>) -> Self {
        let id = |n: &str| vocab.id(n);
        Self {
            src_name: id("source.workload.name"),
            src_ns: id("source.workload.namespace"),
            src_ns_fallback: id("source.namespace"),
            src_labels: id("source.labels"),
            src_version: id("source.version"),
            dst_name: id("destination.workload.name"),
            dst_ns: id("destination.workload.namespace"),
            dst_ns_fallback: id("destination.namespace"),
            dst_labels: id("destination.labels"),
            dst_version: id("destination.version"),
            svc_host: id("destination.service.host"),
            svc_name: id("destination.service.name"),
            svc_ns: id("destination.service.namespace"),
            code: id("response.code"),
            duration: id("response.duration"),
            conn_duration: id("connection.duration"),
            mtls: id("connection.mtls"),
            principal: id("source.principal"),
            method: id("request.method"),
            path: id("request.path"),
            reporter: id("context.reporter.kind"),
            protocol: id("context.protocol"),
            vocab,
        }
    }
}

fn text(bag: &dyn Bag, id: Option<AttrId>) -> Option<&str> {
    match bag.get(id?)? {
        Value::String(std::borrow::Cow::Borrowed(s))
        | Value::DnsName(std::borrow::Cow::Borrowed(s))
        | Value::Uri(std::borrow::Cow::Borrowed(s))
        | Value::EmailAddress(std::borrow::Cow::Borrowed(s)) => Some(s),
        // An owned value does not outlive the call; the bags Mixer builds borrow.
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

fn label<'b>(bag: &'b dyn Bag, id: Option<AttrId>, key: &str) -> Option<&'b str> {
    match bag.get(id?)? {
        Value::StringMap(m) => m.get(key).filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// Reads what the graph needs of `bag`; `None` when it names no destination at all.
fn entry<'b>(ids: &Ids, bag: &'b dyn Bag) -> Option<Entry<'b>> {
    let service = text(bag, ids.svc_host).or_else(|| text(bag, ids.svc_name));
    let dst_name = text(bag, ids.dst_name);
    if service.is_none() && dst_name.is_none() {
        return None;
    }
    let src = [
        text(bag, ids.src_ns)
            .or_else(|| text(bag, ids.src_ns_fallback))
            .unwrap_or(""),
        text(bag, ids.src_name).unwrap_or(""),
        label(bag, ids.src_labels, "version")
            .or_else(|| text(bag, ids.src_version))
            .unwrap_or(""),
    ];
    let dst = [
        text(bag, ids.dst_ns)
            .or_else(|| text(bag, ids.dst_ns_fallback))
            .unwrap_or(""),
        dst_name.unwrap_or(""),
        label(bag, ids.dst_labels, "version")
            .or_else(|| text(bag, ids.dst_version))
            .unwrap_or(""),
    ];
    let reporter = match text(bag, ids.reporter) {
        Some("outbound") => Reporter::Source,
        _ => Reporter::Destination,
    };
    let code = match ids.code.and_then(|id| bag.get(id)) {
        Some(Value::Int64(c)) => Some(c),
        _ => None,
    };
    let latency_us = match ids
        .duration
        .and_then(|id| bag.get(id))
        .or_else(|| ids.conn_duration.and_then(|id| bag.get(id)))
    {
        Some(Value::Duration(d)) => Some(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        _ => None,
    };
    let mtls = matches!(ids.mtls.and_then(|id| bag.get(id)), Some(Value::Bool(true)))
        || text(bag, ids.principal).is_some();
    Some(Entry {
        key: KeyRef {
            src,
            service: service.unwrap_or(""),
            service_namespace: text(bag, ids.svc_ns).unwrap_or(""),
            dst,
            protocol: text(bag, ids.protocol).unwrap_or("http"),
        },
        reporter,
        code,
        latency_us,
        mtls,
        method: text(bag, ids.method).unwrap_or(""),
        path: text(bag, ids.path).unwrap_or(""),
    })
}

/// The index's keys are already hashes ([`KeyRef::hash`]): used as they are.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// String equality eight bytes at a time: the key's fields are short, and a call to
/// `memcmp` per field was most of the graph's time on the report path.
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (mut wx, mut wy) = ([0u8; 8], [0u8; 8]);
        wx.copy_from_slice(x);
        wy.copy_from_slice(y);
        if u64::from_ne_bytes(wx) != u64::from_ne_bytes(wy) {
            return false;
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let (mut wx, mut wy) = ([0u8; 8], [0u8; 8]);
    wx[..ra.len()].copy_from_slice(ra);
    wy[..rb.len()].copy_from_slice(rb);
    u64::from_ne_bytes(wx) == u64::from_ne_bytes(wy)
}

// === impl KeyRef ===

impl KeyRef<'_> {
    /// A multiply-rotate hash (as FxHash) over the key's workloads and service eight bytes at
    /// a time, each field's length mixed in after it: cheap on the report path; keys that
    /// share it are told apart by comparison.
    fn hash(&self) -> u64 {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h: u64 = 0;
        let mut mix = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        // The fields that tell edges apart most; the rest only in the comparison.
        for f in [self.src[1], self.service, self.dst[1], self.dst[2]] {
            let mut chunks = f.as_bytes().chunks_exact(8);
            for c in &mut chunks {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                mix(u64::from_le_bytes(w));
            }
            let mut w = [0u8; 8];
            let rest = chunks.remainder();
            w[..rest.len()].copy_from_slice(rest);
            mix(u64::from_le_bytes(w));
            mix(f.len() as u64);
        }
        h
    }

    fn matches(&self, k: &EdgeKey) -> bool {
        same(&k.source.name, self.src[1])
            && same(&k.service, self.service)
            && same(&k.destination.name, self.dst[1])
            && same(&k.destination.version, self.dst[2])
            && same(&k.source.namespace, self.src[0])
            && same(&k.source.version, self.src[2])
            && same(&k.service_namespace, self.service_namespace)
            && same(&k.destination.namespace, self.dst[0])
            && same(&k.protocol, self.protocol)
    }

    fn to_key(&self) -> EdgeKey {
        let w = |p: &[&str; 3]| Workload {
            namespace: p[0].into(),
            name: p[1].into(),
            version: p[2].into(),
        };
        EdgeKey {
            source: w(&self.src),
            service: self.service.into(),
            service_namespace: self.service_namespace.into(),
            destination: w(&self.dst),
            protocol: self.protocol.into(),
        }
    }
}

// === impl EdgeKey ===

impl EdgeKey {
    /// The nodes this edge holds: source, service (if named), destination (if named).
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut out = vec![NodeId::Workload(self.source.clone())];
        if !self.service.is_empty() {
            out.push(NodeId::Service {
                host: self.service.clone(),
                namespace: self.service_namespace.clone(),
            });
        }
        if !self.destination.name.is_empty() {
            out.push(NodeId::Workload(self.destination.clone()));
        }
        out
    }
}

// === impl Edge ===

impl Edge {
    fn record(&mut self, e: &Entry<'_>, index: u64, at_ms: u64, keep: u64, recent: usize) {
        let series = &mut self.series[e.reporter as usize];
        if series.back().is_none_or(|b| b.index < index) {
            series.push_back(Bucket::new(index));
        }
        while series
            .front()
            .is_some_and(|b| b.index + keep <= index && series.len() > 1)
        {
            series.pop_front();
        }
        let Some(b) = series.back_mut() else {
            return;
        };
        b.requests += 1;
        let code = e.code.unwrap_or(0);
        // TCP connections have no code; they fail when nothing was answered... which their
        // entries cannot say, so only HTTP entries count errors.
        let http = e.code.is_some() || !e.method.is_empty();
        if http && (code >= 500 || code <= 0) {
            b.errors += 1;
        }
        if e.mtls {
            b.mtls += 1;
        }
        if http {
            b.classes[class(code)] += 1;
        }
        if let Some(us) = e.latency_us {
            b.latency[latency_slot(us)] += 1;
        }
        self.last_index = self.last_index.max(index);
        if recent == 0 {
            return;
        }
        // The ring reuses its oldest request's strings: no allocation once it is full.
        let mut r = if self.recent.len() >= recent {
            self.recent.pop_front().unwrap_or_default()
        } else {
            Recent::default()
        };
        r.at_ms = at_ms;
        r.method.clear();
        r.method.push_str(e.method);
        r.path.clear();
        r.path.push_str(truncate(e.path, 256));
        r.code = code;
        r.latency_us = e.latency_us.unwrap_or(0);
        r.mtls = e.mtls;
        r.reporter = Some(e.reporter);
        self.recent.push_back(r);
    }

    /// The counts of `reporter` in buckets `from..=to`.
    fn stats(&self, reporter: Reporter, from: u64, to: u64) -> Stats {
        let mut s = Stats::default();
        for b in &self.series[reporter as usize] {
            if b.index >= from && b.index <= to {
                s.add_bucket(b);
            }
        }
        s
    }

    fn heap_bytes(&self) -> usize {
        let key = [
            &self.key.source.namespace,
            &self.key.source.name,
            &self.key.source.version,
            &self.key.service,
            &self.key.service_namespace,
            &self.key.destination.namespace,
            &self.key.destination.name,
            &self.key.destination.version,
            &self.key.protocol,
        ]
        .iter()
        .map(|s| s.len())
        .sum::<usize>();
        let buckets =
            (self.series[0].capacity() + self.series[1].capacity()) * std::mem::size_of::<Bucket>();
        let recent = self.recent.capacity() * std::mem::size_of::<Recent>()
            + self
                .recent
                .iter()
                .map(|r| r.method.capacity() + r.path.capacity())
                .sum::<usize>();
        key + buckets + recent
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Seconds and milliseconds since the epoch of `t`.
fn epoch(t: SystemTime) -> (u64, u64) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (
        d.as_secs(),
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    )
}

/// One edge of the store, read for a window.
#[derive(Debug, Clone)]
pub struct EdgeRead {
    pub key: EdgeKey,
    /// The reporter whose counts these are (the destination's when it reported in the
    /// window, else the source's).
    pub reporter: Reporter,
    pub stats: Stats,
    pub recent: Vec<Recent>,
}

// === impl Graph ===

impl Graph {
    /// A store with `settings` (which [`GraphSettings::validate`] accepts).
    pub fn new(settings: GraphSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::default()),
            metrics: GraphMetrics::default(),
        }
    }

    /// Registers the graph's metrics (`mixer_graph_*`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "mixer_graph_dropped_entries",
            "Report entries the topology graph refused because its node or edge cap was reached",
            self.metrics.dropped.clone(),
        );
        registry.register(
            "mixer_graph_unattributed_entries",
            "Report entries with neither a destination service nor a destination workload",
            self.metrics.unattributed.clone(),
        );
        registry.register(
            "mixer_graph_edges",
            "Edges the topology graph holds",
            self.metrics.edges.clone(),
        );
        registry.register(
            "mixer_graph_nodes",
            "Nodes (workloads and services) the topology graph holds",
            self.metrics.nodes.clone(),
        );
    }

    pub fn settings(&self) -> &GraphSettings {
        &self.settings
    }

    /// Takes in the bags of one report message (the hook of the report front doors). With a
    /// pod cache (Kubernetes), the workload attributes `kubernetesenv` generates are read too,
    /// for the entries that lack them.
    pub fn record_report(&self, dispatcher: &Dispatcher, cfg: &Resolved, bags: &[DenseBag<'_>]) {
        if !self.settings.enabled {
            return;
        }
        // Generation is on for every entry or for none (a pod cache and generation rules):
        // the first says which.
        let Some(first) = bags.first() else {
            return;
        };
        let Some(first) = dispatcher.generate(cfg, first as &dyn Bag) else {
            self.record(&cfg.vocab, bags.iter().map(|b| b as &dyn Bag));
            return;
        };
        let mut generated = Vec::with_capacity(bags.len());
        generated.push(Some(first));
        generated.extend(
            bags[1..]
                .iter()
                .map(|b| dispatcher.generate(cfg, b as &dyn Bag)),
        );
        self.record(
            &cfg.vocab,
            bags.iter().zip(&generated).map(|(b, g)| match g {
                Some(g) => g as &dyn Bag,
                None => b as &dyn Bag,
            }),
        );
    }

    /// Takes in report entries now.
    pub fn record<'b>(&self, vocab: &Arc<Vocabulary>, bags: impl IntoIterator<Item = &'b dyn Bag>) {
        self.record_at(SystemTime::now(), vocab, bags);
    }

    /// Takes in report entries as of `now`.
    pub fn record_at<'b>(
        &self,
        now: SystemTime,
        vocab: &Arc<Vocabulary>,
        bags: impl IntoIterator<Item = &'b dyn Bag>,
    ) {
        if !self.settings.enabled {
            return;
        }
        let (secs, ms) = epoch(now);
        let width = self.settings.bucket.as_secs().max(1);
        let index = secs / width;
        let keep = self.settings.buckets();
        let mut inner = self.inner.lock();
        if inner
            .ids
            .as_ref()
            .is_none_or(|i| !Arc::ptr_eq(&i.vocab, vocab))
        {
            inner.ids = Some(Ids::new(vocab.clone()));
        }
        if index > inner.last_sweep {
            inner.last_sweep = index;
            self.sweep(&mut inner, index);
        }
        let Some(ids) = inner.ids.clone() else {
            return;
        };
        for bag in bags {
            let Some(e) = entry(&ids, bag) else {
                self.metrics.unattributed.inc();
                continue;
            };
            let Some(slot) = self.edge_for(&mut inner, &e.key) else {
                self.metrics.dropped.inc();
                continue;
            };
            if let Some(edge) = inner.edges[slot].as_mut() {
                edge.record(&e, index, ms, keep, self.settings.recent);
            }
        }
    }

    /// The slot of the edge of `key`, made if the caps allow.
    fn edge_for(&self, inner: &mut Inner, key: &KeyRef<'_>) -> Option<usize> {
        let h = key.hash();
        if let Some(slots) = inner.index.get(&h) {
            for &s in slots {
                if inner.edges[s as usize]
                    .as_ref()
                    .is_some_and(|e| key.matches(&e.key))
                {
                    return Some(s as usize);
                }
            }
        }
        if inner.live_edges >= self.settings.max_edges {
            return None;
        }
        let owned = key.to_key();
        let nodes = owned.nodes();
        let new_nodes = nodes
            .iter()
            .filter(|n| !inner.nodes.contains_key(n))
            .count();
        if inner.nodes.len() + new_nodes > self.settings.max_nodes {
            return None;
        }
        for n in nodes {
            *inner.nodes.entry(n).or_insert(0) += 1;
        }
        let edge = Edge {
            key: owned,
            series: [VecDeque::new(), VecDeque::new()],
            recent: VecDeque::new(),
            last_index: 0,
        };
        let slot = match inner.free.pop() {
            Some(s) => {
                inner.edges[s as usize] = Some(edge);
                s
            }
            None => {
                inner.edges.push(Some(edge));
                u32::try_from(inner.edges.len() - 1).unwrap_or(u32::MAX)
            }
        };
        inner.index.entry(h).or_default().push(slot);
        inner.live_edges += 1;
        self.metrics.edges.set(inner.live_edges as i64);
        self.metrics.nodes.set(inner.nodes.len() as i64);
        Some(slot as usize)
    }

    /// Evicts the edges with nothing in the retention (and the nodes only they held).
    fn sweep(&self, inner: &mut Inner, index: u64) {
        let keep = self.settings.buckets();
        let mut gone = Vec::new();
        for (slot, e) in inner.edges.iter().enumerate() {
            if let Some(e) = e
                && e.last_index + keep <= index
            {
                gone.push(slot);
            }
        }
        for slot in gone {
            let Some(edge) = inner.edges[slot].take() else {
                continue;
            };
            let h = KeyRef {
                src: [
                    &edge.key.source.namespace,
                    &edge.key.source.name,
                    &edge.key.source.version,
                ],
                service: &edge.key.service,
                service_namespace: &edge.key.service_namespace,
                dst: [
                    &edge.key.destination.namespace,
                    &edge.key.destination.name,
                    &edge.key.destination.version,
                ],
                protocol: &edge.key.protocol,
            }
            .hash();
            if let Some(slots) = inner.index.get_mut(&h) {
                slots.retain(|&s| s as usize != slot);
                if slots.is_empty() {
                    inner.index.remove(&h);
                }
            }
            for n in edge.key.nodes() {
                if let Some(c) = inner.nodes.get_mut(&n) {
                    *c -= 1;
                    if *c == 0 {
                        inner.nodes.remove(&n);
                    }
                }
            }
            inner.free.push(slot as u32);
            inner.live_edges -= 1;
        }
        self.metrics.edges.set(inner.live_edges as i64);
        self.metrics.nodes.set(inner.nodes.len() as i64);
    }

    /// Every edge with requests in the `window` before `now`: its counts (the destination's
    /// reports when it sent any in the window, else the source's) and, with `recent`, its
    /// recent requests.
    pub fn read(&self, now: SystemTime, window: Duration, recent: bool) -> Vec<EdgeRead> {
        let (secs, _) = epoch(now);
        let width = self.settings.bucket.as_secs().max(1);
        let to = secs / width;
        let n = window.as_secs().div_ceil(width).max(1);
        let from = (to + 1).saturating_sub(n);
        let since_ms = (secs.saturating_sub(window.as_secs())) * 1000;
        let inner = self.inner.lock();
        let mut out = Vec::new();
        for e in inner.edges.iter().flatten() {
            let dst = e.stats(Reporter::Destination, from, to);
            let (reporter, stats) = if dst.requests > 0 {
                (Reporter::Destination, dst)
            } else {
                (Reporter::Source, e.stats(Reporter::Source, from, to))
            };
            if stats.requests == 0 {
                continue;
            }
            let recent = if recent {
                e.recent
                    .iter()
                    .filter(|r| r.at_ms >= since_ms)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            out.push(EdgeRead {
                key: e.key.clone(),
                reporter,
                stats,
                recent,
            });
        }
        out
    }

    /// How many edges and nodes the store holds.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.live_edges, inner.nodes.len())
    }

    /// An estimate of the heap the store holds, in bytes (edges, their buckets and rings,
    /// the index and the node table).
    pub fn heap_bytes(&self) -> usize {
        let inner = self.inner.lock();
        let edges = inner.edges.capacity() * std::mem::size_of::<Option<Edge>>()
            + inner
                .edges
                .iter()
                .flatten()
                .map(Edge::heap_bytes)
                .sum::<usize>();
        let index = inner.index.capacity() * (8 + std::mem::size_of::<Vec<u32>>() + 8)
            + inner
                .index
                .values()
                .map(|v| v.capacity() * 4)
                .sum::<usize>();
        let nodes = inner.nodes.capacity() * (std::mem::size_of::<NodeId>() + 4 + 8)
            + inner
                .nodes
                .keys()
                .map(|n| match n {
                    NodeId::Workload(w) => w.namespace.len() + w.name.len() + w.version.len(),
                    NodeId::Service { host, namespace } => host.len() + namespace.len(),
                })
                .sum::<usize>();
        edges + index + nodes
    }
}

#[cfg(test)]
mod tests;
