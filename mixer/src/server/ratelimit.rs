//! Envoy's rate limit service v3 (`envoy.service.ratelimit.v3.RateLimitService`), answered
//! by Mixer's quota adapters (`memquota`), so Envoy's `envoy.filters.http.ratelimit` filter
//! can enforce the quotas an Istio user configured with `quota` instances, quota handlers,
//! rules and QuotaSpecs.
//!
//! Each descriptor is one quota request, on a bag of its own made from its entries:
//!
//! - an entry whose key is an attribute name (`destination.service.name`, `request.path`,
//!   `source.ip`...) sets that attribute, its value converted to the attribute's type (a value
//!   that does not convert is INVALID_ARGUMENT naming the entry);
//! - Envoy's `remote_address` action sets `source.ip`;
//! - any other key `k` sets the attribute `ratelimit.k` when an `attributemanifest` declares
//!   it (so a quota instance can use it as a dimension: `user: ratelimit.user | "anonymous"`),
//!   and is ignored otherwise;
//! - the key `quota` names the quota (instance) to charge. Without it, the descriptor is
//!   charged the quotas that QuotaSpecBindings bind to its destination service, exactly as an
//!   ext_authz Check is; with neither, nothing limits it.
//!
//! The amount is the descriptor's `hits_addend`, else the request's, else 1 (times each
//! QuotaSpec's charge). A descriptor whose quota grants less than that is OVER_LIMIT, and so is
//! the whole answer if any descriptor is. The `domain` is not interpreted: Mixer's rules are
//! what scope quotas, so any domain works. A descriptor's `limit` override is ignored (limits
//! come from the quota handlers' config).

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tonic::{Request, Response, Status};

use super::bag::text_value;
use crate::adapter::{QuotaArgs, code};
use crate::attribute::{DenseBag, Vocabulary};
use crate::config::Resolved;
use crate::dispatch::Dispatcher;

/// The API name malformed requests are counted under.
const API: &str = "ratelimit";

/// The descriptor key that names the quota to charge.
pub const QUOTA_KEY: &str = "quota";

/// The prefix of the attributes other descriptor keys set.
pub const ATTRIBUTE_PREFIX: &str = "ratelimit.";

/// Why a rate limit request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    #[error("descriptors: at least one descriptor is required")]
    NoDescriptors,
    #[error("descriptors[{descriptor}].entries: at least one entry is required")]
    NoEntries { descriptor: usize },
    #[error("descriptors[{descriptor}].entries[{entry}].key: must not be empty")]
    EmptyKey { descriptor: usize, entry: usize },
    #[error(
        "descriptors[{descriptor}].entries[{entry}].value: {value:?} is not a valid {value_type} for attribute {attribute}"
    )]
    BadValue {
        descriptor: usize,
        entry: usize,
        value: String,
        value_type: &'static str,
        attribute: String,
    },
}

/// The rate limit service.
#[derive(Debug, Clone)]
pub struct RateLimit {
    dispatcher: Arc<Dispatcher>,
}

/// One descriptor's outcome.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    over_limit: bool,
    /// When the exhausted quota's window ends (the grant's validity).
    reset: Option<std::time::Duration>,
}

/// Sets `name` from `text` if the vocabulary declares it: Ok(true) if set, Ok(false) if
/// unknown, Err(type name) if the text does not convert.
fn set_attribute<'a>(
    bag: &mut DenseBag<'a>,
    vocab: &Vocabulary,
    name: &str,
    text: &'a str,
) -> Result<bool, &'static str> {
    let Some((id, ty)) = vocab.lookup(name) else {
        return Ok(false);
    };
    match text_value(ty, text) {
        Some(v) => {
            bag.set(id, v);
            Ok(true)
        }
        None => Err(ty.name()),
    }
}

// === impl RateLimit ===

impl RateLimit {
    pub fn new(dispatcher: Arc<Dispatcher>) -> Self {
        Self { dispatcher }
    }

    /// Answers a RateLimitRequest.
    pub async fn decide(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let cfg = self.dispatcher.config();
        validate(&cfg.vocab, req).map_err(|e| {
            self.dispatcher.metrics.malformed(API);
            tracing::debug!(error = %e, "malformed rate limit request");
            Status::invalid_argument(format!("RateLimitRequest.{e}"))
        })?;
        let default_hits = if req.hits_addend == 0 {
            1
        } else {
            i64::from(req.hits_addend)
        };
        let mut resp = RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        };
        for (i, d) in req.descriptors.iter().enumerate() {
            let hits = d
                .hits_addend
                .as_ref()
                .map(|h| i64::try_from(h.value).unwrap_or(i64::MAX))
                .unwrap_or(default_hits);
            let outcome = self.descriptor(&cfg, i, d, hits).await?;
            if outcome.over_limit {
                resp.overall_code = Code::OverLimit as i32;
            }
            resp.statuses.push(DescriptorStatus {
                code: if outcome.over_limit {
                    Code::OverLimit
                } else {
                    Code::Ok
                } as i32,
                duration_until_reset: outcome.reset.map(|d| PbDuration {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: d.subsec_nanos() as i32,
                }),
                ..Default::default()
            });
        }
        tracing::debug!(
            domain = %req.domain,
            descriptors = req.descriptors.len(),
            over_limit = resp.overall_code == Code::OverLimit as i32,
            "rate limit decided"
        );
        Ok(resp)
    }

    /// Charges descriptor `index`.
    async fn descriptor(
        &self,
        cfg: &Resolved,
        index: usize,
        d: &RateLimitDescriptor,
        hits: i64,
    ) -> Result<Outcome, Status> {
        let vocab = &cfg.vocab;
        let mut bag = DenseBag::with_len(vocab.len());
        let mut quota: Option<&str> = None;
        for e in &d.entries {
            if e.key == QUOTA_KEY {
                quota = Some(&e.value);
                continue;
            }
            match attribute_of(&e.key, vocab) {
                // Validated before: the value converts.
                Some(name) => {
                    let _ = set_attribute(&mut bag, vocab, &name, &e.value);
                }
                None => {
                    tracing::debug!(key = %e.key, "descriptor entry names no attribute; ignored")
                }
            }
        }
        let quotas: Vec<(String, i64)> = match quota {
            Some(q) => vec![(q.to_string(), hits)],
            None => self
                .dispatcher
                .bound_quotas(cfg, &bag)
                .into_iter()
                .map(|(name, charge)| (name, charge.saturating_mul(hits)))
                .collect(),
        };
        for (name, amount) in quotas {
            let args = QuotaArgs {
                amount,
                best_effort: false,
                deduplication_id: "",
            };
            let r = self.dispatcher.quota(cfg, &bag, &name, &args).await;
            if r.status.code == code::RESOURCE_EXHAUSTED || (r.status.is_ok() && r.amount < amount)
            {
                tracing::debug!(descriptor = index, quota = %name, asked = amount, granted = r.amount, "over limit");
                return Ok(Outcome {
                    over_limit: true,
                    reset: Some(r.valid_duration),
                });
            }
            if !r.status.is_ok() {
                return Err(Status::new(
                    tonic::Code::from(r.status.code),
                    format!("quota {name}: {}", r.status.message),
                ));
            }
        }
        Ok(Outcome {
            over_limit: false,
            reset: None,
        })
    }
}

/// Checks the shape of the request and the values of attribute entries, before anything
/// is charged.
fn validate(vocab: &Vocabulary, req: &RateLimitRequest) -> Result<(), RateLimitError> {
    if req.descriptors.is_empty() {
        return Err(RateLimitError::NoDescriptors);
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(RateLimitError::NoEntries { descriptor: i });
        }
        let mut scratch = DenseBag::with_len(vocab.len());
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return Err(RateLimitError::EmptyKey {
                    descriptor: i,
                    entry: j,
                });
            }
            if let Some(name) = attribute_of(&e.key, vocab) {
                set_attribute(&mut scratch, vocab, &name, &e.value).map_err(|ty| {
                    RateLimitError::BadValue {
                        descriptor: i,
                        entry: j,
                        value: e.value.clone(),
                        value_type: ty,
                        attribute: name.clone(),
                    }
                })?;
            }
        }
    }
    Ok(())
}

/// The attribute a descriptor key sets, if any: the key itself when it is an attribute name,
/// `source.ip` for Envoy's `remote_address`, `ratelimit.<key>` when declared.
fn attribute_of(key: &str, vocab: &Vocabulary) -> Option<String> {
    if key == QUOTA_KEY {
        return None;
    }
    if vocab.lookup(key).is_some() {
        return Some(key.to_string());
    }
    if key == "remote_address" {
        return Some("source.ip".to_string());
    }
    let prefixed = format!("{ATTRIBUTE_PREFIX}{key}");
    vocab.lookup(&prefixed).is_some().then_some(prefixed)
}

#[tonic::async_trait]
impl RateLimitService for RateLimit {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

    use super::*;
    use crate::server::{TEST_POLICY, test_dispatcher};

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "anything".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[tokio::test]
    async fn bound_quotas_limit_the_descriptors_service() {
        let r = RateLimit::new(test_dispatcher(TEST_POLICY));
        let limited = || request(vec![descriptor(&[("destination.service.name", "limited")])]);
        for i in 1..=5 {
            let resp = r.decide(&limited()).await.unwrap();
            assert_eq!(resp.overall_code, Code::Ok as i32, "request {i}");
        }
        let resp = r.decide(&limited()).await.unwrap();
        assert_eq!(resp.overall_code, Code::OverLimit as i32);
        assert_eq!(resp.statuses[0].code, Code::OverLimit as i32);
        let reset = resp.statuses[0].duration_until_reset.unwrap();
        assert!(reset.seconds > 0 && reset.seconds <= 10, "{reset:?}");
        // Other services are limited on their own; one exhausted descriptor is enough for
        // the whole answer.
        let resp = r
            .decide(&request(vec![
                descriptor(&[("destination.service.name", "svc")]),
                descriptor(&[("destination.service.name", "limited")]),
            ]))
            .await
            .unwrap();
        assert_eq!(resp.overall_code, Code::OverLimit as i32);
        assert_eq!(resp.statuses[0].code, Code::Ok as i32);
        assert_eq!(resp.statuses[1].code, Code::OverLimit as i32);
    }

    #[tokio::test]
    async fn the_quota_key_names_the_quota_and_hits_are_the_amount() {
        let r = RateLimit::new(test_dispatcher(TEST_POLICY));
        let mut req = request(vec![descriptor(&[
            ("quota", "requestcount"),
            ("destination.service.name", "limited"),
        ])]);
        req.hits_addend = 3;
        assert_eq!(r.decide(&req).await.unwrap().overall_code, Code::Ok as i32);
        // 3 of 5 used: 3 more do not fit.
        assert_eq!(
            r.decide(&req).await.unwrap().overall_code,
            Code::OverLimit as i32
        );
        req.hits_addend = 2;
        assert_eq!(r.decide(&req).await.unwrap().overall_code, Code::Ok as i32);
        // A quota no rule applies to limits nothing.
        let req = request(vec![descriptor(&[("quota", "nosuchquota")])]);
        assert_eq!(r.decide(&req).await.unwrap().overall_code, Code::Ok as i32);
    }

    #[tokio::test]
    async fn declared_ratelimit_attributes_become_quota_dimensions() {
        let config = r#"
apiVersion: config.istio.io/v1alpha2
kind: attributemanifest
metadata: {name: ratelimit, namespace: istio-system}
spec:
  attributes:
    ratelimit.user: {valueType: STRING}
---
apiVersion: config.istio.io/v1alpha2
kind: memquota
metadata: {name: peruser, namespace: istio-system}
spec:
  quotas:
  - name: peruser.quota.istio-system
    maxAmount: 2
    validDuration: 10s
---
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata: {name: peruser, namespace: istio-system}
spec:
  dimensions:
    user: ratelimit.user | "anonymous"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: peruser, namespace: istio-system}
spec:
  actions:
  - handler: peruser.memquota
    instances: [peruser.quota]
"#;
        let r = RateLimit::new(test_dispatcher(config));
        let user = |name: &str| request(vec![descriptor(&[("quota", "peruser"), ("user", name)])]);
        for _ in 0..2 {
            assert_eq!(
                r.decide(&user("ann")).await.unwrap().overall_code,
                Code::Ok as i32
            );
        }
        assert_eq!(
            r.decide(&user("ann")).await.unwrap().overall_code,
            Code::OverLimit as i32
        );
        // Each user has a quota of their own.
        assert_eq!(
            r.decide(&user("bob")).await.unwrap().overall_code,
            Code::Ok as i32
        );
    }

    #[tokio::test]
    async fn without_config_nothing_is_limited() {
        let r = RateLimit::new(test_dispatcher(""));
        let req = request(vec![descriptor(&[("generic_key", "x")])]);
        for _ in 0..10 {
            assert_eq!(r.decide(&req).await.unwrap().overall_code, Code::Ok as i32);
        }
    }

    #[tokio::test]
    async fn malformed_requests_name_the_field() {
        let r = RateLimit::new(test_dispatcher(TEST_POLICY));
        let e = r.decide(&request(vec![])).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "RateLimitRequest.descriptors: at least one descriptor is required"
        );
        let e = r.decide(&request(vec![descriptor(&[])])).await.unwrap_err();
        assert_eq!(
            e.message(),
            "RateLimitRequest.descriptors[0].entries: at least one entry is required"
        );
        let e = r
            .decide(&request(vec![
                descriptor(&[("a", "b")]),
                descriptor(&[("destination.service.name", "x"), ("", "y")]),
            ]))
            .await
            .unwrap_err();
        assert_eq!(
            e.message(),
            "RateLimitRequest.descriptors[1].entries[1].key: must not be empty"
        );
        let e = r
            .decide(&request(vec![descriptor(&[(
                "remote_address",
                "not-an-ip",
            )])]))
            .await
            .unwrap_err();
        assert_eq!(
            e.message(),
            "RateLimitRequest.descriptors[0].entries[0].value: \"not-an-ip\" is not a valid IP_ADDRESS for attribute source.ip"
        );
    }
}
