//! The routing counters: `marrow_retries_total{destination_service, reason}` (each retry, by
//! what failed before it) and `marrow_upstream_attempts_total{destination_service, outcome}`
//! (each try of a routed request, by its status or failure). `istio_requests_total` stays one
//! per client request, with the final answer's code and flag (`URX` when retries ran out), as
//! Istio's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// `destination_service` and one more label.
type Labels = [(&'static str, String); 2];

/// The routing counters.
#[derive(Clone, Debug, Default)]
pub struct RouteMetrics {
    retries: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    mirrors: Family<Labels, Counter>,
}

impl RouteMetrics {
    /// Registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "marrow_retries",
            "Retries of requests at the waypoint, by destination service and what failed before",
            metrics.retries.clone(),
        );
        registry.register(
            "marrow_upstream_attempts",
            "Tries of routed requests at the waypoint, by destination service and outcome (status or failure)",
            metrics.attempts.clone(),
        );
        registry.register(
            "marrow_mirrored_requests",
            "Mirrored copies of requests, by mirror service and result (sent, skipped)",
            metrics.mirrors.clone(),
        );
        metrics
    }

    /// One retry of a request to `service` after `reason`.
    pub fn retry(&self, service: &str, reason: String) {
        self.retries
            .get_or_create(&[
                ("destination_service", service.to_owned()),
                ("reason", reason),
            ])
            .inc();
    }

    /// One try of a request to `service` that ended as `outcome`.
    pub fn attempt(&self, service: &str, outcome: String) {
        self.attempts
            .get_or_create(&[
                ("destination_service", service.to_owned()),
                ("outcome", outcome),
            ])
            .inc();
    }

    /// One mirror to `service`: `sent`, or `skipped` (body not replayable, too many in flight).
    pub fn mirror(&self, service: &str, result: &'static str) {
        self.mirrors
            .get_or_create(&[
                ("destination_service", service.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }
}
