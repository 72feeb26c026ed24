//! An HTTPS client of the webhook for tests and benchmarks: one kept-alive HTTP/1.1
//! connection over rustls that trusts one certificate, as the API server trusts the
//! caBundle.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("server name: {0}")]
    Name(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One connection to the webhook.
#[derive(Debug)]
pub struct HttpsClient {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

// === impl HttpsClient ===

impl HttpsClient {
    /// Connects to `addr`, verifying that it serves a certificate for `server_name` issued
    /// by (or being) `ca`.
    pub async fn connect(
        addr: SocketAddr,
        ca: CertificateDer<'static>,
        server_name: &str,
    ) -> Result<HttpsClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string())?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpsClient {
            sender,
            host: server_name.to_string(),
        })
    }

    /// POSTs `body` (JSON) to `path`: the status and the body of the answer.
    pub async fn post(
        &mut self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(hyper::StatusCode, Bytes), ClientError> {
        let request = hyper::Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
