//! Istio's `response_flags`: why a connection (or, at the waypoint, a request) did not end
//! normally. One enum for every reporter, so no flag is written as a string by hand.
//!
//! Two vocabularies meet here, each where its upstream uses it: Envoy's short flags
//! (`source/common/stream_info/utility.h`, `ResponseFlagUtils`: `UF`, `UO`, `URX`, `NR`, `DC`,
//! `UC`, `UT`, …), which the destination proxy and, later, the waypoint report; and ztunnel's
//! (`ResponseFlags` and `extract_failure_reason` in src/proxy/metrics.rs: `DENY`, `CONNECT`,
//! `TLS_FAILURE`, …), which the source reports — ztunnel does not use Envoy's `UF` there: a
//! tunnel the peer refused (401, 503) is `CONNECT`. Only the flags marrow produces now or the
//! waypoint will are listed.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// A connection's response flag; a connection that ended normally has none (`-`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlag {
    /// `DENY`: an AuthorizationPolicy (or STRICT PeerAuthentication) refused the connection,
    /// when it was accepted or later (ztunnel's `AuthorizationPolicyDenied`).
    Deny,
    /// `UF`: the destination side could not connect to the app (Envoy's upstream connection
    /// failure).
    UpstreamFailure,
    /// `CONNECT`: the peer refused the tunnel (401, 503), or the TCP connection, its TLS
    /// handshake or the request failed (ztunnel's `ConnectionFailure`).
    Connect,
    /// `NETWORK_POLICY`: connecting to the peer's HBONE port timed out (a NetworkPolicy
    /// dropping 15008, most often).
    NetworkPolicy,
    /// `TLS_FAILURE`: the TLS configuration could not be built.
    TlsFailure,
    /// `H2_HANDSHAKE_FAILURE`: the HTTP/2 handshake, or the stream, failed.
    Http2HandshakeFailure,
    /// `IDENTITY_ERROR`: no certificate for the source, or no identity for the destination.
    IdentityError,
    /// `UO` (waypoint): a circuit breaker's limit refused the request (Envoy's upstream
    /// overflow).
    UpstreamOverflow,
    /// `URX` (waypoint): the retry limit was reached without a good answer.
    UpstreamRetryLimitExceeded,
    /// `NR` (waypoint): no route matched the request.
    NoRoute,
    /// `UH` (waypoint): the route's Service had no healthy endpoint.
    NoHealthyUpstream,
    /// `DC` (waypoint): the client closed the connection first.
    DownstreamTermination,
    /// `UC` (waypoint): the upstream closed the connection first.
    UpstreamTermination,
    /// `UT` (waypoint): the route's timeout expired before the upstream answered.
    UpstreamTimeout,
    /// `DI` (waypoint): a fault injection delayed the request.
    FaultDelay,
    /// `FI` (waypoint): a fault injection aborted the request.
    FaultAbort,
    /// `RL` (waypoint): a rate limit refused the request.
    RateLimited,
}

impl ResponseFlag {
    /// The label value of no flag.
    pub const NONE: &'static str = "-";

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::Deny => "DENY",
            ResponseFlag::UpstreamFailure => "UF",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::NetworkPolicy => "NETWORK_POLICY",
            ResponseFlag::TlsFailure => "TLS_FAILURE",
            ResponseFlag::Http2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
            ResponseFlag::IdentityError => "IDENTITY_ERROR",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::NoRoute => "NR",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::DownstreamTermination => "DC",
            ResponseFlag::UpstreamTermination => "UC",
            ResponseFlag::UpstreamTimeout => "UT",
            ResponseFlag::FaultDelay => "DI",
            ResponseFlag::FaultAbort => "FI",
            ResponseFlag::RateLimited => "RL",
        }
    }

    /// The label value of `flag`: its text, or `-` for none.
    pub fn label(flag: Option<ResponseFlag>) -> &'static str {
        flag.map_or(Self::NONE, Self::as_str)
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for ResponseFlag {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}
