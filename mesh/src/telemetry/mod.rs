//! What every program reports the same way: Istio's standard metric label set
//! ([`ConnectionLabels`], each value derived as Istio derives it), its `response_flags`
//! ([`ResponseFlag`]), its request metrics ([`RequestMetrics`], for the L7 programs) and the
//! per-request access log ([`RequestLog`]). A program owns its metric families and its
//! connection records; the names and values on them come from here, so the node proxy, the
//! waypoint and the gateway label alike and Kiali's and Grafana's queries work for all three.
//!
//! Invariants: label values are bounded — workloads, namespaces, identities, the cluster and
//! fixed words, never addresses, ports, paths or connection ids.

mod access_log;
mod flags;
mod labels;
mod requests;
#[cfg(test)]
mod tests;

pub use access_log::{ACCESS_LOG_TARGET, RequestLog};
pub use flags::ResponseFlag;
pub use labels::{
    ClusterId, ConnectionLabels, DEFAULT_CLUSTER_ID, LabelValue, PeerLabels, Reporter, Security,
    ServiceLabels,
};
pub use requests::{
    ISTIO_BUCKETS, RequestLabels, RequestMetrics, RequestProtocol, RequestSample, grpc_status,
};
