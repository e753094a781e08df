//! A workload's certificate, chain, key and mesh roots, checked once when built.
//!
//! Invariants of a [`WorkloadCertificate`]: the leaf carries exactly one URI SAN and it is a
//! SPIFFE ID ([`WorkloadCertificate::id`]); the private key is one rustls can sign with and matches
//! the leaf; at least one root parses as a trust anchor; `not_before`/`not_after` are the leaf's.
//! The TLS material rustls needs (signing key, root store) is built here once, so a TLS
//! configuration per connection costs no parsing.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use super::{IdentityError, Roots, SpiffeId};

/// A workload's leaf certificate with its chain, key, validity and the roots it trusts.
pub struct WorkloadCertificate {
    id: SpiffeId,
    leaf: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    private_key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    roots: Arc<Roots>,
    certified_key: Arc<CertifiedKey>,
}

impl WorkloadCertificate {
    /// Checks and assembles `leaf` (DER), its `chain` (intermediates, leaf-side first, no
    /// root), its `private_key` and the `roots` to trust for peers.
    pub fn new(
        leaf: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        private_key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidCertificate { reason };
        let (_, parsed) = X509Certificate::from_der(&leaf)
            .map_err(|e| invalid(format!("leaf is not an X.509 certificate: {e}")))?;
        let id = match uri_sans(&parsed)
            .map_err(|e| invalid(format!("leaf subjectAltName: {e}")))?
            .as_slice()
        {
            [uri] => SpiffeId::parse(uri).map_err(|e| invalid(format!("leaf URI SAN: {e}")))?,
            other => {
                return Err(invalid(format!(
                    "leaf has {} URI SANs, exactly one SPIFFE ID expected",
                    other.len()
                )));
            }
        };
        let not_before = system_time(parsed.validity().not_before)
            .ok_or_else(|| invalid("leaf notBefore is out of range".to_owned()))?;
        let not_after = system_time(parsed.validity().not_after)
            .ok_or_else(|| invalid("leaf notAfter is out of range".to_owned()))?;

        let roots = Roots::from_der(roots).map_err(|e| match e {
            IdentityError::InvalidCertificate { reason } => invalid(format!("roots: {reason}")),
            other => other,
        })?;

        let presented = std::iter::once(leaf.clone())
            .chain(chain.iter().cloned())
            .collect();
        let certified_key = CertifiedKey::from_der(
            presented,
            private_key.clone_key(),
            &rustls::crypto::aws_lc_rs::default_provider(),
        )
        .map_err(|e| invalid(format!("private key: {e}")))?;

        Ok(Self {
            id,
            leaf,
            chain,
            private_key,
            not_before,
            not_after,
            roots: Arc::new(roots),
            certified_key: Arc::new(certified_key),
        })
    }

    /// The same leaf, chain and key, trusting `roots` for peers instead (a trust bundle
    /// replaced during a root rotation).
    pub fn with_roots(&self, roots: Arc<Roots>) -> WorkloadCertificate {
        WorkloadCertificate {
            id: self.id.clone(),
            leaf: self.leaf.clone(),
            chain: self.chain.clone(),
            private_key: self.private_key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
            roots,
            certified_key: self.certified_key.clone(),
        }
    }

    /// The identity the leaf certifies (its one URI SAN).
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// Intermediates presented after the leaf (DER), leaf-side first; empty when the CA is a root.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's private key.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.private_key
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The roots peers' certificates must chain to (DER).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        self.roots.certs()
    }

    /// Whether the leaf is past its `notAfter` at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// When to renew: half way through the leaf's lifetime (at once if the validity is inverted).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime / 2
    }

    /// The roots as a rustls store (built once).
    pub fn root_store(&self) -> &Arc<RootCertStore> {
        self.roots.store()
    }

    /// Leaf, chain and signing key as rustls presents them (built once).
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }
}

impl fmt::Debug for WorkloadCertificate {
    /// Never shows the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.certs().len())
            .finish_non_exhaustive()
    }
}

/// A certificate's parts as they move from a proxy to its successor (an upgrade): leaf, chain
/// and key, in PEM. The receiver checks them as it would a CA's answer
/// ([`crate::identity::CertificateManager::adopt`]).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedCertificate {
    /// The leaf, PEM.
    pub leaf: String,
    /// Intermediates, PEM each, leaf-side first.
    pub chain: Vec<String>,
    /// The private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: String,
}

impl HandedCertificate {
    /// The parts of `cert`.
    pub fn of(cert: &WorkloadCertificate) -> HandedCertificate {
        let pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
        let key = match cert.private_key() {
            PrivateKeyDer::Pkcs8(key) => pem("PRIVATE KEY", key.secret_pkcs8_der()),
            PrivateKeyDer::Sec1(key) => pem("EC PRIVATE KEY", key.secret_sec1_der()),
            PrivateKeyDer::Pkcs1(key) => pem("RSA PRIVATE KEY", key.secret_pkcs1_der()),
            _ => String::new(), // Not a key rustls signs with; the receiver refuses it.
        };
        HandedCertificate {
            leaf: pem("CERTIFICATE", cert.leaf()),
            chain: cert.chain().iter().map(|c| pem("CERTIFICATE", c)).collect(),
            key,
        }
    }

    /// Leaf, chain and key as DER.
    ///
    /// # Errors
    /// When a part is not the PEM expected.
    pub fn parts(
        &self,
    ) -> Result<
        (
            CertificateDer<'static>,
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
        ),
        IdentityError,
    > {
        use rustls::pki_types::pem::PemObject;
        let invalid =
            |what: &str, e: rustls::pki_types::pem::Error| IdentityError::InvalidCertificate {
                reason: format!("handed-over {what}: {e}"),
            };
        let leaf =
            CertificateDer::from_pem_slice(self.leaf.as_bytes()).map_err(|e| invalid("leaf", e))?;
        let chain = self
            .chain
            .iter()
            .map(|c| CertificateDer::from_pem_slice(c.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("chain", e))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| invalid("key", e))?;
        Ok((leaf, chain, key))
    }
}

impl fmt::Debug for HandedCertificate {
    /// Never shows the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandedCertificate")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The URI SANs of `cert` (none when it has no subjectAltName).
pub(crate) fn uri_sans<'a>(
    cert: &'a X509Certificate<'_>,
) -> Result<Vec<&'a str>, x509_parser::error::X509Error> {
    Ok(cert
        .subject_alternative_name()?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// `time` as a [`SystemTime`]; `None` when it does not fit.
fn system_time(time: ASN1Time) -> Option<SystemTime> {
    let seconds = time.timestamp();
    match u64::try_from(seconds) {
        Ok(after) => UNIX_EPOCH.checked_add(Duration::from_secs(after)),
        Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs(seconds.unsigned_abs())),
    }
}
