//! Prometheus metrics with Istio's TCP metric names and labels, so existing dashboards work, and
//! the proxy's own health metrics (`marrow_*`).
//!
//! Invariants: label values are bounded — workloads, namespaces, identities, the cluster and
//! fixed words, never addresses, ports or connection ids. The `istio_tcp_*` series carry
//! Istio's whole standard TCP label set ([`ConnectionLabels`]), each value derived as Istio
//! derives it ([`PeerLabels::of`]); what the proxy does not know is `unknown`.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::identity::SpiffeId;
use crate::policy::{Decision, Verdict};
use crate::state::Workload;

/// Istio's default cluster id (`--cluster-id`): `source_cluster`/`destination_cluster` of the
/// workloads the state knows.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// A label value: a fixed word, or text shared by every clone (cloning never copies the text,
/// so labels built once per connection are cheap to hand around).
#[derive(Clone)]
pub struct LabelValue(Repr);

#[derive(Clone)]
enum Repr {
    Fixed(&'static str),
    Shared(Arc<str>),
}

impl LabelValue {
    /// `unknown`: what Istio reports for a value it cannot derive.
    pub const UNKNOWN: LabelValue = LabelValue::fixed("unknown");

    /// A fixed word (no allocation).
    pub const fn fixed(text: &'static str) -> Self {
        Self(Repr::Fixed(text))
    }

    /// A copy of `text`.
    pub fn new(text: &str) -> Self {
        Self(Repr::Shared(Arc::from(text)))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Fixed(text) => text,
            Repr::Shared(text) => text,
        }
    }
}

impl Default for LabelValue {
    fn default() -> Self {
        Self::UNKNOWN
    }
}

impl From<&'static str> for LabelValue {
    fn from(text: &'static str) -> Self {
        Self::fixed(text)
    }
}

impl From<String> for LabelValue {
    fn from(text: String) -> Self {
        Self(Repr::Shared(Arc::from(text)))
    }
}

impl From<&SpiffeId> for LabelValue {
    fn from(id: &SpiffeId) -> Self {
        Self::new(id.as_str())
    }
}

// Equality and hashing by text: a fixed `unknown` and a shared one are the same series.
impl PartialEq for LabelValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for LabelValue {}

impl Hash for LabelValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Which end of the connection the proxy stands at (Istio's `reporter`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The proxy of the client pod (outbound).
    Source,
    /// The proxy of the server pod (inbound).
    Destination,
}

impl Reporter {
    /// `source` or `destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Istio's labels of one end of a connection (`source_*` or `destination_*`), except the
/// principal, which only mutual TLS proves ([`ConnectionLabels::with_mutual_tls`]).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct PeerLabels {
    /// `*_workload`: the owning workload's name (a ReplicaSet's Deployment, …).
    pub workload: LabelValue,
    /// `*_workload_namespace`.
    pub namespace: LabelValue,
    /// `*_app`.
    pub app: LabelValue,
    /// `*_version`.
    pub version: LabelValue,
    /// `*_canonical_service`.
    pub canonical_service: LabelValue,
    /// `*_canonical_revision`.
    pub canonical_revision: LabelValue,
    /// `*_cluster`.
    pub cluster: LabelValue,
}

/// The labels that name an app, most specific first (Istio's stats filter: the qualified
/// Kubernetes label wins over the bare one).
const APP_LABELS: [&str; 2] = ["app.kubernetes.io/name", "app"];
/// The labels that name an app's version, most specific first.
const VERSION_LABELS: [&str; 2] = ["app.kubernetes.io/version", "version"];

impl PeerLabels {
    /// Every value `unknown`.
    pub const UNKNOWN: PeerLabels = PeerLabels {
        workload: LabelValue::UNKNOWN,
        namespace: LabelValue::UNKNOWN,
        app: LabelValue::UNKNOWN,
        version: LabelValue::UNKNOWN,
        canonical_service: LabelValue::UNKNOWN,
        canonical_revision: LabelValue::UNKNOWN,
        cluster: LabelValue::UNKNOWN,
    };

    /// The labels of a workload the state knows, in `cluster`:
    ///
    /// - workload, namespace: the workload's (owner) name and namespace;
    /// - canonical service / revision: the state's values (`service.istio.io/canonical-name`,
    ///   `app.kubernetes.io/name`, `app`, else the workload name; `…/canonical-revision`,
    ///   `app.kubernetes.io/version`, `version`, else `latest`);
    /// - app / version: `app.kubernetes.io/name` else `app`; `app.kubernetes.io/version` else
    ///   `version`; else `unknown` (Istio's stats filter).
    pub fn of(workload: &Workload, cluster: &LabelValue) -> Self {
        Self {
            workload: LabelValue::new(&workload.workload_name),
            namespace: LabelValue::new(&workload.namespace),
            app: first_label(&workload.labels, &APP_LABELS),
            version: first_label(&workload.labels, &VERSION_LABELS),
            canonical_service: LabelValue::new(&workload.canonical_service),
            canonical_revision: LabelValue::new(&workload.canonical_revision),
            cluster: cluster.clone(),
        }
    }

    /// The labels of a local pod the state does not know (known from its enrollment only):
    /// the rules of [`PeerLabels::of`] for a pod without labels or owner.
    pub fn pod(name: &str, namespace: &str, cluster: &LabelValue) -> Self {
        let name = LabelValue::new(name);
        Self {
            workload: name.clone(),
            namespace: LabelValue::new(namespace),
            app: LabelValue::UNKNOWN,
            version: LabelValue::UNKNOWN,
            canonical_service: name,
            canonical_revision: LabelValue::fixed("latest"),
            cluster: cluster.clone(),
        }
    }

    /// A peer known only by the namespace of its SPIFFE ID (Istio takes the namespace from the
    /// peer's certificate when it has nothing better).
    pub fn namespace_only(id: &SpiffeId) -> Self {
        Self {
            namespace: LabelValue::new(id.namespace()),
            ..Self::default()
        }
    }
}

fn first_label(labels: &BTreeMap<String, String>, keys: &[&str]) -> LabelValue {
    keys.iter()
        .find_map(|key| labels.get(*key).filter(|v| !v.is_empty()))
        .map_or(LabelValue::UNKNOWN, |value| LabelValue::new(value))
}

/// Istio's `destination_service*` labels: the Service a connection was addressed to.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ServiceLabels {
    /// `destination_service`: the Service's host name (`name.namespace.svc.cluster.local`).
    pub host: LabelValue,
    /// `destination_service_name`.
    pub name: LabelValue,
    /// `destination_service_namespace`.
    pub namespace: LabelValue,
}

impl ServiceLabels {
    /// Every value `unknown`.
    pub const UNKNOWN: ServiceLabels = ServiceLabels {
        host: LabelValue::UNKNOWN,
        name: LabelValue::UNKNOWN,
        namespace: LabelValue::UNKNOWN,
    };
}

/// Labels of the `istio_tcp_*` series: Istio's standard TCP label set. Built once per
/// connection; an absent peer or service encodes as `unknown` throughout.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ConnectionLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
    /// The client's workload labels, when known. Never `Some` of [`PeerLabels::UNKNOWN`]: that
    /// would be a second series with the same label values as `None`.
    pub source: Option<Arc<PeerLabels>>,
    /// The client's SPIFFE ID, proved by its certificate (HBONE); else `unknown`.
    pub source_principal: LabelValue,
    /// The server's workload labels, when known (never `Some` of [`PeerLabels::UNKNOWN`]).
    pub destination: Option<Arc<PeerLabels>>,
    /// The server's SPIFFE ID, proved by its certificate (HBONE); else `unknown`.
    pub destination_principal: LabelValue,
    /// The Service the client addressed; `None` (all `unknown`) until Service VIPs exist.
    pub destination_service: Option<Arc<ServiceLabels>>,
    /// `tcp`.
    pub request_protocol: LabelValue,
    /// Istio response flags; `-` when the connection succeeded.
    pub response_flags: LabelValue,
    /// `mutual_tls` for HBONE, `none` for plaintext.
    pub connection_security_policy: LabelValue,
}

impl ConnectionLabels {
    /// Labels with every peer field `unknown`, plaintext, no failure.
    pub fn unknown(reporter: Reporter) -> Self {
        Self {
            reporter,
            source: None,
            source_principal: LabelValue::UNKNOWN,
            destination: None,
            destination_principal: LabelValue::UNKNOWN,
            destination_service: None,
            request_protocol: LabelValue::fixed("tcp"),
            response_flags: LabelValue::fixed("-"),
            connection_security_policy: LabelValue::fixed("none"),
        }
    }

    /// Plaintext labels between two peers.
    pub fn between(
        reporter: Reporter,
        source: Option<PeerLabels>,
        destination: Option<PeerLabels>,
    ) -> Self {
        let known =
            |peer: Option<PeerLabels>| peer.filter(|p| *p != PeerLabels::UNKNOWN).map(Arc::new);
        Self {
            source: known(source),
            destination: known(destination),
            ..Self::unknown(reporter)
        }
    }

    /// The same labels for a connection in mutual TLS between these certificates' identities.
    pub fn with_mutual_tls(self, source: &SpiffeId, destination: &SpiffeId) -> Self {
        Self {
            source_principal: source.into(),
            destination_principal: destination.into(),
            connection_security_policy: LabelValue::fixed("mutual_tls"),
            ..self
        }
    }
}

impl EncodeLabelSet for ConnectionLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        // Statics: the constants hold `Arc`s (never allocated), so a `&CONST` would not live
        // long enough.
        static NO_PEER: PeerLabels = PeerLabels::UNKNOWN;
        static NO_SERVICE: ServiceLabels = ServiceLabels::UNKNOWN;
        let src = self.source.as_deref().unwrap_or(&NO_PEER);
        let dst = self.destination.as_deref().unwrap_or(&NO_PEER);
        let svc = (self.destination_service.as_deref()).unwrap_or(&NO_SERVICE);
        // Istio's (ztunnel's) order.
        [
            ("reporter", self.reporter.as_str()),
            ("source_workload", src.workload.as_str()),
            ("source_canonical_service", src.canonical_service.as_str()),
            ("source_canonical_revision", src.canonical_revision.as_str()),
            ("source_workload_namespace", src.namespace.as_str()),
            ("source_principal", self.source_principal.as_str()),
            ("source_app", src.app.as_str()),
            ("source_version", src.version.as_str()),
            ("source_cluster", src.cluster.as_str()),
            ("destination_service", svc.host.as_str()),
            ("destination_service_namespace", svc.namespace.as_str()),
            ("destination_service_name", svc.name.as_str()),
            ("destination_workload", dst.workload.as_str()),
            (
                "destination_canonical_service",
                dst.canonical_service.as_str(),
            ),
            (
                "destination_canonical_revision",
                dst.canonical_revision.as_str(),
            ),
            ("destination_workload_namespace", dst.namespace.as_str()),
            ("destination_principal", self.destination_principal.as_str()),
            ("destination_app", dst.app.as_str()),
            ("destination_version", dst.version.as_str()),
            ("destination_cluster", dst.cluster.as_str()),
            ("request_protocol", self.request_protocol.as_str()),
            ("response_flags", self.response_flags.as_str()),
            (
                "connection_security_policy",
                self.connection_security_policy.as_str(),
            ),
        ]
        .encode(encoder)
    }
}

/// The `response_flags` of a connection that failed. At the source, ztunnel's
/// (`ResponseFlags` and `extract_failure_reason` in its src/proxy/metrics.rs): it does not use
/// Envoy's `UF` there; a tunnel the peer refused (401, 503) is `CONNECT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFlag {
    /// `UF`: the destination side could not reach the app (Envoy's upstream failure).
    UpstreamFailure,
    /// `CONNECT`: the peer refused the tunnel (401, 503), or the TCP connection, its TLS
    /// handshake or the request failed.
    Connect,
    /// `NETWORK_POLICY`: connecting to the peer's HBONE port timed out (a NetworkPolicy
    /// dropping 15008, most often).
    NetworkPolicy,
    /// `TLS_FAILURE`: the TLS configuration could not be built.
    TlsFailure,
    /// `H2_HANDSHAKE_FAILURE`: the HTTP/2 handshake, or the stream, failed.
    Http2HandshakeFailure,
    /// `IDENTITY_ERROR`: no certificate for the source, or no identity for the destination.
    IdentityError,
}

impl ResponseFlag {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::UpstreamFailure => "UF",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::NetworkPolicy => "NETWORK_POLICY",
            ResponseFlag::TlsFailure => "TLS_FAILURE",
            ResponseFlag::Http2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
            ResponseFlag::IdentityError => "IDENTITY_ERROR",
        }
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
}

impl DenialReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::DenyPolicy => "deny_policy",
            DenialReason::NoAllowMatch => "no_allow_match",
            DenialReason::MtlsRequired => "mtls_required",
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

/// The cluster the proxy's workloads are in (`--cluster-id`), as a label value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterId(LabelValue);

impl ClusterId {
    /// The cluster named `id`.
    pub fn new(id: &str) -> Self {
        Self(LabelValue::new(id))
    }

    /// The label value.
    pub fn label(&self) -> &LabelValue {
        &self.0
    }
}

impl Default for ClusterId {
    fn default() -> Self {
        Self(LabelValue::fixed(DEFAULT_CLUSTER_ID))
    }
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
    /// The live connection table, whose size by reporter is `marrow_connections_open`
    /// (shared with the data path and the admin API).
    pub connections: std::sync::Arc<crate::proxy::connections::ConnectionTable>,
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
    pub fn record_unsupported(&self, policies: &crate::policy::PolicySet) {
        let counts = policies.unsupported_counts();
        for &(kind, reason) in crate::policy::UnsupportedReason::BY_KIND {
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
             (deny_policy, no_allow_match, mtls_required)",
            self.policy_denials.clone(),
        );
        registry.register(
            "marrow_connections_open",
            "Connections open now, by reporter (source: outbound, destination: inbound)",
            self.connections.gauge(),
        );
    }
}

#[cfg(test)]
mod tests;
