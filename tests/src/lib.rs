//! Test harness: real Envoy processes and sample upstream servers for integration tests.
//!
//! - [`Envoy`] runs a stock Envoy (see [`envoy_binary`]) from a JSON bootstrap, on a free
//!   admin port, with its log kept in a temp dir ([`Envoy::logs`], also printed when a test
//!   panics while the Envoy is alive). Dropping it kills the process.
//! - [`Upstream`] is a sample HTTP/1.1 backend on a chosen `127.0.0.x` address: it answers
//!   `<name>\n` with an `x-upstream: <name>` header, echoes the request as JSON on `/echo`,
//!   and counts requests.
//! - [`http_get`] / [`http_request`] send one request (one connection) with explicit headers,
//!   e.g. `Host: reviews:9080` to an Envoy listener on `127.0.0.1:PORT`.
//!
//! - [`Service`] runs one of this project's binaries (built on demand) with its monitoring
//!   server on a free port.
//!
//! - [`Agent`] runs `pilot-agent proxy` (which runs and supervises its own Envoy) with a
//!   pod's Downward API environment, on free admin and status ports ([`agent`]).
//!
//! - [`netns`]: a network namespace joined to the host by a veth pair (root only), for the
//!   interception tests.
//!
//! - [`cluster`]: the local Kubernetes cluster (`tests/cluster/`) for the `cluster_*` tests:
//!   started once per run, a namespace per test, a kube client and kubectl on its kubeconfig.
//!
//! All traffic stays on `127.0.0.0/8`.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mesh_tests::{Envoy, Upstream, http_get};
//! let up = Upstream::start("a", "127.0.0.1:0".parse()?).await?;
//! let bootstrap = serde_json::json!({ "static_resources": {} }); // listeners, clusters...
//! let envoy = Envoy::start(bootstrap).await?;
//! let resp = http_get("http://127.0.0.1:10000/", &[("host", "a")]).await?;
//! assert_eq!(resp.body, "a\n");
//! envoy.stop().await?;
//! # let _ = up; Ok(()) }
//! ```

pub mod agent;
pub mod cluster;
mod envoy;
mod http;
pub mod jwt;
pub mod mesh;
pub mod netns;
pub mod prometheus;
mod service;
mod upstream;

use std::collections::BTreeSet;

pub use agent::{Agent, AgentOptions};
pub use cluster::{Cluster, TestNamespace};
pub use envoy::{Envoy, READY_TIMEOUT, envoy_binary};
pub use http::{HttpResponse, http_get, http_request};
/// Re-exported for [`http_request`] callers and status checks.
pub use hyper::{Method, StatusCode};
pub use service::{Service, repo_root, workspace_binary};
pub use upstream::Upstream;

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read, closed).
///
/// Racy against other processes by nature, but never the same port twice in one test
/// process: the kernel hands a just-closed ephemeral port out again, and two services of
/// one test given the same port fail with "Address already in use".
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

/// A server binary the tests run for real; missing, the test fails and says how to get it.
pub fn require(binary: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()));
    assert!(
        found,
        "{binary} is not installed: run `make deps` (tests/scripts/deps.sh installs it)"
    );
}

/// Waits up to `wait` until something accepts TCP connections on 127.0.0.1:`port`; fails
/// with `log` (the child's output) when the child exits first.
pub async fn wait_port(
    port: u16,
    what: &str,
    child: &mut tokio::process::Child,
    log: &std::path::Path,
    wait: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + wait;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen on {port}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
