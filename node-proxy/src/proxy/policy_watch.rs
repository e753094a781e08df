//! Open inbound connections follow policy: the decision taken when a connection was accepted
//! is taken again, by the same function, on every new state, and a connection it now denies
//! is closed.
//!
//! As ztunnel (`src/proxy/connection_manager.rs`, `PolicyWatcher`): every published state
//! re-checks the tracked inbound connections — HBONE streams and captured plaintext alike — and
//! those denied are told to close. The connection's own task does the closing, so it counts and
//! logs the end as any other: `response_flags="DENY"` on its close-time counters (ztunnel's
//! `AuthorizationPolicyLateRejection` maps to `DENY` in `src/proxy/metrics.rs`), one
//! `marrow_policy_denials_total{reason}`, and the access-log line naming the deciding policy.
//!
//! Invariants:
//! - [`decide`] is the one decision: the accept path and the watcher both call it, so a
//!   connection is closed exactly when a new connection with the same facts would be refused;
//! - a connection is revoked at most once; revoking never blocks (the watcher only signals);
//! - connections whose decision does not change are not touched.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use super::connections::ConnectionTable;
use super::record::{Failure, Side};
use crate::metrics::DenialReason;
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::policy;
use marrow_mesh::state::{Snapshot, StateStore, Workload};
use marrow_mesh::telemetry::ResponseFlag;

/// What a policy decision about one inbound connection depends on, fixed when it was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySubject {
    /// The local pod's addresses (its workload is looked up in each new state).
    pub pod_ips: Box<[IpAddr]>,
    /// The client's verified identity; `None` for plaintext.
    pub source_principal: Option<SpiffeId>,
    /// The client's address.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// A refusal: the metric reason and the explanation naming the deciding policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `marrow_policy_denials_total{reason}`.
    pub reason: DenialReason,
    /// Which policy and rule decided, or that none allowed.
    pub explanation: String,
}

/// A connection policy refused, when it was accepted or on a later state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Refused when accepted.
    #[error("{}", .0.explanation)]
    Denied(Denial),
    /// Admitted, then closed because a new state denies it (ztunnel's
    /// `AuthorizationPolicyLateRejection`).
    #[error("closed after a policy change: {}", .0.explanation)]
    Revoked(Denial),
}

impl PolicyError {
    /// The denial.
    pub fn denial(&self) -> &Denial {
        match self {
            PolicyError::Denied(denial) | PolicyError::Revoked(denial) => denial,
        }
    }
}

impl Failure for PolicyError {
    /// The client: it is not allowed to reach this workload.
    fn side(&self) -> Side {
        Side::Downstream
    }

    /// `DENY`, both when accepted and later (ztunnel maps its late rejection to `DENY` too).
    fn response_flag(&self) -> Option<ResponseFlag> {
        Some(ResponseFlag::Deny)
    }
}

/// The policy decision for a connection to a local pod: the waypoint it sits behind, if any,
/// then PeerAuthentication for plaintext, then AuthorizationPolicy. `Ok(None)` when the state
/// does not know the pod (not in the mesh: no policy selects it); `Ok(Some(why))` when allowed
/// with a decision.
///
/// # Errors
/// The [`Denial`] when refused.
pub fn decide(snap: &Snapshot, subject: &PolicySubject) -> Result<Option<String>, Denial> {
    let Some(workload) = snap.workload_at(&subject.pod_ips) else {
        return Ok(None);
    };
    from_waypoint(snap, workload, subject.source_principal.as_ref())?;
    let view = view_of(workload);
    if subject.source_principal.is_none() {
        policy::plaintext_allowed(snap.policies(), &view, subject.destination.port()).map_err(
            |e| Denial {
                reason: DenialReason::MtlsRequired,
                explanation: e.to_string(),
            },
        )?;
    }
    let conn = policy::ConnectionAttrs {
        source_principal: subject.source_principal.clone(),
        source_ip: subject.source.ip().to_canonical(),
        destination_ip: subject.destination.ip().to_canonical(),
        destination_port: subject.destination.port(),
    };
    let decision = policy::evaluate(snap.policies(), &view, &conn);
    match DenialReason::of(&decision) {
        Some(reason) => Err(Denial {
            reason,
            explanation: decision.reason,
        }),
        None => Ok(Some(decision.reason)),
    }
}

/// A workload behind a waypoint (its own binding, or one of its Services') accepts only that
/// waypoint's pods as clients; plaintext and every other identity are refused (see
/// `WaypointIndex::refusal`, which explains why marrow always applies it). L4 policy then sees
/// the waypoint as the client.
fn from_waypoint(
    snap: &Snapshot,
    workload: &Workload,
    principal: Option<&SpiffeId>,
) -> Result<(), Denial> {
    let client = principal.map(|p| (p.namespace(), p.service_account()));
    match snap.waypoints().refusal(workload, client) {
        None => Ok(()),
        Some(explanation) => Err(Denial {
            reason: DenialReason::NotFromWaypoint,
            explanation,
        }),
    }
}

/// The policy view of a workload.
pub fn view_of(workload: &Workload) -> policy::Destination<'_> {
    policy::Destination {
        namespace: &workload.namespace,
        name: &workload.name,
        labels: &workload.labels,
    }
}

/// An admitted connection's link to the watcher: its subject, and the signal that it must close.
#[derive(Debug)]
pub struct Watched {
    subject: PolicySubject,
    token: CancellationToken,
    denial: OnceLock<Denial>,
}

impl Watched {
    /// Watches a connection admitted with `subject`.
    pub fn new(subject: PolicySubject) -> Self {
        Self {
            subject,
            token: CancellationToken::new(),
            denial: OnceLock::new(),
        }
    }

    /// The facts its decision depends on.
    pub fn subject(&self) -> &PolicySubject {
        &self.subject
    }

    /// Tells the connection to close; only the first denial is kept.
    pub fn revoke(&self, denial: Denial) {
        if self.denial.set(denial).is_ok() {
            self.token.cancel();
        }
    }

    /// Resolves when the connection has been revoked, with the denial.
    #[expect(
        clippy::expect_used,
        reason = "revoke sets the denial before it cancels the token, and it is never unset"
    )]
    pub async fn revoked(&self) -> &Denial {
        self.token.cancelled().await;
        self.denial.get().expect("a cancelled token has its denial")
    }
}

/// Re-checks every watched connection against `snap`; revokes those now denied and returns how
/// many it revoked.
pub fn recheck(snap: &Snapshot, table: &ConnectionTable) -> usize {
    recheck_since(None, snap, table)
}

/// [`recheck`], skipping the connections whose decision cannot have changed since `previous`:
/// the same policies, the same local workload (namespace, name, labels) and the same waypoints
/// in front of it — the only inputs of [`decide`] that a state change can move.
fn recheck_since(previous: Option<&Snapshot>, snap: &Snapshot, table: &ConnectionTable) -> usize {
    let same_policies = previous.is_some_and(|prev| prev.policies() == snap.policies());
    let mut revoked = 0;
    for watched in table.watched() {
        if watched.token.is_cancelled() {
            continue;
        }
        if same_policies
            && previous.is_some_and(|prev| {
                same_workload(prev, snap, &watched.subject.pod_ips)
                    && same_guard(prev, snap, &watched.subject.pod_ips)
            })
        {
            continue;
        }
        if let Err(denial) = decide(snap, &watched.subject) {
            watched.revoke(denial);
            revoked += 1;
        }
    }
    revoked
}

/// Whether the pod at `ips` is the same workload, as policy sees it, in both snapshots.
fn same_workload(a: &Snapshot, b: &Snapshot, ips: &[IpAddr]) -> bool {
    match (a.workload_at(ips), b.workload_at(ips)) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            Arc::ptr_eq(x, y)
                || (x.namespace == y.namespace && x.name == y.name && x.labels == y.labels)
        }
        _ => false,
    }
}

/// Whether the pod at `ips` sits behind the same waypoints, admitting the same identities, in
/// both snapshots.
fn same_guard(a: &Snapshot, b: &Snapshot, ips: &[IpAddr]) -> bool {
    let guard = |s: &Snapshot| {
        s.workload_at(ips)
            .and_then(|w| s.waypoints().guard(w).cloned())
    };
    guard(a) == guard(b)
}

/// Follows `state` until it is dropped: after each published snapshot, re-checks the open
/// inbound connections of `table` whose decision may have changed.
pub async fn follow(state: Arc<StateStore>, table: Arc<ConnectionTable>) {
    let mut changes = state.subscribe();
    let mut previous = state.snapshot();
    while changes.changed().await.is_ok() {
        let snap = state.snapshot();
        let revoked = recheck_since(Some(&previous), &snap, &table);
        if revoked > 0 {
            tracing::info!(
                generation = snap.generation(),
                revoked,
                "open connections no longer allowed by policy; closing them"
            );
        }
        previous = snap;
    }
}

#[cfg(test)]
mod tests;
