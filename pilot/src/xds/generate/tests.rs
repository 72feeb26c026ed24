//! Generator tests on config written as YAML: what Envoy gets for traffic features that the
//! real-Envoy tests cannot reach through an HTTP proxy port (TCP routes, DNS clusters).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::ClusterDiscoveryType};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use mesh_runtime::Snapshot;
use prost::Message;

use super::{cds, lds};
use crate::mesh::MeshConfig;
use crate::model::{Proxy, PushContext, Registry};

const NODE: &str = "sidecar~127.0.0.9~app-1.default~default.svc.cluster.local";

fn context(text: &str) -> PushContext {
    let objects: BTreeMap<_, _> = mesh_runtime::config::parse_file("x.yaml".as_ref(), text)
        .into_iter()
        .map(|r| {
            let o = r.unwrap();
            (o.key.clone(), Arc::new(o))
        })
        .collect();
    let snap = Snapshot::new(1, true, objects, Vec::new());
    let (registry, _) = Registry::from_config(&snap);
    PushContext::new(
        "1".into(),
        &snap,
        Arc::new(registry),
        Arc::new(MeshConfig::default()),
    )
}

fn proxy() -> Proxy {
    Proxy::from_node(NODE, BTreeMap::new()).unwrap()
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
