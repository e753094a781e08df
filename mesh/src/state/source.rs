//! Where the cluster state comes from, behind one trait: the local file ([`super::file`]) and
//! the API server (`crate::apiserver`) are interchangeable to a program, which starts one and
//! holds what it returns.

use std::fmt::Debug;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::StateStore;
use super::file::FileError;

/// A source of cluster state for a [`StateStore`].
pub trait StateSource: Send {
    /// The setting that chose this source, for logs and errors: `--state-file /etc/x.yaml`.
    fn describe(&self) -> String;

    /// Fills `store` with a complete first version, then keeps it current until the returned
    /// watch is dropped. Resolves only once the first version is published, so a program never
    /// serves a half-known cluster.
    fn start(
        self: Box<Self>,
        store: Arc<StateStore>,
    ) -> BoxFuture<'static, Result<Box<dyn SourceWatch>, SourceError>>;
}

/// A running source; dropping it stops the updates (the last version keeps serving).
pub trait SourceWatch: Debug + Send + Sync {
    /// What readiness should say about the source, when something is wrong with it.
    fn detail(&self) -> Option<String> {
        None
    }
}

/// Why a source could not publish its first version.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The state file is unreadable or refused.
    #[error(transparent)]
    File(#[from] FileError),
}
