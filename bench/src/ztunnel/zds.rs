//! Our side of ZDS, the protocol over which istio-cni's node agent hands ztunnel the pods it
//! must proxy (ztunnel's `proto/zds.proto`, `src/inpod/protocol.rs`,
//! `src/inpod/workloadmanager.rs`): we play the node agent.
//!
//! ztunnel connects to our `SOCK_SEQPACKET` unix socket (its `INPOD_UDS`) and announces itself
//! with a `ZdsHello`; every message is then one packet. We send a `WorkloadRequest` (an `add`
//! carries the pod's network namespace as one `SCM_RIGHTS` descriptor), and ztunnel answers each
//! with a `WorkloadResponse` whose `Ack.error` is empty on success. The first exchange is the
//! snapshot: the pods we already know, then `SnapshotSent` (ztunnel drops any pod not in it and
//! reports ready only after it). The calls block, with a deadline each: the bench is
//! synchronous.

use std::io::{IoSlice, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, accept4, bind,
    listen, sendmsg, socket,
};
use prost::Message as _;

/// ZDS messages (`istio.workload.zds` of ztunnel's `proto/zds.proto`), written with prost's
/// derive instead of compiled from the file: the few we exchange.
pub mod proto {
    /// The protocol version ztunnel announces.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Version {
        /// Never sent.
        NotUsed = 0,
        /// The only version.
        V1 = 1,
    }

    /// ztunnel's first message on a new connection.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ZdsHello {
        /// A [`Version`].
        #[prost(enumeration = "Version", tag = "1")]
        pub version: i32,
    }

    /// Who the pod is: ztunnel finds its workload in its state by these.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WorkloadInfo {
        /// The pod's name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// The pod's namespace.
        #[prost(string, tag = "2")]
        pub namespace: String,
        /// The pod's service account.
        #[prost(string, tag = "3")]
        pub service_account: String,
    }

    /// Start proxying a pod (its netns descriptor rides along).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AddWorkload {
        /// The pod's UID.
        #[prost(string, tag = "1")]
        pub uid: String,
        /// Who it is.
        #[prost(message, optional, tag = "2")]
        pub workload_info: Option<WorkloadInfo>,
    }

    /// Stop proxying a pod.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DelWorkload {
        /// The pod's UID.
        #[prost(string, tag = "2")]
        pub uid: String,
    }

    /// The end of the snapshot.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SnapshotSent {}

    /// ztunnel's answer to every request.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ack {
        /// Empty when the request was applied, else why not.
        #[prost(string, tag = "1")]
        pub error: String,
    }

    /// What we send.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WorkloadRequest {
        /// The request.
        #[prost(oneof = "Request", tags = "1, 2, 3")]
        pub payload: Option<Request>,
    }

    /// `WorkloadRequest.payload` (`keep`, tag 5, is a reconnecting agent's: never sent).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        /// Start proxying a pod.
        #[prost(message, tag = "1")]
        Add(AddWorkload),
        /// Stop proxying a pod.
        #[prost(message, tag = "2")]
        Del(DelWorkload),
        /// The snapshot is complete.
        #[prost(message, tag = "3")]
        SnapshotSent(SnapshotSent),
    }

    /// What ztunnel answers.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WorkloadResponse {
        /// The answer.
        #[prost(oneof = "Response", tags = "1")]
        pub payload: Option<Response>,
    }

    /// `WorkloadResponse.payload`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        /// The request's outcome.
        #[prost(message, tag = "1")]
        Ack(Ack),
    }
}

/// Largest message we accept (ztunnel's own reads use a 1 KiB buffer).
const MAX_MESSAGE: usize = 1024;
/// How often a pending `accept` is retried.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// What went wrong on the ZDS socket.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// Creating, binding or accepting on the listening socket failed.
    #[error("ZDS socket {path}: {action}: {source}")]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// ztunnel did not connect in time.
    #[error("ztunnel did not connect to {path} within {waited:?}")]
    NoConnection {
        /// The socket's path.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// A request was made before ztunnel connected.
    #[error("ztunnel is not connected")]
    NotConnected,
    /// Reading or writing the connection failed (ztunnel exited or hung up).
    #[error("ZDS connection: {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// ztunnel sent something that is not the message expected.
    #[error("ZDS connection: expected {expected}: {detail}")]
    Unexpected {
        /// The message expected.
        expected: &'static str,
        /// What came instead.
        detail: String,
    },
    /// ztunnel refused a request.
    #[error("ztunnel refused {request}: {reason}")]
    Refused {
        /// The request.
        request: String,
        /// ztunnel's `Ack.error`.
        reason: String,
    },
}

/// The listening ZDS socket and, once ztunnel connected, the connection.
pub struct ZdsServer {
    path: PathBuf,
    listener: OwnedFd,
    connection: Option<UnixStream>,
}

impl ZdsServer {
    /// Listens on a new socket at `path` (which must not exist).
    pub fn bind(path: &Path) -> Result<ZdsServer, ZdsError> {
        let fail = |action| {
            let path = path.to_owned();
            move |source| ZdsError::Listen {
                path,
                action,
                source,
            }
        };
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(fail("socket"))?;
        let addr = UnixAddr::new(path).map_err(fail("address"))?;
        bind(listener.as_raw_fd(), &addr).map_err(fail("bind"))?;
        listen(&listener, Backlog::new(4).map_err(fail("listen"))?).map_err(fail("listen"))?;
        Ok(ZdsServer {
            path: path.to_owned(),
            listener,
            connection: None,
        })
    }

    /// The socket's path (ztunnel's `INPOD_UDS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for ztunnel to connect and say hello, then sends the snapshot:
    /// nothing (pods are added one by one afterwards), then `SnapshotSent`, and waits for its
    /// ack.
    pub fn accept(&mut self, timeout: Duration) -> Result<(), ZdsError> {
        let deadline = Instant::now() + timeout;
        let fd = loop {
            match accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => break fd,
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
                Err(source) => {
                    return Err(ZdsError::Listen {
                        path: self.path.clone(),
                        action: "accept",
                        source,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(ZdsError::NoConnection {
                    path: self.path.clone(),
                    waited: timeout,
                });
            }
            std::thread::sleep(ACCEPT_POLL);
        };
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let stream = UnixStream::from(owned);
        stream
            .set_nonblocking(false)
            .map_err(|source| ZdsError::Io {
                action: "setting blocking mode",
                source,
            })?;
        self.connection = Some(stream);
        let hello = proto::ZdsHello::decode(self.receive(deadline)?.as_slice()).map_err(|e| {
            ZdsError::Unexpected {
                expected: "ZdsHello",
                detail: e.to_string(),
            }
        })?;
        if hello.version != proto::Version::V1 as i32 {
            return Err(ZdsError::Unexpected {
                expected: "ZdsHello version V1",
                detail: format!("version {}", hello.version),
            });
        }
        self.request(
            proto::Request::SnapshotSent(proto::SnapshotSent {}),
            None,
            deadline,
        )
    }

    /// Hands ztunnel a pod: `uid`, who it is and its network namespace; waits up to `timeout`
    /// for the ack (ztunnel acks once the pod's listeners are bound in its namespace).
    pub fn add(
        &mut self,
        uid: &str,
        info: proto::WorkloadInfo,
        netns: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<(), ZdsError> {
        let add = proto::AddWorkload {
            uid: uid.to_owned(),
            workload_info: Some(info),
        };
        self.request(
            proto::Request::Add(add),
            Some(netns),
            Instant::now() + timeout,
        )
    }

    /// Sends one request (with `fd` as `SCM_RIGHTS`) and checks its ack.
    fn request(
        &mut self,
        request: proto::Request,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> Result<(), ZdsError> {
        let name = match &request {
            proto::Request::Add(a) => format!("add {}", a.uid),
            proto::Request::Del(d) => format!("del {}", d.uid),
            proto::Request::SnapshotSent(_) => "snapshot-sent".to_owned(),
        };
        let bytes = proto::WorkloadRequest {
            payload: Some(request),
        }
        .encode_to_vec();
        let stream = self.connection.as_mut().ok_or(ZdsError::NotConnected)?;
        let io = |action| move |source| ZdsError::Io { action, source };
        match fd {
            Some(fd) => {
                let fds = [fd.as_raw_fd()];
                let control = [ControlMessage::ScmRights(&fds)];
                let sent = sendmsg::<()>(
                    stream.as_fd().as_raw_fd(),
                    &[IoSlice::new(&bytes)],
                    &control,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(|e| ZdsError::Io {
                    action: "sending a request",
                    source: e.into(),
                })?;
                if sent != bytes.len() {
                    return Err(ZdsError::Io {
                        action: "sending a request",
                        source: std::io::Error::other("short write"),
                    });
                }
            }
            None => stream.write_all(&bytes).map_err(io("sending a request"))?,
        }
        let answer =
            proto::WorkloadResponse::decode(self.receive(deadline)?.as_slice()).map_err(|e| {
                ZdsError::Unexpected {
                    expected: "WorkloadResponse",
                    detail: e.to_string(),
                }
            })?;
        match answer.payload {
            Some(proto::Response::Ack(ack)) if ack.error.is_empty() => Ok(()),
            Some(proto::Response::Ack(ack)) => Err(ZdsError::Refused {
                request: name,
                reason: ack.error,
            }),
            None => Err(ZdsError::Unexpected {
                expected: "an ack",
                detail: format!("an empty response to {name}"),
            }),
        }
    }

    /// Reads one packet, waiting until `deadline`.
    fn receive(&mut self, deadline: Instant) -> Result<Vec<u8>, ZdsError> {
        let stream = self.connection.as_mut().ok_or(ZdsError::NotConnected)?;
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .map_err(|source| ZdsError::Io {
                action: "setting the read deadline",
                source,
            })?;
        let mut buffer = vec![0; MAX_MESSAGE];
        let read = stream.read(&mut buffer).map_err(|source| ZdsError::Io {
            action: "waiting for ztunnel's message",
            source,
        })?;
        if read == 0 {
            return Err(ZdsError::Io {
                action: "waiting for ztunnel's message",
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        buffer.truncate(read);
        Ok(buffer)
    }
}

impl Drop for ZdsServer {
    fn drop(&mut self) {
        // The listener goes with its descriptor; its path would stay.
        let _ = std::fs::remove_file(&self.path);
    }
}
