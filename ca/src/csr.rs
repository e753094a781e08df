//! Certificate signing requests: what this CA accepts, and the leaf it builds for one.
//!
//! Pure: no I/O, the time is an argument. A CSR contributes only its public key; everything
//! else in the leaf is decided here. Still the CSR must ask for exactly what is granted — one
//! URI SAN, the SPIFFE ID, no CA powers — so a confused or hostile client learns at once that
//! it asked for too much instead of silently getting less.

use std::time::{Duration, SystemTime};

use rcgen::{
    Issuer, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, PublicKeyData,
    SignatureAlgorithm, SigningKey,
};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS9_EXTENSION_REQUEST, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::CaError;
use marrow_mesh::identity::SpiffeId;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (what rustls' WebPKI verifies).
pub const MAX_RSA_BITS: usize = 8192;

/// The kinds of key this CA certifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA with a modulus of this many bits.
    Rsa(usize),
}

/// A CSR that passed every check: its public key, ready to be certified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCsr {
    kind: KeyKind,
    /// The subjectPublicKey bits (the key itself, without its algorithm).
    key: Vec<u8>,
}

impl CheckedCsr {
    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
}

impl PublicKeyData for CheckedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    // rcgen writes the SubjectPublicKeyInfo's algorithm from this: id-ecPublicKey with the
    // curve, or rsaEncryption. The signature algorithm is the issuer's, not this.
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.kind {
            KeyKind::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &PKCS_ECDSA_P384_SHA384,
            KeyKind::Rsa(_) => &PKCS_RSA_SHA256,
        }
    }
}

/// Parses the PEM CSR `pem` and checks it may be certified as `identity`: it verifies under
/// its own key, the key is ECDSA P-256/P-384 or RSA of 2048 to 8192 bits, its only name is
/// one URI SAN equal to `identity`, and it asks for no CA powers.
pub fn check(pem: &str, identity: &SpiffeId) -> Result<CheckedCsr, CaError> {
    let unreadable = |reason: String| CaError::CsrUnreadable { reason };
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        unreadable(match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no CERTIFICATE REQUEST PEM block".to_owned()
            }
            other => other.to_string(),
        })
    })?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| unreadable(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(unreadable("trailing bytes after the request".to_owned()));
    }
    let checked = key_of(&csr)?;
    csr.verify_signature().map_err(|e| CaError::CsrSignature {
        reason: e.to_string(),
    })?;
    check_extensions(&csr, identity)?;
    Ok(checked)
}

/// The CSR's key, if of a kind this CA certifies.
fn key_of(csr: &X509CertificationRequest<'_>) -> Result<CheckedCsr, CaError> {
    let refuse = |reason: String| CaError::CsrKey { reason };
    let spki = &csr.certification_request_info.subject_pki;
    let key = spki.subject_public_key.data.to_vec();
    let algorithm = &spki.algorithm.algorithm;
    let kind = if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| refuse("an EC key without a named curve".to_owned()))?;
        if curve == OID_EC_P256 {
            KeyKind::EcdsaP256
        } else if curve == OID_NIST_EC_P384 {
            KeyKind::EcdsaP384
        } else {
            return Err(refuse(format!(
                "EC curve {curve} (ECDSA P-256 or P-384 expected)"
            )));
        }
    } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => return Err(refuse("an unreadable RSA key".to_owned())),
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(refuse(format!(
                "RSA key of {bits} bits ({MIN_RSA_BITS} to {MAX_RSA_BITS} expected)"
            )));
        }
        KeyKind::Rsa(bits)
    } else {
        return Err(refuse(format!(
            "key algorithm {algorithm} (ECDSA P-256/P-384 or RSA expected)"
        )));
    };
    Ok(CheckedCsr { kind, key })
}

/// Bits of a big-endian unsigned integer (leading zero bytes and bits not counted).
fn modulus_bits(modulus: &[u8]) -> usize {
    let Some(first) = modulus.iter().position(|b| *b != 0) else {
        return 0;
    };
    let significant = &modulus[first..];
    significant.len() * 8
        - significant
            .first()
            .map_or(0, |b| b.leading_zeros() as usize)
}

/// The requested extensions: the SANs must be exactly `identity` as one URI; no CA powers.
/// Other extensions are ignored: nothing of the CSR is copied into the leaf.
fn check_extensions(
    csr: &X509CertificationRequest<'_>,
    identity: &SpiffeId,
) -> Result<(), CaError> {
    let names = |reason: String| CaError::CsrNames { reason };
    let mut uris: Vec<&str> = Vec::new();
    for attribute in csr.certification_request_info.iter_attributes() {
        let extensions = match attribute.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(request) => &request.extensions,
            _ if attribute.oid == OID_PKCS9_EXTENSION_REQUEST => {
                return Err(CaError::CsrUnreadable {
                    reason: "an unreadable extensionRequest attribute".to_owned(),
                });
            }
            _ => continue,
        };
        for extension in extensions {
            match extension.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => uris.push(uri),
                            GeneralName::DNSName(dns) => {
                                return Err(names(format!("DNS name {dns:?} requested")));
                            }
                            GeneralName::IPAddress(ip) => {
                                return Err(names(format!(
                                    "IP address SAN requested ({} bytes)",
                                    ip.len()
                                )));
                            }
                            GeneralName::RFC822Name(email) => {
                                return Err(names(format!("email {email:?} requested")));
                            }
                            other => {
                                return Err(names(format!("SAN {other:?} requested")));
                            }
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CaError::CsrCaRequested {
                        reason: "basicConstraints CA:TRUE",
                    });
                }
                ParsedExtension::KeyUsage(usage) if usage.key_cert_sign() || usage.crl_sign() => {
                    return Err(CaError::CsrCaRequested {
                        reason: "keyUsage keyCertSign or cRLSign",
                    });
                }
                ParsedExtension::ParseError { error }
                    if [
                        OID_X509_EXT_SUBJECT_ALT_NAME,
                        OID_X509_EXT_BASIC_CONSTRAINTS,
                        OID_X509_EXT_KEY_USAGE,
                    ]
                    .contains(&extension.oid) =>
                {
                    return Err(CaError::CsrUnreadable {
                        reason: format!("extension {}: {error}", extension.oid),
                    });
                }
                _ => {}
            }
        }
    }
    match uris.as_slice() {
        [uri] if *uri == identity.as_str() => Ok(()),
        [uri] => Err(names(format!(
            "URI SAN {uri:?} is not the requested identity {identity}"
        ))),
        [] => Err(names(format!("no URI SAN; {identity} expected"))),
        more => Err(names(format!(
            "{} URI SANs; exactly one, {identity}, expected",
            more.len()
        ))),
    }
}

/// The window a leaf is valid for: `requested_secs` (the request's `validity_duration`;
/// zero or negative means `default`) capped at `max`, starting `backdate` (at most a tenth
/// of the lifetime) before `now`, and ending no later than `ca_not_after`.
pub fn validity(
    requested_secs: i64,
    default: Duration,
    max: Duration,
    backdate: Duration,
    now: SystemTime,
    ca_not_after: SystemTime,
) -> Result<(SystemTime, SystemTime), CaError> {
    let asked = u64::try_from(requested_secs)
        .ok()
        .filter(|s| *s > 0)
        .map_or(default, Duration::from_secs);
    let lifetime = asked.min(max);
    let start = now.checked_sub(backdate.min(lifetime / 10)).unwrap_or(now);
    let end = now
        .checked_add(lifetime)
        .unwrap_or(ca_not_after)
        .min(ca_not_after);
    if end <= now {
        return Err(CaError::CaExpired {
            not_after: time::OffsetDateTime::from(ca_not_after).to_string(),
        });
    }
    Ok((start, end))
}

/// The leaf for `csr` as `identity`, valid over `window`, signed by `issuer`: an empty
/// subject, one critical URI SAN, not a CA, digitalSignature + keyEncipherment, serverAuth +
/// clientAuth.
pub fn sign(
    csr: &CheckedCsr,
    identity: &SpiffeId,
    window: (SystemTime, SystemTime),
    issuer: &Issuer<'_, impl SigningKey>,
) -> Result<rcgen::Certificate, CaError> {
    let signing = |source| CaError::Signing {
        subject: identity.to_string(),
        source,
    };
    let mut params = marrow_mesh::identity::leaf_params(identity, window).map_err(signing)?;
    params.serial_number = Some(random_serial().map_err(signing)?);
    params.signed_by(csr, issuer).map_err(signing)
}

/// A random positive 128-bit serial (rcgen's default derives it from the key, which repeats
/// when a client reuses its key).
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber, rcgen::Error> {
    let mut serial = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    serial[0] &= 0x7f;
    Ok(rcgen::SerialNumber::from_slice(&serial))
}
