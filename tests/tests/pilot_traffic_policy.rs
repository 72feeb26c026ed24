//! DestinationRule traffic policies through real Envoy, measured with real requests: consistent
//! hashing pins a user, outlier detection ejects a failing endpoint, a connection pool limit
//! overflows into 503s, and subset-level policy overrides the host's.

mod pilot_traffic_support;

use std::collections::BTreeSet;
use std::time::Duration;

use mesh_tests::mesh::eventually;
use pilot_traffic_support::{Behaviour, Mesh, RawServer, WAIT, service_entry, upstream};

const HOST: &str = "reviews:9080";

fn dr(body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n{body}"
    )
}

#[tokio::test]
async fn consistent_hash_pins_a_user_and_subsets_override_the_policy() {
    let a = upstream("reviews-a").await;
    let b = upstream("reviews-b").await;
    let c = upstream("reviews-c").await;
    let reviews = service_entry(
        "reviews",
        &[(a.addr(), "v1"), (b.addr(), "v1"), (c.addr(), "v1")],
    );
    // The host hashes on x-user; subset `rr` overrides with round robin (no pinning), and
    // `cookie` hashes on a cookie.
    let rule = dr(r#"  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
  subsets:
  - name: rr
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
  - name: cookie
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpCookie: {name: session, ttl: 60s}}
"#);
    let vs = r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /rr}}]
    route: [{destination: {host: reviews, subset: rr}}]
  - match: [{uri: {prefix: /cookie}}]
    route: [{destination: {host: reviews, subset: cookie}}]
  - route: [{destination: {host: reviews}}]
"#;
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("dr.yaml", &rule),
        ("vs.yaml", vs),
    ])
    .await;
    eventually("hashing configured", WAIT, || async {
        Ok(mesh
            .count(HOST, "/", &[("x-user", "jason")], 6)
            .await?
            .len()
            == 1)
    })
    .await
    .unwrap();

    // Envoy has the host's three endpoints, all healthy (a hashing cluster that knew fewer
    // would pin every user to the same one).
    eventually(
        "the hashing cluster has its three endpoints",
        WAIT,
        || async {
            let clusters = mesh.envoy.admin_get("/clusters").await?.body;
            let healthy = clusters
                .lines()
                .filter(|l| l.starts_with("outbound|9080||reviews.default.svc.cluster.local::"))
                .filter(|l| l.ends_with("::health_flags::healthy"))
                .count();
            Ok(healthy == 3)
        },
    )
    .await
    .unwrap();

    // Each user sticks to one endpoint; different users spread over several.
    let mut chosen = BTreeSet::new();
    for user in [
        "jason", "alice", "bob", "carol", "dave", "erin", "frank", "grace",
    ] {
        let c = mesh.count(HOST, "/", &[("x-user", user)], 8).await.unwrap();
        assert_eq!(c.len(), 1, "{user} was not pinned: {c:?}");
        chosen.extend(c.into_keys());
    }
    assert!(chosen.len() >= 2, "all users on one endpoint: {chosen:?}");

    // The subset's round robin overrides the host's hashing: one user reaches all three.
    let c = mesh
        .count(HOST, "/rr", &[("x-user", "jason")], 9)
        .await
        .unwrap();
    assert_eq!(c.len(), 3, "round robin expected: {c:?}");

    // Cookie hashing: Envoy sets the cookie, and requests carrying it stick.
    let r = mesh.get(HOST, "/cookie", &[]).await.unwrap();
    let cookie = r
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no session cookie: {r:?}"));
    assert!(cookie.starts_with("session="), "{cookie}");
    let c = mesh
        .count(HOST, "/cookie", &[("cookie", cookie.as_str())], 8)
        .await
        .unwrap();
    assert_eq!(c.len(), 1, "cookie not pinned: {c:?}");
    mesh.finish().await;
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint() {
    let good = upstream("reviews-good").await;
    let bad = RawServer::start("reviews-bad", Behaviour::Failing).await;
    let reviews = service_entry("reviews", &[(good.addr(), "v1"), (bad.addr, "v1")]);
    let rule = dr(r#"  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"#);
    // No retries, so the failures are visible until the ejection.
    let vs = r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
"#;
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("dr.yaml", &rule),
        ("vs.yaml", vs),
    ])
    .await;
    let stat = "cluster.outbound|9080||reviews.default.svc.cluster.local.outlier_detection.ejections_enforced_consecutive_5xx";
    eventually("the failing endpoint is ejected", WAIT, || async {
        mesh.get(HOST, "/", &[]).await?;
        Ok(mesh.envoy.stat(stat).await?.unwrap_or(0) >= 1)
    })
    .await
    .unwrap();
    let bad_before = bad.requests();
    let c = mesh.count(HOST, "/", &[], 30).await.unwrap();
    assert_eq!(c.get("200 reviews-good"), Some(&30), "{c:?}");
    assert_eq!(
        bad.requests(),
        bad_before,
        "the ejected endpoint still got traffic"
    );
    mesh.finish().await;
}

#[tokio::test]
async fn a_connection_pool_limit_overflows_into_503s() {
    let slow = RawServer::start("reviews-slow", Behaviour::Slow(Duration::from_millis(500))).await;
    let reviews = service_entry("reviews", &[(slow.addr, "v1")]);
    let rule = dr(r#"  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
"#);
    let vs = r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
"#;
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("dr.yaml", &rule),
        ("vs.yaml", vs),
    ])
    .await;
    mesh.wait_for(HOST, "/", &[], "200 reviews-slow").await;
    let stat =
        "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_pending_overflow";
    // Eight concurrent requests: one in flight, one pending, the rest overflow.
    let mut overflowed = 0;
    let mut ok = 0;
    for _ in 0..3 {
        let results = futures_all(&mesh, 8).await;
        ok += results.iter().filter(|s| **s == 200).count();
        overflowed += results.iter().filter(|s| **s == 503).count();
        if overflowed > 0 {
            break;
        }
    }
    assert!(ok >= 1, "no request succeeded");
    assert!(overflowed >= 3, "only {overflowed} requests overflowed");
    assert!(mesh.envoy.stat(stat).await.unwrap().unwrap_or(0) >= 3);
    mesh.finish().await;
}

/// Sends `n` requests at once and returns their status codes.
async fn futures_all(mesh: &Mesh, n: usize) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let port = mesh.port;
        set.spawn(async move {
            mesh_tests::http_get(&format!("http://127.0.0.1:{port}/"), &[("host", HOST)])
                .await
                .map(|r| r.status.as_u16())
                .unwrap_or(0)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap_or(0));
    }
    out
}
