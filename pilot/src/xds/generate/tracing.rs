//! Tracing: the HTTP connection managers of sidecars (inbound and outbound) and gateways
//! report spans through Envoy's Zipkin tracer (`envoy.tracers.zipkin`) when MeshConfig's
//! `enableTracing` is on (the default), to `defaultConfig.tracing.zipkin.address` (default
//! `zipkin.istio-system:9411`), as Istio's proxies do:
//!
//! - Zipkin v2 JSON to `/api/v2/spans`, 128-bit trace ids, and no shared span context: the
//!   server span of a hop is a child of the caller's client span, not the same span.
//! - `random_sampling` is `defaultConfig.tracing.sampling` (percent, default 1); a client
//!   decision (`x-b3-sampled`, `x-client-trace-id`) wins, as Envoy lets it.
//! - Spans carry Envoy's own tags (`node_id`, `upstream_cluster`, `http.url` up to
//!   `maxPathTagLength`, ...), Istio's `istio.namespace` and `istio.mesh_id` everywhere,
//!   `istio.canonical_service` and `istio.canonical_revision` on inbound and gateway spans
//!   (from the workload's labels; an outbound listener is shared by the workloads of a
//!   namespace, so it cannot name one), and
//!   `customTags` (literal, proxy environment variable, request header).
//! - Whether a span is the server or the client side follows the listener's traffic
//!   direction: sidecars' outbound listeners are `OUTBOUND` (client spans), inbound ones
//!   `INBOUND` (server spans); a gateway's server span is its only one.
//!
//! The collector's cluster is `zipkin` (Istio's bootstrap name for it), served over CDS
//! rather than put in the bootstrap: `pilot bootstrap` and the agent do not read MeshConfig,
//! and over CDS an edited address or `enableTracing` reaches running proxies without a
//! restart. It is STATIC for an IP and STRICT_DNS for a name, and does not hold up the
//! proxy's start while the name resolves (`wait_for_warm_on_init: false`): a mesh without a
//! collector loses the spans, never traffic.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::trace::v3::{
    ZipkinConfig, tracing::Http as TracingHttp, tracing::http::ConfigType as TracerConfig,
    zipkin_config::CollectorEndpointVersion,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::mixer::Side;
use crate::mesh::Tracing;
use crate::model::{Proxy, PushContext};
use crate::xds::resource::any;

/// The collector's cluster (Istio's name).
pub const ZIPKIN_CLUSTER: &str = "zipkin";
/// Envoy's Zipkin tracer.
const ZIPKIN_TRACER: &str = "envoy.tracers.zipkin";
/// Where a Zipkin collector takes v2 spans.
pub const ZIPKIN_ENDPOINT: &str = "/api/v2/spans";

/// The collector's cluster, when proxies trace.
pub fn cluster(ctx: &PushContext) -> Option<Cluster> {
    let t = ctx.mesh.tracing()?;
    let mut c = super::cds::address_cluster(ctx, ZIPKIN_CLUSTER, &t.host, t.port);
    if t.host.parse::<std::net::IpAddr>().is_err() {
        // Spans may wait for the name to resolve; the proxy's start does not.
        c.wait_for_warm_on_init = Some(BoolValue { value: false });
    }
    Some(c)
}

/// The `tracing` of an HTTP connection manager on `side` of `proxy`, when proxies trace.
pub fn hcm_tracing(ctx: &PushContext, proxy: &Proxy, side: Side) -> Option<HcmTracing> {
    let t = ctx.mesh.tracing()?;
    let zipkin = ZipkinConfig {
        collector_cluster: ZIPKIN_CLUSTER.into(),
        collector_endpoint: ZIPKIN_ENDPOINT.into(),
        collector_endpoint_version: CollectorEndpointVersion::HttpJson as i32,
        collector_hostname: t.host.clone(),
        trace_id_128bit: true,
        shared_span_context: Some(BoolValue { value: false }),
        ..Default::default()
    };
    Some(HcmTracing {
        random_sampling: Some(Percent { value: t.sampling }),
        max_path_tag_length: Some(UInt32Value {
            value: t.max_path_tag_length,
        }),
        custom_tags: custom_tags(ctx, proxy, side, &t),
        provider: Some(TracingHttp {
            name: ZIPKIN_TRACER.into(),
            config_type: Some(TracerConfig::TypedConfig(any(&zipkin))),
        }),
        ..Default::default()
    })
}

/// Istio's tags for `side` of `proxy`, then the mesh's `customTags`, sorted by tag.
fn custom_tags(ctx: &PushContext, proxy: &Proxy, side: Side, t: &Tracing) -> Vec<CustomTag> {
    let literal = |tag: &str, value: &str| CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.into(),
        })),
    };
    let mut out = vec![
        literal("istio.mesh_id", &ctx.mesh.trust_domain),
        literal("istio.namespace", &proxy.namespace),
    ];
    if side != Side::Outbound
        && let Some(service) = canonical_service(proxy)
    {
        out.push(literal("istio.canonical_service", &service));
        out.push(literal(
            "istio.canonical_revision",
            &canonical_revision(proxy),
        ));
    }
    for (name, tag) in &t.custom_tags {
        let r#type = if let Some(l) = &tag.literal {
            custom_tag::Type::Literal(custom_tag::Literal {
                value: l.value.clone(),
            })
        } else if let Some(e) = &tag.environment {
            custom_tag::Type::Environment(custom_tag::Environment {
                name: e.name.clone(),
                default_value: e.default_value.clone(),
            })
        } else if let Some(h) = &tag.header {
            custom_tag::Type::RequestHeader(custom_tag::Header {
                name: h.name.clone(),
                default_value: h.default_value.clone(),
            })
        } else {
            continue;
        };
        // A custom tag of an Istio tag's name replaces it.
        out.retain(|c| c.tag != *name);
        out.push(CustomTag {
            tag: name.clone(),
            r#type: Some(r#type),
        });
    }
    out.sort_by(|a, b| a.tag.cmp(&b.tag));
    out
}

/// Istio's canonical service of a workload: its `service.istio.io/canonical-name` label,
/// else `app.kubernetes.io/name`, else `app`; for a gateway, else its pod name without the
/// last part. A sidecar without such a label has none: its inbound listeners are shared by
/// the proxies with its labels and instances, whatever their pod names.
pub fn canonical_service(proxy: &Proxy) -> Option<String> {
    for label in [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ] {
        if let Some(v) = proxy.labels.get(label).filter(|v| !v.is_empty()) {
            return Some(v.clone());
        }
    }
    if proxy.node_type != crate::model::NodeType::Router {
        return None;
    }
    let pod = proxy
        .id
        .rsplit_once('.')
        .map_or(proxy.id.as_str(), |(pod, _)| pod);
    Some(
        pod.rsplit_once('-')
            .map_or(pod, |(workload, _)| workload)
            .to_string(),
    )
}

/// Istio's canonical revision: `service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
pub fn canonical_revision(proxy: &Proxy) -> String {
    for label in [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ] {
        if let Some(v) = proxy.labels.get(label).filter(|v| !v.is_empty()) {
            return v.clone();
        }
    }
    "latest".into()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;

    use std::collections::BTreeMap;

    use envoy_types::pb::envoy::config::core::v3::TrafficDirection;

    use super::*;
    use crate::mesh::MeshConfig;
    use crate::testutil::{TestConfig, mk_router, mk_sidecar};
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };

    const REVIEWS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.9, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";

    fn ctx(mesh: &str) -> PushContext {
        TestConfig::from_yaml(REVIEWS)
            .mesh(MeshConfig::parse(Path::new("mesh"), mesh).unwrap())
            .push_context()
    }

    /// Each listener's direction and its HTTP connection managers.
    fn hcms(ctx: &PushContext, proxy: &Proxy) -> Vec<(String, i32, HttpConnectionManager)> {
        let mut out = Vec::new();
        for r in crate::xds::generate::lds::listeners(ctx, proxy) {
            let l = Listener::decode(&r.any.value[..]).unwrap();
            for chain in &l.filter_chains {
                for f in &chain.filters {
                    if let Some(ConfigType::TypedConfig(any)) = &f.config_type
                        && any.type_url.ends_with("HttpConnectionManager")
                    {
                        let hcm = HttpConnectionManager::decode(&any.value[..]).unwrap();
                        out.push((l.name.clone(), l.traffic_direction, hcm));
                    }
                }
            }
        }
        out
    }

    fn tags(t: &HcmTracing) -> BTreeMap<String, String> {
        t.custom_tags
            .iter()
            .map(|c| {
                let v = match &c.r#type {
                    Some(custom_tag::Type::Literal(l)) => l.value.clone(),
                    Some(custom_tag::Type::Environment(e)) => format!("env:{}", e.name),
                    Some(custom_tag::Type::RequestHeader(h)) => format!("header:{}", h.name),
                    _ => String::new(),
                };
                (c.tag.clone(), v)
            })
            .collect()
    }

    #[test]
    fn sidecars_and_gateways_report_to_zipkin() {
        let ctx = ctx(
            "defaultConfig:\n  tracing:\n    sampling: 25.5\n    zipkin: {address: '127.0.0.1:9411'}\n    customTags:\n      team: {literal: {value: books}}\n      user: {header: {name: end-user}}\n",
        );
        let sidecar = mk_sidecar("default", "127.0.0.9")
            .pod("reviews-v2-abc")
            .labels(&[("app", "reviews"), ("version", "v2")])
            .meta("PROXY_HTTP_PORT", "15080")
            .build();
        let all = hcms(&ctx, &sidecar);
        let inbound: Vec<_> = all
            .iter()
            .filter(|(n, _, _)| n == "127.0.0.9_9080")
            .collect();
        let outbound: Vec<_> = all
            .iter()
            .filter(|(n, _, _)| n == "0.0.0.0_9080" || n == "127.0.0.1_15080")
            .collect();
        assert!(
            !inbound.is_empty() && outbound.len() == 2,
            "{:?}",
            all.iter().map(|a| &a.0).collect::<Vec<_>>()
        );
        for (name, direction, hcm) in &all {
            let t = hcm
                .tracing
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no tracing"));
            assert_eq!(t.random_sampling.as_ref().unwrap().value, 25.5, "{name}");
            assert_eq!(t.max_path_tag_length.as_ref().unwrap().value, 256);
            let provider = t.provider.as_ref().unwrap();
            assert_eq!(provider.name, "envoy.tracers.zipkin");
            let Some(TracerConfig::TypedConfig(any)) = &provider.config_type else {
                panic!("{name}: no zipkin config");
            };
            let z = ZipkinConfig::decode(&any.value[..]).unwrap();
            assert_eq!(z.collector_cluster, "zipkin");
            assert_eq!(z.collector_endpoint, "/api/v2/spans");
            assert_eq!(
                z.collector_endpoint_version,
                CollectorEndpointVersion::HttpJson as i32
            );
            assert!(z.trace_id_128bit);
            assert_eq!(z.shared_span_context, Some(BoolValue { value: false }));
            let tags = tags(t);
            assert_eq!(tags["istio.namespace"], "default");
            assert_eq!(tags["istio.mesh_id"], "cluster.local");
            assert_eq!(tags["team"], "books");
            assert_eq!(tags["user"], "header:end-user");
            let inbound = name == "127.0.0.9_9080";
            let want = if inbound {
                TrafficDirection::Inbound
            } else {
                TrafficDirection::Outbound
            };
            assert_eq!(*direction, want as i32, "{name}");
            // Outbound listeners are shared by a namespace's workloads: no workload tags.
            assert_eq!(
                tags.get("istio.canonical_service").map(String::as_str),
                inbound.then_some("reviews"),
                "{name}"
            );
            assert_eq!(
                tags.get("istio.canonical_revision").map(String::as_str),
                inbound.then_some("v2"),
                "{name}"
            );
        }
        // The collector's cluster: STATIC for an IP.
        let zipkin = cluster(&ctx).unwrap();
        assert_eq!(zipkin.name, "zipkin");
        assert_eq!(
            zipkin.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        let names: Vec<String> = crate::xds::generate::cds::clusters(&ctx, &sidecar)
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert!(names.contains(&"zipkin".to_string()), "{names:?}");

        // A gateway's spans name the gateway workload.
        let gw = mk_router("istio-system", "127.0.0.10")
            .pod("istio-ingressgateway-1-x")
            .labels(&[("istio", "ingressgateway")])
            .build();
        let gw_hcms = hcms(&ctx, &gw);
        assert!(!gw_hcms.is_empty());
        for (_, _, hcm) in gw_hcms {
            let tags = tags(hcm.tracing.as_ref().unwrap());
            assert_eq!(tags["istio.canonical_service"], "istio-ingressgateway-1");
            assert_eq!(tags["istio.canonical_revision"], "latest");
            assert_eq!(tags["istio.namespace"], "istio-system");
        }
    }

    #[test]
    fn defaults_and_off() {
        // Istio's defaults: the DNS name, 1%, and a cluster that does not hold up the start.
        let ctx = ctx("");
        let zipkin = cluster(&ctx).unwrap();
        assert_eq!(
            zipkin.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        assert_eq!(
            zipkin.wait_for_warm_on_init,
            Some(BoolValue { value: false })
        );
        let proxy = mk_sidecar("default", "127.0.0.9").build();
        let t = hcm_tracing(&ctx, &proxy, Side::Outbound).unwrap();
        assert_eq!(t.random_sampling.unwrap().value, 1.0);
        // A sidecar without an app label names no canonical service, even inbound.
        let inbound: Vec<_> = hcms(&ctx, &proxy)
            .into_iter()
            .filter(|(name, _, _)| name == "127.0.0.9_9080")
            .collect();
        assert!(!inbound.is_empty());
        for (_, _, hcm) in inbound {
            let tags = tags(hcm.tracing.as_ref().unwrap());
            assert!(!tags.contains_key("istio.canonical_service"), "{tags:?}");
            assert_eq!(tags["istio.namespace"], "default");
        }

        // Off: no tracing anywhere, no collector cluster.
        let ctx = self::ctx("enableTracing: false\n");
        assert!(cluster(&ctx).is_none());
        for (name, _, hcm) in hcms(&ctx, &proxy) {
            assert!(hcm.tracing.is_none(), "{name}");
        }
        let names: Vec<String> = crate::xds::generate::cds::clusters(&ctx, &proxy)
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert!(!names.contains(&"zipkin".to_string()), "{names:?}");
    }
}
