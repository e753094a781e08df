//! One record per connection, as ztunnel's `ConnectionResult` (src/proxy/metrics.rs): made
//! when the proxy takes a connection on, it is the connection's entry in the live table; when
//! finished, or dropped unfinished, it counts the close and the bytes, and writes the
//! connection's one access-log line, deriving the response flag from the error it ended with.
//!
//! Invariants:
//! - `istio_tcp_connections_opened_total` is counted once per connection, when its fate at
//!   setup is known: with no flag when the relay starts ([`ConnectionRecord::established`]),
//!   or with the failure's flag when it ends before (`DENY`, `UF`, `CONNECT`, … count opened
//!   and closed with that flag, as marrow always has);
//! - a connection refused before it was established with an error that has no flag (a request
//!   refused as malformed or as a self-call, a client gone before its tunnel opened) is logged
//!   but not counted, as ztunnel logs such an "early deny" without metrics;
//! - every record writes exactly one line with target [`ACCESS_LOG_TARGET`] and message
//!   `connection` when dropped, so refused and failed connections are logged too.

use std::fmt;
use std::sync::Arc;

use super::connections::{ByteCounters, Connection, ConnectionFacts, ConnectionTable, UNKNOWN};
use super::policy_watch::{PolicySubject, Watched};
use crate::metrics::Metrics;
use marrow_mesh::policy::Verdict;
use marrow_mesh::telemetry::ResponseFlag;

/// The `tracing` target of access-log lines.
pub const ACCESS_LOG_TARGET: &str = "access";

/// Which side of a connection a failure came from (as pingora's errors say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The server: the app, the peer's proxy, a passthrough destination.
    Upstream,
    /// The client, or what it asked for.
    Downstream,
    /// The proxy itself: its state, certificates or configuration.
    Internal,
}

/// Why a connection ended badly: every error of the data path says from which side, and what
/// Istio's `response_flags` make of it.
pub trait Failure: fmt::Display {
    /// The side the failure came from.
    fn side(&self) -> Side;

    /// The response flag of a connection ending with this failure; `None` writes `-`.
    fn response_flag(&self) -> Option<ResponseFlag>;
}

/// How a connection ended, as the access log reports it. Kept small (boxed text, one-byte
/// flags): every open connection's future holds one.
#[derive(Debug)]
struct End {
    decision: Verdict,
    /// The response flag of a failure, when one was recorded.
    flag: Option<ResponseFlag>,
    reason: Option<Box<str>>,
    error: Option<Box<str>>,
}

/// A connection from the moment the proxy takes it on until it ends: its entry in the table,
/// its metrics and its access-log line.
#[must_use = "the connection is counted and logged when the record is dropped"]
#[derive(Debug)]
pub struct ConnectionRecord {
    table: Arc<ConnectionTable>,
    entry: Arc<Connection>,
    metrics: Arc<Metrics>,
    /// Whether the relay started (opened is then counted already).
    established: bool,
    end: End,
}

impl ConnectionRecord {
    /// Registers the connection `facts` describes in `table`.
    pub fn open(
        table: &Arc<ConnectionTable>,
        metrics: &Arc<Metrics>,
        facts: ConnectionFacts,
    ) -> Self {
        Self {
            entry: table.insert(facts),
            table: table.clone(),
            metrics: metrics.clone(),
            established: false,
            end: End {
                decision: Verdict::Allow,
                flag: None,
                reason: None,
                error: None,
            },
        }
    }

    /// The counters the relay adds to.
    pub fn bytes(&self) -> &ByteCounters {
        self.entry.bytes()
    }

    /// The entry's id in the table.
    pub fn id(&self) -> u64 {
        self.entry.id()
    }

    /// Policy admitted the connection; `reason` names the deciding policy when one decided.
    pub fn allow(&mut self, reason: Option<String>) {
        self.end.decision = Verdict::Allow;
        self.end.reason = reason.map(String::into_boxed_str);
    }

    /// Has the policy watcher follow this admitted connection: when a new state denies
    /// `subject`, the returned handle's [`Watched::revoked`] resolves.
    pub fn follow_policy(&self, subject: PolicySubject) -> Arc<Watched> {
        self.entry.follow_policy(subject)
    }

    /// Both ends are connected and the relay starts: counts the connection opened.
    pub fn established(&mut self) {
        if !self.established {
            self.established = true;
            self.metrics
                .opened
                .get_or_create(&self.entry.facts().peers)
                .inc();
        }
    }

    /// Ends the connection with `result`: a failure sets the response flag (a policy denial is
    /// the decision `deny` with the failure as its reason; any other is the access log's
    /// `error`). Dropping the record counts and logs it.
    pub fn finish<E: Failure>(mut self, result: Result<(), E>) {
        let Err(failure) = result else {
            return;
        };
        let flag = failure.response_flag();
        self.end.flag = flag;
        if flag == Some(ResponseFlag::Deny) {
            self.end.decision = Verdict::Deny;
            self.end.reason = Some(failure.to_string().into_boxed_str());
        } else {
            self.end.error = Some(failure.to_string().into_boxed_str());
        }
    }

    /// Ends a try that is retried under a new record (a connect to another endpoint): logged
    /// with `failure` as its error, counted nowhere, so the connection counts once, as the
    /// try that carries it (or fails last).
    pub fn retried<E: Failure>(mut self, failure: &E) {
        self.end.error = Some(format!("retried on another endpoint: {failure}").into_boxed_str());
    }

    /// Counts the end: opened (unless [`ConnectionRecord::established`] did), closed and, for
    /// an established connection, its bytes — all with the end's flag.
    fn count(&self) {
        if !self.established && self.end.flag.is_none() {
            return;
        }
        let mut labels = self.entry.facts().peers.clone();
        labels.response_flags = self.end.flag;
        let metrics = &self.metrics;
        if self.established {
            let (sent, received) = self.entry.bytes().get();
            metrics.sent_bytes.get_or_create(&labels).inc_by(sent);
            metrics
                .received_bytes
                .get_or_create(&labels)
                .inc_by(received);
        } else {
            metrics.opened.get_or_create(&labels).inc();
        }
        metrics.closed.get_or_create(&labels).inc();
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        self.table.remove(&self.entry);
        self.count();
        let entry = &self.entry;
        let facts = entry.facts();
        let (bytes_sent, bytes_received) = entry.bytes().get();
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            direction = facts.direction(),
            reporter = facts.reporter().as_str(),
            src = %facts.src,
            dst = %facts.dst,
            src_identity = facts.src_identity().unwrap_or(UNKNOWN),
            dst_identity = facts.dst_identity().unwrap_or(UNKNOWN),
            src_workload = facts.src_workload().as_deref().unwrap_or(UNKNOWN),
            dst_workload = facts.dst_workload().as_deref().unwrap_or(UNKNOWN),
            security = facts.security().as_str(),
            bytes_sent,
            bytes_received,
            duration_ms = millis(entry.age().as_millis()),
            decision = %self.end.decision,
            reason = self.end.reason.as_deref(),
            response_flags = ResponseFlag::label(self.end.flag),
            error = self.end.error.as_deref(),
            "connection"
        );
    }
}

/// Milliseconds as a `u64`, saturating.
pub fn millis(ms: u128) -> u64 {
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
