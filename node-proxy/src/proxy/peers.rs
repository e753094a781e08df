//! What the HBONE headers say about the two ends of a connection, both ways, each as ztunnel
//! does: the `baggage` a pod's tunnels carry ([`baggage_of`]), what the destination makes of a
//! peer's `baggage` and `forwarded: host=` ([`derived_source`], [`inbound_service`]), and the
//! `destination_service` labels of a Service ([`service_labels`]).

use std::net::SocketAddr;
use std::sync::Arc;

use marrow_mesh::hbone::Baggage;
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::state::services::ServiceTarget;
use marrow_mesh::state::{Snapshot, Workload};
use marrow_mesh::telemetry::{LabelValue, PeerLabels, ServiceLabels};

/// The `baggage` of a pod's tunnels: its workload as ztunnel describes its own
/// (`Workload::baggage` in src/state/workload.rs, written by `baggage_header_val` in
/// src/baggage.rs): cluster, namespace, workload name and kind, canonical service and revision.
/// The state knows no locality, so no `cloud.*` keys.
pub fn baggage_of(workload: &Workload, cluster: &LabelValue) -> Baggage {
    let given = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    Baggage {
        cluster: given(cluster.as_str()),
        namespace: given(&workload.namespace),
        workload: given(&workload.workload_name).map(|name| (workload.workload_type, name)),
        service: given(&workload.canonical_service),
        version: given(&workload.canonical_revision),
        region: None,
        zone: None,
    }
}

/// The labels of a client this proxy's state does not know (another cluster, or a view that
/// lags), from what it says of itself in `baggage`, as ztunnel derives them
/// (`with_derived_source` in src/proxy/metrics.rs): workload, canonical service, canonical
/// revision and cluster from the baggage, `app` = the workload name and `version` = the
/// revision (ztunnel's choice). One difference: the namespace is the client certificate's,
/// which is proven, not the baggage's, which is only claimed (for an honest peer they agree).
pub fn derived_source(baggage: &Baggage, client: &SpiffeId) -> PeerLabels {
    let label =
        |text: &Option<String>| text.as_deref().map_or(LabelValue::UNKNOWN, LabelValue::new);
    let workload = label(&baggage.workload.as_ref().map(|(_, name)| name.clone()));
    PeerLabels {
        app: workload.clone(),
        workload,
        namespace: LabelValue::new(client.namespace()),
        version: label(&baggage.version),
        canonical_service: label(&baggage.service),
        canonical_revision: label(&baggage.version),
        cluster: label(&baggage.cluster),
    }
}

/// Istio's `destination_service` labels of a Service port.
pub fn service_labels(service: &ServiceTarget) -> ServiceLabels {
    ServiceLabels {
        host: LabelValue::from(service.host()),
        name: LabelValue::new(&service.name),
        namespace: LabelValue::new(&service.namespace),
    }
}

/// The Service an inbound tunnel to `target` (this pod's `ip:port`) was addressed to, as
/// ztunnel guesses it (`guess_inbound_service` in src/proxy.rs): among the Services this pod
/// backs, the one the client named in `forwarded: host=` — never one the pod does not back, so
/// a peer cannot make a Service up — else one with an endpoint on `target`'s port; the first by
/// namespace and name when several qualify (ztunnel takes its list's first).
pub fn inbound_service(
    snap: &Snapshot,
    claimed_host: Option<&str>,
    target: SocketAddr,
) -> Option<ServiceLabels> {
    let target = SocketAddr::new(target.ip().to_canonical(), target.port());
    let first = |found: &mut dyn Iterator<Item = &Arc<ServiceTarget>>| {
        found
            .min_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
            .map(|s| service_labels(s))
    };
    let serving = || snap.services().serving(target.ip());
    if let Some(host) = claimed_host
        && let Some(named) = first(&mut serving().filter(|s| s.host() == host))
    {
        return Some(named);
    }
    first(&mut serving().filter(|s| s.endpoints.contains(&target)))
}

#[cfg(test)]
mod tests;
