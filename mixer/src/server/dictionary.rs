//! The global dictionary of Mixer's wire API: the words every Istio proxy and Mixer agree on,
//! so a compressed attribute bag can name `request.headers` or `:path` by a small index
//! instead of spelling it out.
//!
//! The list is a wire fact (index to word), kept here as data: Istio only ever appended to
//! it, so a client built against an older, shorter list says how many words it knows
//! (`global_word_count`) and indices past that are not its to use. Some words occur twice
//! (`0`, `1`); each index still names exactly one word.

use std::collections::HashMap;
use std::sync::LazyLock;

/// The global dictionary, by index.
pub const GLOBAL_DICTIONARY: &[&str] = &[
    // 0
    "source.ip",
    "source.port",
    "source.name",
    "source.uid",
    "source.namespace",
    "source.labels",
    "source.user",
    "target.ip",
    "target.port",
    "target.service",
    // 10
    "target.name",
    "target.uid",
    "target.namespace",
    "target.labels",
    "target.user",
    "request.headers",
    "request.id",
    "request.path",
    "request.host",
    "request.method",
    // 20
    "request.reason",
    "request.referer",
    "request.scheme",
    "request.size",
    "request.time",
    "request.useragent",
    "response.headers",
    "response.size",
    "response.time",
    "response.duration",
    // 30
    "response.code",
    ":authority",
    ":method",
    ":path",
    ":scheme",
    ":status",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    // 40
    "access-control-request-method",
    "access-control-request-headers",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow",
    "age",
    "allow",
    // 50
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    // 60
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    // 70
    "if-unmodified-since",
    "keep-alive",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    // 80
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-sec",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
    // 90
    "GET",
    "POST",
    "http",
    "envoy",
    "200",
    "Keep-Alive",
    "chunked",
    "x-envoy-service-time",
    "x-forwarded-for",
    "x-forwarded-host",
    // 100
    "x-forwarded-proto",
    "x-http-method-override",
    "x-request-id",
    "x-requested-with",
    "application/json",
    "application/xml",
    "gzip",
    "text/html",
    "text/html; charset=utf-8",
    "text/plain",
    // 110
    "text/plain; charset=utf-8",
    "0",
    "1",
    "true",
    "false",
    "gzip, deflate",
    "max-age=0",
    "x-envoy-upstream-service-time",
    "x-envoy-internal",
    "x-envoy-expected-rq-timeout-ms",
    // 120
    "x-ot-span-context",
    "x-b3-traceid",
    "x-b3-sampled",
    "x-b3-spanid",
    "tcp",
    "connection.id",
    "connection.received.bytes",
    "connection.received.bytes_total",
    "connection.sent.bytes",
    "connection.sent.bytes_total",
    // 130
    "connection.duration",
    "context.protocol",
    "context.timestamp",
    "context.time",
    "0",
    "1",
    "200",
    "302",
    "400",
    "401",
    // 140
    "403",
    "404",
    "409",
    "429",
    "499",
    "500",
    "501",
    "502",
    "503",
    "504",
    // 150
    "destination.ip",
    "destination.port",
    "destination.service",
    "destination.name",
    "destination.uid",
    "destination.namespace",
    "destination.labels",
    "destination.user",
    "source.service",
    "api.service",
    // 160
    "api.version",
    "api.operation",
    "api.protocol",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.api_key",
    "check.error_code",
    "check.error_message",
    "request.total_size",
    // 170
    "response.total_size",
    "connection.event",
    "check.cache_hit",
    "quota.cache_hit",
    "source.principal",
    "request.auth.claims",
    "request.auth.raw_claims",
    "connection.mtls",
    "source.metadata",
    "source.owner",
    // 180
    "source.services",
    "source.workload.uid",
    "source.workload.name",
    "source.workload.namespace",
    "destination.metadata",
    "destination.owner",
    "destination.principal",
    "destination.workload.uid",
    "destination.workload.name",
    "destination.workload.namespace",
    // 190
    "destination.service.uid",
    "destination.service.name",
    "destination.service.namespace",
    "destination.service.host",
    "destination.container.name",
    "destination.container.image",
    "context.reporter.local",
    "context.reporter.uid",
    "response.grpc_status",
    "response.grpc_message",
    // 200
    "context.reporter.type",
    "context.reporter.kind",
    "connection.requested_server_name",
    "request.url_path",
    "request.query_params",
    "context.proxy_error_code",
    "UH",
    "UF",
    "UO",
    "NR",
    // 210
    "LH",
    "UT",
    "LR",
    "UR",
    "UC",
    "DI",
    "FI",
    "RL",
    "-",
    "inbound",
    // 220
    "outbound",
    "context.proxy_version",
];

/// The index of `word` in the global dictionary, among its first `count` words (the first
/// occurrence when a word occurs twice).
pub fn index_of(word: &str, count: usize) -> Option<usize> {
    static INDEX: LazyLock<HashMap<&'static str, usize>> = LazyLock::new(|| {
        let mut m = HashMap::with_capacity(GLOBAL_DICTIONARY.len());
        for (i, w) in GLOBAL_DICTIONARY.iter().enumerate() {
            m.entry(*w).or_insert(i);
        }
        m
    });
    INDEX.get(word).copied().filter(|i| *i < count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_indices() {
        assert_eq!(GLOBAL_DICTIONARY.len(), 222);
        assert_eq!(GLOBAL_DICTIONARY[0], "source.ip");
        assert_eq!(GLOBAL_DICTIONARY[15], "request.headers");
        assert_eq!(GLOBAL_DICTIONARY[31], ":authority");
        assert_eq!(GLOBAL_DICTIONARY[113], "true");
        assert_eq!(GLOBAL_DICTIONARY[143], "429");
        assert_eq!(GLOBAL_DICTIONARY[191], "destination.service.name");
        assert_eq!(GLOBAL_DICTIONARY[203], "request.url_path");
        assert_eq!(GLOBAL_DICTIONARY[221], "context.proxy_version");
    }

    #[test]
    fn index_of_respects_the_count_and_takes_the_first_duplicate() {
        assert_eq!(index_of("request.headers", 222), Some(15));
        assert_eq!(index_of("context.proxy_version", 221), None);
        assert_eq!(index_of("0", 222), Some(111));
        assert_eq!(index_of("no such word", 222), None);
    }
}
