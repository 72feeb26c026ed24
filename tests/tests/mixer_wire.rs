//! Mixer's own wire API and Envoy's rate limit service, against a real `mixer` process running
//! Istio 1.0's default config plus the test policy (`mixer/tests/fixtures/policy.yaml`: a
//! denier for `x-user: john`, a blacklist of `/admin` and `/secret`, and a memquota of 5
//! requests per 10s for the `limited` service).
//!
//! - `istio.mixer.v1.Mixer/Check` with compressed attributes (message words and global
//!   dictionary indices) gets the decisions Envoy gets over ext_authz.
//! - `istio.mixer.v1.Mixer/Report` batches, delta-encoded, land in the prometheus adapter.
//! - A real Envoy's `envoy.filters.http.ratelimit` filter, pointed at Mixer, answers 429 on the
//!   sixth request to a memquota-limited descriptor.

mod mixer_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_proto::grpc::istio::mixer::v1::check_request::QuotaParams;
use mesh_proto::grpc::istio::mixer::v1::mixer_client::MixerClient;
use mesh_proto::grpc::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mesh_proto::grpc::istio::mixer::v1::{
    CheckRequest, CheckResponse, CompressedAttributes, ReportRequest, StringMap,
};
use mesh_proto::grpc::prost_types;
use mesh_tests::{Envoy, Upstream, free_port, http_get};
use mixer_support::{Mixer, envoy_bootstrap, sample, test_policy};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// Global dictionary indices used below (Istio's `global_dictionary.yaml`).
mod word {
    pub const REQUEST_HEADERS: i32 = 15;
    pub const REQUEST_PATH: i32 = 17;
    pub const RESPONSE_DURATION: i32 = 29;
    pub const RESPONSE_CODE: i32 = 30;
    pub const HTTP: i32 = 92;
    pub const CONTEXT_PROTOCOL: i32 = 131;
    pub const DESTINATION_SERVICE_NAME: i32 = 191;
    pub const DESTINATION_SERVICE_HOST: i32 = 193;
    pub const REQUEST_URL_PATH: i32 = 203;
}

const GLOBAL_WORDS: u32 = 222;

/// Mixer with the test policy.
async fn start_mixer() -> Mixer {
    mixer_support::start_mixer(&[test_policy()]).await
}

async fn client(mixer: &Mixer) -> MixerClient<Channel> {
    MixerClient::connect(format!("http://{}", mixer.grpc))
        .await
        .unwrap()
}

/// A request's bag as a proxy compresses it: `request.headers` {x-user: USER, host: HOST}
/// (`host` is a global word, the rest message words), `request.path` and `request.url_path`
/// PATH, `destination.service.name` SERVICE.
fn request_attributes(user: &str, service: &str, path: &str) -> CompressedAttributes {
    let mut a = CompressedAttributes {
        words: vec![
            "x-user".into(),
            user.into(),
            service.into(),
            path.into(),
            format!("{service}.default.svc.cluster.local"),
        ],
        ..Default::default()
    };
    a.string_maps.insert(
        word::REQUEST_HEADERS,
        StringMap {
            // x-user: USER, host (global 65): SERVICE
            entries: HashMap::from([(-1, -2), (65, -3)]),
        },
    );
    a.strings.insert(word::DESTINATION_SERVICE_NAME, -3);
    a.strings.insert(word::REQUEST_PATH, -4);
    a.strings.insert(word::REQUEST_URL_PATH, -4);
    a
}

fn check_request(user: &str, service: &str, path: &str, quota: bool) -> CheckRequest {
    let mut quotas = HashMap::new();
    if quota {
        quotas.insert(
            "requestcount".to_string(),
            QuotaParams {
                amount: 1,
                best_effort: false,
            },
        );
    }
    CheckRequest {
        attributes: Some(request_attributes(user, service, path)),
        global_word_count: GLOBAL_WORDS,
        deduplication_id: String::new(),
        quotas,
    }
}

fn precondition_code(r: &CheckResponse) -> i32 {
    r.precondition
        .as_ref()
        .unwrap()
        .status
        .as_ref()
        .unwrap()
        .code
}

#[tokio::test]
async fn mixer_v1_check_gives_the_decisions_ext_authz_gives() {
    let m = start_mixer().await;
    let mut c = client(&m).await;

    // The denier: only x-user: john is refused, with the handler's message.
    let ok = c
        .check(check_request("jane", "svc", "/", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition_code(&ok), 0, "{ok:?}\n{}", m.svc.logs());
    let denied = c
        .check(check_request("john", "svc", "/", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition_code(&denied), 7, "{denied:?}");
    let p = denied.precondition.as_ref().unwrap();
    assert!(
        p.status.as_ref().unwrap().message.contains("Not allowed"),
        "{p:?}"
    );
    // The answer says what it depended on: request.headers, by its global index.
    assert!(
        p.referenced_attributes
            .as_ref()
            .unwrap()
            .attribute_matches
            .iter()
            .any(|a| a.name == word::REQUEST_HEADERS),
        "{p:?}"
    );

    // The listchecker blacklist.
    let blocked = c
        .check(check_request("jane", "svc", "/admin", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition_code(&blocked), 7, "{blocked:?}");

    // The memquota: five granted, the sixth not; another service is not limited.
    for i in 1..=5 {
        let r = c
            .check(check_request("jane", "limited", "/", true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(precondition_code(&r), 0, "request {i}: {r:?}");
        assert_eq!(r.quotas["requestcount"].granted_amount, 1, "request {i}");
    }
    let r = c
        .check(check_request("jane", "limited", "/", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.quotas["requestcount"].granted_amount, 0, "{r:?}");
    for _ in 0..8 {
        let r = c
            .check(check_request("jane", "svc", "/", true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.quotas["requestcount"].granted_amount, 1, "{r:?}");
    }
}

#[tokio::test]
async fn mixer_v1_malformed_messages_are_invalid_arguments() {
    let m = start_mixer().await;
    let mut c = client(&m).await;
    let mut req = check_request("jane", "svc", "/", false);
    req.attributes
        .as_mut()
        .unwrap()
        .strings
        .insert(word::CONTEXT_PROTOCOL, -40);
    let e = c.check(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "CheckRequest.attributes: attribute context.protocol (index 131): value index -40: beyond the message's words (it has 5)"
    );
    // destination.service.name (191) and request.url_path (203) are words a client that
    // knows 100 does not have (which of the two is named depends on map order).
    let mut req = check_request("jane", "svc", "/", false);
    req.global_word_count = 100;
    let e = c.check(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("CheckRequest.attributes: attribute name index ")
            && e.message()
                .ends_with(": beyond the global dictionary (the client knows 100 words)"),
        "{e:?}"
    );

    let e = c
        .report(ReportRequest {
            attributes: vec![CompressedAttributes {
                durations: HashMap::from([(
                    word::RESPONSE_DURATION,
                    prost_types::Duration {
                        seconds: -3,
                        nanos: 0,
                    },
                )]),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "ReportRequest.attributes[0]: attribute response.duration (index 29): negative duration"
    );
    // Mixer still answers.
    let ok = c
        .check(check_request("jane", "svc", "/", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition_code(&ok), 0);
}

/// The prometheus adapter's `istio_requests_total` for SERVICE and CODE.
fn requests_total(body: &str, service: &str, code: &str) -> f64 {
    sample(
        body,
        "istio_requests_total",
        &[("response_code", code), ("destination_service", service)],
    )
}

#[tokio::test]
async fn mixer_v1_delta_encoded_reports_reach_prometheus() {
    let m = start_mixer().await;
    let mut c = client(&m).await;
    let host = "wire.default.svc.cluster.local";

    // Entry 0 is a whole HTTP request; entry 1 only changes the response code; entry 2
    // only the duration. Without delta encoding entries 1 and 2 would match no rule (no
    // context.protocol).
    let mut first = CompressedAttributes::default();
    first.strings.insert(word::CONTEXT_PROTOCOL, word::HTTP);
    first.strings.insert(word::DESTINATION_SERVICE_HOST, -1);
    first.int64s.insert(word::RESPONSE_CODE, 200);
    let mut second = CompressedAttributes::default();
    second.int64s.insert(word::RESPONSE_CODE, 503);
    let mut third = CompressedAttributes::default();
    third.durations.insert(
        word::RESPONSE_DURATION,
        prost_types::Duration {
            seconds: 0,
            nanos: 5_000_000,
        },
    );
    c.report(ReportRequest {
        attributes: vec![first.clone(), second.clone(), third],
        repeated_attributes_semantics: RepeatedAttributesSemantics::DeltaEncoding as i32,
        default_words: vec![host.to_string()],
        global_word_count: GLOBAL_WORDS,
    })
    .await
    .unwrap();

    // Independent entries: the second stands alone and matches nothing.
    c.report(ReportRequest {
        attributes: vec![first, second],
        repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
        default_words: vec![host.to_string()],
        global_word_count: GLOBAL_WORDS,
    })
    .await
    .unwrap();

    let url = format!("http://{}/metrics", m.prometheus);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = http_get(&url, &[]).await.unwrap().body;
        let ok = requests_total(&body, host, "200");
        let unavailable = requests_total(&body, host, "503");
        if ok >= 2.0 && unavailable >= 2.0 {
            // Give a stray extra report time to show, then check the exact counts.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let body = http_get(&url, &[]).await.unwrap().body;
            assert_eq!(requests_total(&body, host, "200"), 2.0, "{body}");
            assert_eq!(requests_total(&body, host, "503"), 2.0, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reports not in the metrics (200: {ok}, 503: {unavailable}):\n{body}\nmixer log:\n{}",
            m.svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A virtual host whose requests are rate limited by one descriptor:
/// `destination.service.name = SERVICE`.
fn rate_limited_host(service: &str) -> Value {
    json!({
        "name": service,
        "domains": [service],
        "routes": [{
            "match": { "prefix": "/" },
            "route": {
                "cluster": "upstream",
                "rate_limits": [{ "actions": [{ "generic_key": {
                    "descriptor_key": "destination.service.name",
                    "descriptor_value": service,
                }}]}],
            },
        }],
    })
}

/// An Envoy on `port` whose ratelimit filter asks Mixer about `svc` and `limited`.
fn ratelimit_bootstrap(port: u16, mixer: SocketAddr, upstream: SocketAddr) -> Value {
    let ratelimit = json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "mesh",
            "timeout": "2s",
            // An error from Mixer refuses the request, so a broken service cannot pass
            // this test.
            "failure_mode_deny": true,
            "rate_limit_service": {
                "grpc_service": { "envoy_grpc": { "cluster_name": "mixer" } },
                "transport_api_version": "V3",
            },
        },
    });
    let hosts = vec![rate_limited_host("svc"), rate_limited_host("limited")];
    envoy_bootstrap(port, mixer, upstream, hosts, ratelimit, None)
}

#[tokio::test]
async fn envoy_ratelimit_filter_gets_429_on_the_sixth_request() {
    let m = start_mixer().await;
    let upstream = Upstream::start("backend", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = free_port();
    let envoy = Envoy::start(ratelimit_bootstrap(port, m.grpc, upstream.addr()))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    for i in 1..=5 {
        let resp = http_get(&url, &[("host", "limited")]).await.unwrap();
        assert_eq!(
            resp.status,
            200,
            "request {i}: {resp:?}\nmixer log:\n{}\nenvoy log:\n{}",
            m.svc.logs(),
            envoy.logs()
        );
    }
    let resp = http_get(&url, &[("host", "limited")]).await.unwrap();
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(upstream.requests(), 5);
    // The limit is per descriptor: svc has Mixer's default quota of 1000 per second.
    for _ in 0..8 {
        let resp = http_get(&url, &[("host", "svc")]).await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    assert_eq!(upstream.requests(), 13);
    envoy.stop().await.unwrap();
}
