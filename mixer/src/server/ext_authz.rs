//! Envoy ext_authz v3: a CheckRequest becomes attributes; preconditions and the quotas of
//! QuotaSpecs bound to the destination service are applied; a denial maps to the HTTP status
//! a Mixer client would answer (PERMISSION_DENIED 403, RESOURCE_EXHAUSTED 429,
//! UNAUTHENTICATED 401, ...) and header operations of matching rules map to the OK response.
//!
//! Attributes: `request.*` (headers, host, method, path, url_path, scheme, id, size, time,
//! useragent, referer), `source.ip`, `destination.ip`/`destination.port`,
//! `source.principal`/`destination.principal` (from the peers' TLS identities),
//! `connection.mtls`, `connection.requested_server_name`, `context.protocol`, and every
//! `context_extensions` entry whose key is an attribute name (how Pilot passes
//! `destination.service.*` per route), converted to the attribute's type.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValue, HeaderValueOption, address};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use super::bag::{self, set, set_str};
use crate::adapter::{QuotaArgs, code};
use crate::attribute::{DenseBag, Value};
use crate::config::HeaderOpKind;
use crate::dispatch::Dispatcher;

/// The ext_authz service.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    dispatcher: Arc<Dispatcher>,
}

fn socket(addr: &Option<Address>) -> Option<(IpAddr, u32)> {
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

/// The outcome of a check, before it is turned into Envoy's response.
#[derive(Debug)]
pub struct Decision {
    pub code: i32,
    pub message: String,
    pub request_headers: Vec<(String, String, HeaderOpKind)>,
    pub response_headers: Vec<(String, String, HeaderOpKind)>,
}

// === impl ExtAuthz ===

impl ExtAuthz {
    pub fn new(dispatcher: Arc<Dispatcher>) -> Self {
        Self { dispatcher }
    }

    /// Decides a CheckRequest.
    pub async fn decide(&self, req: &CheckRequest) -> Decision {
        let cfg = self.dispatcher.config();
        let vocab = &cfg.vocab;
        let mut b = DenseBag::with_len(vocab.len());
        let attrs = req.attributes.as_ref();
        if let Some(a) = attrs {
            if let Some(src) = &a.source {
                if let Some((ip, _)) = socket(&src.address) {
                    set(&mut b, vocab, "source.ip", Value::IpAddress(ip));
                }
                set_str(
                    &mut b,
                    vocab,
                    "source.principal",
                    bag::principal(&src.principal),
                );
                if !src.principal.is_empty() {
                    set(&mut b, vocab, "connection.mtls", Value::Bool(true));
                }
                if !src.labels.is_empty() {
                    set(
                        &mut b,
                        vocab,
                        "source.labels",
                        Value::StringMap(&src.labels),
                    );
                }
            }
            if let Some(dst) = &a.destination {
                if let Some((ip, port)) = socket(&dst.address) {
                    set(&mut b, vocab, "destination.ip", Value::IpAddress(ip));
                    set(
                        &mut b,
                        vocab,
                        "destination.port",
                        Value::Int64(i64::from(port)),
                    );
                }
                set_str(
                    &mut b,
                    vocab,
                    "destination.principal",
                    bag::principal(&dst.principal),
                );
                if !dst.labels.is_empty() {
                    set(
                        &mut b,
                        vocab,
                        "destination.labels",
                        Value::StringMap(&dst.labels),
                    );
                }
            }
            if let Some(tls) = &a.tls_session {
                set_str(&mut b, vocab, "connection.requested_server_name", &tls.sni);
            }
            if let Some(r) = &a.request {
                if let Some(t) = r.time.as_ref().and_then(bag::timestamp) {
                    set(&mut b, vocab, "request.time", Value::Timestamp(t));
                }
                if let Some(h) = &r.http {
                    set(
                        &mut b,
                        vocab,
                        "request.headers",
                        Value::StringMap(&h.headers),
                    );
                    set_str(&mut b, vocab, "request.id", &h.id);
                    set_str(&mut b, vocab, "request.method", &h.method);
                    set_str(&mut b, vocab, "request.path", &h.path);
                    let url_path = h.path.split(['?', '#']).next().unwrap_or("");
                    set_str(&mut b, vocab, "request.url_path", url_path);
                    set_str(&mut b, vocab, "request.host", &h.host);
                    set_str(&mut b, vocab, "request.scheme", &h.scheme);
                    if h.size >= 0 {
                        set(&mut b, vocab, "request.size", Value::Int64(h.size));
                    }
                    if let Some(ua) = h.headers.get("user-agent") {
                        set_str(&mut b, vocab, "request.useragent", ua);
                    }
                    if let Some(r) = h.headers.get("referer") {
                        set_str(&mut b, vocab, "request.referer", r);
                    }
                    let grpc = h
                        .headers
                        .get("content-type")
                        .is_some_and(|c| c.starts_with("application/grpc"));
                    set(
                        &mut b,
                        vocab,
                        "context.protocol",
                        Value::String(Cow::Borrowed(if grpc { "grpc" } else { "http" })),
                    );
                }
            }
            for (k, v) in &a.context_extensions {
                bag::set_text(&mut b, vocab, k, v);
            }
        }

        let outcome = self.dispatcher.check(&cfg, &b);
        if !outcome.status.is_ok() {
            return Decision {
                code: outcome.status.code,
                message: outcome.status.message,
                request_headers: Vec::new(),
                response_headers: Vec::new(),
            };
        }
        let dedup = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| h.id.as_str())
            .unwrap_or("");
        for (name, charge) in self.dispatcher.bound_quotas(&cfg, &b) {
            let dedup_id = if dedup.is_empty() {
                String::new()
            } else {
                format!("{dedup}/{name}")
            };
            let args = QuotaArgs {
                amount: charge,
                best_effort: false,
                deduplication_id: &dedup_id,
            };
            let granted = self.dispatcher.quota(&cfg, &b, &name, &args).await;
            if !granted.status.is_ok() {
                return Decision {
                    code: granted.status.code,
                    message: granted.status.message,
                    request_headers: Vec::new(),
                    response_headers: Vec::new(),
                };
            }
            if granted.amount < charge {
                return Decision {
                    code: code::RESOURCE_EXHAUSTED,
                    message: format!("Quota is exhausted for: {name}"),
                    request_headers: Vec::new(),
                    response_headers: Vec::new(),
                };
            }
        }
        Decision {
            code: code::OK,
            message: String::new(),
            request_headers: outcome.request_headers,
            response_headers: outcome.response_headers,
        }
    }
}

fn header_option(name: String, value: String, op: HeaderOpKind) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name,
            value,
            ..Default::default()
        }),
        // APPEND_IF_EXISTS_OR_ADD = 0, OVERWRITE_IF_EXISTS_OR_ADD = 2
        append_action: if op == HeaderOpKind::Append { 0 } else { 2 },
        ..Default::default()
    }
}

/// Turns a decision into Envoy's CheckResponse.
pub fn response(d: Decision) -> CheckResponse {
    if d.code == code::OK {
        let mut ok = OkHttpResponse::default();
        for (name, value, op) in d.request_headers {
            if op == HeaderOpKind::Remove {
                ok.headers_to_remove.push(name);
            } else {
                ok.headers.push(header_option(name, value, op));
            }
        }
        for (name, value, op) in d.response_headers {
            if op != HeaderOpKind::Remove {
                ok.response_headers_to_add
                    .push(header_option(name, value, op));
            }
        }
        return CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(ok)),
            ..Default::default()
        };
    }
    let http = code::http_status(d.code);
    let body = format!("{}:{}", code::name(d.code), d.message);
    CheckResponse {
        status: Some(rpc::Status {
            code: d.code,
            message: d.message,
            details: Vec::new(),
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(http),
                }),
                headers: Vec::new(),
                body,
            },
        )),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = request.into_inner();
        if req.attributes.is_none() {
            self.dispatcher.metrics.malformed("ext_authz");
            return Err(Status::invalid_argument("CheckRequest has no attributes"));
        }
        Ok(Response::new(response(self.decide(&req).await)))
    }
}
