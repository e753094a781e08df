//! Network namespaces: entering a pod's netns to create sockets there, and identifying it.
//!
//! The proxy serves every pod from its own runtime, but the sockets it uses for a pod must
//! live in that pod's netns. A socket belongs to the netns of the thread that created it, so
//! [`PodNetns::run`] switches the *current* thread into the pod's netns for the duration of a
//! short synchronous closure and always switches back (as ztunnel's in-pod mode does). The
//! closure must not block or await: it only creates and configures sockets.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

/// `SO_NETNS_COOKIE` (Linux ≥ 5.14): the 64-bit cookie of a socket's netns.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The proxy's own network namespace, which every switch returns to.
#[derive(Debug)]
pub struct HostNetns {
    fd: OwnedFd,
    cookie: u64,
}

impl HostNetns {
    /// Opens the netns of the calling thread; call once at start-up, before any switch.
    pub fn current() -> io::Result<Arc<Self>> {
        let file = File::open("/proc/thread-self/ns/net")?;
        let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
        let cookie = socket_netns_cookie(probe.as_fd())?;
        Ok(Arc::new(Self {
            fd: file.into(),
            cookie,
        }))
    }

    /// The cookie of the proxy's own netns: a pod never has it.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }
}

/// A pod's network namespace, held open by descriptor so it cannot be swapped under us.
#[derive(Debug)]
pub struct PodNetns {
    fd: OwnedFd,
    cookie: u64,
    host: Arc<HostNetns>,
}

impl PodNetns {
    /// Adopts a netns descriptor (from the CNI plugin, or opened from a recorded path) and reads
    /// its cookie; fails if `fd` is not a network namespace.
    pub fn new(fd: OwnedFd, host: Arc<HostNetns>) -> io::Result<Self> {
        let mut netns = Self {
            fd,
            cookie: 0,
            host,
        };
        netns.cookie = netns.run(|| {
            let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
            socket_netns_cookie(probe.as_fd())
        })??;
        Ok(netns)
    }

    /// Opens the netns at `path` (a `CNI_NETNS` path such as `/var/run/netns/x`).
    pub fn open(path: &Path, host: Arc<HostNetns>) -> io::Result<Self> {
        let file = File::open(path)?;
        Self::new(file.into(), host)
    }

    /// The kernel's cookie for this netns (stable for its lifetime, never reused).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The netns descriptor, for attaching per-netns programs (`sk_lookup`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` with the current thread inside this netns, then switches back.
    ///
    /// Fails only if entering the netns fails. Failing to switch *back* would leave a runtime
    /// worker serving from a pod's netns, so the process aborts instead.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        setns(self.fd.as_fd())?;
        let _back = SwitchBack(&self.host);
        Ok(f())
    }
}

/// Restores the host netns on drop, also when the closure panics.
struct SwitchBack<'a>(&'a HostNetns);

impl Drop for SwitchBack<'_> {
    fn drop(&mut self) {
        if let Err(error) = setns(self.0.fd.as_fd()) {
            tracing::error!(%error, "cannot return to the proxy's netns; aborting");
            std::process::abort();
        }
    }
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid descriptor; CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads `SO_NETNS_COOKIE` of a socket.
pub fn socket_netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the out-pointers refer to a live u64 and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_round_trips_and_has_a_cookie() {
        let host = HostNetns::current().unwrap();
        let fd: OwnedFd = File::open("/proc/self/ns/net").unwrap().into();
        let ns = PodNetns::new(fd, host).unwrap();
        assert_ne!(ns.cookie(), 0);
        assert_eq!(ns.run(|| 7).unwrap(), 7);
    }

    #[test]
    fn a_file_that_is_not_a_netns_is_refused() {
        let host = HostNetns::current().unwrap();
        let fd: OwnedFd = File::open("/dev/null").unwrap().into();
        let err = PodNetns::new(fd, host).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
