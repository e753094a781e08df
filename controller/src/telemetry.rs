//! What the controller tells its operators besides its log: Gateways refused and why, objects
//! applied, objects it found and would not take over, failed API calls, status writes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of `marrow_controller_gateways_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`crate::GatewayError::reason`]: a fixed set.
    pub reason: &'static str,
}

/// Labels of the per-object counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `ServiceAccount`, `Deployment`, `Service` or `Gateway` (status).
    pub kind: &'static str,
}

/// The controller's counters.
#[derive(Debug, Default)]
pub struct ControllerTelemetry {
    /// `marrow_controller_gateways_refused_total{reason}`.
    pub refused: Family<ReasonLabels, Counter>,
    /// `marrow_controller_objects_applied_total{kind}`: server-side applies sent.
    pub applied: Family<KindLabels, Counter>,
    /// `marrow_controller_objects_not_managed_total{kind}`: an object of a waypoint's name
    /// that exists without `gateway.istio.io/managed`, left alone.
    pub not_managed: Family<KindLabels, Counter>,
    /// `marrow_controller_api_errors_total{kind}`: applies and status writes that failed.
    pub api_errors: Family<KindLabels, Counter>,
    /// `marrow_controller_objects_deleted_total{kind}`: waypoint bindings deleted after their
    /// Gateway.
    pub deleted: Family<KindLabels, Counter>,
    /// `marrow_controller_status_writes_total`.
    pub status_writes: Counter,
}

impl ControllerTelemetry {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "marrow_controller_gateways_refused",
            "Waypoint Gateways not reconciled because they are malformed, by reason",
            self.refused.clone(),
        );
        registry.register(
            "marrow_controller_objects_applied",
            "Server-side applies of waypoint objects, by kind",
            self.applied.clone(),
        );
        registry.register(
            "marrow_controller_objects_not_managed",
            "Existing objects without gateway.istio.io/managed left alone, by kind",
            self.not_managed.clone(),
        );
        registry.register(
            "marrow_controller_api_errors",
            "API calls of the controller that failed, by kind",
            self.api_errors.clone(),
        );
        registry.register(
            "marrow_controller_objects_deleted",
            "Waypoint ClusterRoleBindings deleted after their Gateway, by kind",
            self.deleted.clone(),
        );
        registry.register(
            "marrow_controller_status_writes",
            "Gateway statuses written",
            self.status_writes.clone(),
        );
    }

    /// How many Gateways were refused for `reason`.
    pub fn refused_count(&self, reason: &'static str) -> u64 {
        self.refused.get_or_create(&ReasonLabels { reason }).get()
    }

    /// How many applies of `kind` were sent.
    pub fn applied_count(&self, kind: &'static str) -> u64 {
        self.applied.get_or_create(&KindLabels { kind }).get()
    }

    /// How many `kind` objects were deleted.
    pub fn deleted_count(&self, kind: &'static str) -> u64 {
        self.deleted.get_or_create(&KindLabels { kind }).get()
    }

    /// How many existing `kind` objects were left alone.
    pub fn not_managed_count(&self, kind: &'static str) -> u64 {
        self.not_managed.get_or_create(&KindLabels { kind }).get()
    }
}
