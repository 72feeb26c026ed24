//! A real Prometheus server scraping Mixer's prometheus adapter: Envoy sends Mixer its
//! access logs, Mixer (Istio 1.0's default config) turns them into `istio_requests_total`
//! and friends, and Prometheus's query API shows them.
//!
//! `prometheus` comes from `make deps`; without it this test fails and says so.

mod mixer_support;

use std::time::{Duration, Instant};

use mesh_tests::prometheus::Prometheus;
use mixer_support::setup;
use serde_json::Value;

/// The value of the one-sample result of an instant query (0 when empty).
fn value(result: &[Value]) -> f64 {
    result
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn prometheus_scrapes_istio_requests_total_from_mixer() {
    let s = setup(&[], &["svc"]).await;
    let prometheus = Prometheus::start(&[s.mixer.prometheus]).await;

    for _ in 0..4 {
        assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    }
    let requests = r#"sum(istio_requests_total{destination_service="svc.default.svc.cluster.local",response_code="200",reporter="destination"})"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        match prometheus.query(requests).await {
            Ok(r) if value(&r) >= 4.0 => {
                last = r;
                break;
            }
            Ok(r) => last = r,
            Err(e) => eprintln!("query failed: {e:#}"),
        }
        if Instant::now() > deadline {
            panic!(
                "Prometheus never showed 4 requests: last result {last:?}\ntargets: {:?}\nprometheus log:\n{}\nmixer log:\n{}",
                prometheus.targets().await,
                prometheus.logs(),
                s.mixer.svc.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(value(&last), 4.0, "{last:?}");

    // The scrape target is Mixer's adapter address, healthy.
    let targets = prometheus.targets().await.unwrap();
    assert_eq!(
        targets,
        vec![(
            format!("http://{}/metrics", s.mixer.prometheus),
            "up".to_string(),
            String::new()
        )]
    );
    // Histograms arrive too, with their buckets.
    let durations = prometheus
        .query(r#"sum(istio_request_duration_seconds_count{destination_service="svc.default.svc.cluster.local"})"#)
        .await
        .unwrap();
    assert!(value(&durations) >= 4.0, "{durations:?}");
    let buckets = prometheus
        .query(r#"count(istio_request_duration_seconds_bucket{destination_service="svc.default.svc.cluster.local"})"#)
        .await
        .unwrap();
    assert!(value(&buckets) > 1.0, "{buckets:?}");

    // More requests: the counter moves on the next scrapes.
    for _ in 0..3 {
        assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = prometheus.query(requests).await.unwrap();
        if value(&r) >= 7.0 {
            assert_eq!(value(&r), 7.0, "{r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {r:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    prometheus.stop().await;
}
