//! HBONE: TCP carried in HTTP/2 CONNECT streams (inside mutual TLS, on port 15008), as Istio's
//! ztunnel speaks it, so the two can carry each other's traffic.
//!
//! This module owns the protocol only — request building and validation, the h2 settings, the
//! stream adapter, the client and server halves — generic over the transport, so it is tested
//! without TLS. Identity, TLS and policy are the callers' business.
//!
//! On the wire: `CONNECT` with `:authority` = the destination pod's `ip:port`; headers
//! `baggage`, `forwarded: for="ip:port"[;host=<service host>]`, `traceparent` (see
//! [`headers`]); answer 200 then raw bytes both ways, 400 for a malformed request, 401 when
//! policy denies, 503 when the app is unreachable.

mod client;
pub mod headers;
pub mod pool;
mod server;
mod stream;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use client::HboneClient;
pub use headers::{Baggage, Forwarded, TraceParent};
pub use server::{IncomingConnect, serve};
pub use stream::{H2Recv, H2Send, H2Stream};

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
    /// Reaching the peer failed before HTTP/2 carried a stream (certificate, TCP connect, TLS
    /// handshake, HTTP/2 preface).
    #[error("{step}: {source}")]
    Transport {
        /// Which step failed.
        failure: TransportFailure,
        /// What was being done, e.g. "connecting to 10.0.0.2:15008".
        step: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// The step of reaching a peer that failed; each has a metric reason
/// (`marrow_hbone_handshake_failures_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// No certificate for the source identity.
    Certificate,
    /// The TLS configuration could not be built from the certificate.
    TlsConfig,
    /// The TCP connection to the peer's HBONE port failed.
    Connect,
    /// The TCP connection to the peer's HBONE port timed out.
    ConnectTimeout,
    /// The TLS handshake failed (protocol, chain, I/O).
    Tls,
    /// The peer's certificate is not the identity expected.
    Identity,
    /// The TLS or HTTP/2 handshake did not finish in time.
    HandshakeTimeout,
}

impl TransportFailure {
    /// The metric reason: `certificate`, `connect`, `timeout`, `tls` or `identity`.
    pub fn reason(self) -> &'static str {
        match self {
            TransportFailure::Certificate | TransportFailure::TlsConfig => "certificate",
            TransportFailure::Connect => "connect",
            TransportFailure::ConnectTimeout | TransportFailure::HandshakeTimeout => "timeout",
            TransportFailure::Tls => "tls",
            TransportFailure::Identity => "identity",
        }
    }
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

/// An outbound CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The destination pod's address (`:authority`).
    pub authority: SocketAddr,
    /// The original client, and the Service it addressed (`forwarded`).
    pub forwarded: Forwarded,
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
            .header("forwarded", self.forwarded.encode())
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
    /// `forwarded`, parsed (the first one; each parameter when well-formed).
    pub forwarded: Forwarded,
    /// `baggage`, parsed (every such header, in order).
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
    let baggage = req
        .headers()
        .get_all("baggage")
        .iter()
        .filter_map(|v| v.to_str().ok());
    Ok(ConnectTarget {
        authority: target,
        forwarded: header("forwarded")
            .map(Forwarded::parse)
            .unwrap_or_default(),
        baggage: Baggage::parse(baggage),
        traceparent: header("traceparent").and_then(TraceParent::parse),
    })
}
