//! A bpffs pin directory reserved for one test node.
//!
//! The harness only reserves the path `/sys/fs/bpf/marrow-test-<name>` (mounting bpffs first if
//! needed); the proxy under test creates it and pins its maps and links there. On drop the
//! directory is removed recursively, which unpins everything in it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::host::{BPFFS_MOUNT, ensure_bpffs_mounted};
use crate::names::PREFIX;

/// The path of a node's bpffs pin directory; removed (with its pins) on drop.
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    /// Reserves `/sys/fs/bpf/marrow-test-<name>` without creating it; pins left there by a
    /// crashed earlier run are removed.
    pub fn new(name: &str) -> BpffsDir {
        ensure_bpffs_mounted();
        let path = BpffsDir::path_for(name);
        if path.exists() {
            eprintln!("removing stale bpffs directory {}", path.display());
            remove(&path);
        }
        BpffsDir { path }
    }

    /// Where the pins go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path a `BpffsDir::new(name)` reserves.
    pub fn path_for(name: &str) -> PathBuf {
        Path::new(BPFFS_MOUNT).join(format!("{PREFIX}{name}"))
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

fn remove(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => eprintln!("warning: cannot remove {}: {e}", path.display()),
    }
}
