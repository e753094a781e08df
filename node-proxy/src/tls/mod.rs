//! Mutual TLS between node proxies, as HBONE speaks it on port 15008 (the same as ztunnel's).
//!
//! This module owns the TLS settings and the checks of the peer's identity; certificates come
//! from [`crate::identity`], the HTTP/2 inside from [`crate::hbone`]. Invariants of every
//! configuration built here:
//! - rustls on the ring provider, TLS 1.3 only, suites TLS13_AES_256_GCM_SHA384 and
//!   TLS13_AES_128_GCM_SHA256, ring's default key exchanges (X25519, secp256r1, secp384r1);
//! - ALPN `h2` only; no SNI (the client names the server by IP, and rustls sends no SNI for IP
//!   names — `enable_sni` is off as well); no session resumption, so every connection presents
//!   and verifies certificates;
//! - the client checks the server's chain against the mesh roots and that the server's only URI
//!   SAN is exactly the identity expected for that destination (never a DNS name check);
//! - the server requires a client certificate chaining to the mesh roots whose only URI SAN is a
//!   SPIFFE ID of the server's trust domain; [`peer_identity`] reads it after the handshake.
//!
//! Handshake timeouts are the caller's: wrap [`connect`]/[`accept`] in `tokio::time::timeout`,
//! or a peer that stalls mid-handshake holds the task forever.

#[cfg(test)]
mod tests;
mod verifier;

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{NoServerSessionStorage, VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, CommonState, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::identity::{SpiffeId, SpiffeIdError, TrustDomain, WorkloadCertificate, uri_sans};

/// The only application protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// TLS 1.3 only.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// ring, restricted to the AES-GCM TLS 1.3 suites (ztunnel's order).
static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
});

/// Errors of building TLS configurations, handshakes and reading the peer's identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (a bug: the settings here are fixed).
    #[error("building the TLS {side} configuration: {source}")]
    Config {
        /// "client" or "server".
        side: &'static str,
        /// Cause.
        source: rustls::Error,
    },
    /// The mesh roots cannot verify client certificates.
    #[error("building the client certificate verifier: {0}")]
    ClientVerifier(#[source] VerifierBuilderError),
    /// The handshake failed (I/O, protocol, or the peer's certificate was refused).
    #[error("TLS handshake as {side}: {source}")]
    Handshake {
        /// "client" or "server".
        side: &'static str,
        /// Cause; [`TlsError::rejection`] digs out a refusal of the peer's identity.
        source: std::io::Error,
    },
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's leaf certificate does not parse.
    #[error("the peer's certificate is malformed: {reason}")]
    PeerCertificate {
        /// The parser's complaint.
        reason: String,
    },
    /// The peer's leaf has not exactly one URI SAN.
    #[error("the peer's certificate has {count} URI SANs, exactly one SPIFFE ID expected")]
    PeerUriSans {
        /// How many it has.
        count: usize,
    },
    /// The peer's URI SAN is not a SPIFFE workload ID.
    #[error("the peer's URI SAN is not a SPIFFE ID: {0}")]
    PeerNotSpiffe(#[source] SpiffeIdError),
    /// The peer's identity belongs to another trust domain.
    #[error("the peer {id} is outside trust domain {expected}")]
    PeerTrustDomain {
        /// The peer's identity.
        id: SpiffeId,
        /// The mesh's trust domain.
        expected: String,
    },
    /// The server is not the workload the client meant to reach.
    #[error("the server presented {presented}, expected {expected}")]
    ServerIdentityMismatch {
        /// The identity of the destination workload.
        expected: SpiffeId,
        /// The identity in the server's certificate.
        presented: SpiffeId,
    },
}

impl TlsError {
    /// For a failed handshake, the identity check of this module that refused the peer, if that
    /// is why it failed (as opposed to a chain, protocol or I/O failure).
    pub fn rejection(&self) -> Option<&TlsError> {
        let TlsError::Handshake { source, .. } = self else {
            return None;
        };
        match source.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<verifier::Rejection>().map(|r| &r.0)
            }
            _ => None,
        }
    }
}

/// The crypto provider of every configuration here.
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// The configuration of a client presenting `cert` (the source workload's) to a server that must
/// be `expected_server` (the destination workload's identity). Build one per destination
/// identity; it holds no per-connection state.
pub fn client_config(
    cert: &WorkloadCertificate,
    expected_server: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = verifier::ServerIdentity::new(cert.root_store().clone(), expected_server);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Config {
            side: "client",
            source,
        })?
        .dangerous() // A custom verifier: SPIFFE URI SANs instead of DNS names.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            cert.certified_key().clone(),
        )));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The configuration of a pod's HBONE listener presenting `cert` (that pod's): one per listener,
/// so the certificate "chosen by destination IP" is simply the listening pod's.
pub fn server_config(cert: &WorkloadCertificate) -> Result<Arc<ServerConfig>, TlsError> {
    let webpki = WebPkiClientVerifier::builder_with_provider(cert.root_store().clone(), provider())
        .build()
        .map_err(TlsError::ClientVerifier)?;
    let verifier = verifier::ClientTrustDomain::new(webpki, cert.id().trust_domain());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Config {
            side: "server",
            source,
        })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(
            cert.certified_key().clone(),
        )));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Runs the client handshake over `io` to the pod at `dst` (named by IP, so no SNI is sent).
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    dst: IpAddr,
    io: IO,
) -> Result<tokio_rustls::client::TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(dst.into()), io)
        .await
        .map_err(|source| TlsError::Handshake {
            side: "client",
            source,
        })
}

/// Runs the server handshake over `io`.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(|source| TlsError::Handshake {
            side: "server",
            source,
        })
}

/// The SPIFFE ID of the peer of a completed handshake (`stream.get_ref().1` of either side): its
/// leaf's one URI SAN, which must be a workload ID of `trust_domain`.
pub fn peer_identity(conn: &CommonState, trust_domain: &TrustDomain) -> Result<SpiffeId, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(<[_]>::first)
        .ok_or(TlsError::NoPeerCertificate)?;
    spiffe_id_of(leaf, Some(trust_domain.as_str()))
}

/// The one SPIFFE ID in `leaf`, checked to be of `trust_domain` when given.
fn spiffe_id_of(
    leaf: &CertificateDer<'_>,
    trust_domain: Option<&str>,
) -> Result<SpiffeId, TlsError> {
    let malformed = |reason: String| TlsError::PeerCertificate { reason };
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| malformed(e.to_string()))?;
    let uris = uri_sans(&cert).map_err(|e| malformed(format!("subjectAltName: {e}")))?;
    let [uri] = uris.as_slice() else {
        return Err(TlsError::PeerUriSans { count: uris.len() });
    };
    let id = SpiffeId::parse(uri).map_err(TlsError::PeerNotSpiffe)?;
    match trust_domain {
        Some(expected) if id.trust_domain() != expected => Err(TlsError::PeerTrustDomain {
            id,
            expected: expected.to_owned(),
        }),
        _ => Ok(id),
    }
}
