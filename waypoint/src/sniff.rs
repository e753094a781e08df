//! Telling HTTP from anything else on a port whose protocol is not declared: read the client's
//! first bytes, bounded in bytes and time, and look for the HTTP/2 preface or an HTTP/1.x
//! request line. Server-first protocols send nothing: after the timeout the tunnel is relayed
//! at L4. The bytes read are replayed to whichever side handles the tunnel ([`Rewind`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token taken for HTTP (the longest registered one is 17 bytes).
const MAX_METHOD: usize = 24;

/// What the first bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// HTTP/1.x or HTTP/2.
    Http,
    /// Anything else (or nothing before the timeout).
    Opaque,
}

/// Reads from `io` until its first bytes decide, `limit` bytes are read or `timeout` passes;
/// returns the decision and the bytes read.
pub async fn sniff<IO: AsyncRead + Unpin>(
    io: &mut IO,
    limit: usize,
    timeout: Duration,
) -> io::Result<(Sniffed, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(decided) = classify(&buf) {
            return Ok((decided, buf.freeze()));
        }
        if buf.len() >= limit {
            return Ok((Sniffed::Opaque, buf.freeze()));
        }
        let mut chunk = vec![0u8; (limit - buf.len()).min(4096)];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) => return Ok((Sniffed::Opaque, buf.freeze())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// The decision the bytes so far allow; `None` while they could still be either.
pub fn classify(buf: &[u8]) -> Option<Sniffed> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Sniffed::Http);
    }
    request_line(buf)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, checked as far as the bytes go.
fn request_line(buf: &[u8]) -> Option<Sniffed> {
    let opaque = Some(Sniffed::Opaque);
    let Some(sp) = buf.iter().position(|b| *b == b' ') else {
        let token = buf
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_');
        return if token && buf.len() <= MAX_METHOD {
            None
        } else {
            opaque
        };
    };
    let method = &buf[..sp];
    if method.is_empty()
        || method.len() > MAX_METHOD
        || !method
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_')
    {
        return opaque;
    }
    let rest = &buf[sp + 1..];
    let Some(sp2) = rest.iter().position(|b| *b == b' ') else {
        return if rest.iter().all(|b| b.is_ascii_graphic()) {
            None
        } else {
            opaque
        };
    };
    let target = &rest[..sp2];
    if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic()) {
        return opaque;
    }
    let version = &rest[sp2 + 1..];
    const V: &[u8] = b"HTTP/1.";
    let n = version.len().min(V.len());
    if version[..n] != V[..n] {
        return opaque;
    }
    if version.len() <= V.len() {
        return None;
    }
    if !version[V.len()].is_ascii_digit() {
        return opaque;
    }
    match version.get(V.len() + 1..) {
        None | Some([]) => None,
        Some([b'\r', ..]) | Some([b'\n', ..]) => Some(Sniffed::Http),
        Some(_) => opaque,
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> Rewind<IO> {
    /// `inner`, with `prefix` read again first.
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Self { prefix, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_other_bytes() {
        let http = Some(Sniffed::Http);
        let opaque = Some(Sniffed::Opaque);
        let cases: &[(&[u8], Option<Sniffed>)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n", http),
            (b"POST /api?x=1 HTTP/1.0\r\n", http),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", http),
            // Not yet decided: a prefix of either.
            (b"GE", None),
            (b"GET /index", None),
            (b"GET / HTTP/1", None),
            (b"PRI * HTTP/2", None),
            // Anything else.
            (b"\x16\x03\x01\x02\x00", opaque),
            (b"SSH-2.0-OpenSSH_9.6\r\n", opaque),
            (b"get / HTTP/1.1\r\n", opaque),
            (b"GET / HTTP/2.0\r\n", opaque),
            (b"GET /\x01 HTTP/1.1\r\n", opaque),
            (b"GET / HTTP/1.1x", opaque),
            (b"*1\r\n$4\r\nPING\r\n", opaque),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[tokio::test]
    async fn sniffing_is_bounded_and_replays_what_it_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let (decided, read) = sniff(&mut server, 8192, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(decided, Sniffed::Http);
        let mut replay = Rewind::new(read, server);
        let mut first = [0u8; 16];
        replay.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET / HTTP/1.1\r\n");

        // A server-first protocol: nothing arrives, the timeout decides.
        let (_quiet, mut server) = tokio::io::duplex(64);
        let (decided, read) = sniff(&mut server, 8192, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!((decided, read.len()), (Sniffed::Opaque, 0));

        // An endless method-like token stops at the byte bound.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[b'A'; 100])
            .await
            .unwrap();
        let (decided, _) = sniff(&mut server, 16, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(decided, Sniffed::Opaque);
    }
}
