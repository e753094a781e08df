//! Istio's standard TCP label set of the `istio_tcp_*` series, and its parts: a shared label
//! value, the reporter, one end's workload labels, the addressed Service.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use super::ResponseFlag;
use crate::identity::SpiffeId;
use crate::state::Workload;

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
    /// The identity's own text, shared (no copy per connection).
    fn from(id: &SpiffeId) -> Self {
        Self(Repr::Shared(id.shared_uri().clone()))
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
    /// A waypoint, between the two (Istio's value for the requests an ambient waypoint
    /// proxies).
    Waypoint,
}

impl Reporter {
    /// `source`, `destination` or `waypoint`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Istio's `connection_security_policy` of a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Security {
    /// Carried in HBONE (mutual TLS).
    MutualTls,
    /// Plaintext.
    None,
}

impl Security {
    /// `mutual_tls` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
        }
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
    /// `source`, `destination` or `waypoint`.
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
    /// The Service the client addressed (a VIP at the source, `forwarded: host=` or the port
    /// at the destination); `None` (all `unknown`) when there is none.
    pub destination_service: Option<Arc<ServiceLabels>>,
    /// `tcp`.
    pub request_protocol: LabelValue,
    /// Istio response flags; none (`-`) when the connection succeeded.
    pub response_flags: Option<ResponseFlag>,
    /// `mutual_tls` for HBONE, `none` for plaintext.
    pub connection_security_policy: Security,
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
            response_flags: None,
            connection_security_policy: Security::None,
        }
    }

    /// Plaintext labels between two peers.
    pub fn between(
        reporter: Reporter,
        source: Option<PeerLabels>,
        destination: Option<PeerLabels>,
    ) -> Self {
        Self::between_shared(reporter, source.map(Arc::new), destination.map(Arc::new))
    }

    /// [`ConnectionLabels::between`] peers whose labels are shared (built once per workload,
    /// held by all its connections).
    pub fn between_shared(
        reporter: Reporter,
        source: Option<Arc<PeerLabels>>,
        destination: Option<Arc<PeerLabels>>,
    ) -> Self {
        let known = |peer: Option<Arc<PeerLabels>>| peer.filter(|p| **p != PeerLabels::UNKNOWN);
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
            connection_security_policy: Security::MutualTls,
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
            ("response_flags", ResponseFlag::label(self.response_flags)),
            (
                "connection_security_policy",
                self.connection_security_policy.as_str(),
            ),
        ]
        .encode(encoder)
    }
}

/// Istio's default cluster id (`--cluster-id`): `source_cluster`/`destination_cluster` of the
/// workloads the state knows.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

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
