//! The gRPC front doors, all on `--grpc-addr`: Envoy's ext_authz v3 (checks and the quotas
//! of bound QuotaSpecs) and access-log service v3 (reports). They translate Envoy's messages
//! into attribute bags and the dispatcher's answers back; the core knows nothing of gRPC.

pub mod accesslog;
pub mod bag;
pub mod ext_authz;

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
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

/// Serves ext_authz and ALS on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dispatcher: Arc<Dispatcher>,
    shutdown: Shutdown,
) -> Result<(), ServerError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "gRPC server listening (ext_authz v3, access-log service v3)");
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(ext_authz::ExtAuthz::new(
            dispatcher.clone(),
        )))
        .add_service(AccessLogServiceServer::new(accesslog::AccessLog::new(
            dispatcher,
        )))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
