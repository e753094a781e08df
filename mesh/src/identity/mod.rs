//! Workload identity: SPIFFE IDs, workload certificates, where they come from and how they are
//! kept fresh.
//!
//! This module owns the answer to "which certificate does this workload present", nothing about
//! TLS itself (that is [`crate::tls`]). Certificates come through a [`CertificateProvider`]
//! ([`LocalCa`], a CA key and certificate on disk, for demos; [`IstioCa`], a CA that speaks
//! Istio's gRPC protocol, so no CA key is on the node),
//! and the [`CertificateManager`] caches them per identity, renews them at half-life and hands
//! out only the identities of pods on this node.
//!
//! Invariants: every leaf issued here is ECDSA P-256 with exactly one URI SAN, the SPIFFE ID;
//! a [`WorkloadCertificate`] is checked when built (see its docs); a certificate once handed out
//! is immutable and shared (`Arc`), so renewal replaces it for new handshakes and never touches
//! connections already using the old one.

mod bundle;
mod certificate;
pub mod istio_ca;
mod local_ca;
mod manager;
mod spiffe;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use bundle::{Roots, TrustBundle, read_roots, watch_file};
pub(crate) use certificate::uri_sans;
pub use certificate::{HandedCertificate, WorkloadCertificate};
pub use istio_ca::{IstioCa, IstioCaConfig};
pub use local_ca::leaf_params;
pub use local_ca::{CA_CERT_FILE, CA_KEY_FILE, CaFiles, LocalCa, LocalCaOptions, create_ca};
pub use manager::{CertificateManager, CertificateStatus, FailureHook, ManagerConfig};
pub use spiffe::{DEFAULT_TRUST_DOMAIN, SpiffeId, SpiffeIdError, TrustDomain};

impl IdentityError {
    /// The metric reason of a failed fetch: `ca_unavailable` (the CA could not be asked or
    /// refused the call), `ca_refused_answer` (its answer is not trusted), `timeout`, `local`
    /// (this proxy's own side: keys, files, settings).
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::CaUnavailable { .. } => "ca_unavailable",
            IdentityError::CaAnswer { .. } | IdentityError::WrongIdentity { .. } => {
                "ca_refused_answer"
            }
            IdentityError::FetchTimeout { .. } => "timeout",
            IdentityError::Unavailable { source, .. } => source.reason(),
            _ => "local",
        }
    }
}

/// The future a [`CertificateProvider`] returns.
pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadCertificate, IdentityError>> + Send + 'a>>;

/// Issues certificates for workload identities: a local CA, or a CA speaking Istio's protocol.
pub trait CertificateProvider: Send + Sync {
    /// Obtains a fresh certificate (and key) for `id`.
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a>;
}

/// Errors of obtaining, issuing and managing workload certificates.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A CA file could not be read.
    #[error("reading CA file {path}: {source}")]
    CaRead {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A CA file holds no usable PEM block of the kind expected.
    #[error("CA file {path} is not usable PEM: {reason}")]
    CaNotPem {
        /// The file.
        path: PathBuf,
        /// What is missing or malformed.
        reason: String,
    },
    /// The CA certificate does not parse or cannot serve as a trust anchor.
    #[error("CA certificate {path} is invalid: {reason}")]
    CaCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA certificate is not allowed to sign certificates.
    #[error("CA certificate {path} is not a CA: {reason}")]
    NotCa {
        /// The file.
        path: PathBuf,
        /// Which constraint is missing.
        reason: &'static str,
    },
    /// The CA certificate is past its notAfter.
    #[error("CA certificate {path} expired at {not_after}")]
    CaExpired {
        /// The file.
        path: PathBuf,
        /// Its notAfter, as written in the certificate.
        not_after: String,
    },
    /// The CA key is of a type or encoding this CA does not sign with.
    #[error("CA key {path} is not supported: {reason}")]
    CaKeyUnsupported {
        /// The file.
        path: PathBuf,
        /// Which type or encoding, and what to do.
        reason: String,
    },
    /// The CA key is not the key of the CA certificate.
    #[error("CA key {key} does not match the public key of CA certificate {cert}")]
    CaKeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A CA setting has a value that cannot work.
    #[error("CA setting {setting} = {value:?}: expected {expected}")]
    CaOptions {
        /// The setting.
        setting: &'static str,
        /// The offending value.
        value: Duration,
        /// What is expected.
        expected: &'static str,
    },
    /// `create_ca` would overwrite an existing file.
    #[error("refusing to overwrite {path}")]
    CaExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Writing a new CA file failed.
    #[error("writing CA file {path}: {source}")]
    CaWrite {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Generating a key pair failed.
    #[error("generating an ECDSA P-256 key: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// Building or signing a certificate failed.
    #[error("signing a certificate for {subject}: {source}")]
    Signing {
        /// The SPIFFE ID, or the CA's name for a CA certificate.
        subject: String,
        /// Cause.
        source: rcgen::Error,
    },
    /// The identity is outside the trust domain the CA signs for.
    #[error("{id} is outside trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The identity asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// A certificate, key or root set does not make a valid workload certificate.
    #[error("invalid workload certificate: {reason}")]
    InvalidCertificate {
        /// What is wrong.
        reason: String,
    },
    /// The provider returned a certificate for another identity.
    #[error("asked for a certificate for {requested}, the provider issued one for {issued}")]
    WrongIdentity {
        /// The identity asked for.
        requested: SpiffeId,
        /// The identity of the certificate returned.
        issued: SpiffeId,
    },
    /// The identity is not one of a pod on this node, so this proxy may not hold it.
    #[error("{id} is not the identity of a pod on this node")]
    NotLocal {
        /// The identity asked for.
        id: SpiffeId,
    },
    /// The provider did not answer in time.
    #[error("fetching a certificate for {id} timed out after {timeout:?}")]
    FetchTimeout {
        /// The identity.
        id: SpiffeId,
        /// The bound.
        timeout: Duration,
    },
    /// The last fetch for the identity failed and no valid certificate is cached.
    #[error("no certificate for {id}: {source}")]
    Unavailable {
        /// The identity.
        id: SpiffeId,
        /// Why the last fetch failed (shared by every caller that waited on it).
        source: Arc<IdentityError>,
    },
    /// The identity's renewal task stopped twice in a row (its provider panicked).
    #[error("the certificate task for {id} stopped unexpectedly")]
    TaskStopped {
        /// The identity.
        id: SpiffeId,
    },
    /// The CA could not be asked (unreachable, refused the call, token unreadable).
    #[error("certificate authority {reason}")]
    CaUnavailable {
        /// The CA's address and what failed.
        reason: String,
    },
    /// An extra header for the CA cannot be sent.
    #[error("CA header {name:?}: {reason}")]
    CaHeader {
        /// The header's name as given.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The proxy's token for the CA cannot be used.
    #[error("the token for the CA, {path}: {reason}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// Unreadable, empty, or not a header value.
        reason: String,
    },
    /// The CA answered with something this proxy does not trust for the identity.
    #[error("the CA's answer for {id} is refused: {reason}")]
    CaAnswer {
        /// The identity asked for.
        id: String,
        /// What is wrong with the answer.
        reason: String,
    },
    /// The cached certificate expired and its renewal has not succeeded.
    #[error("the certificate for {id} expired and renewal has not succeeded yet")]
    Expired {
        /// The identity.
        id: SpiffeId,
    },
}
