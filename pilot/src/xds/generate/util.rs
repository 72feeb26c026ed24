//! Small builders shared by the generators.

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};
use envoy_types::pb::google::protobuf::Duration;
use std::collections::BTreeSet;

/// A socket address.
pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A protobuf duration.
pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// "Fetch this over the ADS stream", v3.
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// The filter chains of one listener. Envoy refuses a listener where two chains match the
/// same connections (the same server name, or both any name, with the same transport
/// protocol), so each is taken once: by the first chain that names it.
#[derive(Debug, Default)]
pub struct UniqueChains {
    chains: Vec<FilterChain>,
    /// (transport protocol, server name, or "" for any name) of the chains so far.
    taken: BTreeSet<(String, String)>,
}

// === impl UniqueChains ===

impl UniqueChains {
    /// Adds `chain` (from `origin`, for the log) with the server names no earlier chain
    /// has; dropped when it has none left. A chain for any name conflicts with another for
    /// any name only.
    pub fn add(&mut self, mut chain: FilterChain, origin: &str) {
        let m = chain
            .filter_chain_match
            .get_or_insert_with(Default::default);
        let transport = m.transport_protocol.clone();
        if m.server_names.is_empty() {
            if !self.taken.insert((transport, String::new())) {
                tracing::warn!(
                    %origin,
                    "dropping a filter chain: an earlier one already matches every name"
                );
                return;
            }
        } else {
            let mut dropped = Vec::new();
            m.server_names.retain(|n| {
                let fresh = self.taken.insert((transport.clone(), n.clone()));
                if !fresh {
                    dropped.push(n.clone());
                }
                fresh
            });
            if !dropped.is_empty() {
                tracing::warn!(
                    %origin,
                    names = ?dropped,
                    "server names already matched by an earlier filter chain; left out"
                );
            }
            if m.server_names.is_empty() {
                return;
            }
        }
        if chain.filter_chain_match == Some(FilterChainMatch::default()) {
            chain.filter_chain_match = None;
        }
        self.chains.push(chain);
    }

    /// The chains, in the order they were added.
    pub fn into_chains(self) -> Vec<FilterChain> {
        self.chains
    }
}
