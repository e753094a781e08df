//! The resilience metric families, defined once here so every program registers the same
//! names and labels: `marrow_outlier_ejections_total{destination_service, reason}` and
//! `marrow_endpoint_ejected{destination_service, endpoint}` (1 while ejected, 0 after). The
//! `endpoint` label is an address, against the telemetry rule of bounded labels: it is bounded
//! by the endpoints ever ejected, which an operator needs to see by name.

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::EjectionReason;

/// Labels of `marrow_outlier_ejections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    /// The Service host.
    pub destination_service: String,
    /// `consecutive_5xx` or `consecutive_gateway_error`.
    pub reason: &'static str,
}

/// Labels of `marrow_endpoint_ejected`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectedLabels {
    /// The Service host.
    pub destination_service: String,
    /// The endpoint, `ip:port`.
    pub endpoint: String,
}

/// The two families (cheap to clone: clones share the series).
#[derive(Clone, Debug, Default)]
pub struct ResilienceMetrics {
    /// `marrow_outlier_ejections_total`.
    pub ejections: Family<EjectionLabels, Counter>,
    /// `marrow_endpoint_ejected`.
    pub ejected: Family<EjectedLabels, Gauge>,
}

impl ResilienceMetrics {
    /// Registers the families on `registry` (no prefix: the names are marrow's own).
    pub fn register(&self, registry: &mut Registry) {
        let metrics = self;
        registry.register(
            "marrow_outlier_ejections",
            "Endpoints ejected by outlier detection, by destination service and reason",
            metrics.ejections.clone(),
        );
        registry.register(
            "marrow_endpoint_ejected",
            "1 while an endpoint is ejected by outlier detection, 0 once it is back",
            metrics.ejected.clone(),
        );
    }

    /// Counts an ejection and raises the endpoint's gauge.
    pub fn ejected(&self, service: &str, endpoint: SocketAddr, reason: EjectionReason) {
        self.ejections
            .get_or_create(&EjectionLabels {
                destination_service: service.to_owned(),
                reason: reason.as_str(),
            })
            .inc();
        self.ejected
            .get_or_create(&EjectedLabels {
                destination_service: service.to_owned(),
                endpoint: endpoint.to_string(),
            })
            .set(1);
    }

    /// Lowers the endpoint's gauge.
    pub fn returned(&self, service: &str, endpoint: SocketAddr) {
        self.ejected
            .get_or_create(&EjectedLabels {
                destination_service: service.to_owned(),
                endpoint: endpoint.to_string(),
            })
            .set(0);
    }
}
