//! Mutual TLS between node proxies, as HBONE speaks it on port 15008 (the same as ztunnel's).
//!
//! This module owns the TLS settings and the checks of the peer's identity; certificates come
//! from [`crate::identity`], the HTTP/2 inside from [`crate::hbone`]. Invariants of every
//! configuration built here:
//! - rustls on aws-lc-rs, TLS 1.3 only, suites TLS13_AES_256_GCM_SHA384 and
//!   TLS13_AES_128_GCM_SHA256 (ztunnel's, `src/tls/lib.rs`);
//! - key exchange as [`KeyExchange`] says: by default the post-quantum hybrid X25519MLKEM768
//!   first, then X25519, secp256r1, secp384r1; in post-quantum-only mode X25519MLKEM768 alone
//!   (ztunnel's `COMPLIANCE_POLICY=pqc`);
//! - ALPN `h2` only; no SNI (the client names the server by IP, and rustls sends no SNI for IP
//!   names — `enable_sni` is off as well); no session resumption, so every connection presents
//!   and verifies certificates;
//! - the client checks the server's chain against the mesh roots and that one of the server's
//!   URI SANs is exactly the identity expected for that destination (as ztunnel's
//!   `verify_full_san`, `src/tls/workload.rs`; never a DNS name check);
//! - the server requires a client certificate chaining to the mesh roots with exactly one SPIFFE
//!   ID (URI SAN of the `spiffe` scheme; other URI SANs are ignored), of the server's trust
//!   domain; [`peer_identity`] reads it after the handshake. One, not "any": the ID is the
//!   principal policy matches, and a certificate naming two would leave open which one a DENY
//!   rule sees (ztunnel takes the first; an X.509-SVID must carry exactly one, per the SPIFFE
//!   X509-SVID specification).
//!
//! Handshake timeouts are the caller's: wrap [`connect`]/[`accept`] in `tokio::time::timeout`,
//! or a peer that stalls mid-handshake holds the task forever.

#[cfg(test)]
mod tests;
mod verifier;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
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

/// Which key exchanges HBONE's TLS offers (as client) and accepts (as server).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyExchange {
    /// X25519MLKEM768 (post-quantum hybrid) preferred, then X25519, secp256r1, secp384r1: a peer
    /// with ML-KEM gets the hybrid, a classic one still connects. ztunnel (aws-lc build) offers
    /// the same groups with X25519 first; rustls' server picks in the client's order, so
    /// marrow→ztunnel is hybrid and ztunnel→marrow X25519, without a retry either way.
    #[default]
    PreferPostQuantum,
    /// X25519MLKEM768 only, as ztunnel's post-quantum mode (`COMPLIANCE_POLICY=pqc`): a peer
    /// without ML-KEM cannot connect, either way.
    PostQuantumOnly,
}

impl KeyExchange {
    /// Both settings.
    pub const ALL: [KeyExchange; 2] =
        [KeyExchange::PreferPostQuantum, KeyExchange::PostQuantumOnly];

    /// The setting's value: `prefer-post-quantum` or `post-quantum-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyExchange::PreferPostQuantum => "prefer-post-quantum",
            KeyExchange::PostQuantumOnly => "post-quantum-only",
        }
    }

    /// The groups, most preferred first.
    pub fn groups(self) -> Vec<&'static dyn SupportedKxGroup> {
        match self {
            KeyExchange::PreferPostQuantum => vec![
                kx_group::X25519MLKEM768,
                kx_group::X25519,
                kx_group::SECP256R1,
                kx_group::SECP384R1,
            ],
            KeyExchange::PostQuantumOnly => vec![kx_group::X25519MLKEM768],
        }
    }
}

impl fmt::Display for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyExchange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        KeyExchange::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not prefer-post-quantum or post-quantum-only"))
    }
}

/// aws-lc-rs, restricted to the AES-GCM TLS 1.3 suites (ztunnel's order) and the key
/// exchanges of `kx`.
fn build_provider(kx: KeyExchange) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        kx_groups: kx.groups(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

static PREFER_POST_QUANTUM: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| build_provider(KeyExchange::PreferPostQuantum));
static POST_QUANTUM_ONLY: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| build_provider(KeyExchange::PostQuantumOnly));

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
    /// The handshake failed because the two sides share no key exchange: one of them is in
    /// post-quantum-only mode and the other has no X25519MLKEM768.
    #[error(
        "TLS handshake as {side}: no key exchange in common with the peer \
         (this side accepts {offered}; post-quantum-only needs X25519MLKEM768 on both ends): {source}"
    )]
    NoCommonKeyExchange {
        /// "client" or "server".
        side: &'static str,
        /// This side's groups, e.g. "X25519MLKEM768".
        offered: String,
        /// Cause.
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
    /// The peer's leaf has no SPIFFE ID, or several: its principal would be unknown or
    /// ambiguous.
    #[error("the peer's certificate has {count} SPIFFE IDs ({uris:?}), exactly one expected")]
    PeerSpiffeIds {
        /// How many URI SANs of the `spiffe` scheme it has.
        count: usize,
        /// Those URIs.
        uris: Vec<String>,
    },
    /// The peer's SPIFFE URI SAN is not a SPIFFE workload ID.
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
    /// The server is not the workload the client meant to reach: none of its URI SANs is the
    /// expected identity.
    #[error("the server presented {presented:?}, expected {expected}")]
    ServerIdentityMismatch {
        /// The identity of the destination workload.
        expected: SpiffeId,
        /// The URI SANs in the server's certificate.
        presented: Vec<String>,
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

/// The crypto provider of the default key exchange ([`KeyExchange::PreferPostQuantum`]).
pub fn provider() -> Arc<CryptoProvider> {
    provider_for(KeyExchange::default())
}

/// The crypto provider of every configuration with key exchange `kx`.
pub fn provider_for(kx: KeyExchange) -> Arc<CryptoProvider> {
    match kx {
        KeyExchange::PreferPostQuantum => PREFER_POST_QUANTUM.clone(),
        KeyExchange::PostQuantumOnly => POST_QUANTUM_ONLY.clone(),
    }
}

/// The configuration of a client presenting `cert` (the source workload's) to a server that must
/// be `expected_server` (the destination workload's identity), offering the key exchanges of
/// `kx`. Build one per destination identity; it holds no per-connection state.
pub fn client_config(
    cert: &WorkloadCertificate,
    expected_server: SpiffeId,
    kx: KeyExchange,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with(cert, expected_server, provider_for(kx))
}

/// [`client_config`] over any provider (tests build peers without ML-KEM with it).
fn client_config_with(
    cert: &WorkloadCertificate,
    expected_server: SpiffeId,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = verifier::ServerIdentity::new(cert.root_store().clone(), expected_server);
    let mut config = ClientConfig::builder_with_provider(provider)
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

/// The configuration of a pod's HBONE listener presenting `cert` (that pod's), accepting the key
/// exchanges of `kx`: one per listener, so the certificate "chosen by destination IP" is simply
/// the listening pod's.
pub fn server_config(
    cert: &WorkloadCertificate,
    kx: KeyExchange,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(cert, provider_for(kx))
}

/// [`server_config`] over any provider (tests build peers without ML-KEM with it).
fn server_config_with(
    cert: &WorkloadCertificate,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let webpki =
        WebPkiClientVerifier::builder_with_provider(cert.root_store().clone(), provider.clone())
            .build()
            .map_err(TlsError::ClientVerifier)?;
    let verifier = verifier::ClientTrustDomain::new(webpki, cert.id().trust_domain());
    let mut config = ServerConfig::builder_with_provider(provider)
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
    // The provider (one pointer, held across the handshake), for an error's explanation.
    let provider = config.crypto_provider().clone();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(dst.into()), io)
        .await
        .map_err(|source| handshake_error("client", &provider.kx_groups, source))
}

/// Runs the server handshake over `io`.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let provider = config.crypto_provider().clone();
    tokio_rustls::TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(|source| handshake_error("server", &provider.kx_groups, source))
}

/// A failed handshake as a [`TlsError`]: a key-exchange mismatch gets its own error, naming this
/// side's groups. The server knows (rustls found no group in common); the client only sees a
/// `handshake_failure` alert, read as a mismatch when it offered X25519MLKEM768 alone (the
/// suites and versions are fixed on both ends, so that is what a mesh peer refuses).
fn handshake_error(
    side: &'static str,
    groups: &[&'static dyn SupportedKxGroup],
    source: std::io::Error,
) -> TlsError {
    let cause = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    let only_post_quantum = groups
        .iter()
        .all(|g| g.name() == rustls::NamedGroup::X25519MLKEM768);
    let mismatch = match cause {
        Some(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::NoKxGroupsInCommon)) => true,
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure)) => {
            side == "client" && only_post_quantum
        }
        _ => false,
    };
    if !mismatch {
        return TlsError::Handshake { side, source };
    }
    let offered = groups
        .iter()
        .map(|g| format!("{:?}", g.name()))
        .collect::<Vec<_>>()
        .join(", ");
    TlsError::NoCommonKeyExchange {
        side,
        offered,
        source,
    }
}

/// The SPIFFE ID of the peer of a completed handshake (`stream.get_ref().1` of either side): its
/// leaf's one SPIFFE ID, which must be a workload ID of `trust_domain`.
pub fn peer_identity(conn: &CommonState, trust_domain: &TrustDomain) -> Result<SpiffeId, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(<[_]>::first)
        .ok_or(TlsError::NoPeerCertificate)?;
    spiffe_id_of(leaf, Some(trust_domain.as_str()))
}

/// The URI SANs of `leaf`.
fn uris_of(leaf: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let malformed = |reason: String| TlsError::PeerCertificate { reason };
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| malformed(e.to_string()))?;
    let uris = uri_sans(&cert).map_err(|e| malformed(format!("subjectAltName: {e}")))?;
    Ok(uris.into_iter().map(str::to_owned).collect())
}

/// Whether a URI SAN claims a SPIFFE identity (scheme `spiffe`, in any case: a `SPIFFE://` SAN
/// counts as a claim, then fails to parse, rather than slipping past the count).
fn is_spiffe_uri(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
}

/// The one SPIFFE ID in `leaf` (the client rule: exactly one URI SAN of the `spiffe` scheme,
/// other URIs ignored), checked to be of `trust_domain` when given.
fn spiffe_id_of(
    leaf: &CertificateDer<'_>,
    trust_domain: Option<&str>,
) -> Result<SpiffeId, TlsError> {
    let uris: Vec<String> = uris_of(leaf)?
        .into_iter()
        .filter(|u| is_spiffe_uri(u))
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(TlsError::PeerSpiffeIds {
            count: uris.len(),
            uris,
        });
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

/// The server rule (ztunnel's `verify_full_san`): accepted when any URI SAN of `leaf` is exactly
/// `expected`; URI SANs that are not SPIFFE IDs never match.
fn server_has_identity(leaf: &CertificateDer<'_>, expected: &SpiffeId) -> Result<(), TlsError> {
    let uris = uris_of(leaf)?;
    if uris
        .iter()
        .any(|u| SpiffeId::parse(u).is_ok_and(|id| id == *expected))
    {
        return Ok(());
    }
    Err(TlsError::ServerIdentityMismatch {
        expected: expected.clone(),
        presented: uris,
    })
}
