//! The two ends a relay copies between, as chunk sources and sinks: a TCP socket (read into a
//! buffer this module owns, written from the chunk) and an HBONE stream (h2's own `Bytes`, no
//! copy either way).
//!
//! Invariant: a TCP source holds no buffer while its socket has nothing to read, so an idle
//! relayed connection costs no buffer memory; the buffer grows (×4) while reads fill it and
//! shrinks back when they do not.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::buf::Limit;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use marrow_mesh::hbone::pool::PooledStream;
use marrow_mesh::hbone::{H2Recv, H2Send, H2Stream};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// The first read of a burst gets this much room…
const INITIAL_READ: usize = 4 * 1024;
/// …and each read that fills its room makes the next one ×4 larger, up to this: one HTTP/2
/// DATA frame per read, fewer frames, syscalls and wake-ups per byte. Measured (bench, HBONE
/// data-plane CPU per GB): 1.44 s with 256 KiB, 1.57 s with 64 KiB, 1.57 s before. A buffer
/// this size comes back as fresh pages after each idle spell (glibc maps blocks of 128 KiB
/// and more): page faults are ~5 % of the profile, still cheaper than the smaller frames.
pub(super) const MAX_READ: usize = 256 * 1024;

/// A byte stream a relay carries: it splits into a chunk source and a chunk sink.
pub trait Endpoint {
    /// Where chunks come from.
    type Source<'a>: Source
    where
        Self: 'a;
    /// Where chunks go.
    type Sink<'a>: Sink
    where
        Self: 'a;
    /// The reading and the writing half, borrowed.
    fn halves(&mut self) -> (Self::Source<'_>, Self::Sink<'_>);
    /// The TCP socket, when this end is one (two of them can be spliced).
    fn as_tcp(&mut self) -> Option<&mut TcpStream> {
        None
    }
}

/// One direction's input.
pub trait Source {
    /// The next chunk, or `None` at end of stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>>;
    /// `n` bytes of the chunks handed out were written to the other end (flow control).
    fn passed_on(&mut self, n: usize);
}

/// One direction's output.
pub trait Sink {
    /// Writes a prefix of `chunk`, taking it off; returns how many bytes went (0 only for an
    /// empty chunk).
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>>;
    /// Passes the end of stream on.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Room for a TCP source's reads: nothing while idle; sized by how full recent reads were.
#[derive(Debug)]
struct ReadBuffer {
    buf: BytesMut,
    /// Room for the next read.
    size: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self {
            buf: BytesMut::new(),
            size: INITIAL_READ,
        }
    }
}

impl ReadBuffer {
    /// Room for `size` bytes, and no more. Reuses the allocation once every chunk cut from it
    /// was written (reclaimed), so a steady stream does not allocate per chunk; else a fresh
    /// one of exactly `size` (not `reserve`'s doubling).
    fn room(&mut self) -> Limit<&mut BytesMut> {
        if self.buf.capacity() < self.size && !self.buf.try_reclaim(self.size) {
            self.buf = BytesMut::with_capacity(self.size);
        }
        let size = self.size;
        (&mut self.buf).limit(size)
    }

    /// Cuts the `n` bytes just read off as a chunk and sizes the next read.
    fn take(&mut self, n: usize) -> Bytes {
        if n >= self.size {
            self.size = (self.size * 4).min(MAX_READ);
        } else if n < self.size / 4 {
            self.size = (self.size / 4).max(INITIAL_READ);
        }
        self.buf.split_to(n).freeze()
    }

    /// The socket has nothing to read: give the memory back (chunks in flight keep theirs).
    fn idle(&mut self) {
        self.buf = BytesMut::new();
    }
}

/// A TCP socket's reading half with the buffer it reads into.
#[derive(Debug)]
pub struct TcpSource<'a> {
    half: ReadHalf<'a>,
    buf: ReadBuffer,
}

impl<'a> TcpSource<'a> {
    /// Reads from `half`, holding no buffer yet.
    pub(super) fn new(half: ReadHalf<'a>) -> Self {
        Self {
            half,
            buf: ReadBuffer::default(),
        }
    }

    /// Bytes of memory held for reading now (tests).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.buf.buf.capacity()
    }
}

impl Endpoint for TcpStream {
    type Source<'a> = TcpSource<'a>;
    type Sink<'a> = WriteHalf<'a>;

    fn halves(&mut self) -> (TcpSource<'_>, WriteHalf<'_>) {
        let (read, write) = self.split();
        (TcpSource::new(read), write)
    }

    fn as_tcp(&mut self) -> Option<&mut TcpStream> {
        Some(self)
    }
}

impl Source for TcpSource<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let tcp: &TcpStream = self.half.as_ref();
        let buf = &mut self.buf;
        loop {
            // Readiness first, memory second: a connection waiting for bytes holds none.
            match tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    buf.idle();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match tcp.try_read_buf(&mut buf.room()) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(n) => return Poll::Ready(Ok(Some(buf.take(n)))),
                // The readiness was stale; try_read_buf cleared it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn passed_on(&mut self, _n: usize) {}
}

impl Sink for WriteHalf<'_> {
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
        let n = std::task::ready!(Pin::new(&mut *self).poll_write(cx, chunk))?;
        if n == 0 && !chunk.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        chunk.advance(n);
        Poll::Ready(Ok(n))
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self).poll_shutdown(cx)
    }
}

impl Endpoint for H2Stream {
    type Source<'a> = H2Recv<'a>;
    type Sink<'a> = H2Send<'a>;

    fn halves(&mut self) -> (H2Recv<'_>, H2Send<'_>) {
        self.split()
    }
}

impl Endpoint for PooledStream {
    type Source<'a> = H2Recv<'a>;
    type Sink<'a> = H2Send<'a>;

    fn halves(&mut self) -> (H2Recv<'_>, H2Send<'_>) {
        self.split()
    }
}

impl Source for H2Recv<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        H2Recv::poll_chunk(self, cx)
    }

    fn passed_on(&mut self, n: usize) {
        self.release(n);
    }
}

impl Sink for H2Send<'_> {
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
        H2Send::poll_send(self, cx, chunk)
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown())
    }
}
