//! HBONE: TCP carried in HTTP/2 CONNECT streams (inside mutual TLS, on port 15008), as Istio's
//! ztunnel speaks it, so the two can carry each other's traffic.
//!
//! This module owns the protocol only — request building and validation, the h2 settings, the
//! stream adapter, the client and server halves — generic over the transport, so it is tested
//! without TLS. Identity, TLS and policy are the callers' business.
//!
//! On the wire: `CONNECT` with `:authority` = the destination pod's `ip:port`; headers
//! `baggage`, `forwarded: for="ip:port"`, `traceparent`; answer 200 then raw bytes both ways,
//! 400 for a malformed request, 401 when policy denies, 503 when the app is unreachable.

mod client;
pub mod pool;
mod server;
mod stream;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

pub use client::HboneClient;
pub use server::{IncomingConnect, serve};
pub use stream::H2Stream;

/// Port of the HBONE listener in every enrolled pod.
pub const HBONE_PORT: u16 = marrow_common::HBONE_PORT;
/// Per-stream flow-control window (as ztunnel).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow-control window (as ztunnel).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest frame accepted (as ztunnel).
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Largest header block accepted: CONNECT requests are small; anything bigger is hostile.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Errors of the HBONE protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The HTTP/2 connection or stream failed.
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    /// The peer answered the CONNECT with a non-200 status.
    #[error("the peer refused the tunnel with status {0}")]
    Refused(http::StatusCode),
    /// Building a request or response failed (an invalid header value).
    #[error("building the message: {0}")]
    Http(#[from] http::Error),
    /// Reaching the peer failed before HTTP/2 (TCP connect, TLS handshake).
    #[error("{step}: {source}")]
    Transport {
        /// What was being done, e.g. "connecting to 10.0.0.2:15008".
        step: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Why an inbound CONNECT was refused; each maps to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed request or authority: 400.
    BadRequest,
    /// Denied by policy: 401.
    Denied,
    /// The app could not be reached: 503.
    Unavailable,
}

impl Refusal {
    /// The HTTP status of this refusal.
    pub fn status(self) -> http::StatusCode {
        match self {
            Refusal::BadRequest => http::StatusCode::BAD_REQUEST,
            Refusal::Denied => http::StatusCode::UNAUTHORIZED,
            Refusal::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What the source side tells the destination about the connection (the `baggage` header,
/// W3C format, the keys ztunnel sends).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// `k8s.pod.name`.
    pub pod: Option<String>,
    /// `service.name`.
    pub service: Option<String>,
    /// `service.version`.
    pub version: Option<String>,
}

impl Baggage {
    /// The header value, e.g. `k8s.namespace.name=shop,k8s.pod.name=web-0`.
    pub fn encode(&self) -> String {
        [
            ("k8s.namespace.name", &self.namespace),
            ("k8s.pod.name", &self.pod),
            ("service.name", &self.service),
            ("service.version", &self.version),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(",")
    }

    /// Parses a header value; unknown keys and malformed members are ignored (baggage is
    /// informational and comes from the peer).
    pub fn parse(value: &str) -> Self {
        let mut out = Baggage::default();
        for member in value.split(',') {
            let Some((k, v)) = member.split_once('=') else {
                continue;
            };
            let v = v.split(';').next().unwrap_or_default().trim();
            if v.is_empty() || v.len() > 253 {
                continue;
            }
            let slot = match k.trim() {
                "k8s.namespace.name" => &mut out.namespace,
                "k8s.pod.name" => &mut out.pod,
                "service.name" => &mut out.service,
                "service.version" => &mut out.version,
                _ => continue,
            };
            *slot = Some(v.to_owned());
        }
        out
    }
}

/// An outbound CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The destination pod's address (`:authority`).
    pub authority: SocketAddr,
    /// The original client (`forwarded: for=`).
    pub forwarded_for: SocketAddr,
    /// Source metadata.
    pub baggage: Baggage,
    /// W3C `traceparent`.
    pub traceparent: TraceParent,
}

impl ConnectRequest {
    /// The HTTP request (CONNECT in authority form: h2 sends only `:method` and `:authority`).
    pub fn to_http(&self) -> Result<http::Request<()>, HboneError> {
        let mut builder = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(self.authority.to_string())
            .header("forwarded", format!("for=\"{}\"", self.forwarded_for))
            .header("traceparent", self.traceparent.to_string());
        let baggage = self.baggage.encode();
        if !baggage.is_empty() {
            builder = builder.header("baggage", baggage);
        }
        Ok(builder.body(())?)
    }
}

/// A validated inbound CONNECT's target and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTarget {
    /// Where the client wants to go (an `ip:port`; names are refused).
    pub authority: SocketAddr,
    /// `forwarded: for=`, when present and well-formed.
    pub forwarded_for: Option<SocketAddr>,
    /// `baggage`, parsed.
    pub baggage: Baggage,
    /// `traceparent`, when present and well-formed.
    pub traceparent: Option<TraceParent>,
}

/// Validates an inbound request; the error says why, for the 400's log line.
pub fn parse_connect<B>(req: &http::Request<B>) -> Result<ConnectTarget, String> {
    if req.method() != http::Method::CONNECT {
        return Err(format!("method {} is not CONNECT", req.method()));
    }
    let authority = req.uri().authority().ok_or("CONNECT without :authority")?;
    let target: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|_| format!("authority {:?} is not ip:port", authority.as_str()))?;
    if target.port() == 0 || target.ip().is_unspecified() || target.ip().is_multicast() {
        return Err(format!("authority {target} is not a usable destination"));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    Ok(ConnectTarget {
        authority: target,
        forwarded_for: header("forwarded").and_then(parse_forwarded_for),
        baggage: header("baggage").map(Baggage::parse).unwrap_or_default(),
        traceparent: header("traceparent").and_then(TraceParent::parse),
    })
}

/// The `for=` of a `forwarded` header (RFC 7239), when it is a quoted `ip:port`.
fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split([';', ',']).find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        v.trim().trim_matches('"').parse().ok()
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
