//! Mixer behind a real Envoy: ext_authz v3 for policy, the gRPC access-log service v3 for
//! telemetry. Mixer runs Istio 1.0's default config plus the test policy
//! (`mixer/tests/fixtures/policy.yaml`: a denier for `x-user: john`, a blacklist of `/admin`
//! and `/secret`, and a memquota of 5 requests per 10s for the `limited` service).

mod mixer_support;

use std::time::{Duration, Instant};

use mesh_tests::http_get;
use mixer_support::{Setup, sample, test_policy};

/// Mixer with the test policy, and an Envoy routing `svc` and `limited` through it.
async fn setup() -> Setup {
    mixer_support::setup(&[test_policy()], &["svc", "limited"]).await
}

#[tokio::test]
async fn mixer_denier_returns_403_for_the_matching_header_only() {
    let s = setup().await;
    let ok = http_get(
        &format!("{}/", s.url),
        &[("host", "svc"), ("x-user", "jane")],
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{ok:?}\n{}", s.mixer.svc.logs());
    let denied = http_get(
        &format!("{}/", s.url),
        &[("host", "svc"), ("x-user", "john")],
    )
    .await
    .unwrap();
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(denied.body.contains("Not allowed"), "{denied:?}");
    let ok = http_get(&format!("{}/", s.url), &[("host", "svc")])
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(s.upstream.requests(), 2);
}

#[tokio::test]
async fn mixer_listchecker_blacklist_blocks_paths() {
    let s = setup().await;
    for (path, status) in [
        ("/admin", 403),
        ("/secret?x=1", 403),
        ("/public", 200),
        ("/admin/sub", 200),
    ] {
        let resp = http_get(&format!("{}{path}", s.url), &[("host", "svc")])
            .await
            .unwrap();
        assert_eq!(resp.status, status, "{path}: {resp:?}");
    }
}

#[tokio::test]
async fn mixer_memquota_override_turns_the_sixth_request_into_429() {
    let s = setup().await;
    for i in 1..=5 {
        let resp = http_get(&format!("{}/", s.url), &[("host", "limited")])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
    }
    let resp = http_get(&format!("{}/", s.url), &[("host", "limited")])
        .await
        .unwrap();
    assert_eq!(resp.status, 429, "{resp:?}");
    // The override only limits `limited`.
    for _ in 0..8 {
        let resp = http_get(&format!("{}/", s.url), &[("host", "svc")])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
}

#[tokio::test]
async fn mixer_telemetry_reaches_istio_requests_total() {
    let s = setup().await;
    for _ in 0..3 {
        let resp = http_get(&format!("{}/", s.url), &[("host", "svc")])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let resp = http_get(
        &format!("{}/", s.url),
        &[("host", "svc"), ("x-user", "john")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 403);

    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics_url = format!("http://{}/metrics", s.mixer.prometheus);
    loop {
        let body = http_get(&metrics_url, &[]).await.unwrap().body;
        let value = |code: &str| {
            sample(
                &body,
                "istio_requests_total",
                &[
                    ("response_code", code),
                    ("destination_service", "svc.default.svc.cluster.local"),
                ],
            )
        };
        if value("200") >= 3.0 && value("403") >= 1.0 {
            assert!(
                body.contains("istio_request_duration_seconds_bucket{"),
                "{body}"
            );
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "istio_requests_total not reported; metrics:\n{body}\nmixer log:\n{}",
                s.mixer.svc.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Mixer's own series.
    let own = s.mixer.own_metrics().await;
    assert!(
        own.contains("mixer_checks_total{code=\"PERMISSION_DENIED\"} 1"),
        "{own}"
    );
    assert!(own.contains("mixer_report_entries_total"), "{own}");
    let configz = s.mixer.configz().await;
    assert_eq!(
        configz["mixer"]["refused"].as_array().unwrap().len(),
        0,
        "{configz}"
    );
    assert!(
        configz["mixer"]["rules"].as_array().unwrap().len() >= 9,
        "{configz}"
    );
}

/// Polls until `f` holds (or panics after 15 s).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn mixer_config_changes_apply_and_a_bad_update_keeps_the_last_good_rule() {
    let s = setup().await;
    let dir = s.mixer.dir.path().to_path_buf();
    let status = |user: &'static str| {
        let url = format!("{}/", s.url);
        async move {
            http_get(&url, &[("host", "svc"), ("x-user", user)])
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(status("mary").await, 200);

    let rule = |expr: &str| {
        format!(
            "apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata:\n  name: denymary\n  namespace: istio-system\nspec:\n  match: {expr}\n  actions:\n  - handler: denyjohn.denier\n    instances: [denyrequest.checknothing]\n"
        )
    };
    std::fs::write(
        dir.join("mary.yaml"),
        rule(r#"request.headers["x-user"] == "mary""#),
    )
    .unwrap();
    eventually("the new rule to deny mary", || async {
        status("mary").await == 403
    })
    .await;

    // An ill-typed update is refused, with a message pointing into the expression, and the
    // last good version keeps denying.
    std::fs::write(
        dir.join("mary.yaml"),
        rule(r#"request.headers["x-user"] == 42"#),
    )
    .unwrap();
    let configz_url = format!("http://{}/debug/configz", s.mixer.svc.http_addr());
    eventually("the bad update to be refused", || {
        let url = configz_url.clone();
        async move {
            let c = http_get(&url, &[]).await.unwrap().json().unwrap();
            c["mixer"]["refused"].as_array().unwrap().iter().any(|r| {
                r["object"]
                    .as_str()
                    .unwrap()
                    .contains("rule istio-system/denymary")
                    && r["error"]
                        .as_str()
                        .unwrap()
                        .contains("spec.match: column 30")
            })
        }
    })
    .await;
    assert_eq!(status("mary").await, 403);
    assert_eq!(status("jane").await, 200);

    std::fs::remove_file(dir.join("mary.yaml")).unwrap();
    eventually("the rule to go away", || async {
        status("mary").await == 200
    })
    .await;
}

/// Envoy holds its access-log stream to Mixer open for as long as it runs: a Mixer told to
/// stop (SIGTERM) ends that stream itself after taking in what arrived, and exits cleanly,
/// instead of waiting on the stream until it is killed.
#[tokio::test]
async fn mixer_stops_promptly_while_envoy_holds_its_access_log_stream() {
    let s = setup().await;
    let resp = http_get(&format!("{}/", s.url), &[("host", "svc")])
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    // The report arrived, so the stream is open.
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics_url = format!("http://{}/metrics", s.mixer.prometheus);
    loop {
        let body = http_get(&metrics_url, &[]).await.unwrap().body;
        if sample(&body, "istio_requests_total", &[("response_code", "200")]) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report reached Mixer:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = s.mixer.svc.logs();
    let status = s.mixer.svc.stop().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "Mixer exited with {status}; log:\n{logs}");
}
