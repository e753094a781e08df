//! What the enrollment server and the hitless upgrade share, kept below both so that neither
//! imports the other: the old proxy's side of a hand-off ([`Predecessor`], which
//! [`crate::inpod::server::Enrollment`] implements and [`crate::upgrade`] drives) and the peer
//! credential check both of their root-only Unix sockets make ([`peer_uid`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::Socket;

/// The old proxy's side: what it hands over and how it stops.
pub trait Predecessor: Send + Sync + 'static {
    /// Stops the enrollment server and returns a descriptor of its listening socket, once no
    /// CNI call is in progress.
    fn pause_enrollment(&self) -> impl Future<Output = io::Result<OwnedFd>> + Send;
    /// Starts the enrollment server again (the hand-off failed).
    fn resume_enrollment(&self, fd: OwnedFd);
}

/// The uid of the process at the other end of the Unix socket `sock` (`SO_PEERCRED`).
///
/// # Errors
/// When the socket is not a connected Unix socket.
pub fn peer_uid(sock: &Socket) -> io::Result<u32> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: out-pointers to a live ucred and its length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}
