//! Envoy access-log service v3: every HTTP and TCP entry becomes a Report bag.
//!
//! HTTP entries give `request.*` (method, scheme, host, path, url_path, useragent, referer,
//! id, headers, size, total_size, time), `response.*` (code, size, total_size, headers,
//! duration, time), `source.ip`, `destination.ip`/`destination.port`, peer principals from
//! TLS, `connection.mtls`, `context.protocol` (`http`, or `grpc`); TCP entries give
//! `connection.received.bytes`/`sent.bytes` (and the `_total` forms), `connection.duration`
//! and `context.protocol: tcp`. Custom tags named like attributes set those attributes.

use std::borrow::Cow;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Address, address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, TcpAccessLogEntry,
};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogService;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use futures::StreamExt;
use mesh_runtime::Shutdown;
use tonic::{Request, Response, Status, Streaming};

use super::bag::{self, set, set_str};
use crate::attribute::{Bag, DenseBag, Value, Vocabulary};
use crate::config::Resolved;
use crate::dispatch::Dispatcher;
use crate::graph::Graph;

/// The access-log service.
///
/// Envoy keeps one access-log stream open for as long as it runs, so a draining Mixer ends
/// its streams itself once `shutdown` fires (after taking in what has already arrived):
/// otherwise the gRPC server's graceful stop would wait for them until the pod's grace
/// period is over. Envoy opens a new stream, to another replica, for its next entries.
#[derive(Debug, Clone)]
pub struct AccessLog {
    dispatcher: Arc<Dispatcher>,
    shutdown: Shutdown,
    graph: Option<Arc<Graph>>,
}

/// How long a draining stream waits for entries still on their way before it ends.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

const METHODS: &[&str] = &[
    "", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn socket(addr: &Option<Address>) -> Option<(std::net::IpAddr, u32)> {
    match addr.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(sa) => {
            let ip = sa.address.parse().ok()?;
            let port = match sa.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            Some((ip, port))
        }
        _ => None,
    }
}

type Cert = envoy_types::pb::envoy::data::accesslog::v3::tls_properties::CertificateProperties;

/// The URI subject alternative name of a certificate (the SPIFFE identity).
fn san(p: &Option<Cert>) -> Option<&str> {
    use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::subject_alt_name::San;
    p.as_ref()?
        .subject_alt_name
        .iter()
        .find_map(|s| match &s.san {
            Some(San::Uri(u)) => Some(u.as_str()),
            _ => None,
        })
}

fn common<'a>(b: &mut DenseBag<'a>, vocab: &Vocabulary, c: &'a AccessLogCommon) {
    if let Some((ip, _)) = socket(&c.downstream_remote_address) {
        set(b, vocab, "source.ip", Value::IpAddress(ip));
    }
    // A sidecar reporting its outbound call (`context.reporter.kind: outbound`) names the
    // workload it called in the upstream address; downstream, it would name a service VIP
    // or its own listener. Inbound, the workload is where the connection arrived.
    let outbound = c
        .custom_tags
        .get("context.reporter.kind")
        .is_some_and(|k| k == "outbound");
    let destination = if outbound && c.upstream_remote_address.is_some() {
        &c.upstream_remote_address
    } else {
        &c.downstream_local_address
    };
    if let Some((ip, port)) = socket(destination) {
        set(b, vocab, "destination.ip", Value::IpAddress(ip));
        set(b, vocab, "destination.port", Value::Int64(i64::from(port)));
    }
    let start = c.start_time.as_ref().and_then(bag::timestamp);
    if let Some(t) = start {
        set(b, vocab, "request.time", Value::Timestamp(t));
        set(b, vocab, "context.time", Value::Timestamp(t));
    }
    if let Some(tls) = &c.tls_properties {
        set_str(
            b,
            vocab,
            "connection.requested_server_name",
            &tls.tls_sni_hostname,
        );
        if let Some(p) = san(&tls.peer_certificate_properties) {
            set_str(b, vocab, "source.principal", bag::principal(p));
            set(b, vocab, "connection.mtls", Value::Bool(true));
        }
        if let Some(p) = san(&tls.local_certificate_properties) {
            set_str(b, vocab, "destination.principal", bag::principal(p));
        }
    }
    for (k, v) in &c.custom_tags {
        bag::set_text(b, vocab, k, v);
    }
    // Outbound reports name the destination service by its host only (Pilot takes it from
    // the upstream cluster's metadata); a Kubernetes host `NAME.NAMESPACE.svc.DOMAIN` gives
    // the rest, as Istio's sidecars sent it.
    if let Some((name, namespace)) = c
        .custom_tags
        .get("destination.service.host")
        .and_then(|h| kubernetes_service(h))
    {
        for (attr, value) in [
            ("destination.service.name", Cow::Borrowed(name)),
            ("destination.service.namespace", Cow::Borrowed(namespace)),
            (
                "destination.service.uid",
                Cow::Owned(format!("istio://{namespace}/services/{name}")),
            ),
        ] {
            if !c.custom_tags.contains_key(attr) {
                set(b, vocab, attr, Value::String(value));
            }
        }
    }
}

/// `(name, namespace)` of a Kubernetes service host, `NAME.NAMESPACE.svc.DOMAIN`.
fn kubernetes_service(host: &str) -> Option<(&str, &str)> {
    let mut parts = host.splitn(4, '.');
    let (name, namespace) = (parts.next()?, parts.next()?);
    (parts.next()? == "svc" && parts.next().is_some_and(|d| !d.is_empty()))
        .then_some((name, namespace))
        .filter(|(n, ns)| !n.is_empty() && !ns.is_empty())
}

/// The bag of an HTTP entry.
pub fn http_bag<'a>(vocab: &Vocabulary, e: &'a HttpAccessLogEntry) -> DenseBag<'a> {
    let mut b = DenseBag::with_len(vocab.len());
    let mut grpc = false;
    if let Some(req) = &e.request {
        let method = METHODS
            .get(req.request_method as usize)
            .copied()
            .unwrap_or("");
        set_str(&mut b, vocab, "request.method", method);
        set_str(&mut b, vocab, "request.scheme", &req.scheme);
        set_str(&mut b, vocab, "request.host", &req.authority);
        set_str(&mut b, vocab, "request.path", &req.path);
        set_str(
            &mut b,
            vocab,
            "request.url_path",
            req.path.split(['?', '#']).next().unwrap_or(""),
        );
        set_str(&mut b, vocab, "request.useragent", &req.user_agent);
        set_str(&mut b, vocab, "request.referer", &req.referer);
        set_str(&mut b, vocab, "request.id", &req.request_id);
        set(
            &mut b,
            vocab,
            "request.size",
            Value::Int64(req.request_body_bytes as i64),
        );
        set(
            &mut b,
            vocab,
            "request.total_size",
            Value::Int64((req.request_headers_bytes + req.request_body_bytes) as i64),
        );
        if !req.request_headers.is_empty() {
            set(
                &mut b,
                vocab,
                "request.headers",
                Value::StringMap(&req.request_headers),
            );
            grpc = req
                .request_headers
                .get("content-type")
                .is_some_and(|c| c.starts_with("application/grpc"));
        }
    }
    if let Some(resp) = &e.response {
        if let Some(code) = &resp.response_code {
            set(
                &mut b,
                vocab,
                "response.code",
                Value::Int64(i64::from(code.value)),
            );
        }
        set(
            &mut b,
            vocab,
            "response.size",
            Value::Int64(resp.response_body_bytes as i64),
        );
        set(
            &mut b,
            vocab,
            "response.total_size",
            Value::Int64((resp.response_headers_bytes + resp.response_body_bytes) as i64),
        );
        if !resp.response_headers.is_empty() {
            set(
                &mut b,
                vocab,
                "response.headers",
                Value::StringMap(&resp.response_headers),
            );
        }
    }
    set(
        &mut b,
        vocab,
        "context.protocol",
        Value::String(Cow::Borrowed(if grpc { "grpc" } else { "http" })),
    );
    if let Some(c) = &e.common_properties {
        common(&mut b, vocab, c);
        let start = c.start_time.as_ref().and_then(bag::timestamp);
        if let Some(d) = c
            .time_to_last_downstream_tx_byte
            .as_ref()
            .and_then(bag::duration)
        {
            set(&mut b, vocab, "response.duration", Value::Duration(d));
            if let Some(t) = start {
                set(&mut b, vocab, "response.time", Value::Timestamp(t + d));
            }
        }
    }
    b
}

/// The bag of a TCP entry.
pub fn tcp_bag<'a>(vocab: &Vocabulary, e: &'a TcpAccessLogEntry) -> DenseBag<'a> {
    let mut b = DenseBag::with_len(vocab.len());
    set(
        &mut b,
        vocab,
        "context.protocol",
        Value::String(Cow::Borrowed("tcp")),
    );
    if let Some(p) = &e.connection_properties {
        for (n, v) in [
            ("connection.received.bytes", p.received_bytes),
            ("connection.received.bytes_total", p.received_bytes),
            ("connection.sent.bytes", p.sent_bytes),
            ("connection.sent.bytes_total", p.sent_bytes),
        ] {
            set(&mut b, vocab, n, Value::Int64(v as i64));
        }
    }
    if let Some(c) = &e.common_properties {
        common(&mut b, vocab, c);
        if let Some(d) = c.duration.as_ref().and_then(bag::duration) {
            set(&mut b, vocab, "connection.duration", Value::Duration(d));
        }
    }
    b
}

/// Reports every entry of `msg`.
pub fn report_message(dispatcher: &Dispatcher, cfg: &Resolved, msg: &StreamAccessLogsMessage) {
    report_message_with(dispatcher, cfg, msg, None);
}

/// Reports every entry of `msg`, and gives them to the topology `graph` when there is one.
pub fn report_message_with(
    dispatcher: &Dispatcher,
    cfg: &Resolved,
    msg: &StreamAccessLogsMessage,
    graph: Option<&Graph>,
) {
    let bags: Vec<DenseBag<'_>> = match &msg.log_entries {
        Some(LogEntries::HttpLogs(l)) => l
            .log_entry
            .iter()
            .map(|e| http_bag(&cfg.vocab, e))
            .collect(),
        Some(LogEntries::TcpLogs(l)) => {
            l.log_entry.iter().map(|e| tcp_bag(&cfg.vocab, e)).collect()
        }
        None => return,
    };
    dispatcher.report(cfg, bags.iter().map(|b| b as &dyn Bag));
    if let Some(g) = graph {
        g.record_report(dispatcher, cfg, &bags);
    }
}

// === impl AccessLog ===

impl AccessLog {
    pub fn new(dispatcher: Arc<Dispatcher>, shutdown: Shutdown) -> Self {
        Self {
            dispatcher,
            shutdown,
            graph: None,
        }
    }

    /// Also feeds every entry to the topology `graph`.
    pub fn with_graph(mut self, graph: Option<Arc<Graph>>) -> Self {
        self.graph = graph;
        self
    }

    fn take(&self, msg: Result<StreamAccessLogsMessage, Status>) -> Result<(), Status> {
        let msg = msg.map_err(|e| {
            self.dispatcher.metrics.malformed("accesslog");
            Status::invalid_argument(format!("bad access-log message: {e}"))
        })?;
        let cfg = self.dispatcher.config();
        report_message_with(&self.dispatcher, &cfg, &msg, self.graph.as_deref());
        Ok(())
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLog {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.take(msg)?,
                    None => break,
                },
                () = self.shutdown.cancelled() => {
                    // Draining: what has arrived is reported, then the stream ends.
                    while let Ok(Some(msg)) = tokio::time::timeout(DRAIN_IDLE, stream.next()).await {
                        self.take(msg)?;
                    }
                    break;
                }
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::SocketAddress;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;

    use super::*;
    use crate::attribute::Bag;

    fn addr(ip: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    }

    fn entry(reporter: &str) -> TcpAccessLogEntry {
        TcpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                downstream_remote_address: addr("10.244.0.16", 41000),
                // The service VIP the client dialled (outbound), or the pod (inbound).
                downstream_local_address: addr("10.96.68.76", 9080),
                upstream_remote_address: addr("10.244.0.12", 9080),
                custom_tags: [("context.reporter.kind".to_string(), reporter.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn destination_ip(v: &Vocabulary, b: &DenseBag<'_>) -> Option<String> {
        match b.get(v.id("destination.ip")?)? {
            Value::IpAddress(ip) => Some(ip.to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_kubernetes_host_names_its_service() {
        assert_eq!(
            kubernetes_service("ratings.default.svc.cluster.local"),
            Some(("ratings", "default"))
        );
        assert_eq!(kubernetes_service("example.com"), None);
        assert_eq!(kubernetes_service("a.b.svc"), None);
        assert_eq!(kubernetes_service("a.b.c.d"), None);
        let v = Vocabulary::builtin();
        let mut e = entry("outbound");
        if let Some(c) = e.common_properties.as_mut() {
            c.custom_tags.insert(
                "destination.service.host".into(),
                "ratings.bookinfo.svc.cluster.local".into(),
            );
        }
        let b = tcp_bag(&v, &e);
        let text = |name: &str| match v.id(name).and_then(|id| b.get(id)) {
            Some(Value::String(s)) => Some(s.to_string()),
            _ => None,
        };
        assert_eq!(text("destination.service.name").as_deref(), Some("ratings"));
        assert_eq!(
            text("destination.service.uid").as_deref(),
            Some("istio://bookinfo/services/ratings")
        );
    }

    #[test]
    fn outbound_reports_name_the_upstream_workload_inbound_the_local_address() {
        let v = Vocabulary::builtin();
        let out = entry("outbound");
        assert_eq!(
            destination_ip(&v, &tcp_bag(&v, &out)).as_deref(),
            Some("10.244.0.12")
        );
        let inb = entry("inbound");
        assert_eq!(
            destination_ip(&v, &tcp_bag(&v, &inb)).as_deref(),
            Some("10.96.68.76")
        );
    }
}
