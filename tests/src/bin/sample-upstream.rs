//! Sample upstream services for `make run`: each `NAME=ADDR` argument starts an HTTP server on
//! ADDR that answers every request with its own name (and echoes requests on `/echo`).
//! Runs until SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context as _;
use mesh_tests::Upstream;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let specs: Vec<String> = std::env::args().skip(1).collect();
    if specs.is_empty() || specs.iter().any(|s| s == "-h" || s == "--help") {
        eprintln!(
            "usage: sample-upstream NAME=ADDR [NAME=ADDR...]   e.g. reviews-v1=127.0.0.11:19080"
        );
        std::process::exit(2);
    }
    let mut upstreams = Vec::new();
    for spec in specs {
        let (name, addr) = spec
            .split_once('=')
            .with_context(|| format!("{spec:?}: expected NAME=ADDR"))?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("{spec:?}: {addr:?} is not an address"))?;
        let up = Upstream::start(name, addr).await?;
        eprintln!("sample-upstream: {name} on {}", up.addr());
        upstreams.push(up);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    for up in upstreams {
        up.stop().await;
    }
    Ok(())
}
