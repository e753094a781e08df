//! Why the controller could not do something: which object, which call, and what the API
//! server said.

/// A failure of the controller's work on one waypoint, or of its start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A server-side apply was refused or failed.
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        /// The kind applied.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the client or the API server said.
        source: kube::Error,
    },
    /// Deleting a cluster-scoped object (a waypoint's binding) was refused or failed.
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        /// The kind deleted.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What the client or the API server said.
        source: kube::Error,
    },
    /// Writing a Gateway's status failed.
    #[error("writing the status of gateway {gateway}: {source}")]
    Status {
        /// `namespace/name`.
        gateway: String,
        /// What the client or the API server said.
        source: kube::Error,
    },
    /// The leader election stopped, so whether this replica may write is unknown.
    #[error("the controller's leader election stopped")]
    ElectionStopped,
    /// The watches never listed everything once, so nothing can be decided.
    #[error("the controller's watches stopped before they were synced")]
    NotSynced,
}
