//! The gRPC front doors, all on `--grpc-addr`: Envoy's ext_authz v3 (checks and the quotas
//! of bound QuotaSpecs), access-log service v3 (reports) and rate limit service v3 (quotas
//! per descriptor), and Mixer's own `istio.mixer.v1.Mixer` (Check and Report with compressed
//! attributes, as Istio's proxies sent them). They translate messages into attribute bags and
//! the dispatcher's answers back; the core knows nothing of gRPC.

pub mod accesslog;
pub mod bag;
pub mod compressed;
pub mod dictionary;
pub mod ext_authz;
pub mod live;
pub mod mixer_v1;
pub mod ratelimit;

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use mesh_proto::grpc::istio::mixer::v1::mixer_server::MixerServer;
use mesh_runtime::Shutdown;

use crate::dispatch::Dispatcher;

/// Errors of the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds the gRPC address (so a port conflict fails at startup).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves ext_authz, ALS, rate limit and `istio.mixer.v1` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dispatcher: Arc<Dispatcher>,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    serve_with_graph(listener, dispatcher, None, shutdown).await
}

/// [`serve`], feeding the reports (ALS and `istio.mixer.v1`) to the topology `graph` too.
pub async fn serve_with_graph(
    listener: tokio::net::TcpListener,
    dispatcher: Arc<Dispatcher>,
    graph: Option<Arc<crate::graph::Graph>>,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            "gRPC server listening (ext_authz v3, access-log service v3, rate limit service v3, istio.mixer.v1)"
        );
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(ext_authz::ExtAuthz::new(
            dispatcher.clone(),
        )))
        .add_service(AccessLogServiceServer::new(
            accesslog::AccessLog::new(dispatcher.clone(), shutdown.clone())
                .with_graph(graph.clone()),
        ))
        .add_service(RateLimitServiceServer::new(ratelimit::RateLimit::new(
            dispatcher.clone(),
        )))
        .add_service(MixerServer::new(
            mixer_v1::MixerV1::new(dispatcher).with_graph(graph),
        ))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// A dispatcher over `yaml` (Mixer config), with adapters that start no tasks, for the front
/// doors' unit tests.
#[cfg(test)]
pub(crate) fn test_dispatcher(yaml: &str) -> Arc<Dispatcher> {
    use crate::adapter::AdapterEnv;
    use crate::config::{CompileOptions, Compiler};
    use crate::dispatch::Metrics;

    let mut objects = std::collections::BTreeMap::new();
    for r in mesh_runtime::config::parse_file(std::path::Path::new("test.yaml"), yaml) {
        let o = r.expect("test config parses");
        objects.insert(o.key.clone(), Arc::new(o));
    }
    let snap = mesh_runtime::Snapshot::new(1, true, objects, Vec::new());
    let env = AdapterEnv {
        prometheus: Default::default(),
        start_tasks: false,
        shutdown: Default::default(),
    };
    let metrics = Arc::new(Metrics::default());
    let resolved = Compiler::new(CompileOptions::default(), env, metrics.clone()).compile(&snap);
    assert!(resolved.refused.is_empty(), "{:#?}", resolved.refused);
    Arc::new(Dispatcher::new(resolved, metrics))
}

/// The test policy of the integration tests: a denier for `x-user: john`, a path blacklist
/// and a memquota of 5 per 10s for the `limited` service.
#[cfg(test)]
pub(crate) const TEST_POLICY: &str = include_str!("../../tests/fixtures/policy.yaml");
