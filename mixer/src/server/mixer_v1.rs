//! Mixer's own wire API, `istio.mixer.v1.Mixer`: what Istio's Mixer clients (the proxy's
//! mixer filter, `mixc`) call.
//!
//! - `Check`: the request's compressed attributes (see [`super::compressed`]) go through the
//!   dispatcher's checks; the answer is a `PreconditionResult` with the combined status, its
//!   validity (duration and use count), the attributes it depended on (for the client's
//!   cache) and the header operations of matching rules as a `RouteDirective`. Only when the
//!   preconditions pass are the asked `quotas` allocated, each with its amount, `best_effort`
//!   and the deduplication id `deduplication_id + name` (as Istio's Mixer does); a quota no
//!   rule applies to is granted in full. An exhausted quota is `granted_amount` below the
//!   amount asked, with an OK status: the client decides what that means.
//! - `Report`: every entry of the batch becomes a bag and is dispatched to the report rules.
//!   Entries without `words` of their own use `default_words`. With `DELTA_ENCODING` (the
//!   default) each entry holds only what changed since the previous one; with
//!   `INDEPENDENT_ENCODING` each stands alone.
//!
//! A malformed message (an index that names no word, an impossible time, a negative quota
//! amount, an unknown encoding) is refused whole with INVALID_ARGUMENT naming the field, and
//! nothing of it is dispatched.

use std::sync::Arc;
use std::time::Duration;

use mesh_proto::grpc::google::rpc;
use mesh_proto::grpc::istio::mixer::v1::check_response::{PreconditionResult, QuotaResult};
use mesh_proto::grpc::istio::mixer::v1::header_operation::Operation;
use mesh_proto::grpc::istio::mixer::v1::mixer_server::Mixer;
use mesh_proto::grpc::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mesh_proto::grpc::istio::mixer::v1::{
    CheckRequest, CheckResponse, CompressedAttributes, HeaderOperation, ReportRequest,
    ReportResponse, RouteDirective,
};
use mesh_proto::grpc::prost_types;
use tonic::{Request, Response, Status};

use super::compressed::{self, Decoded, Words};
use crate::adapter::{self, QuotaArgs};
use crate::attribute::{Bag, DenseBag};
use crate::config::HeaderOpKind;
use crate::dispatch::Dispatcher;
use crate::graph::Graph;

/// The API name malformed requests are counted under (`mixer_malformed_requests_total`).
const API: &str = "istio.mixer.v1";

/// The `istio.mixer.v1.Mixer` service.
#[derive(Debug, Clone)]
pub struct MixerV1 {
    dispatcher: Arc<Dispatcher>,
    graph: Option<Arc<Graph>>,
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

fn rpc_status(s: &adapter::Status) -> rpc::Status {
    rpc::Status {
        code: s.code,
        message: s.message.clone(),
        details: Vec::new(),
    }
}

fn header_ops(ops: Vec<(String, String, HeaderOpKind)>) -> Vec<HeaderOperation> {
    ops.into_iter()
        .map(|(name, value, op)| HeaderOperation {
            name,
            value,
            operation: match op {
                HeaderOpKind::Replace => Operation::Replace,
                HeaderOpKind::Remove => Operation::Remove,
                HeaderOpKind::Append => Operation::Append,
            } as i32,
        })
        .collect()
}

// === impl MixerV1 ===

impl MixerV1 {
    pub fn new(dispatcher: Arc<Dispatcher>) -> Self {
        Self {
            dispatcher,
            graph: None,
        }
    }

    /// Also feeds every reported entry to the topology `graph`.
    pub fn with_graph(mut self, graph: Option<Arc<Graph>>) -> Self {
        self.graph = graph;
        self
    }

    fn invalid(&self, message: String) -> Status {
        self.dispatcher.metrics.malformed(API);
        tracing::debug!(%message, "malformed istio.mixer.v1 request");
        Status::invalid_argument(message)
    }

    /// Answers a CheckRequest.
    pub async fn decide(&self, req: &CheckRequest) -> Result<CheckResponse, Status> {
        for (name, q) in &req.quotas {
            if q.amount < 0 {
                return Err(self.invalid(format!(
                    "CheckRequest.quotas[{name:?}].amount: {} is negative",
                    q.amount
                )));
            }
        }
        let cfg = self.dispatcher.config();
        let vocab = &cfg.vocab;
        let known = compressed::known_words(req.global_word_count);
        let empty = CompressedAttributes::default();
        let attrs = req.attributes.as_ref().unwrap_or(&empty);
        let decoded = compressed::decode(vocab, Words::new(known, &attrs.words), attrs)
            .map_err(|e| self.invalid(format!("CheckRequest.attributes: {e}")))?;
        let bag = decoded.bag(vocab.len());

        let outcome = self.dispatcher.check(&cfg, &bag);
        let ok = outcome.status.is_ok();
        let referenced = compressed::referenced(vocab, &bag, &outcome.referenced, known);
        let route_directive =
            if outcome.request_headers.is_empty() && outcome.response_headers.is_empty() {
                None
            } else {
                Some(RouteDirective {
                    request_header_operations: header_ops(outcome.request_headers),
                    response_header_operations: header_ops(outcome.response_headers),
                    ..Default::default()
                })
            };
        let mut resp = CheckResponse {
            precondition: Some(PreconditionResult {
                status: Some(rpc_status(&outcome.status)),
                valid_duration: Some(proto_duration(outcome.valid_duration)),
                valid_use_count: outcome.valid_use_count,
                referenced_attributes: Some(referenced),
                route_directive,
            }),
            quotas: Default::default(),
        };
        if !ok {
            tracing::debug!(code = outcome.status.code, message = %outcome.status.message, "check denied");
            return Ok(resp);
        }
        for (name, q) in &req.quotas {
            let dedup = if req.deduplication_id.is_empty() {
                String::new()
            } else {
                format!("{}{name}", req.deduplication_id)
            };
            let args = QuotaArgs {
                amount: q.amount,
                best_effort: q.best_effort,
                deduplication_id: &dedup,
            };
            let r = self.dispatcher.quota(&cfg, &bag, name, &args).await;
            tracing::debug!(quota = %name, asked = q.amount, granted = r.amount, "quota allocated");
            resp.quotas.insert(
                name.clone(),
                QuotaResult {
                    valid_duration: Some(proto_duration(r.valid_duration)),
                    granted_amount: r.amount,
                    status: Some(rpc_status(&r.status)),
                    referenced_attributes: None,
                },
            );
        }
        Ok(resp)
    }

    /// Dispatches a ReportRequest; returns how many entries it held.
    pub fn report(&self, req: &ReportRequest) -> Result<usize, Status> {
        let semantics = RepeatedAttributesSemantics::try_from(req.repeated_attributes_semantics)
            .map_err(|_| {
                self.invalid(format!(
                    "ReportRequest.repeated_attributes_semantics: unknown value {}",
                    req.repeated_attributes_semantics
                ))
            })?;
        let cfg = self.dispatcher.config();
        let vocab = &cfg.vocab;
        let known = compressed::known_words(req.global_word_count);
        let mut decoded: Vec<Decoded<'_>> = Vec::with_capacity(req.attributes.len());
        for (i, a) in req.attributes.iter().enumerate() {
            let words = if a.words.is_empty() {
                &req.default_words
            } else {
                &a.words
            };
            let d = compressed::decode(vocab, Words::new(known, words), a)
                .map_err(|e| self.invalid(format!("ReportRequest.attributes[{i}]: {e}")))?;
            decoded.push(d);
        }
        let bags: Vec<DenseBag<'_>> = match semantics {
            RepeatedAttributesSemantics::DeltaEncoding => {
                let mut current = DenseBag::with_len(vocab.len());
                decoded
                    .iter()
                    .map(|d| {
                        d.apply(&mut current);
                        current.clone()
                    })
                    .collect()
            }
            RepeatedAttributesSemantics::IndependentEncoding => {
                decoded.iter().map(|d| d.bag(vocab.len())).collect()
            }
        };
        self.dispatcher
            .report(&cfg, bags.iter().map(|b| b as &dyn Bag));
        if let Some(g) = &self.graph {
            g.record_report(&self.dispatcher, &cfg, &bags);
        }
        Ok(bags.len())
    }
}

#[tonic::async_trait]
impl Mixer for MixerV1 {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let n = MixerV1::report(self, request.get_ref())?;
        tracing::trace!(entries = n, "report dispatched");
        Ok(Response::new(ReportResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mesh_proto::grpc::istio::mixer::v1::StringMap as WireMap;
    use mesh_proto::grpc::istio::mixer::v1::check_request::QuotaParams;
    use mesh_proto::grpc::istio::mixer::v1::referenced_attributes::Condition;

    use super::*;
    use crate::adapter::code;
    use crate::server::{TEST_POLICY, test_dispatcher};

    /// `request.headers` {x-user: USER} and `destination.service.name` SERVICE, with words
    /// of the message and of the global dictionary.
    fn attrs(user: &str, service: &str) -> CompressedAttributes {
        let mut a = CompressedAttributes {
            words: vec!["x-user".into(), user.into(), service.into()],
            ..Default::default()
        };
        a.string_maps.insert(
            15,
            WireMap {
                entries: HashMap::from([(-1, -2)]),
            },
        );
        a.strings.insert(191, -3);
        a
    }

    fn check(user: &str, service: &str, quotas: &[(&str, i64)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(attrs(user, service)),
            global_word_count: 222,
            deduplication_id: String::new(),
            quotas: quotas
                .iter()
                .map(|(n, a)| {
                    (
                        n.to_string(),
                        QuotaParams {
                            amount: *a,
                            best_effort: false,
                        },
                    )
                })
                .collect(),
        }
    }

    fn code_of(r: &CheckResponse) -> i32 {
        r.precondition
            .as_ref()
            .unwrap()
            .status
            .as_ref()
            .unwrap()
            .code
    }

    #[tokio::test]
    async fn denier_denies_only_the_matching_header_and_says_what_it_read() {
        let m = MixerV1::new(test_dispatcher(TEST_POLICY));
        let ok = m.decide(&check("jane", "svc", &[])).await.unwrap();
        assert_eq!(code_of(&ok), code::OK);
        let denied = m.decide(&check("john", "svc", &[])).await.unwrap();
        assert_eq!(code_of(&denied), code::PERMISSION_DENIED);
        let p = denied.precondition.unwrap();
        assert!(
            p.status.unwrap().message.contains("Not allowed"),
            "the denier's message"
        );
        // The answer depended on request.headers (index 15), which was present.
        let refs = p.referenced_attributes.unwrap();
        assert!(
            refs.attribute_matches
                .iter()
                .any(|m| m.name == 15 && m.condition == Condition::Exact as i32),
            "{refs:?}"
        );
        assert!(p.valid_duration.is_some());
    }

    #[tokio::test]
    async fn quotas_are_granted_until_exhausted_and_skipped_after_a_denial() {
        let m = MixerV1::new(test_dispatcher(TEST_POLICY));
        for i in 1..=5 {
            let r = m
                .decide(&check("jane", "limited", &[("requestcount", 1)]))
                .await
                .unwrap();
            assert_eq!(r.quotas["requestcount"].granted_amount, 1, "request {i}");
        }
        let r = m
            .decide(&check("jane", "limited", &[("requestcount", 1)]))
            .await
            .unwrap();
        assert_eq!(code_of(&r), code::OK);
        assert_eq!(r.quotas["requestcount"].granted_amount, 0);
        // Another service has its own, larger, quota.
        let r = m
            .decide(&check("jane", "svc", &[("requestcount", 1)]))
            .await
            .unwrap();
        assert_eq!(r.quotas["requestcount"].granted_amount, 1);
        // A quota no rule applies to is granted in full.
        let r = m
            .decide(&check("jane", "svc", &[("other", 7)]))
            .await
            .unwrap();
        assert_eq!(r.quotas["other"].granted_amount, 7);
        // A denied request allocates nothing.
        let r = m
            .decide(&check("john", "svc", &[("requestcount", 1)]))
            .await
            .unwrap();
        assert_eq!(code_of(&r), code::PERMISSION_DENIED);
        assert!(r.quotas.is_empty());
    }

    #[tokio::test]
    async fn a_retried_request_is_not_charged_twice() {
        let m = MixerV1::new(test_dispatcher(TEST_POLICY));
        let mut req = check("jane", "limited", &[("requestcount", 1)]);
        req.deduplication_id = "req-1".into();
        for _ in 0..8 {
            let r = m.decide(&req).await.unwrap();
            assert_eq!(r.quotas["requestcount"].granted_amount, 1);
        }
        // Only one of the five was used.
        for i in 0..4 {
            let r = m
                .decide(&check("jane", "limited", &[("requestcount", 1)]))
                .await
                .unwrap();
            assert_eq!(r.quotas["requestcount"].granted_amount, 1, "{i}");
        }
    }

    #[tokio::test]
    async fn malformed_checks_are_invalid_arguments_naming_the_field() {
        let m = MixerV1::new(test_dispatcher(TEST_POLICY));
        let e = m
            .decide(&check("jane", "svc", &[("requestcount", -1)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "CheckRequest.quotas[\"requestcount\"].amount: -1 is negative"
        );
        let mut req = check("jane", "svc", &[]);
        // destination.service.name is word 191: a client that knows 150 words cannot use it.
        req.global_word_count = 150;
        let e = m.decide(&req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "CheckRequest.attributes: attribute name index 191: beyond the global dictionary (the client knows 150 words)"
        );
        // No attributes at all is an empty bag, not an error.
        let r = m.decide(&CheckRequest::default()).await.unwrap();
        assert_eq!(code_of(&r), code::OK);
    }

    #[test]
    fn malformed_reports_are_refused_whole() {
        let m = MixerV1::new(test_dispatcher(TEST_POLICY));
        let good = attrs("jane", "svc");
        let mut bad = CompressedAttributes::default();
        bad.int64s.insert(-9, 1);
        let req = ReportRequest {
            attributes: vec![good.clone(), bad],
            ..Default::default()
        };
        let e = m.report(&req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "ReportRequest.attributes[1]: attribute name index -9: beyond the message's words (it has 0)"
        );
        let req = ReportRequest {
            attributes: vec![good.clone()],
            repeated_attributes_semantics: 7,
            ..Default::default()
        };
        let e = m.report(&req).unwrap_err();
        assert_eq!(
            e.message(),
            "ReportRequest.repeated_attributes_semantics: unknown value 7"
        );
        // Entries without words use default_words.
        let mut entry = good.clone();
        let words = std::mem::take(&mut entry.words);
        let req = ReportRequest {
            attributes: vec![entry.clone()],
            default_words: words,
            ..Default::default()
        };
        assert_eq!(m.report(&req).unwrap(), 1);
        let req = ReportRequest {
            attributes: vec![entry],
            ..Default::default()
        };
        assert!(m.report(&req).is_err(), "without default_words");
    }
}
