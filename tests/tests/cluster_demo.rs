//! The demo (`make demo-cluster`, `tests/cluster/demo.sh`) as a test, on the real node: the
//! script installs the control plane with `kubectl apply`, labels a namespace for
//! injection and deploys bookinfo (`manifests/bookinfo/`) behind the ingress gateway; then,
//! every request through the gateway's NodePort and counted by the reviews version that
//! answered:
//!
//! - with no rule, reviews v1, v2 and v3 share the traffic;
//! - `virtual-service-all-v1` sends everything to v1;
//! - `virtual-service-reviews-test-v2` sends user jason to v2 and everyone else to v1;
//! - the 80/20 and 50/50 splits land within five standard deviations of their weights;
//! - an invalid VirtualService is refused by the webhook and the traffic does not change;
//!   one routing to a subset nobody defines gets 503 from Envoy (`NC`), and `pilot check`
//!   names it (IST0101);
//! - Istio 0.5's RouteRules `route-rule-all-v1` and `route-rule-reviews-test-v2` (jason by
//!   cookie) route the same;
//! - ratings' fault delay (7s) and abort (500) for user jason show at productpage as a slow
//!   page without reviews (reviews and productpage give up after 3s: the bug Istio's
//!   fault-injection task finds) and as missing stars, and nobody else's page changes;
//! - Mixer's policy samples: the deny-label rule turns reviews v3's calls to ratings into
//!   403 while v2's keep their stars, and the ratings quota answers 429 past its rate; a
//!   real Prometheus, scraping istio-telemetry as Istio's add-on does, has those calls in
//!   `istio_requests_total` by source and destination workload, version and response code;
//! - `destination-rule-all-mtls` with a STRICT PeerAuthentication: the pages keep coming
//!   through the ingress, a pod without a sidecar is refused, and the certificate a
//!   sidecar presents is its workload's SPIFFE identity from Citadel;
//! - authorization under STRICT mTLS: an ALLOW AuthorizationPolicy lets only productpage's
//!   identity call details (reviews' sidecar gets 403), edited in place to allow reviews
//!   instead; a DENY by request header refuses those pages at productpage, through the
//!   ingress;
//! - end-user authentication: a RequestAuthentication (inline key set) and an ALLOW policy
//!   requiring a request principal on productpage's `/productpage`: through the ingress a
//!   valid token gets the page, no token 403, expired, mis-issued and forged tokens 401, a
//!   token for another audience 403; removed, pages come without a token again;
//! - continuity: under steady load through the ingress, deleting Pilot's pods, then
//!   Mixer's and Citadel's, loses no page, and an endpoint change made while Pilot is gone
//!   reaches the proxies once it is back; an upgrade (install.yaml re-applied with changed
//!   settings) rolls every control-plane Deployment, gateways included, losing no page.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use mesh_tests::Cluster;
use mesh_tests::cluster::{real_node_image, retry, served_certificate};
use mesh_tests::jwt::{self, Signer, jwks_of};
use mesh_tests::prometheus::Prometheus;

/// The ingress gateway's NodePort on the real node (`tests/cluster/node.sh`: node
/// 10.250.0.2; install.yaml: http2 31380).
const INGRESS: &str = "http://10.250.0.2:31380";

/// `count` requests to `/productpage` through the ingress, counted by the reviews version
/// in the page (`error` for a request that failed).
async fn versions(count: u32, headers: &[(&str, &str)]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let version = match mesh_tests::http_get(&format!("{INGRESS}/productpage"), headers).await {
            Ok(resp) if resp.status.as_u16() == 200 => {
                let page: serde_json::Value = serde_json::from_str(&resp.body)
                    .with_context(|| format!("productpage answered {}", resp.body))?;
                page["reviews"]["version"]
                    .as_str()
                    .unwrap_or("error")
                    .to_string()
            }
            Ok(resp) => format!("status {}", resp.status.as_u16()),
            Err(_) => "error".into(),
        };
        *out.entry(version).or_insert(0) += 1;
    }
    Ok(out)
}

/// One `/productpage` through the ingress (status 200): how long it took, and the page.
async fn page(headers: &[(&str, &str)]) -> anyhow::Result<(Duration, serde_json::Value)> {
    let start = std::time::Instant::now();
    let resp = mesh_tests::http_get(&format!("{INGRESS}/productpage"), headers).await?;
    let took = start.elapsed();
    anyhow::ensure!(
        resp.status.as_u16() == 200,
        "{}: {}",
        resp.status,
        resp.body
    );
    Ok((took, serde_json::from_str(&resp.body)?))
}

/// Requests to `/productpage` through the ingress one after another until stopped: how
/// many were whole pages (200, details and reviews in them), and what went wrong with the
/// others.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl Load {
    fn start() -> Load {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !*stopped.borrow_and_update() {
                match page(&[]).await {
                    Ok((_, p))
                        if p["reviews"].get("error").is_none()
                            && p["details"].get("error").is_none() =>
                    {
                        ok += 1
                    }
                    Ok((_, p)) => failed.push(format!("partial page: {p}")),
                    Err(e) => failed.push(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        });
        Load { stop, task }
    }

    async fn stop(self) -> (u32, Vec<String>) {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Until the Deployment `name` of istio-system has as many Ready pods, none of them being
/// deleted, as it wants replicas.
async fn rollout(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    retry(
        Duration::from_secs(180),
        &format!("{name} back"),
        || async {
            let d: serde_json::Value = serde_json::from_str(
                &cluster
                    .kubectl_ok([
                        "-n",
                        "istio-system",
                        "get",
                        "deployment",
                        name,
                        "-o",
                        "json",
                    ])
                    .await?,
            )?;
            let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
            let pods: serde_json::Value = serde_json::from_str(
                &cluster
                    .kubectl_ok([
                        "-n",
                        "istio-system",
                        "get",
                        "pods",
                        "-l",
                        &format!("app={name}"),
                        "-o",
                        "json",
                    ])
                    .await?,
            )?;
            let ready = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count() as u64;
            anyhow::ensure!(ready == want, "{ready} of {want} pods of {name} ready");
            Ok(())
        },
    )
    .await
}

/// Applies a file of manifests/bookinfo/ in `ns`.
async fn apply(cluster: &Cluster, ns: &str, file: &str) -> anyhow::Result<()> {
    let path = cluster.repo_root().join("manifests/bookinfo").join(file);
    cluster
        .kubectl_ok(["-n", ns, "apply", "-f", path.to_str().unwrap_or_default()])
        .await?;
    Ok(())
}

/// Until `count` requests (with `headers`) are all answered by `want`.
async fn all_go_to(count: u32, headers: &[(&str, &str)], want: &str) -> anyhow::Result<()> {
    retry(
        Duration::from_secs(60),
        &format!("all to {want}"),
        || async {
            let v = versions(count, headers).await?;
            anyhow::ensure!(v.get(want) == Some(&count), "{v:?}");
            Ok(())
        },
    )
    .await
}

/// Whether `got` of `n` requests is within five standard deviations of a binomial with
/// probability `p`: a correct split fails this about once in two million runs, and a split
/// that ignored the weights (an even share, or all to one side) falls outside it.
fn within_five_sigma(got: u32, n: u32, p: f64) -> bool {
    let mean = f64::from(n) * p;
    let sd = (f64::from(n) * p * (1.0 - p)).sqrt();
    (f64::from(got) - mean).abs() <= 5.0 * sd
}

/// A port-forward to the admin port (15000) of productpage's sidecar in `ns`.
async fn productpage_admin(
    cluster: &Cluster,
    ns: &str,
) -> anyhow::Result<mesh_tests::cluster::PortForward> {
    let pods = cluster
        .kubectl_ok([
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            "app=productpage",
            "-o",
            "name",
        ])
        .await?;
    cluster
        .port_forward(ns, pods.lines().next().unwrap_or_default(), 15000)
        .await
}

/// What the ratings part of `count` pages (with `headers`) showed, by reviews version:
/// `stars`, `status N` (ratings refused), `none` (a version that does not call ratings)
/// or `error`.
async fn ratings(
    count: u32,
    headers: &[(&str, &str)],
) -> anyhow::Result<BTreeMap<(String, String), u32>> {
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let key = match page(headers).await {
            Ok((_, p)) => {
                let r = &p["reviews"]["ratings"];
                let shown = if r.is_null() {
                    "none".to_string()
                } else if r["ratings"].is_object() {
                    "stars".to_string()
                } else {
                    format!("status {}", r["status"])
                };
                (
                    p["reviews"]["version"].as_str().unwrap_or("?").to_string(),
                    shown,
                )
            }
            Err(e) => ("error".to_string(), format!("{e:#}")),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    Ok(out)
}

/// `count` of `(version, shown)` in a [`ratings`] tally.
fn tally(t: &BTreeMap<(String, String), u32>, version: &str, shown: &str) -> u32 {
    t.get(&(version.to_string(), shown.to_string()))
        .copied()
        .unwrap_or(0)
}

/// The statuses of `count` calls to `url` from the `app` pod of `version` (through its
/// sidecar, so with its workload identity), counted.
async fn calls_from(
    cluster: &Cluster,
    ns: &str,
    app: &str,
    version: &str,
    url: &str,
    count: u32,
) -> anyhow::Result<BTreeMap<String, u32>> {
    let pods = cluster
        .kubectl_ok([
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            &format!("app={app},version={version}"),
            "-o",
            "name",
        ])
        .await?;
    let pod = pods.lines().next().unwrap_or_default().to_string();
    let n = count.to_string();
    let out = cluster
        .kubectl([
            "-n", ns, "exec", &pod, "-c", app, "--", "mesh-app", "get", url, "--count", &n,
        ])
        .await?;
    let mut statuses = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.len() == 3 && line.bytes().all(|b| b.is_ascii_digit()) {
            *statuses.entry(line.to_string()).or_insert(0) += 1;
        }
    }
    Ok(statuses)
}

/// Whether a page's details part is the details service's answer (not an error).
fn has_details(p: &serde_json::Value) -> bool {
    p["details"].is_object() && p["details"].get("error").is_none()
}

/// Authorization on the real node, under STRICT mutual TLS: an ALLOW policy lets only
/// productpage's identity call details (reviews' sidecar gets 403), edited in place to
/// allow reviews instead (productpage's pages lose their details); a DENY policy on
/// productpage refuses the requests carrying a header through the ingress. Nothing
/// restarts. The policies are gone at the end.
async fn authorization(cluster: &Cluster, n: &str) -> anyhow::Result<()> {
    let details_policy = |sa: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: \
             {{name: details-viewer, namespace: {n}}}\nspec:\n  selector: {{matchLabels: \
             {{app: details}}}}\n  action: ALLOW\n  rules:\n  - from: [{{source: \
             {{principals: [cluster.local/ns/{n}/sa/{sa}]}}}}]\n    to: [{{operation: \
             {{methods: [GET], paths: ['/details/*']}}}}]\n"
        )
    };
    let details = format!("http://details.{n}.svc.cluster.local:9080/details/0");
    let apply_text = |text: String| async move {
        cluster
            .kubectl_with_stdin(["apply", "-f", "-"], Some(text.as_bytes()))
            .await
    };
    apply_text(details_policy("bookinfo-productpage")).await?;
    retry(
        Duration::from_secs(120),
        "details only for productpage",
        || async {
            let (_, p) = page(&[]).await?;
            anyhow::ensure!(has_details(&p), "page without details: {p}");
            let from_reviews = calls_from(cluster, n, "reviews", "v1", &details, 10).await?;
            anyhow::ensure!(
                from_reviews.get("403") == Some(&10),
                "reviews got {from_reviews:?}"
            );
            Ok(())
        },
    )
    .await?;
    for _ in 0..10 {
        let (_, p) = page(&[]).await?;
        assert!(has_details(&p), "productpage lost details: {p}");
    }
    eprintln!("authorization: details for productpage only; reviews denied 10 of 10");

    // The same policy, edited: now reviews, and not productpage. New connections get the
    // new rules at once; those productpage's sidecar keeps open to details stay on the old
    // filter chain until Envoy has drained it (`--drain-time-s`, 45s in install.yaml), so
    // the edit holds for every page within about that.
    apply_text(details_policy("bookinfo-reviews")).await?;
    retry(
        Duration::from_secs(120),
        "details only for reviews",
        || async {
            for _ in 0..10 {
                let (_, p) = page(&[]).await?;
                anyhow::ensure!(
                    p["details"]["status"] == 403,
                    "a page still has details: {p}"
                );
            }
            let from_reviews = calls_from(cluster, n, "reviews", "v1", &details, 1).await?;
            anyhow::ensure!(
                from_reviews.get("200") == Some(&1),
                "reviews got {from_reviews:?}"
            );
            Ok(())
        },
    )
    .await?;

    // DENY on productpage by a request header, through the ingress.
    cluster
        .kubectl_ok(["-n", n, "delete", "authorizationpolicy", "details-viewer"])
        .await?;
    let deny = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: \
         {{name: deny-flagged, namespace: {n}}}\nspec:\n  selector: {{matchLabels: \
         {{app: productpage}}}}\n  action: DENY\n  rules:\n  - when: [{{key: \
         'request.headers[x-mesh-flagged]', values: ['yes']}}]\n"
    );
    apply_text(deny).await?;
    let status = |headers: &'static [(&'static str, &'static str)]| async move {
        mesh_tests::http_get(&format!("{INGRESS}/productpage"), headers)
            .await
            .map(|r| r.status.as_u16())
    };
    retry(
        Duration::from_secs(120),
        "flagged requests denied",
        || async {
            for _ in 0..10 {
                let flagged = status(&[("x-mesh-flagged", "yes")]).await?;
                anyhow::ensure!(flagged == 403, "flagged: {flagged}");
            }
            let (_, p) = page(&[]).await?;
            anyhow::ensure!(has_details(&p), "details not back: {p}");
            Ok(())
        },
    )
    .await?;
    for _ in 0..10 {
        assert_eq!(status(&[("x-mesh-flagged", "yes")]).await?, 403);
        assert_eq!(status(&[("x-mesh-flagged", "no")]).await?, 200);
    }
    cluster
        .kubectl_ok(["-n", n, "delete", "authorizationpolicy", "deny-flagged"])
        .await?;
    retry(Duration::from_secs(120), "no policy left", || async {
        for _ in 0..10 {
            anyhow::ensure!(status(&[("x-mesh-flagged", "yes")]).await? == 200);
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// End-user authentication at productpage's sidecar, through the ingress (which forwards the
/// `Authorization` header): Envoy's `jwt_authn` with the key set inlined, and an ALLOW policy
/// requiring a principal from the issuer for `/productpage` (anything else stays open).
async fn request_authentication(cluster: &Cluster, n: &str) -> anyhow::Result<()> {
    const ISSUER: &str = "https://issuer.mesh.test";
    let key = Signer::new("demo");
    let forged = Signer::new("demo");
    let config = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: \
         {{name: productpage-jwt, namespace: {n}}}\nspec:\n  selector: {{matchLabels: \
         {{app: productpage}}}}\n  jwtRules:\n  - issuer: {ISSUER}\n    audiences: \
         [bookinfo]\n    jwks: '{jwks}'\n---\napiVersion: security.istio.io/v1\nkind: \
         AuthorizationPolicy\nmetadata: {{name: productpage-users, namespace: {n}}}\nspec:\n  \
         selector: {{matchLabels: {{app: productpage}}}}\n  action: ALLOW\n  rules:\n  - \
         from: [{{source: {{requestPrincipals: ['{ISSUER}/*']}}}}]\n    to: [{{operation: \
         {{paths: [/productpage]}}}}]\n  - to: [{{operation: {{notPaths: [/productpage]}}}}]\n",
        jwks = jwks_of(&[&key]),
    );
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(config.as_bytes()))
        .await?;
    let status = |token: Option<String>| async move {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        mesh_tests::http_get(&format!("{INGRESS}/productpage"), &headers)
            .await
            .map(|r| r.status.as_u16())
    };
    let token = |signer: &Signer, extra: serde_json::Value| {
        signer.token(&jwt::claims(ISSUER, "alice", "bookinfo", extra))
    };
    let valid = token(&key, serde_json::json!({}));
    let cases = [
        ("valid", Some(valid.clone()), 200),
        ("none", None, 403),
        (
            "expired",
            Some(token(
                &key,
                serde_json::json!({"exp": jwt::now() - 600, "iat": jwt::now() - 4000}),
            )),
            401,
        ),
        (
            "wrong issuer",
            Some(token(
                &key,
                serde_json::json!({"iss": "https://evil.example"}),
            )),
            401,
        ),
        ("forged", Some(token(&forged, serde_json::json!({}))), 401),
        // Verified but for another audience: jwt_authn answers 403 (envoyproxy/envoy#7679).
        (
            "wrong audience",
            Some(token(&key, serde_json::json!({"aud": "ratings"}))),
            403,
        ),
    ];
    // Five rounds in a row: connections the ingress keeps open to productpage stay on the
    // filter chain without the policy until productpage's sidecar has drained it (as in the
    // authorization step), so one good round is not yet the policy in force.
    retry(
        Duration::from_secs(120),
        "tokens checked at productpage, five rounds in a row",
        || async {
            for _ in 0..5 {
                for (what, t, want) in &cases {
                    let got = status(t.clone()).await?;
                    anyhow::ensure!(got == *want, "{what} token: {got}, want {want}");
                }
            }
            Ok(())
        },
    )
    .await?;
    // And it holds.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..5 {
        for (what, t, want) in &cases {
            assert_eq!(status(t.clone()).await?, *want, "{what} token");
            *counts.entry(what).or_default() += 1;
        }
    }
    eprintln!(
        "request authentication: every token case as expected, 5 more times each: {counts:?}"
    );

    cluster
        .kubectl_ok([
            "-n",
            n,
            "delete",
            "requestauthentication/productpage-jwt",
            "authorizationpolicy/productpage-users",
        ])
        .await?;
    retry(
        Duration::from_secs(120),
        "pages without a token again",
        || async {
            for _ in 0..10 {
                anyhow::ensure!(status(None).await? == 200);
            }
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// Prometheus's `istio-mesh` job, as Istio's add-on has it: the endpoints of Service
/// istio-telemetry's port `prometheus`. Debian's Prometheus is built without Kubernetes
/// discovery, so the endpoints are read here, with kubectl, and given as static targets.
async fn istio_mesh_job(cluster: &Cluster) -> anyhow::Result<String> {
    let eps: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl_ok([
                "-n",
                "istio-system",
                "get",
                "endpoints",
                "istio-telemetry",
                "-o",
                "json",
            ])
            .await?,
    )?;
    let mut targets = Vec::new();
    for subset in eps["subsets"].as_array().into_iter().flatten() {
        let port = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "prometheus")
            .and_then(|p| p["port"].as_u64());
        for a in subset["addresses"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(port)) = (a["ip"].as_str(), port) {
                targets.push(format!("\"{ip}:{port}\""));
            }
        }
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "istio-telemetry has no ready endpoint: {eps}"
    );
    Ok(format!(
        "- job_name: istio-mesh\n  static_configs:\n  - targets: [{}]\n",
        targets.join(", ")
    ))
}

/// Mixer's policy samples and telemetry, through the ingress: the deny-label rule turns
/// reviews v3's calls to ratings into 403 while v2's go on; the ratings quota answers 429
/// past one call a second; a real Prometheus, scraping istio-telemetry, counts those calls
/// by source and destination workload, destination version and response code.
async fn mixer_policy_and_telemetry(cluster: &Cluster, n: &str) -> anyhow::Result<()> {
    let prometheus = Prometheus::with_scrape_configs(&istio_mesh_job(cluster).await?).await;

    // Denial: v3 (half the traffic) loses its stars, v1 never had any; jason's v2 keeps them.
    apply(cluster, n, "virtual-service-reviews-50-v3.yaml").await?;
    apply(cluster, n, "mixer-rule-deny-label.yaml").await?;
    let denied = retry(Duration::from_secs(60), "reviews v3 denied", || async {
        let t = ratings(20, &[]).await?;
        let v3 = tally(&t, "v3", "status 403");
        anyhow::ensure!(
            v3 > 0
                && t.iter()
                    .all(|((v, shown), _)| (v == "v3" && shown == "status 403")
                        || (v == "v1" && shown == "none")),
            "{t:?}"
        );
        Ok(v3)
    })
    .await?;
    apply(cluster, n, "virtual-service-reviews-test-v2.yaml").await?;
    retry(Duration::from_secs(60), "jason's v2 not denied", || async {
        let t = ratings(5, &[("end-user", "jason")]).await?;
        anyhow::ensure!(tally(&t, "v2", "stars") == 5, "{t:?}");
        Ok(())
    })
    .await?;
    let deny = cluster
        .repo_root()
        .join("manifests/bookinfo/mixer-rule-deny-label.yaml");
    cluster
        .kubectl_ok(["-n", n, "delete", "-f", deny.to_str().unwrap_or_default()])
        .await?;

    // The quota: one call a second from reviews to ratings in each istio-policy replica
    // (memquota counts per replica), so a quick burst of jason's pages (v2, which calls
    // ratings) shows both stars and 429.
    let quota = std::fs::read_to_string(
        cluster
            .repo_root()
            .join("manifests/bookinfo/mixer-rule-ratings-ratelimit.yaml"),
    )?
    .replace("namespace: default}", &format!("namespace: {n}}}"));
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(quota.as_bytes()))
        .await?;
    let replicas = 2;
    let limited = retry(Duration::from_secs(60), "ratings rate-limited", || async {
        let start = std::time::Instant::now();
        let t = ratings(20, &[("end-user", "jason")]).await?;
        let secs = start.elapsed().as_secs() as u32 + 1;
        let (stars, limited) = (tally(&t, "v2", "stars"), tally(&t, "v2", "status 429"));
        anyhow::ensure!(
            limited > 0 && stars > 0 && stars + limited == 20 && stars <= replicas * (secs + 1),
            "{t:?} in {secs}s"
        );
        Ok(limited)
    })
    .await?;
    cluster
        .kubectl_with_stdin(["delete", "-f", "-"], Some(quota.as_bytes()))
        .await?;
    retry(Duration::from_secs(60), "the quota gone", || async {
        let t = ratings(10, &[("end-user", "jason")]).await?;
        anyhow::ensure!(tally(&t, "v2", "stars") == 10, "{t:?}");
        Ok(())
    })
    .await?;

    // Telemetry: the calls just made, as Prometheus has them.
    let series = |workload: &str, code: u32| {
        format!(
            "sum(istio_requests_total{{reporter=\"destination\",source_workload=\"{workload}\",\
             destination_workload=\"ratings-v1\",destination_version=\"v1\",\
             destination_workload_namespace=\"{n}\",response_code=\"{code}\"}})"
        )
    };
    let result = retry(
        Duration::from_secs(60),
        "the calls in Prometheus",
        || async {
            let got_denied = prometheus.sum(&series("reviews-v3", 403)).await?;
            let got_limited = prometheus.sum(&series("reviews-v2", 429)).await?;
            let got_ok = prometheus.sum(&series("reviews-v2", 200)).await?;
            anyhow::ensure!(
                got_denied >= f64::from(denied)
                    && got_limited >= f64::from(limited)
                    && got_ok >= 10.0,
                "403 from v3: {got_denied} (made {denied}), 429 to v2: {got_limited} (made \
             {limited}), 200 to v2: {got_ok}; targets {:?}",
                prometheus.targets().await
            );
            eprintln!(
                "prometheus: 403 from v3 {got_denied} (made {denied}), 429 to v2 {got_limited} \
             (made {limited}), 200 to v2 {got_ok}"
            );
            Ok(())
        },
    )
    .await;
    if result.is_err() {
        eprintln!("prometheus log:\n{}", prometheus.logs());
    }
    prometheus.stop().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_behind_the_ingress_routed_by_yaml() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::for_test().await? else {
        return Ok(());
    };
    if !cluster.has_real_node() {
        eprintln!("no real node (not root, or MESH_CLUSTER_REAL_NODE=0): skipping");
        return Ok(());
    }
    let _control_plane = cluster.control_plane();
    let ns = cluster
        .namespace_on_real_node("demo", &[("istio-injection", "enabled")])
        .await?;
    let n = ns.name().to_string();

    // The demo's own steps.
    let script = cluster.repo_root().join("tests/cluster/demo.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .env("DEMO_NAMESPACE", &n)
        .env("KUBECONFIG", cluster.kubeconfig())
        .output()
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "demo.sh failed: {said}\n{}",
        cluster.diagnose(&n).await
    );
    assert!(said.contains(&format!("{INGRESS}/productpage")), "{said}");

    // Every pod has its sidecar.
    let pods: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl_ok(["-n", &n, "get", "pods", "-o", "json"])
            .await?,
    )?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 6, "bookinfo's six pods");
    for p in &items {
        let inits = p["spec"]["initContainers"].to_string();
        assert!(
            inits.contains("istio-proxy"),
            "{}: no sidecar",
            p["metadata"]["name"]
        );
    }

    // No rule: the three versions share the traffic (each a third of 60; one of them
    // getting none happens about once in 10^10 runs).
    let v = retry(Duration::from_secs(60), "all three versions", || async {
        let v = versions(60, &[]).await?;
        anyhow::ensure!(
            v.len() == 3 && ["v1", "v2", "v3"].iter().all(|k| v.contains_key(*k)),
            "{v:?}"
        );
        Ok(v)
    })
    .await?;
    eprintln!("no rule: {v:?}");

    apply(cluster, &n, "virtual-service-all-v1.yaml").await?;
    all_go_to(30, &[], "v1").await?;

    apply(cluster, &n, "virtual-service-reviews-test-v2.yaml").await?;
    all_go_to(20, &[("end-user", "jason")], "v2").await?;
    all_go_to(20, &[], "v1").await?;
    all_go_to(10, &[("end-user", "mary")], "v1").await?;

    // Weighted splits, by counted requests. The previous rule may still be in force for a
    // moment after the apply: wait until the new side shows, then count.
    for (file, other, weight) in [
        ("virtual-service-reviews-80-20.yaml", "v2", 0.2),
        ("virtual-service-reviews-50-v3.yaml", "v3", 0.5),
    ] {
        apply(cluster, &n, file).await?;
        retry(
            Duration::from_secs(60),
            &format!("{file} in force"),
            || async {
                let v = versions(20, &[]).await?;
                anyhow::ensure!(v.contains_key(other), "{v:?}");
                Ok(())
            },
        )
        .await?;
        let total = 200;
        let v = versions(total, &[]).await?;
        let got = v.get(other).copied().unwrap_or(0);
        let v1 = v.get("v1").copied().unwrap_or(0);
        assert_eq!(got + v1, total, "{file}: only v1 and {other} answer: {v:?}");
        assert!(
            within_five_sigma(got, total, weight),
            "{file}: {got} of {total} to {other}, expected about {}: {v:?}",
            f64::from(total) * weight
        );
        eprintln!("{file}: {v:?}");
    }

    // An invalid VirtualService is refused at the apply, and the split stays as it was.
    let bad = format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n\
         metadata: {{name: reviews, namespace: {n}}}\nspec:\n  hosts: [reviews]\n  http:\n  \
         - route:\n    - destination: {{host: reviews, subset: v1}}\n      weight: 50\n    \
         - destination: {{host: reviews, subset: v2}}\n      weight: 40\n"
    );
    let refused = cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(bad.as_bytes()))
        .await?;
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && message.contains("weight"),
        "the webhook let an invalid VirtualService in: {message}"
    );
    let v = versions(40, &[]).await?;
    assert!(
        !v.contains_key("v2") && v.get("v3").copied().unwrap_or(0) > 0,
        "after a refused change the 50/50 v1/v3 split still holds: {v:?}"
    );

    // A route to a subset no DestinationRule defines: the webhook lets it in (it is valid on
    // its own), Envoy answers its requests 503 for a cluster it was never sent (`NC`,
    // cluster_not_found; the Envoy of Istio 1.0 flagged it `NR`), and `pilot check` names
    // the VirtualService, the field and the subset (IST0101).
    let missing = format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n\
         metadata: {{name: reviews, namespace: {n}}}\nspec:\n  hosts: [reviews]\n  http:\n  \
         - route:\n    - destination: {{host: reviews, subset: v9}}\n"
    );
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(missing.as_bytes()))
        .await?;
    retry(Duration::from_secs(60), "reviews answered 503", || async {
        let (_, p) = page(&[]).await?;
        anyhow::ensure!(
            p["reviews"]["error"].as_str() == Some("reviews answered 503"),
            "{p}"
        );
        Ok(())
    })
    .await?;
    let pilot = mesh_tests::workspace_binary("pilot")?;
    let check = tokio::process::Command::new(&pilot)
        .args(["check", "--kubeconfig"])
        .arg(cluster.kubeconfig())
        .output()
        .await?;
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains(&format!(
            "Error [IST0101] (VirtualService {n}/reviews) spec.http[0].route[0].destination: \
             Referenced host+subset in destinationrule not found: \"reviews+v9\""
        )),
        "pilot check does not name the missing subset:\n{said}"
    );
    let pf = productpage_admin(cluster, &n).await?;
    let stats = mesh_tests::http_get(&format!("http://127.0.0.1:{}/stats", pf.port), &[])
        .await?
        .body;
    drop(pf);
    let not_found: u64 = stats
        .lines()
        .filter(|l| l.contains(".no_cluster: "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(not_found > 0, "no request counted as no_cluster:\n{stats}");
    apply(cluster, &n, "virtual-service-reviews-50-v3.yaml").await?;

    // Istio 0.5's RouteRules do the same as the VirtualServices (whose hosts they take
    // over once those are gone).
    cluster
        .kubectl_ok([
            "-n",
            &n,
            "delete",
            "virtualservice",
            "productpage",
            "reviews",
            "ratings",
            "details",
            "--ignore-not-found",
        ])
        .await?;
    apply(cluster, &n, "route-rule-all-v1.yaml").await?;
    all_go_to(30, &[], "v1").await?;
    apply(cluster, &n, "route-rule-reviews-test-v2.yaml").await?;
    all_go_to(20, &[("cookie", "user=jason")], "v2").await?;
    all_go_to(20, &[("cookie", "user=mary")], "v1").await?;
    cluster
        .kubectl_ok(["-n", &n, "delete", "routerule", "--all"])
        .await?;

    // Faults for jason, on reviews v2 (which calls ratings).
    apply(cluster, &n, "virtual-service-reviews-test-v2.yaml").await?;
    all_go_to(10, &[("end-user", "jason")], "v2").await?;
    apply(cluster, &n, "virtual-service-ratings-test-abort.yaml").await?;
    retry(
        Duration::from_secs(60),
        "jason's ratings aborted",
        || async {
            let page = page(&[("end-user", "jason")]).await?;
            anyhow::ensure!(
                page.1["reviews"]
                    .to_string()
                    .contains("currently unavailable"),
                "{}",
                page.1
            );
            Ok(())
        },
    )
    .await?;
    let (_, mary) = page(&[("end-user", "mary")]).await?;
    assert!(mary["reviews"]["version"] == "v1", "{mary}");
    apply(cluster, &n, "virtual-service-ratings-test-delay.yaml").await?;
    retry(
        Duration::from_secs(60),
        "jason's ratings delayed",
        || async {
            let (took, page) = page(&[("end-user", "jason")]).await?;
            anyhow::ensure!(
                took >= Duration::from_millis(2900)
                    && page["reviews"].to_string().contains("unavailable"),
                "{took:?}: {page}"
            );
            Ok(())
        },
    )
    .await?;
    let (took, _) = page(&[]).await?;
    assert!(took < Duration::from_secs(2), "others wait too: {took:?}");
    cluster
        .kubectl_ok(["-n", &n, "delete", "virtualservice", "ratings"])
        .await?;

    mixer_policy_and_telemetry(cluster, &n).await?;

    // Mutual TLS, STRICT: meshed traffic goes on through the ingress (the gateway's own
    // certificate to productpage, the sidecars' to each other); plain text is refused.
    let outsider = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: outsider\n  namespace: {n}\n  \
         annotations: {{sidecar.istio.io/inject: \"false\"}}\nspec:\n  containers:\n  \
         - name: app\n    image: {}\n    imagePullPolicy: Never\n    env:\n    \
         - {{name: SERVICE_NAME, value: details}}\n",
        real_node_image("app")
    );
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(outsider.as_bytes()))
        .await?;
    cluster
        .wait_pods_ready(&n, &["outsider"], Duration::from_secs(120))
        .await?;
    apply(cluster, &n, "destination-rule-all-mtls.yaml").await?;
    apply(cluster, &n, "peer-authentication-strict.yaml").await?;
    apply(cluster, &n, "virtual-service-all-v1.yaml").await?;
    retry(Duration::from_secs(90), "STRICT mTLS in force", || async {
        all_go_to(10, &[], "v1").await?;
        let plain = cluster
            .kubectl([
                "-n",
                &n,
                "exec",
                "outsider",
                "--",
                "mesh-app",
                "get",
                "http://productpage:9080/productpage",
            ])
            .await?;
        anyhow::ensure!(
            !plain.status.success(),
            "plain text still reaches productpage: {}",
            String::from_utf8_lossy(&plain.stdout)
        );
        Ok(())
    })
    .await?;
    all_go_to(30, &[], "v1").await?;
    let reviews: serde_json::Value = serde_json::from_str(
        &cluster
            .kubectl_ok([
                "-n",
                &n,
                "get",
                "pods",
                "-l",
                "app=reviews,version=v1",
                "-o",
                "json",
            ])
            .await?,
    )?;
    let ip = reviews["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap_or_default();
    let cert = served_certificate(&format!("{ip}:9080")).await?;
    let want = format!("URI:spiffe://cluster.local/ns/{n}/sa/bookinfo-reviews");
    assert!(cert.contains(&want), "reviews v1 presents: {cert}");

    authorization(cluster, &n).await?;
    request_authentication(cluster, &n).await?;

    // Continuity: steady load through the ingress while the control plane's pods are
    // deleted (Pilot's two at once, then Mixer's and Citadel's one by one): not one page
    // lost. An endpoint change made while no Pilot runs reaches the proxies once it is back.
    let load = Load::start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster
        .kubectl_ok([
            "-n",
            "istio-system",
            "delete",
            "pod",
            "-l",
            "app=istio-pilot",
            "--wait=false",
        ])
        .await?;
    cluster
        .kubectl_ok([
            "-n",
            &n,
            "scale",
            "deployment",
            "reviews-v2",
            "--replicas=2",
        ])
        .await?;
    rollout(cluster, "istio-pilot").await?;
    for app in ["istio-policy", "istio-telemetry", "istio-citadel"] {
        let pods = cluster
            .kubectl_ok([
                "-n",
                "istio-system",
                "get",
                "pods",
                "-l",
                &format!("app={app}"),
                "-o",
                "name",
            ])
            .await?;
        for pod in pods.lines().filter(|l| !l.is_empty()) {
            cluster
                .kubectl_ok(["-n", "istio-system", "delete", pod, "--wait=true"])
                .await?;
            rollout(cluster, app).await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("continuity: {ok} pages, {} lost", failed.len());
    assert!(ok > 50, "the load made only {ok} requests");
    assert!(
        failed.is_empty(),
        "pages lost while the control plane restarted: {failed:?}"
    );
    let pf = productpage_admin(cluster, &n).await?;
    let host = format!("outbound|9080|v2|reviews.{n}.svc.cluster.local");
    retry(
        Duration::from_secs(60),
        "reviews v2's second pod in EDS",
        || async {
            let clusters =
                mesh_tests::http_get(&format!("http://127.0.0.1:{}/clusters", pf.port), &[])
                    .await?
                    .body;
            let hosts = clusters
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("{host}::")) && l.ends_with("::health_flags::healthy")
                })
                .count();
            anyhow::ensure!(hosts == 2, "{hosts} healthy hosts of {host}");
            Ok(())
        },
    )
    .await?;
    drop(pf);

    // An upgrade: install.yaml re-applied with changed settings (every Deployment's
    // settings checksum changes, as `make manifests` writes it when a settings file does)
    // rolls every Deployment of the control plane, the gateways included, under the same
    // steady load through the ingress: not one page lost.
    let install = std::fs::read_to_string(cluster.repo_root().join("manifests/install.yaml"))?;
    let upgraded = install.replace("checksum/settings: ", "checksum/settings: upgraded-");
    anyhow::ensure!(
        upgraded != install,
        "install.yaml has no settings checksums"
    );
    let load = Load::start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster
        .kubectl_with_stdin(["apply", "-f", "-"], Some(upgraded.as_bytes()))
        .await?;
    let deployments = [
        "istio-pilot",
        "istio-policy",
        "istio-telemetry",
        "istio-citadel",
        "istio-ingressgateway",
        "istio-egressgateway",
    ];
    for d in deployments {
        cluster
            .kubectl_ok([
                "-n",
                "istio-system",
                "rollout",
                "status",
                &format!("deployment/{d}"),
                "--timeout=180s",
            ])
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("upgrade: {ok} pages, {} lost", failed.len());
    assert!(ok > 50, "the load made only {ok} requests");
    assert!(
        failed.is_empty(),
        "pages lost while install.yaml rolled the control plane: {failed:?}"
    );
    let rolled = cluster
        .kubectl_ok([
            "-n",
            "istio-system",
            "get",
            "pods",
            "-l",
            "app=istio-ingressgateway",
            "-o",
            "jsonpath={.items[*].metadata.annotations.checksum/settings}",
        ])
        .await?;
    assert!(
        rolled.contains("upgraded-"),
        "the ingress gateway did not roll: {rolled}"
    );

    ns.cleanup().await?;
    Ok(())
}

#[test]
fn bookinfo_runs_the_images_the_node_has() {
    let text =
        std::fs::read_to_string(mesh_tests::repo_root().join("manifests/bookinfo/bookinfo.yaml"))
            .unwrap();
    let want = format!("image: {}", mesh_tests::cluster::real_node_image("app"));
    assert_eq!(
        text.matches("image: ").count(),
        text.matches(&want).count(),
        "{want}"
    );
    assert_eq!(text.matches(&want).count(), 6);
}

#[test]
fn five_sigma_keeps_fair_splits_and_rejects_wrong_ones() {
    assert!(within_five_sigma(40, 200, 0.2));
    assert!(within_five_sigma(60, 200, 0.2));
    assert!(!within_five_sigma(100, 200, 0.2));
    assert!(!within_five_sigma(0, 200, 0.5));
    assert!(within_five_sigma(110, 200, 0.5));
}
