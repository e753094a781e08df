//! CSR checks against hostile and malformed requests, and the leaf built for a good one.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    SanType,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::CaError;
use crate::csr::{self, KeyKind};
use marrow_mesh::identity::SpiffeId;

const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";

/// `openssl req -new -newkey rsa:1024 -addext subjectAltName=URI:<CART>`.
const RSA_1024_CSR: &str = include_str!("../../tests/fixtures/rsa-1024.csr");

/// `openssl req -new -newkey rsa:2048 -addext subjectAltName=URI:<CART>`.
const RSA_2048_CSR: &str = include_str!("../../tests/fixtures/rsa-2048.csr");

/// `openssl req -new` with a secp256k1 key and SAN URI:<CART>.
const SECP256K1_CSR: &str = include_str!("../../tests/fixtures/secp256k1.csr");

fn cart() -> SpiffeId {
    SpiffeId::parse(CART).unwrap()
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

/// A CSR signed by a fresh key of `alg`, shaped by `shape`.
fn csr_with(
    alg: &'static rcgen::SignatureAlgorithm,
    shape: impl FnOnce(&mut CertificateParams),
) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(CART)];
    shape(&mut params);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn p256(shape: impl FnOnce(&mut CertificateParams)) -> String {
    csr_with(&PKCS_ECDSA_P256_SHA256, shape)
}

/// The name of the refusal, for tables.
fn refusal(result: Result<csr::CheckedCsr, CaError>) -> &'static str {
    match result {
        Ok(_) => "accepted",
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            e.reason()
        }
    }
}

#[test]
fn accepts_exactly_the_identity_with_supported_keys() {
    let cases: Vec<(&str, String, KeyKind)> = vec![
        ("p-256", p256(|_| {}), KeyKind::EcdsaP256),
        (
            "p-384",
            csr_with(&PKCS_ECDSA_P384_SHA384, |_| {}),
            KeyKind::EcdsaP384,
        ),
        ("rsa-2048", RSA_2048_CSR.to_owned(), KeyKind::Rsa(2048)),
        (
            "ca:false and a subject are fine (never copied)",
            p256(|p| {
                p.is_ca = IsCa::ExplicitNoCa;
                p.distinguished_name.push(DnType::CommonName, "anything");
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            }),
            KeyKind::EcdsaP256,
        ),
    ];
    for (name, pem, kind) in cases {
        let checked = csr::check(&pem, &cart()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(checked.kind(), kind, "{name}");
    }
}

#[test]
fn refuses_hostile_and_broken_requests() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("extra DNS SAN", p256(|p| p.subject_alt_names.push(SanType::DnsName("cart.shop.svc".try_into().unwrap()))), "csr_names"),
        ("two URI SANs", p256(|p| p.subject_alt_names.push(uri("spiffe://cluster.local/ns/kube-system/sa/admin"))), "csr_names"),
        ("IP SAN", p256(|p| p.subject_alt_names.push(SanType::IpAddress("10.0.0.1".parse().unwrap()))), "csr_names"),
        ("email SAN", p256(|p| p.subject_alt_names.push(SanType::Rfc822Name("a@b.c".try_into().unwrap()))), "csr_names"),
        ("another identity", p256(|p| p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/shop/sa/admin")]), "csr_names"),
        ("another trust domain", p256(|p| p.subject_alt_names = vec![uri("spiffe://evil.example/ns/shop/sa/cart")]), "csr_names"),
        ("no SAN", p256(|p| p.subject_alt_names.clear()), "csr_names"),
        ("CA:TRUE", p256(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)), "csr_ca_requested"),
        ("keyCertSign", p256(|p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]), "csr_ca_requested"),
        ("cRLSign", p256(|p| p.key_usages = vec![KeyUsagePurpose::CrlSign]), "csr_ca_requested"),
        ("RSA 1024", RSA_1024_CSR.to_owned(), "csr_key"),
        ("Ed25519", csr_with(&PKCS_ED25519, |_| {}), "csr_key"),
        ("secp256k1", SECP256K1_CSR.to_owned(), "csr_key"),
        ("tampered signature", tamper(&p256(|_| {}), |der| {
            let last = der.len() - 1;
            der[last] ^= 0x01;
        }), "csr_signature"),
        ("tampered name under a valid signature", tamper(&p256(|_| {}), |der| {
            // The last byte of the URI ("…/sa/cart" -> "…/sa/caru").
            let at = der.windows(4).position(|w| w == b"cart").unwrap() + 3;
            der[at] = b'u';
        }), "csr_signature"),
        ("garbage", "hello".to_owned(), "csr_unreadable"),
        ("empty", String::new(), "csr_unreadable"),
        ("garbage in PEM", "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE REQUEST-----\n".to_owned(), "csr_unreadable"),
        ("a certificate, not a request", self_signed_pem(), "csr_unreadable"),
    ];
    for (name, pem, expected) in cases {
        assert_eq!(refusal(csr::check(&pem, &cart())), expected, "{name}");
    }
}

#[test]
fn refusals_name_the_reason() {
    let e = csr::check(RSA_1024_CSR, &cart()).unwrap_err();
    assert!(e.to_string().contains("RSA key of 1024 bits"), "{e}");
    let e = csr::check(&csr_with(&PKCS_ED25519, |_| {}), &cart()).unwrap_err();
    assert!(e.to_string().contains("key algorithm 1.3.101.112"), "{e}");
    let e = csr::check(SECP256K1_CSR, &cart()).unwrap_err();
    assert!(e.to_string().contains("EC curve 1.3.132.0.10"), "{e}");
    let e = csr::check(
        &p256(|p| {
            p.subject_alt_names
                .push(SanType::DnsName("x.example".try_into().unwrap()))
        }),
        &cart(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"x.example\""), "{e}");
}

/// Re-encodes `pem` after `change` to its DER.
fn tamper(pem: &str, change: impl FnOnce(&mut Vec<u8>)) -> String {
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject;
    let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    change(&mut der);
    crate::signer::pem("CERTIFICATE REQUEST", &der)
}

fn self_signed_pem() -> String {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["x.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    cert.pem().replace("CERTIFICATE", "CERTIFICATE REQUEST")
}

/// A CA for signing tests.
fn issuer() -> (Issuer<'static, KeyPair>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().to_vec();
    (Issuer::new(params, key), der)
}

#[test]
fn the_leaf_is_built_from_scratch() {
    let (issuer, ca_der) = issuer();
    // The CSR asks for things the leaf must not carry: a subject, code signing.
    let pem = p256(|p| {
        p.distinguished_name.push(DnType::CommonName, "root");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    });
    let checked = csr::check(&pem, &cart()).unwrap();
    let now = SystemTime::now();
    let window = (
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let leaf = csr::sign(&checked, &cart(), window, &issuer).unwrap();
    let (_, cert) = X509Certificate::from_der(leaf.der()).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "empty subject");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert_eq!(san.value.general_names, vec![GeneralName::URI(CART)]);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && usage.key_encipherment());
    assert!(!usage.key_cert_sign() && !usage.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    let request_der = {
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject;
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap()
    };
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&request_der)
            .unwrap();
    assert_eq!(
        cert.public_key().raw,
        request.certification_request_info.subject_pki.raw,
        "the CSR's key, as it sent it"
    );
    assert_eq!(
        cert.validity().not_after.timestamp(),
        time::OffsetDateTime::from(window.1).unix_timestamp()
    );
    // A client reusing its key still gets distinct serials.
    let again = csr::sign(&checked, &cart(), window, &issuer).unwrap();
    let (_, again) = X509Certificate::from_der(again.der()).unwrap();
    assert_ne!(cert.raw_serial(), again.raw_serial());
}

#[test]
fn an_rsa_key_is_certified_as_rsa() {
    let (issuer, _) = issuer();
    let checked = csr::check(RSA_2048_CSR, &cart()).unwrap();
    let now = SystemTime::now();
    let leaf = csr::sign(
        &checked,
        &cart(),
        (now, now + Duration::from_secs(60)),
        &issuer,
    )
    .unwrap();
    let (_, cert) = X509Certificate::from_der(leaf.der()).unwrap();
    assert_eq!(cert.public_key().parsed().unwrap().key_size(), 2048);
}

#[test]
fn validity_is_clamped() {
    let day = Duration::from_secs(86_400);
    let hour = Duration::from_secs(3600);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let far = now + 365 * day;
    let backdate = Duration::from_secs(300);
    // (requested seconds, CA notAfter) -> lifetime from now
    let cases: Vec<(&str, i64, SystemTime, Duration)> = vec![
        ("as asked", 3600, far, hour),
        ("zero means the default", 0, far, day),
        ("negative means the default", -5, far, day),
        ("capped at the maximum", 10 * 86_400, far, 2 * day),
        (
            "never past the CA",
            3600,
            now + Duration::from_secs(600),
            Duration::from_secs(600),
        ),
    ];
    for (name, requested, ca_not_after, lifetime) in cases {
        let (start, end) =
            csr::validity(requested, day, 2 * day, backdate, now, ca_not_after).unwrap();
        assert_eq!(end, now + lifetime, "{name}");
        assert!(
            start < now && now.duration_since(start).unwrap() <= backdate,
            "{name}"
        );
    }
    // A short certificate is backdated by at most a tenth of its life.
    let (start, _) = csr::validity(60, day, day, backdate, now, far).unwrap();
    assert_eq!(now.duration_since(start).unwrap(), Duration::from_secs(6));
    let expired = csr::validity(60, day, day, backdate, now, now - hour).unwrap_err();
    assert_eq!(expired.reason(), "ca_expired");
    assert_eq!(expired.code(), tonic::Code::Unavailable);
}

#[test]
fn pem_round_trips() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    for len in [0usize, 1, 2, 3, 47, 48, 49, 100] {
        let der: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        let text = crate::signer::pem("CERTIFICATE", &der);
        if len == 0 {
            continue;
        }
        let back = CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice(), "{len}");
    }
}
