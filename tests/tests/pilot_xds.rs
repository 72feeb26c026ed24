//! Pilot drives real Envoy from a config directory: requests through the sidecar's HTTP proxy
//! listener reach the services, and edits reach Envoy without a restart, over SotW and delta.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mesh_tests::mesh::{Pilot, eventually, via_proxy};
use mesh_tests::{Envoy, Upstream, free_port};
use serde_json::Value;

const NODE: &str = "sidecar~127.0.0.30~productpage-1.default~default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(20);

fn service_entry(name: &str, endpoints: &[(&Upstream, &str)]) -> String {
    let mut eps = String::new();
    for (up, version) in endpoints {
        let addr = up.addr();
        eps.push_str(&format!(
            "  - address: {}\n    ports: {{http: {}}}\n    labels: {{app: {name}, version: {version}}}\n",
            addr.ip(),
            addr.port()
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - number: 9080\n    name: http\n    protocol: HTTP\n  endpoints:\n{eps}"
    )
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
";

const ALL_V2: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
";

async fn upstream(name: &str, ip: &str) -> Upstream {
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    Upstream::start(name, addr).await.unwrap()
}

/// Collects the bodies of `n` requests for `host` through the proxy port.
async fn bodies(port: u16, host: &str, n: usize) -> anyhow::Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let resp = via_proxy(port, host, "/").await?;
        seen.insert(format!("{} {}", resp.status.as_u16(), resp.body.trim()));
    }
    Ok(seen)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn sidecar(pilot: &Pilot, delta: bool) -> (Envoy, u16) {
    let port = free_port();
    let meta_port = format!("PROXY_HTTP_PORT={port}");
    let mut args = vec![
        "--meta",
        "INTERCEPTION_MODE=NONE",
        "--meta",
        &meta_port,
        "--label",
        "app=productpage",
    ];
    if delta {
        args.push("--delta");
    }
    let envoy = pilot.sidecar(NODE, &args).await.unwrap();
    (envoy, port)
}

async fn edits_reach_envoy(delta: bool) {
    let v1 = upstream("reviews-v1", "127.0.0.21").await;
    let v2 = upstream("reviews-v2", "127.0.0.22").await;
    let ratings = upstream("ratings-v1", "127.0.0.23").await;
    let reviews = service_entry("reviews", &[(&v1, "v1"), (&v2, "v2")]);
    let pilot = Pilot::start(&[("reviews.yaml", &reviews)], "", &[])
        .await
        .unwrap();
    let (envoy, port) = sidecar(&pilot, delta).await;

    // Both versions serve by default (round robin over the endpoints).
    eventually("both versions answer", WAIT, || async {
        Ok(bodies(port, "reviews:9080", 10).await? == set(&["200 reviews-v1", "200 reviews-v2"]))
    })
    .await
    .unwrap();

    // A new route: everything to v2.
    pilot.write("subsets.yaml", SUBSETS).unwrap();
    pilot.write("route.yaml", ALL_V2).unwrap();
    eventually("all traffic on v2", WAIT, || async {
        Ok(bodies(port, "reviews:9080", 10).await? == set(&["200 reviews-v2"]))
    })
    .await
    .unwrap();

    // A new service, then a new endpoint for it is an EDS update.
    let ratings_only = service_entry("ratings", &[(&ratings, "v1")]);
    pilot.write("ratings.yaml", &ratings_only).unwrap();
    eventually("ratings reachable", WAIT, || async {
        Ok(
            bodies(port, "ratings.default.svc.cluster.local:9080", 3).await?
                == set(&["200 ratings-v1"]),
        )
    })
    .await
    .unwrap();
    let ratings2 = upstream("ratings-v2", "127.0.0.24").await;
    pilot
        .write(
            "ratings.yaml",
            &service_entry("ratings", &[(&ratings, "v1"), (&ratings2, "v2")]),
        )
        .unwrap();
    eventually("new ratings endpoint", WAIT, || async {
        Ok(bodies(port, "ratings:9080", 10).await? == set(&["200 ratings-v1", "200 ratings-v2"]))
    })
    .await
    .unwrap();

    // A removed service disappears from the route table.
    pilot.remove("ratings.yaml").unwrap();
    eventually("ratings gone", WAIT, || async {
        Ok(via_proxy(port, "ratings:9080", "/").await?.status.as_u16() == 404)
    })
    .await
    .unwrap();

    // Pilot's own view: every type synced, nothing rejected.
    let syncz = pilot.debug("/debug/syncz").await.unwrap();
    let conn = &syncz[0];
    assert_eq!(conn["delta"], delta, "{syncz}");
    for ty in ["cds", "eds", "lds", "rds"] {
        assert_eq!(conn["types"][ty]["status"], "SYNCED", "{ty}: {syncz}");
    }
    let rejects = envoy_rejections(&envoy).await;
    assert_eq!(rejects, 0, "Envoy rejected config:\n{}", envoy.logs());
    envoy.stop().await.unwrap();
}

async fn envoy_rejections(envoy: &Envoy) -> u64 {
    let mut total = 0;
    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        total += envoy.stat(stat).await.unwrap().unwrap_or(0);
    }
    total
}

#[tokio::test]
async fn sotw_edits_reach_envoy() {
    edits_reach_envoy(false).await;
}

#[tokio::test]
async fn delta_edits_reach_envoy() {
    edits_reach_envoy(true).await;
}

#[tokio::test]
async fn a_rejected_route_keeps_traffic_flowing_and_a_fix_is_acked() {
    let v1 = upstream("reviews-v1", "127.0.0.41").await;
    let v2 = upstream("reviews-v2", "127.0.0.42").await;
    let reviews = service_entry("reviews", &[(&v1, "v1"), (&v2, "v2")]);
    let pilot = Pilot::start(
        &[
            ("reviews.yaml", &reviews),
            ("subsets.yaml", SUBSETS),
            ("route.yaml", ALL_V2),
        ],
        "",
        // Pilot's validation refuses the bad regex below (RE2's rules); this test is about
        // what happens when Envoy refuses config, so it lets it through.
        &["--skip-validation"],
    )
    .await
    .unwrap();
    let (envoy, port) = sidecar(&pilot, false).await;
    eventually("v2 serves", WAIT, || async {
        Ok(bodies(port, "reviews:9080", 5).await? == set(&["200 reviews-v2"]))
    })
    .await
    .unwrap();

    // Traffic in the background for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                match via_proxy(port, "reviews:9080", "/").await {
                    Ok(r) if r.status.is_success() && r.body == "reviews-v2\n" => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // RE2, which Envoy uses, refuses repetition counts over 1000: Envoy NACKs the route
    // (validation is off for this Pilot; see above).
    let bad = ALL_V2.replace(
        "  - route:",
        "  - match:\n    - uri: {regex: \"/x{1001}\"}\n    route:",
    );
    pilot.write("route.yaml", &bad).unwrap();
    eventually("pilot records the NACK", WAIT, || async {
        let syncz = pilot.debug("/debug/syncz").await?;
        Ok(syncz[0]["types"]["rds"]["status"] == "NACKED")
    })
    .await
    .unwrap();
    let syncz = pilot.debug("/debug/syncz").await.unwrap();
    let nack = syncz[0]["types"]["rds"]["nack"].as_str().unwrap_or("");
    assert!(!nack.is_empty(), "{syncz}");
    let metrics = mesh_tests::http_get(&format!("{}/metrics", pilot.http_base()), &[])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("pilot_total_xds_rejects_total{type=\"rds\"} 1"),
        "{metrics}"
    );

    // Fixed: the new route is ACKed.
    pilot.write("route.yaml", ALL_V2).unwrap();
    eventually("pilot sees the fix ACKed", WAIT, || async {
        let syncz = pilot.debug("/debug/syncz").await?;
        Ok(syncz[0]["types"]["rds"]["status"] == "SYNCED")
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the NACK"
    );
    envoy.stop().await.unwrap();
}

#[tokio::test]
async fn pilot_restart_under_traffic_fails_no_request() {
    let v1 = upstream("reviews-v1", "127.0.0.51").await;
    let reviews = service_entry("reviews", &[(&v1, "v1")]);
    let pilot = Pilot::start(&[("reviews.yaml", &reviews)], "", &[])
        .await
        .unwrap();
    let (envoy, port) = sidecar(&pilot, false).await;
    eventually("v1 serves", WAIT, || async {
        Ok(bodies(port, "reviews:9080", 3).await? == set(&["200 reviews-v1"]))
    })
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                match via_proxy(port, "reviews:9080", "/").await {
                    Ok(r) if r.status.is_success() => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let pilot = pilot.restart().await.unwrap();
    // Envoy reconnects to the new Pilot and is served again.
    eventually("envoy reconnected", WAIT, || async {
        let syncz = pilot.debug("/debug/syncz").await?;
        Ok(syncz.as_array().is_some_and(|a| a.len() == 1)
            && syncz[0]["types"]["lds"]["status"] == "SYNCED")
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed across the restart"
    );
    envoy.stop().await.unwrap();
}

#[tokio::test]
async fn the_sidecar_gets_istio_shaped_config() {
    let v1 = upstream("reviews-v1", "127.0.0.61").await;
    let me = upstream("productpage", "127.0.0.62").await;
    let reviews = service_entry("reviews", &[(&v1, "v1")]);
    let productpage = service_entry("productpage", &[(&me, "v1")]);
    let pilot = Pilot::start(
        &[
            ("reviews.yaml", &reviews),
            ("productpage.yaml", &productpage),
            ("subsets.yaml", SUBSETS),
        ],
        "",
        &[],
    )
    .await
    .unwrap();
    // A capturing sidecar at productpage's own address: the virtual listener and inbound.
    let node = "sidecar~127.0.0.62~productpage-1.default~default.svc.cluster.local";
    let envoy = pilot.sidecar(node, &[]).await.unwrap();
    let dump = envoy.config_dump(false).await.unwrap().to_string();
    for name in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "inbound|9080||productpage.default.svc.cluster.local",
        "BlackHoleCluster",
        "PassthroughCluster",
        "virtualOutbound",
        "0.0.0.0_9080",
        &format!("127.0.0.62_{}", me.addr().port()),
        "reviews.default.svc.cluster.local:9080",
    ] {
        assert!(dump.contains(name), "{name} missing from Envoy's config");
    }
    envoy.stop().await.unwrap();
}

/// How many route configuration updates Envoy has received, over all its RDS subscriptions
/// (counted even when the new config equals the old).
async fn rds_updates(envoy: &Envoy) -> anyhow::Result<u64> {
    Ok(envoy
        .stats()
        .await?
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.contains(".rds.") && key.ends_with(".update_attempt"))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum())
}

/// A route with several per-filter configs (fault and CORS: a map, which prost encodes in a
/// random order) is resent only when it changes: edits elsewhere do not resend it.
#[tokio::test]
async fn edits_elsewhere_do_not_resend_a_route() {
    let v1 = upstream("reviews-v1", "127.0.0.75").await;
    let reviews = service_entry("reviews", &[(&v1, "v1")]);
    let route = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    fault: {delay: {fixedDelay: 1ms, percentage: {value: 100}}}
    corsPolicy: {allowOrigins: [{exact: 'https://a.example.com'}], allowMethods: [GET]}
";
    let pilot = Pilot::start(
        &[("reviews.yaml", &reviews), ("route.yaml", route)],
        "",
        &[],
    )
    .await
    .unwrap();
    let (envoy, port) = sidecar(&pilot, false).await;
    eventually("reviews answers", WAIT, || async {
        Ok(bodies(port, "reviews:9080", 3).await? == set(&["200 reviews-v1"]))
    })
    .await
    .unwrap();
    let rds_sent = |syncz: &Value| syncz[0]["types"]["rds"]["sent_nonce"].clone();
    let sent_before = rds_sent(&pilot.debug("/debug/syncz").await.unwrap());
    let updates_before = rds_updates(&envoy).await.unwrap();
    assert!(updates_before > 0);
    // Cluster-only edits: each a full push, which generates the routes again.
    for max in 1..=5 {
        let updates = envoy
            .stat("cluster_manager.cds.update_success")
            .await
            .unwrap()
            .unwrap_or(0);
        let rule = format!(
            "{SUBSETS}  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {max}}}}}}}\n"
        );
        pilot.write("subsets.yaml", &rule).unwrap();
        eventually("the cluster edit reaches Envoy", WAIT, || async {
            Ok(envoy
                .stat("cluster_manager.cds.update_success")
                .await?
                .unwrap_or(0)
                > updates)
        })
        .await
        .unwrap();
    }
    // Each changed cluster got its (unchanged) endpoints again, which Envoy waits for before
    // it swaps the cluster in and ACKs the CDS update.
    eventually(
        "the changed clusters are warm and CDS is ACKed",
        WAIT,
        || async {
            let syncz = pilot.debug("/debug/syncz").await?;
            let warming = envoy.stat("cluster_manager.warming_clusters").await?;
            Ok(syncz[0]["types"]["cds"]["status"] == "SYNCED" && warming == Some(0))
        },
    )
    .await
    .unwrap();
    // Nothing resent: the routes came out byte for byte the same each time.
    let syncz = pilot.debug("/debug/syncz").await.unwrap();
    assert_eq!(rds_sent(&syncz), sent_before, "{syncz}");
    assert_eq!(rds_updates(&envoy).await.unwrap(), updates_before);
    assert_eq!(envoy_rejections(&envoy).await, 0, "{}", envoy.logs());
    envoy.stop().await.unwrap();
}

/// The names in a config dump (Envoy's admin one, snake_case, or Pilot's, camelCase): the
/// `list` of the section of `admin_type`, each entry's `field` (a dotted path).
fn dump_names(dump: &Value, admin_type: &str, list: &str, path: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for section in dump["configs"].as_array().into_iter().flatten() {
        if !section["@type"]
            .as_str()
            .unwrap_or("")
            .ends_with(admin_type)
        {
            continue;
        }
        for entry in section[list].as_array().into_iter().flatten() {
            let mut v = entry;
            for p in path {
                v = &v[*p];
            }
            match v {
                Value::String(s) => {
                    out.insert(s.clone());
                }
                Value::Array(items) => {
                    out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
                }
                _ => {}
            }
        }
    }
    out
}

/// Route domains of every virtual host of every route configuration in a dump.
fn dump_domains(dump: &Value, list: &str, config: &str, hosts: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for section in dump["configs"].as_array().into_iter().flatten() {
        if !section["@type"]
            .as_str()
            .unwrap_or("")
            .ends_with("RoutesConfigDump")
        {
            continue;
        }
        for entry in section[list].as_array().into_iter().flatten() {
            for vh in entry[config][hosts].as_array().into_iter().flatten() {
                out.extend(
                    vh["domains"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d.as_str().map(str::to_string)),
                );
            }
        }
    }
    out
}

#[tokio::test]
async fn pilots_config_dump_is_json_of_what_envoy_has() {
    let v1 = upstream("reviews-v1", "127.0.0.65").await;
    let me = upstream("productpage", "127.0.0.66").await;
    let pilot = Pilot::start(
        &[
            ("reviews.yaml", &service_entry("reviews", &[(&v1, "v1")])),
            (
                "productpage.yaml",
                &service_entry("productpage", &[(&me, "v1")]),
            ),
            ("subsets.yaml", SUBSETS),
            ("route.yaml", ALL_V2),
        ],
        "",
        &[],
    )
    .await
    .unwrap();
    // Not capturing, and not at an endpoint's address: nothing of this proxy binds a port
    // another test (or the upstreams) uses.
    let port = free_port();
    let node = "sidecar~127.0.0.67~productpage-1.default~default.svc.cluster.local";
    let meta_port = format!("PROXY_HTTP_PORT={port}");
    let envoy = pilot
        .sidecar(
            node,
            &["--meta", "INTERCEPTION_MODE=NONE", "--meta", &meta_port],
        )
        .await
        .unwrap();
    let clusters = |d: &Value, snake: bool| {
        let (list, field) = if snake {
            ("dynamic_active_clusters", "cluster")
        } else {
            ("dynamicActiveClusters", "cluster")
        };
        dump_names(d, "ClustersConfigDump", list, &[field, "name"])
    };
    let listeners = |d: &Value, snake: bool| {
        let list = if snake {
            "dynamic_listeners"
        } else {
            "dynamicListeners"
        };
        dump_names(d, "ListenersConfigDump", list, &["name"])
    };
    let routes = |d: &Value, snake: bool| {
        if snake {
            dump_domains(d, "dynamic_route_configs", "route_config", "virtual_hosts")
        } else {
            dump_domains(d, "dynamicRouteConfigs", "routeConfig", "virtualHosts")
        }
    };
    // Envoy's own view once it has everything (EDS clusters warm, routes arrive after
    // listeners), against Pilot's JSON for the same proxy.
    let last = std::cell::RefCell::new(String::new());
    let agreed = eventually("Pilot's dump and Envoy's agree", WAIT, || {
        let (envoy, pilot, last) = (&envoy, &pilot, &last);
        async move {
            let theirs = envoy.config_dump(false).await?;
            let ours = pilot
                .debug("/debug/config_dump?proxyID=productpage-1.default")
                .await?;
            let same = clusters(&theirs, true) == clusters(&ours, false)
                && listeners(&theirs, true) == listeners(&ours, false)
                && routes(&theirs, true) == routes(&ours, false);
            *last.borrow_mut() = format!(
                "envoy: {:?} {:?} {:?}\npilot: {:?} {:?} {:?}",
                clusters(&theirs, true),
                listeners(&theirs, true),
                routes(&theirs, true),
                clusters(&ours, false),
                listeners(&ours, false),
                routes(&ours, false)
            );
            Ok(same && !routes(&ours, false).is_empty())
        }
    })
    .await;
    assert!(agreed.is_ok(), "{agreed:?}\n{}", last.borrow());

    let ours = pilot
        .debug("/debug/config_dump?proxyID=productpage-1.default")
        .await
        .unwrap();
    let names = clusters(&ours, false);
    for name in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "outbound|9080||productpage.default.svc.cluster.local",
        "BlackHoleCluster",
    ] {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }
    assert!(
        routes(&ours, false).contains("reviews.default.svc.cluster.local:9080"),
        "{ours}"
    );
    // Proto3 JSON: camelCase fields, enums by name, durations as strings, and the Any of
    // each filter decoded with its @type.
    let text = ours.to_string();
    let cluster = ours["configs"][0]["dynamicActiveClusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["cluster"])
        .find(|c| c["name"] == "outbound|9080|v2|reviews.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        cluster["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(cluster["type"], "EDS", "{cluster}");
    assert!(
        cluster["connectTimeout"].as_str().unwrap().ends_with('s'),
        "{cluster}"
    );
    assert!(text.contains(
        "\"@type\":\"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\""
    ));
    assert!(
        text.contains("\"routeConfigName\":\"http_proxy\""),
        "{text}"
    );
    assert!(!text.contains("route_config_name"));
    // Endpoints are there too, with the upstream's address.
    assert!(
        text.contains(&format!("\"portValue\":{}", v1.addr().port())),
        "{text}"
    );
    envoy.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_change_at_the_proxy_ip_refreshes_its_inbound_listener() {
    let v1 = upstream("reviews-v1", "127.0.0.71").await;
    let me = upstream("reviews-v2", "127.0.0.72").await;
    let pilot = Pilot::start(
        &[("reviews.yaml", &service_entry("reviews", &[(&v1, "v1")]))],
        "",
        &[],
    )
    .await
    .unwrap();
    // A sidecar at 127.0.0.72, not yet an endpoint of anything.
    let node = "sidecar~127.0.0.72~reviews-v2-1.default~default.svc.cluster.local";
    let envoy = pilot
        .sidecar(node, &["--meta", "INTERCEPTION_MODE=NONE"])
        .await
        .unwrap();
    let inbound = format!("127.0.0.72_{}", me.addr().port());
    let dump = envoy.config_dump(false).await.unwrap().to_string();
    assert!(!dump.contains(&inbound));

    // Only endpoints change (an EDS push), but they are the proxy's own: it gets its inbound
    // listener and cluster.
    pilot
        .write(
            "reviews.yaml",
            &service_entry("reviews", &[(&v1, "v1"), (&me, "v2")]),
        )
        .unwrap();
    eventually("the inbound listener appears", WAIT, || async {
        let dump = envoy.config_dump(false).await?.to_string();
        Ok(dump.contains(&inbound)
            && dump.contains("inbound|9080||reviews.default.svc.cluster.local"))
    })
    .await
    .unwrap();
    envoy.stop().await.unwrap();
}
