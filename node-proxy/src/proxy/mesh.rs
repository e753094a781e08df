//! What the data path needs to carry a pod's traffic in HBONE: the workload state, the
//! certificates, the trust domain, and a per-pod connector that dials from the pod's netns.
//!
//! Identity rule: a pod's SPIFFE ID is derived from the state's record of the workload at the
//! pod's address (namespace, service account). The proxy asks the certificate manager only for
//! identities of pods enrolled on this node (and, when `--node-name` is set, scheduled on it).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marrow_common::PROXY_OUTBOUND_MARK;

use crate::hbone::pool::{Connector, PoolKey};
use crate::hbone::{HboneClient, HboneError};
use crate::identity::{CertificateManager, SpiffeId, TrustDomain};
use crate::netns::PodNetns;
use crate::socket;
use crate::state::{StateStore, Workload};
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
                Err((reason, _)) => self.mesh.metrics.hbone_failed("outbound", reason),
            }
            result.map_err(|(_, e)| e)
        })
    }
}

impl PodConnector {
    /// Dials; a failure carries its metric reason.
    async fn dial(&self, key: &PoolKey) -> Result<HboneClient, (&'static str, HboneError)> {
        let fail = |reason: &'static str, step: String, e: std::io::Error| {
            (reason, HboneError::Transport { step, source: e })
        };
        let cert = self.mesh.certs.get(&key.source).await.map_err(|e| {
            fail(
                "certificate",
                format!("certificate for {}", key.source),
                std::io::Error::other(e),
            )
        })?;
        let config = tls::client_config(&cert, key.server.clone(), self.mesh.key_exchange).map_err(|e| {
            fail(
                "certificate",
                "client tls configuration".into(),
                std::io::Error::other(e),
            )
        })?;
        let dst = key.destination;
        let sock = self
            .netns
            .run(|| socket::marked_socket(dst, PROXY_OUTBOUND_MARK))
            .and_then(|sock| sock)
            .map_err(|e| fail("connect", format!("socket for {dst} in the pod netns"), e))?;
        let tcp = tokio::time::timeout(self.mesh.connect_timeout, socket::connect(sock, dst))
            .await
            .map_err(|_| {
                fail(
                    "timeout",
                    format!("connecting to {dst}"),
                    std::io::ErrorKind::TimedOut.into(),
                )
            })?
            .map_err(|e| fail("connect", format!("connecting to {dst}"), e))?;
        let tls = tokio::time::timeout(
            self.mesh.handshake_timeout,
            tls::connect(config, dst.ip(), tcp),
        )
        .await
        .map_err(|_| {
            fail(
                "timeout",
                format!("tls handshake with {dst}"),
                std::io::ErrorKind::TimedOut.into(),
            )
        })?
        .map_err(|e| {
            let reason = if e.rejection().is_some() {
                "identity"
            } else {
                "tls"
            };
            let step = format!("tls handshake with {dst} (expecting {})", key.server);
            fail(reason, step, std::io::Error::other(e))
        })?;
        HboneClient::handshake(tls).await.map_err(|e| ("tls", e))
    }
}
