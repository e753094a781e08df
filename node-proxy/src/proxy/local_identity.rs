//! The certificate permission a local pod holds: the certificate manager only issues
//! certificates for identities some enrolled pod currently has, so each pod allows its identity
//! while it is enrolled (and when its service account changes) and gives it up when it leaves.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::context::MeshContext;
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::state::{Snapshot, Workload};

/// The identity a local pod currently holds a certificate permission for.
#[derive(Debug, Default)]
pub struct LocalIdentity(Mutex<Option<SpiffeId>>);

impl LocalIdentity {
    /// The pod's workload and SPIFFE ID in `snap` (the connection's snapshot), allowing the
    /// identity in the certificate manager (and forbidding a previous one, if the service
    /// account changed).
    pub fn resolve(
        &self,
        mesh: &MeshContext,
        snap: &Snapshot,
        ips: &[IpAddr],
    ) -> Option<(Arc<Workload>, SpiffeId)> {
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
        match held.as_ref() {
            // The held one, not the copy just made: every connection's labels then share
            // one string.
            Some(same) if *same == id => Some((workload, same.clone())),
            _ => {
                if let Some(old) = held.replace(id.clone()) {
                    mesh.certs.forbid(&old);
                }
                mesh.certs.allow(id.clone());
                Some((workload, id))
            }
        }
    }

    /// Gives up the identity (the pod left).
    pub fn release(&self, mesh: &MeshContext) {
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
