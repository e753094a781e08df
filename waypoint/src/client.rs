//! The original client of a tunnel: who opened it through its node proxy. The TLS peer is that
//! node proxy speaking as the client workload, so its identity is the client's; `forwarded:
//! for=` carries the client's address and `baggage` its workload metadata (ztunnel sends both on
//! every CONNECT).

use std::net::SocketAddr;

use marrow_mesh::hbone::{Baggage, ConnectTarget, TraceParent};
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::state::Snapshot;

/// The client behind a tunnel.
#[derive(Clone, Debug)]
pub struct OriginalClient {
    /// The TLS peer's SPIFFE ID.
    pub identity: SpiffeId,
    /// The client's address from `forwarded: for=`, else the TLS peer's address.
    pub addr: SocketAddr,
    /// The client's workload metadata, from the CONNECT's `baggage`, else from the snapshot's
    /// workload at the client's address.
    pub baggage: Baggage,
    /// The CONNECT's `traceparent`, when the client side sent one.
    pub traceparent: Option<TraceParent>,
}

impl OriginalClient {
    /// The client of the tunnel `target`, opened by the TLS peer `identity` from `peer`.
    pub fn of(
        target: &ConnectTarget,
        identity: SpiffeId,
        peer: SocketAddr,
        snap: &Snapshot,
        cluster: &str,
    ) -> Self {
        let addr = target.forwarded.for_addr.unwrap_or(peer);
        let mut baggage = target.baggage.clone();
        if baggage == Baggage::default()
            && let Some(workload) = snap.workload_by_ip(addr.ip())
        {
            baggage = Baggage {
                cluster: Some(cluster.to_owned()),
                namespace: Some(workload.namespace.clone()),
                workload: Some((workload.workload_type, workload.workload_name.clone())),
                service: Some(workload.canonical_service.clone()),
                version: Some(workload.canonical_revision.clone()),
                region: None,
                zone: None,
            };
        }
        Self {
            identity,
            addr,
            baggage,
            traceparent: target.traceparent,
        }
    }
}
