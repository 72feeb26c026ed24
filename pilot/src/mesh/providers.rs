//! MeshConfig `extensionProviders`: the external authorizers an AuthorizationPolicy with
//! action CUSTOM names (`provider.name`). Envoy's ext_authz over gRPC (`envoyExtAuthzGrpc`,
//! Mixer's ext_authz door being one) or over HTTP (`envoyExtAuthzHttp`). Providers of other
//! kinds (tracing, access logging) are kept as read and not acted on here.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_proto::types::Duration as IstioDuration;
use serde::{Deserialize, Deserializer};

/// Istio's default time an ext_authz provider has to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Istio's default status of a request whose provider could not be reached.
pub const DEFAULT_STATUS_ON_ERROR: u32 = 403;

/// One entry of `extensionProviders`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default)]
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpc>,
    #[serde(default)]
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    /// Providers of other kinds (`zipkin`, `prometheus`, `envoyFileAccessLog`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `envoyExtAuthzGrpc`: Envoy's ext_authz gRPC service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzGrpc {
    /// `[NAMESPACE/]HOSTNAME` of a service in the registry.
    pub service: String,
    #[serde(deserialize_with = "port_number")]
    pub port: u32,
    pub timeout: Option<IstioDuration>,
    pub fail_open: bool,
    pub clear_route_cache: bool,
    /// The HTTP status of a request when the provider fails (default 403).
    pub status_on_error: String,
    pub include_request_body_in_check: Option<BodyInCheck>,
}

/// `envoyExtAuthzHttp`: an HTTP authorization server asked with the request's headers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtAuthzHttp {
    pub service: String,
    #[serde(deserialize_with = "port_number")]
    pub port: u32,
    pub timeout: Option<IstioDuration>,
    pub path_prefix: String,
    pub fail_open: bool,
    pub status_on_error: String,
    /// Request headers sent to the provider (exact, `prefix*` or `*suffix`, any case).
    pub include_request_headers_in_check: Vec<String>,
    /// Headers added to the check request.
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    pub include_request_body_in_check: Option<BodyInCheck>,
    /// The provider's response headers that go on to the workload when it allows.
    pub headers_to_upstream_on_allow: Vec<String>,
    /// The provider's response headers that go back to the client when it denies.
    pub headers_to_downstream_on_deny: Vec<String>,
    /// The provider's response headers that go back to the client when it allows.
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BodyInCheck {
    pub max_request_bytes: u32,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
}

/// A port as a number or, as Istio's own samples write it, a quoted number.
fn port_number<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u32),
        Text(String),
    }
    match Port::deserialize(d)? {
        Port::Number(n) => Ok(n),
        Port::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a port number"))),
    }
}

/// What an ext_authz provider is, once checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExtAuthz<'a> {
    Grpc(&'a ExtAuthzGrpc),
    Http(&'a ExtAuthzHttp),
}

// === impl ExtensionProvider ===

impl ExtensionProvider {
    /// The provider as an ext_authz one, when it is.
    pub fn ext_authz(&self) -> Option<ExtAuthz<'_>> {
        match (&self.envoy_ext_authz_grpc, &self.envoy_ext_authz_http) {
            (Some(g), None) => Some(ExtAuthz::Grpc(g)),
            (None, Some(h)) => Some(ExtAuthz::Http(h)),
            _ => None,
        }
    }
}

// === impl ExtAuthz ===

impl ExtAuthz<'_> {
    pub fn service(&self) -> &str {
        match self {
            ExtAuthz::Grpc(g) => &g.service,
            ExtAuthz::Http(h) => &h.service,
        }
    }

    pub fn port(&self) -> u32 {
        match self {
            ExtAuthz::Grpc(g) => g.port,
            ExtAuthz::Http(h) => h.port,
        }
    }

    /// The hostname part of `service` (`[NAMESPACE/]HOSTNAME`).
    pub fn hostname(&self) -> &str {
        let s = self.service();
        s.split_once('/').map_or(s, |(_, host)| host)
    }

    pub fn timeout(&self) -> Duration {
        match self {
            ExtAuthz::Grpc(g) => g.timeout.as_ref(),
            ExtAuthz::Http(h) => h.timeout.as_ref(),
        }
        .map_or(DEFAULT_TIMEOUT, |d| d.as_std())
    }

    pub fn fail_open(&self) -> bool {
        match self {
            ExtAuthz::Grpc(g) => g.fail_open,
            ExtAuthz::Http(h) => h.fail_open,
        }
    }

    /// The status of a request when the provider fails (checked by [`validate`]).
    pub fn status_on_error(&self) -> u32 {
        let s = match self {
            ExtAuthz::Grpc(g) => &g.status_on_error,
            ExtAuthz::Http(h) => &h.status_on_error,
        };
        s.parse().unwrap_or(DEFAULT_STATUS_ON_ERROR)
    }

    pub fn body(&self) -> Option<&BodyInCheck> {
        match self {
            ExtAuthz::Grpc(g) => g.include_request_body_in_check.as_ref(),
            ExtAuthz::Http(h) => h.include_request_body_in_check.as_ref(),
        }
    }
}

/// Checks `extensionProviders`: `Err((field, message))` names the first problem.
pub fn validate(providers: &[ExtensionProvider]) -> Result<(), (String, String)> {
    let mut seen = BTreeMap::new();
    for (i, p) in providers.iter().enumerate() {
        let at = |f: &str| format!("extensionProviders[{i}]{f}");
        if p.name.trim().is_empty() {
            return Err((at(".name"), "a provider needs a name".into()));
        }
        if let Some(first) = seen.insert(p.name.as_str(), i) {
            return Err((
                at(".name"),
                format!(
                    "{:?} is also the name of extensionProviders[{first}]; names must be unique",
                    p.name
                ),
            ));
        }
        let kinds = usize::from(p.envoy_ext_authz_grpc.is_some())
            + usize::from(p.envoy_ext_authz_http.is_some())
            + p.other.len();
        if kinds != 1 {
            return Err((
                at(""),
                format!(
                    "provider {:?} must set exactly one kind (envoyExtAuthzGrpc, \
                     envoyExtAuthzHttp, ...); it sets {kinds}",
                    p.name
                ),
            ));
        }
        let Some(ext) = p.ext_authz() else {
            continue;
        };
        let kind = match ext {
            ExtAuthz::Grpc(_) => ".envoyExtAuthzGrpc",
            ExtAuthz::Http(_) => ".envoyExtAuthzHttp",
        };
        let field = |f: &str| at(&format!("{kind}.{f}"));
        let host = ext.hostname();
        if host.is_empty() || host.contains(['/', ' ', ':']) {
            return Err((
                field("service"),
                format!(
                    "{:?}: expected [NAMESPACE/]HOSTNAME of a service in the registry",
                    ext.service()
                ),
            ));
        }
        if !(1..=65535).contains(&ext.port()) {
            return Err((
                field("port"),
                format!("{}: expected a port number (1-65535)", ext.port()),
            ));
        }
        let status = match ext {
            ExtAuthz::Grpc(g) => &g.status_on_error,
            ExtAuthz::Http(h) => &h.status_on_error,
        };
        if !status.is_empty()
            && !status
                .parse::<u32>()
                .is_ok_and(|s| (200..=599).contains(&s))
        {
            return Err((
                field("statusOnError"),
                format!("{status:?}: expected an HTTP status code (200-599)"),
            ));
        }
        if ext.timeout().is_zero() {
            return Err((field("timeout"), "must be more than 0".into()));
        }
        if let ExtAuthz::Http(h) = ext {
            if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
                return Err((
                    field("pathPrefix"),
                    format!("{:?}: must start with /", h.path_prefix),
                ));
            }
            for (list, values) in [
                (
                    "includeRequestHeadersInCheck",
                    &h.include_request_headers_in_check,
                ),
                ("headersToUpstreamOnAllow", &h.headers_to_upstream_on_allow),
                (
                    "headersToDownstreamOnDeny",
                    &h.headers_to_downstream_on_deny,
                ),
                (
                    "headersToDownstreamOnAllow",
                    &h.headers_to_downstream_on_allow,
                ),
            ] {
                for (j, v) in values.iter().enumerate() {
                    header_glob(v).map_err(|m| (field(&format!("{list}[{j}]")), m))?;
                }
            }
            for k in h.include_additional_headers_in_check.keys() {
                if !is_header_name(k) {
                    return Err((
                        field(&format!("includeAdditionalHeadersInCheck[{k}]")),
                        format!("{k:?} is not a header name"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A header name pattern of a provider: exact, `prefix*` or `*suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderGlob<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
}

/// Parses a header name pattern (see [`HeaderGlob`]).
pub fn header_glob(v: &str) -> Result<HeaderGlob<'_>, String> {
    let glob = if let Some(p) = v.strip_suffix('*') {
        HeaderGlob::Prefix(p)
    } else if let Some(s) = v.strip_prefix('*') {
        HeaderGlob::Suffix(s)
    } else {
        HeaderGlob::Exact(v)
    };
    let rest = match &glob {
        HeaderGlob::Exact(s) | HeaderGlob::Prefix(s) | HeaderGlob::Suffix(s) => *s,
    };
    if rest.is_empty() || !is_header_name(rest) {
        return Err(format!(
            "{v:?}: expected a header name, `prefix*` or `*suffix`"
        ));
    }
    Ok(glob)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'+^`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Vec<ExtensionProvider> {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn istios_samples_parse() {
        let p = parse(
            r#"
- name: ext-authz-grpc
  envoyExtAuthzGrpc:
    service: ext-authz.foo.svc.cluster.local
    port: "9000"
- name: ext-authz-http
  envoyExtAuthzHttp:
    service: foo/ext-authz.foo.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: ["x-ext-authz"]
    headersToUpstreamOnAllow: ["x-ext-authz-*"]
    timeout: 2s
    statusOnError: "503"
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
"#,
        );
        validate(&p).unwrap();
        let g = p[0].ext_authz().unwrap();
        assert_eq!(
            (g.port(), g.timeout(), g.status_on_error()),
            (9000, DEFAULT_TIMEOUT, 403)
        );
        let h = p[1].ext_authz().unwrap();
        assert_eq!(h.hostname(), "ext-authz.foo.svc.cluster.local");
        assert_eq!(
            (h.timeout(), h.status_on_error()),
            (Duration::from_secs(2), 503)
        );
        assert!(p[2].ext_authz().is_none());
    }

    #[test]
    fn problems_name_the_field() {
        for (yaml, field) in [
            (
                "- name: a\n  envoyExtAuthzGrpc: {service: a.b, port: 0}\n",
                "extensionProviders[0].envoyExtAuthzGrpc.port",
            ),
            (
                "- name: a\n  envoyExtAuthzGrpc: {service: '', port: 1}\n",
                "extensionProviders[0].envoyExtAuthzGrpc.service",
            ),
            (
                "- name: a\n  envoyExtAuthzGrpc: {service: a.b, port: 1}\n- name: a\n  envoyExtAuthzGrpc: {service: a.b, port: 1}\n",
                "extensionProviders[1].name",
            ),
            (
                "- name: a\n  envoyExtAuthzHttp: {service: a.b, port: 1, statusOnError: nope}\n",
                "extensionProviders[0].envoyExtAuthzHttp.statusOnError",
            ),
            (
                "- name: a\n  envoyExtAuthzHttp: {service: a.b, port: 1, includeRequestHeadersInCheck: ['x y']}\n",
                "extensionProviders[0].envoyExtAuthzHttp.includeRequestHeadersInCheck[0]",
            ),
            (
                "- name: a\n  envoyExtAuthzHttp: {service: a.b, port: 1, pathPrefix: check}\n",
                "extensionProviders[0].envoyExtAuthzHttp.pathPrefix",
            ),
            (
                "- name: a\n  envoyExtAuthzHttp: {service: a.b, port: 1}\n  envoyExtAuthzGrpc: {service: a.b, port: 1}\n",
                "extensionProviders[0]",
            ),
            ("- name: ''\n  zipkin: {}\n", "extensionProviders[0].name"),
        ] {
            let (f, m) = validate(&parse(yaml)).unwrap_err();
            assert_eq!(f, field, "{yaml}: {m}");
        }
    }
}
