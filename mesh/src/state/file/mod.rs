//! The local state file: ordinary multi-document Kubernetes YAML, reloaded when it changes.
//!
//! Used by the demo, the tests, and anyone running without a cluster. Every document is
//! validated; a file with one bad document is refused whole with the file, the document, the
//! object and the reason, and the last good snapshot stays in force. The `security.istio.io`
//! policies are the exception: one marrow cannot enforce as written costs only itself, handled
//! fail-safe and reported (see [`crate::policy`]), the same as from the API server.
//!
//! Changes are found by polling (every second by default) the file's device, inode, length and
//! modification time, then a hash of its content. Polling rather than inotify: editors and
//! `kubectl`-style tools replace the file by rename, which drops an inotify watch on the old
//! inode, and ConfigMap mounts swap a symlink; a stat per second sees all of these the same way.
//! A change is read only once the file has been quiet for [`SETTLE`] and did not change during
//! the read, so a writer that truncates and then writes is not caught half-way. A missing file
//! at start is an error; a file that disappears later leaves the last snapshot serving.

mod parse;
pub(super) mod poll;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use super::{ObjectError, SourceError, SourceWatch, StateSource, StateStore, StateUpdate};
use crate::objects::ObjectRef;
pub use parse::{parse, parse_with_root};
use poll::{Check, Poller};

/// How often the file is checked unless configured.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest poll interval: shorter ones are raised to it.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long a changed file must stay unmodified before it is read.
pub const SETTLE: Duration = Duration::from_millis(50);
/// How long [`LocalFileSource::start`] waits for a file that keeps changing.
const START_LIMIT: Duration = Duration::from_secs(5);

/// Where in the file an object is: 1-based document, and the 0-based index in a `List`'s items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The document, counting from 1 (documents are separated by `---`).
    pub document: usize,
    /// The index in the document's `items`, when the document is a `List`.
    pub item: Option<usize>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.item {
            Some(item) => write!(f, "document {}, items[{item}]", self.document),
            None => write!(f, "document {}", self.document),
        }
    }
}

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read (at start: including that it does not exist).
    #[error("state file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The file kept changing for the whole of the start-up wait.
    #[error("state file {}: still being written after {limit:?}", path.display())]
    Unsettled {
        /// The file.
        path: PathBuf,
        /// How long start-up waited.
        limit: Duration,
    },
    /// A document is not valid YAML.
    #[error("state file {}, document {document}: YAML syntax error{}: {message}",
        path.display(), at_line(*line))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The document, counting from 1.
        document: usize,
        /// Line and column (1-based) in the file, when the parser knows them.
        line: Option<(usize, usize)>,
        /// The parser's message.
        message: String,
    },
    /// A document is YAML but not a Kubernetes object.
    #[error("state file {}, {location}: not a Kubernetes object: {reason}", path.display())]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// What is missing or wrong.
        reason: &'static str,
    },
    /// An object is refused.
    #[error("state file {}, {location}: {object}: {source}", path.display())]
    Object {
        /// The file.
        path: PathBuf,
        /// Where.
        location: Location,
        /// Which object.
        object: Box<ObjectRef>,
        /// Why.
        source: Box<ObjectError>,
    },
}

fn at_line(line: Option<(usize, usize)>) -> String {
    line.map(|(l, c)| format!(" at line {l} column {c}"))
        .unwrap_or_default()
}

/// A state file and how often to check it.
#[derive(Clone, Debug)]
pub struct LocalFileSource {
    path: PathBuf,
    interval: Duration,
    root_namespace: String,
}

impl LocalFileSource {
    /// The file at `path`, checked every [`DEFAULT_POLL_INTERVAL`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            interval: DEFAULT_POLL_INTERVAL,
            root_namespace: crate::policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }

    /// Checks every `interval` instead (at least [`MIN_POLL_INTERVAL`]).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(MIN_POLL_INTERVAL);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The poll interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Policies in `root_namespace` apply mesh-wide (default `istio-system`).
    pub fn with_root_namespace(mut self, root_namespace: impl Into<String>) -> Self {
        self.root_namespace = root_namespace.into();
        self
    }

    /// Reads and validates the file once (for one-shot commands such as `explain`).
    pub fn load(&self) -> Result<StateUpdate, FileError> {
        let bytes = std::fs::read(&self.path).map_err(|source| FileError::Read {
            path: self.path.clone(),
            source,
        })?;
        parse_with_root(&self.path, &bytes, &self.root_namespace)
    }

    /// Loads the file into `store` — an error if it is missing or invalid — then keeps
    /// reloading it on a Tokio task until the returned [`FileWatch`] is dropped. The first
    /// read happens on the calling task (a start-up cost, bounded by the file's size).
    pub async fn start(self, store: Arc<StateStore>) -> Result<FileWatch, FileError> {
        let mut poller = Poller::new(self.path.clone(), self.root_namespace.clone());
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match poller.check() {
                Check::Changed(update) => {
                    let snap = store.apply(*update);
                    info!(
                        file = %self.path.display(),
                        generation = snap.generation(),
                        workloads = snap.workload_count(),
                        "state file loaded"
                    );
                    break;
                }
                Check::Refused(error) => return Err(error),
                Check::Unreadable(source) => {
                    return Err(FileError::Read {
                        path: self.path,
                        source,
                    });
                }
                Check::Busy | Check::Unchanged if Instant::now() < deadline => {
                    tokio::time::sleep(MIN_POLL_INTERVAL).await;
                }
                Check::Busy | Check::Unchanged => {
                    return Err(FileError::Unsettled {
                        path: self.path,
                        limit: START_LIMIT,
                    });
                }
            }
        }
        let task = tokio::spawn(watch(poller, store, self.interval));
        Ok(FileWatch { task })
    }
}

/// The running reload task of a [`LocalFileSource`]; dropping it stops the reloads (the last
/// snapshot stays in the store).
#[derive(Debug)]
#[must_use = "dropping the FileWatch stops the reloads"]
pub struct FileWatch {
    task: JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SourceWatch for FileWatch {}

impl StateSource for LocalFileSource {
    fn describe(&self) -> String {
        format!("--state-file {}", self.path.display())
    }

    fn start(
        self: Box<Self>,
        store: Arc<StateStore>,
    ) -> BoxFuture<'static, Result<Box<dyn SourceWatch>, SourceError>> {
        Box::pin(async move {
            let watch = LocalFileSource::start(*self, store).await?;
            Ok(Box::new(watch) as Box<dyn SourceWatch>)
        })
    }
}

async fn watch(mut poller: Poller, store: Arc<StateStore>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let file = poller.path().display().to_string();
    let mut unreadable = false;
    loop {
        ticker.tick().await;
        // Reading and parsing a large file must not hold a runtime worker the data path needs.
        let mut next = poller.clone();
        let check = match tokio::task::spawn_blocking(move || (next.check(), next)).await {
            Ok((check, next)) => {
                poller = next;
                check
            }
            Err(join_error) => {
                error!(%file, error = %join_error, "state file check failed; the last good state stays in force");
                continue;
            }
        };
        if unreadable && !matches!(check, Check::Unreadable(_)) {
            info!(%file, "state file readable again");
            unreadable = false;
        }
        match check {
            Check::Unchanged => {}
            Check::Busy => debug!(%file, "state file is being written; reading it later"),
            Check::Changed(update) => {
                let snap = store.apply(*update);
                info!(
                    %file,
                    generation = snap.generation(),
                    workloads = snap.workload_count(),
                    "state file reloaded"
                );
            }
            Check::Refused(error) => warn!(
                %error,
                generation = store.snapshot().generation(),
                "state file refused; the last good state stays in force"
            ),
            Check::Unreadable(error) if !unreadable => {
                unreadable = true;
                warn!(%file, %error, "state file unreadable; the last good state stays in force");
            }
            Check::Unreadable(_) => {}
        }
    }
}
