//! Istio mutual TLS with the mesh's own certificates, the ones Citadel issues per service
//! account (`cert-chain.pem`, `key.pem`, `root-cert.pem`), read from files on the proxy's
//! host as Istio 1.0 mounted them in `/etc/certs/`.
//!
//! - Client side: a DestinationRule with `tls.mode: ISTIO_MUTUAL` gives the cluster an
//!   upstream TLS context presenting the proxy's certificate, trusting the mesh root, and
//!   accepting only the destination's SPIFFE identities (the rule's `subjectAltNames`, else
//!   the service accounts of the service's endpoints, when known). SNI is Istio's
//!   `outbound_.PORT_.SUBSET_.HOST`, ALPN `istio`.
//! - Server side: a PeerAuthentication (see [`PushContext::peer_authentication_mode`]) in
//!   STRICT mode makes an inbound listener accept mutual TLS only; PERMISSIVE adds a plain
//!   text chain beside it (picked by the TLS inspector); DISABLE, or no policy, keeps plain
//!   text.
//!
//! Where the files are: Istio's node metadata `TLS_CLIENT_CERT_CHAIN`, `TLS_CLIENT_KEY`,
//! `TLS_CLIENT_ROOT_CERT` (and `TLS_SERVER_*` for inbound), each defaulting to its file in
//! `/etc/certs/`. Envoy reads them when the cluster or listener is created: a rotated
//! certificate is picked up with the next config change of that cluster or listener (Istio
//! 1.0's agent restarted Envoy instead).

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    TlsCertificate, UpstreamTlsContext, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_proto::networking::ClientTlsSettings;
use mesh_proto::security::MtlsMode;

use crate::model::{Proxy, PushContext, Service};
use crate::xds::resource::any;

/// Where Istio mounts a proxy's certificates by default.
pub const DEFAULT_CERTS_DIR: &str = "/etc/certs";
/// The ALPN Istio's sidecars offer each other.
pub const ALPN_ISTIO: &str = "istio";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// The certificate files a proxy presents and trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_chain: String,
    pub key: String,
    pub root_cert: String,
}

// === impl CertFiles ===

impl CertFiles {
    /// The files for upstream connections (`TLS_CLIENT_*` metadata).
    pub fn client(proxy: &Proxy) -> CertFiles {
        CertFiles::from_metadata(proxy, "CLIENT")
    }

    /// The files for inbound connections (`TLS_SERVER_*` metadata).
    pub fn server(proxy: &Proxy) -> CertFiles {
        CertFiles::from_metadata(proxy, "SERVER")
    }

    fn from_metadata(proxy: &Proxy, side: &str) -> CertFiles {
        let get = |key: &str, file: &str| {
            proxy
                .meta_str(&format!("TLS_{side}_{key}"))
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{DEFAULT_CERTS_DIR}/{file}"))
        };
        CertFiles {
            cert_chain: get("CERT_CHAIN", "cert-chain.pem"),
            key: get("KEY", "key.pem"),
            root_cert: get("ROOT_CERT", "root-cert.pem"),
        }
    }

    fn common(&self, alpn: Vec<String>, sans: &[String]) -> CommonTlsContext {
        CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(file(&self.cert_chain)),
                private_key: Some(file(&self.key)),
                ..Default::default()
            }],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(&self.root_cert)),
                    match_typed_subject_alt_names: sans
                        .iter()
                        .map(|san| SubjectAltNameMatcher {
                            san_type: SanType::Uri as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(MatchPattern::Exact(san.clone())),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            )),
            alpn_protocols: alpn,
            ..Default::default()
        }
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// A SPIFFE identity for a service account as the registry knows it: already a
/// `spiffe://` URI (Kubernetes), or a bare name in `namespace` (a WorkloadEntry's).
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    if service_account.starts_with("spiffe://") {
        service_account.to_string()
    } else {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
    }
}

/// The identities a client accepts from `svc` on `port`: the rule's `subjectAltNames`, else
/// the service accounts of its endpoints (empty when none is known: any mesh certificate).
pub fn destination_identities(
    ctx: &PushContext,
    svc: &Service,
    port: u32,
    tls: &ClientTlsSettings,
) -> Vec<String> {
    if !tls.subject_alt_names.is_empty() {
        return tls.subject_alt_names.clone();
    }
    let mut ids: Vec<String> = ctx
        .registry
        .endpoints(&svc.hostname, port)
        .iter()
        .filter_map(|ep| ep.service_account.as_deref())
        .map(|sa| spiffe_id(&ctx.mesh.trust_domain, &svc.namespace, sa))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The upstream TLS socket of an ISTIO_MUTUAL cluster.
pub fn istio_mutual_upstream(
    proxy: &Proxy,
    sni: String,
    sans: &[String],
    http2: bool,
) -> TransportSocket {
    let mut alpn = vec![ALPN_ISTIO.to_string()];
    if http2 {
        alpn.push("h2".into());
    }
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(CertFiles::client(proxy).common(alpn, sans)),
        sni,
        ..Default::default()
    };
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Istio's SNI for ISTIO_MUTUAL: `outbound_.PORT_.SUBSET_.HOST`.
pub fn istio_sni(port: u32, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

fn downstream(proxy: &Proxy) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(
            CertFiles::server(proxy).common(vec!["h2".into(), "http/1.1".into()], &[]),
        ),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Makes an inbound listener on workload `port` accept what the proxy's PeerAuthentication
/// asks for.
pub fn secure_inbound(ctx: &PushContext, proxy: &Proxy, listener: &mut Listener, port: u32) {
    match ctx.peer_authentication_mode(proxy, port) {
        Some(MtlsMode::Strict) => {
            for chain in &mut listener.filter_chains {
                chain.transport_socket = Some(downstream(proxy));
            }
        }
        Some(MtlsMode::Permissive) => {
            let mut tls_chains = listener.filter_chains.clone();
            for chain in &mut tls_chains {
                chain.transport_socket = Some(downstream(proxy));
                chain.filter_chain_match = Some(FilterChainMatch {
                    transport_protocol: "tls".into(),
                    application_protocols: vec![ALPN_ISTIO.into()],
                    ..Default::default()
                });
            }
            tls_chains.append(&mut listener.filter_chains);
            listener.filter_chains = tls_chains;
            listener.listener_filters.push(ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            });
        }
        Some(MtlsMode::Disable | MtlsMode::Unset) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn cert_files_come_from_metadata_or_etc_certs() {
        let meta = BTreeMap::from([(
            "TLS_CLIENT_CERT_CHAIN".to_string(),
            serde_json::json!("/tmp/a/cert-chain.pem"),
        )]);
        let p = Proxy::from_node(
            "sidecar~127.0.0.1~a.default~default.svc.cluster.local",
            meta,
        )
        .unwrap();
        let c = CertFiles::client(&p);
        assert_eq!(c.cert_chain, "/tmp/a/cert-chain.pem");
        assert_eq!(c.key, "/etc/certs/key.pem");
        assert_eq!(
            CertFiles::server(&p).cert_chain,
            "/etc/certs/cert-chain.pem"
        );
        assert_eq!(
            spiffe_id("cluster.local", "default", "reviews"),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        assert_eq!(
            spiffe_id("x", "y", "spiffe://td/ns/a/sa/b"),
            "spiffe://td/ns/a/sa/b"
        );
    }
}
