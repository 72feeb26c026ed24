//! Shared helpers of the `mixer_*`, `cluster_mixer` and `pilot_mixer` tests: Mixer on Istio
//! 1.0's default config plus a test's own YAML, a real Envoy calling it (ext_authz v3 for
//! checks and quotas, the gRPC access-log service for telemetry), and the real servers
//! adapters talk to (`redis-server`, `prometheus`), each on a free port with its own temp
//! directory and stopped by pid.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use mesh_tests::{Envoy, Service, Upstream, free_port, http_get, repo_root, require, wait_port};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// How long tests wait for something to happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// `mixer/tests/fixtures/policy.yaml` as a file for [`start_mixer`]: a denier for
/// `x-user: john`, a blacklist of `/admin` and `/secret`, and a memquota of 5 requests per
/// 10s for the `limited` service.
pub fn test_policy() -> (&'static str, String) {
    let path = repo_root().join("mixer/tests/fixtures/policy.yaml");
    ("policy.yaml", std::fs::read_to_string(path).unwrap())
}

/// A running Mixer and its config directory.
pub struct Mixer {
    pub svc: Service,
    pub grpc: SocketAddr,
    pub prometheus: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Starts Mixer on Istio 1.0's default config plus `files` (name, YAML).
pub async fn start_mixer(files: &[(&str, String)]) -> Mixer {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo_root().join("mixer/tests/fixtures");
    std::fs::copy(
        fixtures.join("istio-1.0-default-config.yaml"),
        dir.path().join("istio-1.0-default-config.yaml"),
    )
    .unwrap();
    for (name, yaml) in files {
        std::fs::write(dir.path().join(name), yaml).unwrap();
    }
    start_mixer_on(dir).await
}

/// Starts Mixer on the config files of `dir` (kept with the returned [`Mixer`]).
pub async fn start_mixer_on(dir: tempfile::TempDir) -> Mixer {
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let prometheus: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut svc = Service::start(
        "mixer",
        &[
            "--config-dir",
            dir.path().to_str().unwrap(),
            "--grpc-addr",
            &grpc.to_string(),
            "--prometheus-addr",
            &prometheus.to_string(),
        ],
    )
    .await
    .unwrap();
    svc.wait_ready(Duration::from_secs(60)).await.unwrap();
    Mixer {
        svc,
        grpc,
        prometheus,
        dir,
    }
}

// === impl Mixer ===

impl Mixer {
    /// `/debug/configz`.
    pub async fn configz(&self) -> Value {
        http_get(
            &format!("http://{}/debug/configz", self.svc.http_addr()),
            &[],
        )
        .await
        .unwrap()
        .json()
        .unwrap()
    }

    /// The objects refused, as "object: error" lines.
    pub async fn refused(&self) -> Vec<String> {
        self.configz().await["mixer"]["refused"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}: {}", r["object"], r["error"]))
            .collect()
    }

    /// Mixer's own metrics (its monitoring port).
    pub async fn own_metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.svc.http_addr()), &[])
            .await
            .unwrap()
            .body
    }
}

/// The sum of the samples of `name` on a metrics page whose labels include all of `labels`.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A static cluster `name` with one endpoint, `addr`; `http2` for gRPC upstreams (Mixer).
pub fn cluster(name: &str, addr: SocketAddr, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": addr.ip().to_string(),
                "port_value": addr.port(),
            }}}}]}],
        },
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            }
        });
    }
    c
}

/// A virtual host for `domain` routed to the upstream, telling Mixer (through ext_authz
/// context extensions) that its destination is `service` in `default`.
fn route(domain: &str, service: &str) -> Value {
    json!({
        "name": domain,
        "domains": [domain],
        "routes": [{
            "match": { "prefix": "/" },
            "route": { "cluster": "upstream" },
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                    "check_settings": { "context_extensions": {
                        "destination.service.name": service,
                        "destination.service.namespace": "default",
                        "destination.service.host": format!("{service}.default.svc.cluster.local"),
                    }},
                },
            },
        }],
    })
}

/// The ext_authz v3 filter checking every request with Mixer (cluster `mixer`), failing
/// closed.
pub fn ext_authz_filter() -> Value {
    json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": { "envoy_grpc": { "cluster_name": "mixer" }, "timeout": "3s" },
            "failure_mode_allow": false,
        },
    })
}

/// An access log sending every request to Mixer's gRPC access-log service (cluster
/// `mixer`), with `custom_tags` (attributes for Mixer) on each entry.
pub fn mixer_access_log(custom_tags: Value) -> Value {
    json!({
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": "mixer",
                "transport_api_version": "V3",
                "grpc_service": { "envoy_grpc": { "cluster_name": "mixer" } },
                "buffer_flush_interval": "0.1s",
                "custom_tags": custom_tags,
            },
        },
    })
}

/// An Envoy bootstrap: one HTTP listener on `port` serving `virtual_hosts` through `filter`
/// and the router, logging with `access_log` if given, and the clusters `upstream` and
/// `mixer` (HTTP/2).
pub fn envoy_bootstrap(
    port: u16,
    mixer: SocketAddr,
    upstream: SocketAddr,
    virtual_hosts: Vec<Value>,
    filter: Value,
    access_log: Option<Value>,
) -> Value {
    let router = json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        },
    });
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http",
        "route_config": { "name": "local", "virtual_hosts": virtual_hosts },
        "http_filters": [filter, router],
    });
    if let Some(log) = access_log {
        hcm["access_log"] = json!([log]);
    }
    json!({
        "static_resources": {
            "listeners": [{
                "name": "http",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": [cluster("upstream", upstream, false), cluster("mixer", mixer, true)],
        },
    })
}

/// An Envoy listening on `port`, checking every request with Mixer (failing closed) and
/// logging every request to it; `services` are the Host values it routes.
fn bootstrap(port: u16, mixer: SocketAddr, upstream: SocketAddr, services: &[&str]) -> Value {
    let tags = json!([
        { "tag": "destination.service.host", "request_header": { "name": "x-destination-host", "default_value": "svc.default.svc.cluster.local" } },
        { "tag": "destination.service.name", "literal": { "value": "svc" } },
    ]);
    envoy_bootstrap(
        port,
        mixer,
        upstream,
        services.iter().map(|s| route(s, s)).collect(),
        ext_authz_filter(),
        Some(mixer_access_log(tags)),
    )
}

/// Mixer, a sample upstream and an Envoy in front of it.
pub struct Setup {
    pub mixer: Mixer,
    pub envoy: Envoy,
    pub upstream: Upstream,
    pub url: String,
}

/// Starts Mixer with `files`, an upstream and an Envoy routing `services` (Host values).
pub async fn setup(files: &[(&str, String)], services: &[&str]) -> Setup {
    let mixer = start_mixer(files).await;
    let upstream = Upstream::start("backend", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = free_port();
    let envoy = Envoy::start(bootstrap(port, mixer.grpc, upstream.addr(), services))
        .await
        .unwrap();
    Setup {
        mixer,
        envoy,
        upstream,
        url: format!("http://127.0.0.1:{port}"),
    }
}

// === impl Setup ===

impl Setup {
    /// GET `path` with `Host: host` and the extra headers: (status, body).
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        let r = http_get(&format!("{}{path}", self.url), &all)
            .await
            .unwrap();
        (r.status.as_u16(), r.body)
    }
}

/// Kills a child process by pid (SIGKILL) and reaps it.
async fn kill(child: &mut Child) {
    let _ = child.kill().await;
}

/// A `redis-server` on 127.0.0.1, without persistence, in its own temp directory.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

// === impl Redis ===

impl Redis {
    /// Starts one on a free port.
    pub async fn start() -> Redis {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (e.g. where an earlier one was).
    pub async fn start_on(port: u16) -> Redis {
        require("redis-server");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        wait_port(port, "redis-server", &mut child, &log, WAIT).await;
        Redis { child, port, dir }
    }

    /// `host:port`, as redisquota's `redisServerUrl` takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL by pid: a crash, as far as clients can tell).
    pub async fn stop(mut self) {
        kill(&mut self.child).await;
    }
}
