//! Value patterns used by policy rules: Istio string matching (exact, `x*`, `*x`, `*`), CIDR
//! blocks (v4 and v6, a bare IP is a host route), ports, `ns/sa` service accounts, and the
//! positive/negative pair ([`Match`]) every Istio field comes in.
//!
//! Invariant: an [`IpBlock`] has its host bits cleared and a prefix no longer than its family.

use std::fmt;
use std::net::IpAddr;

use crate::identity::SpiffeId;

/// Why a CIDR block was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("invalid CIDR {input:?}: not an IP address")]
    Address {
        /// The refused text.
        input: String,
    },
    /// The prefix length is not a number.
    #[error("invalid CIDR {input:?}: prefix length is not a number")]
    PrefixSyntax {
        /// The refused text.
        input: String,
    },
    /// The prefix length is longer than the address family allows.
    #[error("invalid CIDR {input:?}: prefix length {len} exceeds {max} for this address family")]
    PrefixTooLong {
        /// The refused text.
        input: String,
        /// The given length.
        len: u32,
        /// 32 or 128.
        max: u8,
    },
}

/// An Istio string pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    /// The whole value.
    Exact(String),
    /// `x*`: starts with `x`.
    Prefix(String),
    /// `*x`: ends with `x`.
    Suffix(String),
    /// `*`: any value, as long as there is one.
    Presence,
}

impl StringMatch {
    /// Reads Istio's notation as Istio does: `*` alone is presence, a leading `*` a suffix
    /// match (checked first, so `*a*` is the suffix `a*`), a trailing `*` a prefix match.
    pub fn parse(pattern: &str) -> Self {
        if pattern == "*" {
            Self::Presence
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(pattern.to_owned())
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => value == v,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Presence => !value.is_empty(),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => f.write_str(v),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Presence => f.write_str("*"),
        }
    }
}

/// An Istio `paths` pattern: the string forms, or a path template (`/a/{*}/b`, `/a/{**}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// Exact, `x*`, `*x` or `*`.
    Plain(StringMatch),
    /// A template: literal segments, `{*}` (one segment) and a last `{**}` (the rest).
    Template {
        /// The segments after the leading `/`.
        segments: Vec<TemplateSegment>,
        /// As written, for explanations.
        text: String,
    },
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSegment {
    /// The segment exactly.
    Literal(String),
    /// `{*}`: any one non-empty segment.
    One,
    /// `{**}`: whatever follows, `/` included (only last).
    Many,
}

impl PathPattern {
    /// Reads Istio's notation. A pattern with `{` or `}` is a template, checked as Istio's
    /// validation does (`pkg/config/security/security.go`, `validateNewPathSyntax`): it starts
    /// with `/`, each operator is a whole segment, `{**}` comes last, and no `*` glob beside.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        if !text.contains(['{', '}']) {
            return Ok(Self::Plain(StringMatch::parse(text)));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("a path template must start with /");
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "{*}" => TemplateSegment::One,
                "{**}" if i + 1 == parts.len() => TemplateSegment::Many,
                "{**}" => return Err("{**} must be the last segment of a path template"),
                p if p.contains(['{', '}', '*']) => {
                    return Err("a path template operator must be a whole segment, {*} or {**}");
                }
                p => TemplateSegment::Literal(p.to_owned()),
            });
        }
        Ok(Self::Template {
            segments,
            text: text.to_owned(),
        })
    }

    /// Whether the normalized `path` (without its query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Plain(m) => m.matches(path),
            Self::Template { segments, .. } => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for segment in segments {
                    let part = parts.next();
                    match (segment, part) {
                        (TemplateSegment::Many, Some(_)) => return true,
                        (TemplateSegment::One, Some(p)) if !p.is_empty() => {}
                        (TemplateSegment::Literal(l), Some(p)) if l == p => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(m) => m.fmt(f),
            Self::Template { text, .. } => f.write_str(text),
        }
    }
}

/// An address block, e.g. `10.0.0.0/8` or `fd00::/64`; a bare IP is `/32` or `/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlock {
    /// The network address, host bits cleared.
    addr: IpAddr,
    /// The prefix length.
    prefix: u8,
}

impl IpBlock {
    /// Parses `ADDR/LEN` or a bare `ADDR`. Host bits set below the prefix are cleared, as
    /// Istio does, rather than refused.
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::Address {
            input: text.to_owned(),
        })?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len_text {
            None => max,
            Some(l) => {
                let len: u32 = l.parse().map_err(|_| CidrError::PrefixSyntax {
                    input: text.to_owned(),
                })?;
                match u8::try_from(len) {
                    Ok(p) if p <= max => p,
                    _ => {
                        return Err(CidrError::PrefixTooLong {
                            input: text.to_owned(),
                            len,
                            max,
                        });
                    }
                }
            }
        };
        Ok(Self {
            addr: network(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is inside the block; an address of the other family never is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) if self.addr.is_ipv4() => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            other => other,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && network(ip, self.prefix) == self.addr
    }
}

/// `addr` with the bits after `prefix` cleared.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A service account named `namespace/name`, as Istio's `serviceAccounts` field takes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    /// The namespace.
    pub namespace: String,
    /// The service account's name.
    pub name: String,
}

/// The longest `serviceAccounts` entry Istio's validation accepts.
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

impl ServiceAccount {
    /// Parses `ns/sa`; `None` when either part is missing or there are more.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parses an AuthorizationPolicy's `serviceAccounts` entry: `ns/sa`, or a bare `sa` meaning
    /// the service account `sa` in `policy_namespace`, as istiod reads it. `None` for what
    /// Istio's validation refuses: empty parts, more than one `/`, a `*`, over 320 characters.
    pub fn parse_in(text: &str, policy_namespace: &str) -> Option<Self> {
        if text.contains('*') || text.len() > MAX_SERVICE_ACCOUNT_LEN {
            return None;
        }
        if !text.contains('/') {
            return (!text.is_empty() && !policy_namespace.is_empty()).then(|| Self {
                namespace: policy_namespace.to_owned(),
                name: text.to_owned(),
            });
        }
        Self::parse(text)
    }
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pattern over one kind of connection attribute.
pub trait Pattern: fmt::Display {
    /// What the pattern is matched against.
    type Subject: ?Sized + fmt::Display;
    /// Whether `subject` matches.
    fn matches(&self, subject: &Self::Subject) -> bool;
}

impl Pattern for StringMatch {
    type Subject = str;
    fn matches(&self, subject: &str) -> bool {
        StringMatch::matches(self, subject)
    }
}

impl Pattern for PathPattern {
    type Subject = str;
    fn matches(&self, subject: &str) -> bool {
        PathPattern::matches(self, subject)
    }
}

impl Pattern for IpBlock {
    type Subject = IpAddr;
    fn matches(&self, subject: &IpAddr) -> bool {
        self.contains(*subject)
    }
}

impl Pattern for u16 {
    type Subject = u16;
    fn matches(&self, subject: &u16) -> bool {
        self == subject
    }
}

impl Pattern for ServiceAccount {
    type Subject = SpiffeId;
    fn matches(&self, subject: &SpiffeId) -> bool {
        subject.namespace() == self.namespace && subject.service_account() == self.name
    }
}

/// An Istio field with its `not` form: `any_of` (empty = unconstrained) and `none_of`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match<P> {
    /// The subject must match one of these, when there are any.
    pub any_of: Vec<P>,
    /// The subject must match none of these.
    pub none_of: Vec<P>,
}

impl<P> Default for Match<P> {
    fn default() -> Self {
        Self {
            any_of: Vec::new(),
            none_of: Vec::new(),
        }
    }
}

impl<P: Pattern> Match<P> {
    /// Whether neither form is set.
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.none_of.is_empty()
    }

    /// Istio's semantics: a missing subject (a plaintext peer has no principal) fails the
    /// positive form and passes the negative one, as Envoy's `not_id` does.
    pub fn matches(&self, subject: Option<&P::Subject>) -> bool {
        let positive = self.any_of.is_empty()
            || subject.is_some_and(|s| self.any_of.iter().any(|p| p.matches(s)));
        let negative = subject.is_none_or(|s| !self.none_of.iter().any(|p| p.matches(s)));
        positive && negative
    }

    /// Says why a matching subject matched, e.g. `source.namespace legacy matched`.
    pub fn explain(&self, field: &str, subject: Option<&P::Subject>, out: &mut Vec<String>) {
        let shown = subject.map_or_else(|| "(none)".to_owned(), ToString::to_string);
        if let Some(p) = subject.and_then(|s| self.any_of.iter().find(|p| p.matches(s))) {
            let pattern = p.to_string();
            if pattern == shown {
                out.push(format!("{field} {shown} matched"));
            } else {
                out.push(format!("{field} {shown} matched {pattern}"));
            }
        }
        if !self.none_of.is_empty() {
            out.push(format!("{field} {shown} is not {}", join(&self.none_of)));
        }
    }
}

/// The patterns as Istio wrote them, comma separated.
fn join<P: fmt::Display>(patterns: &[P]) -> String {
    let texts: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    texts.join(", ")
}
