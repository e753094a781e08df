//! One [`RequestOutcome`] per request (or per L4 tunnel), filled as the request goes and handed
//! to [`crate::record::record`] once at its end, which gives it to the waypoint's
//! [`crate::telemetry`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_mesh::identity::{SpiffeId, TrustDomain};
use marrow_mesh::state::services::ServiceTarget;
use marrow_mesh::telemetry::{RequestProtocol, ResponseFlag};
use marrow_mesh::trace::ActiveSpan;

/// Everything known of one request when it ends.
#[derive(Debug)]
pub struct RequestOutcome {
    /// When the request (or connection) started.
    pub start: Instant,
    /// The original client's identity.
    pub source: Option<SpiffeId>,
    /// The original client's address.
    pub client_addr: Option<SocketAddr>,
    /// The destination the client dialled.
    pub destination: SocketAddr,
    /// The Service addressed, if one was.
    pub service: Option<Arc<ServiceTarget>>,
    /// The trust domain, for the endpoint's identity.
    pub trust_domain: TrustDomain,
    /// Request method (empty at L4).
    pub method: String,
    /// The normalized path (empty at L4).
    pub path: String,
    /// `:authority` / `Host`.
    pub authority: String,
    /// `HTTP/1.1`, `HTTP/2`, `tcp`.
    pub protocol: &'static str,
    /// `http` or `grpc`, for the metrics' `request_protocol`.
    pub request_protocol: RequestProtocol,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
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
    /// How long it took, set when recorded if still zero.
    pub duration: Duration,
    /// The request's span, finished when the outcome is recorded.
    pub span: Option<ActiveSpan>,
}

impl RequestOutcome {
    /// An outcome starting now.
    pub fn start(
        source: Option<SpiffeId>,
        client_addr: Option<SocketAddr>,
        destination: SocketAddr,
        service: Option<Arc<ServiceTarget>>,
        trust_domain: TrustDomain,
    ) -> Self {
        Self {
            start: Instant::now(),
            source,
            client_addr,
            destination,
            service,
            trust_domain,
            method: String::new(),
            path: String::new(),
            authority: String::new(),
            protocol: "tcp",
            request_protocol: RequestProtocol::Http,
            user_agent: None,
            request_id: None,
            status: 0,
            grpc_status: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
            flag: None,
            duration: Duration::ZERO,
            span: None,
        }
    }

    /// Envoy's name of the upstream cluster: `outbound|<port>||<service host>` for a Service,
    /// none for a workload addressed directly.
    pub fn upstream_cluster(&self) -> Option<String> {
        self.service
            .as_ref()
            .map(|s| format!("outbound|{}||{}", s.vip.port(), s.host()))
    }
}
