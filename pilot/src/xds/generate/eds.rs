//! EDS: the endpoints of an outbound cluster (`outbound|PORT|SUBSET|HOST`), filtered by the
//! subset's labels.

use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};

use super::cds::lb_endpoint;
use crate::model::PushContext;
use crate::model::service::parse_cluster_name;
use crate::xds::resource::{Resource, SharedResource};

/// The load assignment of one cluster, or `None` when the cluster is unknown. A known cluster
/// without endpoints gets an empty assignment, so Envoy stops waiting for it.
///
/// Subset labels come from the destination rule as seen from the service's own namespace: EDS
/// is shared by every proxy that asks for the same cluster.
pub fn load_assignment(ctx: &PushContext, cluster: &str) -> Option<SharedResource> {
    let (direction, port, subset, host) = parse_cluster_name(cluster)?;
    if direction != "outbound" {
        return None;
    }
    let svc = ctx.registry.service(host)?;
    svc.port(port)?;
    let selector = if subset.is_empty() {
        None
    } else {
        Some(ctx.subset(&svc.namespace, svc, subset)?.labels.clone())
    };
    let lb_endpoints = ctx
        .registry
        .endpoints(host, port)
        .iter()
        .filter(|ep| selector.as_ref().is_none_or(|sel| ep.matches(sel)))
        .map(|ep| lb_endpoint(&ep.address, ep.port, ep.weight))
        .collect();
    let cla = ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    };
    Some(Resource::encode(cluster, &cla))
}
