//! One connected end of the hand-off socket: a JSON [`Message`] per datagram, with at most
//! one descriptor, every blocking call bounded by a timeout.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use marrow_wire::seqpacket::{Datagram, recv_datagram, send_datagram};
use socket2::Socket;

use super::{HandoffError, Message};

/// One connected end of a hand-off, with blocking calls bounded by [`MESSAGE_TIMEOUT`].
pub(super) struct Channel {
    sock: Socket,
    path: PathBuf,
}

impl Channel {
    pub(super) fn new(
        sock: Socket,
        path: &Path,
        timeout: Duration,
    ) -> Result<Channel, HandoffError> {
        let channel = Channel {
            sock,
            path: path.to_path_buf(),
        };
        channel.set_timeout(timeout)?;
        Ok(channel)
    }

    pub(super) fn set_timeout(&self, timeout: Duration) -> Result<(), HandoffError> {
        self.sock
            .set_nonblocking(false)
            .and_then(|()| self.sock.set_read_timeout(Some(timeout)))
            .and_then(|()| self.sock.set_write_timeout(Some(timeout)))
            .map_err(|source| self.io("setting timeouts", source))
    }

    pub(super) fn io(&self, step: &'static str, source: io::Error) -> HandoffError {
        HandoffError::Io {
            path: self.path.clone(),
            step,
            source,
        }
    }

    pub(super) fn protocol(&self, reason: impl Into<String>) -> HandoffError {
        HandoffError::Protocol {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    pub(super) fn send(&self, message: &Message, fd: Option<&OwnedFd>) -> Result<(), HandoffError> {
        let bytes = serde_json::to_vec(message).map_err(|e| self.protocol(e.to_string()))?;
        send_datagram(self.sock.as_fd(), &bytes, fd.map(AsFd::as_fd))
            .map_err(|source| self.io("sending", source))
    }

    /// The next message and its descriptor, if any.
    pub(super) fn receive(&self) -> Result<(Message, Option<OwnedFd>), HandoffError> {
        let Datagram { bytes, mut fds } = recv_datagram(self.sock.as_fd())
            .map_err(|source| self.io("receiving", source))?
            .ok_or_else(|| self.protocol("the other proxy closed the connection"))?;
        let message: Message = serde_json::from_slice(&bytes)
            .map_err(|e| self.protocol(format!("malformed message: {e}")))?;
        Ok((message, fds.pop()))
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
