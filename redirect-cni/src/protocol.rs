//! The enrollment protocol between redirect-cni and the node proxy.
//!
//! One request per connection on a Unix `SOCK_SEQPACKET` socket: the plugin sends one JSON
//! [`Request`] in one datagram — for [`Request::Add`], with the pod's network namespace attached
//! as exactly one `SCM_RIGHTS` file descriptor — and the proxy answers with one JSON
//! [`Response`]. Message boundaries come from the socket type, so there is no framing to get
//! wrong; a message larger than [`MAX_MESSAGE_BYTES`] or with truncated ancillary data is
//! refused as a whole.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

/// Version of this protocol; a proxy refuses requests of another version.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request or response accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most file descriptors a request may carry.
pub const MAX_FDS: usize = 1;
/// Default path of the node proxy's enrollment socket.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/marrow/cni.sock";

/// Who the pod is, as the container runtime told the CNI plugin (`CNI_ARGS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIdentity {
    /// `K8S_POD_UID`.
    pub uid: String,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// The pod's service account, when the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// One network attachment of a container, as CNI identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// Enroll a pod: the request that carries the pod's netns descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPod {
    /// The pod.
    pub pod: PodIdentity,
    /// The attachment being added.
    pub attachment: Attachment,
    /// `CNI_NETNS`: kept so a restarted proxy can re-open the namespace.
    pub netns_path: String,
    /// The pod's addresses, from the previous plugin's result.
    pub ips: Vec<IpAddr>,
}

/// A request from the plugin to the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// CNI ADD; the pod's netns travels as the one `SCM_RIGHTS` descriptor.
    Add {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// What to enroll.
        add: AddPod,
    },
    /// CNI DEL: remove the enrollment of this attachment, if any.
    Del {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The attachment being deleted.
        attachment: Attachment,
    },
    /// CNI CHECK: is this attachment enrolled and captured?
    Check {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The attachment being checked.
        attachment: Attachment,
    },
    /// CNI STATUS: is the proxy ready to enroll pods?
    Status {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
    },
    /// CNI GC: forget every enrollment whose attachment is not in `valid`.
    Gc {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u32,
        /// The attachments the runtime still knows.
        valid: Vec<Attachment>,
    },
}

impl Request {
    /// The protocol version the request was written for.
    pub fn version(&self) -> u32 {
        match self {
            Request::Add { version, .. }
            | Request::Del { version, .. }
            | Request::Check { version, .. }
            | Request::Status { version }
            | Request::Gc { version, .. } => *version,
        }
    }

    /// Lowercase name of the operation, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Add { .. } => "add",
            Request::Del { .. } => "del",
            Request::Check { .. } => "check",
            Request::Status { .. } => "status",
            Request::Gc { .. } => "gc",
        }
    }
}

/// Why the proxy refused a request; each maps to one CNI error code in the plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The message could not be decoded or broke the protocol (size, descriptors, version).
    Malformed,
    /// The pod metadata is invalid (empty uid, no addresses, …).
    InvalidPod,
    /// The network namespace could not be entered or identified.
    Netns,
    /// Opening the in-pod listeners or routing set-up failed.
    PodNetwork,
    /// Updating the eBPF maps or attaching the pod's program failed.
    Capture,
    /// The enrollment could not be recorded for restarts.
    State,
    /// The attachment is not enrolled (CHECK).
    NotEnrolled,
    /// The proxy is not ready (starting or draining).
    NotReady,
}

/// The proxy's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Done; `detail` says what was done, for the plugin's log.
    Ok {
        /// A short human-readable summary.
        detail: String,
    },
    /// Refused or failed.
    Error {
        /// Machine-readable reason.
        kind: ErrorKind,
        /// What failed, naming the object and the reason.
        message: String,
    },
}

/// Errors of the protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer's socket could not be reached.
    #[error("cannot connect to the node proxy at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// Sending the request failed.
    #[error("sending the request failed: {0}")]
    Send(io::Error),
    /// No answer came back in time, or reading it failed.
    #[error("no answer from the node proxy: {0}")]
    Receive(io::Error),
    /// The message is not valid JSON for its type.
    #[error("malformed message: {0}")]
    Decode(serde_json::Error),
    /// The message broke a size or descriptor limit.
    #[error("message refused: {0}")]
    Limit(&'static str),
    /// The peer closed the connection without answering.
    #[error("the node proxy closed the connection without answering")]
    NoAnswer,
}

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

/// Sends one request to the proxy at `path` and waits up to `timeout` for its answer.
pub fn call(
    path: &Path,
    request: &Request,
    fd: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<Response, ProtocolError> {
    let connect_err = |source| ProtocolError::Connect {
        path: path.display().to_string(),
        source,
    };
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(connect_err)?;
    let addr = SockAddr::unix(path).map_err(connect_err)?;
    sock.set_write_timeout(Some(timeout)).map_err(connect_err)?;
    sock.set_read_timeout(Some(timeout)).map_err(connect_err)?;
    sock.connect(&addr).map_err(connect_err)?;
    let bytes = serde_json::to_vec(request).map_err(ProtocolError::Decode)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::Limit("request larger than 64 KiB"));
    }
    send_datagram(borrow(&sock), &bytes, fd).map_err(ProtocolError::Send)?;
    let reply = recv_datagram(borrow(&sock)).map_err(ProtocolError::Receive)?;
    let reply = reply.ok_or(ProtocolError::NoAnswer)?;
    serde_json::from_slice(&reply.bytes).map_err(ProtocolError::Decode)
}

/// Decodes a request datagram, checking the descriptor count against the operation.
pub fn decode_request(datagram: &Datagram) -> Result<Request, ProtocolError> {
    let request: Request =
        serde_json::from_slice(&datagram.bytes).map_err(ProtocolError::Decode)?;
    let want_fds = usize::from(matches!(request, Request::Add { .. }));
    if datagram.fds.len() != want_fds {
        return Err(ProtocolError::Limit(if want_fds == 1 {
            "add needs exactly one netns descriptor"
        } else {
            "only add may carry a descriptor"
        }));
    }
    Ok(request)
}

fn borrow(sock: &Socket) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    sock.as_fd()
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
    use std::os::fd::AsFd;

    fn pair() -> (Socket, Socket) {
        Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap()
    }

    fn sample_add() -> Request {
        Request::Add {
            version: PROTOCOL_VERSION,
            add: AddPod {
                pod: PodIdentity {
                    uid: "u1".into(),
                    namespace: "default".into(),
                    name: "web-0".into(),
                    service_account: None,
                },
                attachment: Attachment {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                },
                netns_path: "/var/run/netns/x".into(),
                ips: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            },
        }
    }

    #[test]
    fn add_round_trips_with_its_descriptor() {
        let (a, b) = pair();
        let file = std::fs::File::open("/dev/null").unwrap();
        let bytes = serde_json::to_vec(&sample_add()).unwrap();
        send_datagram(a.as_fd(), &bytes, Some(file.as_fd())).unwrap();
        let got = recv_datagram(b.as_fd()).unwrap().unwrap();
        assert_eq!(got.fds.len(), 1);
        assert_eq!(decode_request(&got).unwrap(), sample_add());
    }

    #[test]
    fn add_without_descriptor_is_refused() {
        let bytes = serde_json::to_vec(&sample_add()).unwrap();
        let err = decode_request(&Datagram { bytes, fds: vec![] }).unwrap_err();
        assert!(
            err.to_string().contains("exactly one netns descriptor"),
            "{err}"
        );
    }

    #[test]
    fn descriptor_on_del_is_refused() {
        let (a, b) = pair();
        let file = std::fs::File::open("/dev/null").unwrap();
        let del = Request::Del {
            version: PROTOCOL_VERSION,
            attachment: Attachment {
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
        };
        send_datagram(
            a.as_fd(),
            &serde_json::to_vec(&del).unwrap(),
            Some(file.as_fd()),
        )
        .unwrap();
        let got = recv_datagram(b.as_fd()).unwrap().unwrap();
        assert!(
            decode_request(&got)
                .unwrap_err()
                .to_string()
                .contains("only add")
        );
    }

    #[test]
    fn garbage_and_unknown_fields_are_refused() {
        for bytes in [
            &b"not json"[..],
            br#"{"op":"nuke"}"#,
            br#"{"op":"status","version":1,"x":2}"#,
        ] {
            let err = decode_request(&Datagram {
                bytes: bytes.to_vec(),
                fds: vec![],
            });
            assert!(matches!(err, Err(ProtocolError::Decode(_))), "{bytes:?}");
        }
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
