//! Gateways: the listeners and routes of a `router` proxy (ingress or egress gateway), from
//! the Gateway resources whose selector picks it and the VirtualServices bound to them.
//!
//! - One bound listener `0.0.0.0_PORT` per server port.
//! - Plain HTTP servers share the route configuration `http.PORT`; a server with
//!   `tls.httpsRedirect` makes its virtual hosts answer with a redirect to HTTPS.
//! - HTTPS servers (TLS SIMPLE or MUTUAL, certificates from files) get a filter chain each,
//!   matched by SNI, with the route configuration `https.PORT.INDEX.GATEWAY.NAMESPACE`.
//! - TLS PASSTHROUGH servers route by SNI to the `tls` routes of bound VirtualServices.
//! - Conflicts, as Istio resolves them: a TLS server (HTTPS or passthrough) naming a host an
//!   earlier server on the port already has is skipped whole (logged); within a listener,
//!   each server name is matched by the first chain naming it only, since Envoy refuses a
//!   listener whose filter chains match alike.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, virtual_host::TlsRequirementType,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    common_tls_context::ValidationContextType,
};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_proto::networking::{Gateway, Server, ServerTlsMode, VirtualService};

use super::lds::{http_chain, rds, strip_host_port, tcp_chain};
use super::mixer::{self, Side};
use super::route::virtual_service_routes;
use super::util::{UniqueChains, socket_address};
use crate::model::push_context::{Named, host_matches};
use crate::model::service::outbound_cluster_name;
use crate::model::{Port, Protocol, Proxy, PushContext};
use crate::xds::resource::any;

/// A server of a gateway that applies to the proxy, with where it comes from.
struct GatewayServer<'a> {
    /// `namespace/name` of the gateway.
    gateway: String,
    gateway_name: &'a str,
    gateway_namespace: &'a str,
    index: usize,
    server: &'a Server,
}

// === impl GatewayServer ===

impl GatewayServer<'_> {
    fn mode(&self) -> Option<ServerTlsMode> {
        let tls = self.server.tls.as_ref()?;
        if tls.https_redirect == Some(true) && tls.mode.is_none() {
            return None;
        }
        Some(tls.mode.unwrap_or(ServerTlsMode::Simple))
    }

    /// Whether the server terminates HTTP (plain, or after terminating TLS).
    fn is_http(&self) -> bool {
        let protocol = Protocol::parse(&self.server.port.protocol);
        protocol.is_http() || (protocol == Protocol::Https && self.terminates_tls())
    }

    fn terminates_tls(&self) -> bool {
        matches!(
            self.mode(),
            Some(ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
        )
    }

    fn route_name(&self) -> String {
        if self.terminates_tls() {
            format!(
                "https.{}.{}.{}.{}",
                self.server.port.number, self.index, self.gateway_name, self.gateway_namespace
            )
        } else {
            format!("http.{}", self.server.port.number)
        }
    }

    /// The server's hosts without their namespace part.
    fn hosts(&self) -> impl Iterator<Item = &str> {
        self.server
            .hosts
            .iter()
            .map(|h| h.split_once('/').map_or(h.as_str(), |(_, host)| host))
    }
}

fn servers<'a>(ctx: &'a PushContext, proxy: &'a Proxy) -> Vec<GatewayServer<'a>> {
    let mut out = Vec::new();
    for gw in ctx.gateways_for(proxy) {
        let spec: &Gateway = &gw.spec;
        for (index, server) in spec.servers.iter().enumerate() {
            out.push(GatewayServer {
                gateway: format!("{}/{}", gw.namespace, gw.name),
                gateway_name: &gw.name,
                gateway_namespace: &gw.namespace,
                index,
                server,
            });
        }
    }
    out
}

/// The listeners of a router proxy.
pub fn listeners(ctx: &PushContext, proxy: &Proxy) -> Vec<Listener> {
    let mut by_port: BTreeMap<u32, Vec<GatewayServer<'_>>> = BTreeMap::new();
    for s in servers(ctx, proxy) {
        by_port.entry(s.server.port.number).or_default().push(s);
    }
    let mut out = Vec::new();
    for (port, servers) in by_port {
        let mut chains = UniqueChains::default();
        let mut plain_http = false;
        let mut sni = false;
        // Istio's rule: a TLS server naming a host that an earlier server on the port
        // already has is skipped whole (the first keeps the port's host).
        let mut tls_hosts: BTreeSet<&str> = BTreeSet::new();
        for s in &servers {
            if s.terminates_tls() || s.mode() == Some(ServerTlsMode::Passthrough) {
                let duplicates: Vec<&str> = s.hosts().filter(|h| tls_hosts.contains(h)).collect();
                if !duplicates.is_empty() {
                    tracing::warn!(
                        gateway = %s.gateway,
                        server = s.index,
                        port,
                        hosts = ?duplicates,
                        "skipping a gateway server: another server on the port has its TLS hosts"
                    );
                    continue;
                }
                tls_hosts.extend(s.hosts());
            }
            if s.terminates_tls() {
                let mut chain = http_chain(
                    &format!("outbound_0.0.0.0_{port}"),
                    rds(&s.route_name()),
                    super::tracing::hcm_tracing(ctx, proxy, Side::Gateway),
                );
                strip_host_port(&mut chain);
                mixer::apply(ctx, proxy, &mut chain, Side::Gateway, None);
                super::authz::apply_http(ctx, proxy, &mut chain, None);
                super::authn::apply(ctx, proxy, &mut chain, 0);
                chain.filter_chain_match = Some(sni_match(s.hosts()));
                chain.transport_socket = downstream_tls(s);
                chains.add(chain, &s.gateway);
                sni = true;
            } else if s.is_http() {
                plain_http = true;
            } else if s.mode() == Some(ServerTlsMode::Passthrough) {
                for chain in passthrough_chains(ctx, proxy, s) {
                    chains.add(chain, &s.gateway);
                }
                sni = true;
            }
        }
        if plain_http {
            let mut chain = http_chain(
                &format!("outbound_0.0.0.0_{port}"),
                rds(&format!("http.{port}")),
                super::tracing::hcm_tracing(ctx, proxy, Side::Gateway),
            );
            strip_host_port(&mut chain);
            mixer::apply(ctx, proxy, &mut chain, Side::Gateway, None);
            super::authz::apply_http(ctx, proxy, &mut chain, None);
            super::authn::apply(ctx, proxy, &mut chain, 0);
            chains.add(chain, "http");
        }
        let chains = chains.into_chains();
        if chains.is_empty() {
            continue;
        }
        let bind = servers
            .iter()
            .find_map(|s| s.server.bind.clone())
            .unwrap_or_else(|| "0.0.0.0".into());
        out.push(Listener {
            name: format!("{bind}_{port}"),
            address: Some(socket_address(&bind, port)),
            filter_chains: chains,
            listener_filters: if sni {
                vec![ListenerFilter {
                    name: "envoy.filters.listener.tls_inspector".into(),
                    config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                        &TlsInspector::default(),
                    ))),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        });
    }
    out
}

fn sni_match<'a>(hosts: impl Iterator<Item = &'a str>) -> FilterChainMatch {
    let mut names: Vec<String> = hosts.filter(|h| *h != "*").map(str::to_string).collect();
    names.sort();
    names.dedup();
    FilterChainMatch {
        server_names: names,
        transport_protocol: "tls".into(),
        ..Default::default()
    }
}

fn downstream_tls(s: &GatewayServer<'_>) -> Option<TransportSocket> {
    let tls = s.server.tls.as_ref()?;
    let file = |f: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(f.to_string())),
        ..Default::default()
    };
    let mut common = CommonTlsContext {
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        ..Default::default()
    };
    if let (Some(cert), Some(key)) = (&tls.server_certificate, &tls.private_key) {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        }];
    }
    let mutual = matches!(
        s.mode(),
        Some(ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
    );
    if mutual && let Some(ca) = &tls.ca_certificates {
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(file(ca)),
                ..Default::default()
            },
        ));
    }
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: s.mode() == Some(ServerTlsMode::Mutual),
        }),
        ..Default::default()
    };
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any(&ctx),
            ),
        ),
    })
}

/// TLS passthrough: one chain per SNI route of the bound VirtualServices, to its first
/// destination.
fn passthrough_chains(ctx: &PushContext, proxy: &Proxy, s: &GatewayServer<'_>) -> Vec<FilterChain> {
    let mut out = Vec::new();
    for (_, vs) in ctx.gateway_virtual_services(&s.gateway) {
        for tls in &vs.spec.tls {
            let Some(dest) = tls.route.first() else {
                continue;
            };
            let host = ctx.resolve(&dest.destination.host, &vs.namespace);
            let port = dest
                .destination
                .port
                .as_ref()
                .and_then(|p| p.number)
                .unwrap_or(s.server.port.number);
            let cluster = outbound_cluster_name(
                port,
                dest.destination.subset.as_deref().unwrap_or(""),
                &host,
            );
            let snis: Vec<&str> = tls
                .matches
                .iter()
                .filter(|m| m.port.is_none_or(|p| p == s.server.port.number))
                .flat_map(|m| m.sni_hosts.iter().map(String::as_str))
                .filter(|h| {
                    s.hosts()
                        .any(|sh| host_matches(sh, h) || host_matches(h, sh))
                })
                .collect();
            if snis.is_empty() {
                continue;
            }
            let mut chain = tcp_chain(&cluster, &cluster);
            mixer::apply_tcp(ctx, proxy, &mut chain, Side::Gateway, None);
            super::authz::apply_tcp(ctx, proxy, &mut chain, None);
            chain.filter_chain_match = Some(sni_match(snis.into_iter()));
            out.push(chain);
        }
    }
    out
}

/// The route configuration `name` of a router proxy, if it has one.
pub fn route_config(ctx: &PushContext, proxy: &Proxy, name: &str) -> Option<RouteConfiguration> {
    let servers: Vec<GatewayServer<'_>> = servers(ctx, proxy)
        .into_iter()
        .filter(|s| s.is_http() && s.route_name() == name)
        .collect();
    if servers.is_empty() {
        return None;
    }
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for s in &servers {
        let port = Port {
            name: s.server.port.name.clone(),
            number: s.server.port.number,
            protocol: Protocol::Http,
            target_port: None,
        };
        let redirect = s
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.https_redirect == Some(true));
        let mut seen = BTreeSet::new();
        for (hosts, vs) in ctx.gateway_virtual_services(&s.gateway) {
            if !seen.insert((&vs.namespace, &vs.name)) {
                continue;
            }
            let mut routes = gateway_routes(ctx, proxy, vs, &s.gateway, &port);
            mixer::annotate_routes(ctx, &mut routes);
            if routes.is_empty() {
                // TLS/TCP-only VirtualServices take no HTTP hosts.
                continue;
            }
            for host in hosts {
                if !s
                    .hosts()
                    .any(|sh| host_matches(sh, host) || host_matches(host, sh))
                {
                    continue;
                }
                let key = format!("{host}:{}", port.number);
                if vhosts.contains_key(&key) {
                    continue;
                }
                // The listener strips the port from Host before matching.
                let domains = vec![host.clone()];
                vhosts.insert(
                    key.clone(),
                    VirtualHost {
                        name: key,
                        domains,
                        routes: routes.clone(),
                        require_tls: if redirect {
                            TlsRequirementType::All as i32
                        } else {
                            TlsRequirementType::None as i32
                        },
                        ..Default::default()
                    },
                );
            }
        }
    }
    // Wildcard domains last, as Envoy picks the most specific anyway; sorted for stability.
    let mut virtual_hosts: Vec<VirtualHost> = vhosts.into_values().collect();
    virtual_hosts.sort_by_key(|v| (v.domains.iter().any(|d| d == "*"), v.name.clone()));
    let mut domains = BTreeSet::new();
    for vh in &mut virtual_hosts {
        vh.domains.retain(|d| domains.insert(d.clone()));
    }
    virtual_hosts.retain(|vh| !vh.domains.is_empty());
    Some(RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    })
}

fn gateway_routes(
    ctx: &PushContext,
    proxy: &Proxy,
    vs: &Named<VirtualService>,
    gateway: &str,
    port: &Port,
) -> Vec<envoy_types::pb::envoy::config::route::v3::Route> {
    virtual_service_routes(ctx, proxy, &vs.namespace, &vs.name, &vs.spec, port, gateway)
}
