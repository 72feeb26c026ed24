//! Mixer's adapters that talk to the outside world, behind a real Envoy (ext_authz v3):
//! `redisquota` against a real `redis-server`, `opa` with Rego policies, and `listchecker`
//! fetching its list over HTTP from a server whose list changes. Mixer runs Istio 1.0's
//! default config plus each test's YAML.
//!
//! `redis-server` comes from `make deps`; without it these tests fail and say so.

mod mixer_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_tests::mesh::eventually;
use mixer_support::{Redis, WAIT, sample, setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUOTA_HANDLER: &str = "handler.redisquota.istio-system";

/// A redisquota handler on `redis` for `requestcount` (by destination), bound to every
/// service, with the quota entry `quota` (YAML lines under `- name: ...`).
fn redisquota_config(redis: &str, quota: &str) -> String {
    format!(
        r#"apiVersion: config.istio.io/v1alpha2
kind: redisquota
metadata:
  name: handler
  namespace: istio-system
spec:
  redisServerUrl: {redis}
  connectionPoolSize: 4
  quotas:
  - name: requestcount.quota.istio-system
{quota}
---
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata:
  name: requestcount
  namespace: istio-system
spec:
  dimensions:
    destination: destination.service.name | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata:
  name: quota
  namespace: istio-system
spec:
  actions:
  - handler: handler.redisquota
    instances: [requestcount.quota]
---
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpec
metadata:
  name: request-count
  namespace: istio-system
spec:
  rules:
  - quotas:
    - charge: 1
      quota: requestcount
---
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpecBinding
metadata:
  name: request-count
  namespace: istio-system
spec:
  quotaSpecs:
  - name: request-count
    namespace: istio-system
  services:
  - service: '*'
"#
    )
}

#[tokio::test]
async fn redisquota_denies_the_sixth_request_with_429() {
    let redis = Redis::start().await;
    let quota = "    maxAmount: 1000\n    validDuration: 30s\n    overrides:\n    - dimensions:\n        destination: limited\n      maxAmount: 5\n";
    let s = setup(
        &[("quota.yaml", redisquota_config(&redis.addr(), quota))],
        &["svc", "limited"],
    )
    .await;
    assert_eq!(s.mixer.refused().await, Vec::<String>::new());
    for i in 1..=5 {
        let (status, body) = s.get("limited", "/", &[]).await;
        assert_eq!(status, 200, "request {i}: {body}\n{}", s.mixer.svc.logs());
    }
    let (status, body) = s.get("limited", "/", &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("requestcount is exhausted"), "{body}");
    // The override only limits `limited`, and the upstream saw only what was granted.
    for _ in 0..8 {
        assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    }
    assert_eq!(s.upstream.requests(), 13);
    redis.stop().await;
}

#[tokio::test]
async fn redisquota_rolling_window_releases_what_was_granted_a_window_ago() {
    let redis = Redis::start().await;
    let quota = "    maxAmount: 3\n    validDuration: 2s\n    bucketDuration: 200ms\n    rateLimitAlgorithm: ROLLING_WINDOW\n";
    let s = setup(
        &[("quota.yaml", redisquota_config(&redis.addr(), quota))],
        &["svc"],
    )
    .await;
    assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = Instant::now();
    assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    assert_eq!(s.get("svc", "/", &[]).await.0, 429);
    // The first two are released 2.2s after their grant at the latest (the end of their
    // 200ms bucket plus the window), the third 2s after its grant at the earliest; a fixed
    // window would have started over with all three available.
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(first.elapsed())).await;
    assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    assert_eq!(s.get("svc", "/", &[]).await.0, 429);
    assert!(
        second.elapsed() < Duration::from_millis(2000),
        "too slow to tell: {:?}",
        second.elapsed()
    );
    redis.stop().await;
}

#[tokio::test]
async fn redisquota_with_redis_down_answers_503_counts_it_and_recovers() {
    let redis = Redis::start().await;
    let port = redis.port;
    let quota = "    maxAmount: 1000\n    validDuration: 60s\n";
    let s = setup(
        &[("quota.yaml", redisquota_config(&redis.addr(), quota))],
        &["svc"],
    )
    .await;
    assert_eq!(s.get("svc", "/", &[]).await.0, 200);
    redis.stop().await;

    let start = Instant::now();
    let (status, body) = s.get("svc", "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("redis at 127.0.0.1:{port}")),
        "{body}"
    );
    // Never held longer than the adapter's Redis timeout.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let (status, _) = s.get("svc", "/", &[]).await;
    assert_eq!(status, 503);
    let metrics = s.mixer.own_metrics().await;
    assert!(
        sample(
            &metrics,
            "mixer_dispatch_errors_total",
            &[("handler", QUOTA_HANDLER)]
        ) >= 2.0,
        "{metrics}"
    );

    // Redis is back (empty): the next requests are granted again.
    let redis = Redis::start_on(port).await;
    eventually("requests to be granted again", WAIT, || async {
        Ok(s.get("svc", "/", &[]).await.0 == 200)
    })
    .await
    .unwrap();
    redis.stop().await;
}

#[tokio::test]
async fn redisquota_config_errors_are_refused_with_the_field() {
    let bad_rolling = "    maxAmount: 5\n    validDuration: 1s\n    bucketDuration: 1s\n    rateLimitAlgorithm: ROLLING_WINDOW\n";
    let s = setup(
        &[("quota.yaml", redisquota_config("127.0.0.1:1", bad_rolling))],
        &["svc"],
    )
    .await;
    let refused = s.mixer.refused().await;
    assert!(
        refused.iter().any(|r| r.contains("redisquota istio-system/handler")
            && r.contains("spec.quotas[0].validDuration: quotas.valid_duration: 1s should be longer than quotas.bucket_duration: 1s")),
        "{refused:#?}"
    );
}

const OPA_CONFIG: &str = r#"apiVersion: config.istio.io/v1alpha2
kind: opa
metadata:
  name: paths
  namespace: istio-system
spec:
  checkMethod: data.mixerauthz.allow
  failClose: true
  policy:
  - |
    package mixerauthz

    default allow = false

    allow {
        startswith(input.action.path, "/public")
    }

    allow {
        input.subject.user == "admin"
        input.action.method == "GET"
    }
---
apiVersion: config.istio.io/v1alpha2
kind: authorization
metadata:
  name: requestauthz
  namespace: istio-system
spec:
  subject:
    user: request.headers["x-user"] | ""
  action:
    namespace: destination.service.namespace | "default"
    service: destination.service.name | ""
    method: request.method | ""
    path: request.url_path | "/"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata:
  name: opa
  namespace: istio-system
spec:
  actions:
  - handler: paths.opa
    instances: [requestauthz.authorization]
"#;

#[tokio::test]
async fn opa_policy_allows_only_some_paths_and_users() {
    let s = setup(&[("opa.yaml", OPA_CONFIG.to_string())], &["svc"]).await;
    assert_eq!(s.mixer.refused().await, Vec::<String>::new());
    for (path, user, status) in [
        ("/public", "", 200),
        ("/public/docs?x=1", "jane", 200),
        ("/private", "", 403),
        ("/private", "jane", 403),
        ("/private", "admin", 200),
        ("/", "", 403),
    ] {
        let headers: &[(&str, &str)] = if user.is_empty() {
            &[]
        } else {
            &[("x-user", user)]
        };
        let (got, body) = s.get("svc", path, headers).await;
        assert_eq!(got, status, "{path} as {user:?}: {body}");
        if status == 403 {
            assert!(body.contains("opa: request was rejected"), "{body}");
        }
    }
    assert_eq!(s.upstream.requests(), 3);
}

#[tokio::test]
async fn opa_policy_that_does_not_compile_is_refused_and_the_last_good_one_serves() {
    let s = setup(&[("opa.yaml", OPA_CONFIG.to_string())], &["svc"]).await;
    assert_eq!(s.get("svc", "/private", &[]).await.0, 403);
    // An edit calling a function that does not exist: refused, with where and why.
    let broken = OPA_CONFIG.replace(
        "startswith(input.action.path, \"/public\")",
        "starts_with(input.action.path, \"/public\")",
    );
    std::fs::write(s.mixer.dir.path().join("opa.yaml"), broken).unwrap();
    eventually("the broken policy to be refused", WAIT, || async {
        Ok(s.mixer.refused().await.iter().any(|r| {
            r.contains("opa istio-system/paths")
                && r.contains("spec.policy: does not compile (evaluating data.mixerauthz.allow): opa_policy.0:")
                && r.contains("could not find function starts_with")
                && r.contains("the last good version keeps serving")
        }))
    })
    .await
    .unwrap();
    assert_eq!(s.get("svc", "/private", &[]).await.0, 403);
    assert_eq!(s.get("svc", "/public", &[]).await.0, 200);
}

/// An HTTP server answering every GET with the current list; counts fetches.
struct ListServer {
    addr: std::net::SocketAddr,
    list: Arc<Mutex<String>>,
    fetches: Arc<AtomicU64>,
    last_fetch: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ListServer {
    async fn start(list: &str) -> ListServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(list.to_string()));
        let fetches = Arc::new(AtomicU64::new(0));
        let last_fetch = Arc::new(Mutex::new(None));
        let (l, f, lf) = (shared.clone(), fetches.clone(), last_fetch.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (l, f, lf) = (l.clone(), f.clone(), lf.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    *lf.lock().unwrap() = Some(Instant::now());
                    let body = l.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        ListServer {
            addr,
            list: shared,
            fetches,
            last_fetch,
            task,
        }
    }
}

#[tokio::test]
async fn listchecker_follows_a_list_fetched_over_http() {
    let lists = ListServer::start("# blocked users\nmallory\n").await;
    let config = format!(
        r#"apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata:
  name: blockedusers
  namespace: istio-system
spec:
  providerUrl: http://{}/blocked.txt
  refreshInterval: 1s
  ttl: 3s
  blacklist: true
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata:
  name: requestuser
  namespace: istio-system
spec:
  value: request.headers["x-user"] | "nobody"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata:
  name: blockedusers
  namespace: istio-system
spec:
  actions:
  - handler: blockedusers.listchecker
    instances: [requestuser.listentry]
"#,
        lists.addr
    );
    let s = setup(&[("list.yaml", config)], &["svc"]).await;
    let status = |user: &'static str| {
        let s = &s;
        async move { s.get("svc", "/", &[("x-user", user)]).await.0 }
    };
    eventually("the first list to be fetched", WAIT, || async {
        Ok(status("mallory").await == 403)
    })
    .await
    .unwrap();
    let (code, body) = s.get("svc", "/", &[("x-user", "mallory")]).await;
    assert_eq!(code, 403);
    assert!(body.contains("mallory is blacklisted"), "{body}");
    assert_eq!(status("carol").await, 200);

    // The list changes: the next refresh applies it.
    *lists.list.lock().unwrap() = "carol\n".into();
    eventually("the new list to apply", WAIT, || async {
        Ok(status("carol").await == 403 && status("mallory").await == 200)
    })
    .await
    .unwrap();
    let fetched = lists.fetches.load(Ordering::SeqCst);
    assert!(fetched >= 2, "{fetched}");

    // The server goes away: the last list keeps serving until its ttl (3s after the last
    // fetch), then checks fail (UNAVAILABLE, 503) rather than let everyone through.
    lists.task.abort();
    assert_eq!(status("carol").await, 403);
    eventually("the list to expire", WAIT, || async {
        Ok(status("carol").await == 503)
    })
    .await
    .unwrap();
    let since = lists.last_fetch.lock().unwrap().unwrap().elapsed();
    assert!(
        since >= Duration::from_millis(2900) && since < Duration::from_millis(3800),
        "expired {since:?} after the last fetch, ttl is 3s"
    );
    let (_, body) = s.get("svc", "/", &[("x-user", "carol")]).await;
    assert!(body.contains("list not available"), "{body}");
}
