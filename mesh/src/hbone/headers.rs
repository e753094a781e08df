//! The metadata headers of a CONNECT, written and read as ztunnel does (its `src/baggage.rs`,
//! `build_forwarded` in `src/proxy/outbound.rs`, `parse_forwarded_host` in `src/proxy.rs`):
//! `baggage` (W3C baggage: the source workload's Kubernetes and Istio attributes), `forwarded`
//! (RFC 7239: the client's address, and the Service host name it addressed) and `traceparent`
//! (W3C trace context).
//!
//! These headers come from the peer: parsing never fails the request. Anything malformed,
//! oversized, ambiguous (a key given twice with different values) or outside the expected
//! character set is dropped, field by field, and the rest is kept.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

use crate::objects::WorkloadType;

/// Longest baggage header value read (W3C baggage's limit for the whole header); a longer one
/// is ignored as a whole.
pub const MAX_BAGGAGE_LEN: usize = 8192;
/// Longest value of one baggage key kept (a Kubernetes name or DNS subdomain).
pub const MAX_BAGGAGE_VALUE_LEN: usize = 253;
/// Longest `forwarded` header value read; a longer one is ignored as a whole.
pub const MAX_FORWARDED_LEN: usize = 1024;

/// What the source side tells the destination about itself (the `baggage` header), with the
/// keys ztunnel sends and reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.cluster.name`: the source's cluster id.
    pub cluster: Option<String>,
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// `k8s.<type>.name`: the source workload's name and kind (deployment, cronjob, job, pod).
    pub workload: Option<(WorkloadType, String)>,
    /// `service.name`: the canonical service.
    pub service: Option<String>,
    /// `service.version`: the canonical revision.
    pub version: Option<String>,
    /// `cloud.region`.
    pub region: Option<String>,
    /// `cloud.availability_zone`.
    pub zone: Option<String>,
}

/// One key of [`Baggage`], as a slot of the parser.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Cluster,
    Namespace,
    Workload(WorkloadType),
    Service,
    Version,
    Region,
    Zone,
}

impl Key {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "k8s.cluster.name" => Key::Cluster,
            "k8s.namespace.name" => Key::Namespace,
            "service.name" => Key::Service,
            "service.version" => Key::Version,
            "cloud.region" => Key::Region,
            "cloud.availability_zone" => Key::Zone,
            // k8s.<kind>.name: ztunnel reads exactly these four kinds (src/baggage.rs).
            other => {
                let kind = other.strip_prefix("k8s.")?.strip_suffix(".name")?;
                Key::Workload(WorkloadType::ALL.into_iter().find(|t| t.as_str() == kind)?)
            }
        })
    }

    /// The field of [`Baggage`] the key fills: every workload kind fills the same one.
    fn field(self) -> u8 {
        match self {
            Key::Cluster => 0,
            Key::Namespace => 1,
            Key::Workload(_) => 2,
            Key::Service => 3,
            Key::Version => 4,
            Key::Region => 5,
            Key::Zone => 6,
        }
    }
}

impl Baggage {
    /// The header value in ztunnel's key order, e.g.
    /// `k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,…`;
    /// values are percent-encoded where W3C baggage requires it.
    pub fn encode(&self) -> String {
        let workload_key = self
            .workload
            .as_ref()
            .map(|(kind, _)| format!("k8s.{}.name", kind.as_str()));
        let members = [
            (Some("k8s.cluster.name"), self.cluster.as_deref()),
            (Some("k8s.namespace.name"), self.namespace.as_deref()),
            (
                workload_key.as_deref(),
                self.workload.as_ref().map(|(_, name)| name.as_str()),
            ),
            (Some("service.name"), self.service.as_deref()),
            (Some("service.version"), self.version.as_deref()),
            (Some("cloud.region"), self.region.as_deref()),
            (Some("cloud.availability_zone"), self.zone.as_deref()),
        ];
        let mut out = String::new();
        for (key, value) in members {
            let (Some(key), Some(value)) = (key, value) else {
                continue;
            };
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(key);
            out.push('=');
            percent_encode(value, &mut out);
        }
        out
    }

    /// Parses the values of every `baggage` header of a request, in order. Unknown keys,
    /// member properties (`;…`) and malformed members are ignored; a value that is empty, too
    /// long, badly escaped, not UTF-8 or holds control characters is dropped; a key given twice
    /// with different values (or two workload kinds) is dropped as ambiguous.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut found: Vec<(Key, String)> = Vec::new();
        for value in values {
            if value.len() > MAX_BAGGAGE_LEN {
                continue;
            }
            for member in value.split(',') {
                let Some((name, rest)) = member.split_once('=') else {
                    continue;
                };
                let Some(key) = Key::of(name.trim()) else {
                    continue;
                };
                let raw = rest.split(';').next().unwrap_or_default().trim();
                if let Some(text) = percent_decode(raw).filter(|t| acceptable(t)) {
                    found.push((key, text));
                }
            }
        }
        // A field is set when every member that fills it agrees (same key, same value).
        let pick = |field: u8| {
            let mut members = found.iter().filter(|(k, _)| k.field() == field);
            let first = members.next()?;
            members.all(|m| m == first).then(|| first.clone())
        };
        let text = |field: u8| pick(field).map(|(_, text)| text);
        Baggage {
            cluster: text(0),
            namespace: text(1),
            workload: pick(2).and_then(|(key, text)| match key {
                Key::Workload(kind) => Some((kind, text)),
                _ => None,
            }),
            service: text(3),
            version: text(4),
            region: text(5),
            zone: text(6),
        }
    }
}

/// A value worth keeping: non-empty, a name's length, no control characters (it ends up in
/// metric labels and log lines).
fn acceptable(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_BAGGAGE_VALUE_LEN && !text.chars().any(char::is_control)
}

/// W3C baggage's `baggage-octet`: printable ASCII but space, `"`, `,`, `;`, `\` — and `%`,
/// which starts an escape.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x24 | 0x26..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

fn percent_encode(value: &str, out: &mut String) {
    for &b in value.as_bytes() {
        if is_baggage_octet(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Decodes `%XX` escapes; `None` for a bad escape, a byte outside `baggage-octet`, or text that
/// is not UTF-8 once decoded.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Two hex digits exactly (from_str_radix alone would take a sign).
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b if is_baggage_octet(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The `forwarded` header of a CONNECT (RFC 7239), as ztunnel builds it:
/// `for="<client ip:port>"`, then `;host=<service host name>` when the client addressed a
/// Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// `for=`: the original client, when present and an `ip:port`.
    pub for_addr: Option<SocketAddr>,
    /// `host=`: the Service host name the client addressed (`name.namespace.svc.…`), when
    /// present and a DNS name; lowercase.
    pub host: Option<String>,
}

impl Forwarded {
    /// The header value: `for="10.0.0.1:5000"` or `for="10.0.0.1:5000";host=web.shop.svc.cluster.local`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(addr) = self.for_addr {
            out.push_str(&format!("for=\"{addr}\""));
        }
        if let Some(host) = &self.host {
            if !out.is_empty() {
                out.push(';');
            }
            out.push_str("host=");
            out.push_str(host);
        }
        out
    }

    /// Parses the first forwarded-element of a header value (the original client's; a proxy
    /// in between appends its own after a comma). Parameter names are case-insensitive; a
    /// parameter given twice in the element is ambiguous and dropped (RFC 7239 §4 forbids it);
    /// a `for` that is not a quoted or bare `ip:port`, or a `host` that is not a DNS name, is
    /// dropped. Non-ASCII input yields nothing (as ztunnel).
    pub fn parse(value: &str) -> Self {
        let mut out = Forwarded::default();
        if value.len() > MAX_FORWARDED_LEN || !value.is_ascii() {
            return out;
        }
        let Some(pairs) = first_element(value) else {
            return out;
        };
        let count = |name: &str| {
            pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .count()
        };
        let once = |name: &str| {
            (count(name) == 1)
                .then(|| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                .flatten()
                .map(|(_, v)| v.as_str())
        };
        out.for_addr = once("for").and_then(|v| v.parse().ok());
        out.host = once("host")
            .map(str::to_ascii_lowercase)
            .filter(|h| is_dns_name(h));
        out
    }
}

/// The `name=value` pairs of the first forwarded-element, values unquoted; `None` when the
/// element is malformed (a pair without `=`, an unterminated quote, a bad escape).
fn first_element(value: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut text = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => text.push(chars.next()?),
                    c => text.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ';' || c == ',' {
                    break;
                }
                text.push(c);
                chars.next();
            }
        }
        pairs.push((name.trim().to_owned(), text.trim().to_owned()));
        // Skip whitespace up to the next separator.
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(';') => continue,
            // The end of the first element, or of the header.
            Some(',') | None => return Some(pairs),
            Some(_) => return None,
        }
    }
}

/// A DNS name (lowercase letters, digits, `-`, dot-separated labels of at most 63), at most 253
/// characters: a Service host name, nothing that could smuggle label or log syntax.
fn is_dns_name(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A W3C trace context `traceparent` (version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 128-bit trace id (never zero).
    pub trace_id: u128,
    /// 64-bit parent span id (never zero).
    pub span_id: u64,
    /// Trace flags (01 = sampled).
    pub flags: u8,
}

impl TraceParent {
    /// A new random trace, not sampled.
    pub fn random() -> Self {
        let hi = random_u64();
        let lo = random_u64();
        TraceParent {
            trace_id: (u128::from(hi) << 64 | u128::from(lo)).max(1),
            span_id: random_u64().max(1),
            flags: 0,
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
            || parts.next().is_some()
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// Unpredictable enough for trace ids (not for secrets): std's per-process random hash keys.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests;
