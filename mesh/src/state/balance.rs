//! Which ready endpoint of a Service a new connection goes to: round-robin per service port.
//!
//! The cursors live here, in the [`StateStore`](super::StateStore), not in a
//! [`Snapshot`](super::Snapshot): a snapshot stays immutable and a state update neither resets
//! nor copies them. They are a fixed table of atomics; each service port's slot is a hash of its
//! VIP and port taken once when the Service index is built, so picking hashes nothing, takes no
//! lock and allocates nothing. Two service ports that share a slot share a cursor, which still
//! spreads each over its endpoints.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::services::ServiceTarget;

/// Cursor slots: 2 KiB for the whole node, whatever the number of Services.
const SLOTS: usize = 256;

/// Round-robin cursors over every Service's ready endpoints.
#[derive(Debug)]
pub struct EndpointPicker {
    cursors: [AtomicUsize; SLOTS],
}

impl Default for EndpointPicker {
    fn default() -> Self {
        Self {
            cursors: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

impl EndpointPicker {
    /// The next ready endpoint of `service`; `None` when it has none.
    pub fn pick(&self, service: &ServiceTarget) -> Option<SocketAddr> {
        if service.endpoints.is_empty() {
            return None;
        }
        let n = self.cursors[service.slot % SLOTS].fetch_add(1, Ordering::Relaxed);
        service.endpoints.get(n % service.endpoints.len()).copied()
    }

    /// The next ready endpoint of `service` that is `usable`, in round-robin order from the
    /// cursor, without moving it: a retry's second pick must not take the next connection's
    /// turn (else, after one failure, every connection would try the failing endpoint first).
    /// `None` when none is usable.
    pub fn pick_where(
        &self,
        service: &ServiceTarget,
        usable: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        let endpoints = &service.endpoints;
        if endpoints.is_empty() {
            return None;
        }
        let n = self.cursors[service.slot % SLOTS].load(Ordering::Relaxed);
        (0..endpoints.len())
            .map(|i| endpoints[n.wrapping_add(i) % endpoints.len()])
            .find(|e| usable(*e))
    }
}

/// The cursor slot of the service port at `vip`: computed once, when the Service index is
/// built, so picking hashes nothing.
pub(super) fn slot_of(vip: SocketAddr) -> usize {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(vip) as usize % SLOTS
}
