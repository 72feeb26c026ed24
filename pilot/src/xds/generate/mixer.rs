//! Mixer on stock Envoy: policy checks through `envoy.filters.http.ext_authz` and telemetry
//! through the gRPC access-log service, both to the addresses MeshConfig gives
//! (`mixerCheckServer`, `mixerReportServer`). Istio's sidecars did this with their own `mixer`
//! filter; Mixer's ext_authz and access-log doors take the same attributes.
//!
//! Where, as in Istio's mixer plugin:
//! - **Checks** happen on the server side: a sidecar's inbound HTTP listeners call Mixer before
//!   the request reaches the workload. Sidecars do not check outbound requests (Istio's
//!   `enableClientSidePolicyCheck` is off by default); gateways (`router` proxies) check what
//!   they route, as Istio's did. `policyCheckFailOpen` becomes `failure_mode_allow`.
//! - **Reports** come from both sides: inbound with `context.reporter.kind: inbound` (Mixer's
//!   metrics label it `reporter="destination"`), outbound and gateways with `outbound`
//!   (`reporter="source"`).
//! - TCP gets the same from the network ext_authz filter (checks carry addresses and peer
//!   identities only) and the TCP gRPC access log.
//! - The destination service (`destination.service.host`, `.name`, `.namespace`, `.uid`)
//!   goes to checks as per-route `context_extensions` (attribute names as keys) and to inbound
//!   reports as custom tags. Outbound reports name the host only, from the upstream cluster's
//!   `istio` metadata.
//!
//! Mixer's cluster is Istio's `outbound|PORT||HOST`: the registry's cluster for that service
//! (made HTTP/2) when the proxy sees it, else a cluster of its own (STATIC for an IP, DNS for
//! a name).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, Metadata, grpc_service::EnvoyGrpc, grpc_service::TargetSpecifier,
};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::{Route, route::Action, route_action};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthz, ExtAuthzPerRoute, ext_authz::Services, ext_authz_per_route::Override,
};
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::r#type::metadata::v3::{
    MetadataKey, MetadataKind, metadata_key::PathSegment, metadata_key::path_segment::Segment,
    metadata_kind,
};
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use prost::Message;

use super::util::duration;
use crate::model::service::{outbound_cluster_name, parse_cluster_name};
use crate::model::{Proxy, PushContext, Service};
use crate::xds::resource::any;

/// Name of Envoy's ext_authz filter (the per-route config key).
pub const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
/// Name of Envoy's gRPC HTTP access logger.
const HTTP_GRPC_LOGGER: &str = "envoy.access_loggers.http_grpc";
/// Name of Envoy's gRPC TCP access logger.
const TCP_GRPC_LOGGER: &str = "envoy.access_loggers.tcp_grpc";
/// Name of Envoy's network (TCP) ext_authz filter.
const NETWORK_EXT_AUTHZ_FILTER: &str = "envoy.filters.network.ext_authz";
const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// `log_name` of the access-log stream to Mixer.
pub const LOG_NAME: &str = "mixer";
/// The cluster metadata namespace naming a cluster's service for reports.
const METADATA_NAMESPACE: &str = "istio";
/// How long a policy check may take before it counts as a failure.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Which side of the proxy a connection manager serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A sidecar's inbound listener, in front of its workload.
    Inbound,
    /// A sidecar's outbound listeners (per port, and the HTTP proxy listener).
    Outbound,
    /// A gateway's listeners.
    Gateway,
}

/// The `outbound|PORT||HOST` cluster of a Mixer address.
pub fn cluster_name((host, port): (&str, u32)) -> String {
    outbound_cluster_name(port, "", host)
}

/// Whether `host:port` is one of Mixer's addresses (its cluster must speak HTTP/2).
pub fn is_mixer(ctx: &PushContext, host: &str, port: u32) -> bool {
    [
        ctx.mesh.mixer_check_address(),
        ctx.mesh.mixer_report_address(),
    ]
    .into_iter()
    .flatten()
    .any(|a| a == (host, port))
}

/// Mixer's clusters that `clusters` (the proxy's other clusters, by name) lacks.
pub fn clusters(ctx: &PushContext, have: &[Cluster]) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = Vec::new();
    for addr in [
        ctx.mesh.mixer_check_address(),
        ctx.mesh.mixer_report_address(),
    ]
    .into_iter()
    .flatten()
    {
        let name = cluster_name(addr);
        if have.iter().chain(out.iter()).any(|c| c.name == name) {
            continue;
        }
        let (host, port) = addr;
        let mut c = super::cds::address_cluster(ctx, &name, host, port);
        super::cds::set_http2(&mut c);
        out.push(c);
    }
    out
}

/// The attributes that name a destination service, as Istio's mixer plugin sets them:
/// `destination.service.host` (the FQDN), `.name` (the Kubernetes name, else the host),
/// `.namespace` and `.uid` (`istio://NAMESPACE/services/NAME`).
pub fn service_attributes(ctx: &PushContext, svc: &Service) -> Vec<(&'static str, String)> {
    let k8s_suffix = format!(".{}.svc.{}", svc.namespace, ctx.domain_suffix);
    let name = svc
        .hostname
        .strip_suffix(&k8s_suffix)
        .unwrap_or(&svc.hostname)
        .to_string();
    vec![
        ("destination.service.host", svc.hostname.clone()),
        ("destination.service.name", name.clone()),
        ("destination.service.namespace", svc.namespace.clone()),
        (
            "destination.service.uid",
            format!("istio://{}/services/{name}", svc.namespace),
        ),
    ]
}

/// The proxy's own workload as Mixer's `kubernetesenv` names a pod, `kubernetes://POD.NAMESPACE`
/// (what Istio's sidecars sent as `source.uid` outbound and `destination.uid` inbound), when
/// the node id names a pod.
pub fn pod_uid(proxy: &Proxy) -> Option<String> {
    let (pod, namespace) = proxy.id.rsplit_once('.')?;
    (!pod.is_empty() && !namespace.is_empty()).then(|| format!("kubernetes://{}", proxy.id))
}

/// Adds the Mixer filter and access log that `side` gets to an HTTP filter chain (nothing
/// when MeshConfig names no Mixer). `service` is the destination of an inbound listener.
pub fn apply(
    ctx: &PushContext,
    proxy: &Proxy,
    chain: &mut FilterChain,
    side: Side,
    service: Option<&Service>,
) {
    let check = ctx
        .mesh
        .mixer_check_address()
        .filter(|_| side != Side::Outbound);
    let report = ctx.mesh.mixer_report_address();
    if check.is_none() && report.is_none() {
        return;
    }
    for f in &mut chain.filters {
        let Some(ConfigType::TypedConfig(cfg)) = &mut f.config_type else {
            continue;
        };
        let Ok(mut hcm) = HttpConnectionManager::decode(&cfg.value[..]) else {
            continue;
        };
        if let Some(addr) = check {
            // Before the fault filter: a denied request is never delayed or aborted.
            let at = hcm
                .http_filters
                .iter()
                .position(|f| f.name == super::route::FAULT_FILTER)
                .unwrap_or(hcm.http_filters.len().saturating_sub(1));
            hcm.http_filters.insert(at, check_filter(addr, &ctx.mesh));
        }
        if let Some(addr) = report {
            hcm.access_log
                .push(report_log(ctx, proxy, addr, side, service));
        }
        *cfg = any(&hcm);
    }
}

/// A gRPC service on Mixer's cluster. The `:authority` is Mixer's address: Envoy's default,
/// the cluster name, has `|` in it, which HTTP/2 servers refuse.
fn grpc_service((host, port): (&str, u32)) -> GrpcService {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    GrpcService {
        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
            cluster_name: cluster_name((host, port)),
            authority,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn check_filter(addr: (&str, u32), mesh: &crate::mesh::MeshConfig) -> HttpFilter {
    let mut service = grpc_service(addr);
    service.timeout = Some(duration(CHECK_TIMEOUT));
    let cfg = ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: mesh.policy_check_fail_open,
        // Mixer's source.principal comes from the peer certificate.
        include_peer_certificate: true,
        services: Some(Services::GrpcService(service)),
        ..Default::default()
    };
    HttpFilter {
        name: EXT_AUTHZ_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&cfg))),
        ..Default::default()
    }
}

fn literal(tag: &str, value: &str) -> CustomTag {
    CustomTag {
        tag: tag.to_string(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.to_string(),
        })),
    }
}

/// The attributes a report from `side` carries as custom tags: who reports, and the
/// destination service (literally inbound; from the upstream cluster's metadata outbound).
fn report_tags(
    ctx: &PushContext,
    proxy: &Proxy,
    side: Side,
    service: Option<&Service>,
) -> Vec<CustomTag> {
    let mut tags = Vec::new();
    match side {
        Side::Inbound => {
            tags.push(literal("context.reporter.kind", "inbound"));
            tags.push(literal("destination.namespace", &proxy.namespace));
            if let Some(uid) = pod_uid(proxy) {
                tags.push(literal("destination.uid", &uid));
            }
            if let Some(svc) = service {
                for (k, v) in service_attributes(ctx, svc) {
                    tags.push(literal(k, &v));
                }
            }
        }
        Side::Outbound | Side::Gateway => {
            tags.push(literal("context.reporter.kind", "outbound"));
            tags.push(literal("source.namespace", &proxy.namespace));
            if let Some(uid) = pod_uid(proxy) {
                tags.push(literal("source.uid", &uid));
            }
            tags.push(CustomTag {
                tag: "destination.service.host".into(),
                r#type: Some(custom_tag::Type::Metadata(custom_tag::Metadata {
                    kind: Some(MetadataKind {
                        kind: Some(metadata_kind::Kind::Cluster(metadata_kind::Cluster {})),
                    }),
                    metadata_key: Some(MetadataKey {
                        key: METADATA_NAMESPACE.into(),
                        path: vec![PathSegment {
                            segment: Some(Segment::Key("destination.service.host".into())),
                        }],
                    }),
                    default_value: String::new(),
                })),
            });
        }
    }
    tags
}

fn common_log_config(addr: (&str, u32), tags: Vec<CustomTag>) -> CommonGrpcAccessLogConfig {
    CommonGrpcAccessLogConfig {
        log_name: LOG_NAME.into(),
        grpc_service: Some(grpc_service(addr)),
        transport_api_version: ApiVersion::V3 as i32,
        custom_tags: tags,
        ..Default::default()
    }
}

fn report_log(
    ctx: &PushContext,
    proxy: &Proxy,
    addr: (&str, u32),
    side: Side,
    service: Option<&Service>,
) -> AccessLog {
    let cfg = HttpGrpcAccessLogConfig {
        common_config: Some(common_log_config(
            addr,
            report_tags(ctx, proxy, side, service),
        )),
        ..Default::default()
    };
    AccessLog {
        name: HTTP_GRPC_LOGGER.into(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&cfg))),
        ..Default::default()
    }
}

/// Adds Mixer's check (the network ext_authz filter, before the TCP proxy; not outbound)
/// and report (a TCP gRPC access log on the TCP proxy) to a TCP filter chain. Checks of TCP
/// connections carry addresses and peer identities only: the network filter takes no
/// per-connection attributes.
pub fn apply_tcp(
    ctx: &PushContext,
    proxy: &Proxy,
    chain: &mut FilterChain,
    side: Side,
    service: Option<&Service>,
) {
    let check = ctx
        .mesh
        .mixer_check_address()
        .filter(|_| side != Side::Outbound);
    let report = ctx.mesh.mixer_report_address();
    let Some(at) = chain
        .filters
        .iter()
        .position(|f| f.name == TCP_PROXY_FILTER)
    else {
        return;
    };
    if let Some(addr) = report
        && let Some(ConfigType::TypedConfig(cfg)) = &mut chain.filters[at].config_type
        && let Ok(mut tcp) = TcpProxy::decode(&cfg.value[..])
    {
        let log = TcpGrpcAccessLogConfig {
            common_config: Some(common_log_config(
                addr,
                report_tags(ctx, proxy, side, service),
            )),
        };
        tcp.access_log.push(AccessLog {
            name: TCP_GRPC_LOGGER.into(),
            config_type: Some(access_log::ConfigType::TypedConfig(any(&log))),
            ..Default::default()
        });
        *cfg = any(&tcp);
    }
    if let Some(addr) = check {
        let mut service = grpc_service(addr);
        service.timeout = Some(duration(CHECK_TIMEOUT));
        let cfg = NetworkExtAuthz {
            stat_prefix: "mixer".into(),
            grpc_service: Some(service),
            failure_mode_allow: ctx.mesh.policy_check_fail_open,
            include_peer_certificate: true,
            transport_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        };
        chain.filters.insert(
            at,
            Filter {
                name: NETWORK_EXT_AUTHZ_FILTER.into(),
                config_type: Some(ConfigType::TypedConfig(any(&cfg))),
            },
        );
    }
}

/// The cluster metadata that names its service for outbound reports:
/// `istio: {destination.service.host: HOST}` (one key per map, so it encodes the same way
/// every time). `None` without a report server.
pub fn cluster_metadata(ctx: &PushContext, host: &str) -> Option<Metadata> {
    ctx.mesh.mixer_report_address()?;
    let fields = HashMap::from([(
        "destination.service.host".to_string(),
        Value {
            kind: Some(Kind::StringValue(host.to_string())),
        },
    )]);
    Some(Metadata {
        filter_metadata: HashMap::from([(METADATA_NAMESPACE.to_string(), Struct { fields })]),
        ..Default::default()
    })
}

/// Per-route check settings for requests to `svc`: its attributes as `context_extensions`,
/// plus `extra` ones. `None` when the proxy does not check.
pub fn check_settings(
    ctx: &PushContext,
    svc: &Service,
    extra: &[(&'static str, String)],
) -> Option<Any> {
    ctx.mesh.mixer_check_address()?;
    let mut attrs = service_attributes(ctx, svc);
    attrs.extend(extra.iter().cloned());
    Some(per_route(attrs))
}

/// Adds check settings to gateway routes, for the service each route sends to (the first
/// destination of a split).
pub fn annotate_routes(ctx: &PushContext, routes: &mut [Route]) {
    if ctx.mesh.mixer_check_address().is_none() {
        return;
    }
    for r in routes {
        let Some(Action::Route(action)) = &r.action else {
            continue;
        };
        let cluster = match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => c.as_str(),
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => match w.clusters.first() {
                Some(c) => c.name.as_str(),
                None => continue,
            },
            _ => continue,
        };
        let Some(svc) =
            parse_cluster_name(cluster).and_then(|(_, _, _, h)| ctx.registry.service(h))
        else {
            continue;
        };
        if let Some(cfg) = check_settings(ctx, svc, &[]) {
            r.typed_per_filter_config
                .insert(EXT_AUTHZ_FILTER.to_string(), cfg);
        }
    }
}

/// The per-route ext_authz settings carrying `attrs` as `context_extensions` (a map: its
/// order is made canonical when the resource is encoded, see [`crate::xds::resource`]).
fn per_route(attrs: Vec<(&'static str, String)>) -> Any {
    let settings = CheckSettings {
        context_extensions: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..Default::default()
    };
    any(&ExtAuthzPerRoute {
        r#override: Some(Override::CheckSettings(settings)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resource::canonical_encoding;

    #[test]
    fn per_route_settings_decode_as_ext_authz_per_route() {
        let a = per_route(vec![
            ("destination.service.name", "reviews".into()),
            (
                "destination.service.host",
                "reviews.default.svc.cluster.local".into(),
            ),
        ]);
        let b = per_route(vec![
            (
                "destination.service.host",
                "reviews.default.svc.cluster.local".into(),
            ),
            ("destination.service.name", "reviews".into()),
        ]);
        let a = ExtAuthzPerRoute::decode(&a.value[..]).unwrap();
        let b = ExtAuthzPerRoute::decode(&b.value[..]).unwrap();
        assert_eq!(
            canonical_encoding(&a),
            canonical_encoding(&b),
            "encoding depends on order"
        );
        let decoded = a;
        let Some(Override::CheckSettings(s)) = decoded.r#override else {
            panic!("no check settings: {decoded:?}");
        };
        assert_eq!(s.context_extensions["destination.service.name"], "reviews");
        assert_eq!(s.context_extensions.len(), 2);
    }
}
