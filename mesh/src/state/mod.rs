//! The mesh state: which pods exist, where, under which identity, and whether they are in the
//! mesh — one immutable [`Snapshot`], swapped atomically in a [`StateStore`].
//!
//! Owns: the domain types ([`Workload`], [`Namespace`]), the snapshot and its indexes, the
//! enrollment rule, the waypoint bindings ([`waypoints`]), the outbound [`route`] decision, the conversion from Kubernetes objects
//! ([`k8s`]), the [`StateSource`] trait and the local file source ([`file`]). The API server
//! source (`crate::apiserver`) feeds the same [`StateUpdate`] through [`k8s`].
//!
//! Invariants:
//! - the data path reads with [`StateStore::snapshot`]: one atomic load, no lock, no allocation;
//! - a published snapshot is complete and valid: an update is validated object by object as it
//!   is assembled and refused as a whole, so a bad update leaves the last good snapshot serving
//!   (`security.istio.io` policies excepted: a malformed one costs only itself, fail-safe, and
//!   is reported by [`crate::policy::PolicySet::unsupported`]);
//! - generations grow by one per published snapshot, starting from the empty snapshot at 0.

mod balance;
pub mod file;
pub mod k8s;
mod model;
#[cfg(test)]
mod policy_tests;
pub mod protocol;
mod route;
pub mod services;
mod snapshot;
mod source;
#[cfg(test)]
mod tests;
pub mod waypoints;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use balance::EndpointPicker;
pub use model::{
    DATAPLANE_MODE_LABEL, DEFAULT_SERVICE_ACCOUNT, DataplaneMode, Namespace,
    SIDECAR_STATUS_ANNOTATION, Workload, in_mesh,
};
pub use route::{Attempt, EndpointChooser, Route, Routed, route, route_attempt};

use crate::objects::ObjectRef;
pub use snapshot::{Snapshot, StateUpdate};
pub use source::{SourceError, SourceWatch, StateSource};

/// Why one object is refused. The source adds where it came from (file, document, watch).
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// `metadata.name` is missing or empty.
    #[error("metadata.name is missing")]
    MissingName,
    /// A name-like field is not what Kubernetes allows; these end up in SPIFFE IDs.
    #[error("{field} {value:?} is not valid: expected {expected}")]
    InvalidName {
        /// The field, e.g. `spec.serviceAccountName`.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A pod IP does not parse.
    #[error("pod IP {value:?} is not an IP address")]
    InvalidIp {
        /// The text.
        value: String,
    },
    /// A pod IP parses but cannot be a pod's address.
    #[error(
        "pod IP {ip} cannot be a pod address (unspecified, loopback, multicast, broadcast or IPv4-mapped)"
    )]
    UnusableIp {
        /// The address.
        ip: IpAddr,
    },
    /// The object does not fit its kind's schema (a field of the wrong type, say).
    #[error("does not match the schema of its kind: {reason}")]
    Malformed {
        /// The deserializer's message.
        reason: String,
    },
    /// Another object with the same kind, namespace and name came first.
    #[error("{other} is defined twice")]
    Duplicate {
        /// The object defined earlier.
        other: ObjectRef,
    },
    /// Another pod has the same uid.
    #[error("uid {uid} is also the uid of {other}")]
    DuplicateUid {
        /// The uid.
        uid: String,
        /// The pod that has it.
        other: ObjectRef,
    },
    /// Another pod has the same IP.
    #[error("IP {ip} is also an IP of {other}")]
    DuplicateIp {
        /// The address.
        ip: IpAddr,
        /// The pod that has it.
        other: ObjectRef,
    },
}

/// Holds the current [`Snapshot`]; readers never wait, writers take turns.
#[derive(Debug)]
pub struct StateStore {
    current: ArcSwap<Snapshot>,
    /// Serializes writers so generations are published in order; readers never take it.
    writer: Mutex<()>,
    changes: watch::Sender<u64>,
    /// Where each Service's next connection goes: outlives the snapshots.
    picker: EndpointPicker,
}

impl Default for StateStore {
    fn default() -> Self {
        Self::new()
    }
}

impl StateStore {
    /// A store holding the empty snapshot, generation 0.
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            changes: watch::Sender::new(0),
            picker: EndpointPicker::default(),
        }
    }

    /// The round-robin position of every Service, for [`route`].
    pub fn endpoint_picker(&self) -> &EndpointPicker {
        &self.picker
    }

    /// The current snapshot: one atomic load, lock-free, for the data path.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a complete update as the next generation and returns the new snapshot.
    /// Readers holding the previous snapshot keep it until they drop it.
    pub fn apply(&self, update: StateUpdate) -> Arc<Snapshot> {
        // Nothing panics while the guard is held, so a poisoned lock still guards nothing broken.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.current.load().generation() + 1;
        let snapshot = Arc::new(update.into_snapshot(generation));
        self.current.store(Arc::clone(&snapshot));
        self.changes.send_replace(generation);
        snapshot
    }

    /// Watches the published generation: for work that follows state changes (certificates
    /// of this node's pods, enrollment reconcile) and for tests.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
