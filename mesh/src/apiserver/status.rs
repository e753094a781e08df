//! How the API server source is doing: whether every kind is synced, which watchers fail and
//! why. Read by readiness and the admin API.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tracing::info;

use super::watch::Kind;

/// How the source is doing, for readiness and the admin API.
#[derive(Debug, Default)]
pub struct SourceStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    last: Instant,
    why: String,
}

#[derive(Debug, Default)]
pub(super) struct StatusInner {
    /// Per kind: since when its watcher fails, when it last failed, and why.
    failing: BTreeMap<Kind, Failing>,
    pub(super) synced: bool,
}

impl SourceStatus {
    /// Whether every kind was listed once and a state is published.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// A line for readiness: `None` when all is well, else what is wrong and since when.
    pub fn detail(&self) -> Option<String> {
        let inner = self.lock();
        let parts: Vec<String> = inner
            .failing
            .iter()
            .map(|(kind, failing)| {
                format!(
                    "API server: watching {} fails for {}s ({}); the last state keeps serving",
                    kind.name(),
                    failing.since.elapsed().as_secs(),
                    failing.why
                )
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub(super) fn failing(&self, kind: Kind, why: String) {
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner.failing.entry(kind).or_insert(Failing {
            since: now,
            last: now,
            why: String::new(),
        });
        entry.last = now;
        entry.why = why;
    }

    pub(super) fn recovered(&self, kind: Kind) {
        if self.lock().failing.remove(&kind).is_some() {
            info!(kind = kind.name(), "API server watch recovered");
        }
    }

    /// The API server answered a probe started at `probed`: every kind whose last failure is
    /// older is watching again (kube-runtime's watcher emits nothing when a watch merely
    /// resumes). A kind that still fails fails again on its next attempt.
    pub(super) fn answered_since(&self, probed: Instant) {
        let mut inner = self.lock();
        let before = inner.failing.len();
        inner.failing.retain(|_, failing| failing.last >= probed);
        if inner.failing.len() < before {
            info!("API server reachable again");
        }
    }

    pub(super) fn any_failing(&self) -> bool {
        !self.lock().failing.is_empty()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
