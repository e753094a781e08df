//! TCP to TCP inside the kernel: splice(2) moves each direction's bytes from one socket into a
//! pipe and from the pipe into the other socket, so they never enter user space (the plaintext
//! relays: same node, passthrough, plaintext inbound).
//!
//! Invariant: a pipe is drained into its destination before the next read into it, so a read
//! that would block means the source socket is empty (never that the pipe is full), and
//! nothing is left in a pipe when its direction ends.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncWrite, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::HalfError;
use super::chunks::MAX_READ;

/// What one splice into a pipe moves at most, and the pipe's size when the kernel allows
/// (`/proc/sys/fs/pipe-max-size`, 1 MiB by default; else its default 64 KiB).
const PIPE_SIZE: usize = MAX_READ;

/// One direction's pipe.
#[derive(Debug)]
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A non-blocking pipe.
    ///
    /// # Errors
    /// pipe2 failed (out of file descriptors): the caller copies instead.
    pub(super) fn new() -> io::Result<Self> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: pipe2 writes two descriptors into the two-element array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Best effort: a smaller pipe only means more splices per burst.
        // SAFETY: F_SETPIPE_SZ takes an int argument; no memory is passed.
        let _ = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(Self { read, write })
    }
}

/// Moves up to `len` bytes from `from` to `to` without blocking (one end is the pipe).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: no memory is passed; null offsets mean each descriptor's own position (sockets
    // and pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One direction: `source` to `sink` through `pipe` until the end of stream, which is passed on
/// as a write shutdown; each byte counted once it reached `sink`.
pub(super) async fn copy_half(
    source: ReadHalf<'_>,
    mut sink: WriteHalf<'_>,
    pipe: Pipe,
    counter: &AtomicU64,
) -> Result<(), HalfError> {
    let from: &TcpStream = source.as_ref();
    loop {
        from.readable().await.map_err(HalfError::Read)?;
        let read = from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE)
        });
        let mut left = match read {
            Ok(0) => {
                poll_fn(|cx| Pin::new(&mut sink).poll_shutdown(cx))
                    .await
                    .map_err(HalfError::Write)?;
                return Ok(());
            }
            Ok(n) => n,
            // The readiness was stale; try_io cleared it.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(HalfError::Read(e)),
        };
        while left > 0 {
            let to: &TcpStream = sink.as_ref();
            to.writable().await.map_err(HalfError::Write)?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(0) => return Err(HalfError::Write(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    left -= n;
                    // Relaxed: a reader of the table wants a recent count, not an ordering.
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(HalfError::Write(e)),
            }
        }
    }
}
