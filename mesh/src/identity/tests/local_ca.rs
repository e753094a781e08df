//! The local CA: what it issues, what it refuses to load, and `create_ca`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;

use super::{id, new_ca, write_ca};
use crate::identity::{
    CaFiles, IdentityError, LocalCa, LocalCaOptions, TrustDomain, WorkloadCertificate, create_ca,
};

#[test]
fn issues_a_leaf_whose_only_name_is_the_uri_san() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), LocalCaOptions::default());
    let who = id("spiffe://cluster.local/ns/shop/sa/cart");
    let issued = ca.issue(&who).unwrap();
    assert_eq!(issued.id(), &who);
    assert!(issued.chain().is_empty());
    assert_eq!(issued.roots(), std::slice::from_ref(ca.root()));

    let (_, cert) = X509Certificate::from_der(issued.leaf()).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "subject must be empty");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.critical,
        "with an empty subject the SAN must be critical"
    );
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/shop/sa/cart")]
    );
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && usage.key_encipherment());
    assert!(!usage.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    assert!(!cert.is_ca());
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);
    assert_eq!(
        cert.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );
    let (_, ca_cert) = X509Certificate::from_der(ca.root()).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());

    // 24 h from now, backdated 5 min; certificate times have whole seconds.
    let lifetime = issued
        .not_after()
        .duration_since(issued.not_before())
        .unwrap();
    let expected = Duration::from_secs(24 * 3600 + 300);
    assert!(
        lifetime.abs_diff(expected) <= Duration::from_secs(1),
        "{lifetime:?}"
    );
    assert!(!issued.is_expired(SystemTime::now()));

    // The chain verifies against the CA with WebPKI, as a peer will check it.
    let mut roots = RootCertStore::empty();
    roots.add(ca.root().clone()).unwrap();
    let parsed = ParsedCertificate::try_from(issued.leaf()).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        UnixTime::now(),
        crate::tls::provider().signature_verification_algorithms.all,
    )
    .unwrap();

    // Every issue makes a new key.
    let again = ca.issue(&who).unwrap();
    assert_ne!(again.leaf(), issued.leaf());
    assert_ne!(
        again.private_key().secret_der(),
        issued.private_key().secret_der()
    );
}

#[test]
fn refuses_an_identity_of_another_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), LocalCaOptions::default());
    let err = ca
        .issue(&id("spiffe://other.domain/ns/a/sa/b"))
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::WrongTrustDomain { .. }),
        "{err}"
    );
}

#[test]
fn renews_at_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalCaOptions {
        validity: Duration::from_secs(100),
        backdate: Duration::ZERO,
    };
    let cert = new_ca(dir.path(), options)
        .issue(&id("spiffe://cluster.local/ns/a/sa/b"))
        .unwrap();
    assert_eq!(
        cert.renew_at(),
        cert.not_before() + (cert.not_after().duration_since(cert.not_before()).unwrap() / 2)
    );
    assert!(!cert.is_expired(cert.not_after()));
    assert!(cert.is_expired(cert.not_after() + Duration::from_secs(1)));
}

#[test]
fn workload_certificate_checks_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), LocalCaOptions::default());
    let a = ca.issue(&id("spiffe://cluster.local/ns/a/sa/a")).unwrap();
    let b = ca.issue(&id("spiffe://cluster.local/ns/b/sa/b")).unwrap();
    let rebuild = |leaf: &WorkloadCertificate, key: &WorkloadCertificate, roots| {
        WorkloadCertificate::new(
            leaf.leaf().clone(),
            Vec::new(),
            key.private_key().clone_key(),
            roots,
        )
    };
    assert!(rebuild(&a, &a, vec![ca.root().clone()]).is_ok());
    let mismatch = rebuild(&a, &b, vec![ca.root().clone()]).unwrap_err();
    assert!(mismatch.to_string().contains("private key"), "{mismatch}");
    let no_roots = rebuild(&a, &a, Vec::new()).unwrap_err();
    assert!(
        no_roots.to_string().contains("roots: holds no certificate"),
        "{no_roots}"
    );
    // The CA certificate is not a workload certificate: it has no URI SAN.
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap())
            .unwrap();
    let not_workload = WorkloadCertificate::new(
        ca.root().clone(),
        Vec::new(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(ca_key.serialize_der().into()),
        vec![ca.root().clone()],
    )
    .unwrap_err();
    assert!(
        not_workload.to_string().contains("0 URI SANs"),
        "{not_workload}"
    );
}

#[test]
fn create_ca_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let files = create_ca(&dir.path().join("ca"), &td, Duration::from_secs(3600)).unwrap();
    let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let ca = LocalCa::load(&files, td.clone(), LocalCaOptions::default()).unwrap();
    let (_, cert) = X509Certificate::from_der(ca.root()).unwrap();
    assert!(cert.is_ca());
    let org = cert.subject().iter_organization().next().unwrap();
    assert_eq!(org.as_str().unwrap(), "example.org");

    let before = std::fs::read(&files.key).unwrap();
    let err = create_ca(&dir.path().join("ca"), &td, Duration::from_secs(3600)).unwrap_err();
    assert!(matches!(err, IdentityError::CaExists { .. }), "{err}");
    assert_eq!(std::fs::read(&files.key).unwrap(), before);
    let err = create_ca(&dir.path().join("other"), &td, Duration::ZERO).unwrap_err();
    assert!(
        matches!(
            err,
            IdentityError::CaOptions {
                setting: "validity",
                ..
            }
        ),
        "{err}"
    );
}

/// Loads `files`, expecting an error whose message names `path`.
fn load_err(files: &CaFiles, path: &Path) -> IdentityError {
    let err = LocalCa::load(files, TrustDomain::default(), LocalCaOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err} does not name {}",
        path.display()
    );
    err
}

/// A CA certificate's parameters: CA:TRUE with keyCertSign, valid for an hour.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "cluster.local");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(3600)).into();
    params
}

#[test]
fn refuses_missing_and_non_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = CaFiles::in_dir(dir.path());
    let err = load_err(&files, &files.cert);
    assert!(matches!(err, IdentityError::CaRead { .. }), "{err}");

    create_ca(
        dir.path(),
        &TrustDomain::default(),
        Duration::from_secs(3600),
    )
    .unwrap();
    let good_cert = std::fs::read(&files.cert).unwrap();
    let good_key = std::fs::read(&files.key).unwrap();

    std::fs::write(&files.cert, "this is not PEM\n").unwrap();
    let err = load_err(&files, &files.cert);
    assert!(matches!(err, IdentityError::CaNotPem { .. }), "{err}");
    assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");

    // The key where the certificate belongs.
    std::fs::write(&files.cert, &good_key).unwrap();
    let err = load_err(&files, &files.cert);
    assert!(matches!(err, IdentityError::CaNotPem { .. }), "{err}");

    std::fs::write(&files.cert, &good_cert).unwrap();
    std::fs::write(&files.key, &good_cert).unwrap();
    let err = load_err(&files, &files.key);
    assert!(err.to_string().contains("no PRIVATE KEY block"), "{err}");

    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    let err = load_err(&files, &files.key);
    assert!(matches!(err, IdentityError::CaNotPem { .. }), "{err}");
}

#[test]
fn refuses_a_certificate_that_is_not_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), LocalCaOptions::default());
    let leaf = ca.issue(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    let files = CaFiles::in_dir(&dir.path().join("leaf"));
    std::fs::create_dir(dir.path().join("leaf")).unwrap();
    std::fs::write(&files.cert, pem("CERTIFICATE", leaf.leaf())).unwrap();
    std::fs::write(
        &files.key,
        pem("PRIVATE KEY", leaf.private_key().secret_der()),
    )
    .unwrap();
    let err = load_err(&files, &files.cert);
    assert!(
        matches!(err, IdentityError::NotCa { reason, .. } if reason.contains("basicConstraints")),
        "{err}"
    );

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let files = write_ca(dir.path(), &params, &key);
    let err = load_err(&files, &files.cert);
    assert!(
        matches!(err, IdentityError::NotCa { reason, .. } if reason.contains("keyCertSign")),
        "{err}"
    );
}

#[test]
fn refuses_an_expired_ca() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params();
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(7200)).into();
    params.not_after = (now - Duration::from_secs(3600)).into();
    let files = write_ca(dir.path(), &params, &key);
    let err = load_err(&files, &files.cert);
    assert!(matches!(err, IdentityError::CaExpired { .. }), "{err}");
}

#[test]
fn refuses_a_key_of_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let one = create_ca(
        &dir.path().join("one"),
        &TrustDomain::default(),
        Duration::from_secs(60),
    )
    .unwrap();
    let two = create_ca(
        &dir.path().join("two"),
        &TrustDomain::default(),
        Duration::from_secs(60),
    )
    .unwrap();
    let mixed = CaFiles {
        cert: one.cert.clone(),
        key: two.key.clone(),
    };
    let err = load_err(&mixed, &mixed.key);
    assert!(matches!(err, IdentityError::CaKeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&one.cert.display().to_string()),
        "{err}"
    );
}

#[test]
fn refuses_unsupported_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ed25519 = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let files = write_ca(dir.path(), &ca_params(), &ed25519);
    let err = load_err(&files, &files.key);
    assert!(
        matches!(err, IdentityError::CaKeyUnsupported { .. }),
        "{err}"
    );

    // SEC1 and PKCS#1 encodings are recognised by their PEM labels and refused with a hint.
    for label in ["EC PRIVATE KEY", "RSA PRIVATE KEY"] {
        std::fs::write(&files.key, pem(label, b"not really a key")).unwrap();
        let err = load_err(&files, &files.key);
        assert!(
            matches!(err, IdentityError::CaKeyUnsupported { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("openssl pkcs8"), "{err}");
    }
}

/// `der` as a PEM block labelled `label`.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn pem_helper_round_trips() {
    let der = CertificateDer::from(vec![1u8, 2, 3, 4, 5]);
    let text = pem("CERTIFICATE", &der);
    use rustls::pki_types::pem::PemObject;
    assert_eq!(
        CertificateDer::from_pem_slice(text.as_bytes()).unwrap(),
        der
    );
}

#[test]
fn an_intermediate_ca_presents_itself_and_trusts_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params();
    let root = root_params.self_signed(&root_key).unwrap();
    let mut params = ca_params();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = rcgen::Issuer::from_params(&root_params, &root_key);
    let intermediate = params.signed_by(&key, &issuer).unwrap();
    let files = CaFiles::in_dir(dir.path());
    std::fs::write(&files.cert, intermediate.pem() + &root.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();

    let ca = LocalCa::load(&files, TrustDomain::default(), LocalCaOptions::default()).unwrap();
    assert_eq!(ca.root(), root.der());
    let leaf = ca.issue(&id("spiffe://cluster.local/ns/a/sa/b")).unwrap();
    assert_eq!(leaf.chain(), std::slice::from_ref(intermediate.der()));
    assert_eq!(leaf.roots(), std::slice::from_ref(root.der()));
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &ParsedCertificate::try_from(leaf.leaf()).unwrap(),
        leaf.root_store(),
        leaf.chain(),
        UnixTime::now(),
        crate::tls::provider().signature_verification_algorithms.all,
    )
    .unwrap();
}
