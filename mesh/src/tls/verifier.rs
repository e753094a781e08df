//! The two certificate verifiers: the client's (chain to the mesh roots, then one of the
//! server's URI SANs must be the expected identity) and the server's (rustls' WebPKI client
//! verifier, then the client's one SPIFFE ID must be of the mesh's trust domain).
//!
//! A refusal by an identity check travels through rustls as `CertificateError::Other` wrapping a
//! [`Rejection`], so [`super::TlsError::rejection`] can recover the typed reason.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{RootCertStore, SignatureScheme};

use super::{TlsError, provider, server_has_identity, spiffe_id_of};
use crate::identity::SpiffeId;

/// A [`TlsError`] carried inside a rustls error. Its `Debug` is its `Display`, because rustls
/// prints `CertificateError::Other` with `Debug` and log lines should read as sentences.
pub(super) struct Rejection(pub(super) TlsError);

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// `reason` as the rustls error that aborts the handshake.
fn reject(reason: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejection(
        reason,
    )))))
}

/// Verifies a server: WebPKI chain to the mesh roots, then the expected SPIFFE ID among its URI
/// SANs.
#[derive(Debug)]
pub(super) struct ServerIdentity {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerIdentity {
    pub(super) fn new(roots: Arc<RootCertStore>, expected: SpiffeId) -> Self {
        Self {
            roots,
            expected,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ServerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The name is the destination IP, only there because rustls needs one: the identity is
        // the URI SAN, checked below.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        server_has_identity(end_entity, &self.expected).map_err(reject)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies a client: rustls' WebPKI client verifier (chain to the mesh roots, clientAuth), then
/// a SPIFFE ID of the trust domain.
#[derive(Debug)]
pub(super) struct ClientTrustDomain {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientTrustDomain {
    pub(super) fn new(webpki: Arc<dyn ClientCertVerifier>, trust_domain: &str) -> Self {
        Self {
            webpki,
            trust_domain: trust_domain.to_owned(),
        }
    }
}

impl ClientCertVerifier for ClientTrustDomain {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id_of(end_entity, Some(&self.trust_domain)).map_err(reject)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
