//! Prometheus metrics with Istio's TCP metric names and labels, so existing dashboards work, and
//! the proxy's own health metrics (`marrow_*`). Metrics only count: the live connection table
//! belongs to the data path (`proxy::connections`), which is handed the gauge it keeps.
//!
//! Invariants: label values are bounded — workloads, namespaces, identities, the cluster and
//! fixed words, never addresses, ports or connection ids. The `istio_tcp_*` series carry
//! Istio's whole standard TCP label set ([`ConnectionLabels`]), each value derived as Istio
//! derives it ([`PeerLabels::of`]); what the proxy does not know is `unknown`.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use marrow_mesh::policy::{Decision, Verdict};
use marrow_mesh::telemetry::{ClusterId, ConnectionLabels, Reporter};

/// Labels of `marrow_connections_open`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpenLabels {
    /// `source` (outbound) or `destination` (inbound).
    pub reporter: Reporter,
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

/// Labels of `marrow_certificate_fetch_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateFailureLabels {
    /// A fixed reason: `ca_unavailable`, `ca_refused_answer`, `timeout`, `local`.
    pub reason: &'static str,
}

/// Labels of `marrow_connections_refused_total`: connections refused before any policy or
/// upstream was consulted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `source` (outbound) or `destination` (inbound).
    pub reporter: Reporter,
    /// A fixed reason: `self_call` (addressed to one of the proxy's own in-pod ports).
    pub reason: &'static str,
}

/// Why the destination's proxy refused a connection by policy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DenialReason {
    /// A DENY AuthorizationPolicy matched.
    DenyPolicy,
    /// ALLOW policies select the workload and none matched.
    NoAllowMatch,
    /// Plaintext to a port that PeerAuthentication makes STRICT.
    MtlsRequired,
    /// A workload behind a waypoint, reached by another client than the waypoint.
    NotFromWaypoint,
}

impl DenialReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::DenyPolicy => "deny_policy",
            DenialReason::NoAllowMatch => "no_allow_match",
            DenialReason::MtlsRequired => "mtls_required",
            DenialReason::NotFromWaypoint => "not_from_waypoint",
        }
    }

    /// The reason of an AuthorizationPolicy decision; `None` when it allows.
    pub fn of(decision: &Decision) -> Option<Self> {
        match (decision.verdict, &decision.policy) {
            (Verdict::Allow, _) => None,
            (Verdict::Deny, Some(_)) => Some(DenialReason::DenyPolicy),
            (Verdict::Deny, None) => Some(DenialReason::NoAllowMatch),
        }
    }
}

impl EncodeLabelValue for DenialReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `marrow_policy_denials_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// Why.
    pub reason: DenialReason,
}

/// Labels of `marrow_config_unsupported`: a Kubernetes kind and a fixed reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnsupportedLabels {
    /// `AuthorizationPolicy`, `PeerAuthentication` or `RequestAuthentication`.
    pub kind: &'static str,
    /// Why it is not enforced as written, e.g. `custom_action` (see `policy::report`).
    pub reason: &'static str,
}

/// Labels of `marrow_retries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// `source`: the client's node proxy retried.
    pub reporter: Reporter,
    /// The Service host the connection went to.
    pub destination_service: String,
    /// What was retried: `connect-failure` (Istio's `retryOn` word).
    pub retry_on: &'static str,
}

/// The proxy's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The cluster the state's workloads are in (`source_cluster`, `destination_cluster`).
    pub cluster_id: ClusterId,
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
    /// `marrow_certificate_issued_timestamp_seconds`: not-before of each local identity's
    /// current certificate (its age is `time() -` this).
    pub certificate_issued: Family<IdentityLabels, Gauge>,
    /// `marrow_certificate_renewal_failures`: fetches of each identity failed in a row since
    /// its last success (0 when healthy).
    pub certificate_renewal_failures: Family<IdentityLabels, Gauge>,
    /// `marrow_certificate_fetch_failures_total`: failed certificate fetches, by reason.
    pub certificate_failures: Family<CertificateFailureLabels, Counter>,
    /// `marrow_policy_denials_total`: connections refused by policy, by reason.
    pub policy_denials: Family<DenialLabels, Counter>,
    /// `marrow_connections_refused_total`.
    pub refused: Family<RefusalLabels, Counter>,
    /// `marrow_config_unsupported`: objects of the state in force not enforced as written.
    pub config_unsupported: Family<UnsupportedLabels, Gauge>,
    /// `marrow_connections_open`: connections open now, by reporter. The live connection
    /// table keeps it (`proxy::connections::ConnectionTable::new`).
    pub connections_open: Family<OpenLabels, Gauge>,
    /// `marrow_retries_total`: connections to a Service retried on another endpoint after
    /// a failed connect.
    pub retries: Family<RetryLabels, Counter>,
    /// `marrow_outlier_ejections_total` and `marrow_endpoint_ejected` (the families every
    /// program shares).
    pub resilience: marrow_mesh::resilience::ResilienceMetrics,
    /// `marrow_config_refused`: route objects and DestinationRules refused, by kind.
    pub config_refused: marrow_mesh::traffic::RefusalMetrics,
}

impl Metrics {
    /// Metrics whose workload labels name `cluster_id`.
    pub fn new(cluster_id: &str) -> Self {
        Self {
            cluster_id: ClusterId::new(cluster_id),
            ..Self::default()
        }
    }

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

    /// Counts a connection refused before policy (`reason` is fixed, e.g. `self_call`).
    pub fn connection_refused(&self, reporter: Reporter, reason: &'static str) {
        self.refused
            .get_or_create(&RefusalLabels { reporter, reason })
            .inc();
    }

    /// Counts a connection refused by policy.
    pub fn policy_denied(&self, reason: DenialReason) {
        self.policy_denials
            .get_or_create(&DenialLabels { reason })
            .inc();
    }

    /// Sets `marrow_config_unsupported` from the policies in force: every (kind, reason)
    /// pair is exported, 0 when none, so the series stay put as the state changes.
    pub fn record_unsupported(&self, policies: &marrow_mesh::policy::PolicySet) {
        let counts = policies.unsupported_counts();
        for &(kind, reason) in marrow_mesh::policy::UnsupportedReason::BY_KIND {
            let labels = UnsupportedLabels {
                kind: kind.as_str(),
                reason: reason.as_str(),
            };
            let count = counts.get(&(kind, reason)).copied().unwrap_or(0);
            self.config_unsupported.get_or_create(&labels).set(count);
        }
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
            "marrow_connections_refused",
            "Connections refused before policy: addressed to the proxy's own ports (self_call)",
            self.refused.clone(),
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
            "marrow_certificate_issued_timestamp_seconds",
            "Start of validity (Unix time) of the current certificate of each identity of a \
             local pod",
            self.certificate_issued.clone(),
        );
        registry.register(
            "marrow_certificate_renewal_failures",
            "Certificate fetches of each identity failed in a row since its last success",
            self.certificate_renewal_failures.clone(),
        );
        registry.register(
            "marrow_certificate_fetch_failures",
            "Failed certificate fetches and renewals, by reason \
             (ca_unavailable, ca_refused_answer, timeout, local)",
            self.certificate_failures.clone(),
        );
        registry.register(
            "marrow_config_generation",
            "Generation of the workload state in force (increments on each applied update)",
            self.config_generation.clone(),
        );
        registry.register(
            "marrow_config_unsupported",
            "Istio security objects in the state in force that marrow does not enforce as \
             written, by kind and reason (handled fail-safe; listed in /config_dump)",
            self.config_unsupported.clone(),
        );
        registry.register(
            "marrow_policy_denials",
            "Connections refused by policy at the destination, by reason \
             (deny_policy, no_allow_match, mtls_required, not_from_waypoint)",
            self.policy_denials.clone(),
        );
        registry.register(
            "marrow_connections_open",
            "Connections open now, by reporter (source: outbound, destination: inbound)",
            self.connections_open.clone(),
        );
        registry.register(
            "marrow_retries",
            "Connections to a Service retried once on another ready endpoint after a failed \
             connect, by destination service",
            self.retries.clone(),
        );
        self.resilience.register(registry);
        self.config_refused.register(registry);
    }
}

#[cfg(test)]
mod tests;
