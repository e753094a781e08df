//! The CA's key and certificate as loaded from its files, and what it signs with them: workload
//! leaves and its own serving certificate.
//!
//! Invariants of a [`Signer`]: its first certificate is a CA (basicConstraints CA:TRUE, and
//! keyCertSign when keyUsage is present) that had not expired when loaded, and the key is that
//! certificate's key, ECDSA P-256/P-384 or RSA in PKCS#8. A pair that fails any check never
//! becomes a `Signer`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::csr::{self, CheckedCsr};
use super::{CaError, CaSettings};
use marrow_mesh::identity::{CaFiles, SpiffeId};

/// Lifetime of the CA's own serving certificate (renewed at half-life, and with the key).
const SERVING_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How far before "now" the serving certificate starts.
const SERVING_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A loaded CA.
#[derive(Debug)]
pub(crate) struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The certificates of the cert file, signing CA first, root last.
    chain: Vec<CertificateDer<'static>>,
    /// The same, as PEM, for responses.
    chain_pem: Vec<String>,
    /// The signing CA's notAfter.
    not_after: SystemTime,
    /// The file contents it was loaded from.
    loaded_from: (Vec<u8>, Vec<u8>),
}

/// The CA's serving certificate and when to issue the next one.
pub(crate) struct Serving {
    /// Certificate chain and key for TLS.
    pub(crate) key: Arc<CertifiedKey>,
    /// Half its lifetime.
    pub(crate) renew_at: SystemTime,
}

/// The contents of the certificate and key files.
pub(crate) fn read(files: &CaFiles) -> Result<(Vec<u8>, Vec<u8>), CaError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| CaError::CaFiles {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    Ok((read(&files.cert)?, read(&files.key)?))
}

impl Signer {
    /// The CA in `cert` and `key` (the contents of `files`, named in errors), checked.
    pub(crate) fn from_bytes(
        files: &CaFiles,
        cert: Vec<u8>,
        key: Vec<u8>,
        now: SystemTime,
    ) -> Result<Signer, CaError> {
        let bad_cert = |reason: String| CaError::CaFiles {
            path: files.cert.clone(),
            reason,
        };
        let bad_key = |reason: String| CaError::CaFiles {
            path: files.key.clone(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_cert(format!("not PEM certificates: {e}")))?;
        let Some(ca) = chain.first() else {
            return Err(bad_cert("no CERTIFICATE block".to_owned()));
        };
        let der = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| bad_key(format!("no usable PRIVATE KEY block: {e}")))?;
        if !matches!(der, PrivateKeyDer::Pkcs8(_)) {
            return Err(bad_key(
                "not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt`".to_owned(),
            ));
        }
        let key_pair = KeyPair::try_from(&der).map_err(|e| bad_key(e.to_string()))?;
        let alg = key_pair.algorithm();
        if alg != &PKCS_ECDSA_P256_SHA256
            && alg != &PKCS_ECDSA_P384_SHA384
            && alg != &PKCS_RSA_SHA256
        {
            return Err(bad_key(format!(
                "{alg:?} keys are not used by Istio CAs (ECDSA P-256/P-384 or RSA expected)"
            )));
        }
        let (_, parsed) =
            X509Certificate::from_der(ca).map_err(|e| bad_cert(format!("unreadable: {e}")))?;
        match parsed.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => {
                return Err(bad_cert(
                    "not a CA: basicConstraints CA:TRUE is missing".into(),
                ));
            }
        }
        match parsed.key_usage() {
            Ok(Some(usage)) if !usage.value.key_cert_sign() => {
                return Err(bad_cert("not a CA: keyUsage lacks keyCertSign".into()));
            }
            Ok(_) => {}
            Err(e) => return Err(bad_cert(format!("keyUsage: {e}"))),
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0),
            );
        if not_after <= now {
            return Err(bad_cert(format!(
                "expired at {}",
                parsed.validity().not_after
            )));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(bad_key(format!(
                "not the key of the CA certificate {}",
                files.cert.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(ca, key_pair).map_err(|e| bad_cert(e.to_string()))?;
        let chain_pem = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        Ok(Signer {
            issuer,
            chain,
            chain_pem,
            not_after,
            loaded_from: (cert, key),
        })
    }

    /// Whether this CA was loaded from exactly these contents.
    pub(crate) fn is_from(&self, cert: &[u8], key: &[u8]) -> bool {
        self.loaded_from.0 == cert && self.loaded_from.1 == key
    }

    /// The signing CA's notAfter.
    pub(crate) fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The response chain for `csr` as `identity`: the leaf, then the CA's certificates up to
    /// the root. `requested_secs` is the request's validity.
    pub(crate) fn issue(
        &self,
        csr: &CheckedCsr,
        identity: &SpiffeId,
        requested_secs: i64,
        settings: &CaSettings,
        now: SystemTime,
    ) -> Result<(Vec<String>, SystemTime), CaError> {
        let window = csr::validity(
            requested_secs,
            settings.default_cert_ttl,
            settings.max_cert_ttl,
            settings.backdate,
            now,
            self.not_after,
        )?;
        let leaf = csr::sign(csr, identity, window, &self.issuer)?;
        let mut chain = Vec::with_capacity(1 + self.chain_pem.len());
        chain.push(leaf.pem());
        chain.extend(self.chain_pem.iter().cloned());
        Ok((chain, window.1))
    }

    /// A new serving certificate for `names` (fresh ECDSA P-256 key, serverAuth), signed by
    /// this CA so that clients verify it with the mesh root.
    pub(crate) fn serving(&self, names: &[String], now: SystemTime) -> Result<Serving, CaError> {
        let signing = |source| CaError::Signing {
            subject: names.join(","),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| n.as_str().try_into().map(SanType::DnsName).map_err(signing))
            .collect::<Result<_, _>>()?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let end = now
            .checked_add(SERVING_VALIDITY)
            .unwrap_or(self.not_after)
            .min(self.not_after);
        if end <= now {
            return Err(CaError::CaExpired {
                not_after: time::OffsetDateTime::from(self.not_after).to_string(),
            });
        }
        let start = now.checked_sub(SERVING_BACKDATE).unwrap_or(now);
        params.not_before = start.into();
        params.not_after = end.into();
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(csr::random_serial().map_err(signing)?);
        let cert = params.signed_by(&key, &self.issuer).map_err(signing)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let certified = CertifiedKey::from_der(
            chain,
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            &rustls::crypto::aws_lc_rs::default_provider(),
        )
        .map_err(CaError::Tls)?;
        let renew_at = now + end.duration_since(now).unwrap_or_default() / 2;
        Ok(Serving {
            key: Arc::new(certified),
            renew_at,
        })
    }
}

/// `der` as one PEM block of `label`.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}
