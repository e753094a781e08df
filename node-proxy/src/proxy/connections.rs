//! The live connection table: every connection the data path serves, from the moment it is
//! accepted until it ends, with the facts of both ends and the bytes moved so far. The data
//! path owns it (one per proxy, shared by every pod and the admin API); entries come and go
//! with their [`ConnectionRecord`](super::record::ConnectionRecord).
//!
//! Invariants:
//! - an entry exists exactly while its record does: the record removes it when dropped,
//!   whether the connection ended, failed, panicked or its task was aborted;
//! - opening and closing take the table's lock once each; the relay adds to the byte counters
//!   per chunk with relaxed atomics and never locks;
//! - `marrow_connections_open{reporter}` equals the number of entries of each reporter.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use marrow_wire::enrollment::PodIdentity;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::policy_watch::{PolicySubject, Watched};
use crate::metrics::{Metrics, OpenLabels};
use marrow_mesh::telemetry::{ConnectionLabels, LabelValue, PeerLabels, Reporter, Security};

/// What the access log and the admin API write for a value that is not known (as the metrics
/// do).
pub const UNKNOWN: &str = "unknown";

/// The one description of a connection, fixed when the proxy takes it on: who connected to
/// whom, at which addresses, for which local pod. The admin view, the access log and the
/// `istio_tcp_*` labels are all derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// The local pod, `namespace/name` (shared by the pod's connections).
    pub pod: Arc<str>,
    /// The client's address.
    pub src: SocketAddr,
    /// The address the client connected to.
    pub dst: SocketAddr,
    /// Both ends as Istio describes them (workloads, principals, the addressed Service, mTLS or
    /// not); no response flag: the record sets it from the connection's end.
    pub peers: ConnectionLabels,
}

impl ConnectionFacts {
    /// The connection of `pod` from `src` to `dst` between the ends `peers` describes.
    pub fn new(
        peers: ConnectionLabels,
        pod: &PodIdentity,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        Self::with_pod(
            peers,
            Arc::from(format!("{}/{}", pod.namespace, pod.name)),
            src,
            dst,
        )
    }

    /// The connection of the pod `pod` (`namespace/name`) from `src` to `dst` between the
    /// ends `peers` describes.
    pub fn with_pod(
        peers: ConnectionLabels,
        pod: Arc<str>,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        Self {
            pod,
            src,
            dst,
            peers,
        }
    }

    /// A plaintext connection of `pod` from `src` to `dst` whose ends are not known.
    pub fn plain(reporter: Reporter, pod: &PodIdentity, src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(ConnectionLabels::unknown(reporter), pod, src, dst)
    }

    /// `Source` for a pod's outbound connection, `Destination` for one to the pod.
    pub fn reporter(&self) -> Reporter {
        self.peers.reporter
    }

    /// `outbound` (reporter `source`) or `inbound` (reporter `destination`).
    pub fn direction(&self) -> &'static str {
        match self.reporter() {
            Reporter::Source => "outbound",
            // A node proxy never reports as a waypoint; a waypoint's traffic is inbound to it.
            Reporter::Destination | Reporter::Waypoint => "inbound",
        }
    }

    /// The client's SPIFFE ID, when its certificate proved it.
    pub fn src_identity(&self) -> Option<&str> {
        known(&self.peers.source_principal)
    }

    /// The server's SPIFFE ID, when its certificate proved it.
    pub fn dst_identity(&self) -> Option<&str> {
        known(&self.peers.destination_principal)
    }

    /// The client's workload, `namespace/workload`, when known.
    pub fn src_workload(&self) -> Option<String> {
        workload(self.peers.source.as_deref())
    }

    /// The server's workload, `namespace/workload`, when known.
    pub fn dst_workload(&self) -> Option<String> {
        workload(self.peers.destination.as_deref())
    }

    /// mTLS or plaintext.
    pub fn security(&self) -> Security {
        self.peers.connection_security_policy
    }
}

fn known(value: &LabelValue) -> Option<&str> {
    (value.as_str() != UNKNOWN).then(|| value.as_str())
}

fn workload(peer: Option<&PeerLabels>) -> Option<String> {
    peer.filter(|p| p.workload.as_str() != UNKNOWN)
        .map(|p| format!("{}/{}", p.namespace, p.workload))
}

/// Bytes moved so far; the relay adds to them per chunk.
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// From the client towards the server (Istio's "sent").
    pub to_upstream: AtomicU64,
    /// From the server back to the client (Istio's "received").
    pub to_client: AtomicU64,
}

impl ByteCounters {
    /// (to upstream, to client) now.
    pub fn get(&self) -> (u64, u64) {
        (
            self.to_upstream.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

/// One entry of the table.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    facts: ConnectionFacts,
    opened: Instant,
    opened_at: SystemTime,
    bytes: ByteCounters,
    /// Set on admitted inbound connections: what their policy decision depends on.
    watched: OnceLock<Arc<Watched>>,
}

impl Connection {
    /// Unique in this process, in order of opening.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who connected to whom.
    pub fn facts(&self) -> &ConnectionFacts {
        &self.facts
    }

    /// The bytes moved so far.
    pub fn bytes(&self) -> &ByteCounters {
        &self.bytes
    }

    /// How long it has been open.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    /// When it was accepted.
    pub fn opened_at(&self) -> SystemTime {
        self.opened_at
    }

    /// Has the policy watcher follow this admitted connection: when a new state denies
    /// `subject`, the returned handle's [`Watched::revoked`] resolves.
    pub fn follow_policy(&self, subject: PolicySubject) -> Arc<Watched> {
        self.watched
            .get_or_init(|| Arc::new(Watched::new(subject)))
            .clone()
    }
}

/// The connections open now, shared by every pod's data path and the admin API.
pub struct ConnectionTable {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Connection>>>,
    /// `marrow_connections_open`'s two series, resolved once: updating them takes no lock.
    source_open: Gauge,
    destination_open: Gauge,
}

impl Default for ConnectionTable {
    /// A table whose gauge is exported nowhere (tests, benchmarks).
    fn default() -> Self {
        Self::with_gauge(&Family::default())
    }
}

impl fmt::Debug for ConnectionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionTable")
            .field("open", &self.len())
            .finish_non_exhaustive()
    }
}

impl ConnectionTable {
    /// An empty table that keeps `metrics`' `marrow_connections_open`.
    pub fn new(metrics: &Metrics) -> Self {
        Self::with_gauge(&metrics.connections_open)
    }

    fn with_gauge(gauge: &Family<OpenLabels, Gauge>) -> Self {
        let series = |reporter| gauge.get_or_create(&OpenLabels { reporter }).clone();
        Self {
            next_id: AtomicU64::new(1),
            entries: Mutex::new(HashMap::new()),
            source_open: series(Reporter::Source),
            destination_open: series(Reporter::Destination),
        }
    }

    /// Registers a connection; the caller removes it with [`ConnectionTable::remove`] (the
    /// connection's record does, when dropped).
    pub(super) fn insert(&self, facts: ConnectionFacts) -> Arc<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Connection {
            id,
            facts,
            opened: Instant::now(),
            opened_at: SystemTime::now(),
            bytes: ByteCounters::default(),
            watched: OnceLock::new(),
        });
        self.series(entry.facts.reporter()).inc();
        self.lock().insert(id, entry.clone());
        entry
    }

    /// Removes a connection [`ConnectionTable::insert`] registered.
    pub(super) fn remove(&self, entry: &Connection) {
        let mut entries = self.lock();
        entries.remove(&entry.id);
        // Give a burst's capacity back once it has passed (a map grown for 10,000
        // connections holds ~300 KiB); halving only below a quarter keeps this amortised O(1).
        let len = entries.len();
        if entries.capacity() > 1024 && len * 4 < entries.capacity() {
            entries.shrink_to(len * 2);
        }
        drop(entries);
        self.series(entry.facts.reporter()).dec();
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Is no connection open?
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The open connections, oldest first.
    pub fn entries(&self) -> Vec<Arc<Connection>> {
        let mut entries: Vec<Arc<Connection>> = self.lock().values().cloned().collect();
        entries.sort_by_key(|c| c.id);
        entries
    }

    /// The connections whose policy decision is followed (admitted inbound ones).
    pub fn watched(&self) -> Vec<Arc<Watched>> {
        self.lock()
            .values()
            .filter_map(|c| c.watched.get().cloned())
            .collect()
    }

    fn series(&self, reporter: Reporter) -> &Gauge {
        match reporter {
            Reporter::Source => &self.source_open,
            Reporter::Destination | Reporter::Waypoint => &self.destination_open,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        // Nothing panics while the lock is held: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
pub(super) mod tests;
