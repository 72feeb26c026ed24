//! VirtualService HTTP features through real Envoy, measured with real requests: weighted
//! splits, match steering, faults, timeouts, retries, rewrites, header operations, mirrors,
//! CORS, redirects, direct responses, delegation and precedence between VirtualServices.

mod pilot_traffic_support;

use std::time::{Duration, Instant};

use mesh_tests::mesh::eventually;
use mesh_tests::{Method, http_request};
use pilot_traffic_support::{Behaviour, Mesh, RawServer, WAIT, service_entry, subsets, upstream};

const HOST: &str = "reviews:9080";

fn vs(name: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n{body}"
    )
}

#[tokio::test]
async fn weighted_split_and_match_steering() {
    let v1 = upstream("reviews-v1").await;
    let v2 = upstream("reviews-v2").await;
    let v3 = upstream("reviews-v3").await;
    let reviews = service_entry(
        "reviews",
        &[(v1.addr(), "v1"), (v2.addr(), "v2"), (v3.addr(), "v3")],
    );
    let route = vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - headers: {cookie: {regex: "^(.*?; ?)?(user=tester)(;.*)?$"}}
    - queryParams: {tester: {exact: "yes"}}
    - uri: {prefix: /TESTER}
      ignoreUriCase: true
    route:
    - destination: {host: reviews, subset: v3}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
"#,
    );
    let dr = subsets("reviews");
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("dr.yaml", &dr),
        ("vs.yaml", &route),
    ])
    .await;
    mesh.wait_for(HOST, "/", &[("end-user", "jason")], "200 reviews-v2")
        .await;

    // Steering: header, cookie regex, query parameter, case-insensitive prefix.
    let c = mesh
        .count(HOST, "/", &[("end-user", "jason")], 10)
        .await
        .unwrap();
    assert_eq!(c.get("200 reviews-v2"), Some(&10), "{c:?}");
    let c = mesh
        .count(HOST, "/", &[("cookie", "a=b; user=tester")], 10)
        .await
        .unwrap();
    assert_eq!(c.get("200 reviews-v3"), Some(&10), "{c:?}");
    let c = mesh.count(HOST, "/?tester=yes", &[], 5).await.unwrap();
    assert_eq!(c.get("200 reviews-v3"), Some(&5), "{c:?}");
    let c = mesh.count(HOST, "/tester/x", &[], 5).await.unwrap();
    assert_eq!(c.get("200 reviews-v3"), Some(&5), "{c:?}");

    // The 80/20 split over 200 requests: 3.5 standard deviations are 10%.
    let n = 200;
    let c = mesh.count(HOST, "/", &[], n).await.unwrap();
    let v1n = *c.get("200 reviews-v1").unwrap_or(&0);
    let v2n = *c.get("200 reviews-v2").unwrap_or(&0);
    assert_eq!(v1n + v2n, n, "{c:?}");
    let share = v1n as f64 / n as f64;
    assert!(
        (0.70..=0.90).contains(&share),
        "v1 got {share:.2} of traffic: {c:?}"
    );
    mesh.finish().await;
}

#[tokio::test]
async fn faults_abort_at_their_percentage_and_delay_by_their_time() {
    let v1 = upstream("reviews-v1").await;
    let reviews = service_entry("reviews", &[(v1.addr(), "v1")]);
    let route = vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /abort}
    fault:
      abort: {httpStatus: 418, percentage: {value: 50}}
    route:
    - destination: {host: reviews}
  - match:
    - uri: {prefix: /delay}
    fault:
      delay: {fixedDelay: 200ms, percentage: {value: 100}}
    route:
    - destination: {host: reviews}
  - route:
    - destination: {host: reviews}
"#,
    );
    let mesh = Mesh::start(&[("reviews.yaml", &reviews), ("vs.yaml", &route)]).await;
    mesh.wait_for(HOST, "/", &[], "200 reviews-v1").await;
    eventually("faults configured", WAIT, || async {
        Ok(mesh.get(HOST, "/delay", &[]).await?.status == 200
            && mesh
                .count(HOST, "/abort", &[], 10)
                .await?
                .contains_key("418 fault filter abort"))
    })
    .await
    .unwrap();

    let n = 200;
    let c = mesh.count(HOST, "/abort", &[], n).await.unwrap();
    let aborted = *c.get("418 fault filter abort").unwrap_or(&0);
    let passed = *c.get("200 reviews-v1").unwrap_or(&0);
    assert_eq!(aborted + passed, n, "{c:?}");
    assert!(
        (75..=125).contains(&aborted),
        "{aborted} of {n} aborted: {c:?}"
    );

    // The delay is added to every request (Envoy's timers may fire a millisecond early;
    // the slack above is for a loaded CI machine).
    for _ in 0..3 {
        let start = Instant::now();
        let r = mesh.get(HOST, "/delay", &[]).await.unwrap();
        let took = start.elapsed();
        assert_eq!(r.status, 200);
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(3),
            "delayed request took {took:?}"
        );
    }
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        mesh.get(HOST, "/", &[]).await.unwrap();
        fastest = fastest.min(start.elapsed());
    }
    assert!(
        fastest < Duration::from_millis(200),
        "undelayed: {fastest:?}"
    );
    mesh.finish().await;
}

#[tokio::test]
async fn timeouts_answer_504_in_time_and_retries_hide_a_flaky_upstream() {
    let slow = RawServer::start("slow", Behaviour::Slow(Duration::from_secs(2))).await;
    let flaky = RawServer::start("flaky", Behaviour::Flaky(2)).await;
    let slow_se = service_entry("slow", &[(slow.addr, "v1")]);
    let flaky_se = service_entry("flaky", &[(flaky.addr, "v1")]);
    let routes = format!(
        "{}---\n{}",
        vs(
            "slow",
            "  hosts: [slow]\n  http:\n  - timeout: 300ms\n    route:\n    - destination: {host: slow}\n"
        ),
        vs(
            "flaky",
            r#"  hosts: [flaky]
  http:
  - match:
    - uri: {prefix: /noretry}
    retries: {attempts: 0}
    route:
    - destination: {host: flaky}
  - retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx"}
    route:
    - destination: {host: flaky}
"#
        )
    );
    let mesh = Mesh::start(&[
        ("slow.yaml", &slow_se),
        ("flaky.yaml", &flaky_se),
        ("vs.yaml", &routes),
    ])
    .await;
    eventually("timeout configured", WAIT, || async {
        Ok(mesh.get("slow:9080", "/", &[]).await?.status == 504)
    })
    .await
    .unwrap();
    let start = Instant::now();
    let r = mesh.get("slow:9080", "/", &[]).await.unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    // The upstream answers after 2s: a 504 before that is the 300ms timeout.
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1950),
        "timeout took {took:?}"
    );

    // Two of every three attempts fail: three retries on 5xx make every request succeed.
    mesh.wait_for("flaky:9080", "/", &[], "200 flaky").await;
    let c = mesh.count("flaky:9080", "/", &[], 20).await.unwrap();
    assert_eq!(c.get("200 flaky"), Some(&20), "{c:?}");
    // Without retries, the failures show.
    let c = mesh.count("flaky:9080", "/noretry", &[], 30).await.unwrap();
    assert!(
        c.get("503 flaky").copied().unwrap_or(0) >= 15,
        "no retries: {c:?}"
    );
    mesh.finish().await;
}

#[tokio::test]
async fn rewrites_and_header_operations_reach_the_upstream() {
    let v1 = upstream("reviews-v1").await;
    let reviews = service_entry("reviews", &[(v1.addr(), "v1")]);
    let route = vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /api}
    rewrite: {uri: /echo, authority: rewritten.example}
    headers:
      request:
        set: {x-set: one}
        add: {x-add: two}
        remove: [x-drop]
      response:
        set: {x-resp: three}
        remove: [x-upstream]
    route:
    - destination: {host: reviews}
      headers:
        request:
          set: {x-dest: four}
  - match:
    - uri: {regex: "/re/([a-z]+)"}
    rewrite:
      uriRegexRewrite: {match: "/re/([a-z]+)", rewrite: "/echo/\\1"}
    route:
    - destination: {host: reviews}
  - route:
    - destination: {host: reviews}
"#,
    );
    let mesh = Mesh::start(&[("reviews.yaml", &reviews), ("vs.yaml", &route)]).await;
    eventually("rewrite configured", WAIT, || async {
        Ok(mesh.get(HOST, "/api", &[]).await?.header("x-resp") == Some("three"))
    })
    .await
    .unwrap();
    let r = mesh
        .get(HOST, "/api/list", &[("x-drop", "gone"), ("x-add", "zero")])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-resp"), Some("three"));
    assert_eq!(r.header("x-upstream"), None, "removed response header");
    let echo = r.json().unwrap();
    assert_eq!(echo["path"], "/echo/list", "{echo}");
    let h = &echo["headers"];
    assert_eq!(h["host"], "rewritten.example", "{echo}");
    assert_eq!(h["x-set"], "one", "{echo}");
    assert_eq!(h["x-add"], "zero, two", "{echo}");
    assert_eq!(h["x-dest"], "four", "{echo}");
    assert!(h.get("x-drop").is_none(), "{echo}");

    let r = mesh.get(HOST, "/re/abc", &[]).await.unwrap();
    assert_eq!(r.json().unwrap()["path"], "/echo/abc", "{r:?}");
    mesh.finish().await;
}

#[tokio::test]
async fn mirrors_copy_traffic_and_cors_preflights_answer() {
    let v1 = upstream("reviews-v1").await;
    let v2 = upstream("reviews-v2").await;
    let reviews = service_entry("reviews", &[(v1.addr(), "v1"), (v2.addr(), "v2")]);
    let dr = subsets("reviews");
    let route = vs(
        "reviews",
        r#"  hosts: [reviews]
  http:
  - corsPolicy:
      allowOrigins: [{exact: "https://allowed.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      maxAge: 24h
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100}
    route:
    - destination: {host: reviews, subset: v1}
"#,
    );
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("dr.yaml", &dr),
        ("vs.yaml", &route),
    ])
    .await;
    mesh.wait_for(HOST, "/", &[], "200 reviews-v1").await;
    eventually("mirror configured", WAIT, || async {
        mesh.get(HOST, "/", &[]).await?;
        Ok(v2.requests() > 0)
    })
    .await
    .unwrap();
    let before = (v1.requests(), v2.requests());
    let c = mesh.count(HOST, "/", &[], 20).await.unwrap();
    assert_eq!(
        c.get("200 reviews-v1"),
        Some(&20),
        "answers come from v1 only: {c:?}"
    );
    eventually("every request mirrored", WAIT, || async {
        Ok(v2.requests() - before.1 == 20)
    })
    .await
    .unwrap();
    assert_eq!(v1.requests() - before.0, 20);

    let url = format!("http://127.0.0.1:{}/", mesh.port);
    let preflight = |origin: &'static str| {
        let url = url.clone();
        async move {
            http_request(
                Method::OPTIONS,
                &url,
                &[
                    ("host", HOST),
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
                "",
            )
            .await
            .unwrap()
        }
    };
    let r = preflight("https://allowed.example").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://allowed.example")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    let r = preflight("https://evil.example").await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    mesh.finish().await;
}

#[tokio::test]
async fn redirects_direct_responses_delegates_and_precedence() {
    let v1 = upstream("reviews-v1").await;
    let v2 = upstream("reviews-v2").await;
    let reviews = service_entry("reviews", &[(v1.addr(), "v1"), (v2.addr(), "v2")]);
    let dr = subsets("reviews");
    let routes = [
        vs(
            "root",
            r#"  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /old}
    redirect: {uri: /new, authority: moved.example, redirectCode: 302}
  - match:
    - uri: {exact: /teapot}
    directResponse: {status: 418, body: {string: "short and stout"}}
  - match:
    - uri: {prefix: /team}
    delegate: {name: team-routes}
  - route:
    - destination: {host: reviews, subset: v1}
"#,
        ),
        // A delegate: no hosts, reached only through the root's /team prefix.
        vs(
            "team-routes",
            r#"  http:
  - match:
    - uri: {prefix: /team/v2}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
"#,
        ),
        // The same host under a wildcard: the exact host of `root` wins.
        vs(
            "wildcard",
            r#"  hosts: ["*.default.svc.cluster.local"]
  http:
  - directResponse: {status: 503}
"#,
        ),
    ]
    .join("---\n");
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("dr.yaml", &dr),
        ("vs.yaml", &routes),
    ])
    .await;
    mesh.wait_for(HOST, "/team/v2/x", &[], "200 reviews-v2")
        .await;

    let r = mesh.get(HOST, "/old/page", &[]).await.unwrap();
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("http://moved.example/new"));
    let r = mesh.get(HOST, "/teapot", &[]).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (418, "short and stout")
    );
    let c = mesh.count(HOST, "/team/other", &[], 5).await.unwrap();
    assert_eq!(c.get("200 reviews-v1"), Some(&5), "{c:?}");
    let c = mesh.count(HOST, "/", &[], 5).await.unwrap();
    assert_eq!(c.get("200 reviews-v1"), Some(&5), "{c:?}");
    mesh.finish().await;
}
