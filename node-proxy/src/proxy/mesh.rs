//! What the data path needs to carry a pod's traffic in HBONE: the workload state, the
//! certificates, the trust domain, and a per-pod connector that dials from the pod's netns.
//!
//! Identity rule: a pod's SPIFFE ID is derived from the state's record of the workload at the
//! pod's address (namespace, service account). The proxy asks the certificate manager only for
//! identities of pods enrolled on this node (and, when `--node-name` is set, scheduled on it).
//!
//! It also owns what the HBONE headers say about the two ends, both ways: the `baggage` a pod's
//! tunnels carry ([`baggage_of`]), and what the destination makes of a peer's `baggage` and
//! `forwarded: host=` ([`derived_source`], [`inbound_service`]) — each as ztunnel does.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marrow_common::PROXY_OUTBOUND_MARK;

use crate::hbone::pool::{Connector, PoolKey};
use crate::hbone::{Baggage, HboneClient, HboneError, TransportFailure};
use crate::identity::{CertificateManager, SpiffeId, TrustDomain};
use crate::metrics::{LabelValue, PeerLabels, ServiceLabels};
use crate::netns::PodNetns;
use crate::socket;
use crate::state::services::ServiceTarget;
use crate::state::{Snapshot, StateStore, Workload};
use crate::tls;

/// The mesh-wide parts of the data path; absent when the proxy runs without state and CA.
pub struct Mesh {
    /// Workloads, from the state file.
    pub state: Arc<StateStore>,
    /// Workload certificates.
    pub certs: Arc<CertificateManager>,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// This node's name, when known: pods scheduled elsewhere get no identity here.
    pub node_name: Option<String>,
    /// Bound on a TLS handshake (either side).
    pub handshake_timeout: Duration,
    /// Bound on a TCP connect to a peer's HBONE port.
    pub connect_timeout: Duration,
    /// The key exchanges HBONE's TLS offers and accepts (`--tls-key-exchange`).
    pub key_exchange: tls::KeyExchange,
    /// The proxy's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How long a CNI ADD waits for the state to know the pod before deciding by its
    /// namespace alone (the API server's watch may lag the kubelet; a state file lists pods
    /// after they start, so it does not wait).
    pub enrollment_wait: Duration,
}

/// Whether a pod starting on this node is captured (Istio ambient's rule, see
/// [`crate::state::in_mesh`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// In the mesh: capture it.
    Capture,
    /// Not in the mesh: leave its traffic alone; the reason says which label decided.
    Skip(String),
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Decides whether the pod `namespace/name` is captured: by the state's record of the pod
    /// (its `istio.io/dataplane-mode` label, its namespace's, host network, sidecar), waiting
    /// up to [`Mesh::enrollment_wait`] for the record; without one, by the namespace's label.
    pub async fn enrollment(&self, namespace: &str, name: &str) -> Enrollment {
        let deadline = tokio::time::Instant::now() + self.enrollment_wait;
        let mut changes = self.state.subscribe();
        loop {
            let snap = self.state.snapshot();
            if let Some(workload) = snap.workload_by_name(namespace, name) {
                return if snap.in_mesh(workload) {
                    Enrollment::Capture
                } else {
                    Enrollment::Skip(format!(
                        "pod {namespace}/{name} is not in the ambient mesh (istio.io/dataplane-mode on the pod or its namespace, host network or sidecar)"
                    ))
                };
            }
            let waited = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                let ambient = snap
                    .namespace(namespace)
                    .is_some_and(crate::state::Namespace::ambient);
                return if ambient {
                    Enrollment::Capture
                } else {
                    Enrollment::Skip(format!(
                        "pod {namespace}/{name}: namespace {namespace} is not labelled istio.io/dataplane-mode=ambient (and the pod is not known yet)"
                    ))
                };
            }
        }
    }

    /// The SPIFFE ID of a workload.
    pub fn identity_of(&self, workload: &Workload) -> Option<SpiffeId> {
        let (ns, sa) = workload.spiffe_id_parts();
        SpiffeId::new(&self.trust_domain, ns, sa).ok()
    }
}

/// The identity a local pod currently holds a certificate permission for.
#[derive(Debug, Default)]
pub struct LocalIdentity(Mutex<Option<SpiffeId>>);

impl LocalIdentity {
    /// The pod's workload and SPIFFE ID from the current state, allowing the identity in the
    /// certificate manager (and forbidding a previous one, if the service account changed).
    pub fn resolve(&self, mesh: &Mesh, ips: &[IpAddr]) -> Option<(Arc<Workload>, SpiffeId)> {
        let snap = mesh.state.snapshot();
        let workload = ips.iter().find_map(|ip| snap.workload_by_ip(*ip))?.clone();
        if let (Some(node), Some(scheduled)) = (&mesh.node_name, &workload.node_name)
            && node != scheduled
        {
            tracing::warn!(pod = %workload.name, %node, %scheduled, "state places this pod on another node; no identity");
            return None;
        }
        let id = mesh.identity_of(&workload)?;
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.as_ref() != Some(&id) {
            if let Some(old) = held.replace(id.clone()) {
                mesh.certs.forbid(&old);
            }
            mesh.certs.allow(id.clone());
        }
        Some((workload, id))
    }

    /// Gives up the identity (the pod left).
    pub fn release(&self, mesh: &Mesh) {
        let held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(id) = held {
            mesh.certs.forbid(&id);
        }
    }
}

/// Dials HBONE connections for one pod: TCP from the pod's netns (so the peer sees the pod's
/// address) with the outbound mark, then mutual TLS as the pod's identity, then HTTP/2.
pub struct PodConnector {
    /// The pod's netns.
    pub netns: Arc<PodNetns>,
    /// The mesh.
    pub mesh: Arc<Mesh>,
}

impl Connector for PodConnector {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> Pin<Box<dyn Future<Output = Result<HboneClient, HboneError>> + Send + '_>> {
        let key = key.clone();
        Box::pin(async move {
            let result = self.dial(&key).await;
            match &result {
                Ok(_) => self.mesh.metrics.hbone_established("outbound"),
                Err(HboneError::Transport { failure, .. }) => {
                    self.mesh.metrics.hbone_failed("outbound", failure.reason());
                }
                // The HTTP/2 handshake, over an established TLS connection.
                Err(_) => self.mesh.metrics.hbone_failed("outbound", "tls"),
            }
            result
        })
    }
}

impl PodConnector {
    /// Dials: certificate, TCP from the pod's netns, TLS, HTTP/2; a failure names its step.
    async fn dial(&self, key: &PoolKey) -> Result<HboneClient, HboneError> {
        let fail = |failure: TransportFailure, step: String, source: std::io::Error| {
            HboneError::Transport {
                failure,
                step,
                source,
            }
        };
        let cert = self.mesh.certs.get(&key.source).await.map_err(|e| {
            fail(
                TransportFailure::Certificate,
                format!("certificate for {}", key.source),
                std::io::Error::other(e),
            )
        })?;
        let config = tls::client_config(&cert, key.server.clone(), self.mesh.key_exchange)
            .map_err(|e| {
                fail(
                    TransportFailure::TlsConfig,
                    "client tls configuration".into(),
                    std::io::Error::other(e),
                )
            })?;
        let dst = key.destination;
        let sock = self
            .netns
            .run(|| socket::marked_socket(dst, PROXY_OUTBOUND_MARK))
            .and_then(|sock| sock)
            .map_err(|e| {
                fail(
                    TransportFailure::Connect,
                    format!("socket for {dst} in the pod netns"),
                    e,
                )
            })?;
        let tcp = tokio::time::timeout(self.mesh.connect_timeout, socket::connect(sock, dst))
            .await
            .map_err(|_| {
                fail(
                    TransportFailure::ConnectTimeout,
                    format!("connecting to {dst}"),
                    std::io::ErrorKind::TimedOut.into(),
                )
            })?
            .map_err(|e| fail(TransportFailure::Connect, format!("connecting to {dst}"), e))?;
        let tls = tokio::time::timeout(
            self.mesh.handshake_timeout,
            tls::connect(config, dst.ip(), tcp),
        )
        .await
        .map_err(|_| {
            fail(
                TransportFailure::HandshakeTimeout,
                format!("tls handshake with {dst}"),
                std::io::ErrorKind::TimedOut.into(),
            )
        })?
        .map_err(|e| {
            let failure = if e.rejection().is_some() {
                TransportFailure::Identity
            } else {
                TransportFailure::Tls
            };
            let step = format!("tls handshake with {dst} (expecting {})", key.server);
            fail(failure, step, std::io::Error::other(e))
        })?;
        HboneClient::handshake(tls).await
    }
}

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
