//! Envoy access-log messages for the benches that feed Mixer's report path (`check`'s report
//! rate and `graph`'s ingestion): HTTP entries with the tags a sidecar's report carries, from
//! 10.0.0.1:5000 to 10.0.0.2:9080, `GET /p/<i>`, 100 bytes in and 1,000 out, every 20th
//! answered 503.

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, LogEntries,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

/// Entry `i`, with `tags` (attribute name, value) and a response time of `latency_ns`.
pub fn entry<'a>(
    i: u32,
    tags: impl IntoIterator<Item = (&'a str, String)>,
    latency_ns: i32,
) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: socket("10.0.0.1", 5000),
            downstream_local_address: socket("10.0.0.2", 9080),
            custom_tags: tags.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            time_to_last_downstream_tx_byte: Some(Duration {
                seconds: 0,
                nanos: latency_ns,
            }),
            ..Default::default()
        }),
        request: Some(HttpRequestProperties {
            request_method: 1,
            path: format!("/p/{i}"),
            request_body_bytes: 100,
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value {
                value: if i.is_multiple_of(20) { 503 } else { 200 },
            }),
            response_body_bytes: 1000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One stream message of `entries`.
pub fn message(entries: Vec<HttpAccessLogEntry>) -> StreamAccessLogsMessage {
    StreamAccessLogsMessage {
        identifier: None,
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: entries,
        })),
    }
}
