//! Workload certificates issued by a test's mesh CA, as PEM files, for peers that are not
//! marrow but must speak its mesh's mTLS (the Envoy sidecars of `cargo xtask bench`).
//!
//! A certificate is what marrow's own workload certificates are: ECDSA P-256, an empty subject,
//! the SPIFFE ID as the only (URI) SAN, not a CA, digital signature + key encipherment, server
//! and client auth; signed directly by the CA in `ca-cert.pem`/`ca-key.pem` (the files
//! `node-proxy ca create` writes, see [`crate::MeshCa`]). The key is PKCS#8 PEM
//! (`PRIVATE KEY`), which rustls, BoringSSL and OpenSSL all read.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

use crate::mesh::MeshCa;

/// Why a workload certificate could not be issued or written.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadCertError {
    /// A CA file could not be read.
    #[error("reading the mesh CA's {what} {}: {source}", path.display())]
    ReadCa {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CA file was read but is not a usable PEM certificate or key.
    #[error("loading the mesh CA's {what}: {source}")]
    LoadCa {
        /// `certificate` or `key`.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The SPIFFE ID is not `spiffe://<trust domain>/<path>` in ASCII.
    #[error("{id:?} is not a SPIFFE ID (expected spiffe://<trust domain>/<path>, ASCII)")]
    BadSpiffeId {
        /// The rejected ID.
        id: String,
    },
    /// Generating the key or signing the certificate failed.
    #[error("{what}: {source}")]
    Issue {
        /// What was being done.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A PEM file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A workload's certificate and private key, PEM.
#[derive(Clone)]
pub struct WorkloadCert {
    /// The SPIFFE ID in the certificate's URI SAN.
    pub spiffe_id: String,
    /// The leaf certificate (only the leaf: peers trust the CA directly).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

/// Where [`WorkloadCert::write`] put the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// `cert.pem`.
    pub cert: PathBuf,
    /// `key.pem`, mode 0600.
    pub key: PathBuf,
}

impl WorkloadCert {
    /// Issues a certificate for `spiffe_id` from `ca` (see the module documentation).
    ///
    /// # Errors
    /// When the CA's files cannot be read or used, or `spiffe_id` is not a SPIFFE ID.
    pub fn issue(ca: &MeshCa, spiffe_id: &str) -> Result<WorkloadCert, WorkloadCertError> {
        WorkloadCert::issue_with(&ca.cert_path(), &ca.key_path(), spiffe_id)
    }

    /// Issues a certificate for `spiffe_id` from the CA whose PEM certificate and key are in
    /// `ca_cert` and `ca_key`.
    ///
    /// # Errors
    /// As [`WorkloadCert::issue`].
    pub fn issue_with(
        ca_cert: &Path,
        ca_key: &Path,
        spiffe_id: &str,
    ) -> Result<WorkloadCert, WorkloadCertError> {
        check_spiffe_id(spiffe_id)?;
        let read = |what, path: &Path| {
            std::fs::read_to_string(path).map_err(|source| WorkloadCertError::ReadCa {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let (cert_text, key_text) = (read("certificate", ca_cert)?, read("key", ca_key)?);
        let ca_key = KeyPair::from_pem(&key_text).map_err(|source| WorkloadCertError::LoadCa {
            what: "key",
            source,
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_text, ca_key).map_err(|source| {
            WorkloadCertError::LoadCa {
                what: "certificate",
                source,
            }
        })?;
        let issue = |what| move |source| WorkloadCertError::Issue { what, source };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(issue("generating a P-256 key"))?;
        let params = leaf_params(spiffe_id).map_err(|_| WorkloadCertError::BadSpiffeId {
            id: spiffe_id.to_owned(),
        })?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(issue("signing the workload certificate"))?;
        Ok(WorkloadCert {
            spiffe_id: spiffe_id.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `cert.pem` and `key.pem` (mode 0600) into `dir`, which must exist.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<CertFiles, WorkloadCertError> {
        let files = CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        write_file(&files.cert, &self.cert_pem, 0o644)?;
        write_file(&files.key, &self.key_pem, 0o600)?;
        Ok(files)
    }
}

/// `spiffe://` followed by a non-empty trust domain and a path, all printable ASCII.
/// A workload leaf as the mesh issues it: no subject, one URI SAN (`spiffe_id`), not a CA,
/// digitalSignature + keyEncipherment, serverAuth + clientAuth.
///
/// # Errors
/// When `spiffe_id` is not an IA5 string.
pub(crate) fn leaf_params(spiffe_id: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

fn check_spiffe_id(id: &str) -> Result<(), WorkloadCertError> {
    let bad = || WorkloadCertError::BadSpiffeId { id: id.to_owned() };
    let rest = id.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (domain, path) = rest.split_once('/').ok_or_else(bad)?;
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if domain.is_empty() || path.is_empty() || !printable(rest) {
        return Err(bad());
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), WorkloadCertError> {
    let wrap = |source| WorkloadCertError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(wrap)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    use rustls::RootCertStore;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    use super::*;

    /// A CA's `ca-cert.pem` and `ca-key.pem` in a temporary directory.
    fn ca_files() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (
            dir.path().join("ca-cert.pem"),
            dir.path().join("ca-key.pem"),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (dir, cert_path, key_path)
    }

    #[test]
    fn issues_a_leaf_with_the_spiffe_id_as_its_only_san() {
        let (dir, cert, key) = ca_files();
        let id = "spiffe://cluster.local/ns/bench/sa/client";
        let issued = WorkloadCert::issue_with(&cert, &key, id).unwrap();
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert!(
            crate::sniff::find(&leaf, id.as_bytes()),
            "the SPIFFE ID is in the SAN"
        );
        // webpki checks the signature, the validity and the client-auth EKU.
        let mut roots = RootCertStore::empty();
        let ca_pem = std::fs::read(&cert).unwrap();
        roots
            .add(CertificateDer::from_pem_slice(&ca_pem).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .unwrap();
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
        assert!(
            !format!("{issued:?}").contains("PRIVATE"),
            "Debug hides the key"
        );

        let files = issued.write(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.cert).unwrap(),
            issued.cert_pem
        );
        let mode = std::fs::metadata(&files.key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn rejects_what_is_not_a_spiffe_id() {
        let (_dir, cert, key) = ca_files();
        for id in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe:///ns/a",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns/a b",
            "spiffe://cluster.local/ns/é",
        ] {
            let err = WorkloadCert::issue_with(&cert, &key, id).unwrap_err();
            assert!(
                matches!(err, WorkloadCertError::BadSpiffeId { .. }),
                "{id}: {err}"
            );
        }
    }

    #[test]
    fn names_the_ca_file_that_is_missing_or_bad() {
        let (dir, cert, key) = ca_files();
        let id = "spiffe://cluster.local/ns/a/sa/b";
        let missing = dir.path().join("nope.pem");
        let err = WorkloadCert::issue_with(&missing, &key, id).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        assert!(matches!(
            err,
            WorkloadCertError::ReadCa {
                what: "certificate",
                ..
            }
        ));

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a key").unwrap();
        let err = WorkloadCert::issue_with(&cert, &garbage, id).unwrap_err();
        assert!(
            matches!(err, WorkloadCertError::LoadCa { what: "key", .. }),
            "{err}"
        );
        let err = WorkloadCert::issue_with(&garbage, &key, id).unwrap_err();
        assert!(
            matches!(
                err,
                WorkloadCertError::LoadCa {
                    what: "certificate",
                    ..
                }
            ),
            "{err}"
        );

        let issued = WorkloadCert::issue_with(&cert, &key, id).unwrap();
        let err = issued.write(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, WorkloadCertError::Write { .. }), "{err}");
    }
}
