//! A certificate authority held by the proxy itself: a CA key and certificate from PEM files
//! (demos, tests, small clusters), and [`create_ca`] to make a new one.
//!
//! Invariants of a loaded [`LocalCa`]: its certificate is a CA (basicConstraints CA:TRUE, and
//! keyCertSign when keyUsage is present), not expired, and its key is the certificate's key and
//! one aws-lc-rs signs with (ECDSA P-256/P-384 or RSA, PKCS#8). It signs only identities of its own
//! trust domain. Every leaf gets a fresh ECDSA P-256 key, an empty subject, a single (critical)
//! URI SAN, digitalSignature + keyEncipherment, serverAuth + clientAuth.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_RSA_SHA256, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{
    CertificateProvider, FetchFuture, IdentityError, SpiffeId, TrustDomain, WorkloadCertificate,
};

/// The CA certificate's file name in a CA directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Where a CA's certificate and key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    /// PEM certificates: the signing CA first, then any intermediates up to the root, which
    /// comes last and is the one trusted.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of the first certificate.
    pub key: PathBuf,
}

impl CaFiles {
    /// `ca-cert.pem` and `ca-key.pem` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }
}

/// How the local CA issues leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalCaOptions {
    /// Lifetime of a leaf from the moment it is issued.
    pub validity: Duration,
    /// How far before "now" a leaf's notBefore is set, so peers with a slow clock accept it.
    pub backdate: Duration,
}

impl Default for LocalCaOptions {
    fn default() -> Self {
        Self {
            validity: Duration::from_secs(24 * 60 * 60),
            backdate: Duration::from_secs(5 * 60),
        }
    }
}

impl LocalCaOptions {
    /// Checks the values are usable: a validity of 1 s to 100 years, a backdate of at most a day.
    pub fn validate(&self) -> Result<(), IdentityError> {
        check_validity(self.validity)?;
        if self.backdate > MAX_BACKDATE {
            return Err(IdentityError::CaOptions {
                setting: "backdate",
                value: self.backdate,
                expected: "at most one day",
            });
        }
        Ok(())
    }
}

/// Longest validity accepted for a CA or a leaf.
const MAX_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// Longest backdate accepted.
const MAX_BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// A validity must be positive and at most [`MAX_VALIDITY`].
fn check_validity(validity: Duration) -> Result<(), IdentityError> {
    if validity < Duration::from_secs(1) || validity > MAX_VALIDITY {
        return Err(IdentityError::CaOptions {
            setting: "validity",
            value: validity,
            expected: "between 1 second and 100 years",
        });
    }
    Ok(())
}

/// `now - before` .. `now + after`; the options are validated, so neither bound can overflow
/// for any real clock (clamped to `now` if it somehow did).
fn validity_window(now: SystemTime, before: Duration, after: Duration) -> (SystemTime, SystemTime) {
    let start = now.checked_sub(before).unwrap_or(now);
    let end = now.checked_add(after).unwrap_or(now);
    (start, end)
}

/// What every workload leaf signed here or by `node-proxy ca serve` says: an empty subject, one
/// critical URI SAN (`id`), not a CA, digitalSignature + keyEncipherment, serverAuth +
/// clientAuth, valid over `window`, with an authority key identifier.
pub fn leaf_params(
    id: &SpiffeId,
    window: (SystemTime, SystemTime),
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    // An empty subject makes rcgen mark the SAN critical (RFC 5280 §4.2.1.6), as Istio does.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = window.0.into();
    params.not_after = window.1.into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A CA that signs workload certificates in process.
#[derive(Debug)]
pub struct LocalCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    /// Certificates a leaf presents after itself (the CA when it is an intermediate, and its own
    /// intermediates).
    chain: Vec<CertificateDer<'static>>,
    /// The trust anchor.
    root: CertificateDer<'static>,
    options: LocalCaOptions,
}

impl LocalCa {
    /// Loads and checks the CA in `files`; it will sign identities of `trust_domain`.
    pub fn load(
        files: &CaFiles,
        trust_domain: TrustDomain,
        options: LocalCaOptions,
    ) -> Result<Self, IdentityError> {
        options.validate()?;
        let certs = read_certificates(&files.cert)?;
        let Some((ca, rest)) = certs.split_first() else {
            return Err(IdentityError::CaNotPem {
                path: files.cert.clone(),
                reason: "no CERTIFICATE block".to_owned(),
            });
        };
        let key = read_key(&files.key)?;
        check_ca(&files.cert, ca, &key, &files.key)?;
        let bad_cert = |reason: String| IdentityError::CaCertificate {
            path: files.cert.clone(),
            reason,
        };
        let issuer = Issuer::from_ca_cert_der(ca, key).map_err(|e| bad_cert(format!("{e}")))?;
        let (root, chain) = match rest.split_last() {
            None => (ca.clone(), Vec::new()),
            Some((root, intermediates)) => {
                let chain = std::iter::once(ca).chain(intermediates).cloned().collect();
                (root.clone(), chain)
            }
        };
        RootCertStore::empty()
            .add(root.clone())
            .map_err(|e| bad_cert(format!("the root is not a usable trust anchor: {e}")))?;
        Ok(Self {
            trust_domain,
            issuer,
            chain,
            root,
            options,
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root peers must trust (DER).
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// Issues a new key and leaf for `id`.
    pub fn issue(&self, id: &SpiffeId) -> Result<WorkloadCertificate, IdentityError> {
        if !id.is_in(&self.trust_domain) {
            return Err(IdentityError::WrongTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let signing = |source| IdentityError::Signing {
            subject: id.to_string(),
            source,
        };
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IdentityError::KeyGeneration)?;
        let now = SystemTime::now();
        let params = leaf_params(
            id,
            validity_window(now, self.options.backdate, self.options.validity),
        )
        .map_err(signing)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(signing)?;
        WorkloadCertificate::new(
            leaf.der().clone(),
            self.chain.clone(),
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            vec![self.root.clone()],
        )
    }
}

impl CertificateProvider for LocalCa {
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
        // Key generation and one signature: well under a millisecond, fine inline.
        Box::pin(async move { self.issue(id) })
    }
}

/// Writes a new self-signed ECDSA P-256 CA for `trust_domain`, valid for `validity`, as
/// `ca-cert.pem` and `ca-key.pem` (mode 0600) in `dir` (created if missing). Refuses to
/// overwrite either file.
pub fn create_ca(
    dir: &Path,
    trust_domain: &TrustDomain,
    validity: Duration,
) -> Result<CaFiles, IdentityError> {
    check_validity(validity)?;
    let files = CaFiles::in_dir(dir);
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(IdentityError::CaExists { path: path.clone() });
        }
    }
    fs::create_dir_all(dir).map_err(|source| IdentityError::CaWrite {
        path: dir.to_owned(),
        source,
    })?;

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IdentityError::KeyGeneration)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain.as_str());
    name.push(DnType::CommonName, "marrow mesh CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (not_before, not_after) =
        validity_window(now, LocalCaOptions::default().backdate, validity);
    (params.not_before, params.not_after) = (not_before.into(), not_after.into());
    let cert = params
        .self_signed(&key)
        .map_err(|source| IdentityError::Signing {
            subject: format!("the CA of {trust_domain}"),
            source,
        })?;

    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&files.cert, cert.pem().as_bytes(), 0o644) {
        // Best effort: a key without its certificate is useless and blocks the next attempt.
        let _ = fs::remove_file(&files.key);
        return Err(e);
    }
    Ok(files)
}

/// Creates `path` (failing if it exists) with `mode` and writes `contents`; a file left half
/// written is removed.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let failed = |source: std::io::Error| IdentityError::CaWrite {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::CaExists {
                path: path.to_owned(),
            },
            _ => failed(source),
        })?;
    if let Err(source) = file.write_all(contents).and_then(|()| file.sync_all()) {
        let _ = fs::remove_file(path);
        return Err(failed(source));
    }
    Ok(())
}

/// Every CERTIFICATE block of `path`.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bytes = fs::read(path).map_err(|source| IdentityError::CaRead {
        path: path.to_owned(),
        source,
    })?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::CaNotPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// The private key of `path`, which must be PKCS#8 of a type the CA signs with.
fn read_key(path: &Path) -> Result<KeyPair, IdentityError> {
    let bytes = fs::read(path).map_err(|source| IdentityError::CaRead {
        path: path.to_owned(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| IdentityError::CaNotPem {
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".to_owned(),
            other => other.to_string(),
        },
    })?;
    let unsupported = |reason: &str| IdentityError::CaKeyUnsupported {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let convert = "convert it with `openssl pkcs8 -topk8 -nocrypt`";
    match der {
        PrivateKeyDer::Pkcs8(_) => {}
        PrivateKeyDer::Pkcs1(_) => {
            return Err(unsupported(&format!("PKCS#1 RSA PRIVATE KEY; {convert}")));
        }
        PrivateKeyDer::Sec1(_) => {
            return Err(unsupported(&format!("SEC1 EC PRIVATE KEY; {convert}")));
        }
        _ => return Err(unsupported("an unknown key encoding")),
    }
    let key = KeyPair::try_from(&der)
        .map_err(|e| unsupported(&format!("{e} (ECDSA P-256/P-384 or RSA expected)")))?;
    let alg = key.algorithm();
    if alg != &PKCS_ECDSA_P256_SHA256 && alg != &PKCS_ECDSA_P384_SHA384 && alg != &PKCS_RSA_SHA256 {
        return Err(unsupported(&format!(
            "{alg:?} keys are not used by Istio CAs (ECDSA P-256/P-384 or RSA expected)"
        )));
    }
    Ok(key)
}

/// Checks that `der` may sign certificates now and that `key` is its key.
fn check_ca(
    path: &Path,
    der: &CertificateDer<'_>,
    key: &KeyPair,
    key_path: &Path,
) -> Result<(), IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::CaCertificate {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let not_ca = |reason| IdentityError::NotCa {
        path: path.to_owned(),
        reason,
    };
    let bad_extension = |e: x509_parser::error::X509Error| IdentityError::CaCertificate {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    match cert.basic_constraints().map_err(bad_extension)? {
        Some(bc) if bc.value.ca => {}
        _ => return Err(not_ca("basicConstraints CA:TRUE is missing")),
    }
    if let Some(usage) = cert.key_usage().map_err(bad_extension)?
        && !usage.value.key_cert_sign()
    {
        return Err(not_ca("keyUsage lacks keyCertSign"));
    }
    if cert.validity().not_after.timestamp() < now_unix() {
        return Err(IdentityError::CaExpired {
            path: path.to_owned(),
            not_after: cert.validity().not_after.to_string(),
        });
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(IdentityError::CaKeyMismatch {
            cert: path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    Ok(())
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
