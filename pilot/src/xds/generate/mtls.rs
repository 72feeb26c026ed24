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
//! `/etc/certs/`. TLS contexts do not name the files: they refer to SDS secrets Pilot serves
//! on the same ADS stream (Istio's names: `default` for the certificate and key, `ROOTCA` for
//! the root; server files other than the client's get Istio's file-mounted names
//! `file-cert:CHAIN~KEY` and `file-root:ROOT`). Each secret holds the file names and a
//! `watched_directory`, the files' directory: Envoy re-reads the files whenever something is
//! moved into it, as Citadel's `..data` swap does, so a rotated certificate is used for new
//! handshakes at once, with no config change (Istio 1.0's agent restarted Envoy instead).
//! (Envoy 1.40 also reloads a file-based SDS secret without `watched_directory`, watching its
//! files' directories; setting it names the one directory whose swap reloads them all.)
//!
//! **The agent's SDS** (Istio 1.1's node agent): a proxy whose node metadata has
//! [`META_SDS`] `SDS: "true"` gets its certificate from `pilot-agent` beside it (a key made
//! in memory, a CSR to Citadel, see `crate::agent::ca_client`), served over SDS on a Unix
//! socket (`crate::agent::sds`). Its TLS contexts then name `default` and `ROOTCA` on both
//! sides, fetched from the bootstrap's static cluster [`SDS_CLUSTER`] `sds-grpc` (an
//! `api_config_source` over gRPC; `crate::bootstrap::add_sds_cluster` defines it), and
//! Pilot serves that proxy no file-based secrets at all ([`secrets`] is empty for it).

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService,
    TransportSocket, WatchedDirectory, api_config_source::ApiType,
    config_source::ConfigSourceSpecifier, data_source, grpc_service, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    secret,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_proto::networking::ClientTlsSettings;
use mesh_proto::security::MtlsMode;

use crate::model::{Proxy, PushContext, Service};
use crate::xds::resource::{Resource, SharedResource, any};

/// Where Istio mounts a proxy's certificates by default.
pub const DEFAULT_CERTS_DIR: &str = "/etc/certs";
/// The ALPN Istio's sidecars offer each other.
pub const ALPN_ISTIO: &str = "istio";
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
/// Istio's SDS name of the workload certificate and key.
pub const SECRET_DEFAULT: &str = "default";
/// Istio's SDS name of the mesh root.
pub const SECRET_ROOT: &str = "ROOTCA";
/// Istio's prefix of a file-mounted certificate's SDS name (`file-cert:CHAIN~KEY`).
pub const FILE_CERT_PREFIX: &str = "file-cert:";
/// Istio's prefix of a file-mounted root's SDS name (`file-root:ROOT`).
pub const FILE_ROOT_PREFIX: &str = "file-root:";
/// Istio's node metadata saying the agent serves SDS on its socket (value `"true"`).
pub const META_SDS: &str = "SDS";
/// The bootstrap's static cluster reaching the agent's SDS socket (Istio's name).
pub const SDS_CLUSTER: &str = "sds-grpc";

/// Whether `proxy`'s agent serves its certificate over SDS (metadata `SDS: "true"`).
pub fn agent_sds(proxy: &Proxy) -> bool {
    proxy
        .meta_str(META_SDS)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Where a proxy's TLS contexts fetch their secrets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretSource {
    /// Pilot, on the ADS stream (file-based secrets).
    Ads,
    /// The agent, through the static cluster `sds-grpc`.
    Agent,
}

// === impl SecretSource ===

impl SecretSource {
    fn of(proxy: &Proxy) -> SecretSource {
        if agent_sds(proxy) {
            SecretSource::Agent
        } else {
            SecretSource::Ads
        }
    }
}

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

    /// The SDS names of the certificate and the root: Istio's `default` and `ROOTCA` for the
    /// client files (and for server files that are the same), else Istio's names for
    /// file-mounted certificates, `file-cert:CHAIN~KEY` and `file-root:ROOT`.
    pub fn secret_names(&self, proxy: &Proxy) -> (String, String) {
        let client = CertFiles::client(proxy);
        let cert = if self.cert_chain == client.cert_chain && self.key == client.key {
            SECRET_DEFAULT.to_string()
        } else {
            format!("{FILE_CERT_PREFIX}{}~{}", self.cert_chain, self.key)
        };
        let root = if self.root_cert == client.root_cert {
            SECRET_ROOT.to_string()
        } else {
            format!("{FILE_ROOT_PREFIX}{}", self.root_cert)
        };
        (cert, root)
    }

    /// The TLS context presenting the certificate of SDS secret `cert` and trusting the root
    /// of SDS secret `root`, accepting only `sans` (any identity when empty).
    fn common(
        proxy: &Proxy,
        files: &CertFiles,
        alpn: Vec<String>,
        sans: &[String],
    ) -> CommonTlsContext {
        let source = SecretSource::of(proxy);
        let (cert, root) = match source {
            SecretSource::Ads => files.secret_names(proxy),
            // The agent serves one certificate, for both sides.
            SecretSource::Agent => (SECRET_DEFAULT.to_string(), SECRET_ROOT.to_string()),
        };
        CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds_config(cert, source)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
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
                    }),
                    validation_context_sds_secret_config: Some(sds_config(root, source)),
                    ..Default::default()
                },
            )),
            alpn_protocols: alpn,
            ..Default::default()
        }
    }

    /// The certificate secret named `name`: these files, reloaded by Envoy whenever a file is
    /// moved into their directory (Citadel's `..data` swap).
    fn cert_secret(&self, name: String) -> Secret {
        Secret {
            name,
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(file(&self.cert_chain)),
                private_key: Some(file(&self.key)),
                watched_directory: Some(watched(&self.cert_chain)),
                ..Default::default()
            })),
        }
    }

    /// The root secret named `name`.
    fn root_secret(&self, name: String) -> Secret {
        Secret {
            name,
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(&self.root_cert)),
                    watched_directory: Some(watched(&self.root_cert)),
                    ..Default::default()
                },
            )),
        }
    }
}

/// A reference to SDS secret `name`, fetched over the ADS stream or from the agent.
fn sds_config(name: String, source: SecretSource) -> SdsSecretConfig {
    let specifier = match source {
        SecretSource::Ads => ConfigSourceSpecifier::Ads(AggregatedConfigSource::default()),
        SecretSource::Agent => ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: SDS_CLUSTER.into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            set_node_on_first_message_only: true,
            ..Default::default()
        }),
    };
    SdsSecretConfig {
        name,
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(specifier),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// The directory holding `path` (Envoy watches it for the files' replacement).
fn watched(path: &str) -> WatchedDirectory {
    let dir = match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    };
    WatchedDirectory {
        path: dir.to_string(),
        ..Default::default()
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// The SDS secrets `proxy` may ask for (see [`CertFiles::secret_names`]): its client
/// certificate and root, and its server ones when they are other files. Only these names
/// are served: a name cannot make Pilot point a proxy at arbitrary files. None for a proxy
/// whose agent serves SDS ([`agent_sds`]).
pub fn secrets(proxy: &Proxy) -> Vec<SharedResource> {
    let mut out: Vec<SharedResource> = Vec::new();
    if agent_sds(proxy) {
        return out;
    }
    for files in [CertFiles::client(proxy), CertFiles::server(proxy)] {
        let (cert, root) = files.secret_names(proxy);
        if !out.iter().any(|r| r.name == cert) {
            out.push(Resource::encode(cert.clone(), &files.cert_secret(cert)));
        }
        if !out.iter().any(|r| r.name == root) {
            out.push(Resource::encode(root.clone(), &files.root_secret(root)));
        }
    }
    out
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
        common_tls_context: Some(CertFiles::common(
            proxy,
            &CertFiles::client(proxy),
            alpn,
            sans,
        )),
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
        common_tls_context: Some(CertFiles::common(
            proxy,
            &CertFiles::server(proxy),
            vec!["h2".into(), "http/1.1".into()],
            &[],
        )),
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

    #[test]
    fn cert_files_come_from_metadata_or_etc_certs() {
        let p = crate::testutil::mk_sidecar("default", "127.0.0.1")
            .meta("TLS_CLIENT_CERT_CHAIN", "/tmp/a/cert-chain.pem")
            .build();
        let c = CertFiles::client(&p);
        assert_eq!(c.cert_chain, "/tmp/a/cert-chain.pem");
        assert_eq!(c.key, "/etc/certs/key.pem");
        assert_eq!(
            CertFiles::server(&p).cert_chain,
            "/etc/certs/cert-chain.pem"
        );
        // Client files are Istio's `default` and `ROOTCA`; server files other than those
        // get the file-mounted names. Each secret watches its files' directory.
        assert_eq!(
            c.secret_names(&p),
            ("default".to_string(), "ROOTCA".to_string())
        );
        assert_eq!(
            CertFiles::server(&p).secret_names(&p),
            (
                "file-cert:/etc/certs/cert-chain.pem~/etc/certs/key.pem".to_string(),
                "ROOTCA".to_string()
            )
        );
        let names: Vec<String> = secrets(&p).iter().map(|r| r.name.clone()).collect();
        assert_eq!(
            names,
            [
                "default",
                "ROOTCA",
                "file-cert:/etc/certs/cert-chain.pem~/etc/certs/key.pem"
            ]
        );
        let Some(secret::Type::TlsCertificate(cert)) = c.cert_secret("default".into()).r#type
        else {
            panic!("not a certificate");
        };
        assert_eq!(cert.watched_directory.unwrap().path, "/tmp/a");
        assert_eq!(watched("/root.pem").path, "/");
        assert_eq!(watched("root.pem").path, ".");
        assert_eq!(
            spiffe_id("cluster.local", "default", "reviews"),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        assert_eq!(
            spiffe_id("x", "y", "spiffe://td/ns/a/sa/b"),
            "spiffe://td/ns/a/sa/b"
        );
    }

    #[test]
    fn agent_sds_proxies_fetch_default_and_rootca_from_sds_grpc() {
        let file = crate::testutil::mk_sidecar("default", "127.0.0.1").build();
        let agent = crate::testutil::mk_sidecar("default", "127.0.0.1")
            .meta("SDS", "true")
            .meta("TLS_SERVER_CERT_CHAIN", "/other/cert-chain.pem")
            .build();
        assert!(!agent_sds(&file));
        assert!(agent_sds(&agent));
        assert!(secrets(&agent).is_empty(), "Pilot serves no files to it");
        assert_eq!(secrets(&file).len(), 2);

        let ctx = |p: &Proxy, upstream: bool| -> CommonTlsContext {
            let socket = if upstream {
                istio_mutual_upstream(p, "sni".into(), &[], false)
            } else {
                downstream(p)
            };
            let Some(transport_socket::ConfigType::TypedConfig(a)) = socket.config_type else {
                panic!("no config");
            };
            use prost::Message;
            if upstream {
                UpstreamTlsContext::decode(a.value.as_slice())
                    .unwrap()
                    .common_tls_context
                    .unwrap()
            } else {
                DownstreamTlsContext::decode(a.value.as_slice())
                    .unwrap()
                    .common_tls_context
                    .unwrap()
            }
        };
        for upstream in [true, false] {
            let c = ctx(&agent, upstream);
            let cert = &c.tls_certificate_sds_secret_configs[0];
            assert_eq!(cert.name, "default");
            let Some(ConfigSourceSpecifier::ApiConfigSource(api)) = cert
                .sds_config
                .as_ref()
                .unwrap()
                .config_source_specifier
                .clone()
            else {
                panic!("not an api_config_source: {cert:?}");
            };
            assert_eq!(api.api_type, ApiType::Grpc as i32);
            let Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) =
                api.grpc_services[0].target_specifier.clone()
            else {
                panic!("not envoy_grpc");
            };
            assert_eq!(g.cluster_name, "sds-grpc");
            let Some(ValidationContextType::CombinedValidationContext(v)) =
                c.validation_context_type
            else {
                panic!("no validation context");
            };
            assert_eq!(
                v.validation_context_sds_secret_config.unwrap().name,
                "ROOTCA"
            );

            // Without the metadata: unchanged, over ADS.
            let c = ctx(&file, upstream);
            assert!(matches!(
                c.tls_certificate_sds_secret_configs[0]
                    .sds_config
                    .as_ref()
                    .unwrap()
                    .config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(_))
            ));
        }
    }
}
