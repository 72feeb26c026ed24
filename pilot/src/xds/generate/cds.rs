//! CDS: outbound clusters for every visible service port and subset, inbound clusters for the
//! proxy's own service instances, and Istio's `BlackHoleCluster` and `PassthroughCluster`.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config},
};

use super::util::{ads, duration, socket_address};
use crate::model::service::{inbound_cluster_name, outbound_cluster_name};
use crate::model::{Port, Proxy, PushContext, Resolution, Service};
use crate::xds::resource::{Resource, SharedResource, any};

/// Istio's cluster that drops traffic.
pub const BLACK_HOLE: &str = "BlackHoleCluster";
/// Istio's cluster that forwards traffic to its original destination.
pub const PASSTHROUGH: &str = "PassthroughCluster";

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Every cluster `proxy` gets, sorted by name.
pub fn clusters(ctx: &PushContext, proxy: &Proxy) -> Vec<SharedResource> {
    let mut out = Vec::new();
    for svc in ctx.services_for(&proxy.namespace) {
        for port in &svc.ports {
            out.push(outbound(ctx, svc, port, None));
            if let Some(dr) = ctx.destination_rule(&proxy.namespace, svc) {
                for subset in &dr.spec.subsets {
                    out.push(outbound(ctx, svc, port, Some(&subset.name)));
                }
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (svc, port, ep) in proxy
        .ips
        .iter()
        .flat_map(|ip| ctx.registry.instances_at(ip))
    {
        let name = inbound_cluster_name(port.number, &svc.hostname);
        if seen.insert(name.clone()) {
            out.push(inbound(ctx, &name, &ep.address, ep.port, port));
        }
    }
    out.push(black_hole(ctx));
    out.push(passthrough(ctx));
    let mut resources: Vec<SharedResource> = out
        .into_iter()
        .map(|c| Resource::encode(c.name.clone(), &c))
        .collect();
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    resources.dedup_by(|a, b| a.name == b.name);
    resources
}

fn base(ctx: &PushContext, name: String) -> Cluster {
    Cluster {
        name,
        connect_timeout: Some(duration(ctx.mesh.connect_timeout.as_std())),
        ..Default::default()
    }
}

fn outbound(ctx: &PushContext, svc: &Service, port: &Port, subset: Option<&str>) -> Cluster {
    let name = outbound_cluster_name(port.number, subset.unwrap_or(""), &svc.hostname);
    let mut c = base(ctx, name.clone());
    match svc.resolution {
        Resolution::Static => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name,
            });
        }
        Resolution::Dns => {
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            let selector = subset
                .and_then(|s| ctx.subset(&svc.namespace, svc, s))
                .map(|s| s.labels.clone())
                .unwrap_or_default();
            let endpoints = ctx
                .registry
                .endpoints(&svc.hostname, port.number)
                .iter()
                .filter(|ep| ep.matches(&selector))
                .map(|ep| lb_endpoint(&ep.address, ep.port, ep.weight))
                .collect();
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: endpoints,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        Resolution::Passthrough => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    if port.protocol.is_http2() {
        set_http2(&mut c);
    }
    c
}

fn inbound(ctx: &PushContext, name: &str, address: &str, port: u32, svc_port: &Port) -> Cluster {
    let mut c = base(ctx, name.to_string());
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    c.load_assignment = Some(ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![lb_endpoint(address, port, None)],
            ..Default::default()
        }],
        ..Default::default()
    });
    if svc_port.protocol.is_http2() {
        set_http2(&mut c);
    }
    c
}

fn black_hole(ctx: &PushContext) -> Cluster {
    let mut c = base(ctx, BLACK_HOLE.to_string());
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
    c
}

fn passthrough(ctx: &PushContext) -> Cluster {
    let mut c = base(ctx, PASSTHROUGH.to_string());
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
        DiscoveryType::OriginalDst as i32,
    ));
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    c
}

/// One endpoint of a load assignment.
pub fn lb_endpoint(address: &str, port: u32, weight: Option<u32>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(address, port)),
            ..Default::default()
        })),
        load_balancing_weight: weight
            .map(|w| envoy_types::pb::google::protobuf::UInt32Value { value: w.max(1) }),
        ..Default::default()
    }
}

fn set_http2(c: &mut Cluster) {
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&opts));
}
