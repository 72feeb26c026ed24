//! A proxy as Pilot sees it: who it is (from the Envoy node id) and what it told us about
//! itself (node metadata).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// What kind of proxy: a sidecar next to a workload, or a gateway (`router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeType {
    Sidecar,
    Router,
}

/// How traffic reaches a proxy (Istio's `INTERCEPTION_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterceptionMode {
    /// iptables `REDIRECT` to the proxy's ports (Istio's default).
    Redirect,
    /// iptables `TPROXY`: the proxy's inbound listener is transparent.
    Tproxy,
    /// No capture: the application talks to the proxy's bound ports itself.
    None,
}

/// Why a node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The id is not `TYPE~IP~ID~DOMAIN`.
    #[error(
        "node id {0:?}: expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local (4 parts separated by ~)"
    )]
    Parts(String),
    /// The type is neither `sidecar` nor `router`.
    #[error("node id {id:?}: unknown proxy type {kind:?} (expected sidecar or router)")]
    Type { id: String, kind: String },
    /// The IP part is not an IP address.
    #[error("node id {id:?}: {ip:?} is not an IP address")]
    Ip { id: String, ip: String },
}

/// A connected (or about to connect) proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub node_type: NodeType,
    /// The proxy's IP addresses (the node id's IP; `INSTANCE_IPS` metadata adds more).
    pub ips: Vec<String>,
    /// `POD.NAMESPACE`
    pub id: String,
    /// The proxy's namespace.
    pub namespace: String,
    /// The DNS domain, e.g. `default.svc.cluster.local`.
    pub dns_domain: String,
    /// The workload's labels (`LABELS` metadata).
    pub labels: BTreeMap<String, String>,
    /// Node metadata as sent.
    pub metadata: BTreeMap<String, Value>,
}

// === impl Proxy ===

impl Proxy {
    /// Parses an Istio node id, `sidecar~10.0.0.1~reviews-v1-abc.default~default.svc.cluster.local`,
    /// with its node metadata.
    pub fn from_node(id: &str, metadata: BTreeMap<String, Value>) -> Result<Proxy, ProxyError> {
        let parts: Vec<&str> = id.split('~').collect();
        if parts.len() != 4 {
            return Err(ProxyError::Parts(id.to_string()));
        }
        let node_type = match parts[0] {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => {
                return Err(ProxyError::Type {
                    id: id.to_string(),
                    kind: other.to_string(),
                });
            }
        };
        let mut ips = Vec::new();
        for ip in std::iter::once(parts[1]).chain(
            metadata
                .get("INSTANCE_IPS")
                .and_then(Value::as_str)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty()),
        ) {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ProxyError::Ip {
                    id: id.to_string(),
                    ip: ip.to_string(),
                });
            }
            if !ips.iter().any(|i| i == ip) {
                ips.push(ip.to_string());
            }
        }
        let pod_id = parts[2].to_string();
        let dns_domain = parts[3].to_string();
        let namespace = metadata
            .get("NAMESPACE")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                pod_id
                    .rsplit_once('.')
                    .map(|(_, ns)| ns.to_string())
                    .filter(|ns| !ns.is_empty())
            })
            .or_else(|| dns_domain.split('.').next().map(str::to_string))
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let labels = match metadata.get("LABELS") {
            Some(Value::Object(m)) => m
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        Ok(Proxy {
            node_type,
            ips,
            id: pod_id,
            namespace,
            dns_domain,
            labels,
            metadata,
        })
    }

    /// The first IP: the one in the node id.
    pub fn ip(&self) -> &str {
        self.ips.first().map(String::as_str).unwrap_or("")
    }

    /// How the proxy's traffic reaches it, Istio's `INTERCEPTION_MODE` node metadata (set by
    /// the agent from `ISTIO_META_INTERCEPTION_MODE`, which injection fills from the pod's
    /// `sidecar.istio.io/interceptionMode`): `REDIRECT` or `TPROXY` (iptables capture), or
    /// `NONE`. Without it, interception is the default, as in Istio, except for a proxy that
    /// asks for an HTTP proxy port (`PROXY_HTTP_PORT` metadata): that is the no-iptables mode
    /// of `make run` and the tests, where 15001 and 15006 would clash between proxies on one
    /// host. A value Istio does not know is taken as `REDIRECT`, Istio's default.
    pub fn interception_mode(&self) -> InterceptionMode {
        match self.meta_str("INTERCEPTION_MODE") {
            Some("NONE") => InterceptionMode::None,
            Some("TPROXY") => InterceptionMode::Tproxy,
            Some(_) => InterceptionMode::Redirect,
            None if self.metadata.contains_key("PROXY_HTTP_PORT") => InterceptionMode::None,
            None => InterceptionMode::Redirect,
        }
    }

    /// Whether traffic reaches the proxy through iptables capture (see
    /// [`Proxy::interception_mode`]): then it gets the virtual listeners, `virtualOutbound`
    /// and (sidecars) `virtualInbound`.
    pub fn captures_traffic(&self) -> bool {
        self.interception_mode() != InterceptionMode::None
    }

    /// The proxy's locality, `region/zone/subzone`: Istio's `istio-locality` label
    /// (`region.zone.subzone`, as label values cannot hold `/`), else the `ISTIO_LOCALITY`
    /// metadata (what Istio's agent reads from its environment). Borrowed unless the label
    /// needs its dots turned into slashes.
    pub fn locality(&self) -> Option<Cow<'_, str>> {
        if let Some(l) = self.labels.get("istio-locality").filter(|l| !l.is_empty()) {
            return Some(if l.contains('.') {
                Cow::Owned(l.replace('.', "/"))
            } else {
                Cow::Borrowed(l.as_str())
            });
        }
        self.meta_str("ISTIO_LOCALITY")
            .filter(|l| !l.is_empty())
            .map(Cow::Borrowed)
    }

    /// A metadata value as a string.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.node_type {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        };
        write!(f, "{kind}~{}~{}~{}", self.ip(), self.id, self.dns_domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_node_ids() {
        let p = Proxy::from_node(
            "sidecar~127.0.0.11~reviews-v1-abc.default~default.svc.cluster.local",
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.node_type, NodeType::Sidecar);
        assert_eq!(p.ip(), "127.0.0.11");
        assert_eq!(p.id, "reviews-v1-abc.default");
        assert_eq!(p.namespace, "default");
        assert!(p.captures_traffic());

        let meta = BTreeMap::from([
            ("LABELS".to_string(), serde_json::json!({"app": "gw"})),
            ("INTERCEPTION_MODE".to_string(), serde_json::json!("NONE")),
        ]);
        let g = Proxy::from_node(
            "router~127.0.0.2~gw.istio-system~istio-system.svc.cluster.local",
            meta,
        )
        .unwrap();
        assert_eq!(g.node_type, NodeType::Router);
        assert_eq!(g.namespace, "istio-system");
        assert_eq!(g.labels["app"], "gw");
        assert!(!g.captures_traffic());
    }

    #[test]
    fn interception_is_the_default_unless_an_http_proxy_port_is_asked_for() {
        let node = "sidecar~10.0.0.1~a.default~default.svc.cluster.local";
        let mode = |meta: &[(&str, &str)]| {
            let meta = meta
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            Proxy::from_node(node, meta).unwrap().interception_mode()
        };
        assert_eq!(mode(&[]), InterceptionMode::Redirect);
        assert_eq!(
            mode(&[("INTERCEPTION_MODE", "REDIRECT")]),
            InterceptionMode::Redirect
        );
        assert_eq!(
            mode(&[("INTERCEPTION_MODE", "TPROXY")]),
            InterceptionMode::Tproxy
        );
        assert_eq!(
            mode(&[("INTERCEPTION_MODE", "NONE")]),
            InterceptionMode::None
        );
        assert_eq!(
            mode(&[("INTERCEPTION_MODE", "bogus")]),
            InterceptionMode::Redirect
        );
        // The no-iptables mode: an HTTP proxy port and no INTERCEPTION_MODE.
        assert_eq!(
            mode(&[("PROXY_HTTP_PORT", "15080")]),
            InterceptionMode::None
        );
        // An explicit mode wins over the HTTP proxy port.
        assert_eq!(
            mode(&[
                ("PROXY_HTTP_PORT", "15080"),
                ("INTERCEPTION_MODE", "REDIRECT")
            ]),
            InterceptionMode::Redirect
        );
    }

    #[test]
    fn refuses_bad_ids() {
        let e = Proxy::from_node("nope", BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("4 parts"));
        let e = Proxy::from_node("pod~1.2.3.4~a.b~b.svc", BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("unknown proxy type"));
        let e = Proxy::from_node("sidecar~x~a.b~b.svc", BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("not an IP"));
    }

    #[test]
    fn locality_from_label_or_metadata() {
        let node = "sidecar~127.0.0.1~a.default~default.svc.cluster.local";
        let none = Proxy::from_node(node, BTreeMap::new()).unwrap();
        assert_eq!(none.locality(), None);
        let meta = BTreeMap::from([("ISTIO_LOCALITY".to_string(), serde_json::json!("us/east/a"))]);
        let from_meta = Proxy::from_node(node, meta.clone()).unwrap();
        assert_eq!(from_meta.locality().as_deref(), Some("us/east/a"));
        assert!(matches!(from_meta.locality(), Some(Cow::Borrowed(_))));
        // The label wins, with dots for slashes.
        let mut both = meta;
        both.insert(
            "LABELS".to_string(),
            serde_json::json!({"istio-locality": "eu.west.b"}),
        );
        let from_label = Proxy::from_node(node, both).unwrap();
        assert_eq!(from_label.locality().as_deref(), Some("eu/west/b"));
        let empty = Proxy::from_node(
            node,
            BTreeMap::from([("ISTIO_LOCALITY".to_string(), serde_json::json!(""))]),
        )
        .unwrap();
        assert_eq!(empty.locality(), None);
    }
}
