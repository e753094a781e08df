//! What the HBONE headers say about the two ends of a connection, both ways, each as ztunnel
//! does: the `baggage` a pod's tunnels carry ([`baggage_of`]), what the destination makes of a
//! peer's `baggage` and `forwarded: host=` ([`derived_source`], [`inbound_service`]), and the
//! `destination_service` labels of a Service ([`service_labels`]); and the cache that builds a
//! workload's or a Service's labels once and shares them among its connections
//! ([`LabelCache`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

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
    inbound_service_target(snap, claimed_host, target).map(|s| service_labels(s))
}

/// The Service [`inbound_service`] describes.
pub fn inbound_service_target<'s>(
    snap: &'s Snapshot,
    claimed_host: Option<&str>,
    target: SocketAddr,
) -> Option<&'s Arc<ServiceTarget>> {
    let target = SocketAddr::new(target.ip().to_canonical(), target.port());
    let first = |found: &mut dyn Iterator<Item = &'s Arc<ServiceTarget>>| {
        found.min_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    };
    let serving = || snap.services().serving(target.ip());
    if let Some(host) = claimed_host
        && let Some(named) = first(&mut serving().filter(|s| s.host() == host))
    {
        return Some(named);
    }
    first(&mut serving().filter(|s| s.endpoints.contains(&target)))
}

/// Most objects a [`LabelCache`] remembers; past it the oldest goes (a pod talking to many
/// workloads rebuilds some labels; none is ever wrong).
const CACHED: usize = 64;

/// Labels built once per state object (a workload, a Service) and shared by every connection
/// that names it: without it each connection held its own copy of the same strings (two
/// workloads' labels are ~1 KiB). Keyed by the object's allocation, so a new state's object
/// (a changed pod) gets new labels; the cache holds only a `Weak`, which keeps that
/// allocation's address from being reused while the entry exists, so a key never matches a
/// different object.
pub struct LabelCache<K, V> {
    entries: Mutex<Vec<(Weak<K>, Arc<V>)>>,
}

impl<K, V> Default for LabelCache<K, V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }
}

impl<K, V> std::fmt::Debug for LabelCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelCache").finish_non_exhaustive()
    }
}

impl<K, V> LabelCache<K, V> {
    /// The labels of `object`, made by `make` the first time.
    pub fn get(&self, object: &Arc<K>, make: impl FnOnce(&K) -> V) -> Arc<V> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let key = Arc::as_ptr(object);
        if let Some((_, labels)) = entries.iter().find(|(k, _)| std::ptr::eq(k.as_ptr(), key)) {
            return labels.clone();
        }
        // Objects of old states go first, then the oldest entry.
        entries.retain(|(k, _)| k.strong_count() > 0);
        if entries.len() >= CACHED {
            entries.remove(0);
        }
        let labels = Arc::new(make(object));
        entries.push((Arc::downgrade(object), labels.clone()));
        labels
    }
}

/// The label caches of one pod's connections.
#[derive(Debug, Default)]
pub struct PodLabels {
    /// The pod as the connection table names it, `namespace/name`.
    pod: std::sync::OnceLock<Arc<str>>,
    /// Workloads' `source_*`/`destination_*` labels (with the proxy's cluster: one per process).
    pub workloads: LabelCache<Workload, PeerLabels>,
    /// Services' `destination_service*` labels.
    pub services: LabelCache<ServiceTarget, ServiceLabels>,
    /// Workloads' SPIFFE IDs (`None`: the workload has no valid identity).
    pub identities: LabelCache<Workload, Option<SpiffeId>>,
}

impl PodLabels {
    /// `namespace/name` of `pod` (this cache's pod), shared.
    pub fn pod_key(&self, pod: &marrow_wire::enrollment::PodIdentity) -> Arc<str> {
        self.pod
            .get_or_init(|| Arc::from(format!("{}/{}", pod.namespace, pod.name)))
            .clone()
    }

    /// [`PeerLabels::of`] `workload`, shared.
    pub fn workload(&self, workload: &Arc<Workload>, cluster: &LabelValue) -> Arc<PeerLabels> {
        self.workloads.get(workload, |w| PeerLabels::of(w, cluster))
    }

    /// [`service_labels`] of `service`, shared.
    pub fn service(&self, service: &Arc<ServiceTarget>) -> Arc<ServiceLabels> {
        self.services.get(service, service_labels)
    }
}

#[cfg(test)]
mod tests;
