//! The live connection table and the access log: every connection the data path serves, from
//! the moment it is accepted until it ends, with both addresses, both identities and the bytes
//! moved so far; and one `access` log line for each when it ends.
//!
//! Invariants:
//! - an entry exists exactly while its [`ConnectionGuard`] does: the guard removes it when
//!   dropped, whether the connection ended, failed, panicked or its task was aborted;
//! - opening and closing take the table's lock once each; the relay adds to the byte counters
//!   per chunk with relaxed atomics and never locks;
//! - every guard emits exactly one line with target [`ACCESS_LOG_TARGET`] and message
//!   `connection` when dropped, so refused and failed connections are logged too;
//! - `marrow_connections_open{reporter}` equals the number of entries of each reporter.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redirect_cni::protocol::PodIdentity;
use serde::Serialize;

use super::policy_watch::{PolicySubject, Watched};
use crate::identity::SpiffeId;
use crate::metrics::{ConnectionLabels, LabelValue, PeerLabels, Reporter, ResponseFlag};
use crate::policy::Verdict;
use crate::state::Workload;

/// The `tracing` target of access-log lines.
pub const ACCESS_LOG_TARGET: &str = "access";

/// What the access log writes for a value that is not known (as the metrics do).
const UNKNOWN: &str = "unknown";

/// Labels of `marrow_connections_open`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpenLabels {
    /// `source` (outbound) or `destination` (inbound).
    pub reporter: Reporter,
}

/// Istio's `connection_security_policy` of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// Carried in HBONE (mutual TLS).
    MutualTls,
    /// Plaintext.
    None,
}

impl Security {
    /// `mutual_tls` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
        }
    }
}

/// Who connected to whom: fixed when the connection is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// `Source` for a pod's outbound connection, `Destination` for one to the pod.
    pub reporter: Reporter,
    /// The local pod, `namespace/name`.
    pub pod: String,
    /// The client's address.
    pub src: SocketAddr,
    /// The address the client connected to.
    pub dst: SocketAddr,
    /// The client's SPIFFE ID, when known.
    pub src_identity: Option<String>,
    /// The server's SPIFFE ID, when known.
    pub dst_identity: Option<String>,
    /// The client's workload, `namespace/name`, when known.
    pub src_workload: Option<String>,
    /// The server's workload, `namespace/name`, when known.
    pub dst_workload: Option<String>,
    /// mTLS or plaintext.
    pub security: Security,
}

impl ConnectionInfo {
    /// A plaintext connection of `pod` from `src` to `dst`, with no identity or workload known
    /// yet (the call site fills in what it knows).
    pub fn new(reporter: Reporter, pod: &PodIdentity, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            reporter,
            pod: format!("{}/{}", pod.namespace, pod.name),
            src,
            dst,
            src_identity: None,
            dst_identity: None,
            src_workload: None,
            dst_workload: None,
            security: Security::None,
        }
    }

    /// The connection of `pod` from `src` to `dst` as its metric labels describe it: the
    /// principals, the workloads (`namespace/workload`) and the security policy.
    pub fn from_labels(
        labels: &ConnectionLabels,
        pod: &PodIdentity,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        let principal =
            |value: &LabelValue| (value.as_str() != UNKNOWN).then(|| value.as_str().to_owned());
        let workload = |peer: Option<&PeerLabels>| {
            peer.filter(|p| p.workload.as_str() != UNKNOWN)
                .map(|p| format!("{}/{}", p.namespace, p.workload))
        };
        let mutual_tls = labels.connection_security_policy.as_str() == Security::MutualTls.as_str();
        Self {
            src_identity: principal(&labels.source_principal),
            dst_identity: principal(&labels.destination_principal),
            src_workload: workload(labels.source.as_deref()),
            dst_workload: workload(labels.destination.as_deref()),
            security: if mutual_tls {
                Security::MutualTls
            } else {
                Security::None
            },
            ..Self::new(labels.reporter, pod, src, dst)
        }
    }

    /// The same connection in mutual TLS between these identities.
    pub fn with_mutual_tls(self, src: &SpiffeId, dst: &SpiffeId) -> Self {
        Self {
            src_identity: Some(src.to_string()),
            dst_identity: Some(dst.to_string()),
            security: Security::MutualTls,
            ..self
        }
    }

    /// `namespace/name` of a workload of the state (its owner's name, as the metrics label it).
    pub fn workload_name(workload: &Workload) -> String {
        format!("{}/{}", workload.namespace, workload.workload_name)
    }

    /// `outbound` (reporter `source`) or `inbound` (reporter `destination`).
    pub fn direction(&self) -> &'static str {
        match self.reporter {
            Reporter::Source => "outbound",
            Reporter::Destination => "inbound",
        }
    }

    /// `source` or `destination`.
    pub fn reporter_name(&self) -> &'static str {
        self.reporter.as_str()
    }
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
    info: ConnectionInfo,
    opened: Instant,
    opened_at: SystemTime,
    bytes: ByteCounters,
    /// Set on admitted inbound connections: what their policy decision depends on.
    watched: OnceLock<Arc<Watched>>,
}

/// One connection as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionView {
    /// Unique in this process, in order of opening.
    pub id: u64,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `source` or `destination`.
    pub reporter: &'static str,
    /// The local pod, `namespace/name`.
    pub pod: String,
    /// The client's address.
    pub src: SocketAddr,
    /// The address the client connected to.
    pub dst: SocketAddr,
    /// The client's SPIFFE ID.
    pub src_identity: Option<String>,
    /// The server's SPIFFE ID.
    pub dst_identity: Option<String>,
    /// The client's workload, `namespace/name`.
    pub src_workload: Option<String>,
    /// The server's workload, `namespace/name`.
    pub dst_workload: Option<String>,
    /// `mutual_tls` or `none`.
    pub security: Security,
    /// Bytes from the client towards the server so far.
    pub bytes_sent: u64,
    /// Bytes from the server to the client so far.
    pub bytes_received: u64,
    /// Milliseconds since the connection was accepted.
    pub age_ms: u64,
    /// When it was accepted, Unix milliseconds.
    pub opened_unix_ms: u64,
}

/// The connections open now, shared by every pod's data path and the admin API.
pub struct ConnectionTable {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Connection>>>,
    gauge: Family<OpenLabels, Gauge>,
    /// The gauge's two series, resolved once: updating them takes no lock.
    source_open: Gauge,
    destination_open: Gauge,
}

impl Default for ConnectionTable {
    fn default() -> Self {
        let gauge = Family::<OpenLabels, Gauge>::default();
        let series = |reporter| gauge.get_or_create(&OpenLabels { reporter }).clone();
        Self {
            next_id: AtomicU64::new(1),
            entries: Mutex::new(HashMap::new()),
            source_open: series(Reporter::Source),
            destination_open: series(Reporter::Destination),
            gauge,
        }
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
    /// Registers a connection; it stays in the table until the guard is dropped, which also
    /// writes its access-log line.
    pub fn open(self: &Arc<Self>, info: ConnectionInfo) -> ConnectionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Connection {
            id,
            info,
            opened: Instant::now(),
            opened_at: SystemTime::now(),
            bytes: ByteCounters::default(),
            watched: OnceLock::new(),
        });
        self.series(entry.info.reporter).inc();
        self.lock().insert(id, entry.clone());
        ConnectionGuard {
            table: self.clone(),
            entry,
            end: End::default(),
        }
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
    pub fn snapshot(&self) -> Vec<ConnectionView> {
        let entries: Vec<Arc<Connection>> = self.lock().values().cloned().collect();
        let mut views: Vec<ConnectionView> = entries.iter().map(|c| c.view()).collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// The connections whose policy decision is followed (admitted inbound ones).
    pub fn watched(&self) -> Vec<Arc<Watched>> {
        self.lock()
            .values()
            .filter_map(|c| c.watched.get().cloned())
            .collect()
    }

    /// `marrow_connections_open`, for the metrics registry.
    pub fn gauge(&self) -> Family<OpenLabels, Gauge> {
        self.gauge.clone()
    }

    fn remove(&self, entry: &Connection) {
        self.lock().remove(&entry.id);
        self.series(entry.info.reporter).dec();
    }

    fn series(&self, reporter: Reporter) -> &Gauge {
        match reporter {
            Reporter::Source => &self.source_open,
            Reporter::Destination => &self.destination_open,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        // Nothing panics while the lock is held: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Connection {
    fn view(&self) -> ConnectionView {
        let (bytes_sent, bytes_received) = self.bytes.get();
        let info = &self.info;
        ConnectionView {
            id: self.id,
            direction: info.direction(),
            reporter: info.reporter_name(),
            pod: info.pod.clone(),
            src: info.src,
            dst: info.dst,
            src_identity: info.src_identity.clone(),
            dst_identity: info.dst_identity.clone(),
            src_workload: info.src_workload.clone(),
            dst_workload: info.dst_workload.clone(),
            security: info.security,
            bytes_sent,
            bytes_received,
            age_ms: millis(self.opened.elapsed().as_millis()),
            opened_unix_ms: self
                .opened_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| millis(d.as_millis())),
        }
    }
}

/// How a connection ended, as the access log reports it. Kept small (boxed text, one-byte
/// flags): every open connection's future holds one.
#[derive(Debug)]
struct End {
    decision: Verdict,
    /// The response flag of a failure, when one was recorded.
    failure_flag: Option<ResponseFlag>,
    reason: Option<Box<str>>,
    error: Option<Box<str>>,
}

impl Default for End {
    fn default() -> Self {
        Self {
            decision: Verdict::Allow,
            failure_flag: None,
            reason: None,
            error: None,
        }
    }
}

impl End {
    /// Istio's response flags: `DENY` (policy), the failure's flag (`UF`, `CONNECT`, …), else
    /// `-`.
    fn response_flags(&self) -> &'static str {
        match (self.decision, self.failure_flag) {
            (Verdict::Deny, _) => "DENY",
            (Verdict::Allow, Some(flag)) => flag.as_str(),
            (Verdict::Allow, None) => "-",
        }
    }
}

/// A connection's place in the table; dropping it removes the entry and writes the access-log
/// line with what the connection's handler recorded on it.
#[must_use = "the connection leaves the table when the guard is dropped"]
#[derive(Debug)]
pub struct ConnectionGuard {
    table: Arc<ConnectionTable>,
    entry: Arc<Connection>,
    end: End,
}

impl ConnectionGuard {
    /// The counters the relay adds to.
    pub fn bytes(&self) -> &ByteCounters {
        &self.entry.bytes
    }

    /// The entry's id in the table.
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// Policy admitted the connection; `reason` names the deciding policy when one decided.
    pub fn allow(&mut self, reason: Option<String>) {
        self.end.decision = Verdict::Allow;
        self.end.reason = reason.map(String::into_boxed_str);
    }

    /// Has the policy watcher follow this admitted connection: when a new state denies
    /// `subject`, the returned handle's [`Watched::revoked`] resolves.
    pub fn follow_policy(&self, subject: PolicySubject) -> Arc<Watched> {
        self.entry
            .watched
            .get_or_init(|| Arc::new(Watched::new(subject)))
            .clone()
    }

    /// Policy (AuthorizationPolicy or STRICT PeerAuthentication) refused the connection.
    pub fn deny(&mut self, reason: String) {
        self.end.decision = Verdict::Deny;
        self.end.reason = Some(reason.into_boxed_str());
    }

    /// The upstream (or the app) could not be reached (Istio's `UF`).
    pub fn upstream_failed(&mut self, error: String) {
        self.failed_with(ResponseFlag::UpstreamFailure, error);
    }

    /// The connection failed with this response flag (ztunnel's at the source: `CONNECT`, …).
    pub fn failed_with(&mut self, flag: ResponseFlag, error: String) {
        self.end.failure_flag = Some(flag);
        self.end.error = Some(error.into_boxed_str());
    }

    /// The connection failed or was refused for a reason other than policy, or its relay
    /// ended with an error.
    pub fn fail(&mut self, error: String) {
        self.end.error = Some(error.into_boxed_str());
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.table.remove(&self.entry);
        let entry = &self.entry;
        let info = &entry.info;
        let (bytes_sent, bytes_received) = entry.bytes.get();
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            direction = info.direction(),
            reporter = info.reporter_name(),
            src = %info.src,
            dst = %info.dst,
            src_identity = info.src_identity.as_deref().unwrap_or(UNKNOWN),
            dst_identity = info.dst_identity.as_deref().unwrap_or(UNKNOWN),
            src_workload = info.src_workload.as_deref().unwrap_or(UNKNOWN),
            dst_workload = info.dst_workload.as_deref().unwrap_or(UNKNOWN),
            security = info.security.as_str(),
            bytes_sent,
            bytes_received,
            duration_ms = millis(entry.opened.elapsed().as_millis()),
            decision = %self.end.decision,
            reason = self.end.reason.as_deref(),
            response_flags = self.end.response_flags(),
            error = self.end.error.as_deref(),
            "connection"
        );
    }
}

fn millis(ms: u128) -> u64 {
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
