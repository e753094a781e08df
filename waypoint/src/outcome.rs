//! Telemetry's seam: one [`RequestOutcome`] per request (or per L4 connection), filled as the
//! request goes and handed to [`record`] once at its end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marrow_mesh::telemetry::ResponseFlag;

/// Everything known of one request when it ends.
#[derive(Clone, Debug)]
pub struct RequestOutcome {
    /// When the request (or connection) started.
    pub start: Instant,
    /// The original client's identity (`-` without one).
    pub source: String,
    /// The original client's address.
    pub client_addr: Option<SocketAddr>,
    /// The destination the client dialled.
    pub destination: SocketAddr,
    /// The Service host, when a Service was addressed.
    pub service: Option<String>,
    /// Request method (empty at L4).
    pub method: String,
    /// The normalized path (empty at L4).
    pub path: String,
    /// `:authority` / `Host`.
    pub authority: String,
    /// `HTTP/1.1`, `HTTP/2`, `tcp`.
    pub protocol: &'static str,
    /// Response status (0 when none was sent).
    pub status: u16,
    /// `grpc-status` of a gRPC response, from its headers or trailers.
    pub grpc_status: Option<u32>,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// The endpoint chosen.
    pub upstream: Option<SocketAddr>,
    /// Envoy's response flag, when something failed.
    pub flag: Option<ResponseFlag>,
    /// How long it took, set by [`record`] when zero.
    pub duration: Duration,
}

impl RequestOutcome {
    /// An outcome starting now.
    pub fn start(
        source: String,
        client_addr: Option<SocketAddr>,
        destination: SocketAddr,
        service: Option<String>,
    ) -> Self {
        Self {
            start: Instant::now(),
            source,
            client_addr,
            destination,
            service,
            method: String::new(),
            path: String::new(),
            authority: String::new(),
            protocol: "tcp",
            status: 0,
            grpc_status: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
            flag: None,
            duration: Duration::ZERO,
        }
    }
}

/// Records a finished request: for now one access-log line.
// TODO(lead): the request metrics (istio_requests_total, …, reporter waypoint) and the span go
// here, from the same outcome.
pub fn record(mut outcome: RequestOutcome) {
    if outcome.duration.is_zero() {
        outcome.duration = outcome.start.elapsed();
    }
    tracing::info!(
        src = %outcome.source,
        client = ?outcome.client_addr,
        dst = %outcome.destination,
        service = outcome.service.as_deref().unwrap_or("-"),
        method = %outcome.method,
        path = %outcome.path,
        authority = %outcome.authority,
        protocol = outcome.protocol,
        status = outcome.status,
        grpc_status = ?outcome.grpc_status,
        bytes_in = outcome.bytes_in,
        bytes_out = outcome.bytes_out,
        upstream = ?outcome.upstream,
        flags = ResponseFlag::label(outcome.flag),
        duration_ms = outcome.duration.as_millis() as u64,
        "request"
    );
}
