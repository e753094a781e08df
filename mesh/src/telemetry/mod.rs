//! What every program reports the same way: Istio's standard metric label set
//! ([`ConnectionLabels`], each value derived as Istio derives it) and its `response_flags`
//! ([`ResponseFlag`]). A program owns its metric families and its connection records; the
//! names and values on them come from here, so the node proxy, the waypoint and the gateway
//! label alike and Kiali's and Grafana's queries work for all three.
//!
//! Invariants: label values are bounded — workloads, namespaces, identities, the cluster and
//! fixed words, never addresses, ports or connection ids.

mod flags;
mod labels;
#[cfg(test)]
mod tests;

pub use flags::ResponseFlag;
pub use labels::{
    ClusterId, ConnectionLabels, DEFAULT_CLUSTER_ID, LabelValue, PeerLabels, Reporter, Security,
    ServiceLabels,
};
