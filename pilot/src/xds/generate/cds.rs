//! CDS: outbound clusters for every visible service port and subset, inbound clusters for the
//! proxy's own service instances, and Istio's `BlackHoleCluster` and `PassthroughCluster`.
//! A sidecar whose traffic is captured also gets `InboundPassthroughClusterIpv4` (ORIGINAL_DST,
//! for `virtualInbound`'s passthrough), and its inbound clusters connect from 127.0.0.6 as
//! that one does: iptables would capture the proxy's connection to its own pod's address
//! again, except from that source.
//!
//! Outbound clusters carry the DestinationRule's traffic policy, merged as Istio does: the
//! rule's policy, overridden by its `portLevelSettings` for the port, overridden by the
//! subset's policy and the subset's port-level settings. Load balancing (simple and consistent
//! hash; the hash itself is a route property, see [`hash_policy()`]), connection pool limits
//! (circuit breakers, keepalive, HTTP options), outlier detection and client TLS from files.

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection, UpstreamConnectionOptions,
    circuit_breakers::Thresholds,
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
        LbConfig, LbPolicy, MaglevLbConfig, OriginalDstLbConfig, RingHashLbConfig,
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, DataSource, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CoreHttpProtocolOptions, SocketAddress, TcpKeepalive, TransportSocket,
    data_source, socket_address::PortSpecifier, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    HashPolicy, hash_policy, hash_policy::PolicySpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, TlsCertificate, UpstreamTlsContext,
    common_tls_context::ValidationContextType,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig, explicit_http_config,
    },
};
use envoy_types::pb::envoy::r#type::v3::Percent as EnvoyPercent;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use mesh_proto::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, SimpleLb, Subset, TrafficPolicy,
};

use super::util::{ads, duration, socket_address};
use crate::model::service::{inbound_cluster_name, outbound_cluster_name};
use crate::model::{NodeType, Port, Protocol, Proxy, PushContext, Resolution, Service};
use crate::xds::resource::{Resource, SharedResource, any};

/// Istio's cluster that drops traffic.
pub const BLACK_HOLE: &str = "BlackHoleCluster";
/// Istio's cluster that forwards traffic to its original destination.
pub const PASSTHROUGH: &str = "PassthroughCluster";
/// Istio's cluster for captured inbound connections to a port no service declares: to their
/// original destination, the workload's own address, from [`INBOUND_PASSTHROUGH_SOURCE`].
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughClusterIpv4";
/// The source address of the proxy's connections to its own workload (Istio's): iptables
/// (`pilot-agent iptables`) lets connections from it over `lo` through uncaptured.
pub const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6";
/// The IPv6 one (`::6`, as `pilot-agent iptables` excludes for ip6tables).
const INBOUND_PASSTHROUGH_SOURCE_V6: &str = "::6";

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Every cluster `proxy` gets, sorted by name: [`outbound_clusters`] and [`own_clusters`],
/// merged.
pub fn clusters(ctx: &PushContext, proxy: &Proxy) -> Vec<SharedResource> {
    merge(&outbound_clusters(ctx, proxy), &own_clusters(ctx, proxy))
}

/// A generated resource with where it stands among those of one name: of two resources with
/// one name (Envoy refuses duplicates) the one with the lower `rank` is served, as a
/// proxy's whole list would have it. Lists of them are sorted by name, one per name, so that
/// the parts of a proxy's config generated apart (shared by many proxies, or its own) merge
/// into what generating them together gives.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub resource: SharedResource,
    pub rank: u8,
}

/// `resources` in the order a proxy gets them, sorted by name, the lowest rank of each
/// name kept (of equal ranks, the first). Cached for the whole generation, so it is sized to
/// what it holds: a list collected from the generated messages reuses their buffer (Rust
/// collects in place), 40 times the size of the list it holds.
pub fn ranked(mut resources: Vec<Ranked>) -> Vec<Ranked> {
    resources.sort_by(|a, b| {
        a.resource
            .name
            .cmp(&b.resource.name)
            .then(a.rank.cmp(&b.rank))
    });
    resources.dedup_by(|a, b| a.resource.name == b.resource.name);
    resources.shrink_to_fit();
    resources
}

/// Two lists from [`ranked`] as one list of resources: sorted by name, the lowest rank of
/// each name kept (`shared`'s of equal ranks). Linear.
pub fn merge(shared: &[Ranked], own: &[Ranked]) -> Vec<SharedResource> {
    let mut out = Vec::with_capacity(shared.len() + own.len());
    let (mut a, mut b) = (shared.iter().peekable(), own.iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (Some(x), Some(y)) => match x.resource.name.cmp(&y.resource.name) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next(), b.next());
                    if y.is_some_and(|y| x.is_some_and(|x| y.rank < x.rank)) {
                        y
                    } else {
                        x
                    }
                }
            },
        };
        out.extend(next.map(|r| r.resource.clone()));
    }
    out
}

fn rank_all(clusters: Vec<(Cluster, u8)>) -> Vec<Ranked> {
    ranked(
        clusters
            .into_iter()
            .map(|(c, rank)| Ranked {
                resource: Resource::encode(c.name.clone(), &c),
                rank,
            })
            .collect(),
    )
}

/// The clusters of `proxy` that proxies of one namespace and Sidecar scope share: outbound
/// ones for every visible service port and subset, `InboundPassthroughClusterIpv4` when its
/// traffic is captured, the black hole, the passthrough, Mixer's and the tracing collector's
/// (`zipkin`). They read the proxy's node type, namespace, Sidecar resource, traffic capture
/// and certificate files (ISTIO_MUTUAL upstream TLS), never its labels or instances.
pub fn outbound_clusters(ctx: &PushContext, proxy: &Proxy) -> Vec<Ranked> {
    let mut out = Vec::new();
    for svc in ctx.services_for_proxy(proxy) {
        let dr = ctx.destination_rule(&proxy.namespace, svc);
        for port in &svc.ports {
            let policy = dr.map(|dr| merged_policy(&dr.spec, None, port.number));
            out.push(outbound(ctx, proxy, svc, port, None, policy.as_ref()));
            if let Some(dr) = dr {
                for subset in &dr.spec.subsets {
                    let policy = merged_policy(&dr.spec, Some(subset), port.number);
                    out.push(outbound(
                        ctx,
                        proxy,
                        svc,
                        port,
                        Some(&subset.name),
                        Some(&policy),
                    ));
                }
            }
        }
    }
    // Ranks: the order of a proxy's whole list (outbound 0, its own 1 and 3, these 2, 4-6).
    let mut ranks = vec![0; out.len()];
    if proxy.node_type == NodeType::Sidecar && proxy.captures_traffic() {
        out.push(inbound_passthrough(ctx));
        ranks.push(2);
    }
    out.push(black_hole(ctx));
    out.push(passthrough(ctx));
    ranks.extend([4, 5]);
    // Mixer's clusters unless one of that name exists: never an inbound one (`inbound|`).
    let mixer = super::mixer::clusters(ctx, &out);
    ranks.extend(mixer.iter().map(|_| 6));
    out.extend(mixer);
    // The tracing collector's (`zipkin`), when the mesh traces.
    if let Some(zipkin) = super::tracing::cluster(ctx) {
        out.push(zipkin);
        ranks.push(7);
    }
    let out = out.into_iter().zip(ranks).collect();
    rank_all(out)
}

/// The clusters of `proxy` alone: inbound ones for its service instances (from 127.0.0.6
/// when its traffic is captured) and for its Sidecar resource's ingress listeners.
pub fn own_clusters(ctx: &PushContext, proxy: &Proxy) -> Vec<Ranked> {
    let mut out = Vec::new();
    let captured = proxy.node_type == NodeType::Sidecar && proxy.captures_traffic();
    let mut seen = std::collections::BTreeSet::new();
    for (svc, port, ep) in proxy
        .ips
        .iter()
        .flat_map(|ip| ctx.registry.instances_at(ip))
    {
        let name = inbound_cluster_name(port.number, &svc.hostname);
        if seen.insert(name.clone()) {
            let mut c = inbound(ctx, &name, &ep.address, ep.port, port);
            if captured {
                // Envoy's connection to the workload's own address would be captured again
                // (iptables sends the proxy's connections to its pod's address to the
                // inbound port); from the passthrough source it is left alone.
                c.upstream_bind_config = passthrough_bind(&ep.address);
            }
            out.push((c, 1));
        }
    }
    for ing in sidecar_ingress(ctx, proxy) {
        let port = Port {
            name: ing.port.name.clone().unwrap_or_default(),
            number: ing.port.number,
            protocol: Protocol::parse(ing.port.protocol.as_deref().unwrap_or("TCP")),
            target_port: None,
        };
        out.push((
            inbound(ctx, &ing.cluster, &ing.address, ing.target, &port),
            3,
        ));
    }
    rank_all(out)
}

/// An ingress listener of the proxy's Sidecar resource with a `defaultEndpoint` on a TCP
/// address: where its traffic goes.
#[derive(Debug)]
pub struct SidecarIngress<'a> {
    pub port: &'a mesh_proto::networking::SidecarPort,
    /// Address the listener binds (`bind`, else all addresses).
    pub bind: String,
    /// The `inbound|PORT||` cluster it forwards to.
    pub cluster: String,
    pub address: String,
    pub target: u32,
}

/// The Sidecar resource's ingress listeners with a `defaultEndpoint` of `IP:PORT`.
pub fn sidecar_ingress<'a>(ctx: &'a PushContext, proxy: &Proxy) -> Vec<SidecarIngress<'a>> {
    let Some(sc) = ctx.sidecar_for(proxy) else {
        return Vec::new();
    };
    sc.spec
        .ingress
        .iter()
        .filter_map(|ing| {
            let endpoint = ing.default_endpoint.as_deref()?;
            let (ip, port) = endpoint.rsplit_once(':')?;
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            Some(SidecarIngress {
                port: &ing.port,
                bind: ing.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
                cluster: format!("inbound|{}||", ing.port.number),
                address: ip.to_string(),
                target: port.parse().ok()?,
            })
        })
        .collect()
}

fn base(ctx: &PushContext, name: String) -> Cluster {
    Cluster {
        name,
        connect_timeout: Some(duration(ctx.mesh.connect_timeout.as_std())),
        ..Default::default()
    }
}

fn outbound(
    ctx: &PushContext,
    proxy: &Proxy,
    svc: &Service,
    port: &Port,
    subset: Option<&str>,
    policy: Option<&Policy>,
) -> Cluster {
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
            // Istio's single-stack default: IPv4 only.
            c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
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
            // Without iptables (the http_proxy listener) there is no original destination to
            // keep, so a client names the pod with `x-envoy-original-dst-host: IP:PORT`; a
            // captured connection without the header still goes where it was headed.
            c.lb_config = Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
                use_http_header: port.protocol.is_http(),
                ..Default::default()
            }));
        }
    }
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![default_thresholds()],
        ..Default::default()
    });
    let default_policy = Policy::default();
    apply_policy(&mut c, policy.unwrap_or(&default_policy), port);
    if let Some(tls) = policy
        .and_then(|p| p.tls.as_ref())
        .filter(|t| t.mode == Some(ClientTlsMode::IstioMutual))
    {
        let sni = tls.sni.clone().unwrap_or_else(|| {
            super::mtls::istio_sni(port.number, subset.unwrap_or(""), &svc.hostname)
        });
        let sans = super::mtls::destination_identities(ctx, svc, port.number, tls);
        c.transport_socket = Some(super::mtls::istio_mutual_upstream(
            proxy,
            sni,
            &sans,
            port.protocol.is_http2(),
        ));
    }
    if super::mixer::is_mixer(ctx, &svc.hostname, port.number) {
        // Mixer speaks gRPC whatever its port is named.
        set_http2(&mut c);
    }
    c.metadata = super::mixer::cluster_metadata(ctx, &svc.hostname);
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

/// The bind config of a connection to the proxy's own workload at `address`: from the
/// passthrough source of its IP family (none for an address that is not an IP).
fn passthrough_bind(address: &str) -> Option<BindConfig> {
    let source = match address.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => INBOUND_PASSTHROUGH_SOURCE,
        std::net::IpAddr::V6(_) => INBOUND_PASSTHROUGH_SOURCE_V6,
    };
    Some(BindConfig {
        source_address: Some(SocketAddress {
            address: source.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Istio's `InboundPassthroughClusterIpv4`: captured inbound connections to ports no service
/// declares go to where the client meant, the workload's own address and port.
fn inbound_passthrough(ctx: &PushContext) -> Cluster {
    let mut c = passthrough(ctx);
    c.name = INBOUND_PASSTHROUGH.to_string();
    c.upstream_bind_config = passthrough_bind(INBOUND_PASSTHROUGH_SOURCE);
    c
}

/// A cluster of one address: STATIC for an IP, STRICT_DNS (IPv4) for a name; the mesh's
/// connect timeout. What Pilot writes for the services MeshConfig names by address (Mixer's,
/// the tracing collector).
pub fn address_cluster(ctx: &PushContext, name: &str, host: &str, port: u32) -> Cluster {
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration(ctx.mesh.connect_timeout.as_std())),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(if is_ip {
            DiscoveryType::Static as i32
        } else {
            DiscoveryType::StrictDns as i32
        })),
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(host, port, None)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
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

pub(super) fn set_http2(c: &mut Cluster) {
    set_http_options(c, true, false, None);
}

/// Sets the cluster's upstream HTTP options: the protocol (HTTP/2, the client's, or HTTP/1.1)
/// and the common connection options.
fn set_http_options(
    c: &mut Cluster,
    http2: bool,
    use_client_protocol: bool,
    common: Option<CoreHttpProtocolOptions>,
) {
    let protocol = if use_client_protocol {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(Http1ProtocolOptions::default()),
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..Default::default()
        })
    } else {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(if http2 {
                explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )
            } else {
                explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                )
            }),
        })
    };
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(protocol),
        common_http_protocol_options: common,
        ..Default::default()
    };
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&opts));
}

// === traffic policy ===

/// A traffic policy merged for one subset and port.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

// === impl Policy ===

impl Policy {
    fn overlay(&mut self, p: &TrafficPolicy, port: u32) {
        self.overlay_fields(
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.tls.as_ref(),
        );
        let port_level = p
            .port_level_settings
            .iter()
            .find(|pl| pl.port.as_ref().and_then(|s| s.number) == Some(port));
        if let Some(pl) = port_level {
            self.overlay_fields(
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
                pl.tls.as_ref(),
            );
        }
    }

    fn overlay_fields(
        &mut self,
        lb: Option<&LoadBalancerSettings>,
        pool: Option<&ConnectionPoolSettings>,
        outlier: Option<&OutlierDetection>,
        tls: Option<&ClientTlsSettings>,
    ) {
        if let Some(v) = lb {
            self.load_balancer = Some(v.clone());
        }
        if let Some(v) = pool {
            self.connection_pool = Some(v.clone());
        }
        if let Some(v) = outlier {
            self.outlier_detection = Some(v.clone());
        }
        if let Some(v) = tls {
            self.tls = Some(v.clone());
        }
    }
}

/// The policy of `dr` for `subset` (or the whole host) on `port`.
pub fn merged_policy(dr: &DestinationRule, subset: Option<&Subset>, port: u32) -> Policy {
    let mut policy = Policy::default();
    if let Some(p) = &dr.traffic_policy {
        policy.overlay(p, port);
    }
    if let Some(p) = subset.and_then(|s| s.traffic_policy.as_ref()) {
        policy.overlay(p, port);
    }
    policy
}

/// The route hash policy for traffic to `svc`'s `subset` on `port`: what consistent hashing
/// hashes, from the DestinationRule that applies to `proxy` (empty without consistent hash).
pub fn hash_policy(
    ctx: &PushContext,
    proxy: &Proxy,
    svc: &Service,
    subset: &str,
    port: u32,
) -> Vec<HashPolicy> {
    let Some(dr) = ctx.destination_rule(&proxy.namespace, svc) else {
        return Vec::new();
    };
    let subset = dr.spec.subsets.iter().find(|s| s.name == subset);
    let policy = merged_policy(&dr.spec, subset, port);
    let Some(ch) = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
    else {
        return Vec::new();
    };
    let specifier = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.as_ref().map(|t| duration(t.as_std())),
            path: c.path.clone().unwrap_or_default(),
            attributes: c
                .attributes
                .iter()
                .map(|a| hash_policy::CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone().unwrap_or_default(),
                })
                .collect(),
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: q.clone() })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }]
}

/// Istio's default circuit breakers: no limits (Envoy's defaults of 1024 would cap traffic).
fn default_thresholds() -> Thresholds {
    let max = Some(UInt32Value { value: u32::MAX });
    Thresholds {
        max_connections: max,
        max_pending_requests: max,
        max_requests: max,
        max_retries: max,
        track_remaining: true,
        ..Default::default()
    }
}

fn positive(v: Option<i32>) -> Option<UInt32Value> {
    v.filter(|v| *v > 0)
        .map(|v| UInt32Value { value: v as u32 })
}

fn apply_policy(c: &mut Cluster, policy: &Policy, port: &Port) {
    if let Some(lb) = &policy.load_balancer {
        apply_lb(c, lb);
    }
    let mut http_common = None;
    let mut use_client_protocol = false;
    let mut http2 = port.protocol.is_http2();
    if let Some(pool) = &policy.connection_pool {
        let mut t = default_thresholds();
        if let Some(tcp) = &pool.tcp {
            if let Some(v) = positive(tcp.max_connections) {
                t.max_connections = Some(v);
            }
            if let Some(ct) = &tcp.connect_timeout {
                c.connect_timeout = Some(duration(ct.as_std()));
            }
            if let Some(ka) = &tcp.tcp_keepalive {
                c.upstream_connection_options = Some(UpstreamConnectionOptions {
                    tcp_keepalive: Some(TcpKeepalive {
                        keepalive_probes: ka.probes.map(|value| UInt32Value { value }),
                        keepalive_time: ka.time.as_ref().map(|d| UInt32Value {
                            value: d.as_std().as_secs() as u32,
                        }),
                        keepalive_interval: ka.interval.as_ref().map(|d| UInt32Value {
                            value: d.as_std().as_secs() as u32,
                        }),
                    }),
                    ..Default::default()
                });
            }
            if let Some(d) = &tcp.max_connection_duration {
                http_common
                    .get_or_insert_with(CoreHttpProtocolOptions::default)
                    .max_connection_duration = Some(duration(d.as_std()));
            }
            if let Some(d) = &tcp.idle_timeout {
                http_common
                    .get_or_insert_with(CoreHttpProtocolOptions::default)
                    .idle_timeout = Some(duration(d.as_std()));
            }
        }
        if let Some(http) = &pool.http {
            if let Some(v) = positive(http.http1_max_pending_requests) {
                t.max_pending_requests = Some(v);
            }
            if let Some(v) = positive(http.http2_max_requests) {
                t.max_requests = Some(v);
            }
            if let Some(v) = positive(http.max_retries) {
                t.max_retries = Some(v);
            }
            if let Some(v) = positive(http.max_requests_per_connection) {
                http_common
                    .get_or_insert_with(CoreHttpProtocolOptions::default)
                    .max_requests_per_connection = Some(v);
            }
            if let Some(d) = &http.idle_timeout {
                http_common
                    .get_or_insert_with(CoreHttpProtocolOptions::default)
                    .idle_timeout = Some(duration(d.as_std()));
            }
            if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && port.protocol.is_http() {
                http2 = true;
            }
            use_client_protocol = http.use_client_protocol == Some(true);
        }
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![t],
            ..Default::default()
        });
    }
    if http2 || use_client_protocol || (http_common.is_some() && port.protocol.is_http()) {
        set_http_options(c, http2, use_client_protocol, http_common);
    }
    if let Some(od) = &policy.outlier_detection {
        apply_outlier(c, od);
    }
    if let Some(tls) = &policy.tls {
        apply_tls(c, tls);
    }
}

fn apply_lb(c: &mut Cluster, lb: &LoadBalancerSettings) {
    if c.lb_policy == LbPolicy::ClusterProvided as i32 {
        return;
    }
    if let Some(ch) = &lb.consistent_hash {
        if let Some(m) = &ch.maglev {
            c.lb_policy = LbPolicy::Maglev as i32;
            c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: m.table_size.map(|value| UInt64Value { value }),
            }));
        } else {
            let size = ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .unwrap_or(1024);
            c.lb_policy = LbPolicy::RingHash as i32;
            c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: size }),
                ..Default::default()
            }));
        }
        return;
    }
    match lb.simple {
        Some(SimpleLb::RoundRobin) => c.lb_policy = LbPolicy::RoundRobin as i32,
        Some(SimpleLb::LeastConn | SimpleLb::LeastRequest) => {
            c.lb_policy = LbPolicy::LeastRequest as i32
        }
        Some(SimpleLb::Random) => c.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::Passthrough) => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.eds_cluster_config = None;
            c.load_assignment = None;
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
        Some(SimpleLb::Unspecified) | None => {}
    }
}

/// Istio's outlier detection: consecutive 5xx and gateway errors eject, success-rate
/// ejection is off, and `minHealthPercent` is the panic threshold (0 when not set).
fn apply_outlier(c: &mut Cluster, od: &OutlierDetection) {
    let pct = |v: u32| Some(UInt32Value { value: v });
    let mut out = EnvoyOutlierDetection {
        enforcing_success_rate: pct(0),
        ..Default::default()
    };
    let five_xx = od
        .consecutive_5xx_errors
        .or(od.consecutive_errors.filter(|v| *v > 0).map(|v| v as u32));
    match five_xx {
        Some(v) => {
            out.consecutive_5xx = pct(v);
            out.enforcing_consecutive_5xx = pct(if v > 0 { 100 } else { 0 });
        }
        None if od.consecutive_gateway_errors.is_some() => {
            out.enforcing_consecutive_5xx = pct(0);
        }
        None => {}
    }
    if let Some(v) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = pct(v);
        out.enforcing_consecutive_gateway_failure = pct(if v > 0 { 100 } else { 0 });
    }
    if od.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = od.consecutive_local_origin_failures {
            out.consecutive_local_origin_failure = pct(v);
            out.enforcing_consecutive_local_origin_failure = pct(100);
        }
    }
    if let Some(i) = &od.interval {
        out.interval = Some(duration(i.as_std()));
    }
    if let Some(b) = &od.base_ejection_time {
        out.base_ejection_time = Some(duration(b.as_std()));
    }
    if let Some(m) = od.max_ejection_percent.filter(|m| *m >= 0) {
        out.max_ejection_percent = pct(m.min(100) as u32);
    }
    c.outlier_detection = Some(out);
    let min_health = od.min_health_percent.unwrap_or(0).clamp(0, 100);
    c.common_lb_config = Some(CommonLbConfig {
        healthy_panic_threshold: Some(EnvoyPercent {
            value: f64::from(min_health),
        }),
        ..Default::default()
    });
}

/// Client TLS from files (SIMPLE, MUTUAL). ISTIO_MUTUAL, which needs the proxy, is set by
/// [`outbound`] (see [`super::mtls`]).
fn apply_tls(c: &mut Cluster, tls: &ClientTlsSettings) {
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    if !matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
        return;
    }
    let file = |f: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(f.to_string())),
        ..Default::default()
    };
    let mut common = CommonTlsContext::default();
    if let Some(ca) = tls
        .ca_certificates
        .as_deref()
        .filter(|_| tls.insecure_skip_verify != Some(true))
    {
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(file(ca)),
                ..Default::default()
            },
        ));
    }
    if mode == ClientTlsMode::Mutual
        && let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key)
    {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        }];
    }
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    c.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    });
}
