//! TLS for the listeners that take logs over TCP (HTTP ingest, syslog TCP), with rustls,
//! from `--tls-cert` (PEM chain) and `--tls-key` (PEM private key).
//!
//! Invariants:
//! - a handshake never holds up the accept loop: handshakes run in their own tasks, at most
//!   [`HANDSHAKES_IN_FLIGHT`] at once, each given up after [`HANDSHAKE_TIMEOUT`]
//! - a failed handshake closes that connection only; it is logged at debug level (a port
//!   scanner must not flood the log)

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Longest time a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes running at once; more connections wait in the kernel's backlog.
pub const HANDSHAKES_IN_FLIGHT: usize = 64;

/// The server side of TLS, loaded once at startup. Its `Debug` shows no key material.
#[derive(Clone)]
pub struct ServerTls(TlsAcceptor);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ServerTls")
    }
}

/// A problem with the certificate or key files, naming the option to fix.
#[derive(Debug)]
pub struct TlsFileError {
    pub key: &'static str,
    pub problem: String,
}

impl ServerTls {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ServerTls, TlsFileError> {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .and_then(|certificates| certificates.collect())
            .map_err(|error| TlsFileError {
                key: "tls_cert",
                problem: format!("cannot read certificates from {}: {error}", cert_path.display()),
            })?;
        if certificates.is_empty() {
            return Err(TlsFileError {
                key: "tls_cert",
                problem: format!("{} holds no PEM certificate", cert_path.display()),
            });
        }
        let private_key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| TlsFileError {
            key: "tls_key",
            problem: format!("cannot read a PEM private key from {}: {error}", key_path.display()),
        })?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(certificates, private_key)
            })
            .map_err(|error| TlsFileError {
                key: "tls_key",
                problem: format!("the key does not fit the certificate: {error}"),
            })?;
        Ok(ServerTls(TlsAcceptor::from(Arc::new(config))))
    }

    /// Completes the handshake on `stream`, within [`HANDSHAKE_TIMEOUT`].
    pub async fn handshake(&self, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.0.accept(stream)).await {
            Ok(Ok(tls_stream)) => Some(tls_stream),
            Ok(Err(error)) => {
                debug!(%peer, error = %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// A listener for `axum::serve` that hands over connections once their handshake is done.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_address: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` and runs the handshakes until `shutdown`.
    pub fn spawn(listener: TcpListener, tls: ServerTls, shutdown: CancellationToken) -> std::io::Result<TlsListener> {
        let local_address = listener.local_addr()?;
        let (sender, connections) = mpsc::channel(HANDSHAKES_IN_FLIGHT);
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
        tokio::spawn(async move {
            let mut backoff = super::syslog::ACCEPT_BACKOFF_FIRST;
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.cancelled() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        if backoff == super::syslog::ACCEPT_BACKOFF_FIRST {
                            warn!(error = %error, "HTTPS accept failed: backing off");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(super::syslog::ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                backoff = super::syslog::ACCEPT_BACKOFF_FIRST;
                let tls = tls.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    if let Some(tls_stream) = tls.handshake(stream, peer).await {
                        let _ = sender.send((tls_stream, peer)).await;
                    }
                    drop(permit);
                });
            }
        });
        Ok(TlsListener {
            connections,
            local_address,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accepting task ended (stopping): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_address)
    }
}
