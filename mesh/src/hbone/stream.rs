//! [`H2Stream`]: one HTTP/2 stream as a byte stream (`AsyncRead` + `AsyncWrite`), with h2's
//! flow control: received bytes are released as the reader consumes them (so a slow reader
//! back-pressures the sender), and writes wait for send capacity.
//!
//! A relay that owns its chunks uses [`H2Stream::split`] instead: [`H2Send`] hands `Bytes` to h2
//! without copying them, and [`H2Recv`] yields h2's received `Bytes` and releases the window only
//! when the caller says the bytes were passed on ([`H2Recv::release`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A tunnelled byte stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received but not yet read by the caller.
    pending: Bytes,
    /// Whether our end-of-stream was sent.
    shut_down: bool,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            shut_down: false,
        }
    }

    /// The receiving and the sending half, borrowed, for a relay that moves `Bytes` chunks.
    pub fn split(&mut self) -> (H2Recv<'_>, H2Send<'_>) {
        (
            H2Recv {
                recv: &mut self.recv,
                pending: &mut self.pending,
            },
            H2Send {
                send: &mut self.send,
                shut_down: &mut self.shut_down,
            },
        )
    }
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

/// The receiving half of an [`H2Stream`]: whole received chunks, no copy.
pub struct H2Recv<'a> {
    recv: &'a mut RecvStream,
    pending: &'a mut Bytes,
}

impl H2Recv<'_> {
    /// The next received chunk (h2's own `Bytes`), or `None` at the peer's end of stream. Its
    /// window is not given back: call [`H2Recv::release`] as its bytes are passed on, so the
    /// sender is held to what the next hop took.
    ///
    /// # Errors
    /// The stream was reset (other than with NO_ERROR) or the connection failed.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(self.pending))));
        }
        loop {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => return Poll::Ready(Ok(Some(data))),
                // End of stream: the peer half-closed.
                None => return Poll::Ready(Ok(None)),
                Some(Err(e)) => return Poll::Ready(eof_or_error(e).map(|()| None)),
            }
        }
    }

    /// Gives `n` bytes of window back to the sender: they left this proxy.
    pub fn release(&mut self, n: usize) {
        // An error means the stream is gone; there is no window left to give.
        let _ = self.recv.flow_control().release_capacity(n);
    }
}

/// The sending half of an [`H2Stream`]: chunks handed to h2 as they are, no copy.
pub struct H2Send<'a> {
    send: &'a mut SendStream<Bytes>,
    shut_down: &'a mut bool,
}

impl H2Send<'_> {
    /// Sends as much of the front of `chunk` as the peer's window allows (taken off `chunk`
    /// without copying), waiting for window when there is none. Returns how many bytes went.
    ///
    /// # Errors
    /// The stream was reset or the connection failed; `BrokenPipe` when it is closed.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Asking again for the same amount is idempotent; h2 keeps one reservation per stream.
        self.send.reserve_capacity(chunk.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let data = chunk.split_to(granted.min(chunk.len()));
                    let n = data.len();
                    self.send.send_data(data, false).map_err(to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Sends our end of stream (once).
    ///
    /// # Errors
    /// The stream was reset or the connection failed.
    pub fn shutdown(&mut self) -> io::Result<()> {
        if !*self.shut_down {
            *self.shut_down = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Ok(())
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (mut recv, _) = self.split();
        let Some(mut data) = ready!(recv.poll_chunk(cx))? else {
            return Poll::Ready(Ok(()));
        };
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        data.advance(n);
        // Give the window back for what the caller has consumed.
        recv.release(n);
        *recv.pending = data;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(buf.len());
                    // The caller keeps its slice: h2 needs an owned copy. Relays use
                    // `H2Send::poll_send` to avoid it.
                    self.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes frames as capacity allows; there is no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (_, mut send) = self.split();
        Poll::Ready(send.shutdown())
    }
}

/// A reset with NO_ERROR after the data is an orderly end; anything else is an error.
fn eof_or_error(e: h2::Error) -> io::Result<()> {
    if e.reason() == Some(h2::Reason::NO_ERROR) {
        Ok(())
    } else {
        Err(to_io(e))
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 i/o error"))
    } else {
        io::Error::other(e)
    }
}
