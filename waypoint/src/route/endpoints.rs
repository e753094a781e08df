//! The seam for per-endpoint policy: which endpoint a try goes to ([`Upstreams::choose`]) and
//! what became of it ([`Upstreams::report`]). Today least-request over the candidates; the
//! DestinationRule's load balancer, connection-pool limits and outlier detection plug in here.

use std::net::SocketAddr;

use http::HeaderMap;
use marrow_mesh::traffic::TrafficPolicy;

use super::Target;
use super::retry::Attempt;
use crate::upstream::Upstreams;

/// What a load balancer may hash on.
#[derive(Clone, Copy, Debug)]
pub struct ChoiceRequest<'a> {
    /// The request headers (as forwarded).
    pub headers: &'a HeaderMap,
    /// The path with its query (as forwarded).
    pub path_and_query: &'a str,
    /// The original client.
    pub client: SocketAddr,
}

impl Upstreams {
    /// The endpoint of `target` the next try goes to; `None` when it has none. A retry avoids
    /// the endpoints already `tried` while others remain: Istio sets Envoy's `previous_hosts`
    /// retry host predicate on every route, up to 5 re-picks (istio
    /// `pilot/pkg/networking/core/route/retry/retry.go`, `HostSelectionRetryMaxAttempts`).
    pub fn choose(
        &self,
        target: &Target,
        policy: Option<&TrafficPolicy>,
        request: &ChoiceRequest<'_>,
        tried: &[SocketAddr],
    ) -> Option<SocketAddr> {
        // TODO(resilience): `policy.load_balancer` (round robin, random, consistent hash on
        // `request`), connection-pool limits (503 UO) and ejected endpoints go here. With a
        // consistent hash Istio drops `previous_hosts` (retry.go, DefaultConsistentHashPolicy):
        // a retry goes to the same hashed endpoint, so `tried` is ignored then.
        let _ = (policy, request);
        let endpoints = target.endpoints();
        if tried.is_empty() || endpoints.iter().all(|e| tried.contains(e)) {
            return self.balancer.pick(endpoints);
        }
        let fresh: Vec<SocketAddr> = endpoints
            .iter()
            .copied()
            .filter(|e| !tried.contains(e))
            .collect();
        self.balancer.pick(&fresh)
    }

    /// What became of a try at `endpoint` (for outlier detection).
    pub fn report(&self, endpoint: SocketAddr, attempt: &Attempt) {
        // TODO(resilience): consecutive 5xx / gateway errors eject the endpoint.
        tracing::trace!(%endpoint, outcome = %attempt.label(), "try ended");
    }
}
