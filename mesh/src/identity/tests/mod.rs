//! Tests of the local CA, workload certificates and the certificate manager, with real keys and
//! certificates from CAs created in temporary directories.

mod bundle;
mod istio_ca;
mod local_ca;
mod manager;

use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};

use super::{CaFiles, LocalCa, LocalCaOptions, SpiffeId, TrustDomain, create_ca};

/// A SPIFFE ID from text.
pub(crate) fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

/// A new CA for `cluster.local` in `dir`, loaded with `options`.
pub(crate) fn new_ca(dir: &Path, options: LocalCaOptions) -> LocalCa {
    let files = create_ca(dir, &TrustDomain::default(), Duration::from_secs(3600)).unwrap();
    LocalCa::load(&files, TrustDomain::default(), options).unwrap()
}

/// Writes `params` self-signed with `key` as `ca-cert.pem`/`ca-key.pem` in `dir`.
fn write_ca(dir: &Path, params: &CertificateParams, key: &KeyPair) -> CaFiles {
    let cert = params.self_signed(key).unwrap();
    let files = CaFiles::in_dir(dir);
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}
