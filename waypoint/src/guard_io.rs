//! A thin watch in front of hyper's HTTP/1 server on one client tunnel: it follows the request
//! framing as the bytes pass (heads, then each body by its `content-length` or chunks) for what
//! hyper does not tell its caller or cannot answer:
//!
//! - a head with both `content-length` and `transfer-encoding` (hyper lets chunked win and
//!   drops the length from the headers; Envoy refuses such a request with 400 unless
//!   `allow_chunked_length` is set, `source/common/http/http1/codec_impl.cc`): the index of
//!   that head is kept in [`ConnWatch`] for the service to refuse that request;
//! - a head that started arriving and did not finish within the header timeout (slowloris):
//!   `408` with `connection: close` is written, then the tunnel closes (Envoy's
//!   `request_headers_timeout` answer); a connection with no request under way is closed
//!   silently after the idle timeout (Envoy's `idle_timeout`, 1 h by default).
//!
//! Why a flag indexed by head is enough: hyper parses only bytes it read through here, so
//! head `n` has been scanned before hyper hands request `n` to the service, which counts the
//! requests it is given ([`ConnWatch::dispatch`]). A head with both lengths makes hyper close
//! the connection after that request, so no later head is ever served and the scan stops there.
//!
//! Why the framing here cannot disagree with hyper's on bytes hyper accepts: both follow RFC
//! 9112 (a head ends at the first empty line; a body is `content-length` bytes or chunks up to
//! the last chunk and its trailers). Anything this scan does not follow (HTTP/2, an upgrade or
//! CONNECT, a head over the size limit, a malformed length or chunk size) turns it off for the
//! rest of the connection; hyper then either refuses those bytes itself or, for HTTP/2 and a
//! switched protocol, the bytes are no HTTP/1 any more.
//!
//! The 408 is written only when no response is owed or being written: every request handed to
//! the service has had its response body dropped by hyper ([`ConnWatch::answered`]), and
//! everything hyper wrote has been flushed. Otherwise the timer starts again, so a pipelined
//! head behind a slow response never interleaves with it.
//!
//! Cost: a head is read a line at a time where it lies (`memchr` for line ends; only a line cut
//! by the end of a read is copied, into a buffer kept per connection); only three header names
//! are looked at; body bytes are only counted (chunk-size lines read); the clock and the timer
//! are touched only when a read would wait, so a head's deadline runs from the first wait after
//! its first byte (the same instant, to within one read).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The answer to a head that did not arrive in time.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 15\r\n\
content-type: text/plain\r\nconnection: close\r\n\r\nrequest timeout";

/// No head index: no head had both lengths.
const NONE: u64 = u64::MAX;

/// What the tunnel's watch and its HTTP service share.
#[derive(Debug)]
pub struct ConnWatch {
    /// Requests handed to the service.
    dispatched: AtomicU64,
    /// Responses whose body hyper dropped (written into its buffer, or abandoned).
    answered: AtomicU64,
    /// The index of the first head with both `content-length` and `transfer-encoding`.
    both_lengths: AtomicU64,
    /// Whether a 408 was written.
    timed_out: AtomicBool,
}

impl Default for ConnWatch {
    fn default() -> Self {
        Self {
            dispatched: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            both_lengths: AtomicU64::new(NONE),
            timed_out: AtomicBool::new(false),
        }
    }
}

impl ConnWatch {
    /// Counts a request handed to the service; whether its head had both `content-length`
    /// and `transfer-encoding`. Call once per request, in order, when hyper hands it over.
    pub fn dispatch(&self) -> bool {
        let index = self.dispatched.fetch_add(1, Ordering::Relaxed);
        self.both_lengths.load(Ordering::Relaxed) == index
    }

    /// Counts a response whose body hyper is done with.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the watch answered a slow head with 408.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// How long a connection may wait.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From the first byte of a head to its end.
    pub header: Duration,
    /// With no request under way; `None` waits forever.
    pub idle: Option<Duration>,
    /// Largest head followed (hyper refuses larger ones itself).
    pub max_head: usize,
}

/// Where the scan is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// In a head; `started` once a byte other than a leading empty line came, `len` bytes
    /// of it so far.
    Head { started: bool, len: usize },
    /// In a body of this many bytes still to come.
    Fixed(u64),
    /// In a chunk-size line: the size so far, whether a digit came.
    ChunkSize { size: u64, digits: bool },
    /// In a chunk extension (or the CR) of a chunk of `size`, up to the LF.
    ChunkExt { size: u64 },
    /// In chunk data, this many bytes still to come.
    ChunkData(u64),
    /// After chunk data, up to the LF.
    ChunkDataEnd,
    /// In the trailer section, `line` bytes of the current line.
    Trailers { line: usize },
    /// Not following any more.
    Off,
}

/// What the wait being timed is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Idle,
    Head,
}

/// The body a head announces.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Both `content-length` and chunked `transfer-encoding`.
    BothLengths,
    /// Not followed (HTTP/2 preface, upgrade, CONNECT, something hyper refuses).
    Lost,
}

/// What the lines of a head so far say about its body, as hyper reads them
/// (`proto/h1/role.rs`): the last `transfer-encoding` line decides chunked; equal
/// `content-length` lines are one.
#[derive(Debug, Default)]
struct HeadInfo {
    /// The request line was seen.
    request_line: bool,
    http11: bool,
    length: Option<u64>,
    chunked: Option<bool>,
}

impl HeadInfo {
    /// Takes one line (without its line end); `false` once the head is not followed.
    fn line(&mut self, line: &[u8]) -> bool {
        if !self.request_line {
            self.request_line = true;
            self.http11 = line.ends_with(b" HTTP/1.1");
            // The HTTP/2 preface, anything hyper does not serve as HTTP/1, and CONNECT (its
            // bytes are a tunnel afterwards) are not followed.
            return (self.http11 || line.ends_with(b" HTTP/1.0")) && !line.starts_with(b"CONNECT ");
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return true;
        };
        let name = &line[..colon];
        // By length first: most names are none of the three.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let value = line[colon + 1..].trim_ascii();
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok());
                match (parsed, self.length) {
                    (Some(n), None) => self.length = Some(n),
                    (Some(n), Some(m)) if n == m => {}
                    // Differing or malformed lengths: hyper refuses the head with 400.
                    _ => return false,
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                let value = line[colon + 1..].trim_ascii();
                let last = value.rsplit(|b| *b == b',').next().unwrap_or(value);
                self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            // Bytes after a switch are no HTTP/1; hyper may switch after this request.
            7 if self.http11 && name.eq_ignore_ascii_case(b"upgrade") => return false,
            _ => {}
        }
        true
    }

    /// The body the complete head announces.
    fn framing(&self) -> Framing {
        match (self.chunked, self.length) {
            // hyper refuses a transfer-encoding not ending in chunked, and any in HTTP/1.0.
            (Some(false), _) => Framing::Lost,
            (Some(true), _) if !self.http11 => Framing::Lost,
            (Some(true), Some(_)) => Framing::BothLengths,
            (Some(true), None) => Framing::Chunked,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Empty,
        }
    }
}

/// The client side of a tunnel, watched (see the module).
pub struct GuardIo<IO> {
    inner: IO,
    watch: Arc<ConnWatch>,
    timeouts: Timeouts,
    scan: Scan,
    /// The head so far.
    info: HeadInfo,
    /// A line of a head cut by the end of a read (kept per connection, usually empty).
    partial: Vec<u8>,
    /// Heads completed.
    heads: u64,
    deadline: Option<(Instant, Wait)>,
    /// Made once, at the first wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// Written but not flushed since.
    dirty: bool,
    /// Bytes of the 408 written, once it is being written.
    reply: Option<usize>,
    /// The connection is over (idle, or the 408 is out and the write side shut): reads end.
    ended: bool,
}

impl<IO> GuardIo<IO> {
    /// Watches `inner`, sharing what it sees through `watch`.
    pub fn new(inner: IO, watch: Arc<ConnWatch>, timeouts: Timeouts) -> Self {
        Self {
            inner,
            watch,
            timeouts,
            scan: Self::next_head(),
            info: HeadInfo::default(),
            partial: Vec::new(),
            heads: 0,
            deadline: None,
            timer: None,
            dirty: false,
            reply: None,
            ended: false,
        }
    }

    /// Follows `bytes`, just read from the client.
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match self.scan {
                Scan::Off => return,
                Scan::Head { started, len } => self.in_head(bytes, started, len),
                Scan::Fixed(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.scan = if n == left {
                        Self::next_head()
                    } else {
                        Scan::Fixed(left - n)
                    };
                    n as usize
                }
                Scan::ChunkData(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.scan = if n == left {
                        Scan::ChunkDataEnd
                    } else {
                        Scan::ChunkData(left - n)
                    };
                    n as usize
                }
                Scan::ChunkSize { size, digits } => {
                    let b = bytes[0];
                    self.scan = match (b as char).to_digit(16) {
                        Some(d) => match size.checked_mul(16) {
                            Some(s) => Scan::ChunkSize {
                                size: s + u64::from(d),
                                digits: true,
                            },
                            None => Scan::Off,
                        },
                        None if !digits => Scan::Off,
                        None if b == b'\n' => Self::after_size(size),
                        None => Scan::ChunkExt { size },
                    };
                    1
                }
                Scan::ChunkExt { size } => match bytes.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        self.scan = Self::after_size(size);
                        i + 1
                    }
                    None => bytes.len(),
                },
                Scan::ChunkDataEnd => match bytes.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        self.scan = Scan::ChunkSize {
                            size: 0,
                            digits: false,
                        };
                        i + 1
                    }
                    None => bytes.len(),
                },
                Scan::Trailers { line } => {
                    self.scan = match bytes[0] {
                        b'\n' if line == 0 => Self::next_head(),
                        b'\n' => Scan::Trailers { line: 0 },
                        b'\r' => Scan::Trailers { line },
                        _ => Scan::Trailers { line: line + 1 },
                    };
                    1
                }
            };
            bytes = &bytes[used..];
        }
    }

    fn next_head() -> Scan {
        Scan::Head {
            started: false,
            len: 0,
        }
    }

    fn after_size(size: u64) -> Scan {
        if size == 0 {
            Scan::Trailers { line: 0 }
        } else {
            Scan::ChunkData(size)
        }
    }

    /// Follows head bytes a line at a time; returns how many it took.
    fn in_head(&mut self, bytes: &[u8], mut started: bool, mut len: usize) -> usize {
        let mut rest = bytes;
        if !started {
            // RFC 9112 §2.2: empty lines before a request line are ignored (so does httparse).
            let Some(first) = rest.iter().position(|b| *b != b'\r' && *b != b'\n') else {
                return bytes.len();
            };
            rest = &rest[first..];
            started = true;
            // The head's own deadline is set at the first read that waits (no clock read
            // per request when a head comes whole); an idle one no longer applies.
            self.deadline = None;
        }
        loop {
            let Some(end) = memchr::memchr(b'\n', rest) else {
                len += rest.len();
                if len > self.timeouts.max_head {
                    // hyper answers 431 to this head and closes.
                    self.off();
                } else {
                    self.partial.extend_from_slice(rest);
                    self.scan = Scan::Head { started, len };
                }
                return bytes.len();
            };
            len += end + 1;
            let partial = std::mem::take(&mut self.partial);
            let mut whole = partial;
            let line = if whole.is_empty() {
                &rest[..end]
            } else {
                whole.extend_from_slice(&rest[..end]);
                &whole[..]
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let done = line.is_empty();
            let followed = done || self.info.line(line);
            whole.clear();
            self.partial = whole;
            let used = bytes.len() - rest.len() + end + 1;
            if len > self.timeouts.max_head || !followed {
                self.off();
                return used;
            }
            if done {
                self.head_done();
                return used;
            }
            rest = &rest[end + 1..];
        }
    }

    fn off(&mut self) {
        self.scan = Scan::Off;
        self.deadline = None;
        self.partial = Vec::new();
    }

    fn head_done(&mut self) {
        let index = self.heads;
        self.heads += 1;
        self.deadline = None;
        let framing = std::mem::take(&mut self.info).framing();
        self.scan = match framing {
            Framing::Empty | Framing::Length(0) => Self::next_head(),
            Framing::Length(n) => Scan::Fixed(n),
            Framing::Chunked => Scan::ChunkSize {
                size: 0,
                digits: false,
            },
            Framing::BothLengths => {
                self.watch.both_lengths.store(index, Ordering::Relaxed);
                Scan::Off
            }
            Framing::Lost => Scan::Off,
        };
        if self.scan == Scan::Off {
            self.off();
        }
    }

    /// Whether nothing is owed to the client: every head so far was handed to the service,
    /// every response is done, every written byte flushed.
    fn quiet(&self) -> bool {
        let dispatched = self.watch.dispatched.load(Ordering::Relaxed);
        dispatched == self.heads
            && self.watch.answered.load(Ordering::Relaxed) == dispatched
            && !self.dirty
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> GuardIo<IO> {
    /// While a read waits: the idle or head timer; `Ready` once the connection is to end.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.deadline.is_none() {
            self.deadline = match self.scan {
                Scan::Head { started: true, .. } => {
                    Some((Instant::now() + self.timeouts.header, Wait::Head))
                }
                Scan::Head { started: false, .. } => self
                    .timeouts
                    .idle
                    .map(|idle| (Instant::now() + idle, Wait::Idle)),
                _ => None,
            };
        }
        let Some((at, wait)) = self.deadline else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !self.quiet() {
            // A response is owed or on its way: never cut in; wait a full period again.
            let again = match wait {
                Wait::Head => self.timeouts.header,
                Wait::Idle => self.timeouts.idle.unwrap_or(self.timeouts.header),
            };
            self.deadline = Some((Instant::now() + again, wait));
            return self.poll_deadline(cx);
        }
        match wait {
            // End of input: hyper closes an idle connection quietly.
            Wait::Idle => {
                tracing::debug!("idle http/1 connection closed");
                self.off();
                self.ended = true;
                Poll::Ready(Ok(()))
            }
            Wait::Head => {
                tracing::info!(
                    timeout_ms = self.timeouts.header.as_millis() as u64,
                    "request head not complete in time; answering 408"
                );
                self.off();
                self.watch.timed_out.store(true, Ordering::Relaxed);
                self.reply = Some(0);
                self.poll_reply(cx)
            }
        }
    }

    /// Writes the 408, flushes and shuts the write side; then reads end.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        while let Some(written) = self.reply
            && written < REQUEST_TIMEOUT.len()
        {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &REQUEST_TIMEOUT[written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.reply = Some(written + n);
        }
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        self.ended = true;
        // Reads end here: hyper gives up the half head without an answer of its own.
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reply.is_some() || this.ended {
            return this.poll_reply(cx);
        }
        if this.scan == Scan::Off {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GuardIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.dirty = true;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.dirty = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.dirty = false;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
