//! Generator tests on config written as YAML: what Envoy gets for traffic features that the
//! real-Envoy tests cannot reach through an HTTP proxy port (TCP routes, DNS clusters).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::google::protobuf::BoolValue;
use prost::Message;

use super::{cds, lds};
use crate::mesh::MeshConfig;
use crate::model::{Proxy, PushContext};
use crate::testutil::{TestConfig, mk_router, mk_sidecar, push_context as context};

fn context_with(text: &str, mesh: MeshConfig) -> PushContext {
    TestConfig::from_yaml(text).mesh(mesh).push_context()
}

fn proxy() -> Proxy {
    mk_sidecar("default", "127.0.0.9").build()
}

const DB: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: [10.1.1.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: db}
spec:
  host: db
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 5432}]
    route:
    - {destination: {host: db, subset: v1}, weight: 75}
    - {destination: {host: db, subset: v2}, weight: 25}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
";

#[test]
fn tcp_routes_split_by_weight() {
    let ctx = context(DB);
    let listeners: Vec<Listener> = lds::listeners(&ctx, &proxy())
        .iter()
        .map(|r| Listener::decode(&r.any.value[..]).unwrap())
        .collect();
    let db = listeners
        .iter()
        .find(|l| l.name == "10.1.1.1_5432")
        .expect("db listener");
    let Some(ConfigType::TypedConfig(any)) = &db.filter_chains[0].filters[0].config_type else {
        panic!("no tcp proxy");
    };
    let tcp = TcpProxy::decode(&any.value[..]).unwrap();
    let Some(ClusterSpecifier::WeightedClusters(w)) = tcp.cluster_specifier else {
        panic!("not weighted: {tcp:?}");
    };
    let got: Vec<(String, u32)> = w.clusters.into_iter().map(|c| (c.name, c.weight)).collect();
    assert_eq!(
        got,
        vec![
            (
                "outbound|5432|v1|db.default.svc.cluster.local".to_string(),
                75
            ),
            (
                "outbound|5432|v2|db.default.svc.cluster.local".to_string(),
                25
            ),
        ]
    );
}

#[test]
fn mesh_external_dns_services_are_dns_clusters() {
    let ctx = context(DB);
    let clusters: Vec<Cluster> = cds::clusters(&ctx, &proxy())
        .iter()
        .map(|r| Cluster::decode(&r.any.value[..]).unwrap())
        .collect();
    let ext = clusters
        .iter()
        .find(|c| c.name == "outbound|443||api.example.com")
        .expect("external cluster");
    assert_eq!(
        ext.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(
            envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::StrictDns as i32
        ))
    );
    // Istio's default circuit breakers are wide open.
    let t = &ext.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, u32::MAX);
}

#[test]
fn port_level_and_subset_policies_override_the_host_policy() {
    let rule: mesh_proto::networking::DestinationRule = yaml_serde::from_str(
        r#"
host: reviews
trafficPolicy:
  loadBalancer: {simple: RANDOM}
  connectionPool: {tcp: {maxConnections: 100}}
  portLevelSettings:
  - port: {number: 9080}
    loadBalancer: {simple: LEAST_REQUEST}
subsets:
- name: v2
  labels: {version: v2}
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 7}}
"#,
    )
    .unwrap();
    use mesh_proto::networking::SimpleLb;
    let host_9080 = cds::merged_policy(&rule, None, 9080);
    let lb = |p: &cds::Policy| p.load_balancer.as_ref().and_then(|l| l.simple);
    let max = |p: &cds::Policy| {
        p.connection_pool
            .as_ref()
            .and_then(|c| c.tcp.as_ref())
            .and_then(|t| t.max_connections)
    };
    assert_eq!(lb(&host_9080), Some(SimpleLb::LeastRequest));
    assert_eq!(max(&host_9080), Some(100));
    let host_80 = cds::merged_policy(&rule, None, 80);
    assert_eq!(lb(&host_80), Some(SimpleLb::Random));
    let v2 = cds::merged_policy(&rule, Some(&rule.subsets[0]), 9080);
    assert_eq!(lb(&v2), Some(SimpleLb::LeastRequest));
    assert_eq!(max(&v2), Some(7));
}

const ZONED: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.1, locality: us/east/a}
  - {address: 10.0.0.2, locality: us/east/b}
  - {address: 10.0.0.3, locality: us/west/a}
  - {address: 10.0.0.4, locality: eu/west/a}
  - {address: 10.0.0.5}
";

fn priorities(ctx: &PushContext, locality: Option<&str>) -> Vec<(String, u32)> {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let r = super::eds::load_assignment_for(
        ctx,
        "outbound|9080||reviews.default.svc.cluster.local",
        locality,
    )
    .unwrap();
    let cla = ClusterLoadAssignment::decode(&r.any.value[..]).unwrap();
    cla.endpoints
        .iter()
        .map(|l| {
            let name = l
                .locality
                .as_ref()
                .map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone))
                .unwrap_or_default();
            (name, l.priority)
        })
        .collect()
}

#[test]
fn locality_failover_needs_outlier_detection() {
    // Without outlier detection: grouped by locality, all priority 0.
    let ctx = context(ZONED);
    let got = priorities(&ctx, Some("us/east/a"));
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(_, p)| *p == 0), "{got:?}");

    let with_od = format!(
        "{ZONED}---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 1}}\n"
    );
    let ctx = context(&with_od);
    let mut got = priorities(&ctx, Some("us/east/a"));
    got.sort();
    assert_eq!(
        got,
        vec![
            ("".to_string(), 3),
            ("eu/west/a".to_string(), 3),
            ("us/east/a".to_string(), 0),
            ("us/east/b".to_string(), 1),
            ("us/west/a".to_string(), 2),
        ]
    );
    // No proxy locality: no priorities.
    assert!(priorities(&ctx, None).iter().all(|(_, p)| *p == 0));
    // Turned off.
    let off = with_od.replace(
        "outlierDetection:",
        "loadBalancer: {localityLbSetting: {enabled: false}}\n    outlierDetection:",
    );
    let ctx = context(&off);
    assert!(
        priorities(&ctx, Some("us/east/a"))
            .iter()
            .all(|(_, p)| *p == 0)
    );
}

#[test]
fn mixer_in_the_registry_gets_its_cluster_made_http2() {
    let policy = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: istio-policy, namespace: istio-system}
spec:
  hosts: [istio-policy.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9091, name: tcp-mixer, protocol: TCP}]
  endpoints: [{address: 10.0.0.9}]
";
    let mesh = MeshConfig::parse(
        std::path::Path::new("mesh"),
        "mixerCheckServer: istio-policy.istio-system.svc.cluster.local:9091\nmixerReportServer: 10.0.0.7:9091\ndisablePolicyChecks: false\n",
    )
    .unwrap();
    let ctx = context_with(policy, mesh);
    let clusters: Vec<Cluster> = cds::clusters(&ctx, &proxy())
        .iter()
        .map(|r| Cluster::decode(&r.any.value[..]).unwrap())
        .collect();
    let named = |n: &str| clusters.iter().filter(|c| c.name == n).collect::<Vec<_>>();
    // The registry's cluster (EDS), once, speaking HTTP/2 despite its TCP port.
    let check = named("outbound|9091||istio-policy.istio-system.svc.cluster.local");
    assert_eq!(check.len(), 1);
    assert!(check[0].eds_cluster_config.is_some());
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions,
        http_protocol_options::explicit_http_config::ProtocolConfig,
    };
    let opts = &check[0].typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    let opts = HttpProtocolOptions::decode(&opts.value[..]).unwrap();
    assert!(matches!(
        opts.upstream_protocol_options,
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ref e))
            if matches!(e.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)))
    ));
    // An address outside the registry gets a static cluster of its own.
    let report = named("outbound|9091||10.0.0.7");
    assert_eq!(report.len(), 1);
    assert!(report[0].load_assignment.is_some());
}

#[test]
fn a_sidecar_egress_port_binds_over_the_default_tls_listener() {
    let config = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 8443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - port: {number: 8443, protocol: TLS, name: tls}
    captureMode: NONE
    hosts: ['*/*']
";
    let ctx = context(config);
    let listeners: Vec<Listener> = lds::listeners(&ctx, &proxy())
        .iter()
        .map(|r| Listener::decode(&r.any.value[..]).unwrap())
        .collect();
    let l: Vec<&Listener> = listeners
        .iter()
        .filter(|l| l.name == "0.0.0.0_8443")
        .collect();
    assert_eq!(l.len(), 1);
    // Bound (the default outbound listener is not), matched by SNI behind a TLS inspector.
    assert_eq!(l[0].bind_to_port, None);
    assert_eq!(l[0].listener_filters.len(), 1);
    let m = l[0].filter_chains[0].filter_chain_match.as_ref().unwrap();
    assert_eq!(m.server_names, vec!["api.example.com".to_string()]);
}

fn router() -> Proxy {
    mk_router("istio-system", "127.0.0.40")
        .labels(&[("istio", "ingressgateway")])
        .build()
}

const POLICIES: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: ingress}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: ['*']
  gateways: [ingress]
  http:
  - route: [{destination: {host: reviews.default.svc.cluster.local, port: {number: 9080}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 1}}, delay: {fixedDelay: 1s, percentage: {value: 2}}}
    corsPolicy: {allowOrigins: [{exact: 'https://a.example.com'}], allowMethods: [GET], maxAge: 60s}
";

fn mixer_mesh() -> MeshConfig {
    MeshConfig::parse(
        std::path::Path::new("mesh"),
        "mixerCheckServer: 10.0.0.7:9091\ndisablePolicyChecks: false\n",
    )
    .unwrap()
}

#[test]
fn routes_with_several_per_filter_configs_encode_the_same_every_time() {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    let names = std::collections::BTreeSet::from(["http.80".to_string()]);
    let mut versions = std::collections::BTreeSet::new();
    let mut bytes = std::collections::BTreeSet::new();
    // Fresh push contexts and fresh maps (new hash seeds) each time.
    for _ in 0..8 {
        let ctx = context_with(POLICIES, mixer_mesh());
        let routes = super::rds::routes(&ctx, &router(), &names);
        assert_eq!(routes.len(), 1);
        let rc = RouteConfiguration::decode(&routes[0].any.value[..]).unwrap();
        let route = &rc.virtual_hosts[0].routes[0];
        let mut filters: Vec<&str> = route
            .typed_per_filter_config
            .keys()
            .map(String::as_str)
            .collect();
        filters.sort();
        assert_eq!(
            filters,
            [
                super::route::CORS_FILTER,
                super::mixer::EXT_AUTHZ_FILTER,
                super::route::FAULT_FILTER
            ]
        );
        versions.insert(routes[0].version.clone());
        bytes.insert(routes[0].any.value.clone());
    }
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(bytes.len(), 1);
}

/// (transport protocol, server name) of every filter chain of a listener: what Envoy
/// requires to be unique.
fn chain_matches(l: &Listener) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in &l.filter_chains {
        let m = c.filter_chain_match.clone().unwrap_or_default();
        if m.server_names.is_empty() {
            out.push((m.transport_protocol.clone(), String::new()));
        }
        for n in &m.server_names {
            out.push((m.transport_protocol.clone(), n.clone()));
        }
    }
    out
}

fn gateway_listeners(config: &str) -> Vec<Listener> {
    let ctx = context(config);
    lds::listeners(&ctx, &router())
        .iter()
        .map(|r| Listener::decode(&r.any.value[..]).unwrap())
        .collect()
}

#[test]
fn gateways_naming_the_same_sni_host_get_one_filter_chain_for_it() {
    let config = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.tls.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: first}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [secure.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: second}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [secure.example.com, other.example.com]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [secure.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 9443, name: tls-any, protocol: TLS}
    hosts: ['*']
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: passthrough}
spec:
  hosts: [secure.example.com]
  gateways: [first, second]
  tls:
  - match: [{sniHosts: [secure.example.com]}, {sniHosts: [secure.example.com]}]
    route: [{destination: {host: backend.tls.internal, port: {number: 8443}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: passthrough-again}
spec:
  hosts: [secure.example.com, api.example.com]
  gateways: [second]
  tls:
  - match: [{sniHosts: [secure.example.com]}]
    route: [{destination: {host: backend.tls.internal, port: {number: 8443}}}]
  - match: [{sniHosts: [api.example.com, secure.example.com]}]
    route: [{destination: {host: backend.tls.internal, port: {number: 8443}}}]
";
    let listeners = gateway_listeners(config);
    let named = |n: &str| {
        listeners
            .iter()
            .find(|l| l.name == n)
            .unwrap_or_else(|| panic!("no listener {n}"))
    };
    let tls = |n: &str| ("tls".to_string(), n.to_string());
    // HTTPS: the second gateway's server repeats a host, so it is skipped whole (Istio's
    // rule); the first keeps the port's host.
    assert_eq!(
        chain_matches(named("0.0.0.0_443")),
        vec![tls("secure.example.com")]
    );
    // Passthrough: one chain for the host, though two servers and three routes name it.
    assert_eq!(
        chain_matches(named("0.0.0.0_8443")),
        vec![tls("secure.example.com")]
    );
    // Routes of a `*` server: each name once, across chains.
    assert_eq!(
        chain_matches(named("0.0.0.0_9443")),
        vec![tls("secure.example.com"), tls("api.example.com")]
    );
    for l in &listeners {
        let mut m = chain_matches(l);
        let all = m.len();
        m.sort();
        m.dedup();
        assert_eq!(m.len(), all, "{}: duplicate filter chain matches", l.name);
    }
}

#[test]
fn every_any_in_generated_resources_is_canonical() {
    use crate::xds::resource::is_canonical_deep;
    // A workload of reviews (inbound ext_authz settings with their context extensions),
    // outbound routes with fault and CORS, a gateway with all three.
    let config = format!(
        "{POLICIES}---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: details}}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.9}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: reviews-mesh}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 1}}}}}}
    corsPolicy: {{allowOrigins: [{{exact: 'https://a.example.com'}}]}}
"
    );
    let mesh = MeshConfig::parse(
        std::path::Path::new("mesh"),
        "mixerCheckServer: 10.0.0.7:9091\nmixerReportServer: 10.0.0.7:9091\ndisablePolicyChecks: false\n",
    )
    .unwrap();
    let ctx = context_with(&config, mesh);
    let mut checked = 0;
    for proxy in [proxy(), router()] {
        let routes: std::collections::BTreeSet<String> =
            ["9080", "http.80"].map(String::from).into();
        let resources = cds::clusters(&ctx, &proxy)
            .into_iter()
            .chain(lds::listeners(&ctx, &proxy))
            .chain(super::rds::routes(&ctx, &proxy, &routes));
        for r in resources {
            let name = r.any.type_url.rsplit_once('/').unwrap().1;
            assert!(is_canonical_deep(name, &r.any.value), "{}", r.name);
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked}");
}

#[test]
fn overlapping_sni_routes_of_a_sidecar_take_each_name_once() {
    let config = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com, www.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{sniHosts: [api.example.com, www.example.com]}]
    route: [{destination: {host: api.example.com}}]
  - match: [{sniHosts: [api.example.com]}]
    route: [{destination: {host: www.example.com}}]
";
    let ctx = context(config);
    let listeners: Vec<Listener> = lds::listeners(&ctx, &proxy())
        .iter()
        .map(|r| Listener::decode(&r.any.value[..]).unwrap())
        .collect();
    let l = listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_443")
        .expect("tls listener");
    let mut names: Vec<String> = chain_matches(l).into_iter().map(|(_, n)| n).collect();
    names.sort();
    assert_eq!(names, ["api.example.com", "www.example.com"]);
}

// === interception: virtualInbound, virtualOutbound ===

/// The proxy (127.0.0.9) serves `app` on HTTP 9080 and TCP 3306; `other` is elsewhere.
const SELF: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: app}
spec:
  hosts: [app.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 9080}
  - {number: 3306, name: tcp, protocol: TCP}
  endpoints: [{address: 127.0.0.9, ports: {http: 9080, tcp: 3306}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: other}
spec:
  hosts: [other.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1}]
";

fn listeners_of(ctx: &PushContext, proxy: &Proxy) -> Vec<Listener> {
    lds::listeners(ctx, proxy)
        .iter()
        .map(|r| Listener::decode(&r.any.value[..]).unwrap())
        .collect()
}

fn clusters_of(ctx: &PushContext, proxy: &Proxy) -> Vec<Cluster> {
    cds::clusters(ctx, proxy)
        .iter()
        .map(|r| Cluster::decode(&r.any.value[..]).unwrap())
        .collect()
}

fn named<'a>(listeners: &'a [Listener], name: &str) -> Option<&'a Listener> {
    listeners.iter().find(|l| l.name == name)
}

fn port_of(l: &Listener) -> u32 {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
            Some(PortSpecifier::PortValue(p)) => p,
            _ => 0,
        },
        _ => 0,
    }
}

/// The TCP proxy cluster of a chain, or "" for an HTTP chain.
fn tcp_cluster(chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain) -> String {
    chain
        .filters
        .iter()
        .filter(|f| f.name == "envoy.filters.network.tcp_proxy")
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => TcpProxy::decode(&any.value[..]).ok(),
            _ => None,
        })
        .find_map(|t| match t.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => Some(c),
            _ => None,
        })
        .unwrap_or_default()
}

/// (destination port, transport protocol, has a TLS socket, TCP cluster) of each chain.
fn virtual_chains(l: &Listener) -> Vec<(u32, String, bool, String)> {
    l.filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                m.destination_port.map(|p| p.value).unwrap_or(0),
                m.transport_protocol,
                c.transport_socket.is_some(),
                tcp_cluster(c),
            )
        })
        .collect()
}

fn listener_filters(l: &Listener) -> Vec<&str> {
    l.listener_filters.iter().map(|f| f.name.as_str()).collect()
}

fn bind_source(c: &Cluster) -> Option<String> {
    c.upstream_bind_config
        .as_ref()
        .and_then(|b| b.source_address.as_ref())
        .map(|a| a.address.clone())
}

#[test]
fn a_captured_sidecar_gets_virtual_inbound_with_its_ports_and_a_passthrough() {
    let ctx = context(SELF);
    let proxy = proxy();
    assert!(proxy.captures_traffic(), "no metadata: intercepted");
    let listeners = listeners_of(&ctx, &proxy);
    let vin = named(&listeners, "virtualInbound").expect("virtualInbound");
    assert_eq!(port_of(vin), 15006);
    assert_eq!(vin.bind_to_port, None, "bound");
    assert_eq!(vin.transparent, None);
    assert_eq!(
        listener_filters(vin),
        ["envoy.filters.listener.original_dst"]
    );
    let s = |x: &str| x.to_string();
    assert_eq!(
        virtual_chains(vin),
        vec![
            (9080, s(""), false, s("")),
            (
                3306,
                s(""),
                false,
                s("inbound|3306||app.default.svc.cluster.local")
            ),
            (15006, s(""), false, s("BlackHoleCluster")),
            (0, s(""), false, s("InboundPassthroughClusterIpv4")),
        ]
    );
    // The chains are those of the inbound listeners, which stay (unbound) for 15001 capture.
    for name in ["127.0.0.9_9080", "127.0.0.9_3306"] {
        let l = named(&listeners, name).expect(name);
        assert_eq!(l.bind_to_port, Some(BoolValue { value: false }));
        let mut chain = l.filter_chains[0].clone();
        chain.filter_chain_match = vin
            .filter_chains
            .iter()
            .find(|c| {
                c.filter_chain_match
                    .as_ref()
                    .and_then(|m| m.destination_port)
                    .is_some_and(|p| p.value == port_of(l))
            })
            .unwrap()
            .filter_chain_match
            .clone();
        assert!(vin.filter_chains.contains(&chain), "{name}");
    }
    let vout = named(&listeners, "virtualOutbound").expect("virtualOutbound");
    assert_eq!(port_of(vout), 15001);
    assert_eq!(vout.use_original_dst, Some(BoolValue { value: true }));
    assert_eq!(
        virtual_chains(vout),
        vec![
            (15001, s(""), false, s("BlackHoleCluster")),
            (0, s(""), false, s("PassthroughCluster")),
        ]
    );

    let clusters = clusters_of(&ctx, &proxy);
    let passthrough = clusters
        .iter()
        .find(|c| c.name == "InboundPassthroughClusterIpv4")
        .expect("inbound passthrough cluster");
    assert_eq!(
        passthrough.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(
            envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::OriginalDst as i32
        ))
    );
    assert_eq!(bind_source(passthrough).as_deref(), Some("127.0.0.6"));
    for c in clusters.iter().filter(|c| c.name.starts_with("inbound|")) {
        assert_eq!(bind_source(c).as_deref(), Some("127.0.0.6"), "{}", c.name);
    }
    for c in clusters.iter().filter(|c| c.name.starts_with("outbound|")) {
        assert_eq!(bind_source(c), None, "{}", c.name);
    }
}

#[test]
fn no_virtual_listeners_without_capture() {
    let ctx = context(SELF);
    for proxy in [
        mk_sidecar("default", "127.0.0.9")
            .meta("INTERCEPTION_MODE", "NONE")
            .build(),
        // The no-iptables mode of the tests: an HTTP proxy port.
        mk_sidecar("default", "127.0.0.9")
            .meta("PROXY_HTTP_PORT", "15080")
            .build(),
    ] {
        let listeners = listeners_of(&ctx, &proxy);
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        assert!(!names.contains(&"virtualInbound"), "{names:?}");
        assert!(!names.contains(&"virtualOutbound"), "{names:?}");
        assert!(names.contains(&"127.0.0.9_9080"), "{names:?}");
        let clusters = clusters_of(&ctx, &proxy);
        assert!(
            !clusters
                .iter()
                .any(|c| c.name == "InboundPassthroughClusterIpv4")
        );
        assert!(clusters.iter().all(|c| bind_source(c).is_none()));
    }
    let http = mk_sidecar("default", "127.0.0.9")
        .meta("PROXY_HTTP_PORT", "15080")
        .build();
    assert!(named(&listeners_of(&ctx, &http), "127.0.0.1_15080").is_some());
    // Asked for explicitly, interception wins over the HTTP proxy port.
    let both = mk_sidecar("default", "127.0.0.9")
        .meta("PROXY_HTTP_PORT", "15080")
        .meta("INTERCEPTION_MODE", "REDIRECT")
        .build();
    let listeners = listeners_of(&ctx, &both);
    assert!(named(&listeners, "virtualInbound").is_some());
    assert!(named(&listeners, "127.0.0.1_15080").is_some());
    // Gateways have no virtualInbound.
    assert!(named(&listeners_of(&ctx, &router()), "virtualInbound").is_none());
}

#[test]
fn virtual_inbound_follows_peer_authentication() {
    let s = |x: &str| x.to_string();
    let strict = format!(
        "{SELF}---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: STRICT}}
"
    );
    let ctx = context(&strict);
    let listeners = listeners_of(&ctx, &proxy());
    let vin = named(&listeners, "virtualInbound").unwrap();
    assert_eq!(
        virtual_chains(vin),
        vec![
            (9080, s(""), true, s("")),
            (
                3306,
                s(""),
                true,
                s("inbound|3306||app.default.svc.cluster.local")
            ),
            (15006, s(""), false, s("BlackHoleCluster")),
            (0, s(""), true, s("InboundPassthroughClusterIpv4")),
        ]
    );
    assert_eq!(
        listener_filters(vin),
        ["envoy.filters.listener.original_dst"]
    );

    // PERMISSIVE for the workload, STRICT on 3306 only: TLS and plain text chains, told
    // apart by the TLS inspector.
    let permissive = format!(
        "{SELF}---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: app, namespace: default}}
spec:
  selector: {{matchLabels: {{app: app}}}}
  mtls: {{mode: PERMISSIVE}}
  portLevelMtls: {{3306: {{mode: STRICT}}}}
"
    );
    let ctx = context(&permissive);
    let proxy = mk_sidecar("default", "127.0.0.9")
        .labels(&[("app", "app")])
        .build();
    let listeners = listeners_of(&ctx, &proxy);
    let vin = named(&listeners, "virtualInbound").unwrap();
    let tcp = s("inbound|3306||app.default.svc.cluster.local");
    let pt = s("InboundPassthroughClusterIpv4");
    assert_eq!(
        virtual_chains(vin),
        vec![
            (9080, s("tls"), true, s("")),
            (9080, s(""), false, s("")),
            (3306, s(""), true, tcp),
            (15006, s(""), false, s("BlackHoleCluster")),
            (0, s("tls"), true, pt.clone()),
            (0, s(""), false, pt),
        ]
    );
    assert_eq!(
        listener_filters(vin),
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
}

#[test]
fn virtual_inbound_chains_carry_mixer_like_the_inbound_listener() {
    let ctx = context_with(SELF, mixer_mesh());
    let listeners = listeners_of(&ctx, &proxy());
    let vin = named(&listeners, "virtualInbound").unwrap();
    let inbound = named(&listeners, "127.0.0.9_9080").unwrap();
    let mut want = inbound.filter_chains[0].clone();
    let Some(ConfigType::TypedConfig(hcm)) = &want.filters[0].config_type else {
        panic!("no HTTP connection manager");
    };
    let filter = super::mixer::EXT_AUTHZ_FILTER.as_bytes();
    assert!(
        hcm.value.windows(filter.len()).any(|w| w == filter),
        "the inbound chain calls Mixer"
    );
    want.filter_chain_match = vin.filter_chains[0].filter_chain_match.clone();
    assert_eq!(vin.filter_chains[0], want);
}

#[test]
fn virtual_listener_ports_and_modes_come_from_the_mesh_and_metadata() {
    let mesh = MeshConfig::parse(
        std::path::Path::new("mesh"),
        "proxyListenPort: 16001\nproxyInboundListenPort: 16006\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    )
    .unwrap();
    let ctx = context_with(SELF, mesh);
    let proxy = mk_sidecar("default", "127.0.0.9")
        .meta("INTERCEPTION_MODE", "TPROXY")
        .build();
    let listeners = listeners_of(&ctx, &proxy);
    let vin = named(&listeners, "virtualInbound").unwrap();
    assert_eq!(port_of(vin), 16006);
    assert_eq!(vin.transparent, Some(BoolValue { value: true }));
    assert!(virtual_chains(vin).contains(&(
        16006,
        String::new(),
        false,
        "BlackHoleCluster".to_string()
    )));
    let vout = named(&listeners, "virtualOutbound").unwrap();
    assert_eq!(port_of(vout), 16001);
    let s = |x: &str| x.to_string();
    assert_eq!(
        virtual_chains(vout),
        vec![
            (16001, s(""), false, s("BlackHoleCluster")),
            (0, s(""), false, s("BlackHoleCluster")),
        ],
        "REGISTRY_ONLY"
    );
}

#[test]
fn sidecar_ingress_ports_come_first_in_virtual_inbound_unless_not_captured() {
    let text = format!(
        "{SELF}---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  ingress:
  - port: {{number: 9080, name: http, protocol: HTTP}}
    defaultEndpoint: 127.0.0.1:8080
  - port: {{number: 9090, name: tcp, protocol: TCP}}
    defaultEndpoint: 127.0.0.1:8090
    captureMode: NONE
  egress: [{{hosts: ['~/*']}}]
"
    );
    let ctx = context(&text);
    let listeners = listeners_of(&ctx, &proxy());
    let vin = named(&listeners, "virtualInbound").unwrap();
    let s = |x: &str| x.to_string();
    // 9080 is the ingress listener's (to inbound|9080||, the defaultEndpoint), not the
    // service instance's; 9090 is bound by its own listener (captureMode NONE).
    assert_eq!(
        virtual_chains(vin),
        vec![
            (9080, s(""), false, s("")),
            (
                3306,
                s(""),
                false,
                s("inbound|3306||app.default.svc.cluster.local")
            ),
            (15006, s(""), false, s("BlackHoleCluster")),
            (0, s(""), false, s("InboundPassthroughClusterIpv4")),
        ]
    );
    let ingress = named(&listeners, "0.0.0.0_9080").unwrap();
    let mut want = ingress.filter_chains[0].clone();
    want.filter_chain_match = vin.filter_chains[0].filter_chain_match.clone();
    assert_eq!(vin.filter_chains[0], want);
    assert_eq!(
        named(&listeners, "0.0.0.0_9090").unwrap().bind_to_port,
        None
    );
}
