//! Each DestinationRule subset's endpoints, computed once per snapshot: the endpoints of the
//! Service port whose pods carry every label of the subset. Routed requests look them up by a
//! hash of (Service, port, subset) without allocating; a new snapshot recomputes on first use.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use marrow_mesh::state::Snapshot;
use marrow_mesh::state::services::ServiceTarget;
use marrow_mesh::traffic::ServiceName;

/// Subsets kept at most; past it the cache starts over (a bound, not an expected size).
const MAX_ENTRIES: usize = 4096;

struct Entry {
    service: ServiceName,
    port: u16,
    subset: String,
    generation: u64,
    endpoints: Arc<[SocketAddr]>,
}

/// The subsets' endpoints of the snapshot in force.
#[derive(Default)]
pub struct SubsetCache {
    entries: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for SubsetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubsetCache").finish_non_exhaustive()
    }
}

impl SubsetCache {
    /// The endpoints of `target` (the Service `service`'s port) in subset `subset`, whose
    /// labels are `labels` (`None`: the DestinationRule has no such subset, so none).
    pub fn endpoints(
        &self,
        snap: &Snapshot,
        service: &ServiceName,
        target: &ServiceTarget,
        subset: &str,
        labels: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Arc<[SocketAddr]> {
        let port = target.vip.port();
        let key = BuildHasherDefault::<DefaultHasher>::default().hash_one((service, port, subset));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(&key)
            && entry.generation == snap.generation()
            && entry.port == port
            && entry.subset == subset
            && entry.service == *service
        {
            return entry.endpoints.clone();
        }
        let endpoints: Arc<[SocketAddr]> = target
            .endpoints
            .iter()
            .copied()
            .filter(|endpoint| {
                labels.is_some_and(|labels| {
                    snap.workload_by_ip(endpoint.ip())
                        .is_some_and(|w| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                })
            })
            .collect();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                service: service.clone(),
                port,
                subset: subset.to_owned(),
                generation: snap.generation(),
                endpoints: endpoints.clone(),
            },
        );
        endpoints
    }
}
