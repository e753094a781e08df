//! What the CA tells its operators besides its log: counters of issued and refused requests
//! (`--metrics-addr`, Prometheus), the signing CA's expiry, and readiness (`--readiness-addr`:
//! ready once a CA is loaded and signing).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use marrow_mesh::http::Readiness;

/// Labels of `marrow_ca_requests_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// [`super::CaError::reason`]: a fixed set.
    pub reason: &'static str,
}

/// The CA's counters, gauges and readiness, shared by the service and the HTTP endpoints.
#[derive(Debug, Default)]
pub struct CaTelemetry {
    /// `marrow_ca_certificates_issued_total`.
    pub issued: Counter,
    /// `marrow_ca_requests_refused_total{reason}`.
    pub refused: Family<RefusalLabels, Counter>,
    /// `marrow_ca_expiry_timestamp_seconds`: notAfter of the signing CA certificate.
    pub ca_expiry: Gauge,
    /// `marrow_ca_reloads_total`: CA key pairs loaded from changed files.
    pub reloads: Counter,
    /// Ready once a CA is loaded, not ready once stopping.
    pub readiness: Arc<Readiness>,
}

impl CaTelemetry {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "marrow_ca_certificates_issued",
            "Workload certificates signed",
            self.issued.clone(),
        );
        registry.register(
            "marrow_ca_requests_refused",
            "CreateCertificate calls refused, by reason (token, authorization, CSR, API server)",
            self.refused.clone(),
        );
        registry.register(
            "marrow_ca_expiry_timestamp_seconds",
            "Expiry (Unix time) of the CA certificate that signs now",
            self.ca_expiry.clone(),
        );
        registry.register(
            "marrow_ca_reloads",
            "CA key pairs loaded from changed files",
            self.reloads.clone(),
        );
    }

    /// Records a CA loaded (at start or from changed files) that expires at `not_after`.
    pub(super) fn loaded(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.ca_expiry.set(i64::try_from(secs).unwrap_or(i64::MAX));
        self.readiness.set(true);
    }

    /// Records a refused call.
    pub(super) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }
}
