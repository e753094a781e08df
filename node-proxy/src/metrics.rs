//! Prometheus metrics with Istio's TCP metric names and labels, so existing dashboards work.
//!
//! Label values are bounded: workloads and namespaces, never addresses or connection ids.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which end of the connection the proxy stands at (Istio's `reporter`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The proxy of the client pod (outbound).
    Source,
    /// The proxy of the server pod (inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let value = match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

/// Labels of `marrow_hbone_*` series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HboneLabels {
    /// `outbound` (this proxy dialled) or `inbound` (it accepted).
    pub direction: &'static str,
}

/// Labels of `marrow_hbone_handshake_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HboneFailureLabels {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// A fixed reason: `connect`, `timeout`, `tls`, `identity`, `certificate`.
    pub reason: &'static str,
}

/// Labels of per-identity certificate series (bounded by the identities of local pods).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The SPIFFE ID.
    pub identity: String,
}

/// Labels of the `istio_tcp_*` series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
    /// Source workload name, or `unknown`.
    pub source_workload: String,
    /// Source workload namespace, or `unknown`.
    pub source_workload_namespace: String,
    /// Destination workload name, or `unknown`.
    pub destination_workload: String,
    /// Destination workload namespace, or `unknown`.
    pub destination_workload_namespace: String,
    /// Source SPIFFE ID (from the peer's certificate on HBONE), or `unknown`.
    pub source_principal: String,
    /// Destination SPIFFE ID, or `unknown`.
    pub destination_principal: String,
    /// `mutual_tls` for HBONE, `none` for plaintext.
    pub connection_security_policy: String,
    /// Istio response flags; `-` when the connection succeeded.
    pub response_flags: String,
}

/// The proxy's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `istio_tcp_connections_opened_total`.
    pub opened: Family<ConnectionLabels, Counter>,
    /// `istio_tcp_connections_closed_total`.
    pub closed: Family<ConnectionLabels, Counter>,
    /// `istio_tcp_sent_bytes_total`: bytes sent towards the server.
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    /// `istio_tcp_received_bytes_total`: bytes received from the server.
    pub received_bytes: Family<ConnectionLabels, Counter>,
    /// `marrow_enrolled_pods`.
    pub enrolled_pods: Gauge,
    /// `marrow_config_generation`: generation of the state in force.
    pub config_generation: Gauge,
    /// `marrow_hbone_connections_total`: mTLS + HTTP/2 connections established.
    pub hbone_connections: Family<HboneLabels, Counter>,
    /// `marrow_hbone_handshake_failures_total`.
    pub hbone_failures: Family<HboneFailureLabels, Counter>,
    /// `marrow_certificate_expiry_timestamp_seconds`: not-after of each local identity's
    /// current certificate.
    pub certificate_expiry: Family<IdentityLabels, Gauge>,
}

impl ConnectionLabels {
    /// Labels with every workload field `unknown`, plaintext, no failure.
    pub fn unknown(reporter: Reporter) -> Self {
        let unknown = || "unknown".to_owned();
        Self {
            reporter,
            source_workload: unknown(),
            source_workload_namespace: unknown(),
            destination_workload: unknown(),
            destination_workload_namespace: unknown(),
            source_principal: unknown(),
            destination_principal: unknown(),
            connection_security_policy: "none".into(),
            response_flags: "-".into(),
        }
    }
}

impl Metrics {
    /// Counts an established HBONE connection.
    pub fn hbone_established(&self, direction: &'static str) {
        self.hbone_connections
            .get_or_create(&HboneLabels { direction })
            .inc();
    }

    /// Counts an HBONE connection that failed before carrying a stream.
    pub fn hbone_failed(&self, direction: &'static str, reason: &'static str) {
        self.hbone_failures
            .get_or_create(&HboneFailureLabels { direction, reason })
            .inc();
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_tcp_connections_opened",
            "Total number of TCP connections opened",
            self.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Total number of TCP connections closed",
            self.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Total bytes sent during response in case of a TCP connection",
            self.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Total bytes received during request in case of a TCP connection",
            self.received_bytes.clone(),
        );
        registry.register(
            "marrow_enrolled_pods",
            "Pods currently enrolled with this node proxy",
            self.enrolled_pods.clone(),
        );
        registry.register(
            "marrow_hbone_connections",
            "HBONE (mTLS + HTTP/2) connections established, by direction",
            self.hbone_connections.clone(),
        );
        registry.register(
            "marrow_hbone_handshake_failures",
            "HBONE connections that failed before carrying a stream, by direction and reason",
            self.hbone_failures.clone(),
        );
        registry.register(
            "marrow_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the current certificate of each identity of a local pod",
            self.certificate_expiry.clone(),
        );
        registry.register(
            "marrow_config_generation",
            "Generation of the workload state in force (increments on each applied update)",
            self.config_generation.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_istio_names_and_labels() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let labels = ConnectionLabels {
            reporter: Reporter::Destination,
            source_workload: "unknown".into(),
            source_workload_namespace: "unknown".into(),
            destination_workload: "web".into(),
            destination_workload_namespace: "shop".into(),
            source_principal: "unknown".into(),
            destination_principal: "spiffe://cluster.local/ns/shop/sa/web".into(),
            connection_security_policy: "none".into(),
            response_flags: "-".into(),
        };
        metrics.opened.get_or_create(&labels).inc();
        metrics.closed.get_or_create(&labels).inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("istio_tcp_connections_opened_total{reporter=\"destination\""),
            "{text}"
        );
        assert!(text.contains("destination_workload=\"web\""), "{text}");
        assert!(
            text.contains("# TYPE istio_tcp_connections_closed counter"),
            "{text}"
        );
    }
}
