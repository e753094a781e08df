//! The enrollment server: a Unix `SOCK_SEQPACKET` socket on which redirect-cni sends one
//! request per connection (see `marrow_wire::enrollment`).
//!
//! Only root (or the proxy's own user) may talk to it: the socket is mode 0600 and the peer's
//! credentials are checked. A malformed request gets an error reply and affects nothing else;
//! a client that sends nothing is dropped after a timeout.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use marrow_wire::enrollment::{self, ErrorKind, PROTOCOL_VERSION, Request, Response};
use marrow_wire::seqpacket::{self, Datagram};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::Registry;
use crate::handoff::{Predecessor, peer_uid};
use marrow_mesh::http::Readiness;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests handled at once; further clients wait in the backlog.
const MAX_CONCURRENT: usize = 32;

/// Errors that stop the enrollment server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be created, bound or listened on.
    #[error("enrollment socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// A bound, listening enrollment socket.
pub struct EnrollmentServer {
    listener: AsyncFd<Socket>,
    path: PathBuf,
}

impl EnrollmentServer {
    /// Binds `path` (replacing a stale socket file left by a previous proxy).
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
            Ok(_) => {
                return Err(err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                )));
            }
            Err(_) => {}
        }
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.nonblocking().cloexec(), None)
            .map_err(err)?;
        sock.bind(&SockAddr::unix(path).map_err(err)?)
            .map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        sock.listen(64).map_err(err)?;
        let listener = register(sock, Interest::READABLE).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves an already listening socket: the one a previous proxy handed over in an upgrade
    /// (so CNI calls queued on it are answered, and the path never goes missing).
    ///
    /// # Errors
    /// When `fd` is not a listening SOCK_SEQPACKET Unix socket or cannot be registered.
    pub fn from_listening(fd: OwnedFd, path: &Path) -> Result<Self, ServerError> {
        let err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let sock = Socket::from(fd);
        let is_seqpacket = sock.r#type().map_err(err)? == Type::SEQPACKET;
        let is_listening = sock.is_listener().map_err(err)?;
        if !is_seqpacket || !is_listening {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the handed-over descriptor is not a listening SOCK_SEQPACKET socket",
            )));
        }
        sock.set_nonblocking(true).map_err(err)?;
        let listener = register(sock, Interest::READABLE).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// A second descriptor of the listening socket, to hand over in an upgrade.
    ///
    /// # Errors
    /// When the process is out of descriptors.
    pub fn duplicate(&self) -> io::Result<OwnedFd> {
        self.listener.get_ref().as_fd().try_clone_to_owned()
    }

    /// Serves requests until `stop` is cancelled (or the task is dropped). After `stop` it
    /// accepts nothing more and returns once the requests in progress are answered, so a
    /// successor taking over sees every enrollment they made.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        readiness: Arc<Readiness>,
        stop: CancellationToken,
    ) {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
        tracing::info!(path = %self.path.display(), "enrollment server listening");
        loop {
            let readable = tokio::select! {
                readable = self.listener.readable() => readable,
                () = stop.cancelled() => break,
            };
            let accepted = readable.and_then(|mut guard| {
                match guard.try_io(|inner| inner.get_ref().accept()) {
                    Ok(result) => result.map(Some),
                    Err(_would_block) => Ok(None),
                }
            });
            let conn = match accepted {
                Ok(Some((conn, _))) => conn,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "enrollment accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let registry = registry.clone();
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(error) = handle_connection(conn, &registry, &readiness).await {
                    tracing::warn!(%error, "enrollment connection failed");
                }
            });
        }
        // Every permit back: no request is in progress.
        let _all = limit.acquire_many(MAX_CONCURRENT as u32).await;
        tracing::info!(path = %self.path.display(), "enrollment server stopped");
    }
}

async fn handle_connection(
    conn: Socket,
    registry: &Registry,
    readiness: &Readiness,
) -> io::Result<()> {
    conn.set_nonblocking(true)?;
    let peer_uid = peer_uid(&conn)?;
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    let conn = register(conn, Interest::READABLE | Interest::WRITABLE)?;
    if peer_uid != 0 && peer_uid != own_uid {
        let reply = error(
            ErrorKind::Malformed,
            format!("uid {peer_uid} may not enroll pods"),
        );
        return send(&conn, &reply).await;
    }
    let datagram = match tokio::time::timeout(REQUEST_TIMEOUT, receive(&conn)).await {
        Ok(Ok(Some(datagram))) => datagram,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let reply = error(ErrorKind::Malformed, format!("unreadable request: {e}"));
            return send(&conn, &reply).await;
        }
        Err(_) => {
            tracing::warn!("enrollment client sent nothing within 5s; closing");
            return Ok(());
        }
    };
    let reply = dispatch(datagram, registry, readiness).await;
    send(&conn, &reply).await
}

/// Decodes and executes one request.
async fn dispatch(mut datagram: Datagram, registry: &Registry, readiness: &Readiness) -> Response {
    let request = match enrollment::decode_request(&datagram) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(error = %e, "malformed enrollment request");
            return error(
                ErrorKind::Malformed,
                format!("malformed enrollment request: {e}"),
            );
        }
    };
    if request.version() != PROTOCOL_VERSION {
        return error(
            ErrorKind::Malformed,
            format!(
                "protocol version {} not supported (this proxy speaks {PROTOCOL_VERSION})",
                request.version()
            ),
        );
    }
    let op = request.op();
    let outcome = match request {
        Request::Add { add, .. } => {
            if !readiness.is_ready() {
                return error(
                    ErrorKind::NotReady,
                    "the node proxy is starting or draining".into(),
                );
            }
            let Some(fd) = datagram.fds.pop() else {
                return error(
                    ErrorKind::Malformed,
                    "add without a netns descriptor".into(),
                );
            };
            registry.add(add, fd).await
        }
        Request::Del { attachment, .. } => Ok(registry.del(&attachment).await),
        Request::Check { attachment, .. } => registry.check(&attachment).await,
        Request::Status { .. } if readiness.is_ready() => Ok("ready".into()),
        Request::Status { .. } => Err(super::EnrollError::new(
            ErrorKind::NotReady,
            "the node proxy is not ready",
        )),
        Request::Gc { valid, .. } => Ok(registry.gc(&valid).await),
    };
    match outcome {
        Ok(detail) => Response::Ok { detail },
        Err(e) => {
            tracing::warn!(op, kind = ?e.kind, error = %e.message, "enrollment request refused");
            error(e.kind, e.message)
        }
    }
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

async fn receive(conn: &AsyncFd<Socket>) -> io::Result<Option<Datagram>> {
    loop {
        let mut guard = conn.readable().await?;
        match guard.try_io(|inner| seqpacket::recv_datagram(inner.get_ref().as_fd())) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn send(conn: &AsyncFd<Socket>, response: &Response) -> io::Result<()> {
    let bytes = serde_json::to_vec(response).map_err(io::Error::other)?;
    loop {
        let mut guard = conn.writable().await?;
        match guard.try_io(|inner| seqpacket::send_datagram(inner.get_ref().as_fd(), &bytes, None))
        {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Registers a socket with the runtime.
fn register(sock: Socket, interest: Interest) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its descriptor, which therefore stays open (and is not re-used)
    // for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(sock, interest) }.map_err(io::Error::from)
}

/// The running enrollment server, which an upgrade pauses (to hand its socket over) and, if
/// the upgrade fails, resumes on the same socket.
pub struct Enrollment {
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
    path: PathBuf,
    running: std::sync::Mutex<Option<Running>>,
}

/// A serving task, its stop signal and a second descriptor of its socket.
struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    socket: OwnedFd,
}

impl Enrollment {
    /// Starts serving `server`.
    ///
    /// # Errors
    /// When the socket's descriptor cannot be duplicated (out of descriptors).
    pub fn start(
        server: EnrollmentServer,
        registry: Arc<Registry>,
        readiness: Arc<Readiness>,
    ) -> io::Result<Arc<Enrollment>> {
        let enrollment = Arc::new(Enrollment {
            registry,
            readiness,
            path: server.path.clone(),
            running: std::sync::Mutex::new(None),
        });
        enrollment.run(server)?;
        Ok(enrollment)
    }

    fn run(&self, server: EnrollmentServer) -> io::Result<()> {
        let socket = server.duplicate()?;
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(server.serve(self.registry.clone(), self.readiness.clone(), stop.clone()));
        *self.lock() = Some(Running { task, stop, socket });
        Ok(())
    }

    /// Stops accepting CNI calls and waits until those in progress are answered. Returns the
    /// listening socket (still open, with any queued calls), or `None` if it was not running.
    pub async fn stop(&self) -> Option<OwnedFd> {
        let running = self.lock().take()?;
        running.stop.cancel();
        if let Err(error) = running.task.await {
            tracing::warn!(%error, "the enrollment server ended abnormally");
        }
        Some(running.socket)
    }

    /// Serves the (paused) socket `fd` again.
    pub fn resume(&self, fd: OwnedFd) {
        let resumed = EnrollmentServer::from_listening(fd, &self.path)
            .map_err(|e| e.to_string())
            .and_then(|server| self.run(server).map_err(|e| e.to_string()));
        match resumed {
            Ok(()) => tracing::info!("enrollment resumed"),
            Err(error) => {
                tracing::error!(%error, "cannot resume enrollment; CNI calls fail until restart")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Predecessor for Arc<Enrollment> {
    async fn pause_enrollment(&self) -> io::Result<OwnedFd> {
        self.stop()
            .await
            .ok_or_else(|| io::Error::other("the enrollment server is not running"))
    }

    fn resume_enrollment(&self, fd: OwnedFd) {
        self.resume(fd);
    }
}
