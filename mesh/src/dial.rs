//! Opening an HBONE connection to a peer's `:15008`: mutual TLS as a workload over a TCP
//! connection the caller starts (from a pod's netns, or plainly), then HTTP/2 — each step
//! bounded in time and its failure named by a [`TransportFailure`]. The node proxy's and the
//! waypoint's pool connectors both dial through here; only how the TCP socket is made differs.
//! A program implements [`DialAsWorkload`] and gets the pool's [`Connector`] with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::hbone::pool::{Connector, PoolKey};
use crate::hbone::{HboneClient, HboneError, TransportFailure};
use crate::identity::WorkloadCertificate;
use crate::tls::{self, KeyExchange};

/// Dials HBONE connections as a workload certificate (the key's source): what a program writes
/// to give its [`Pool`](crate::hbone::pool::Pool) a [`Connector`] — how it makes the TCP socket,
/// and what it counts — the owned key and certificate the pool's connector would clone anyway.
pub trait DialAsWorkload: Send + Sync + 'static {
    /// Dials `key`'s destination as `cert` (usually through [`dial`]).
    fn dial(
        &self,
        key: PoolKey,
        cert: Arc<WorkloadCertificate>,
    ) -> impl Future<Output = Result<HboneClient, HboneError>> + Send + '_;
}

impl<D: DialAsWorkload> Connector for D {
    /// The source's certificate, which the tunnel's caller already holds.
    type Credential = Arc<WorkloadCertificate>;

    fn connect(
        &self,
        key: &PoolKey,
        cert: &Arc<WorkloadCertificate>,
    ) -> Pin<Box<dyn Future<Output = Result<HboneClient, HboneError>> + Send + '_>> {
        Box::pin(self.dial(key.clone(), cert.clone()))
    }
}

/// How long each step may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialTimeouts {
    /// The TCP connect.
    pub connect: Duration,
    /// The TLS and HTTP/2 handshakes.
    pub handshake: Duration,
}

/// Dials `key`'s destination as `cert` (expecting `key.server`): awaits `tcp` (the caller's
/// connect to `key.destination`), then TLS with `key_exchange`, then HTTP/2.
///
/// # Errors
/// [`HboneError::Transport`] naming the failed step: the TLS configuration, the connect (or its
/// timeout), the TLS handshake (an unexpected peer identity apart), its timeout; or the HTTP/2
/// handshake's error.
pub async fn dial(
    key: &PoolKey,
    cert: &WorkloadCertificate,
    key_exchange: KeyExchange,
    timeouts: DialTimeouts,
    tcp: impl Future<Output = std::io::Result<TcpStream>>,
) -> Result<HboneClient, HboneError> {
    let fail = |failure, step: String, source| HboneError::Transport {
        failure,
        step,
        source,
    };
    let dst = key.destination;
    let config = tls::client_config(cert, key.server.clone(), key_exchange).map_err(|e| {
        fail(
            TransportFailure::TlsConfig,
            "client tls configuration".into(),
            std::io::Error::other(e),
        )
    })?;
    let tcp = tokio::time::timeout(timeouts.connect, tcp)
        .await
        .map_err(|_| {
            fail(
                TransportFailure::ConnectTimeout,
                format!("connecting to {dst}"),
                std::io::ErrorKind::TimedOut.into(),
            )
        })?
        .map_err(|e| fail(TransportFailure::Connect, format!("connecting to {dst}"), e))?;
    let tls = tokio::time::timeout(timeouts.handshake, tls::connect(config, dst.ip(), tcp))
        .await
        .map_err(|_| {
            fail(
                TransportFailure::HandshakeTimeout,
                format!("tls handshake with {dst}"),
                std::io::ErrorKind::TimedOut.into(),
            )
        })?
        .map_err(|e| {
            let failure = if e.rejection().is_some() {
                TransportFailure::Identity
            } else {
                TransportFailure::Tls
            };
            let step = format!("tls handshake with {dst} (expecting {})", key.server);
            fail(failure, step, std::io::Error::other(e))
        })?;
    HboneClient::handshake(tls).await
}
