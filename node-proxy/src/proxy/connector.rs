//! The HBONE dialer of one pod, handed to its connection pool: TCP from the pod's netns, mutual
//! TLS as the pod's identity, then HTTP/2; each step's failure named and counted. The pod's
//! certificate comes from the outbound connection that needs the tunnel (it looked it up once,
//! its expiry picks the pooled connection), so a new connection asks the manager nothing.

use std::sync::Arc;

use marrow_common::PROXY_OUTBOUND_MARK;

use super::context::MeshContext;
use crate::netns::PodNetns;
use crate::socket;
use marrow_mesh::dial::{DialAsWorkload, DialTimeouts, dial};
use marrow_mesh::hbone::pool::PoolKey;
use marrow_mesh::hbone::{HboneClient, HboneError, TransportFailure};
use marrow_mesh::identity::WorkloadCertificate;

/// Dials HBONE connections for one pod: TCP from the pod's netns (so the peer sees the pod's
/// address) with the outbound mark, then mutual TLS as the pod's identity, then HTTP/2.
pub struct PodConnector {
    /// The pod's netns.
    pub netns: Arc<PodNetns>,
    /// The mesh.
    pub mesh: Arc<MeshContext>,
}

impl DialAsWorkload for PodConnector {
    async fn dial(
        &self,
        key: PoolKey,
        cert: Arc<WorkloadCertificate>,
    ) -> Result<HboneClient, HboneError> {
        let result = self.dial_from_pod(&key, &cert).await;
        match &result {
            Ok(_) => self.mesh.metrics.hbone_established("outbound"),
            Err(HboneError::Transport { failure, .. }) => {
                self.mesh.metrics.hbone_failed("outbound", failure.reason());
            }
            // The HTTP/2 handshake, over an established TLS connection.
            Err(_) => self.mesh.metrics.hbone_failed("outbound", "tls"),
        }
        result
    }
}

impl PodConnector {
    /// Dials as `cert`: TCP from the pod's netns, TLS, HTTP/2; a failure names its step.
    async fn dial_from_pod(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
    ) -> Result<HboneClient, HboneError> {
        let dst = key.destination;
        let sock = self
            .netns
            .run(|| socket::marked_socket(dst, PROXY_OUTBOUND_MARK))
            .and_then(|sock| sock)
            .map_err(|source| HboneError::Transport {
                failure: TransportFailure::Connect,
                step: format!("socket for {dst} in the pod netns"),
                source,
            })?;
        let timeouts = DialTimeouts {
            connect: self.mesh.connect_timeout,
            handshake: self.mesh.handshake_timeout,
        };
        dial(
            key,
            cert,
            self.mesh.key_exchange,
            timeouts,
            socket::connect(sock, dst),
        )
        .await
    }
}
