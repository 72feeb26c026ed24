//! The legacy routing API and validation, through real Envoy: Istio 0.5's bookinfo demo
//! (`route-rule-all-v1.yaml`, then `route-rule-reviews-test-v2.yaml`) routes user jason to
//! reviews v2 as it did; an invalid edit is refused, reported, and the last good config keeps
//! serving; `pilot validate` checks files offline.

mod pilot_traffic_support;

use std::path::PathBuf;

use mesh_tests::mesh::eventually;
use mesh_tests::workspace_binary;
use pilot_traffic_support::{Mesh, WAIT, service_entry, upstream};

const HOST: &str = "reviews:9080";

fn fixture(name: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../pilot/tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

#[tokio::test]
async fn the_0_5_route_rule_demo_routes_jason_to_reviews_v2() {
    let v1 = upstream("reviews-v1").await;
    let v2 = upstream("reviews-v2").await;
    let v3 = upstream("reviews-v3").await;
    let reviews = service_entry(
        "reviews",
        &[(v1.addr(), "v1"), (v2.addr(), "v2"), (v3.addr(), "v3")],
    );
    let (_, all_v1) = fixture("istio-0.5-route-rule-all-v1.yaml");
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("route-rule-all-v1.yaml", &all_v1),
    ])
    .await;
    mesh.wait_for(HOST, "/", &[], "200 reviews-v1").await;
    let c = mesh
        .count(HOST, "/", &[("cookie", "user=jason")], 10)
        .await
        .unwrap();
    assert_eq!(c.get("200 reviews-v1"), Some(&10), "all v1 first: {c:?}");

    let (_, test_v2) = fixture("istio-0.5-route-rule-reviews-test-v2.yaml");
    mesh.pilot
        .write("route-rule-reviews-test-v2.yaml", &test_v2)
        .unwrap();
    mesh.wait_for(HOST, "/", &[("cookie", "user=jason")], "200 reviews-v2")
        .await;
    let c = mesh
        .count(HOST, "/", &[("cookie", "user=jason")], 10)
        .await
        .unwrap();
    assert_eq!(c.get("200 reviews-v2"), Some(&10), "jason gets v2: {c:?}");
    let c = mesh
        .count(HOST, "/", &[("cookie", "foo=bar;user=jason")], 5)
        .await
        .unwrap();
    assert_eq!(c.get("200 reviews-v2"), Some(&5), "{c:?}");
    let c = mesh
        .count(HOST, "/", &[("cookie", "user=alice")], 10)
        .await
        .unwrap();
    assert_eq!(
        c.get("200 reviews-v1"),
        Some(&10),
        "others stay on v1: {c:?}"
    );
    let c = mesh.count(HOST, "/", &[], 10).await.unwrap();
    assert_eq!(c.get("200 reviews-v1"), Some(&10), "{c:?}");
    mesh.finish().await;
}

#[tokio::test]
async fn invalid_config_is_refused_and_the_last_good_keeps_serving() {
    let v1 = upstream("reviews-v1").await;
    let v2 = upstream("reviews-v2").await;
    let reviews = service_entry("reviews", &[(v1.addr(), "v1"), (v2.addr(), "v2")]);
    let (_, subsets) = fixture("istio-1.0-destination-rule-reviews.yaml");
    let all_v2 = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
";
    let mesh = Mesh::start(&[
        ("reviews.yaml", &reviews),
        ("dr.yaml", &subsets),
        ("vs.yaml", all_v2),
    ])
    .await;
    mesh.wait_for(HOST, "/", &[], "200 reviews-v2").await;

    // Weights that add up to 110: refused with file, object and field named.
    let bad = all_v2.replace(
        "    - destination: {host: reviews, subset: v2}\n",
        "    - destination: {host: reviews, subset: v2}\n      weight: 90\n    - destination: {host: reviews, subset: v1}\n      weight: 20\n",
    );
    mesh.pilot.write("vs.yaml", &bad).unwrap();
    eventually("the refusal is reported", WAIT, || async {
        let configz = mesh.pilot.debug("/debug/configz").await?;
        Ok(configz["errors"].as_array().is_some_and(|errors| {
            errors.iter().any(|e| {
                let e = e.as_str().unwrap_or("");
                e.contains("vs.yaml") && e.contains("reviews") && e.contains("spec.http[0].route")
            })
        }))
    })
    .await
    .unwrap();
    let c = mesh.count(HOST, "/", &[], 20).await.unwrap();
    assert_eq!(
        c.get("200 reviews-v2"),
        Some(&20),
        "the last good route serves: {c:?}"
    );
    mesh.finish().await;
}

#[test]
fn pilot_validate_checks_files_like_istioctl() {
    let pilot = workspace_binary("pilot").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<PathBuf> = [
        "istio-0.5-route-rule-all-v1.yaml",
        "istio-0.5-route-rule-reviews-test-v2.yaml",
        "istio-1.0-virtual-service-reviews-80-20.yaml",
        "istio-1.0-destination-rule-all.yaml",
        "istio-current-bookinfo-gateway.yaml",
    ]
    .iter()
    .map(|f| fixture(f).0)
    .collect();
    let out = std::process::Command::new(&pilot)
        .arg("validate")
        .args(good.iter().flat_map(|p| [PathBuf::from("-f"), p.clone()]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - match:
    - uri: {regex: \"/x{1001}\"}
    fault:
      abort: {httpStatus: 1000, percentage: {value: 150}}
    timeout: 0s
    route:
    - destination: {host: ratings}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts: [db.example.com]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints: [{address: db.example.com}]
",
    )
    .unwrap();
    let out = std::process::Command::new(&pilot)
        .args(["validate", "-f"])
        .arg(&good[0])
        .arg("-f")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    for field in [
        "spec.http[0].match[0].uri.regex",
        "spec.http[0].fault.abort.httpStatus",
        "spec.http[0].fault.abort.percentage",
        "spec.http[0].timeout",
        "spec.endpoints[0].address",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("bad.yaml") && l.contains(field)),
            "no line for {field}: {stdout}"
        );
    }
    assert_eq!(lines.len(), 5, "one line per problem: {stdout}");
}

/// An Istio 0.5 EgressRule opens an external host, as the ServiceEntry it stands for does:
/// before it, the host is unknown; with it, requests reach the host's servers.
#[tokio::test]
async fn an_egress_rule_opens_an_external_host() {
    let external = upstream("external").await;
    let port = external.addr().port();
    let mesh = Mesh::start(&[]).await;
    let host = format!("localhost:{port}");
    let before = mesh.get(&host, "/", &[]).await.unwrap();
    assert_eq!(before.status.as_u16(), 404, "unknown before the rule");

    let rule = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: EgressRule\nmetadata:\n  name: local-external\nspec:\n  destination:\n    service: localhost\n  ports:\n  - port: {port}\n    protocol: http\n"
    );
    mesh.pilot.write("egress.yaml", &rule).unwrap();
    mesh.wait_for(&host, "/", &[], "200 external").await;
    assert!(external.requests() >= 3);
    mesh.finish().await;
}
