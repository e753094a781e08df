//! The mesh context of the data path: the workload state, the certificates, the trust domain
//! and the HBONE settings every pod's connections share; absent when the proxy runs without
//! state and CA.
//!
//! Identity rule: a pod's SPIFFE ID is derived from the state's record of the workload at the
//! pod's address (namespace, service account) — see [`MeshContext::identity_of`]; the proxy asks the
//! certificate manager only for identities of pods enrolled on this node (and, when
//! `--node-name` is set, scheduled on it; see [`super::local_identity`]).

use std::sync::Arc;
use std::time::Duration;

use marrow_mesh::identity::{CertificateManager, SpiffeId, TrustDomain};
use marrow_mesh::state::{StateStore, Workload};
use marrow_mesh::tls;

/// The mesh-wide parts of the data path; absent when the proxy runs without state and CA.
pub struct MeshContext {
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
    /// Outlier detection, connection limits and load balancing per Service port with a
    /// DestinationRule, keyed by the Service's VIP and port (one node proxy, one count: the
    /// limits are per client node proxy, as Istio's are per client proxy).
    pub destinations: Arc<marrow_mesh::resilience::Destinations<std::net::SocketAddr>>,
    /// How long a CNI ADD waits for the state to know the pod before deciding by its
    /// namespace alone (the API server's watch may lag the kubelet; a state file lists pods
    /// after they start, so it does not wait).
    pub enrollment_wait: Duration,
}

impl std::fmt::Debug for MeshContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshContext")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl MeshContext {
    /// The SPIFFE ID of a workload.
    pub fn identity_of(&self, workload: &Workload) -> Option<SpiffeId> {
        let (ns, sa) = workload.spiffe_id_parts();
        SpiffeId::new(&self.trust_domain, ns, sa).ok()
    }
}
