//! Hitless upgrade: a new node proxy takes the running one's sockets instead of opening its own.
//!
//! The running proxy listens on `<state-dir>/handoff.sock` (SOCK_SEQPACKET, mode 0600, root
//! peers only). A proxy starting on the same node connects there first and asks to take over:
//!
//! ```text
//! new → old   {"type":"take_over","version":1,"certificates":true}
//! old         stops its enrollment server (after answering the CNI calls in progress)
//! old → new   {"type":"pod","record":{…}}                     per enrolled pod, then
//!             {"type":"netns"}                         + fd   its network namespace
//!             {"type":"listener","direction":…,"ipv6":…} + fd  each in-pod listener
//!             {"type":"certificate","certificate":{…}}        per valid workload
//!                                                             certificate, if asked for
//!             {"type":"enrollment_socket"}             + fd   the CNI socket
//!             {"type":"done","pods":N,"certificates":M}
//! new         serves every pod on the very same sockets (and the CNI socket), then
//! new → old   {"type":"adopted","pods":N}
//! old         stops accepting, drains its open connections, exits
//! ```
//!
//! The listening sockets themselves move (`SCM_RIGHTS`), so nothing queued on them is lost, the
//! `sk_lookup` map keeps pointing at live sockets, and both processes accept from the same
//! queues until the old one stops: there is no moment without a listener. The eBPF programs and
//! maps are pinned and shared already. The workload certificates move too (leaf, chain and
//! key, over this root-only socket): the new proxy checks them against its trust bundle and
//! uses them until their half-life, so an upgrade needs no CA — it works during a CA outage,
//! and a rollout across the cluster does not re-request every identity. Both fields are
//! optional on the wire: a proxy without them neither asks for nor sends certificates.
//!
//! Failure handling: until `adopted` arrives the old proxy changes nothing but its enrollment
//! server, which it restarts (on the same socket) if the new proxy goes away or answers
//! anything else, so a failed upgrade leaves the old proxy serving as before. Every message is
//! bounded (one datagram of at most 64 KiB, one descriptor) and every wait has a deadline.

mod channel;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::handoff::{Predecessor, peer_uid};
use crate::inpod::{HandedPod, PodListener, PodRecord, Registry};
use crate::proxy::Direction;
use channel::Channel;
use marrow_mesh::identity::HandedCertificate;

/// The hand-off socket's file name in the state directory.
pub const HANDOFF_SOCKET: &str = "handoff.sock";
/// Version of the hand-off protocol; a proxy refuses to hand over to another version.
pub const HANDOFF_VERSION: u32 = 1;
/// How long either side waits for the other's next message.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most certificates a successor takes (one per identity of a local pod; a node runs at most a
/// few hundred pods).
const MAX_CERTIFICATES: usize = 4096;
/// How long the old proxy waits for the new one to serve every pod and answer `adopted`.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A hand-off message; see the module documentation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    /// New → old: hand everything over.
    TakeOver {
        /// [`HANDOFF_VERSION`] of the asker.
        version: u32,
        /// Whether the asker takes workload certificates.
        #[serde(default)]
        certificates: bool,
    },
    /// Old → new: the next pod's record; its netns and listeners follow.
    Pod {
        /// The enrollment record.
        record: Box<PodRecord>,
    },
    /// Old → new: the current pod's network namespace (with a descriptor).
    Netns,
    /// Old → new: one of the current pod's listeners (with a descriptor).
    Listener {
        /// `outbound`, `inbound` or `hbone`.
        direction: WireDirection,
        /// Whether it is the IPv6 one.
        ipv6: bool,
    },
    /// Old → new: a valid workload certificate the old proxy holds.
    Certificate {
        /// Leaf, chain and key.
        certificate: HandedCertificate,
    },
    /// Old → new: the CNI enrollment socket (with a descriptor).
    EnrollmentSocket,
    /// Old → new: everything was sent.
    Done {
        /// How many pods were sent.
        pods: usize,
        /// How many certificates were sent.
        #[serde(default)]
        certificates: usize,
    },
    /// New → old: every pod is served by the new proxy.
    Adopted {
        /// How many pods the new proxy serves from the hand-off.
        pods: usize,
    },
    /// Either way: the hand-off cannot go on, and why.
    Refused {
        /// The reason, for the other side's log.
        reason: String,
    },
}

/// [`Direction`] on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireDirection {
    Outbound,
    Inbound,
    Hbone,
}

impl From<Direction> for WireDirection {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::Outbound => WireDirection::Outbound,
            Direction::InboundPlaintext => WireDirection::Inbound,
            Direction::InboundTunnel => WireDirection::Hbone,
        }
    }
}

impl From<WireDirection> for Direction {
    fn from(direction: WireDirection) -> Self {
        match direction {
            WireDirection::Outbound => Direction::Outbound,
            WireDirection::Inbound => Direction::InboundPlaintext,
            WireDirection::Hbone => Direction::InboundTunnel,
        }
    }
}

/// Why a hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A socket call failed.
    #[error("hand-off socket {path}: {step}: {source}")]
    Io {
        /// The hand-off socket.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// The other side sent something that is not the protocol.
    #[error("hand-off socket {path}: {reason}")]
    Protocol {
        /// The hand-off socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// What the new proxy received from the old one.
#[derive(Debug)]
pub struct TakeOver {
    /// The pods with their netns and listeners.
    pub pods: Vec<HandedPod>,
    /// The CNI enrollment socket, listening.
    pub enrollment: Option<OwnedFd>,
    /// The workload certificates the old proxy held (to check before use).
    pub certificates: Vec<HandedCertificate>,
    channel: Channel,
}

impl TakeOver {
    /// Tells the old proxy that `adopted` pods are served here now, so it stops accepting.
    ///
    /// # Errors
    /// When the old proxy is gone (it then stops on its own once it notices).
    pub fn confirm(self, adopted: usize) -> Result<(), HandoffError> {
        self.channel.send(&Message::Adopted { pods: adopted }, None)
    }
}

/// New proxy: asks the proxy serving `path` to hand everything over. `Ok(None)` when no proxy
/// listens there (the first start on a node, or the previous proxy is gone).
///
/// Blocking; call it from a blocking context.
///
/// # Errors
/// When a proxy answered but the hand-off failed half-way; the caller then starts as after a
/// crash (records and new listeners), the old proxy keeps serving until it is stopped.
pub fn take_over(path: &Path) -> Result<Option<TakeOver>, HandoffError> {
    let io = |step, source| HandoffError::Io {
        path: path.to_path_buf(),
        step,
        source,
    };
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
        .map_err(|e| io("creating a socket", e))?;
    let addr = SockAddr::unix(path).map_err(|e| io("socket address", e))?;
    match sock.connect(&addr) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io("connecting", e)),
    }
    let channel = Channel::new(sock, path, MESSAGE_TIMEOUT)?;
    channel.send(
        &Message::TakeOver {
            version: HANDOFF_VERSION,
            certificates: true,
        },
        None,
    )?;
    let mut pods: Vec<HandedPod> = Vec::new();
    let mut certificates: Vec<HandedCertificate> = Vec::new();
    let mut pending: Option<(PodRecord, Option<OwnedFd>, Vec<PodListener>)> = None;
    let mut enrollment = None;
    loop {
        let (message, fd) = channel.receive()?;
        let needs_fd = matches!(
            message,
            Message::Netns | Message::Listener { .. } | Message::EnrollmentSocket
        );
        if needs_fd != fd.is_some() {
            return Err(channel.protocol(format!(
                "message {message:?} came {} a descriptor",
                if fd.is_some() { "with" } else { "without" }
            )));
        }
        match (message, fd) {
            (Message::Pod { record }, None) => {
                pods.extend(finish_pod(&channel, pending.take())?);
                pending = Some((*record, None, Vec::new()));
            }
            (Message::Netns, Some(fd)) => match pending.as_mut() {
                Some((_, netns @ None, _)) => *netns = Some(fd),
                _ => return Err(channel.protocol("a netns outside a pod, or twice")),
            },
            (Message::Listener { direction, ipv6 }, Some(fd)) => match pending.as_mut() {
                Some((_, _, listeners)) => listeners.push(PodListener {
                    direction: direction.into(),
                    ipv6,
                    socket: listening_tcp(fd).map_err(|reason| channel.protocol(reason))?,
                }),
                None => return Err(channel.protocol("a listener outside a pod")),
            },
            (Message::Certificate { certificate }, None) => {
                if certificates.len() >= MAX_CERTIFICATES {
                    return Err(
                        channel.protocol(format!("more than {MAX_CERTIFICATES} certificates"))
                    );
                }
                certificates.push(certificate);
            }
            (Message::EnrollmentSocket, Some(fd)) => enrollment = Some(fd),
            (
                Message::Done {
                    pods: sent,
                    certificates: sent_certificates,
                },
                None,
            ) => {
                pods.extend(finish_pod(&channel, pending.take())?);
                if sent != pods.len() || sent_certificates != certificates.len() {
                    return Err(channel.protocol(format!(
                        "the old proxy announced {sent} pods and {sent_certificates} \
                         certificates, and sent {} and {}",
                        pods.len(),
                        certificates.len()
                    )));
                }
                break;
            }
            (Message::Refused { reason }, None) => {
                return Err(channel.protocol(format!("the old proxy refused: {reason}")));
            }
            (other, _) => return Err(channel.protocol(format!("unexpected {other:?}"))),
        }
    }
    Ok(Some(TakeOver {
        pods,
        enrollment,
        certificates,
        channel,
    }))
}

/// The pod being received, complete (it must have its netns).
fn finish_pod(
    channel: &Channel,
    pending: Option<(PodRecord, Option<OwnedFd>, Vec<PodListener>)>,
) -> Result<Option<HandedPod>, HandoffError> {
    let Some((record, netns, listeners)) = pending else {
        return Ok(None);
    };
    let netns = netns.ok_or_else(|| {
        channel.protocol(format!("pod {} came without its netns", record.pod.uid))
    })?;
    Ok(Some(HandedPod {
        record,
        netns,
        listeners,
    }))
}

/// A received descriptor as a TCP listener, after checking it is one.
fn listening_tcp(fd: OwnedFd) -> Result<std::net::TcpListener, String> {
    let sock = Socket::from(fd);
    let listening = sock
        .r#type()
        .ok()
        .filter(|t| *t == Type::STREAM)
        .and_then(|_| sock.local_addr().ok())
        .and_then(|addr| addr.as_socket())
        .is_some()
        && accepts_connections(&sock);
    if !listening {
        return Err("a listener descriptor is not a listening TCP socket".into());
    }
    Ok(sock.into())
}

/// `SO_ACCEPTCONN`: whether the socket is listening.
fn accepts_connections(sock: &Socket) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: out-pointers to a live c_int and its length.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    rc == 0 && value != 0
}

/// Old proxy: listens on `path` for a successor. Binding replaces a stale socket file.
///
/// # Errors
/// When the socket cannot be bound.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, HandoffError> {
    let io = |step, source| HandoffError::Io {
        path: path.to_path_buf(),
        step,
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| io("removing the old socket file", e))?;
        }
        Ok(_) => {
            return Err(io(
                "binding",
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ),
            ));
        }
        Err(_) => {}
    }
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.nonblocking().cloexec(), None)
        .map_err(|e| io("creating a socket", e))?;
    sock.bind(&SockAddr::unix(path).map_err(|e| io("socket address", e))?)
        .map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("restricting to root", e))?;
    sock.listen(4).map_err(|e| io("listening", e))?;
    // tokio's UnixListener only accepts; a SEQPACKET socket accepts the same way.
    tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(OwnedFd::from(sock)))
        .map_err(|e| io("registering", e))
}

/// Old proxy: answers successors on `listener` until one has taken over; returns how many pods
/// it handed over. The caller then stops accepting and drains.
pub async fn serve_successor<P: Predecessor>(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    registry: Arc<Registry>,
    predecessor: P,
) -> usize {
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(error) => {
                tracing::warn!(%error, "hand-off accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sock = match conn.into_std().map(|s| Socket::from(OwnedFd::from(s))) {
            Ok(sock) => sock,
            Err(error) => {
                tracing::warn!(%error, "hand-off connection unusable");
                continue;
            }
        };
        match hand_over(sock, &path, &registry, &predecessor).await {
            Ok(pods) => return pods,
            Err(error) => tracing::warn!(%error, "hand-off to a new proxy failed; still serving"),
        }
    }
}

/// One hand-off attempt; on error the old proxy serves as before.
async fn hand_over<P: Predecessor>(
    sock: Socket,
    path: &Path,
    registry: &Registry,
    predecessor: &P,
) -> Result<usize, HandoffError> {
    let uid = peer_uid(&sock).map_err(|source| HandoffError::Io {
        path: path.to_path_buf(),
        step: "reading the peer's credentials",
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    let channel = Channel::new(sock, path, MESSAGE_TIMEOUT)?;
    if uid != 0 && uid != own {
        let reason = format!("uid {uid} may not take over the node proxy");
        let _ = channel.send(
            &Message::Refused {
                reason: reason.clone(),
            },
            None,
        );
        return Err(channel.protocol(reason));
    }
    let channel = Arc::new(channel);
    let request = blocking(&channel, |c| c.receive()).await;
    let with_certificates = match request {
        Ok((
            Message::TakeOver {
                version,
                certificates,
            },
            None,
        )) if version == HANDOFF_VERSION => certificates,
        Err(error) => {
            let _ = channel.send(
                &Message::Refused {
                    reason: error.to_string(),
                },
                None,
            );
            return Err(error);
        }
        Ok((message, _)) => {
            let reason = format!("expected take_over version {HANDOFF_VERSION}, got {message:?}");
            let _ = channel.send(
                &Message::Refused {
                    reason: reason.clone(),
                },
                None,
            );
            return Err(channel.protocol(reason));
        }
    };
    tracing::info!("a new node proxy asks to take over; pausing enrollment");
    let enrollment = predecessor
        .pause_enrollment()
        .await
        .map_err(|source| channel.io("pausing enrollment", source))?;
    let result = send_everything(&channel, registry, &enrollment, with_certificates).await;
    match result {
        Ok(pods) => {
            tracing::info!(
                pods,
                "handed over; the new node proxy serves every pod, stopping accepting"
            );
            Ok(pods)
        }
        Err(error) => {
            predecessor.resume_enrollment(enrollment);
            Err(error)
        }
    }
}

/// Sends the pods and the enrollment socket, then waits for `adopted`.
async fn send_everything(
    channel: &Arc<Channel>,
    registry: &Registry,
    enrollment: &OwnedFd,
    with_certificates: bool,
) -> Result<usize, HandoffError> {
    let certificates = if with_certificates {
        registry.certificates()
    } else {
        Vec::new()
    };
    let pods = registry
        .hand_over()
        .await
        .map_err(|source| channel.io("duplicating descriptors", source))?;
    let enrollment = enrollment
        .try_clone()
        .map_err(|source| channel.io("duplicating the enrollment socket", source))?;
    let count = pods.len();
    blocking(channel, move |c| {
        for pod in &pods {
            c.send(
                &Message::Pod {
                    record: Box::new(pod.record.clone()),
                },
                None,
            )?;
            c.send(&Message::Netns, Some(&pod.netns))?;
            for listener in &pod.listeners {
                let fd = OwnedFd::from(
                    listener
                        .socket
                        .try_clone()
                        .map_err(|source| c.io("duplicating a listener", source))?,
                );
                c.send(
                    &Message::Listener {
                        direction: listener.direction.into(),
                        ipv6: listener.ipv6,
                    },
                    Some(&fd),
                )?;
            }
        }
        for certificate in &certificates {
            c.send(
                &Message::Certificate {
                    certificate: certificate.clone(),
                },
                None,
            )?;
        }
        c.send(&Message::EnrollmentSocket, Some(&enrollment))?;
        c.send(
            &Message::Done {
                pods: count,
                certificates: certificates.len(),
            },
            None,
        )?;
        c.set_timeout(ADOPT_TIMEOUT)?;
        match c.receive()? {
            (Message::Adopted { pods }, None) => Ok(pods),
            (other, _) => Err(c.protocol(format!("expected adopted, got {other:?}"))),
        }
    })
    .await
}

/// Runs blocking socket calls off the runtime's workers.
async fn blocking<T: Send + 'static>(
    channel: &Arc<Channel>,
    f: impl FnOnce(&Channel) -> Result<T, HandoffError> + Send + 'static,
) -> Result<T, HandoffError> {
    let worker = channel.clone();
    tokio::task::spawn_blocking(move || f(&worker))
        .await
        .map_err(|e| channel.protocol(format!("hand-off task failed: {e}")))?
}
