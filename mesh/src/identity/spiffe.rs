//! SPIFFE IDs of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Invariant: a [`TrustDomain`] or [`SpiffeId`] that exists is valid — the trust domain uses only
//! the SPIFFE characters (`a-z 0-9 . - _`), the namespace is a Kubernetes DNS-1123 label and the
//! service account a DNS-1123 subdomain — so the text form round-trips exactly and two IDs are
//! equal exactly when their URIs are. Both are cheap to clone (one shared string).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The URI scheme and authority separator every SPIFFE ID starts with.
const SCHEME: &str = "spiffe://";
/// Istio's and Kubernetes' default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Longest trust domain the SPIFFE specification allows.
const MAX_TRUST_DOMAIN: usize = 255;
/// Longest DNS-1123 label (a namespace).
const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain (a service account).
const MAX_SUBDOMAIN: usize = 253;

/// Why a SPIFFE ID or one of its parts was refused; `input` is the whole ID (or trust domain) as
/// given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The text does not start with `spiffe://`.
    #[error("invalid SPIFFE ID {input:?}: must start with \"spiffe://\"")]
    Scheme {
        /// The refused text.
        input: String,
    },
    /// The trust domain is empty, too long or has a character outside `a-z 0-9 . - _`.
    #[error("invalid SPIFFE ID {input:?}: trust domain {reason}")]
    TrustDomain {
        /// The refused text.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("invalid SPIFFE ID {input:?}: path must be /ns/<namespace>/sa/<service-account>")]
    Path {
        /// The refused text.
        input: String,
    },
    /// The namespace is not a Kubernetes DNS-1123 label.
    #[error("invalid SPIFFE ID {input:?}: namespace {reason}")]
    Namespace {
        /// The refused text.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The service account is not a Kubernetes DNS-1123 subdomain.
    #[error("invalid SPIFFE ID {input:?}: service account {reason}")]
    ServiceAccount {
        /// The refused text.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A SPIFFE trust domain, e.g. `cluster.local`; [`Default`] is `cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Validates `name` as a trust domain.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        check_trust_domain(name).map_err(|reason| SpiffeIdError::TrustDomain {
            input: name.to_owned(),
            reason,
        })?;
        Ok(Self(Arc::from(name)))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(Arc::from(DEFAULT_TRUST_DOMAIN))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole URI.
    uri: Arc<str>,
    /// End of the trust domain in `uri`.
    td_end: usize,
    /// End of the namespace in `uri`.
    ns_end: usize,
}

impl SpiffeId {
    /// The identity of service account `service_account` in `namespace`.
    pub fn new(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let uri = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        let td_end = SCHEME.len() + trust_domain.as_str().len();
        let ns_end = td_end + "/ns/".len() + namespace.len();
        check_namespace(namespace).map_err(|reason| SpiffeIdError::Namespace {
            input: uri.clone(),
            reason,
        })?;
        check_service_account(service_account).map_err(|reason| SpiffeIdError::ServiceAccount {
            input: uri.clone(),
            reason,
        })?;
        Ok(Self {
            uri: Arc::from(uri),
            td_end,
            ns_end,
        })
    }

    /// Parses the URI form.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme {
                input: input.to_owned(),
            })?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(trust_domain).map_err(|reason| SpiffeIdError::TrustDomain {
            input: input.to_owned(),
            reason,
        })?;
        let mut segments = path.split('/');
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(SpiffeIdError::Path {
                input: input.to_owned(),
            });
        };
        let trust_domain = TrustDomain(Arc::from(trust_domain));
        Self::new(&trust_domain, namespace, service_account)
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end]
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[self.td_end + "/ns/".len()..self.ns_end]
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.uri[self.ns_end + "/sa/".len()..]
    }

    /// Whether this identity belongs to `trust_domain`.
    pub fn is_in(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain() == trust_domain.as_str()
    }

    /// The URI form.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The URI form, shared (a label value holds it without a copy).
    pub fn shared_uri(&self) -> &Arc<str> {
        &self.uri
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.uri, f)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// SPIFFE: lowercase letters, digits, dots, dashes and underscores; no port, no user info.
fn check_trust_domain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_TRUST_DOMAIN {
        return Err("is longer than 255 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("may only contain a-z, 0-9, '.', '-' and '_'");
    }
    Ok(())
}

/// Kubernetes namespace names are DNS-1123 labels.
fn check_namespace(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_LABEL {
        return Err("is longer than 63 characters");
    }
    check_dns1123(name, false)
}

/// Kubernetes service account names are DNS-1123 subdomains.
fn check_service_account(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_SUBDOMAIN {
        return Err("is longer than 253 characters");
    }
    check_dns1123(name, true)
}

/// Lowercase alphanumerics and '-' (and '.' between labels when `dots`), alphanumeric at both
/// ends of every label.
fn check_dns1123(name: &str, dots: bool) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if dots {
        if !name.bytes().all(|b| alnum(b) || b == b'-' || b == b'.') {
            return Err("may only contain a-z, 0-9, '-' and '.'");
        }
    } else if !name.bytes().all(|b| alnum(b) || b == b'-') {
        return Err("may only contain a-z, 0-9 and '-'");
    }
    // Without `dots` there is no '.' left, so this sees the whole name as one label.
    for label in name.split('.') {
        match (label.bytes().next(), label.bytes().last()) {
            (Some(first), Some(last)) if alnum(first) && alnum(last) => {}
            _ => return Err("must start and end with a-z or 0-9"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        for good in [
            "spiffe://cluster.local/ns/default/sa/default",
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://my_td-1.example/ns/kube-system/sa/coredns",
            "spiffe://td/ns/ns1/sa/build.bot-2",
        ] {
            let id = SpiffeId::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(id.to_string(), good);
            assert_eq!(id.as_str().parse::<SpiffeId>(), Ok(id));
        }
        let id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/cart").unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("example.org", "shop", "cart")
        );
        assert!(id.is_in(&TrustDomain::new("example.org").unwrap()));
        assert!(!id.is_in(&TrustDomain::default()));
    }

    #[test]
    fn refuses_bad_forms() {
        use SpiffeIdError as E;
        let long_ns = format!("spiffe://td/ns/{}/sa/a", "n".repeat(64));
        let long_td = format!("spiffe://{}/ns/a/sa/a", "t".repeat(256));
        let cases: &[(&str, &str)] = &[
            ("", "Scheme"),
            ("cluster.local/ns/a/sa/b", "Scheme"),
            ("SPIFFE://td/ns/a/sa/b", "Scheme"),
            ("https://td/ns/a/sa/b", "Scheme"),
            ("spiffe:///ns/a/sa/b", "TrustDomain"),
            ("spiffe://Cluster.local/ns/a/sa/b", "TrustDomain"),
            ("spiffe://td:443/ns/a/sa/b", "TrustDomain"),
            ("spiffe://user@td/ns/a/sa/b", "TrustDomain"),
            (&long_td, "TrustDomain"),
            ("spiffe://td", "Path"),
            ("spiffe://td/", "Path"),
            ("spiffe://td/ns/a", "Path"),
            ("spiffe://td/ns/a/sa", "Path"),
            ("spiffe://td/ns/a/sa/b/", "Path"),
            ("spiffe://td/ns/a/sa/b/c", "Path"),
            ("spiffe://td/sa/b/ns/a", "Path"),
            ("spiffe://td/ns//sa/b", "Namespace"),
            ("spiffe://td/ns/A/sa/b", "Namespace"),
            ("spiffe://td/ns/-a/sa/b", "Namespace"),
            ("spiffe://td/ns/a-/sa/b", "Namespace"),
            ("spiffe://td/ns/a.b/sa/b", "Namespace"),
            ("spiffe://td/ns/a%20/sa/b", "Namespace"),
            (&long_ns, "Namespace"),
            ("spiffe://td/ns/a/sa/", "ServiceAccount"),
            ("spiffe://td/ns/a/sa/B", "ServiceAccount"),
            ("spiffe://td/ns/a/sa/b..c", "ServiceAccount"),
            ("spiffe://td/ns/a/sa/.b", "ServiceAccount"),
            ("spiffe://td/ns/a/sa/b?x=1", "ServiceAccount"),
            ("spiffe://td/ns/a/sa/b#f", "ServiceAccount"),
        ];
        let kind = |e: &SpiffeIdError| match e {
            E::Scheme { .. } => "Scheme",
            E::TrustDomain { .. } => "TrustDomain",
            E::Path { .. } => "Path",
            E::Namespace { .. } => "Namespace",
            E::ServiceAccount { .. } => "ServiceAccount",
        };
        for (input, expected) in cases {
            let err = SpiffeId::parse(input).expect_err(input);
            assert_eq!(kind(&err), *expected, "{input}: unexpected {err:?}");
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn new_validates_each_part() {
        let td = TrustDomain::default();
        assert_eq!(
            SpiffeId::new(&td, "default", "web").unwrap().to_string(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert!(matches!(
            SpiffeId::new(&td, "Default", "web"),
            Err(SpiffeIdError::Namespace { .. })
        ));
        assert!(matches!(
            SpiffeId::new(&td, "default", "a/b"),
            Err(SpiffeIdError::ServiceAccount { .. })
        ));
        assert_eq!(TrustDomain::default().as_str(), "cluster.local");
        assert!(matches!(
            TrustDomain::new("bad domain"),
            Err(SpiffeIdError::TrustDomain { .. })
        ));
    }

    #[test]
    fn serde_uses_the_uri() {
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/ns/a/sa/b\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/ns/a\"").is_err());
    }
}
