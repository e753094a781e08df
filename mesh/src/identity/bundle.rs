//! The mesh's trust bundle: the roots that peers' certificates (and the CA's answers) must chain
//! to, replaceable while the proxy runs so a root rotation needs no restart.
//!
//! Ownership: a [`TrustBundle`] is a cheap handle on one shared value; the [`watch_file`] task is
//! its only writer in production (the root bundle file, a mounted ConfigMap that kubelet swaps
//! atomically). Invariants: a bundle is never empty and every root in it parses as a trust
//! anchor — a replacement that does not is refused and the current roots stay in force; a
//! replacement with the same certificates is not a change (no churn for an unchanged file).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{info, warn};

use super::IdentityError;

/// One version of the roots, parsed once.
#[derive(Debug)]
pub struct Roots {
    certs: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
}

impl Roots {
    /// Parses a PEM bundle: one or more certificates, each a usable trust anchor.
    ///
    /// # Errors
    /// [`IdentityError::InvalidCertificate`] naming `origin` and what is wrong.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Roots, IdentityError> {
        use rustls::pki_types::pem::PemObject;
        let invalid = |reason: String| IdentityError::InvalidCertificate {
            reason: format!("root bundle {origin}: {reason}"),
        };
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
        Roots::from_der(certs).map_err(|e| match e {
            IdentityError::InvalidCertificate { reason } => invalid(reason),
            other => other,
        })
    }

    /// The roots `certs` (DER).
    ///
    /// # Errors
    /// When `certs` is empty or one is not a trust anchor.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Roots, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidCertificate { reason };
        if certs.is_empty() {
            return Err(invalid("holds no certificate".into()));
        }
        let mut store = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| invalid(format!("certificate {i} is not a trust anchor: {e}")))?;
        }
        Ok(Roots {
            certs,
            store: Arc::new(store),
        })
    }

    /// The certificates (DER), in bundle order.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// As a rustls store.
    pub fn store(&self) -> &Arc<RootCertStore> {
        &self.store
    }

    /// Checks that `leaf` (with `intermediates`, leaf-side first) chains to one of these roots
    /// and is valid now for client authentication (what a peer's verifier will check).
    ///
    /// # Errors
    /// What webpki refused, as text.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), String> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.store.clone(),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .map_err(|e| format!("verifier: {e}"))?;
        verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .map(drop)
            .map_err(|e| format!("the chain does not lead to a trusted root: {e}"))
    }

    /// As PEM.
    pub fn pem(&self) -> String {
        let blocks: Vec<pem::Pem> = self
            .certs
            .iter()
            .map(|cert| pem::Pem::new("CERTIFICATE", cert.to_vec()))
            .collect();
        pem::encode_many(&blocks)
    }
}

/// A shared, replaceable set of roots.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    tx: Arc<watch::Sender<Arc<Roots>>>,
}

impl TrustBundle {
    /// A bundle starting with `roots`.
    pub fn new(roots: Roots) -> TrustBundle {
        TrustBundle {
            tx: Arc::new(watch::Sender::new(Arc::new(roots))),
        }
    }

    /// The roots in force now.
    pub fn current(&self) -> Arc<Roots> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Roots>> {
        self.tx.subscribe()
    }

    /// Puts `roots` in force; returns whether they differ from the current ones.
    pub fn replace(&self, roots: Roots) -> bool {
        self.tx.send_if_modified(|current| {
            if current.certs == roots.certs {
                return false;
            }
            *current = Arc::new(roots);
            true
        })
    }
}

/// Reads the root bundle file `path`.
///
/// # Errors
/// When it cannot be read or holds no usable roots.
pub fn read_roots(path: &Path) -> Result<Roots, IdentityError> {
    let pem = std::fs::read(path).map_err(|source| IdentityError::CaRead {
        path: path.to_path_buf(),
        source,
    })?;
    Roots::from_pem(&pem, &path.display().to_string())
}

/// Re-reads `path` every `interval` and puts changed roots in force in `bundle`; an unreadable
/// or invalid file is logged (once per distinct error) and the roots in force are kept. Runs
/// until the task is dropped.
pub async fn watch_file(path: PathBuf, bundle: TrustBundle, interval: Duration) {
    let mut last_error: Option<String> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match read_roots(&path) {
            Ok(roots) => {
                last_error = None;
                let count = roots.certs().len();
                if bundle.replace(roots) {
                    info!(file = %path.display(), roots = count, "trust bundle replaced");
                }
            }
            Err(error) => {
                let error = error.to_string();
                if last_error.as_ref() != Some(&error) {
                    warn!(file = %path.display(), %error,
                        "trust bundle not reloaded, the roots in force are kept");
                    last_error = Some(error);
                }
            }
        }
    }
}
