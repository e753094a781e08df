//! The L7 access log: one `tracing` event per finished request, target [`ACCESS_LOG_TARGET`]
//! (the node proxy's connection lines use the same target, so `RUST_LOG=access=off` silences
//! both), message `request`, its fields in the order of Istio's default Envoy text format
//! (`[%START_TIME%] "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS%
//! … %BYTES_RECEIVED% %BYTES_SENT% %DURATION% … "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%"
//! "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% … %DOWNSTREAM_REMOTE_ADDRESS%`, from
//! istio/istio `pilot/pkg/model/telemetry_logging.go`), then the trace id and both identities.
//!
//! The program's log layer decides the encoding: `field=value` text, or with `--log-json` one
//! JSON object per line. Text fields are quoted and escaped by the layer, so a hostile path or
//! user agent cannot forge a second line. A value the proxy does not have is `-`, as Envoy's.

use std::net::SocketAddr;
use std::time::Duration;

use super::ResponseFlag;

/// The `tracing` target of access-log lines.
pub const ACCESS_LOG_TARGET: &str = "access";

/// Envoy's word for a value it does not have.
const NONE: &str = "-";

/// One finished request, as its access-log line reports it. Borrowed: built at the end of a
/// request from what the proxy already holds, logged, dropped.
#[derive(Clone, Debug, Default)]
pub struct RequestLog<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path` as received (before normalization: the log shows what the client sent).
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// The status sent to the client; none when the request ended before one was sent.
    pub status: Option<http::StatusCode>,
    /// Why the request did not end normally; none when it did.
    pub response_flags: Option<ResponseFlag>,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// From the first request byte to the last response byte.
    pub duration: Duration,
    /// `user-agent`.
    pub user_agent: Option<&'a str>,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// `:authority` (or `host`).
    pub authority: &'a str,
    /// The endpoint the request was sent to.
    pub upstream: Option<SocketAddr>,
    /// The upstream cluster, Envoy-style (`outbound|80||web.shop.svc.cluster.local`).
    pub upstream_cluster: Option<&'a str>,
    /// The client's address (the original client, from the tunnel's `forwarded`).
    pub downstream: Option<SocketAddr>,
    /// The trace the request belongs to (32 hex digits), when tracing is on.
    pub trace_id: Option<&'a str>,
    /// The client's SPIFFE ID, proved by mutual TLS.
    pub src_identity: Option<&'a str>,
    /// The identity the request was sent to upstream.
    pub dst_identity: Option<&'a str>,
}

impl RequestLog<'_> {
    /// Writes the line (at `info`, target [`ACCESS_LOG_TARGET`]).
    pub fn emit(&self) {
        let status = self.status.as_ref().map_or("0", http::StatusCode::as_str);
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            method = self.method,
            path = self.path,
            protocol = self.protocol,
            response_code = status,
            response_flags = ResponseFlag::label(self.response_flags),
            bytes_received = self.bytes_received,
            bytes_sent = self.bytes_sent,
            duration_ms = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            user_agent = self.user_agent.unwrap_or(NONE),
            request_id = self.request_id.unwrap_or(NONE),
            authority = self.authority,
            upstream_host = %OrNone(self.upstream),
            upstream_cluster = self.upstream_cluster.unwrap_or(NONE),
            downstream_remote_address = %OrNone(self.downstream),
            trace_id = self.trace_id.unwrap_or(NONE),
            src_identity = self.src_identity.unwrap_or(NONE),
            dst_identity = self.dst_identity.unwrap_or(NONE),
            "request"
        );
    }
}

/// An address, or `-`.
struct OrNone(Option<SocketAddr>);

impl std::fmt::Display for OrNone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str(NONE),
        }
    }
}
