//! Writing into the host's CNI directories so that a reader (the container runtime, another
//! installer) only ever sees the old file or the new one: write a temporary file in the same
//! directory, fsync it, set its mode, rename it over the target, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::CniInstallError;

/// Suffix of temporary files: never a CNI config extension, so a runtime listing the
/// directory mid-write ignores them.
pub(super) const TEMP_SUFFIX: &str = ".marrow-tmp";

/// Replaces (or creates) `dir/file_name` with `contents`, mode `mode`, atomically.
pub(super) fn write_atomically(
    dir: &Path,
    file_name: &str,
    contents: &[u8],
    mode: u32,
) -> Result<PathBuf, CniInstallError> {
    let target = dir.join(file_name);
    let temp = dir.join(temp_name(file_name));
    let io_err = |step, source| CniInstallError::Io {
        path: temp.clone(),
        step,
        source,
    };
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| io_err("creating", e))?;
        file.write_all(contents).map_err(|e| io_err("writing", e))?;
        // The umask may have narrowed the mode at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_err("setting the mode of", e))?;
        file.sync_all().map_err(|e| io_err("syncing", e))?;
        fs::rename(&temp, &target).map_err(|source| CniInstallError::Io {
            path: target.clone(),
            step: "renaming a temporary file over",
            source,
        })
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    sync_dir(dir)?;
    Ok(target)
}

/// Removes `path`; `false` if it was not there.
pub(super) fn remove_if_present(path: &Path) -> Result<bool, CniInstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CniInstallError::Io {
            path: path.to_path_buf(),
            step: "removing",
            source,
        }),
    }
}

/// Reads `path`; `None` if it is not there.
pub(super) fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, CniInstallError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CniInstallError::Io {
            path: path.to_path_buf(),
            step: "reading",
            source,
        }),
    }
}

/// The permission bits of `path` (0644 if it cannot be read: a new file).
pub(super) fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777)
}

/// The regular files' names in `dir`, UTF-8 only (a runtime's config names are).
pub(super) fn file_names(dir: &Path) -> Result<Vec<String>, CniInstallError> {
    let err = |source| CniInstallError::ConfDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        // Follows symlinks, as the runtime's reader does.
        if !entry.path().is_file() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

fn sync_dir(dir: &Path) -> Result<(), CniInstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CniInstallError::Io {
            path: dir.to_path_buf(),
            step: "syncing directory",
            source,
        })
}

/// A fresh hidden name next to `file_name`. Two installers (an upgrade's old and new pod) may
/// both be pid 1 in their own pid namespaces, so the clock tells them apart; the counter keeps
/// two writes of one process apart.
fn temp_name(file_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        ".{file_name}.{}.{nanos}.{n}{TEMP_SUFFIX}",
        std::process::id()
    )
}
