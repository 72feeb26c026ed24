//! Resources as JSON for `/debug/config_dump`, in the shape of Envoy's own admin
//! `/config_dump`: one entry per type (`ClustersConfigDump`, `EndpointsConfigDump`,
//! `ListenersConfigDump`, `RoutesConfigDump`, `SecretsConfigDump`) holding each resource decoded to JSON.
//!
//! Resources are decoded with the descriptors of Envoy's API (the set `envoy-types` ships,
//! put in `OUT_DIR` by `build.rs`) and written following the proto3 JSON mapping: camelCase field
//! names, enums by name, 64-bit integers as strings, bytes as base64, `Duration` as `"1.5s"`,
//! wrappers as their value, `Struct` as an object, and every `Any` (filters' `typedConfig`,
//! transport sockets) decoded in place with its `@type`. An `Any` of a type not described
//! there is shown as its `@type` and base64 `value`; a resource that cannot be decoded as its
//! `@type` and the `error`. Fields left at their default are omitted, as in proto3 JSON.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, ReflectMessage, Value as Field};
use serde_json::{Map, Value, json};

use super::resource::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SharedResource};

static POOL: LazyLock<Result<DescriptorPool, DumpError>> =
    LazyLock::new(|| super::resource::envoy_descriptors().map_err(DumpError::Descriptors));

/// Why a resource could not be shown.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DumpError {
    #[error("Envoy's descriptors do not load: {0}")]
    Descriptors(String),
    #[error("{0:?} is not a type URL")]
    TypeUrl(String),
    #[error("type {0} is not among the compiled descriptors")]
    UnknownType(String),
    #[error("cannot decode {type_name}: {message}")]
    Decode { type_name: String, message: String },
}

/// Envoy's admin type of the config dump section for a resource type, and the names of the
/// section's list and of the resource's field in each of its entries.
fn section_shape(type_url: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match type_url {
        CLUSTER => (
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "dynamicActiveClusters",
            "cluster",
        ),
        ENDPOINT => (
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamicEndpointConfigs",
            "endpointConfig",
        ),
        LISTENER => (
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "dynamicListeners",
            "listener",
        ),
        ROUTE => (
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "dynamicRouteConfigs",
            "routeConfig",
        ),
        SECRET => (
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "dynamicActiveSecrets",
            "secret",
        ),
        _ => return None,
    })
}

/// One section of the config dump: the resources of one type, sent at `version`. Listeners
/// are nested as Envoy nests them (`{name, activeState: {versionInfo, listener}}`).
pub fn section(type_url: &str, version: &str, resources: &[SharedResource]) -> Value {
    let Some((admin_type, list, field)) = section_shape(type_url) else {
        return json!({"@type": type_url, "error": "not a type Pilot serves"});
    };
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let config = resource_json(r);
            if type_url == LISTENER {
                json!({
                    "name": r.name,
                    "activeState": {"versionInfo": version, "listener": config},
                })
            } else if type_url == SECRET {
                json!({"name": r.name, "versionInfo": version, field: config})
            } else {
                json!({"versionInfo": version, field: config})
            }
        })
        .collect();
    let mut out = Map::new();
    out.insert("@type".into(), admin_type.into());
    if type_url == CLUSTER || type_url == LISTENER {
        out.insert("versionInfo".into(), version.into());
    }
    out.insert(list.into(), Value::Array(entries));
    Value::Object(out)
}

/// A resource as proto3 JSON with its `@type`; on failure, its `@type` and the error.
pub fn resource_json(r: &SharedResource) -> Value {
    any_json(&r.any.type_url, &r.any.value)
        .unwrap_or_else(|e| json!({"@type": r.any.type_url, "error": e.to_string()}))
}

/// The message in an `Any` as JSON, with its `@type` first.
pub fn any_json(type_url: &str, value: &[u8]) -> Result<Value, DumpError> {
    let pool = POOL.as_ref().map_err(Clone::clone)?;
    let name = type_url
        .rsplit_once('/')
        .map(|(_, name)| name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DumpError::TypeUrl(type_url.to_string()))?;
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| DumpError::UnknownType(name.to_string()))?;
    let msg = DynamicMessage::decode(desc, value).map_err(|e| DumpError::Decode {
        type_name: name.to_string(),
        message: e.to_string(),
    })?;
    let mut out = Map::new();
    out.insert("@type".into(), type_url.into());
    match message_json(&msg) {
        Value::Object(fields) if !is_well_known(name) => out.extend(fields),
        other => {
            out.insert("value".into(), other);
        }
    }
    Ok(Value::Object(out))
}

/// Well-known types have a JSON form of their own, which an `Any` holds under `value`.
fn is_well_known(name: &str) -> bool {
    name.starts_with("google.protobuf.")
}

/// A message as proto3 JSON.
fn message_json(msg: &DynamicMessage) -> Value {
    let name = msg.descriptor().full_name().to_string();
    let get = |field: &str| msg.get_field_by_name(field);
    match name.as_str() {
        "google.protobuf.Any" => {
            let type_url = get("type_url");
            let value = get("value");
            let (Some(Field::String(url)), Some(Field::Bytes(bytes))) =
                (type_url.as_deref(), value.as_deref())
            else {
                return json!({});
            };
            if url.is_empty() {
                return json!({});
            }
            any_json(url, bytes).unwrap_or_else(|_| json!({"@type": url, "value": base64(bytes)}))
        }
        "google.protobuf.Duration" | "google.protobuf.Timestamp" => {
            let seconds = match get("seconds").as_deref() {
                Some(Field::I64(s)) => *s,
                _ => 0,
            };
            let nanos = match get("nanos").as_deref() {
                Some(Field::I32(n)) => *n,
                _ => 0,
            };
            if name.ends_with("Duration") {
                Value::String(duration(seconds, nanos))
            } else {
                Value::String(timestamp(seconds, nanos))
            }
        }
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => {
            match (msg.descriptor().get_field_by_name("value"), get("value")) {
                (Some(field), Some(v)) => value_json(&field.kind(), &v),
                _ => Value::Null,
            }
        }
        "google.protobuf.Struct" => match get("fields").as_deref() {
            Some(Field::Map(map)) => {
                let mut entries: Vec<(String, Value)> = map
                    .iter()
                    .map(|(k, v)| (map_key(k), struct_value(v)))
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().collect())
            }
            _ => json!({}),
        },
        "google.protobuf.ListValue" => match get("values").as_deref() {
            Some(Field::List(items)) => Value::Array(items.iter().map(struct_value).collect()),
            _ => json!([]),
        },
        "google.protobuf.Value" => msg
            .fields()
            .next()
            .map(|(field, v)| match (field.name(), v) {
                ("null_value", _) => Value::Null,
                (_, Field::Message(m)) => message_json(m),
                _ => value_json(&field.kind(), v),
            })
            .unwrap_or(Value::Null),
        "google.protobuf.FieldMask" => match get("paths").as_deref() {
            Some(Field::List(paths)) => Value::String(
                paths
                    .iter()
                    .filter_map(|p| p.as_str().map(camel_case))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => Value::String(String::new()),
        },
        _ => {
            let mut out = Map::new();
            for (field, v) in msg.fields() {
                let json = if field.is_map() {
                    let Kind::Message(entry) = field.kind() else {
                        continue;
                    };
                    let value_kind = entry.map_entry_value_field().kind();
                    match v {
                        Field::Map(map) => {
                            let mut entries: Vec<(String, Value)> = map
                                .iter()
                                .map(|(k, v)| (map_key(k), value_json(&value_kind, v)))
                                .collect();
                            entries.sort_by(|a, b| a.0.cmp(&b.0));
                            Value::Object(entries.into_iter().collect())
                        }
                        _ => continue,
                    }
                } else {
                    value_json(&field.kind(), v)
                };
                out.insert(field.json_name().to_string(), json);
            }
            Value::Object(out)
        }
    }
}

/// A `google.protobuf.Value` held in a `Struct` or `ListValue`.
fn struct_value(v: &Field) -> Value {
    match v {
        Field::Message(m) => message_json(m),
        _ => Value::Null,
    }
}

/// A field's value (or one element of a repeated field) of kind `kind`.
fn value_json(kind: &Kind, v: &Field) -> Value {
    match v {
        Field::Bool(b) => Value::Bool(*b),
        Field::I32(n) => json!(n),
        Field::U32(n) => json!(n),
        Field::I64(n) => Value::String(n.to_string()),
        Field::U64(n) => Value::String(n.to_string()),
        Field::F32(f) => float(f64::from(*f)),
        Field::F64(f) => float(*f),
        Field::String(s) => Value::String(s.clone()),
        Field::Bytes(b) => Value::String(base64(b)),
        Field::EnumNumber(n) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => Value::Null,
            Kind::Enum(e) => e
                .get_value(*n)
                .map(|v| Value::String(v.name().to_string()))
                .unwrap_or_else(|| json!(n)),
            _ => json!(n),
        },
        Field::Message(m) => message_json(m),
        Field::List(items) => Value::Array(items.iter().map(|i| value_json(kind, i)).collect()),
        Field::Map(map) => {
            let mut entries: Vec<(String, Value)> = map
                .iter()
                .map(|(k, v)| (map_key(k), value_json(kind, v)))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
    }
}

fn float(f: f64) -> Value {
    if f.is_nan() {
        Value::String("NaN".into())
    } else if f.is_infinite() {
        Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// `snake_case` to `lowerCamelCase`, as the JSON mapping spells field names.
fn camel_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A duration as the JSON mapping writes it: seconds with 0, 3, 6 or 9 decimals, then `s`.
fn duration(seconds: i64, nanos: i32) -> String {
    let negative = seconds < 0 || nanos < 0;
    let (s, n) = (seconds.unsigned_abs(), nanos.unsigned_abs());
    let sign = if negative { "-" } else { "" };
    if n == 0 {
        format!("{sign}{s}s")
    } else if n % 1_000_000 == 0 {
        format!("{sign}{s}.{:03}s", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!("{sign}{s}.{:06}s", n / 1_000)
    } else {
        format!("{sign}{s}.{n:09}s")
    }
}

/// A timestamp in RFC 3339, UTC.
fn timestamp(seconds: i64, nanos: i32) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}

/// Standard base64 with padding, as the JSON mapping writes `bytes`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};

    use super::*;
    use crate::xds::resource::{Resource, any};

    #[test]
    fn a_cluster_reads_as_proto3_json_with_nested_any_decoded() {
        let tls = UpstreamTlsContext {
            sni: "reviews.default".into(),
            ..Default::default()
        };
        let c = Cluster {
            name: "outbound|9080||reviews".into(),
            connect_timeout: Some(Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
            lb_policy: cluster::LbPolicy::LeastRequest as i32,
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(any(&tls))),
            }),
            ..Default::default()
        };
        let json = resource_json(&Resource::encode(c.name.clone(), &c));
        assert_eq!(
            json,
            json!({
                "@type": CLUSTER,
                "name": "outbound|9080||reviews",
                "type": "EDS",
                "connectTimeout": "1.500s",
                "perConnectionBufferLimitBytes": 32768,
                "lbPolicy": "LEAST_REQUEST",
                "transportSocket": {
                    "name": "envoy.transport_sockets.tls",
                    "typedConfig": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": "reviews.default",
                    },
                },
            })
        );
    }

    #[test]
    fn unknown_and_broken_resources_say_so() {
        let unknown = Resource::new(
            "x",
            "0000000000000001",
            Any {
                type_url: "type.googleapis.com/example.Nope".into(),
                value: vec![1, 2, 3],
            },
        );
        let json = resource_json(&unknown);
        assert_eq!(json["@type"], "type.googleapis.com/example.Nope");
        assert!(json["error"].as_str().unwrap().contains("example.Nope"));
        let broken = Resource::new(
            "x",
            "0000000000000001",
            Any {
                type_url: CLUSTER.into(),
                value: vec![0xff, 0xff, 0xff],
            },
        );
        assert!(
            resource_json(&broken)["error"]
                .as_str()
                .unwrap()
                .starts_with("cannot decode")
        );
        // An Any of an unknown type inside a known resource: its @type and bytes.
        let c = Cluster {
            name: "c".into(),
            transport_socket: Some(TransportSocket {
                name: "t".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/example.Nope".into(),
                    value: vec![1],
                })),
            }),
            ..Default::default()
        };
        let json = resource_json(&Resource::encode("c", &c));
        assert_eq!(
            json["transportSocket"]["typedConfig"],
            json!({"@type": "type.googleapis.com/example.Nope", "value": "AQ=="})
        );
        assert!(undecoded(&json, "c").is_some());
    }

    #[test]
    fn scalar_encodings_follow_the_json_mapping() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(duration(0, 0), "0s");
        assert_eq!(duration(-1, -500_000_000), "-1.500s");
        assert_eq!(duration(0, 1_000), "0.000001s");
        assert_eq!(duration(3, 1), "3.000000001s");
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(951_782_400, 5_000_000),
            "2000-02-29T00:00:00.005Z"
        );
        assert_eq!(camel_case("foo_bar_baz"), "fooBarBaz");
    }

    #[test]
    fn sections_have_envoys_shape() {
        let c = Resource::encode(
            "a",
            &Cluster {
                name: "a".into(),
                ..Default::default()
            },
        );
        let s = section(CLUSTER, "v1", &[c]);
        assert_eq!(
            s["@type"],
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
        );
        assert_eq!(s["dynamicActiveClusters"][0]["cluster"]["name"], "a");
        assert_eq!(s["dynamicActiveClusters"][0]["versionInfo"], "v1");
    }

    /// Every typed config Pilot puts in its resources has its descriptor compiled in.
    #[test]
    fn the_descriptors_cover_the_typed_configs_pilot_generates() {
        use envoy_types::pb::envoy::extensions as ext;
        use prost::Name;
        let names = [
            ext::filters::network::http_connection_manager::v3::HttpConnectionManager::full_name(),
            ext::filters::network::tcp_proxy::v3::TcpProxy::full_name(),
            ext::filters::network::ext_authz::v3::ExtAuthz::full_name(),
            ext::filters::http::router::v3::Router::full_name(),
            ext::filters::http::cors::v3::Cors::full_name(),
            ext::filters::http::fault::v3::HttpFault::full_name(),
            ext::filters::http::ext_authz::v3::ExtAuthz::full_name(),
            ext::filters::http::ext_authz::v3::ExtAuthzPerRoute::full_name(),
            ext::filters::listener::tls_inspector::v3::TlsInspector::full_name(),
            ext::access_loggers::grpc::v3::HttpGrpcAccessLogConfig::full_name(),
            ext::access_loggers::grpc::v3::TcpGrpcAccessLogConfig::full_name(),
            ext::retry::host::previous_hosts::v3::PreviousHostsPredicate::full_name(),
            ext::transport_sockets::tls::v3::UpstreamTlsContext::full_name(),
            ext::transport_sockets::tls::v3::DownstreamTlsContext::full_name(),
            ext::upstreams::http::v3::HttpProtocolOptions::full_name(),
        ];
        let pool = POOL.as_ref().unwrap();
        for name in names {
            assert!(pool.get_message_by_name(&name).is_some(), "{name}");
        }
    }

    /// Whether a dump holds an error or an `Any` left undecoded, with where.
    fn undecoded(v: &Value, path: &str) -> Option<String> {
        match v {
            Value::Object(map) => {
                if map.contains_key("error") {
                    return Some(format!("{path}: {v}"));
                }
                let ty = map.get("@type").and_then(Value::as_str).unwrap_or("");
                let fallback = map.len() == 2
                    && !ty.is_empty()
                    && !ty.contains("google.protobuf.")
                    && map.get("value").is_some_and(Value::is_string);
                if fallback {
                    return Some(format!("{path}: {v}"));
                }
                map.iter()
                    .find_map(|(k, v)| undecoded(v, &format!("{path}.{k}")))
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| undecoded(v, &format!("{path}[{i}]"))),
            _ => None,
        }
    }

    /// Bookinfo with mTLS, faults, a gateway and Mixer: every resource Pilot generates for a
    /// sidecar and for the gateway decodes completely.
    #[test]
    fn everything_pilot_generates_for_bookinfo_decodes() {
        use std::collections::BTreeSet;

        use crate::mesh::MeshConfig;
        use crate::testutil::{TestConfig, mk_router, mk_sidecar};
        use crate::xds::resource::PUSH_ORDER;

        let mut config = TestConfig::new().file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/bookinfo.yaml"
        ));
        for f in [
            "istio-current-destination-rule-all-mtls.yaml",
            "istio-current-fault-injection-details-v1.yaml",
            "istio-current-virtual-service-ratings-test-abort.yaml",
            "istio-current-bookinfo-gateway.yaml",
        ] {
            config = config.fixture(f);
        }
        let generation = config
            .mesh(MeshConfig {
                proxy_http_port: 15080,
                mixer_check_server: "istio-policy.istio-system.svc.cluster.local:9091".into(),
                mixer_report_server: "istio-telemetry.istio-system.svc.cluster.local:9091".into(),
                access_log_file: "/dev/stdout".into(),
                ..Default::default()
            })
            .generation();
        let proxies = [
            mk_sidecar("default", "127.2.0.1")
                .pod("productpage-0")
                .labels(&[("app", "productpage"), ("version", "v1")])
                .build(),
            mk_router("istio-system", "127.2.0.9")
                .labels(&[("istio", "ingressgateway")])
                .build(),
        ];
        let mut seen = 0;
        for proxy in &proxies {
            let clusters = generation
                .resources(proxy, CLUSTER, &BTreeSet::new())
                .unwrap();
            let all_names: BTreeSet<String> = clusters
                .iter()
                .map(|c| c.name.clone())
                .chain(
                    ["http_proxy", "80", "9080", "http.80", "default", "ROOTCA"].map(String::from),
                )
                .collect();
            for ty in PUSH_ORDER {
                let resources = generation.resources(proxy, ty, &all_names).unwrap();
                let dump = section(ty, "v1", &resources);
                assert_eq!(undecoded(&dump, ty), None, "{proxy}");
                seen += resources.len();
            }
        }
        assert!(seen > 20, "only {seen} resources generated");
    }
}
