//! The enrollment protocol between redirect-cni and the node proxy.
//!
//! One request per connection on a Unix `SOCK_SEQPACKET` socket: the plugin sends one JSON
//! [`Request`] in one datagram — for [`Request::Add`], with the pod's network namespace attached
//! as exactly one `SCM_RIGHTS` file descriptor — and the proxy answers with one JSON
//! [`Response`]. Message boundaries come from the socket type, so there is no framing to get
//! wrong; a message larger than [`MAX_MESSAGE_BYTES`] or with truncated ancillary data is
//! refused as a whole ([`crate::seqpacket`] carries the datagrams).

use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::seqpacket::{Datagram, MAX_MESSAGE_BYTES, recv_datagram, send_datagram};

/// Version of this protocol; a proxy refuses requests of another version.
pub const PROTOCOL_VERSION: u32 = 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    use crate::seqpacket::{recv_datagram, send_datagram};

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
}
