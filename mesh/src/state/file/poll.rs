//! One check of the state file: has it changed since the last check, and if so, what it says.
//!
//! Cheap when nothing changed (one `stat`). A change in device, inode, length or modification
//! time leads to a read, which counts only if the file has been quiet for [`SETTLE`] and the
//! same `stat` holds after the read; then a content hash tells a real change from a `touch`.
//! Because a read file is at least [`SETTLE`] old, any later write gets a newer timestamp even
//! on filesystems with coarse clocks, so a recorded `stat` never hides a change.

use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{FileError, SETTLE, parse_with_root};
use crate::state::StateUpdate;

/// What one check found.
#[derive(Debug)]
pub(in crate::state) enum Check {
    /// Same file, same content as last time.
    Unchanged,
    /// The file is being written; check again later.
    Busy,
    /// New, valid content: the update it gives.
    Changed(Box<StateUpdate>),
    /// New content that is refused, and why.
    Refused(FileError),
    /// The file cannot be read (gone, permissions).
    Unreadable(io::Error),
}

/// What the file looked like when last read.
#[derive(Clone, Debug)]
pub(in crate::state) struct Poller {
    path: PathBuf,
    root_namespace: String,
    seen: Option<Fingerprint>,
    content: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl Fingerprint {
    fn of(path: &Path) -> io::Result<Self> {
        let meta = fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified().ok(),
        })
    }

    /// Modified less than [`SETTLE`] ago. A time in the future (clock skew) cannot settle by
    /// waiting, so it counts as settled.
    fn fresh(&self, now: SystemTime) -> bool {
        self.mtime
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age < SETTLE)
    }
}

impl Poller {
    /// A poller that has seen nothing yet: its first check reads the file.
    pub(in crate::state) fn new(path: PathBuf, root_namespace: String) -> Self {
        Self {
            path,
            root_namespace,
            seen: None,
            content: None,
        }
    }

    /// The file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file once (blocking I/O).
    pub(in crate::state) fn check(&mut self) -> Check {
        let before = match Fingerprint::of(&self.path) {
            Ok(fingerprint) => fingerprint,
            Err(error) => return self.unreadable(error),
        };
        if self.seen == Some(before) {
            return Check::Unchanged;
        }
        if before.fresh(SystemTime::now()) {
            return Check::Busy;
        }
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) => return self.unreadable(error),
        };
        match Fingerprint::of(&self.path) {
            Ok(after) if after == before => {}
            _ => return Check::Busy,
        }
        self.seen = Some(before);
        let mut hasher = DefaultHasher::new();
        hasher.write(&bytes);
        let hash = hasher.finish();
        if self.content == Some(hash) {
            return Check::Unchanged;
        }
        // Recorded for refused content too, so one bad version is reported once.
        self.content = Some(hash);
        match parse_with_root(&self.path, &bytes, &self.root_namespace) {
            Ok(update) => Check::Changed(Box::new(update)),
            Err(error) => Check::Refused(error),
        }
    }

    fn unreadable(&mut self, error: io::Error) -> Check {
        // Forget the stat, not the content: the same content coming back is no change.
        self.seen = None;
        Check::Unreadable(error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_file_settles_after_the_settle_time() {
        let now = SystemTime::now();
        let at = |mtime| Fingerprint {
            dev: 1,
            ino: 1,
            len: 1,
            mtime,
        };
        assert!(at(Some(now - Duration::from_millis(10))).fresh(now));
        assert!(!at(Some(now - SETTLE)).fresh(now));
        assert!(
            !at(Some(now + Duration::from_secs(3600))).fresh(now),
            "clock skew"
        );
        assert!(!at(None).fresh(now));
    }
}
