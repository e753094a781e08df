//! cgroup2 directories owned by a test, with every process in them killed on drop.
//!
//! The cgroup2 mount is found in `/proc/self/mountinfo`. Dropping a [`Cgroup`] writes `1` to
//! `cgroup.kill` (which kills the whole subtree), waits (bounded) until `cgroup.events` reports
//! the subtree unpopulated, then removes child directories depth-first and finally its own.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::cgroup2_root;
use crate::names::PREFIX;

/// How long a drop waits for killed processes to leave the cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A cgroup2 directory; on drop its processes (and its descendants') are killed and the
/// directories removed.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/marrow-test-<name>`; a leftover of a crashed earlier run with the
    /// same name is emptied and removed first.
    ///
    /// # Panics
    /// When cgroup2 is not mounted or the directory cannot be created.
    pub fn new(name: &str) -> Cgroup {
        let root = cgroup2_root().expect("cgroup2 is not mounted");
        Cgroup::create(root.join(format!("{PREFIX}{name}")))
    }

    /// Creates (or re-creates) the cgroup at `path`.
    fn create(path: PathBuf) -> Cgroup {
        if path.exists() {
            eprintln!("removing stale cgroup {}", path.display());
            remove_tree(&path);
        }
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Creates the child cgroup `<self>/<name>`, with its own guard.
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::create(self.path.join(name))
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` into this cgroup.
    pub fn add_process(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", self.path.display()));
    }

    /// The processes directly in this cgroup (not its children).
    pub fn procs(&self) -> Vec<u32> {
        read_procs(&self.path)
    }

    /// Whether any process is in this cgroup or below it.
    pub fn populated(&self) -> bool {
        populated(&self.path)
    }

    /// Kills every process in this cgroup and below, and waits (bounded) until they are gone.
    pub fn kill_all(&self) {
        kill_and_wait(&self.path);
    }

    /// Whether a cgroup directory `marrow-test-<name>` exists under the cgroup2 root.
    pub fn exists(name: &str) -> bool {
        cgroup2_root().is_some_and(|root| root.join(format!("{PREFIX}{name}")).exists())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.path.exists() {
            remove_tree(&self.path);
        }
    }
}

fn read_procs(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn populated(path: &Path) -> bool {
    match std::fs::read_to_string(path.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 1"),
        // No cgroup.events (or gone): fall back to this level's process list.
        Err(_) => !read_procs(path).is_empty(),
    }
}

fn kill_and_wait(path: &Path) {
    if !populated(path) {
        return;
    }
    if let Err(e) = std::fs::write(path.join("cgroup.kill"), "1") {
        // Kernels before 5.14 lack cgroup.kill: signal each process instead.
        eprintln!(
            "warning: {}/cgroup.kill: {e}; sending SIGKILL per process",
            path.display()
        );
        kill_each(path);
    }
    let deadline = Instant::now() + KILL_WAIT;
    while populated(path) {
        if Instant::now() > deadline {
            eprintln!(
                "warning: processes still in {} after {KILL_WAIT:?}: {:?}",
                path.display(),
                read_procs(path)
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_each(path: &Path) {
    for pid in read_procs(path) {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for child in child_dirs(path) {
        kill_each(&child);
    }
}

fn child_dirs(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills everything in the subtree at `path`, then removes its directories depth-first.
/// Never panics: it runs from `Drop`, possibly during a panic.
fn remove_tree(path: &Path) {
    kill_and_wait(path);
    rmdir_tree(path);
}

fn rmdir_tree(path: &Path) {
    for child in child_dirs(path) {
        rmdir_tree(&child);
    }
    // A cgroup directory holds only kernel files: rmdir (not remove_dir_all) is the way.
    // EBUSY right after the last process exited is transient, so retry briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("warning: cannot remove cgroup {}: {e}", path.display());
                return;
            }
        }
    }
}
