//! What a CONNECT's authority names: the original destination the client dialled, a Service
//! VIP:port (service waypoints) or a pod ip:port (workload waypoints). A pure decision over the
//! snapshot; anything else is refused with 400, as ztunnel answers a bad target
//! (`src/proxy/inbound.rs`, `Error::IPMismatch` → 400).

use std::net::SocketAddr;
use std::sync::Arc;

use marrow_mesh::state::protocol::Protocol;
use marrow_mesh::state::services::ServiceTarget;
use marrow_mesh::state::waypoints::{Unbound, Waypoint};
use marrow_mesh::state::{Snapshot, Workload};

use crate::gateway::Gateway;

/// Where a tunnel's traffic goes, before an endpoint is chosen.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A Service port: each request (or connection, at L4) goes to one of its endpoints.
    Service(Arc<ServiceTarget>),
    /// One pod, addressed directly.
    Workload {
        /// The pod's ip:port the client dialled.
        addr: SocketAddr,
        /// The pod.
        workload: Arc<Workload>,
    },
}

impl Destination {
    /// The address the client dialled.
    pub fn authority(&self) -> SocketAddr {
        match self {
            Destination::Service(service) => service.vip,
            Destination::Workload { addr, .. } => *addr,
        }
    }

    /// How the traffic is read: the Service port's declared protocol; a pod address has no
    /// declaration, so it is sniffed.
    pub fn protocol(&self) -> Protocol {
        match self {
            Destination::Service(service) => service.protocol(),
            Destination::Workload { .. } => Protocol::Unspecified,
        }
    }

    /// The Service port addressed, if a Service was.
    pub fn service(&self) -> Option<&Arc<ServiceTarget>> {
        match self {
            Destination::Service(service) => Some(service),
            Destination::Workload { .. } => None,
        }
    }

    /// The Service addressed, `(namespace, name)`, for the policies bound to it.
    pub fn service_ref(&self) -> Option<(&str, &str)> {
        match self {
            Destination::Service(service) => Some((&service.namespace, &service.name)),
            Destination::Workload { .. } => None,
        }
    }

    /// `<name>.<namespace>.svc.cluster.local` of a Service.
    pub fn service_host(&self) -> Option<String> {
        match self {
            Destination::Service(service) => Some(service.host()),
            Destination::Workload { .. } => None,
        }
    }
}

/// Why a CONNECT target is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The authority is neither a Service VIP:port nor a pod of the snapshot.
    #[error("{0} is no service port or workload known to the waypoint")]
    Unknown(SocketAddr),
    /// The authority is the waypoint's own address: a loop.
    #[error("{0} is the waypoint itself")]
    Loop(SocketAddr),
    /// The Service or workload at the authority does not use this waypoint: node proxies send
    /// only what is bound to it here, so anything else is a client trying to use the waypoint's
    /// identity to reach what it may not (an open relay otherwise).
    #[error("{target} ({what}) does not use waypoint {waypoint}: {why}")]
    NotBound {
        /// The authority.
        target: SocketAddr,
        /// `Service ns/name` or `Pod ns/name`.
        what: String,
        /// This waypoint.
        waypoint: String,
        /// What it uses instead, or why none.
        why: String,
    },
}

/// Resolves the authority of a CONNECT against `snap`: a Service VIP:port bound to this
/// waypoint (`gateway`), or a pod bound to it for workload traffic — what a node proxy sends
/// here (ztunnel's `fetch_service_waypoint` / `fetch_workload_waypoint`, src/state.rs).
/// `own_ips` are the waypoint's own addresses (a CONNECT to itself would loop).
pub fn resolve(
    snap: &Snapshot,
    gateway: &Gateway,
    authority: SocketAddr,
    own_ips: &[std::net::IpAddr],
) -> Result<Destination, TargetError> {
    if own_ips.contains(&authority.ip().to_canonical()) {
        return Err(TargetError::Loop(authority));
    }
    let ours = |bound: Result<&Arc<Waypoint>, Unbound>, what: String| {
        let why = match bound {
            Ok(waypoint)
                if waypoint.name.namespace == gateway.namespace
                    && waypoint.name.name == gateway.name =>
            {
                return Ok(());
            }
            Ok(other) => format!("it uses waypoint {}", other.name),
            Err(unbound) => unbound.to_string(),
        };
        Err(TargetError::NotBound {
            target: authority,
            what,
            waypoint: format!("{}/{}", gateway.namespace, gateway.name),
            why,
        })
    };
    if let Some(service) = snap.services().at(authority) {
        let bound = snap
            .waypoints()
            .for_service(&service.namespace, &service.name);
        ours(
            bound,
            format!("Service {}/{}", service.namespace, service.name),
        )?;
        return Ok(Destination::Service(service.clone()));
    }
    match snap.workload_by_ip(authority.ip()) {
        Some(workload) => {
            let bound = snap.waypoints().for_workload(workload);
            ours(
                bound,
                format!("Pod {}/{}", workload.namespace, workload.name),
            )?;
            Ok(Destination::Workload {
                addr: authority,
                workload: workload.clone(),
            })
        }
        None => Err(TargetError::Unknown(authority)),
    }
}
