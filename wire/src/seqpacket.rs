//! One message per datagram on a Unix `SOCK_SEQPACKET` socket, with at most one file descriptor
//! attached (`SCM_RIGHTS`): the transport of the enrollment protocol ([`crate::enrollment`]) and
//! of the node proxy's hand-off to its successor.
//!
//! Invariants: a datagram is at most [`MAX_MESSAGE_BYTES`] and carries at most [`MAX_FDS`]
//! descriptors; a larger one, or one whose ancillary data was truncated, is refused as a whole
//! and any descriptors that did arrive are closed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Largest datagram accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most file descriptors a datagram may carry.
pub const MAX_FDS: usize = 1;

/// A received datagram: its bytes and any descriptors that came with it.
#[derive(Debug)]
pub struct Datagram {
    /// Payload bytes.
    pub bytes: Vec<u8>,
    /// Descriptors received with `SCM_RIGHTS` (already owned: they close on drop).
    pub fds: Vec<OwnedFd>,
}

/// Sends `bytes` as one datagram, with `fd` attached as `SCM_RIGHTS` when given.
pub fn send_datagram(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut control = ControlBuf::new();
    let control_len = fd
        .map(|fd| control.write_scm_rights(fd.as_raw_fd()))
        .unwrap_or(0);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    if control_len > 0 {
        hdr.msg_control = control.as_mut_ptr();
        hdr.msg_controllen = control_len as _;
    }
    // SAFETY: every pointer in `hdr` refers to live buffers of the stated lengths.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const hdr, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "datagram sent partially",
        ));
    }
    Ok(())
}

/// Receives one datagram of at most [`MAX_MESSAGE_BYTES`] and at most [`MAX_FDS`] descriptors.
///
/// Returns `Ok(None)` when the peer closed the connection. Truncated payloads or ancillary data
/// are an error, and any descriptors that did arrive are closed.
pub fn recv_datagram(sock: BorrowedFd<'_>) -> io::Result<Option<Datagram>> {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut control = ControlBuf::new();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr();
    hdr.msg_controllen = ControlBuf::LEN as _;
    // SAFETY: every pointer in `hdr` refers to live buffers of the stated lengths.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let fds = control.read_scm_rights(hdr.msg_controllen as usize);
    if hdr.msg_flags & libc::MSG_TRUNC != 0 || n > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message larger than 64 KiB",
        ));
    }
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors",
        ));
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some(Datagram { bytes: buf, fds }))
}

/// An ancillary-data buffer aligned for `cmsghdr`, with room for a few descriptors (so that a
/// sender exceeding [`MAX_FDS`] is detected and its descriptors closed, not left dangling).
struct ControlBuf([u64; 8]);

impl ControlBuf {
    const LEN: usize = 64;

    fn new() -> Self {
        Self([0; 8])
    }

    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr().cast()
    }

    /// Writes a `SCM_RIGHTS` message for one descriptor; returns the bytes used.
    fn write_scm_rights(&mut self, fd: RawFd) -> usize {
        let fd_len = std::mem::size_of::<RawFd>() as libc::c_uint;
        // SAFETY: CMSG_SPACE/CMSG_LEN/CMSG_LEN(0) are pure arithmetic.
        let (space, len, data_at) = unsafe {
            (
                libc::CMSG_SPACE(fd_len),
                libc::CMSG_LEN(fd_len),
                libc::CMSG_LEN(0),
            )
        };
        let hdr = libc::cmsghdr {
            cmsg_len: len as _,
            cmsg_level: libc::SOL_SOCKET,
            cmsg_type: libc::SCM_RIGHTS,
        };
        let base = self.0.as_mut_ptr().cast::<u8>();
        // SAFETY: CMSG_SPACE(4) is 24 on Linux, within the 64-byte buffer.
        unsafe {
            std::ptr::write_unaligned(base.cast::<libc::cmsghdr>(), hdr);
            std::ptr::write_unaligned(base.add(data_at as usize).cast::<RawFd>(), fd);
        }
        space as usize
    }

    /// Takes ownership of every descriptor in the first `len` bytes' `SCM_RIGHTS` messages.
    fn read_scm_rights(&self, len: usize) -> Vec<OwnedFd> {
        let control = self.bytes(len);
        let mut fds = Vec::new();
        let header = std::mem::size_of::<libc::cmsghdr>();
        // SAFETY: CMSG_LEN is pure arithmetic.
        let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
        let mut offset = 0usize;
        while offset + header <= control.len() {
            // SAFETY: bounds checked above; read_unaligned copes with any alignment.
            let hdr: libc::cmsghdr =
                unsafe { std::ptr::read_unaligned(control.as_ptr().add(offset).cast()) };
            let len = hdr.cmsg_len as usize;
            if len < data_offset || offset + len > control.len() {
                break;
            }
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                let count = (len - data_offset) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let at = offset + data_offset + i * std::mem::size_of::<RawFd>();
                    // SAFETY: within this message's `len`, checked above.
                    let raw: RawFd =
                        unsafe { std::ptr::read_unaligned(control.as_ptr().add(at).cast()) };
                    // SAFETY: the kernel just installed this descriptor for us alone.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
            let align = std::mem::size_of::<usize>();
            offset += len.div_ceil(align) * align;
        }
        fds
    }

    fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: viewing a u64 array as bytes is always valid.
        let all: &[u8] = unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), Self::LEN) };
        &all[..len.min(Self::LEN)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use std::os::fd::AsFd;

    fn pair() -> (Socket, Socket) {
        Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap()
    }

    #[test]
    fn oversized_datagram_is_refused() {
        let (a, b) = pair();
        a.set_send_buffer_size(4 * MAX_MESSAGE_BYTES).unwrap();
        b.set_recv_buffer_size(4 * MAX_MESSAGE_BYTES).unwrap();
        send_datagram(a.as_fd(), &vec![b'x'; MAX_MESSAGE_BYTES + 10], None).unwrap();
        let err = recv_datagram(b.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn closed_peer_reads_as_none() {
        let (a, b) = pair();
        drop(a);
        assert!(recv_datagram(b.as_fd()).unwrap().is_none());
    }
}
