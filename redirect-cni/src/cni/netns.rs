//! Opening the pod's network namespace: the descriptor the node proxy enters with `setns()`.
//!
//! The descriptor is checked before it is sent: it must be a network namespace, and it must
//! not be the plugin's own (the host's), which a wrong `CNI_NETNS` would otherwise get the
//! proxy to capture.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::CniError;

/// Identity of a namespace: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The namespace a path such as `/proc/self/ns/net` refers to.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The namespace an open namespace file refers to.
    pub fn of_file(file: &File) -> io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Opens `path` read-only and close-on-exec, and checks it is a network namespace other
/// than `host`.
pub fn open(path: &str, host: Option<NetnsId>) -> Result<OwnedFd, CniError> {
    let open_err = |source| CniError::NetnsOpen {
        path: path.to_owned(),
        source,
    };
    // std opens with O_RDONLY | O_CLOEXEC.
    let file = File::open(path).map_err(open_err)?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor, which is open.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if nstype != libc::CLONE_NEWNET {
        return Err(CniError::NotANetns {
            path: path.to_owned(),
        });
    }
    if let Some(host) = host
        && NetnsId::of_file(&file).map_err(open_err)? == host
    {
        return Err(CniError::HostNetns {
            path: path.to_owned(),
        });
    }
    Ok(file.into())
}
