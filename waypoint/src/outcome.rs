//! One [`RequestOutcome`] per request (or per L4 tunnel), filled as the request goes and handed
//! to [`record`] once at its end, which gives it to the waypoint's [`crate::telemetry`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_mesh::identity::{SpiffeId, TrustDomain};
use marrow_mesh::state::services::ServiceTarget;
use marrow_mesh::telemetry::{RequestProtocol, ResponseFlag};
use marrow_mesh::trace::ActiveSpan;

use crate::context::Context;

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
    /// How long it took, set by [`record`] when zero.
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

/// Records a finished request with the waypoint's telemetry.
pub fn record(ctx: &Context, outcome: RequestOutcome) {
    ctx.telemetry.record(&ctx.state.snapshot(), outcome);
}

/// A request's outcome while its answer is being made: dropped before [`Pending::finish`] (the
/// client went away before the response started), it is recorded with `DC`, as Envoy does.
pub struct Pending {
    ctx: Arc<Context>,
    outcome: RequestOutcome,
    armed: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("outcome", &self.outcome)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Watches `outcome`, recorded with `ctx`'s telemetry if dropped unfinished.
    pub fn new(ctx: Arc<Context>, outcome: RequestOutcome) -> Self {
        Self {
            ctx,
            outcome,
            armed: true,
        }
    }

    /// The outcome, for whoever records it next.
    pub fn finish(mut self) -> RequestOutcome {
        self.finish_in_place()
    }
}

impl std::ops::Deref for Pending {
    type Target = RequestOutcome;

    fn deref(&self) -> &RequestOutcome {
        &self.outcome
    }
}

impl std::ops::DerefMut for Pending {
    fn deref_mut(&mut self) -> &mut RequestOutcome {
        &mut self.outcome
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let mut outcome = self.finish_in_place();
            outcome
                .flag
                .get_or_insert(ResponseFlag::DownstreamTermination);
            record(&self.ctx, outcome);
        }
    }
}

impl Pending {
    /// Disarms and takes the outcome; a placeholder that allocates nothing takes its place.
    fn finish_in_place(&mut self) -> RequestOutcome {
        self.armed = false;
        let placeholder = RequestOutcome::start(
            None,
            None,
            self.outcome.destination,
            None,
            self.outcome.trust_domain.clone(),
        );
        std::mem::replace(&mut self.outcome, placeholder)
    }
}
