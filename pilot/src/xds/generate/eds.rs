//! EDS: the endpoints of an outbound cluster (`outbound|PORT|SUBSET|HOST`), filtered by the
//! subset's labels and grouped by locality.
//!
//! Locality failover, as Istio does it: when the DestinationRule that applies sets outlier
//! detection (without it Envoy would never move traffic away from a failing locality) and
//! does not turn `localityLbSetting` off, endpoints get Envoy priorities by how much of the
//! proxy's locality they share: 0 for the same region, zone and sub-zone, 1 for the same
//! zone, 2 for the same region, 3 for the rest, then renumbered without gaps (the levels in
//! use become 0, 1, 2...), as Istio does. Envoy sends everything to priority 0 and
//! spills over to the next as endpoints there become unhealthy or are gone. That makes the
//! assignment depend on the proxy's locality ([`load_assignment_for`]); without one (or
//! without outlier detection) every locality is priority 0 ([`load_assignment`]). The cache
//! keeps one assignment per cluster and proxy locality, and shares the locality-less one
//! when the cluster's priorities do not depend on it ([`depends_on_locality`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};

use super::cds::lb_endpoint;
use crate::model::service::parse_cluster_name;
use crate::model::{Endpoint, PushContext, Service};
use crate::xds::resource::{Resource, SharedResource};

/// The load assignment of one cluster, or `None` when the cluster is unknown. A known cluster
/// without endpoints gets an empty assignment, so Envoy stops waiting for it.
///
/// Subset labels come from the destination rule as seen from the service's own namespace: EDS
/// is shared by every proxy that asks for the same cluster (from the same locality).
pub fn load_assignment(ctx: &PushContext, cluster: &str) -> Option<SharedResource> {
    load_assignment_for(ctx, cluster, None)
}

/// [`load_assignment`] for a proxy in `locality` (`region/zone/subzone`): with priorities by
/// locality when the cluster's DestinationRule asks for failover.
pub fn load_assignment_for(
    ctx: &PushContext,
    cluster: &str,
    locality: Option<&str>,
) -> Option<SharedResource> {
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
    let endpoints: Vec<&Endpoint> = ctx
        .registry
        .endpoints(host, port)
        .iter()
        .filter(|ep| selector.as_ref().is_none_or(|sel| ep.matches(sel)))
        .collect();
    let proxy_locality = locality.filter(|_| failover_enabled(ctx, svc, subset, port));
    let cla = ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: locality_endpoints(&endpoints, proxy_locality),
        ..Default::default()
    };
    Some(Resource::encode(cluster, &cla))
}

/// Whether the assignment of `cluster` depends on the proxy's locality: a known outbound
/// cluster whose DestinationRule asks for failover (see [`failover_enabled`]).
pub fn depends_on_locality(ctx: &PushContext, cluster: &str) -> bool {
    let Some((direction, port, subset, host)) = parse_cluster_name(cluster) else {
        return false;
    };
    if direction != "outbound" {
        return false;
    }
    ctx.registry
        .service(host)
        .is_some_and(|svc| failover_enabled(ctx, svc, subset, port))
}

/// Whether locality failover applies to `svc`'s `subset` on `port`: outlier detection is set
/// and locality load balancing is not turned off.
pub fn failover_enabled(ctx: &PushContext, svc: &Service, subset: &str, port: u32) -> bool {
    let Some(dr) = ctx.destination_rule(&svc.namespace, svc) else {
        return false;
    };
    let subset = dr.spec.subsets.iter().find(|s| s.name == subset);
    let policy = super::cds::merged_policy(&dr.spec, subset, port);
    let disabled = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref())
        .and_then(|l| l.enabled)
        == Some(false);
    policy.outlier_detection.is_some() && !disabled
}

/// Endpoints grouped by locality (sorted, so the assignment encodes the same way each time),
/// with priorities relative to `proxy_locality` when given.
fn locality_endpoints(
    endpoints: &[&Endpoint],
    proxy_locality: Option<&str>,
) -> Vec<LocalityLbEndpoints> {
    let mut by_locality: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for ep in endpoints {
        by_locality
            .entry(ep.locality.as_deref().unwrap_or(""))
            .or_default()
            .push(ep);
    }
    if by_locality.is_empty() {
        // An empty assignment still has its (empty) default locality.
        return vec![LocalityLbEndpoints::default()];
    }
    let raw: Vec<u32> = by_locality
        .keys()
        .map(|locality| proxy_locality.map_or(0, |p| priority(p, locality)))
        .collect();
    // Envoy wants priorities without gaps (an empty priority level counts as one with no
    // healthy hosts): number the levels in use 0, 1, 2... as Istio does.
    let levels: BTreeSet<u32> = raw.iter().copied().collect();
    let compact = |p: u32| levels.iter().position(|l| *l == p).unwrap_or(0) as u32;
    by_locality
        .into_iter()
        .zip(raw)
        .map(|((locality, eps), raw)| LocalityLbEndpoints {
            locality: (!locality.is_empty()).then(|| parse_locality(locality)),
            lb_endpoints: eps
                .iter()
                .map(|ep| lb_endpoint(&ep.address, ep.port, ep.weight))
                .collect(),
            priority: compact(raw),
            ..Default::default()
        })
        .collect()
}

/// `region/zone/subzone` as Envoy's locality.
pub fn parse_locality(s: &str) -> Locality {
    let mut parts = s.splitn(3, '/');
    Locality {
        region: parts.next().unwrap_or("").to_string(),
        zone: parts.next().unwrap_or("").to_string(),
        sub_zone: parts.next().unwrap_or("").to_string(),
    }
}

/// Istio's failover priority of endpoints in `locality` for a proxy in `proxy`: 0 when all
/// three parts match, 1 region and zone, 2 region only, 3 none.
pub fn priority(proxy: &str, locality: &str) -> u32 {
    let (p, l) = (parse_locality(proxy), parse_locality(locality));
    if p.region.is_empty() || p.region != l.region {
        3
    } else if p.zone != l.zone {
        2
    } else if p.sub_zone != l.sub_zone {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_the_shared_part_of_the_locality() {
        assert_eq!(priority("us/east/a", "us/east/a"), 0);
        assert_eq!(priority("us/east/a", "us/east/b"), 1);
        assert_eq!(priority("us/east/a", "us/west/a"), 2);
        assert_eq!(priority("us/east/a", "eu/east/a"), 3);
        assert_eq!(priority("us/east", "us/east"), 0);
        assert_eq!(priority("", "us/east"), 3);
        let l = parse_locality("us/east");
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()),
            ("us", "east", "")
        );
    }
}
