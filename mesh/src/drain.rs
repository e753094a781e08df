//! Graceful drain: the proxy's connections are tasks of one tracker, so shutting down can stop
//! accepting, tell long-lived multiplexed connections to wind down, and then wait for what is
//! in flight, up to a deadline.
//!
//! Invariant: every task that owns a client's connection (a relay, an HBONE connection) is
//! spawned through [`Drain::spawn`]; a task spawned otherwise would be cut at exit without
//! being waited for.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The proxy's connection tasks and the signal that they should wind down.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Cancelled when draining starts.
    draining: CancellationToken,
    /// Every connection task.
    tasks: TaskTracker,
}

impl Drain {
    /// A drain handle with no tasks, not draining.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Spawns a connection task that draining waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Completes once draining has started; multiplexed connections (HBONE) await it to send
    /// GOAWAY, so peers open their next streams elsewhere.
    pub async fn started(&self) {
        self.draining.cancelled().await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Connection tasks still running.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Starts draining and waits up to `deadline` for every connection task to finish.
    /// Returns how many were still running at the deadline (0 when all finished); those are
    /// cut when the runtime shuts down.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.draining.cancel();
        self.tasks.close();
        match tokio::time::timeout(deadline, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }
}

/// Completes on SIGTERM or SIGINT (at once, with an error logged, if the handlers cannot be
/// installed: a process that cannot be told to stop should not run on).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_and_reports_the_rest_at_the_deadline() {
        let drain = Drain::new();
        let quick = drain.clone();
        drain.spawn(async move {
            quick.started().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        drain.spawn(std::future::pending());
        assert_eq!(drain.in_flight(), 2);
        assert!(!drain.is_draining());
        let left = drain.drain(Duration::from_millis(300)).await;
        assert!(drain.is_draining());
        assert_eq!(left, 1, "the pending task is still running at the deadline");
    }

    #[tokio::test]
    async fn drain_returns_once_all_tasks_finished() {
        let drain = Drain::new();
        let watcher = drain.clone();
        drain.spawn(async move { watcher.started().await });
        assert_eq!(drain.drain(Duration::from_secs(5)).await, 0);
    }
}
