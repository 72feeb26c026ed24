//! Services, ports and endpoints: Istio's service model, whatever registry they come from.

use std::collections::BTreeMap;
use std::fmt;

/// The application protocol of a service port, from its `protocol` field or name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    Udp,
    /// Unknown or unset: treated as opaque TCP, as Istio does.
    Unsupported,
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Port {
    pub name: String,
    pub number: u32,
    pub protocol: Protocol,
    /// Where endpoints listen when they do not say (ServiceEntry `targetPort`).
    pub target_port: Option<u32>,
}

/// How a proxy finds a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Endpoints known to Pilot, served over EDS.
    Static,
    /// Endpoint addresses are DNS names the proxy resolves.
    Dns,
    /// The proxy forwards to the address the client connected to.
    Passthrough,
}

/// A service: one hostname with its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Fully qualified hostname, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: String,
    /// Namespace the service was defined in.
    pub namespace: String,
    /// Virtual IPs (ServiceEntry `addresses`, Kubernetes cluster IP).
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    /// Outside the mesh (no sidecar on the endpoints).
    pub mesh_external: bool,
    /// Namespaces the service is visible to (`*` all, `.` its own); empty means all.
    pub export_to: Vec<String>,
}

/// An endpoint of a service, for one service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// IP address (or DNS name for DNS resolution).
    pub address: String,
    /// The port the workload listens on for this service port.
    pub port: u32,
    pub labels: BTreeMap<String, String>,
    /// SPIFFE identity of the workload, when known.
    pub service_account: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
}

// === impl Protocol ===

impl Protocol {
    /// Parses an Istio protocol name (case-insensitive).
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => Protocol::Udp,
            _ => Protocol::Unsupported,
        }
    }

    /// The protocol implied by a port name (`http`, `http-web`, `grpc-api`, ...).
    pub fn from_port_name(name: &str) -> Protocol {
        let prefix = name.split('-').next().unwrap_or(name);
        Protocol::parse(prefix)
    }

    /// Whether traffic is HTTP (routed by an HTTP connection manager).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// Whether traffic is TLS the proxy does not terminate (routed by SNI).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Whether upstream connections must be HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Udp => "UDP",
            Protocol::Unsupported => "UnsupportedProtocol",
        };
        f.write_str(s)
    }
}

// === impl Service ===

impl Service {
    pub fn port(&self, number: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }

    pub fn port_by_name(&self, name: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// Whether a proxy in `namespace` may see this service.
    pub fn visible_to(&self, namespace: &str) -> bool {
        self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| e == "*" || e == namespace || (e == "." && self.namespace == namespace))
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// Whether the endpoint carries every label of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|l| l == v))
    }
}

/// Istio's name of an outbound cluster: `outbound|PORT|SUBSET|HOST`.
pub fn outbound_cluster_name(port: u32, subset: &str, hostname: &str) -> String {
    format!("outbound|{port}|{subset}|{hostname}")
}

/// Istio's name of an inbound cluster: `inbound|PORT||HOST`.
pub fn inbound_cluster_name(port: u32, hostname: &str) -> String {
    format!("inbound|{port}||{hostname}")
}

/// Splits a cluster name of the form `DIRECTION|PORT|SUBSET|HOST`.
pub fn parse_cluster_name(name: &str) -> Option<(&str, u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    let direction = parts.next()?;
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    Some((direction, port, subset, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_from_names() {
        assert_eq!(Protocol::from_port_name("http-web"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("grpc"), Protocol::Grpc);
        assert_eq!(Protocol::from_port_name("mysql"), Protocol::Mysql);
        assert_eq!(Protocol::from_port_name("foo"), Protocol::Unsupported);
        assert_eq!(Protocol::parse("HTTP2"), Protocol::Http2);
    }

    #[test]
    fn cluster_names_round_trip() {
        let n = outbound_cluster_name(9080, "v1", "reviews.default.svc.cluster.local");
        assert_eq!(n, "outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(
            parse_cluster_name(&n),
            Some(("outbound", 9080, "v1", "reviews.default.svc.cluster.local"))
        );
        assert_eq!(parse_cluster_name("BlackHoleCluster"), None);
    }
}
